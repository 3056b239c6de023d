"""Launching and recovery: the one owner of the workers' lifetime.

    keep_workers_running(root)   what the app calls on every page view: at most every 30 s it marks
                                 orphaned runs failed and starts the missing workers
    ensure_workers(root)         the same, now (Start, `submit`)
    recover_orphans(root)        runs whose recorded owner is provably gone are marked failed
    stop_workers(root)           SIGTERM every live worker of the root and wait

A worker is started with its slot's lock already taken (the descriptor is handed to the child), so two
sessions that press Start at once never start two. It exits by itself when idle and the process that
started it is gone, so stopping the app never leaves a worker spinning.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..runs import IllegalTransition, RunDir, RunGone, list_runs, now_iso, runs_root
from .locks import _lock_path, _pid_alive, _try_lock, slot_is_alive, workers, workers_dir, write_info
from .queue import _waiting
from .settings import RAY_QUEUE, workers_per_device

CHECK_EVERY_S = 30.0  # how often page views may trigger recovery and a worker (re)start
_last_check: dict[str, float] = {}
_check_lock = threading.Lock()


def keep_workers_running(root: str | Path | None = None, every: float = CHECK_EVERY_S) -> bool:
    """At most once per `every` seconds per root in this process, whoever asks: mark runs whose owner
    is gone as failed and (re)start the background worker, so a queued run never waits on a worker
    that is gone. Returns whether it checked now. Never raises: the pages work without a worker (the
    Train page says none is running)."""
    import logging

    key = str(runs_root(root))
    with _check_lock:
        now = time.monotonic()
        if now - _last_check.get(key, -every) < every:
            return False
        _last_check[key] = now
    try:
        ensure_workers(key)
    except Exception:
        logging.getLogger("backdoor_lab").exception("could not start the background worker")
    return True


def ensure_workers(root: str | Path | None = None, devices: list[str] | None = None,
                   per_device: int | None = None) -> list[int]:
    """Mark orphaned runs failed, then start a worker for every free slot of each device that has
    work or was asked for (default: the machine's best device). Returns the pids started."""
    from ..training import choose_device

    root = runs_root(root)
    recover_orphans(root)
    per_device = per_device or workers_per_device()
    wanted = set(devices or [])
    if not devices:
        best = choose_device("auto")
        wanted.add(best.type)
    for _, queue in _waiting(root):  # a queue with work needs its worker even if nobody asked
        if queue != RAY_QUEUE:  # Ray tasks train those (jobs.cluster), not a local worker
            wanted.add(queue)
    started = []
    for device in sorted(wanted):
        for slot in range(per_device):
            pid = _spawn_worker(root, device, slot)
            if pid is not None:
                started.append(pid)
    return started


def _spawn_worker(root: Path, device: str, slot: int) -> int | None:
    """Start a worker for a free slot; None when the slot is already served or the start failed (the
    reason is kept for the pages: `start_failure`).

    The lock is taken here and handed to the child (an inherited descriptor keeps the same lock), so
    the slot counts as served from this instant: two sessions that click Start at once, or a second
    call before the child has imported torch, cannot start a second worker. Every step after taking
    it sits inside the try/finally that closes it: a full disk (ENOSPC) while writing the info file or
    opening the log must free the slot, or this process would hold it with no worker behind it and the
    queue would stall until a restart."""
    try:
        lock_fd = _try_lock(_lock_path(root, device, slot))
    except OSError as error:
        _record_start_failure(root, device, error)
        return None
    if lock_fd is None:
        return None
    try:
        log_path = workers_dir(root) / f"{device.replace(':', '_')}-{slot}.log"
        # "booting" from this instant (the child rewrites it with its pid, then "ready"): the pages never
        # show an earlier worker's "ready" for a slot whose new worker is still importing torch.
        write_info(root, device, slot, pid=None, started=now_iso(), state="booting", boot_seconds=None,
                   current_run=None)
        project = Path(__file__).resolve().parents[2]
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")])),
               # Idle OpenMP threads sleep instead of spinning, so the worker and the app's pages share the
               # CPU without stealing each other's time slices; it changes no number.
               "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644), "a") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "cbd_core", "worker", "--root", str(root), "--device", device,
                 "--slot", str(slot), "--parent-pid", str(os.getpid()), "--lock-fd", str(lock_fd)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=project,
                pass_fds=(lock_fd,), start_new_session=True)  # Ctrl-C on the app must not kill a run half-way
    except OSError as error:
        _record_start_failure(root, device, error)
        return None
    finally:
        os.close(lock_fd)  # the child's copy holds the lock now (or, on failure, nobody does)
    _start_failures.pop((str(root), device), None)
    return process.pid


# Why the last attempt to start a device's worker failed, per (runs root, device), in this process: the
# pages run in the process that starts workers, and a full disk may refuse any file that would say it.
_start_failures: dict[tuple[str, str], str] = {}


def _record_start_failure(root: Path, device: str, error: OSError) -> None:
    import logging

    reason = f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
    _start_failures[(str(root), device)] = f"{reason}, at {now_iso()}"
    logging.getLogger("backdoor_lab").error("could not start the %s worker: %s", device, reason)


def start_failures(root: str | Path | None) -> dict[str, str]:
    """{device: why this process last failed to start its worker for `root`} (e.g. "No space left on
    device (…/.workers/cpu-0.json), at …"); a device whose last start succeeded is not in it."""
    key = str(runs_root(root))
    return {device: reason for (folder, device), reason in _start_failures.items() if folder == key}


ORPHAN_ERROR = ("the background worker stopped while this run was in progress; what it had written is kept "
                "(start it again from the Train page)")


def _orphan_error(owner: dict[str, Any] | None) -> str:
    owner = owner or {}
    if owner.get("kind") in ("cli", "matrix"):
        return (f"the {owner['kind']} process (pid {owner.get('pid')}) that trained this run stopped while it was in "
                "progress; what it had written is kept")
    return ORPHAN_ERROR


def owner_gone(run: RunDir, status: dict[str, Any]) -> bool:
    """Whether the process that trains `run` is provably gone. A worker's run: its slot's lock is
    free, or its pid is dead on this host. A CLI or matrix run: its pid is dead on this host. A run
    whose owner is on another host, or not recorded, is never called gone."""
    owner = run.owner(status)
    if owner is None:
        return False
    alive = run.owner_alive({"owner": owner})
    if alive is False:
        return True
    if owner.get("kind") == "worker":
        try:
            slot = int(owner.get("slot", 0))
        except (TypeError, ValueError):
            return False
        device = owner.get("device") if isinstance(owner.get("device"), str) else "cpu"
        if alive is None and owner.get("host") not in (None, socket.gethostname()):
            return False  # another machine's worker: its lock says nothing about it
        return not slot_is_alive(run.path.parent, device, slot)
    return False


def recover_orphans(root: str | Path | None = None) -> list[str]:
    """Runs left "running" (or claimed but never started) by a process that is provably gone are
    marked failed, keeping what they wrote. Returns their ids. A run trained by the CLI or `matrix`
    in the same root is left alone while its process lives; unreadable runs are skipped."""
    recovered = []
    for run in list_runs(root):  # by state and recorded owner, not a match of configs (run_index's)
        try:
            status = run.status()
            state = status.get("state")
            if state not in ("running", "queued") or (state == "queued" and not run.is_claimed()):
                continue
            owner = run.owner(status)
            if owner is None and state == "queued":
                # Claimed by a worker that has not written its status yet. The claim holds its pid: a
                # live claimer is left alone; one not yet readable (being written) gets a minute.
                claimer, age = run.claimer()
                if age is None or (claimer is not None and _pid_alive(claimer)) or (claimer is None and age < 60):
                    continue
            elif not owner_gone(run, status):
                continue
            run.finish("failed", error=_orphan_error(owner))
            recovered.append(run.run_id)
        except (RunGone, OSError, IllegalTransition):  # deleted or finished meanwhile, or not ours to write
            continue
    return recovered


def stop_workers(root: str | Path | None = None, timeout: float = 10.0) -> None:
    """Ask every live worker of this root to stop (SIGTERM: a running run is cancelled) and wait."""
    live = [w for w in workers(root) if w.alive and w.pid]
    for w in live:
        try:
            os.kill(w.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(w.pid) and slot_is_alive(runs_root(root), w.device, w.slot)
                                              for w in live):
        time.sleep(0.1)
