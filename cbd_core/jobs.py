"""Background jobs: runs train in long-lived worker processes, never inside the dashboard's script.

Any widget click reruns a Streamlit script, which would kill a training loop inside it; so the
dashboard only *queues* a run (a run folder whose status is "queued") and a worker process trains
it through the CLI's own code path (`pipeline.prepare` + `execute`). The queue is the runs root
itself, so it survives an app restart, a closed tab, several browser sessions.

    submit(config)            validate like the CLI, create the run folder as "queued", make sure a
                              worker serves its device; returns the RunDir at once
    request_cancel(run)       a queued run is cancelled on the spot; a running one at its next batch
    ensure_workers(root)      start the missing workers (one per slot per device); mark orphans failed
    python -m cbd_core worker --root R --device cpu [--slot 0]     one worker, in the foreground

A worker holds an exclusive lock on `<root>/.workers/<device>-<slot>.lock` for as long as it lives:
the lock is what says "a worker is alive", so a crashed worker (even `kill -9`) frees its slot at
once and no pid file can lie. Runs are claimed with an O_EXCL `claim` file, so two workers never
take the same run. Progress goes into the run's status.json (throttled); cancelling writes a
`cancel` file that the training loop checks at every batch.

The worker stays warm between runs (torch imported once, umap-learn's numba kernels compiled once
and cached on disk), computes each finished run's UMAP map and attribution shares before taking the
next run, and fills in maps missing from older runs when it is idle. It exits on its own when it is idle and the process
that started it (the app) is gone, so stopping the app never leaves a worker spinning.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig
from .errors import UserInputError
from .progress import Cancelled, ProgressEvent
from .runs import FINISHED, RunDir, RunGone, describe_error, list_runs, now_iso, owner_record, pid_alive, runs_root

WORKERS_DIR = ".workers"
CLAIM_FILE = "claim"
CANCEL_FILE = "cancel"
PROGRESS_EVERY_S = 0.5  # status.json rewrites while training: often enough for a live page, cheap
IDLE_POLL_S = 1.0


def workers_per_device() -> int:
    """Runs trained at once per device: $BACKDOOR_LAB_WORKERS_PER_DEVICE, default 1 (one run uses
    every CPU core; on a large GPU two small runs can share it)."""
    raw = os.environ.get("BACKDOOR_LAB_WORKERS_PER_DEVICE", "1")
    try:
        value = int(raw)
    except ValueError:
        raise UserInputError(f"BACKDOOR_LAB_WORKERS_PER_DEVICE: expected a whole number, got {raw!r}",
                             "workers") from None
    if not 1 <= value <= 16:
        raise UserInputError(f"BACKDOOR_LAB_WORKERS_PER_DEVICE: {value} is outside [1, 16]", "workers")
    return value


def device_key(config: RunConfig) -> str:
    """The queue a run waits in: the device it will train on ("cpu", "cuda", "cuda:1", "mps")."""
    from .training import choose_device

    device = choose_device(config.device)
    return str(device) if device.index is not None else device.type


# -- locks: a held lock is a live worker ---------------------------------------------------------

def _lock_path(root: Path, device: str, slot: int) -> Path:
    return root / WORKERS_DIR / f"{device.replace(':', '_')}-{slot}.lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on `path`, or None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def slot_is_alive(root: Path, device: str, slot: int) -> bool:
    """Whether a worker holds this slot's lock right now."""
    fd = _try_lock(_lock_path(root, device, slot))
    if fd is None:
        return True
    os.close(fd)  # closing releases the probe's lock
    return False


def _pid_alive(pid: int | None) -> bool:
    return pid_alive(pid)


# -- the dashboard's side: submit, cancel, see the queue -------------------------------------------

def submit(config: RunConfig, root: str | Path | None = None, start_worker: bool = True) -> RunDir:
    """Validate `config` exactly as the CLI does (UserInputError on bad input, before anything is
    written), create its run folder as queued, and make sure a worker serves its device."""
    from .pipeline import prepare

    root = runs_root(root)
    prepared = prepare(config)  # loads and poisons the data: a bad value fails here, not in the worker
    queue = device_key(prepared.config)
    run = RunDir.create(root, prepared.config.to_dict(), state="queued", queue=queue)
    if start_worker:
        ensure_workers(root, devices=[queue])
    return run


def request_cancel(run: RunDir) -> str:
    """Cancel a run: a queued one is cancelled now, a running one at its next batch (what it has
    written stays). Returns the state it was found in."""
    state = run.status().get("state")
    if state in FINISHED:
        return state
    if state == "queued" and _claim(run):
        run.update_status(state="cancelled", finished=now_iso(), error=None)
        return "queued"
    (run.path / CANCEL_FILE).touch()
    return "running"


def cancel_requested(run: RunDir) -> bool:
    return (run.path / CANCEL_FILE).exists()


def _claim(run: RunDir) -> bool:
    """Take a queued run for oneself (a worker to train it, or a cancel); False if already taken."""
    try:
        fd = os.open(run.path / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except FileNotFoundError:  # the run was deleted meanwhile
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _waiting(root: str | Path | None) -> list[tuple[RunDir, str]]:
    """(run, its queue) for every queued, unclaimed run, oldest first: one status read per run."""
    found = []
    for run in reversed(list_runs(root)):
        status = run.status()
        if status.get("state") == "queued" and not (run.path / CLAIM_FILE).exists():
            found.append((run, status.get("queue", "cpu")))
    return found


def queued_runs(root: str | Path | None = None, queue: str | None = None) -> list[RunDir]:
    """Queued runs, oldest first (the order workers take them), optionally of one device's queue."""
    return [run for run, in_queue in _waiting(root) if queue is None or in_queue == queue]


def queue_positions(root: str | Path | None = None) -> dict[str, int]:
    """Each waiting run's place in its device's queue (1 = taken next), for a whole table at once."""
    positions: dict[str, int] = {}
    counts: dict[str, int] = {}
    for run, queue in _waiting(root):
        counts[queue] = counts.get(queue, 0) + 1
        positions[run.run_id] = counts[queue]
    return positions


def queue_position(run: RunDir) -> int | None:
    """1 for the next run its device's worker will take, 2 after that, ...; None if not waiting."""
    return queue_positions(run.path.parent).get(run.run_id)


@dataclass
class WorkerInfo:
    device: str
    slot: int
    alive: bool
    pid: int | None
    current_run: str | None
    log: Path


def workers(root: str | Path | None = None) -> list[WorkerInfo]:
    """Every worker slot ever started under this root and whether it is alive now."""
    import json

    folder = runs_root(root) / WORKERS_DIR
    found = []
    for info_path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        alive = slot_is_alive(runs_root(root), info["device"], info["slot"])
        found.append(WorkerInfo(info["device"], info["slot"], alive, info.get("pid") if alive else None,
                                info.get("current_run") if alive else None, info_path.with_suffix(".log")))
    return found


def ensure_workers(root: str | Path | None = None, devices: list[str] | None = None,
                   per_device: int | None = None) -> list[int]:
    """Mark orphaned runs failed, then start a worker for every free slot of each device that has
    work or was asked for (default: the machine's best device). Returns the pids started."""
    from .training import choose_device

    root = runs_root(root)
    recover_orphans(root)
    per_device = per_device or workers_per_device()
    wanted = set(devices or [])
    if not devices:
        best = choose_device("auto")
        wanted.add(best.type)
    for _, queue in _waiting(root):  # a queue with work needs its worker even if nobody asked
        wanted.add(queue)
    started = []
    for device in sorted(wanted):
        for slot in range(per_device):
            pid = _spawn_worker(root, device, slot)
            if pid is not None:
                started.append(pid)
    return started


def _spawn_worker(root: Path, device: str, slot: int) -> int | None:
    """Start a worker for a free slot; None when the slot is already served.

    The lock is taken here and handed to the child (an inherited descriptor keeps the same lock), so
    the slot counts as served from this instant: two sessions that click Start at once, or a second
    call before the child has imported torch, cannot start a second worker."""
    lock_fd = _try_lock(_lock_path(root, device, slot))
    if lock_fd is None:
        return None
    log_path = root / WORKERS_DIR / f"{device.replace(':', '_')}-{slot}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    project = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")])),
           # Idle OpenMP threads sleep instead of spinning, so the worker and the app's pages share the
           # CPU without stealing each other's time slices; it changes no number.
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    try:
        with open(log_path, "a") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "cbd_core", "worker", "--root", str(root), "--device", device,
                 "--slot", str(slot), "--parent-pid", str(os.getpid()), "--lock-fd", str(lock_fd)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=project,
                pass_fds=(lock_fd,), start_new_session=True)  # Ctrl-C on the app must not kill a run half-way
    finally:
        os.close(lock_fd)  # the child's copy holds the lock now
    return process.pid


ORPHAN_ERROR = ("the background worker stopped while this run was in progress; what it had written is kept "
                "(start it again from the Train page)")


def _orphan_error(status: dict[str, Any]) -> str:
    owner = status.get("owner") if isinstance(status.get("owner"), dict) else {}
    if owner.get("kind") in ("cli", "matrix"):
        return (f"the {owner['kind']} process (pid {owner.get('pid')}) that trained this run stopped while it was in "
                "progress; what it had written is kept")
    return ORPHAN_ERROR


def owner_gone(run: RunDir, status: dict[str, Any]) -> bool:
    """Whether the process that trains `run` is provably gone. A worker's run: its slot's lock is
    free, or its pid is dead on this host. A CLI or matrix run: its pid is dead on this host. A run
    whose owner is on another host, or not recorded, is never called gone."""
    owner = status.get("owner")
    if not isinstance(owner, dict):
        owner = status.get("worker") if isinstance(status.get("worker"), dict) else None
        if owner is not None:
            owner = {"kind": "worker", **owner}
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
    for run in list_runs(root):
        try:
            status = run.status()
            state = status.get("state")
            claimed = (run.path / CLAIM_FILE).exists()
            if state not in ("running", "queued") or (state == "queued" and not claimed):
                continue
            has_owner = isinstance(status.get("owner"), dict) or isinstance(status.get("worker"), dict)
            if not has_owner and state == "queued":
                # Claimed by a worker that has not written its status yet: leave it a minute.
                try:
                    if time.time() - (run.path / CLAIM_FILE).stat().st_mtime < 60:
                        continue
                except FileNotFoundError:
                    continue
            elif not owner_gone(run, status):
                continue
            run.update_status(state="failed", finished=now_iso(), error=_orphan_error(status))
            recovered.append(run.run_id)
        except (RunGone, OSError):  # deleted meanwhile, or a folder we cannot write: not ours to fix
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


# -- the worker's side ------------------------------------------------------------------------------

class Worker:
    """One worker slot: trains the runs of one device's queue one after another."""

    def __init__(self, root: Path, device: str, slot: int = 0, parent_pid: int | None = None,
                 log: Callable[[str], None] = lambda line: print(line, flush=True), lock_fd: int | None = None):
        self.root, self.device, self.slot, self.parent_pid, self.log = root, device, slot, parent_pid, log
        self.stopping = False
        self.current: RunDir | None = None
        # Finished states that could not be written (a full disk): retried until they are, so a run
        # never stays "running" under a live worker that has moved on.
        self._unrecorded: dict[str, tuple[RunDir, str, dict[str, Any]]] = {}
        self._lock_fd = lock_fd  # given when the spawner took the slot's lock for us

    # The info file is for people and the Runs page; the lock is the truth about liveness.
    def _write_info(self) -> None:
        from .runs import write_json

        write_json(self.root / WORKERS_DIR / f"{self.device.replace(':', '_')}-{self.slot}.json",
                   {"device": self.device, "slot": self.slot, "pid": os.getpid(), "started": now_iso(),
                    "current_run": self.current.run_id if self.current else None})

    def serve(self, max_runs: int | None = None, exit_when_idle: bool = False) -> int:
        """Take queued runs until stopped. Returns the number of runs trained. With `exit_when_idle`
        (tests, scripts) it returns once the queue is empty; otherwise it waits for more and exits
        when idle and its parent process is gone."""
        if self._lock_fd is None:
            self._lock_fd = _try_lock(_lock_path(self.root, self.device, self.slot))
        if self._lock_fd is None:
            self.log(f"another worker already serves {self.device} slot {self.slot}; exiting")
            return 0
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
        self._write_info()
        from .analysis.embeddings import configure_numba_cache

        configure_numba_cache()  # before anything imports umap
        recover_orphans(self.root)
        self.log(f"worker {os.getpid()} serves {self.device} slot {self.slot} under {self.root}")
        trained = 0
        warmed = False
        try:
            while not self.stopping and (max_runs is None or trained < max_runs):
                try:
                    self._retry_unrecorded()
                    run = self._next_run()
                    if run is not None:
                        self._train(run)
                        self._analyse(run)
                        trained += 1
                        continue
                    if self._backfill_one():
                        continue
                except (OSError, RunGone) as err:  # a full disk, a folder deleted: log it, keep serving
                    self.log(f"worker: {describe_error(err)}")
                    time.sleep(IDLE_POLL_S)
                    continue
                if not warmed:  # compile umap's kernels while nobody waits, so a finished run's map is quick
                    warmed = self._warm_up()
                    continue
                if exit_when_idle or (self.parent_pid and not _pid_alive(self.parent_pid)):
                    break
                time.sleep(IDLE_POLL_S)
        finally:
            os.close(self._lock_fd)
        return trained

    def _on_sigterm(self, signum, frame) -> None:
        self.stopping = True  # a running run sees it at its next batch and is cancelled
        if self.current is None:
            raise SystemExit(0)  # idle, or computing a map / warming up: nothing to lose, stop now

    def _next_run(self) -> RunDir | None:
        for run in queued_runs(self.root, self.device):
            if _claim(run):
                return run
        return None

    def _train(self, run: RunDir) -> None:
        from .pipeline import execute, prepare

        self.current = run
        self._write_info()
        worker = {"device": self.device, "slot": self.slot, "pid": os.getpid()}
        owner = owner_record("worker", device=self.device, slot=self.slot)
        try:
            run.update_status(worker=worker, owner=owner, state="running", started=now_iso(), progress=None,
                              error=None)
        except RunGone:
            self.log(f"run {run.run_id}: its folder is gone; taking the next run")
            self.current = None
            self._write_info()
            return
        self.log(f"run {run.run_id}: started")
        last_write = [0.0]

        def on_progress(event: ProgressEvent) -> None:
            now = time.monotonic()
            if event.metrics is None and now - last_write[0] < PROGRESS_EVERY_S:
                return
            last_write[0] = now
            run.update_status(progress={"phase": event.phase, "epoch": event.epoch, "epochs": event.epochs,
                                        "step": event.step, "steps": event.steps,
                                        "fraction": round(event.fraction, 4), "updated": now_iso()})

        def is_cancelled() -> bool:
            if not run.exists():  # deleted under us: stop now, write nothing, re-create nothing
                raise RunGone(f"run {run.run_id}: its folder is gone")
            return self.stopping or cancel_requested(run)

        try:
            prepared = prepare(RunConfig.from_dict(run.config()))
            execute(prepared, run, progress=on_progress, is_cancelled=is_cancelled, owner=owner)
            self.log(f"run {run.run_id}: done")
        except RunGone:
            self.log(f"run {run.run_id}: its folder was deleted while it trained; stopped it")
        except (Cancelled, KeyboardInterrupt):
            self._record(run, "cancelled")
            self.log(f"run {run.run_id}: cancelled")
        except UserInputError as err:  # execute records it; prepare does not
            self._record(run, "failed", error=str(err))
            self.log(f"run {run.run_id}: failed: {err}")
        except Exception as err:  # a bug or a write error: recorded in the run if possible; the worker goes on
            self._record(run, "failed", error=describe_error(err))
            self.log(f"run {run.run_id}: failed: {describe_error(err)}")
        finally:
            self.current = None
            self._write_info()

    def _record(self, run: RunDir, state: str, **fields: Any) -> None:
        """Set a finished state unless the run already says so; a folder that is gone or a disk that
        is full is logged, never raised (the worker goes on to the next run)."""
        try:
            if run.status().get("state") != state:
                run.update_status(state=state, finished=now_iso(), **fields)
        except RunGone:
            pass
        except OSError as err:
            self.log(f"run {run.run_id}: could not record '{state}' yet: {describe_error(err)}")
            self._unrecorded[run.run_id] = (run, state, fields)

    def _retry_unrecorded(self) -> None:
        for run_id, (run, state, fields) in list(self._unrecorded.items()):
            del self._unrecorded[run_id]
            self._record(run, state, **fields)

    def _analyse(self, run: RunDir) -> None:
        """The UMAP map of a finished run, so the Embeddings page never waits on it."""
        if run.status().get("state") != "done" or self.stopping:
            return
        from .analysis.attributions import compute_trigger_shares
        from .analysis.embeddings import compute_umap

        try:
            run.update_status(analysis="computing")
            timings = compute_umap(run)
            run.update_status(analysis="done", analysis_seconds=timings)
        except Exception as err:  # the run stays done; the page says the map failed and why
            run.update_status(analysis="failed", analysis_error=f"{type(err).__name__}: {err}")
            self.log(f"run {run.run_id}: UMAP failed: {type(err).__name__}: {err}")
        try:  # the Attributions page's 100-image shares, once per run (the page computes them otherwise)
            started = time.perf_counter()
            compute_trigger_shares(run)
            run.update_status(attribution_shares_seconds=round(time.perf_counter() - started, 2))
        except Exception as err:
            self.log(f"run {run.run_id}: attribution shares failed: {type(err).__name__}: {err}")

    def _backfill_one(self) -> bool:
        """Compute the map of one finished run that lacks it (older runs, a run made by the CLI)."""
        from .analysis.embeddings import has_umap

        if self.slot != 0:
            return False  # one slot per device is enough for this light work
        for run in list_runs(self.root):
            status = run.status()
            if status.get("state") == "done" and status.get("analysis") not in ("done", "failed", "computing") \
                    and not has_umap(run):
                self._analyse(run)
                return True
        return False

    def _warm_up(self) -> bool:
        from .analysis.embeddings import warm_up

        started = time.perf_counter()
        try:
            warm_up()
        except Exception as err:
            self.log(f"UMAP warm-up failed: {type(err).__name__}: {err}")
        self.log(f"UMAP warm-up took {time.perf_counter() - started:.1f} s")
        return True


def worker_main(root: str | Path | None, device: str, slot: int = 0, parent_pid: int | None = None,
                exit_when_idle: bool = False, lock_fd: int | None = None) -> int:
    """Entry point of `python -m cbd_core worker`."""
    # Each run trains with the threads its config names (pipeline.execute), as from the CLI.
    worker = Worker(runs_root(root), device, slot, parent_pid, lock_fd=lock_fd)
    worker.serve(exit_when_idle=exit_when_idle)
    return 0


def status_line(status: dict[str, Any]) -> str:
    """A short human description of a run's status, for tables."""
    state = status.get("state", "?")
    progress = status.get("progress") or {}
    if state == "running" and progress:
        return f"running: {progress.get('phase')} epoch {max(1, progress.get('epoch', 0))}/{progress.get('epochs')}"
    return state
