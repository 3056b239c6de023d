"""Background jobs: runs train in long-lived worker processes, never inside the dashboard's script.

One job per file: `settings` (names, timings, slots per device), `locks` (a held lock is a live
worker), `queue` (claim, cancel, positions), `submission` (queueing a run and its baseline), `launcher` (the one owner of the workers'
lifetime: starting them, recovery by recorded owner, stopping them), `worker` (the loop that
trains), `run_analysis` (a finished run's maps and attribution shares, computed by whoever trained it) and
`cluster` (Ray). This package re-exports what callers use.

Any widget click reruns a Streamlit script, which would kill a training loop inside it; so the
dashboard only *queues* a run (a run folder whose status is "queued") and a worker process trains
it through the CLI's own code path (`pipeline.train_run`). The queue is the runs root
itself, so it survives an app restart, a closed tab, several browser sessions.

    submit(config)            validate like the CLI, create the run folder as "queued", make sure a
                              worker serves its device; returns the RunDir at once (an identical run
                              already queued, running or done is returned instead: `submit_once`)
    worker_state(root, dev)   what the device's worker is doing: none, starting, idle or busy (and with what)
    request_cancel(run)       a queued run is cancelled on the spot; a running one at its next batch
    ensure_workers(root)      start the missing workers (one per slot per device); mark orphans failed
    start_failures(root)      {device: why this process could not start its worker (a full disk…)}
    python -m cbd_core worker --root R --device cpu [--slot 0]     one worker, in the foreground

With $BACKDOOR_LAB_RAY_ADDRESS (or `ray=` on submit) a run waits in the queue "ray" and a Ray task
trains it instead (`cluster`), through the same `worker.train_queued_run`, then analyses it through the
same `run_analysis.analyse_finished_run`.

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

from ..runs import status_line
from .cluster import RAY_ADDRESS_ENV, RAY_QUEUE, ray_address
from .launcher import (ORPHAN_ERROR, ensure_workers, keep_workers_running, owner_gone, recover_orphans,
                       start_failures, stop_workers)
from .locks import WorkerInfo, _lock_path, _pid_alive, _try_lock, root_lock, slot_is_alive, workers
from .queue import _claim, _waiting, cancel_requested, queue_position, queue_positions, queued_runs, request_cancel
from .submission import (REUSED_STATES, Submitted, identical_run, submit, submit_baseline, submit_once,
                     submit_with_baseline)
from .readiness import WorkerState, worker_state
from .settings import (CANCEL_FILE, CLAIM_FILE, IDLE_POLL_S, PROGRESS_EVERY_S, WORKERS_DIR, device_key,
                       workers_per_device)
from .worker import Worker, worker_main

__all__ = ["RAY_ADDRESS_ENV", "RAY_QUEUE", "ray_address", "CANCEL_FILE", "CLAIM_FILE", "IDLE_POLL_S", "ORPHAN_ERROR", "PROGRESS_EVERY_S", "REUSED_STATES",
           "WORKERS_DIR", "Submitted", "Worker", "WorkerInfo", "WorkerState", "cancel_requested", "device_key",
           "ensure_workers", "identical_run", "keep_workers_running", "owner_gone", "queue_position",
           "queue_positions", "queued_runs", "recover_orphans", "request_cancel", "root_lock", "slot_is_alive",
           "start_failures", "status_line", "stop_workers", "submit", "submit_baseline", "submit_once", "submit_with_baseline", "worker_main", "worker_state", "workers",
           "workers_per_device"]
