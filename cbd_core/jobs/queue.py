"""The queue is the runs root itself: a run folder whose status is "queued" waits in its device's queue,
oldest first; a worker (or a cancel) takes it with an O_EXCL `claim` file, so it is taken once.

    submit(config)            validate like the CLI, create the run folder as "queued", make sure a
                              worker serves its device; returns the RunDir at once
    request_cancel(run)       a queued run is cancelled on the spot; a running one at its next batch
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import RunConfig
from ..runs import FINISHED, RunDir, list_runs, now_iso, runs_root
from .settings import CANCEL_FILE, CLAIM_FILE, device_key, wake_file_name

def submit(config: RunConfig, root: str | Path | None = None, start_worker: bool = True) -> RunDir:
    """Validate `config` exactly as the CLI does (UserInputError on bad input, before anything is
    written), create its run folder as queued, and make sure a worker serves its device."""
    from ..pipeline import prepare

    root = runs_root(root)
    prepared = prepare(config)  # loads and poisons the data: a bad value fails here, not in the worker
    queue = device_key(prepared.config)
    run = RunDir.create(root, prepared.config.to_dict(), state="queued", queue=queue)
    wake(root, queue)
    if start_worker:
        from . import launcher

        launcher.ensure_workers(root, devices=[queue])
    return run


def wake(root: Path, queue: str) -> None:
    """Tell an idle worker of `queue` that a run is waiting (it checks the wake file's time every
    WAKE_POLL_S, and scans the queue every IDLE_POLL_S regardless). Best effort: never raises."""
    from .locks import workers_dir

    try:
        (workers_dir(root) / wake_file_name(queue)).touch()
    except OSError:
        pass


def request_cancel(run: RunDir) -> str:
    """Cancel a run: a queued one is cancelled now, a running one at its next batch (what it has
    written stays). Returns the state it was found in."""
    state = run.status().get("state")
    if state in FINISHED:
        return state
    if state == "queued" and _claim(run):
        run.update_status(state="cancelled", finished=now_iso(), error=None)
        return "queued"
    try:
        (run.path / CANCEL_FILE).touch()  # the worker, `run` and `matrix` all check it at every batch
    except FileNotFoundError:
        return "deleted"
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
