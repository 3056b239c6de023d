"""Submitting runs: validate like the CLI, create the run folder as "queued" (or reuse the same run), and
make sure something trains it (the device's local worker, or a Ray task). Above the queue, the launcher
and the Ray engine, which it calls; nothing below imports it.

    submit(config)            validate like the CLI, create the run folder as "queued", make sure a
                              worker serves its device; returns the RunDir at once. Idempotent: when a
                              run with an identical config (seed included) is queued, running or done,
                              that run is returned and nothing new is queued (`submit_once` says which)
    submit_with_baseline(c)   the same, then its undefended baseline (reused when one exists)
    submit_baseline(run)      the undefended baseline of a run already queued (reused when one exists)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from .. import verdicts
from ..config import RunConfig
from ..run_index import SAME_RUN, find
from ..runs import RunDir, runs_root
from . import cluster, launcher
from .locks import root_lock
from .queue import wake
from .settings import device_key

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
        launcher.ensure_workers(root, devices=[queue])
    return submitted


def identical_run(config: dict[str, Any], root: str | Path | None = None) -> tuple[RunDir, str] | None:
    """(run, state) of the newest run under the root whose config.json equals `config` (a validated
    config's dict, `run_index.SAME_RUN`) and whose state is queued, running or done; None when there
    is none. Unreadable folders are skipped."""
    found = find(config, SAME_RUN, REUSED_STATES, root)
    return (found[0].run, found[0].state) if found else None


def submit_baseline(run: RunDir, root: str | Path | None = None, start_worker: bool = True,
                    ray: str | None = None) -> Submitted | None:
    """Queue the undefended baseline of `run` (after it, so the worker takes it next), unless one on the
    same data (`run_index.SAME_DATA`) exists in any non-failed state, a done one first: then that one,
    with `reused` True. None for an undefended run, which needs none."""
    config = run.config()
    if config.get("defense") == verdicts.UNDEFENDED:
        return None
    root = runs_root(root if root is not None else run.path.parent)
    existing = verdicts.find_reusable_baseline(config, root)
    if existing is not None:
        return Submitted(existing, reused=True, state=str(existing.status().get("state")))
    return submit_once(RunConfig.from_dict(verdicts.baseline_config(config)), root, start_worker, ray)


def submit_with_baseline(config: RunConfig, root: str | Path | None = None, start_worker: bool = True,
                         ray: str | None = None) -> tuple[Submitted, Submitted | None]:
    """`submit_once(config)`, then its undefended baseline (`submit_baseline`): what every Start, Quick
    demo and preset button does, so that the verdict has what to judge against."""
    submitted = submit_once(config, root, start_worker, ray)
    return submitted, submit_baseline(submitted.run, root, start_worker, ray)
