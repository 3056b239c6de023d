"""Liveness: a worker holds an exclusive lock on `<root>/.workers/<device>-<slot>.lock` for as long as
it lives, so a held lock is a live worker (even a `kill -9` frees it at once) and no pid file can lie.
`workers()` reads each slot's info file for people (pid, current run) and asks the lock the truth."""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..runs import pid_alive, runs_root
from .settings import WORKERS_DIR


def workers_dir(root: Path) -> Path:
    """`<root>/.workers`, created if needed; a symbolic link there is refused (OSError), so no lock,
    log or info file is ever written outside the runs root."""
    folder = Path(root) / WORKERS_DIR
    if folder.is_symlink():
        raise OSError(f"{folder} is a symbolic link; worker files are only written inside the runs root")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _lock_path(root: Path, device: str, slot: int) -> Path:
    return Path(root) / WORKERS_DIR / f"{device.replace(':', '_')}-{slot}.lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on `path`, or None when another process holds it."""
    workers_dir(path.parent.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def root_lock(root: Path, name: str) -> Iterator[None]:
    """Hold `<root>/.workers/<name>.lock` exclusively for the block (waiting for it if another process
    or thread holds it): makes a check-then-create step, such as queueing a run only if no identical one
    exists, atomic across the sessions and CLI calls that share a runs root."""
    fd = os.open(workers_dir(Path(root)) / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def slot_is_alive(root: Path, device: str, slot: int) -> bool:
    """Whether a worker holds this slot's lock right now."""
    fd = _try_lock(_lock_path(root, device, slot))
    if fd is None:
        return True
    os.close(fd)  # closing releases the probe's lock
    return False


def _pid_alive(pid: int | None) -> bool:
    return pid_alive(pid)


@dataclass
class WorkerInfo:
    device: str
    slot: int
    alive: bool
    pid: int | None
    current_run: str | None
    log: Path
    # What it is doing: "booting" (starting: importing torch, loading data; a run queued now waits
    # for it), "ready" (idle), "training", "analysing", or "stopped" when it is not alive.
    state: str = "stopped"
    boot_seconds: float | None = None  # how long its boot took, once it is ready
    started: str | None = None  # when its process started (ISO time)

    @property
    def ready(self) -> bool:
        """Alive and past booting: a queued run starts within a fraction of a second."""
        return self.alive and self.state not in ("booting", "stopped")


def workers(root: str | Path | None = None) -> list[WorkerInfo]:
    """Every worker slot ever started under this root and whether it is alive now."""
    import json

    folder = runs_root(root) / WORKERS_DIR
    found = []
    usable = folder.is_dir() and not folder.is_symlink()
    for info_path in sorted(folder.glob("*.json")) if usable else []:
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if not (isinstance(info, dict) and isinstance(info.get("device"), str) and isinstance(info.get("slot"), int)):
            continue  # a damaged info file: the lock files still tell who is alive
        alive = slot_is_alive(runs_root(root), info["device"], info["slot"])
        state = info.get("state") if isinstance(info.get("state"), str) else "ready"  # files older than states
        boot = info.get("boot_seconds")
        found.append(WorkerInfo(info["device"], info["slot"], alive, info.get("pid") if alive else None,
                                info.get("current_run") if alive else None, info_path.with_suffix(".log"),
                                state=state if alive else "stopped",
                                boot_seconds=boot if isinstance(boot, (int, float)) and alive else None,
                                started=info.get("started") if isinstance(info.get("started"), str) else None))
    return found


def write_info(root: Path, device: str, slot: int, **fields: Any) -> None:
    """The slot's info file (`<root>/.workers/<device>-<slot>.json`): device, slot and `fields`
    (pid, started, state, boot_seconds, current_run), stamped `updated`."""
    from ..runs import now_iso, write_json

    write_json(workers_dir(root) / f"{device.replace(':', '_')}-{slot}.json",
               {"device": device, "slot": slot, **fields, "updated": now_iso()})

