"""The sweep of killed runs' leftovers: only what a provably dead process of this machine left is removed."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from localvideo.runtime import leftovers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="judges processes through /proc")


def spawn(code: str, *args: str) -> subprocess.Popen:
    """A real process that runs ``code`` (with ``args`` in sys.argv), prints "ready" and then waits to be killed."""
    script = textwrap.dedent(code) + "\nprint('ready', flush=True)\nimport time\ntime.sleep(600)\n"
    p = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def kill(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)  # no chance to clean up: what an OOM kill does
    p.wait()


MAKE_TEMPS = """
import os, sys
from pathlib import Path
from localvideo.runtime.leftovers import owner_tag
folder, tag = Path(sys.argv[1]), owner_tag()
work = folder / f".story.segments.partial-{tag}"
work.mkdir()
(work / "scene-001.npy").write_bytes(b"\\0" * 300_000)
(folder / f".video.mp4.{tag}.partial.mp4").write_bytes(b"\\0" * 1000)
(folder / f".video.json.{tag}.partial").write_bytes(b"{")
"""


def test_owner_tag_round_trips_and_names_this_process():
    me = leftovers.parse_tag(leftovers.owner_tag())
    assert me == leftovers.me() and me.pid == os.getpid()
    assert leftovers.why_abandoned(me) is None  # alive: this process
    assert leftovers.parse_tag("1234") is None and leftovers.parse_tag("host_x_12_x-x") is None


def test_judging_owners():
    me = leftovers.me()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert leftovers.why_abandoned(dataclasses.replace(me, pid=gone.pid)) == "that process is gone"
    # pid reused: the id runs another process that started at another time
    assert "another process" in leftovers.why_abandoned(dataclasses.replace(me, pid=1, start="t1"))
    # another machine (a shared output folder), another container on this kernel: never judged
    assert leftovers.why_abandoned(dataclasses.replace(me, host="gpu2", pid=gone.pid)) is None
    assert leftovers.why_abandoned(dataclasses.replace(me, machine="0badc0de", pid=gone.pid)) is None
    assert leftovers.why_abandoned(dataclasses.replace(me, ns="1", pid=gone.pid)) is None
    # a start time that cannot be compared: existence alone decides, and pid 1 exists
    assert leftovers.why_abandoned(dataclasses.replace(me, pid=1, start="x")) is None
    if me.machine != "x" and me.boot != "x":  # before a restart of this machine: every process of then is gone
        assert leftovers.why_abandoned(dataclasses.replace(me, boot="00000000", pid=1)) == \
            "this machine restarted since"


def test_sweep_removes_what_a_killed_process_left_and_logs_sizes(tmp_path, caplog):
    p = spawn(MAKE_TEMPS, str(tmp_path))
    kill(p)
    left = sorted(x.name for x in tmp_path.iterdir())
    assert len(left) == 3 and all(f"_{p.pid}_" in n for n in left)
    with caplog.at_level(logging.INFO, logger="localvideo.runtime.leftovers"):
        removed = leftovers.sweep([tmp_path], context="test")
    assert list(tmp_path.iterdir()) == []
    by_kind = {r.kind: r for r in removed}
    assert by_kind["story work folder"].bytes == 300_000 and by_kind["video being encoded"].bytes == 1000
    assert by_kind["file being written"].bytes == 1
    assert all(f"process {p.pid}: that process is gone" in r.reason for r in removed)
    assert "removed 3 leftover(s) of killed runs, 293.9 KB in all" in caplog.text
    assert "story work folder" in caplog.text and "293.0 KB" in caplog.text


def test_sweep_keeps_a_live_process_s_another_host_s_and_unknown_names(tmp_path):
    (tmp_path / "alive").mkdir()
    alive = spawn(MAKE_TEMPS, str(tmp_path / "alive"))
    try:
        me = leftovers.me()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        other = dataclasses.replace(me, host="gpu2", pid=dead.pid).tag  # same pid, dead here: but not this host's
        (tmp_path / f".story.segments.partial-{other}").mkdir()
        (tmp_path / f".video.mp4.{other}.partial.mp4").write_bytes(b"x")
        (tmp_path / f".video.mp4.{dead.pid}.partial.mp4").write_bytes(b"x")  # an older build's pid-only name
        (tmp_path / f".story.segments.partial-{dead.pid}").mkdir()
        (tmp_path / "video.mp4").write_bytes(b"x")  # finished work is never a leftover
        (tmp_path / "story.segments").mkdir()  # segments kept on request
        target = tmp_path / "elsewhere"
        target.mkdir()
        (target / "precious").write_bytes(b"x")
        dead_tag = dataclasses.replace(me, pid=dead.pid).tag
        os.symlink(target, tmp_path / f".story.segments.partial-{dead_tag}")  # links are never followed
        before = sorted(str(x.relative_to(tmp_path)) for x in tmp_path.rglob("*"))
        assert leftovers.sweep([tmp_path], children=True) == []
        assert sorted(str(x.relative_to(tmp_path)) for x in tmp_path.rglob("*")) == before
    finally:
        kill(alive)
    removed = leftovers.sweep([tmp_path], children=True)  # its owner is dead now: only its three go
    assert len(removed) == 3 and all(r.path.parent == tmp_path / "alive" for r in removed)
    assert (target / "precious").exists()


def test_latents_claimed_by_a_killed_run_go_and_kept_latents_stay(tmp_path):
    me = leftovers.me()
    p = spawn("""
        import sys
        from pathlib import Path
        from localvideo.runtime.leftovers import owner_tag
        folder = Path(sys.argv[1])
        for name in ("a", "b"):
            (folder / f".{name}.latents.safetensors.inuse-{owner_tag()}").touch()
    """, str(tmp_path))
    kill(p)
    (tmp_path / "a.latents.safetensors").write_bytes(b"\0" * 500)  # claimed by the dead run only
    (tmp_path / "b.latents.safetensors").write_bytes(b"\0" * 500)  # claimed by the dead run and by a live one
    (tmp_path / f".b.latents.safetensors.inuse-{me.tag}").touch()
    (tmp_path / "kept.latents.safetensors").write_bytes(b"\0" * 500)  # no claim: kept (asked for, or promised)
    removed = leftovers.sweep([tmp_path])
    assert sorted(x.name for x in tmp_path.iterdir()) == [f".b.latents.safetensors.inuse-{me.tag}",
                                                         "b.latents.safetensors", "kept.latents.safetensors"]
    assert {(r.path.name, r.bytes) for r in removed if r.kind == "latents of a killed run"} == \
        {("a.latents.safetensors", 500)}


def test_sweep_of_missing_or_unreadable_folders_is_quiet(tmp_path):
    assert leftovers.sweep([tmp_path / "nope", tmp_path / "nope"]) == []


def test_the_temp_file_of_a_video_killed_while_encoding_is_swept(tmp_path):
    """The encoder writes a hidden temp file named for its process and renames it when done: killed mid-video, the
    temp file stays (the final name never appears) until the sweep proves its writer is gone."""
    p = spawn("""
        import sys
        import numpy as np
        from localvideo.media.encode import VideoWriter
        w = VideoWriter(sys.argv[1], fps=8)
        for i in range(40):
            w.write(np.full((64, 64, 3), i, np.uint8))
        w._container.mux(w._stream.encode(None))  # flush what the encoder holds, so the temp file has bytes
    """, str(tmp_path / "v.mp4"))
    (tmp,) = tmp_path.iterdir()
    assert tmp.name.startswith(".v.mp4.") and tmp.name.endswith(".partial.mp4") and f"_{p.pid}_" in tmp.name
    assert leftovers.sweep([tmp_path]) == [], "still being written"
    kill(p)
    (r,) = leftovers.sweep([tmp_path])
    assert r.kind == "video being encoded" and r.path == tmp and r.bytes > 0
    assert list(tmp_path.iterdir()) == []


LEAVE_IN_HOME = """
import sys
from pathlib import Path
from localvideo.runtime.leftovers import owner_tag
from localvideo.story import work_folder
outputs, latents, job = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(outputs / job).mkdir(parents=True)
work = work_folder(outputs / job / "video.mp4")  # a story job's work folder, as story.py names it
work.mkdir()
(work / "scene-001.npy").write_bytes(b"\\0" * 200_000)
(outputs / f".cli.mp4.{owner_tag()}.partial.mp4").write_bytes(b"\\0" * 100)
latents.mkdir(parents=True, exist_ok=True)
(latents / f".{job}.latents.safetensors.inuse-{owner_tag()}").touch()
(latents / f"{job}.latents.safetensors").write_bytes(b"\\0" * 300)
"""


def _leave(home: Path, job: str, outputs: Path | None = None) -> subprocess.Popen:
    return spawn(LEAVE_IN_HOME, str(outputs or home / "outputs"), str(home / "latents"), job)


def _foreign(outputs: Path) -> Path:
    """A work folder of a process of another host (outputs on a folder shared between machines)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = dataclasses.replace(leftovers.me(), host="gpu2", pid=dead.pid)
    folder = outputs / "job-of-gpu2" / f".video.segments.partial-{other.tag}"
    folder.mkdir(parents=True)
    (folder / "scene-001.npy").write_bytes(b"\0" * 10)
    return folder


def _state(home: Path, outputs: Path) -> dict:
    return {"outputs": sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*")),
            "latents": sorted(p.name for p in (home / "latents").iterdir() if "svc-job" in p.name)}


def test_job_service_start_sweeps_killed_runs_leftovers_and_nothing_else(lv_home, tmp_path):
    from localvideo.hardware import Hardware
    from localvideo.jobs import JobService
    from localvideo.settings import Settings

    settings = Settings(home=lv_home, jobs_db_path=tmp_path / "jobs.db", outputs_dir=tmp_path / "outputs")
    dead = _leave(lv_home, "svc-job-dead", settings.outputs)
    kill(dead)
    alive = _leave(lv_home, "svc-job-alive", settings.outputs)
    foreign = _foreign(settings.outputs)
    kept = lv_home / "latents" / "svc-job-kept.latents.safetensors"  # released to the user: no claim
    kept.write_bytes(b"\0" * 10)
    try:
        svc = JobService(settings, hardware=Hardware.assumed(None, ram_gb=16), workers=1).start()
        try:
            assert svc.sweep_done.wait(60)
            after = _state(lv_home, settings.outputs)
        finally:
            svc.close()
        mine = [r for r in svc.swept if "svc-job" in str(r.path) or r.path.parent == settings.outputs]
        assert sorted((r.kind, r.bytes) for r in mine) == [
            ("claim on latents", 0), ("latents of a killed run", 300), ("story work folder", 200_000),
            ("video being encoded", 100)]
        assert all(f"process {dead.pid}" in r.reason for r in mine)
        assert after["latents"] == sorted([f".svc-job-alive.latents.safetensors.inuse-{_tag_of(alive)}",
                                           "svc-job-alive.latents.safetensors", kept.name])
        assert any(".video.segments.partial-" in p and p.startswith("svc-job-alive/") for p in after["outputs"])
        assert not any(p.startswith("svc-job-dead/.") for p in after["outputs"])
        assert foreign.is_dir() and (foreign / "scene-001.npy").is_file()
    finally:
        kill(alive)
        kept.unlink()
        for p in (lv_home / "latents").glob("*svc-job-alive*"):  # the session's latents folder: leave it clean
            p.unlink()


def _tag_of(p: subprocess.Popen) -> str:
    return dataclasses.replace(leftovers.me(), pid=p.pid, start=leftovers._start_of(p.pid)).tag


def test_localvideo_serve_sweeps_at_start_and_says_what_it_removed(tmp_path):
    from _live import LiveServer

    home = tmp_path / "home"
    dead = _leave(home, "serve-job")
    kill(dead)
    foreign = _foreign(home / "outputs")
    work = next((home / "outputs" / "serve-job").iterdir())
    server = LiveServer(home, extra_args=("--no-ui",)).start()
    try:
        deadline = time.monotonic() + 60
        while work.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not work.exists() and not (home / "latents" / "serve-job.latents.safetensors").exists()
        assert foreign.is_dir()
        while "job service start: removed" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        total = leftovers.human(200_000 + 100 + 300)
        assert f"job service start: removed 4 leftover(s) of killed runs, {total} in all" in server.log()
        assert f"{work} ({leftovers.human(200_000)}, story work folder)" in server.log()
    finally:
        server.stop()


def test_a_killed_tiny_model_build_is_swept_at_once(tmp_path):
    p = spawn("""
        import sys, time
        from pathlib import Path
        from localvideo.runtime import tiny

        class Pipe:  # stands in for the diffusers pipeline: killed while saving
            def save_pretrained(self, folder, **kw):
                Path(folder).mkdir()
                (Path(folder) / "diffusion_pytorch_model.safetensors").write_bytes(b"\\0" * 4096)
                print("ready", flush=True)
                time.sleep(600)

        tiny.make_tiny_pipeline = lambda family: Pipe()
        tiny.build_tiny_pipeline("wan", Path(sys.argv[1]) / "tiny-wan")
    """, str(tmp_path))
    try:
        (build,) = tmp_path.iterdir()
        assert build.name.startswith(".tiny-wan.building-") and f"_{p.pid}_" in build.name
        from localvideo.runtime import tiny

        tiny._remove_stale_leftovers(tmp_path / "tiny-wan")
        assert build.is_dir(), "still building"
    finally:
        kill(p)
    tiny._remove_stale_leftovers(tmp_path / "tiny-wan")  # fresh (not an hour old), but provably abandoned
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as another user")
def test_a_user_never_sweeps_another_user_s_leftovers():
    """With /proc mounted hidepid, another user's processes look gone: so only this user's entries are judged."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="lv-users-"))
    try:
        folder.chmod(0o777)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        tag = dataclasses.replace(leftovers.me(), pid=dead.pid).tag
        roots = folder / f".root.mp4.{tag}.partial.mp4"
        roots.write_bytes(b"x")
        nobodys = folder / f".nobody.mp4.{tag}.partial.mp4"
        nobodys.write_bytes(b"x")
        os.chown(nobodys, 65534, 65534)
        r = subprocess.run([sys.executable, "-c", "import os, sys; from localvideo.runtime.leftovers import me, "
                            "sweep, human; me(); human(1); "  # everything loaded: the stdlib is root's only
                            "os.setegid(65534); os.seteuid(65534); "  # now user 65534 (nobody), as far as files go
                            "print([x.path.name for x in sweep([sys.argv[1]])])", str(folder)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == repr([nobodys.name])
        assert roots.exists() and not nobodys.exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


ELSEWHERE = """
import sys
from localvideo.runtime import leftovers
leftovers._host = lambda: sys.argv[2]  # another container (docker run --rm: a new host name each time) ...
leftovers._pid_ns = lambda: "4026531999"  # ... with its own pid namespace: its pids mean nothing here
""" + MAKE_TEMPS


def test_a_free_liveness_lock_proves_a_process_of_another_container_gone(tmp_path, caplog):
    """Containers started with ``docker run --rm`` get a new host name and pid namespace each time: the process table
    cannot judge what the last one left. Its liveness lock can: the kernel held it while the process lived."""
    p = spawn(ELSEWHERE, str(tmp_path), "ctr-1a2b3c")
    try:
        (tag,) = {n.split("partial-")[1] for n in os.listdir(tmp_path) if "segments" in n}
        owner = leftovers.parse_tag(tag)
        assert owner.host == "ctr-1a2b3c" and owner.pid == p.pid
        assert (leftovers.lock_dir() / f"{tag}.lock").is_file()
        assert leftovers.sweep([tmp_path]) == [], "alive: its lock is held"
    finally:
        kill(p)
    with caplog.at_level(logging.INFO, logger="localvideo.runtime.leftovers"):
        removed = leftovers.sweep([tmp_path])
    assert list(tmp_path.iterdir()) == []
    assert len(removed) == 3 and all(r.reason == f"left by process {p.pid}: its process is gone (its liveness lock "
                                                 f"is free)" for r in removed)


def test_a_free_lock_on_a_network_file_system_proves_nothing(tmp_path, monkeypatch):
    """Some NFS mounts keep flocks local to each client: there a free lock says nothing of another machine."""
    p = spawn(ELSEWHERE, str(tmp_path), "ctr-4d5e6f")
    kill(p)
    with monkeypatch.context() as m:
        m.setattr(leftovers, "_fs_type", lambda path: "nfs4")
        assert leftovers.sweep([tmp_path]) == [] and len(list(tmp_path.iterdir())) == 3
    assert len(leftovers.sweep([tmp_path])) == 3


def test_old_free_locks_are_removed_and_held_ones_never(tmp_path):
    alive = spawn("from localvideo.runtime.leftovers import owner_tag; owner_tag()")
    dead = spawn("from localvideo.runtime.leftovers import owner_tag; owner_tag()")
    recent = spawn("from localvideo.runtime.leftovers import owner_tag; owner_tag()")
    try:
        kill(dead)
        kill(recent)
        locks = {p: _lock_of(p) for p in (alive, dead, recent)}
        old = time.time() - leftovers.LOCK_KEEP_S - 3600
        for p in (alive, dead):
            os.utime(locks[p], (old, old))
        leftovers.sweep([tmp_path])
        assert locks[alive].exists() and locks[recent].exists() and not locks[dead].exists()
        assert (leftovers.lock_dir() / f"{leftovers.owner_tag()}.lock").exists()  # this process's own
    finally:
        kill(alive)
        for path in locks.values():
            path.unlink(missing_ok=True)


def _lock_of(p: subprocess.Popen) -> Path:
    (path,) = [x for x in leftovers.lock_dir().glob("*.lock") if f"_{p.pid}_" in x.name]
    return path


def test_fs_type_reads_the_mount_holding_a_path():
    assert leftovers._fs_type(Path("/proc/self")) == "proc"
    assert leftovers._fs_type(leftovers.lock_dir().parent) is not None
