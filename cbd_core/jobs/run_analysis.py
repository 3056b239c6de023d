"""The heavy analysis of a finished run, computed once by whoever trained it (the local worker or the
run's Ray task) so no page, and no class server, computes it while someone waits:

    analyse_finished_run(run, log, by)   its UMAP map, its epoch maps, its attribution shares and views
    analyse_epochs(run, log, by)         the epoch maps alone (the worker's backfill of older runs)
    map_progress(run, field)             where one map stands: pending, computing, interrupted, failed, done,
                                         and who computes it (the backfill, the worker state and the pages ask it)
    map_note_text(progress, ...)         what a page says of a map it cannot show yet, in words

Each step writes its file into the run folder (`runs` documents them) and its outcome into status.json:
the maps as `analysis` / `epoch_analysis` ("computing", then "done" with `<field>_seconds`, or "failed"
with `<field>_error`, which the Embeddings page shows), the attribution steps as `<field>_seconds` when
they succeed (the Attributions page computes what is missing itself). A step that fails is recorded and
logged, and the next one still runs: the run stays done whatever its analysis does.

A map's "computing" names its process in `<field>_by` (an `owner_record`: kind worker or ray, pid, host,
when the step began), because a process can die half-way (a worker killed, a Ray node lost) and leave
"computing" behind for ever. `map_progress` calls such a map interrupted once its process is provably
gone (its pid is dead on this host), or, where that cannot be told (another host), once it has been
computing for STALE_AFTER_S; the worker's backfill then computes it again and the Embeddings page says so.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from ..runs import RunDir, owner_record, recorded_process_alive

Log = Callable[[str], None]

# A map takes seconds to minutes (epoch maps of a long run: tens of minutes); a "computing" this old on a
# host whose processes cannot be checked from here is taken as abandoned. Redoing a live one only
# computes the same file twice (each write is atomic), so erring late costs a wait, early some CPU.
STALE_AFTER_S = 2 * 3600.0

# Where one map of a done run stands (MapProgress.state).
PENDING, COMPUTING, INTERRUPTED, FAILED, DONE = "pending", "computing", "interrupted", "failed", "done"


def analyse_finished_run(run: RunDir, log: Log, by: dict[str, Any]) -> bool:
    """Compute every analysis of `run` into its folder if it is done; False (nothing computed) when it is
    not, e.g. cancelled or failed, or done and then deleted. `by` says who computes it, as the owner
    record's kind and extras ({"kind": "worker", "device": …, "slot": …} or {"kind": "ray", "node": …}):
    each map records it with this process's pid, host and the step's start (`<field>_by`)."""
    if run.status().get("state") != "done":
        return False
    from ..analysis.attributions import compute_attribution_views, compute_trigger_shares
    from ..analysis.embeddings import compute_umap

    _step(run, "analysis", "UMAP", compute_umap, log, by)
    analyse_epochs(run, log, by)
    # What the Attributions page would otherwise compute in the app server's process (one session at a
    # time): its 100-image shares, then each kept test image's maps and predictions.
    for field, compute in (("attribution_shares", compute_trigger_shares),
                           ("attribution_views", compute_attribution_views)):
        started = time.perf_counter()
        try:
            compute(run)
            run.update_status(**{f"{field}_seconds": round(time.perf_counter() - started, 2)})
        except Exception as err:
            log(f"run {run.run_id}: {field.replace('_', ' ')} failed: {type(err).__name__}: {err}")
    return True


def analyse_epochs(run: RunDir, log: Log, by: dict[str, Any]) -> None:
    """The epoch-by-epoch maps (umap_epochs.npz) of a run that recorded its models while training
    (`by`: as for `analyse_finished_run`)."""
    from ..analysis.embeddings import compute_epoch_umap

    if not run.has_arrays("epoch_features"):
        return
    # the final maps stay either way; the page says why the animation is missing
    _step(run, "epoch_analysis", "epoch maps", compute_epoch_umap, log, by)


def _step(run: RunDir, field: str, title: str, compute: Callable[[RunDir], Any], log: Log,
          by: dict[str, Any]) -> None:
    """Run one analysis of `run`, recording `<field>` (computing, done or failed) with who computes it
    (`<field>_by`), its timings (`<field>_seconds`) or its error (`<field>_error`) in status.json."""
    try:
        run.update_status(**{field: "computing", f"{field}_by": owner_record(**by)})
        timings = compute(run)
        run.update_status(**{field: "done", f"{field}_seconds": timings})
    except Exception as err:
        run.update_status(**{field: "failed", f"{field}_error": f"{type(err).__name__}: {err}"})
        log(f"run {run.run_id}: {title} failed: {type(err).__name__}: {err}")


@dataclass(frozen=True)
class MapProgress:
    """Where one map (`analysis` or `epoch_analysis`) of a done run stands, read from its status.json."""

    state: str  # PENDING (not begun), COMPUTING, INTERRUPTED (its process is gone), FAILED or DONE
    # The process that computes it, computed it, or will (an owner_record: kind worker or ray, pid, host);
    # None: a background worker's backfill, whichever worker takes it.
    record: dict[str, Any] | None
    reason: str | None = None  # INTERRUPTED: why it counts as abandoned; FAILED: the error

    @property
    def by(self) -> str:
        """Who computes it, in words: "the background worker", "the run's task on the Ray cluster (on …)"."""
        return analyser(self.record)


def map_progress(run: RunDir, field: str, status: dict[str, Any] | None = None, idle_here: bool = False) -> MapProgress:
    """Where the map `field` ("analysis" or "epoch_analysis") of `run` stands: the one reading of a
    "computing" that no live process holds (INTERRUPTED), and of who computes a map, for the worker's
    backfill, which computes PENDING and INTERRUPTED maps again, for the worker state (which run a worker
    is mapping), and for the pages, which say who is at it or that it stopped.

    `idle_here`: the caller is a process computing no map at this moment (the worker between runs), so a
    "computing" recorded by this very process is a step that ended without recording how (the "failed"
    it tried to write refused by a full disk)."""
    status = status if status is not None else run.status()
    state = status.get(field)
    owner = run.owner(status)
    if owner is not None and owner.get("kind") not in ("ray", "worker"):
        owner = None  # a CLI run's maps are computed by a worker's backfill, whichever
    recorded = status.get(f"{field}_by")
    if not isinstance(recorded, dict):
        recorded = None
    # A map recorded before `<field>_by` existed was computed by whoever trained the run, a Ray run's task
    # or a worker (else by a worker's backfill).
    record = recorded or owner
    if state == "done":
        return MapProgress(DONE, record)
    if state == "failed":
        return MapProgress(FAILED, record, str(status.get(f"{field}_error") or "no reason was recorded"))
    if state == "computing":
        why = _abandoned(recorded, recorded.get("started"), idle_here) if recorded else _silent_for(run)
        return MapProgress(INTERRUPTED if why else COMPUTING, record, why)
    # Not begun: a Ray run's own task maps it right after training, unless that task is gone; any other
    # run waits for a local worker's backfill.
    ray_owner = owner if owner is not None and owner.get("kind") == "ray" else None
    if ray_owner is not None and _abandoned(ray_owner, status.get("finished"), idle_here=False) is None:
        return MapProgress(PENDING, ray_owner)
    return MapProgress(PENDING, None)


def analyser(record: dict[str, Any] | None) -> str:
    """Who computes a run's map, in words, from the record of its process (None: the background worker,
    which computes every map nobody else does)."""
    kind = (record or {}).get("kind")
    if kind == "ray":
        host = (record or {}).get("host")
        return "the run's task on the Ray cluster" + (f" (on {host})" if host else "")
    if kind in ("worker", None):
        return "the background worker"
    return f"the {kind} process"


# How long each map takes, as a page says it while one is computed.
MAP_TAKES = {"analysis": "UMAP takes from a few seconds to about half a minute", "epoch_analysis": "a few seconds"}
# The tone of a page's note on a map it cannot show (map_note_text's first value): it failed, or cannot be read
# (nobody computes it again); nobody is at it now (it stopped half-way, or waits for a worker that does not
# run); or someone is computing it.
NOTE_FAILED, NOTE_STALLED, NOTE_UNDER_WAY = "failed", "stalled", "under way"


def map_note_text(progress: MapProgress, field: str, what: str, worker_running: bool) -> tuple[str, str]:
    """(tone, sentence): what a page says of the map `field` (`what`, e.g. "this run's maps") while it cannot
    show it, from its `progress`: who is computing it (the background worker or a Ray-trained run's own
    task), or that it stopped half-way and whether a worker computes it again (`worker_running`: one runs
    under this runs root), or why it failed. The Embeddings, Lesson and Explorer pages say it in these words."""
    by = progress.by[:1].upper() + progress.by[1:]
    no_worker = "it starts with the app (reload the page in a moment)."
    if progress.state == FAILED:
        return NOTE_FAILED, f"{by} could not compute {what}: {progress.reason}"
    if progress.state == DONE:  # recorded as done, yet its file is gone or unreadable: nobody computes it again
        return NOTE_FAILED, f"{by} computed {what}, but what it wrote is missing from the run folder or cannot be read."
    if progress.state == INTERRUPTED:
        again = ("The background worker computes it again." if worker_running else
                 f"No background worker is running to compute it again; {no_worker}")
        return NOTE_STALLED, f"{by} stopped before finishing {what}: {progress.reason}. {again}"
    if progress.state == PENDING and progress.record is None and not worker_running:
        return NOTE_STALLED, f"No background worker is running to compute {what}; {no_worker}"
    # computing, or about to: the worker's next step, or a Ray run's task right after training
    return NOTE_UNDER_WAY, f"{by} is computing {what} ({MAP_TAKES[field]})."


def _abandoned(record: dict[str, Any], since: Any, idle_here: bool) -> str | None:
    """Why the process `record` names has provably stopped working on a map it began at `since` (an ISO
    time), in words, or None while it may still be at it."""
    alive = recorded_process_alive(record)
    if alive is False:
        return f"its process, pid {record.get('pid')}, has stopped"
    if alive and idle_here and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
        return "its last attempt ended without recording how (a full disk, say)"
    age = _seconds_since(since)
    if alive is None and age is not None and age > STALE_AFTER_S:
        where = f" on {record['host']}" if record.get("host") else ""
        return f"it began {_hours(age)} ago{where} and has not finished"
    return None


def _silent_for(run: RunDir) -> str | None:
    """For a "computing" that names no process: abandoned once status.json has not changed for
    STALE_AFTER_S (nothing writes a done run's status while its map is computed)."""
    age = time.time() - run.status_mtime() / 1e9
    if run.status_mtime() and age > STALE_AFTER_S:
        return f"nothing has been recorded for {_hours(age)}"
    return None


def _seconds_since(when: Any) -> float | None:
    """Seconds from the ISO time `when` (as `now_iso` writes it) to now; None when it cannot be read."""
    try:
        return time.time() - datetime.fromisoformat(when).timestamp() if isinstance(when, str) else None
    except ValueError:
        return None


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} hours"  # only ever said of ages past STALE_AFTER_S
