"""The heavy analysis of a finished run, computed once by whoever trained it (the local worker or the
run's Ray task) so no page, and no class server, computes it while someone waits:

    analyse_finished_run(run, log)   its UMAP map, its epoch maps, its attribution shares and views
    analyse_epochs(run, log)         the epoch maps alone (the worker's backfill of older runs)

Each step writes its file into the run folder (`runs` documents them) and its outcome into status.json:
the maps as `analysis` / `epoch_analysis` ("computing", then "done" with `<field>_seconds`, or "failed"
with `<field>_error`, which the Embeddings page shows), the attribution steps as `<field>_seconds` when
they succeed (the Attributions page computes what is missing itself). A step that fails is recorded and
logged, and the next one still runs: the run stays done whatever its analysis does.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..runs import RunDir

Log = Callable[[str], None]


def analyse_finished_run(run: RunDir, log: Log) -> bool:
    """Compute every analysis of `run` into its folder if it is done; False (nothing computed) when it is
    not, e.g. cancelled or failed, or done and then deleted."""
    if run.status().get("state") != "done":
        return False
    from ..analysis.attributions import compute_attribution_views, compute_trigger_shares
    from ..analysis.embeddings import compute_umap

    _step(run, "analysis", "UMAP", compute_umap, log)
    analyse_epochs(run, log)
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


def analyse_epochs(run: RunDir, log: Log) -> None:
    """The epoch-by-epoch maps (umap_epochs.npz) of a run that recorded its models while training."""
    from ..analysis.embeddings import compute_epoch_umap

    if not run.has_arrays("epoch_features"):
        return
    # the final maps stay either way; the page says why the animation is missing
    _step(run, "epoch_analysis", "epoch maps", compute_epoch_umap, log)


def _step(run: RunDir, field: str, title: str, compute: Callable[[RunDir], Any], log: Log) -> None:
    """Run one analysis of `run`, recording `<field>` (computing, done or failed), its timings
    (`<field>_seconds`) or its error (`<field>_error`) in status.json."""
    try:
        run.update_status(**{field: "computing"})
        timings = compute(run)
        run.update_status(**{field: "done", f"{field}_seconds": timings})
    except Exception as err:
        run.update_status(**{field: "failed", f"{field}_error": f"{type(err).__name__}: {err}"})
        log(f"run {run.run_id}: {title} failed: {type(err).__name__}: {err}")
