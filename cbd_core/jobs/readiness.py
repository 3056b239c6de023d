"""What a device's worker is doing right now, so a page can say why a queued run waits instead of
showing "queued" for half a minute without a word.

    worker_state(root, device)   none | starting | idle | busy (training run X, or computing run X's maps)

It reads only what exists: the slot locks (a held lock is a live worker, see `locks`), the info file
each worker writes once it runs its loop (its `state`: "analysing" is busy, like "training"), and the
`analysis` / `epoch_analysis` fields a worker sets in a finished run's status while it computes its maps,
read as `run_analysis.map_progress` reads them (who computes one: `<field>_by`, else whoever trained the
run; one whose process is gone counts for nobody). A worker whose lock is held but whose info file does
not name a live process yet, or says "booting", is "starting" (Python, torch and the data loading).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runs import list_runs, pid_alive, runs_root
from .locks import slot_is_alive, workers
from .run_analysis import COMPUTING, map_progress
from .settings import workers_per_device

NONE, STARTING, IDLE, BUSY = "none", "starting", "idle", "busy"
TRAINING, MAPPING = "training", "mapping"


@dataclass(frozen=True)
class WorkerState:
    state: str  # NONE, STARTING, IDLE or BUSY (the most available of the device's slots)
    task: str | None = None  # when busy: TRAINING or MAPPING (a finished run's maps and attribution shares)
    run_id: str | None = None  # when busy: the run it trains or maps (None: mapping, run not told yet)


def worker_state(root: str | Path | None, device: str) -> WorkerState:
    """The state of the workers serving `device` ("cpu", "cuda", ...): "idle" when one of its slots is
    free to take a queued run, else "starting" when one is still booting, else "busy" (with what),
    else "none" when no worker serves it at all."""
    root = runs_root(root)
    info = {(w.device, w.slot): w for w in workers(root)}
    states = []
    for slot in range(workers_per_device()):
        if not slot_is_alive(root, device, slot):
            continue
        found = info.get((device, slot))
        if found is None or not found.alive or not pid_alive(found.pid) or found.state == "booting":
            # The spawner holds the lock and the process has not said hello, or it is still importing
            # torch and loading the data (its info file says "booting").
            states.append(WorkerState(STARTING))
        elif found.current_run:
            states.append(WorkerState(BUSY, TRAINING, found.current_run))
        elif found.state == "analysing":
            # Its info file says so: busy, whichever run it maps (a CLI run's too, whose owner is not it).
            states.append(WorkerState(BUSY, MAPPING, _run_being_mapped(root, found.pid, any_owner=True)))
        else:
            mapping = _run_being_mapped(root, found.pid)
            states.append(WorkerState(BUSY, MAPPING, mapping) if mapping else WorkerState(IDLE))
    for wanted in (IDLE, STARTING, BUSY):
        for state in states:
            if state.state == wanted:
                return state
    return WorkerState(NONE)


def _run_being_mapped(root: Path, worker_pid: int | None, any_owner: bool = False) -> str | None:
    """The run whose maps this worker is computing now (its status says "computing" for the final or the
    epoch-by-epoch maps and names this worker as its owner; with `any_owner`, when the worker says it is
    analysing, whoever trained it), or None. A map can take half a minute the first time, during which
    the next queued run waits."""
    for run in list_runs(root):  # by state and owner, not a match of configs (run_index's)
        status = run.status()
        for field in ("analysis", "epoch_analysis"):
            if status.get(field) != "computing":
                continue  # most runs: no process to look up
            # A "computing" whose process is gone is nobody's work, and who computes it is run_analysis's
            # reading too (older statuses name no one: then whoever trained it).
            progress = map_progress(run, field, status)
            by = progress.record or {}
            if progress.state == COMPUTING and (any_owner or (by.get("kind") == "worker" and by.get("pid") == worker_pid)):
                return run.run_id
    return None
