"""The queue is the runs root itself: a run folder whose status is "queued" waits in its device's queue,
oldest first; a worker (or a cancel) takes it with an O_EXCL `claim` file, so it is taken once.

    submit(config)            validate like the CLI, create the run folder as "queued", make sure a
                              worker serves its device; returns the RunDir at once. Idempotent: when a
                              run with an identical config (seed included) is queued, running or done,
                              that run is returned and nothing new is queued (`submit_once` says which)
    request_cancel(run)       a queued run is cancelled on the spot; a running one at its next batch
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from ..config import RunConfig
from ..runs import FINISHED, RunDir, RunUnreadable, list_runs, now_iso, runs_root, to_json
from . import cluster
from .locks import root_lock, workers_dir
from .settings import CANCEL_FILE, CLAIM_FILE, device_key, wake_file_name

# A run in one of these states already stands for its config: queueing the same config again would
# train the same numbers twice (a double-clicked Start, a Quick demo pressed by a whole class). A
# failed or cancelled run does not count: submitting its config again queues a fresh run.
REUSED_STATES = ("queued", "running", "done")


class Submitted(NamedTuple):
    run: RunDir
    reused: bool  # True: an identical run was already queued, running or done, and nothing new was queued
    state: str  # the run's state as found (or "queued" for a new one)


def submit(config: RunConfig, root: str | Path | None = None, start_worker: bool = True,
           ray: str | None = None) -> RunDir:
    """Validate `config` exactly as the CLI does (UserInputError on bad input, before anything is
    written), create its run folder as queued, and make sure a worker serves its device. When an
    identical run is already queued, running or done, that run is returned instead (see `submit_once`)."""
    return submit_once(config, root, start_worker, ray).run


def submit_once(config: RunConfig, root: str | Path | None = None, start_worker: bool = True,
                ray: str | None = None) -> Submitted:
    """`submit`, saying whether the run is new. With a Ray address (`ray`, else
    $BACKDOOR_LAB_RAY_ADDRESS) the run waits in the "ray" queue and a Ray task trains it
    (`cluster.launch`) instead of the local worker. Two runs are identical when their validated configs
    (what config.json holds: data, attack, defense and every parameter, seed, threads, device choice)
    are equal. The look-up and the creation happen under one lock on the runs root, so two sessions
    (or CLI calls) submitting the same config at the same moment get the same run."""
    from ..pipeline import prepare

    root = runs_root(root)
    prepared = prepare(config)  # loads and poisons the data: a bad value fails here, not in the worker
    address = cluster.ray_address(ray)
    queue = cluster.RAY_QUEUE if address else device_key(prepared.config)
    wanted = prepared.config.to_dict()
    with root_lock(root, "submit"):
        found = identical_run(wanted, root)
        if found is not None:
            submitted = Submitted(found[0], reused=True, state=found[1])
        else:
            submitted = Submitted(RunDir.create(root, wanted, state="queued", queue=queue), reused=False,
                                  state="queued")
    if address:
        if not submitted.reused:
            cluster.launch(submitted.run, address)
        return submitted
    if not submitted.reused:
        wake(root, queue)
    if start_worker and submitted.state != "done":
        from . import launcher

        launcher.ensure_workers(root, devices=[queue])
    return submitted


def _canonical(config: dict[str, Any]) -> str:
    """A config as config.json would hold it, as one comparable string (tuples become lists, keys sorted)."""
    return json.dumps(json.loads(to_json(config)), sort_keys=True)


def identical_run(config: dict[str, Any], root: str | Path | None = None) -> tuple[RunDir, str] | None:
    """(run, state) of the newest run under the root whose config.json equals `config` (a validated
    config's dict) and whose state is queued, running or done; None when there is none. Unreadable
    folders are skipped."""
    wanted = _canonical(config)
    for run in list_runs(root):
        try:
            if _canonical(run.config()) != wanted:
                continue
        except (RunUnreadable, OSError, ValueError):
            continue
        state = run.status().get("state")
        if state in REUSED_STATES:
            return run, state
    return None


def wake(root: Path, queue: str) -> None:
    """Tell an idle worker of `queue` that a run is waiting (it checks the wake file's time every
    WAKE_POLL_S, and scans the queue every IDLE_POLL_S regardless). Best effort: never raises."""
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
        with contextlib.suppress(OSError):  # a Ray task that took it this instant stops at its first batch
            (run.path / CANCEL_FILE).touch()
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
