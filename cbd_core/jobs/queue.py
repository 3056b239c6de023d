"""The queue is the runs root itself: a run folder whose status is "queued" waits in its device's queue,
oldest first; a worker (or a cancel) takes it with an O_EXCL `claim` file, so it is taken once.

    wake(root, queue)         tell an idle worker that a run waits (`submission.submit` calls it)
    request_cancel(run)       a queued run is cancelled on the spot; a running one at its next batch
"""

from __future__ import annotations

from pathlib import Path

from ..runs import RunDir, list_runs
from .locks import workers_dir
from .settings import wake_file_name

def wake(root: Path, queue: str) -> None:
    """Tell an idle worker of `queue` that a run is waiting (it checks the wake file's time every
    WAKE_POLL_S, and scans the queue every IDLE_POLL_S regardless). Best effort: never raises."""
    try:
        (workers_dir(root) / wake_file_name(queue)).touch()
    except OSError:
        pass


def request_cancel(run: RunDir) -> str:
    """Cancel a run: a queued one is cancelled now, a running one at its next batch (what it has
    written stays). Returns the state it was found in. (`RunDir.request_cancel` does it.)"""
    return run.request_cancel()


def cancel_requested(run: RunDir) -> bool:
    return run.cancel_requested()


def _claim(run: RunDir) -> bool:
    """Take a queued run for oneself (a worker to train it); False if already taken (`RunDir.claim`)."""
    return run.claim()


def _waiting(root: str | Path | None) -> list[tuple[RunDir, str]]:
    """(run, its queue) for every queued, unclaimed run, oldest first: one status read per run."""
    found = []
    for run in reversed(list_runs(root)):  # by state and claim (the queue), not a match of configs
        status = run.status()
        if status.get("state") == "queued" and not run.is_claimed():
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
