"""The worker loop: one slot of one device trains its queue's runs one after another through the CLI's
own code path (`pipeline.train_run`), writes throttled progress into each run's status, and
stays warm between runs (torch imported once, umap-learn's kernels compiled once): it computes each
finished run's UMAP map and attribution shares before taking the next (`run_analysis`, the steps a Ray
task runs too), and fills in maps missing from older runs when idle.

Its info file, `<root>/.workers/<device>-<slot>.json`, says what it is doing (`state`): "booting"
(written by the launcher before the process starts, then by the worker while it imports torch and
the training code and loads the embedded dataset), "ready" (idle, or compiling umap's kernels in the
background, which never delays a run), "training" or "analysing"; `boot_seconds` is how long booting
took. `jobs.workers(root)` reads it (WorkerInfo.state). An idle worker notices a submitted run within
WAKE_POLL_S: `submit` touches its wake file.

    python -m cbd_core worker --root R --device cpu [--slot 0]     one worker, in the foreground
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import UserInputError
from ..progress import Cancelled, ProgressEvent
from ..runs import IllegalTransition, RunDir, RunGone, describe_error, list_runs, now_iso, owner_record, runs_root
from .launcher import recover_orphans
from .locks import _lock_path, _pid_alive, _try_lock, write_info
from .queue import queued_runs
from .run_analysis import INTERRUPTED, PENDING, MapProgress, analyse_epochs, analyse_finished_run, map_progress
from .settings import IDLE_POLL_S, PROGRESS_EVERY_S, WAKE_POLL_S, WORKERS_DIR, wake_file_name

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
        self.state = "booting"  # then ready / training / analysing (see the module docstring)
        self.started = now_iso()
        self.boot_seconds: float | None = None
        self._wake_seen: int | None = None
        self._warming: threading.Thread | None = None

    # The info file is for people and the pages; the lock is the truth about liveness.
    def _write_info(self) -> None:
        write_info(self.root, self.device, self.slot, pid=os.getpid(), started=self.started, state=self.state,
                   boot_seconds=self.boot_seconds, current_run=self.current.run_id if self.current else None)

    def _set_state(self, state: str) -> None:
        self.state = state
        self._write_info()

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
        self._write_info()  # "booting"
        from ..analysis.embeddings import configure_numba_cache

        configure_numba_cache()  # before anything imports umap
        recover_orphans(self.root)
        self._woken()  # the wake file's time now: only a later touch counts
        self._boot()
        self._set_state("ready")
        self.log(f"worker {os.getpid()} serves {self.device} slot {self.slot} under {self.root} "
                 f"(ready after {self.boot_seconds} s of booting)")
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
                if not warmed:
                    # Compile umap's kernels while nobody waits, so a finished run's map is quick; in a
                    # thread, so a run queued meanwhile starts at once instead of waiting for the compiler.
                    warmed = True
                    self._warming = threading.Thread(target=self._warm_up, name="umap-warm-up", daemon=True)
                    self._warming.start()
                    continue
                if exit_when_idle or (self.parent_pid and not _pid_alive(self.parent_pid)):
                    if self._warming is not None:
                        self._warming.join()  # leave numba's disk cache whole
                    break
                self._idle_wait(IDLE_POLL_S)
        finally:
            os.close(self._lock_fd)
        return trained

    def _boot(self) -> None:
        """Import what a run needs (torch, the models, attacks and defenses) and load the embedded
        dataset once, so the first run starts at once; `boot_seconds` records how long it took."""
        started = time.perf_counter()
        try:
            from .. import pipeline  # noqa: F401
            from ..data import load_dataset

            load_dataset("mnist5k")  # the Quick demo's and the presets' data: parsed once, then cached
        except Exception as err:  # a run still loads what it needs itself; this is only a head start
            self.log(f"worker: preloading failed: {type(err).__name__}: {err}")
        self.boot_seconds = round(time.perf_counter() - started, 2)

    def _woken(self) -> bool:
        """Whether the wake file was touched since the last look (one stat)."""
        try:
            stamp: int | None = (self.root / WORKERS_DIR / wake_file_name(self.device)).stat().st_mtime_ns
        except OSError:
            stamp = None
        changed = stamp != self._wake_seen
        self._wake_seen = stamp
        return changed

    def _idle_wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early when `submit` touches the wake file."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            if self._woken():
                return
            time.sleep(WAKE_POLL_S)

    def _on_sigterm(self, signum, frame) -> None:
        self.stopping = True  # a running run sees it at its next batch and is cancelled
        if self.current is None:
            raise SystemExit(0)  # idle, or computing a map / warming up: nothing to lose, stop now

    def _next_run(self) -> RunDir | None:
        for run in queued_runs(self.root, self.device):
            if run.claim():
                return run
        return None

    def _train(self, run: RunDir) -> None:
        self.current = run
        self._set_state("training")
        try:
            train_queued_run(run, owner_record("worker", device=self.device, slot=self.slot),
                             stopping=lambda: self.stopping, record=self._record, log=self.log)
        finally:
            self.current = None
            self._set_state("ready")

    def _record(self, run: RunDir, state: str, **fields: Any) -> None:
        """Set a finished state unless the run already says so; a folder that is gone or a disk that
        is full is logged, never raised (the worker goes on to the next run)."""
        try:
            run.finish(state, **fields)
        except (RunGone, IllegalTransition):  # gone, or ended otherwise meanwhile
            pass
        except OSError as err:
            self.log(f"run {run.run_id}: could not record '{state}' yet: {describe_error(err)}")
            self._unrecorded[run.run_id] = (run, state, fields)

    def _retry_unrecorded(self) -> None:
        for run_id, (run, state, fields) in list(self._unrecorded.items()):
            del self._unrecorded[run_id]
            self._record(run, state, **fields)

    def _analyse(self, run: RunDir) -> None:
        """The maps and attribution shares of a finished run (`run_analysis`), so its pages never wait on
        them; the info file says "analysing" meanwhile."""
        if run.status().get("state") != "done" or self.stopping:
            return
        self._set_state("analysing")
        try:
            analyse_finished_run(run, self.log, self._analyser())
        finally:
            self._set_state("ready")

    def _analyser(self) -> dict[str, Any]:
        """Who computes a map, for its `<field>_by` record: this worker (run_analysis adds pid, host, time)."""
        return {"kind": "worker", "device": self.device, "slot": self.slot}

    def _backfill_one(self) -> bool:
        """Compute the map of one finished run that lacks it (older runs, a run made by the CLI), or
        whose computing was interrupted (its process died half-way: `run_analysis.map_progress`)."""
        from ..analysis.embeddings import has_epoch_umap, has_umap

        if self.slot != 0:
            return False  # one slot per device is enough for this light work
        for run in list_runs(self.root):  # by state and files, not a match of configs (run_index's)
            status = run.status()
            if status.get("state") != "done":
                continue
            # idle_here: this worker computes no map between runs, so a "computing" of its own is left over.
            final = map_progress(run, "analysis", status, idle_here=True)
            if final.state in (PENDING, INTERRUPTED) and not has_umap(run):
                self._say_why(run, "map", final)
                self._analyse(run)
                return True
            epochs = map_progress(run, "epoch_analysis", status, idle_here=True)
            if epochs.state in (PENDING, INTERRUPTED) and run.has_arrays("epoch_features") and not has_epoch_umap(run):
                self._say_why(run, "epoch maps", epochs)
                self._set_state("analysing")
                try:
                    analyse_epochs(run, self.log, self._analyser())
                finally:
                    self._set_state("ready")
                return True
        return False

    def _say_why(self, run: RunDir, what: str, progress: MapProgress) -> None:
        if progress.state == INTERRUPTED:
            self.log(f"run {run.run_id}: computing its {what} again: {progress.by} stopped ({progress.reason})")

    def _warm_up(self) -> None:
        from ..analysis.embeddings import warm_up

        started = time.perf_counter()
        try:
            warm_up()
        except Exception as err:
            self.log(f"UMAP warm-up failed: {type(err).__name__}: {err}")
        self.log(f"UMAP warm-up took {time.perf_counter() - started:.1f} s")


def train_queued_run(run: RunDir, owner: dict[str, Any], stopping: Callable[[], bool],
                     record: Callable[..., None], log: Callable[[str], None]) -> str:
    """Train one queued run in this process: the one path by which a run queued by someone else (the
    dashboard, `submit`, `matrix --ray`) is trained, by a local worker or a Ray task alike, through
    `pipeline.train_run`. It starts the run with `owner`, writes throttled progress into status.json,
    stops at the next batch when the run's cancel file appears or `stopping()` says so, and ends the run
    done, cancelled or failed with the reason (`record(run, state, **fields)` writes a finished state
    that training could not, e.g. on a full disk). Returns the state it ended in ("gone" when the folder
    was deleted); a run no longer queued (cancelled while it waited) is left as it is."""
    from ..pipeline import train_run

    state = run.status().get("state")
    if state != "queued":
        log(f"run {run.run_id}: no longer queued ({state}); not trained")
        return str(state)
    last_write = [0.0]

    def on_progress(event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.metrics is None and now - last_write[0] < PROGRESS_EVERY_S:
            return
        last_write[0] = now
        # fraction: of the current phase; run_fraction, elapsed_seconds, eta_seconds: of the whole run
        # (an estimate at the pace so far; see ProgressEvent).
        eta, whole = event.eta_seconds, event.run_fraction
        run.update_status(progress={"phase": event.phase, "epoch": event.epoch, "epochs": event.epochs,
                                    "step": event.step, "steps": event.steps,
                                    "fraction": round(event.fraction, 4),
                                    "run_fraction": None if whole is None else round(whole, 4),
                                    "elapsed_seconds": event.elapsed_seconds,
                                    "eta_seconds": None if eta is None else round(eta, 1), "updated": now_iso()})

    try:
        train_run(run, owner=owner, progress=on_progress, should_stop=stopping,
                  on_start=lambda run: log(f"run {run.run_id}: started"))
        log(f"run {run.run_id}: done")
        return "done"
    except RunGone:
        log(f"run {run.run_id}: its folder was deleted while it trained; stopped it")
        return "gone"
    except IllegalTransition as err:  # cancelled (or failed by recovery) between our look and our start
        log(f"run {run.run_id}: not trained: {err}")
        return str(run.status().get("state"))
    except (Cancelled, KeyboardInterrupt):
        record(run, "cancelled")
        log(f"run {run.run_id}: cancelled")
        return "cancelled"
    except UserInputError as err:  # train_run records it; `record` retries where the disk refused
        record(run, "failed", error=str(err))
        log(f"run {run.run_id}: failed: {err}")
    except Exception as err:  # a bug or a write error: recorded in the run if possible; the caller goes on
        record(run, "failed", error=describe_error(err))
        log(f"run {run.run_id}: failed: {describe_error(err)}")
    return "failed"


def worker_main(root: str | Path | None, device: str, slot: int = 0, parent_pid: int | None = None,
                exit_when_idle: bool = False, lock_fd: int | None = None) -> int:
    """Entry point of `python -m cbd_core worker`."""
    # Each run trains with the threads its config names (pipeline.execute), as from the CLI.
    worker = Worker(runs_root(root), device, slot, parent_pid, lock_fd=lock_fd)
    worker.serve(exit_when_idle=exit_when_idle)
    return 0
