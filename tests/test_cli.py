"""The real `localvideo` command in a subprocess: fast help, JSON output, one clear error per bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import run_cli


def test_help_is_fast_and_does_not_import_torch():
    code = ("import sys; sys.argv = ['localvideo', '--help']\n"
            "import localvideo.cli as c\n"
            "try:\n    c.app()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'diffusers', 'transformers', 'av', 'gradio') if m in sys.modules])")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    elapsed = time.perf_counter() - t
    assert "generate" in out and "HEAVY []" in out
    assert elapsed < 5, elapsed  # generous bound for a loaded CI box; torch alone takes longer than this to import


def test_generate_json_prints_a_machine_readable_result(tmp_path):
    out = tmp_path / "fox.mp4"
    r = run_cli("generate", "a fox in the snow", "--model", "tiny-wan", "--steps", "2", "--seed", "4", "--frames", "9",
                "--output", str(out), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] and d["path"] == str(out) and d["frames"] == 9 and d["seed"] == 4 and d["random_weights"]
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_dry_run_json_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "x.mp4"
    r = run_cli("generate", "a fox", "--model", "wan2.1-t2v-14b", "--dry-run", "--vram", "24", "--frames", "80",
                "--json", "--output", str(out))
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert plan["num_frames"] == 81 and plan["strategy"] in ("group_offload", "sequential_offload")
    assert any("80 → 81" in n for n in plan["notes"]) and not out.exists()


def test_dry_run_text_explains_the_plan():
    r = run_cli("generate", "a fox", "--model", "ltx-video-2b", "--dry-run", "--vram", "12", "--width", "700")
    assert r.returncode == 0, r.stderr
    assert "strategy" in r.stdout and "700x512 → 704x512" in r.stdout and "why" in r.stdout


BAD = [
    (["generate", "", "--model", "tiny-wan"], "prompt is empty"),
    (["generate", "x" * 5000, "--model", "tiny-wan"], "limit is"),
    (["generate", "a fox", "--model", "sora-2"], "Unknown model"),
    (["generate", "a fox", "--model", "tiny-wan", "--width", "0"], "width"),
    (["generate", "a fox", "--model", "tiny-wan", "--height", "-16"], "height"),
    (["generate", "a fox", "--model", "tiny-wan", "--width", "100000"], "width"),
    (["generate", "a fox", "--model", "tiny-wan", "--frames", "0"], "frames"),
    (["generate", "a fox", "--model", "tiny-wan", "--frames", "100000"], "frames"),
    (["generate", "a fox", "--model", "tiny-wan", "--frames", "500"], "at most"),
    (["generate", "a fox", "--model", "tiny-wan", "--width", "4096", "--height", "4096"], "larger than"),
    (["generate", "a fox", "--model", "tiny-wan", "--steps", "0"], "steps"),
    (["generate", "a fox", "--model", "tiny-wan", "--fps", "-3"], "fps"),
    (["generate", "a fox", "--model", "tiny-wan", "--strategy", "turbo"], "strategy"),
    (["generate", "a fox", "--model", "wan2.1-t2v-1.3b"], "localvideo models pull wan2.1-t2v-1.3b"),
    (["generate", "a fox", "--model", "tiny-wan", "--output", "video.gif"], ".mp4"),
]


@pytest.mark.parametrize("args,expected", BAD, ids=[b[1] for b in BAD])
def test_bad_input_gives_one_clear_error_and_nonzero_exit(args, expected, tmp_path):
    r = run_cli(*args, env_extra={"LOCALVIDEO_OUTPUTS_DIR": str(tmp_path / "out")})
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert expected in r.stderr, r.stderr
    assert r.stderr.strip().startswith("Error:")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unwritable_output_folder_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    t = time.perf_counter()
    r = run_cli("generate", "a fox", "--model", "tiny-wan", "--output", str(blocker / "sub" / "v.mp4"), "--json")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    err = json.loads(r.stdout)
    assert err["ok"] is False and err["error"] == "output_error"
    assert list(tmp_path.iterdir()) == [blocker]
    assert time.perf_counter() - t < 30


def test_errors_as_json_carry_code_message_and_hint():
    r = run_cli("generate", "a fox", "--model", "wan2.1-t2v-1.3b", "--json")
    d = json.loads(r.stdout)
    assert r.returncode == 3 and d["error"] == "model_not_installed" and "pull" in d["hint"]


def test_models_list_marks_tiny_models_as_random():
    r = run_cli("models", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {m["id"]: m for m in json.loads(r.stdout)}
    assert rows["tiny-wan"]["random_weights"] and not rows["wan2.1-t2v-1.3b"]["random_weights"]
    assert rows["wan2.1-t2v-1.3b"]["installed"] is False
    table = run_cli("models", "list")
    assert "RANDOM WEIGHTS" in table.stdout


def test_models_show_and_pull_for_tiny():
    r = run_cli("models", "pull", "tiny-ltx")
    assert r.returncode == 0 and "installed" in r.stdout
    d = json.loads(run_cli("models", "show", "tiny-ltx", "--json").stdout)
    assert d["installed"] and d["random_weights"]
    d = json.loads(run_cli("models", "show", "hunyuanvideo", "--json").stdout)
    assert d["pull"] == "localvideo models pull hunyuanvideo" and d["params"]["transformer"] > 12e9
    g = d["gpu_memory"]  # what a GPU needs for the default clip, per strategy, from the traced activations
    assert g["size"] == "1280x720x129" and g["source"].startswith("activations traced")
    assert g["strategies"]["resident"]["untiled"] > 70 > g["strategies"]["group_offload"]["tiled"] > 10


def test_doctor_reports_hardware_and_what_fits():
    r = run_cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["hardware"]["ram_total_bytes"] > 0 and d["hardware"]["cpu_count"] >= 1
    fits = {m["model"]: m for m in d["models"]}
    assert fits["tiny-wan"]["fits"] is True
    assert fits["tiny-wan-flf2v"]["fits"] is True  # planned with the first and last frame it needs
    text = run_cli("doctor").stdout
    assert "What fits" in text and "ram" in text


def test_serve_refuses_clearly_before_listening(tmp_path):
    """A second server on one home, a port in use, a bad log level: one sentence and a hint, no traceback, and
    nothing claims the server is up."""
    import socket

    from _live import LiveServer, free_port

    home = tmp_path / "home"
    first = LiveServer(home, extra_args=("--no-ui",)).start()
    try:
        again = run_cli("serve", "--no-ui", "--port", str(free_port()), env_extra={"LOCALVIDEO_HOME": str(home)},
                        timeout=60)
        assert again.returncode != 0 and "Another localvideo job service is already using" in again.stderr
        assert "Traceback" not in again.stderr and "API on" not in again.stderr
    finally:
        first.stop()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = run_cli("serve", "--no-ui", "--port", str(port), env_extra={"LOCALVIDEO_HOME": str(tmp_path / "h2")},
                        timeout=60)
    assert taken.returncode != 0 and f"Cannot listen on 127.0.0.1:{port}" in taken.stderr
    assert "pass --port with a free one" in taken.stderr and "Traceback" not in taken.stderr
    bad = run_cli("serve", "--log-level", "bogus", env_extra={"LOCALVIDEO_HOME": str(tmp_path / "h3")}, timeout=60)
    assert bad.returncode == 2 and "Unknown log level 'bogus'" in bad.stderr and "Traceback" not in bad.stderr
    assert run_cli("serve", "--port", "99999", timeout=60).returncode == 2
