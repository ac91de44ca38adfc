"""Leftovers of killed runs: temp files and work folders named for the process that made them, and a sweep that
removes them once that process is provably gone.

A run cleans up after itself when it succeeds, fails or is cancelled. A SIGKILL, an out-of-memory kill or a power
loss gives it no chance to, and what it leaves can be large (a story keeps every scene's frames uncompressed until
the join: gigabytes). So every such temp name carries an *owner tag* (:func:`owner_tag`)::

    <host>_<machine>_<pid>_<boot>-<start>_<pidns>
    e.g. gpu1_3f2a9c1d_48213_73ec5433-t912345_4026531836

``host``: this machine's host name (lower case, at most 24 of ``[a-z0-9-]``); ``machine``: 8 hex of a hash of
``/etc/machine-id`` (``x`` where there is none); ``pid``: the process id; ``boot``: the first 8 hex of the kernel's
boot id (``x`` off Linux); ``start``: when the process started, ``t`` + clock ticks since boot (Linux, exact) or
``m`` + milliseconds since the epoch (psutil elsewhere); ``pidns``: the pid namespace's inode (containers on one
kernel each have their own pids). ``x`` always means unknown.

:func:`sweep` removes an entry only when :func:`why_abandoned` can say why its owner is gone:

* it was made on **this** machine (same host name and machine id) — never an entry of another host: outputs can be
  on a folder shared between machines (``docs/cluster.md``), whose processes this machine cannot see; and
* either this machine has restarted since (another boot id, only when the machine id is known: two machines that
  share a host name but have no machine id could not be told apart), or, in the same boot and the same pid
  namespace, that process id is not running (or is a zombie), or it is now a process that started at another time
  (the id was reused).

Or, whatever its host name, pid namespace or boot: its **liveness lock** is free. :func:`owner_tag` first takes an
exclusive ``flock`` on ``<LOCALVIDEO_HOME>/run/<tag>.lock`` and holds it for the life of the process; the kernel drops
it when the process ends, however it ends (a SIGKILL, an OOM kill, a reboot). A lock nobody holds thus proves its
process gone — on a local file system only (ext4, xfs, btrfs, overlay, tmpfs, …: one kernel holds every flock on it,
across containers); on NFS, SMB or FUSE a free lock proves nothing and is not used. This is what clears what a
container left (``docker run --rm`` gives each run a new host name and pid namespace; a host without
``/etc/machine-id`` cannot tell its own reboot), as long as ``LOCALVIDEO_HOME`` is kept between runs (a volume).
The sweep removes free lock files a month old.

Anything else is left alone: a live process's entry, one of another host or container without a free lock here, one owned by another user
(unless running as root: another user's processes may be hidden from this one), a name this module does not know
(older builds named temp files by pid only; those cannot be proven abandoned), and every file a user was promised
(kept latents carry no tag: see :mod:`localvideo.runtime.latents`).

Which names the sweep knows (all hidden, in one folder; ``TAG`` is an owner tag):

===================================================  =========================================================
``.<name>.segments.partial-TAG/``                    a story's work folder (:mod:`localvideo.story`)
``.<name>.mp4.TAG.partial.mp4``                      a video being encoded (:mod:`localvideo.media.encode`)
``.<name>.TAG.partial``                              any other file being written (sidecar, latents, thumbnail)
``.<name>.latents.safetensors.inuse-TAG``            a run's claim on its saved latents: the claim and the
                                                     latents go (unless another live run claims them too)
``.<name>.building-TAG-<hex>/``, ``.<name>.old-TAG-<hex>/``  a tiny model being built / set aside
``.<name>.mp4.inuse-TAG``                            a run's claim on its output name (only the claim goes)
===================================================  =========================================================

It only lists the folders it is given (and with ``children=True`` their direct sub-folders), so it is cheap; sizes are
measured only for what it removes. Each removal is logged (INFO) with its size and reason, and a summary as a WARNING
(shown even where logging is not configured: ``localvideo serve``, the CLI).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so no liveness locks (the process-table proofs still apply)
    fcntl = None

log = logging.getLogger(__name__)

TAG_PATTERN = (r"(?P<host>[a-z0-9-]{1,24})_(?P<machine>[0-9a-f]{8}|x)_(?P<pid>[0-9]{1,10})_"
               r"(?P<boot>[0-9a-f]{8}|x)-(?P<start>[tm][0-9]{1,20}|x)_(?P<ns>[0-9]{1,20}|x)")
_TAG_RE = re.compile(rf"^{TAG_PATTERN}$")
_START_TOLERANCE_MS = 1000  # psutil start times (epoch based) may differ by rounding between two readings

# kind, name pattern, what it must be (dir / file), how it is described in the log
_RULES: list[tuple[str, re.Pattern, str]] = [
    ("story work folder", re.compile(rf"^\..+\.segments\.partial-{TAG_PATTERN}$"), "dir"),
    ("video being encoded", re.compile(rf"^\..+\.{TAG_PATTERN}\.partial\.mp4$"), "file"),
    ("file being written", re.compile(rf"^\..+\.{TAG_PATTERN}\.partial$"), "file"),
    ("latents of a killed run", re.compile(rf"^\.(?P<target>.+\.latents\.safetensors)\.inuse-{TAG_PATTERN}$"),
     "file"),
    ("tiny model build", re.compile(rf"^\..+\.(?:building|old)-{TAG_PATTERN}-[0-9a-f]{{8}}$"), "dir"),
    ("claim on an output name", re.compile(rf"^\..+\.mp4\.inuse-{TAG_PATTERN}$"), "file"),
]


@dataclass(frozen=True)
class Owner:
    host: str
    machine: str
    pid: int
    boot: str
    start: str
    ns: str

    @property
    def tag(self) -> str:
        return f"{self.host}_{self.machine}_{self.pid}_{self.boot}-{self.start}_{self.ns}"


@dataclass(frozen=True)
class Removed:
    path: Path
    kind: str
    bytes: int
    reason: str

    def to_dict(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "bytes": self.bytes, "reason": self.reason}


# -- this process ----------------------------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _host() -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")
    return (name or "unknown")[:24]


def _machine() -> str:
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        mid = _read(p)
        if mid:
            return hashlib.sha256(mid.encode()).hexdigest()[:8]
    return "x"


def _boot() -> str:
    bid = _read("/proc/sys/kernel/random/boot_id")
    if bid:
        hexed = bid.replace("-", "").lower()
        if re.fullmatch(r"[0-9a-f]{8,}", hexed):
            return hexed[:8]
    return "x"


def _pid_ns() -> str:
    try:
        m = re.fullmatch(r"pid:\[(\d+)\]", os.readlink("/proc/self/ns/pid"))
    except OSError:
        return "x"
    return m.group(1) if m else "x"


def _linux_stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks since boot) of a Linux process, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    after = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return after[0], int(after[19])  # fields 3 (state) and 22 (starttime)


def _start_of(pid: int) -> str | None:
    """When process ``pid`` started (the tag's ``start`` form), ``x`` when it cannot be known, None when it is not
    running (gone, or a zombie)."""
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self"):
        try:
            st = _linux_stat(pid)
        except (OSError, ValueError, IndexError):
            return "x"
        if st is None or st[0] in ("Z", "X"):
            return None
        return f"t{st[1]}"
    try:
        import psutil

        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"m{int(p.create_time() * 1000)}"
    except ImportError:
        return "x"
    except Exception as e:  # psutil.NoSuchProcess, AccessDenied, …
        if type(e).__name__ == "NoSuchProcess":
            return None
        return "x"


_ME: tuple[int, Owner] | None = None


def me() -> Owner:
    """This process as an owner (recomputed after a fork)."""
    global _ME
    pid = os.getpid()
    if _ME is None or _ME[0] != pid:
        _ME = (pid, Owner(host=_host(), machine=_machine(), pid=pid, boot=_boot(), start=_start_of(pid) or "x",
                          ns=_pid_ns()))
    return _ME[1]


def owner_tag() -> str:
    """The tag to put in the name of a temp file or folder this process makes (see the module docstring). Holds this
    process's liveness lock in the current home first, so that no entry carries the tag before the lock does."""
    tag = me().tag
    _hold_lock(tag)
    return tag


# -- liveness locks ----------------------------------------------------------------------------------------------------
LOCK_DIR_NAME = "run"  # under LOCALVIDEO_HOME
LOCK_KEEP_S = 30 * 24 * 3600  # a free lock file is removed this long after its process took it
# File systems on which a free flock proves its holder is gone: they are mounted by one kernel, which holds every
# flock on them (across containers and pid namespaces) and drops a dead process's locks. Network and FUSE file systems
# are left out: some mounts keep flocks local to each client (NFS local_lock, nolock), so a free lock there proves
# nothing about a process on another machine.
_LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "f2fs", "reiserfs", "jfs",
                       "bcachefs", "ramfs", "vfat", "exfat", "ntfs3"})
_HELD: dict[tuple[int, str], int] = {}  # (pid, lock folder) -> the open, flocked descriptor (kept for life)
_HELD_LOCK = threading.Lock()


def lock_dir() -> Path:
    """Where liveness locks live: ``<LOCALVIDEO_HOME>/run``."""
    from ..settings import get_settings

    return get_settings().home / LOCK_DIR_NAME


def _hold_lock(tag: str) -> None:
    """Take (once per process and home) an exclusive flock on ``<home>/run/<tag>.lock`` and keep it until this
    process ends: the kernel drops it then, however the process died. Best effort: without it, entries are judged by
    the process table alone."""
    if fcntl is None:
        return
    try:
        folder = lock_dir()
    except Exception:  # noqa: BLE001 - unreadable settings: no lock, nothing else changes
        return
    key = (os.getpid(), str(folder))
    with _HELD_LOCK:
        if key in _HELD:
            return
        path = folder / f"{tag}.lock"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return
        for _ in range(50):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a sweep probing it this instant
                os.close(fd)
                time.sleep(0.02)
                continue
            except OSError:
                os.close(fd)
                return
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except OSError:
                same = False
            if same:
                _HELD[key] = fd
                return
            os.close(fd)  # a sweep removed the file between open and flock: take a fresh one


def _fs_type(path: Path) -> str | None:
    """The file system type of the mount holding ``path`` (Linux ``/proc/self/mountinfo``), None when unknown."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best, kind = -1, None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best:  # later lines win a tie: a mount over a mount
            best, kind = len(mount), tail.split()[0]
    return kind


def _locks_prove() -> bool:
    """Whether a free lock in :func:`lock_dir` proves its process gone (a local file system, flock available)."""
    if fcntl is None:
        return False
    try:
        folder = lock_dir()
    except Exception:  # noqa: BLE001
        return False
    return folder.is_dir() and _fs_type(folder) in _LOCAL_FS


def _lock_free(path: Path) -> bool:
    """True when ``path`` exists and nobody holds a flock on it (probed, then released at once)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # never created here: only an owner makes its lock
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held (BlockingIOError), or flock refused: proves nothing
        return False
    finally:
        os.close(fd)


def _lock_says_gone(owner: Owner) -> bool:
    return _locks_prove() and _lock_free(lock_dir() / f"{owner.tag}.lock")


def _sweep_locks() -> int:
    """Remove free lock files older than :data:`LOCK_KEEP_S`; returns how many. Held ones are never touched."""
    if not _locks_prove():
        return 0
    folder, n, now = lock_dir(), 0, time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        if not e.name.endswith(".lock") or _kind_of(e) != "file" or not _ours_to_judge(e):
            continue
        try:
            old = now - e.stat(follow_symlinks=False).st_mtime > LOCK_KEEP_S
        except OSError:
            continue
        if old and _lock_free(Path(e.path)):
            try:
                os.unlink(e.path)
                n += 1
            except OSError:
                pass
    return n


def parse_tag(tag: str) -> Owner | None:
    m = _TAG_RE.match(tag)
    return _owner(m) if m else None


def _owner(m: re.Match) -> Owner:
    return Owner(host=m["host"], machine=m["machine"], pid=int(m["pid"]), boot=m["boot"], start=m["start"],
                 ns=m["ns"])


# -- judging -----------------------------------------------------------------------------------------------------------
def _known(*values: str) -> bool:
    return all(v != "x" for v in values)


def _same_start(a: str, b: str) -> bool | None:
    """True / False when comparable, None when not (unknown, or measured differently)."""
    if not _known(a, b) or a[0] != b[0]:
        return None
    if a[0] == "t":
        return a == b
    return abs(int(a[1:]) - int(b[1:])) <= _START_TOLERANCE_MS


def why_abandoned(owner: Owner) -> str | None:
    """Why ``owner`` is provably gone, or None when it may still be running (or nothing here can tell)."""
    why = _process_table_says(owner)
    if why is None and owner.tag != me().tag and _lock_says_gone(owner):
        why = "its process is gone (its liveness lock is free)"
    return why


def _process_table_says(owner: Owner) -> str | None:
    here = me()
    if owner.host != here.host or owner.machine != here.machine:
        return None  # another machine (perhaps sharing this folder): never ours to judge
    if _known(owner.boot, here.boot) and owner.boot != here.boot:
        # Another boot of this machine — unless two machines share the host name and neither has a machine id.
        return "this machine restarted since" if _known(here.machine) else None
    if owner.ns != here.ns:
        return None  # another pid namespace (another container on this kernel): its pids are not ours
    if owner.pid == here.pid:
        same = _same_start(owner.start, here.start)
        return "its process id now belongs to this process" if same is False else None
    now = _start_of(owner.pid)
    if now is None:
        return "that process is gone"
    if _same_start(owner.start, now) is False:
        return "that process is gone (its id now belongs to another process)"
    return None


# -- sweeping ----------------------------------------------------------------------------------------------------------
def _size(path: Path, is_dir: bool) -> int:
    try:
        if not is_dir:
            return path.lstat().st_size
        total = 0
        for root, dirs, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
        return total
    except OSError:
        return 0


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _kind_of(entry: os.DirEntry) -> str | None:
    try:
        if entry.is_symlink():
            return None  # never followed, never removed
        if entry.is_dir(follow_symlinks=False):
            return "dir"
        if entry.is_file(follow_symlinks=False):
            return "file"
    except OSError:
        pass
    return None


def _ours_to_judge(entry: os.DirEntry) -> bool:
    """Only entries of this user (or any, as root): another user's processes may be hidden from this one
    (``/proc`` mounted with ``hidepid``), so their absence proves nothing."""
    euid = getattr(os, "geteuid", lambda: None)()
    if euid is None or euid == 0:
        return True
    try:
        return entry.stat(follow_symlinks=False).st_uid == euid
    except OSError:
        return False


def _claims(folder: Path, target: str) -> list[Owner]:
    prefix = f".{target}.inuse-"
    out = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith(prefix):
                    o = parse_tag(e.name[len(prefix):])
                    out.append(o if o is not None else Owner("?", "x", 0, "x", "x", "x"))
    except OSError:
        pass
    return out


def _remove(path: Path, what: str) -> bool:
    try:
        if what == "dir":
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except FileNotFoundError:
        return False  # someone else's sweep got there first
    except OSError as e:
        log.warning("could not remove the leftover %s: %s", path, e)
        return False


def _sweep_folder(folder: Path, removed: list[Removed]) -> list[Path]:
    """Sweep one folder; returns its sub-folders that are not leftovers (for ``children``)."""
    subfolders: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return subfolders
    for entry in entries:
        what = _kind_of(entry)
        if what is None:
            continue
        if not entry.name.startswith("."):
            if what == "dir":
                subfolders.append(Path(entry.path))
            continue
        for kind, rule, must_be in _RULES:
            m = rule.match(entry.name)
            if m is None:
                continue
            if what != must_be or not _ours_to_judge(entry):
                break
            owner = _owner(m)
            why = why_abandoned(owner)
            if why is None:
                break
            path = Path(entry.path)
            if m.groupdict().get("target"):
                _sweep_claimed(folder, path, m["target"], owner, why, removed)
            else:
                size = _size(path, what == "dir")
                if _remove(path, what):
                    removed.append(Removed(path, kind, size, f"left by process {owner.pid}: {why}"))
            break
    return subfolders


def _sweep_claimed(folder: Path, claim: Path, target_name: str, owner: Owner, why: str,
                   removed: list[Removed]) -> None:
    """A dead run's claim on its latents: remove the latents unless another run that may be alive claims them too
    (two runs with one output name share a latents name), then the claim."""
    target = folder / target_name
    others = [o for o in _claims(folder, target_name) if o != owner]
    if all(why_abandoned(o) is not None for o in others):
        try:
            st = target.lstat()
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            # checked again just before: a live run may have claimed and rewritten them meanwhile
            again = [o for o in _claims(folder, target_name) if o != owner]
            try:
                same = target.lstat()
            except OSError:
                same = None
            if (same is not None and (same.st_ino, same.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
                    and all(why_abandoned(o) is not None for o in again) and _remove(target, "file")):
                removed.append(Removed(target, "latents of a killed run", st.st_size,
                                       f"saved by process {owner.pid} for a decode it never finished; nobody was "
                                       f"told to keep them: {why}"))
    size = _size(claim, False)
    if _remove(claim, "file"):
        removed.append(Removed(claim, "claim on latents", size, f"left by process {owner.pid}: {why}"))


def sweep(folders: Iterable[str | os.PathLike], *, children: bool = False, context: str = "") -> list[Removed]:
    """Remove the provably abandoned leftovers (see the module docstring) in ``folders`` (and, with ``children``, in
    their direct sub-folders). Never raises for file system errors; logs what it removed, with sizes."""
    t0 = time.perf_counter()
    removed: list[Removed] = []
    seen: set[Path] = set()
    for folder in folders:
        folder = Path(folder)
        try:
            key = folder.resolve()
        except OSError:
            continue
        if key in seen or not folder.is_dir():
            continue
        seen.add(key)
        subs = _sweep_folder(folder, removed)
        if children:
            for sub in subs:
                _sweep_folder(sub, removed)
    try:
        locks = _sweep_locks()
    except Exception:  # noqa: BLE001 - never raises
        locks = 0
    if locks:
        log.info("removed %d free liveness lock(s) older than %d days", locks, LOCK_KEEP_S // 86400)
    for r in removed:
        log.info("removed %s %s (%s): %s", r.kind, r.path, human(r.bytes), r.reason)
    if removed:  # a warning, so that it shows where nothing configured logging (localvideo serve, the CLI)
        shown = "; ".join(f"{r.path} ({human(r.bytes)}, {r.kind})" for r in removed[:5])
        more = f"; and {len(removed) - 5} more" if len(removed) > 5 else ""
        log.warning("%sremoved %d leftover(s) of killed runs, %s in all (%.2f s): %s%s",
                    f"{context}: " if context else "", len(removed), human(sum(r.bytes for r in removed)),
                    time.perf_counter() - t0, shown, more)
    return removed


__all__ = ["LOCK_KEEP_S", "Owner", "Removed", "TAG_PATTERN", "human", "lock_dir", "me", "owner_tag", "parse_tag", "sweep", "why_abandoned"]
