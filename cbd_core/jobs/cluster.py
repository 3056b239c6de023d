"""Ray as the engine past one machine: with $BACKDOOR_LAB_RAY_ADDRESS set (or `--ray ADDRESS` on
`matrix` and `submit`), every queued run is trained, then analysed, by a Ray task instead of the local
worker.

    ray_address(explicit)        the address to use: `explicit`, else $BACKDOOR_LAB_RAY_ADDRESS, else None
    task_resources(config)       the share of a node a run asks for: its threads as CPUs, a quarter GPU for cuda
    launch(run, address)         train and analyse a queued run on the cluster; returns at once

The run folder stays the source of truth, exactly as with the local worker: the driver creates it
"queued" (in the queue "ray", which no local worker serves), and the task, on whichever node Ray
places it, trains it through `worker.train_queued_run`, the same path as the local worker
(`pipeline.train_run`), writing status, progress, metrics and arrays into that folder. So the
Train and Runs pages, Cancel (the run's cancel file), failures with their reason and `wait_for` work
unchanged. This assumes every node sees the runs root at the same path (a shared filesystem) and the
project at the same path (the task imports `cbd_core` from there); docs/install.md, "Ray: more machines", says how.

A run that ends done is then analysed by the same task, with the same share, through
`run_analysis.analyse_finished_run` (the local worker's own steps): its UMAP map, its epoch maps, its
attribution shares and views land in the run folder and each step's outcome in its status, so neither
the app's worker nor the Attributions page computes them on the class server (the worker's backfill
skips a run whose maps exist or whose status says how they went, unless the task died while it computed
them: each map's status names the task's process, `run_analysis.map_progress`). The run is "done" while its
analysis runs, as with the local worker; a step that fails says so in the status and the run stays done.
A cancelled or failed run is not analysed.

Each run is a detached Ray actor that trains and analyses in its constructor's follow-up call and exits:
a plain task dies with the process that submitted it, and `submit` or a dashboard session must be able to
go away while the run trains. The actor holds the run's CPU/GPU share only until its analysis is done.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from ..config import RunConfig
from ..runs import RunDir, describe_error, owner_record
from .settings import RAY_QUEUE  # noqa: F401  (re-exported: the queue's name)

RAY_ADDRESS_ENV = "BACKDOOR_LAB_RAY_ADDRESS"
GPU_SHARE = 0.25  # of one GPU per run that asks for cuda: four small runs share a card
NAMESPACE = "backdoor-lab"


def ray_address(explicit: str | None = None) -> str | None:
    """The Ray cluster to train on: `explicit` (a `--ray` flag), else $BACKDOOR_LAB_RAY_ADDRESS, else
    None (the local worker)."""
    return explicit or os.environ.get(RAY_ADDRESS_ENV) or None


def task_resources(config: RunConfig | dict[str, Any]) -> dict[str, float]:
    """What one run asks of a node: as many CPUs as the threads its config names (1 when unset) and,
    when it asks for cuda, a quarter of a GPU. `auto` asks for no GPU (the node decides the device)."""
    values = config.to_dict() if isinstance(config, RunConfig) else config
    device = str(values.get("device") or "auto")
    return {"num_cpus": float(values.get("threads") or 1),
            "num_gpus": GPU_SHARE if device.startswith("cuda") else 0.0}


def connect(address: str) -> None:
    """Join the cluster at `address` once per process; the tasks import this project from where it
    lies here (the same path on every node)."""
    import ray

    if ray.is_initialized():
        return
    project = str(Path(__file__).resolve().parents[2])
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": project, "OMP_WAIT_POLICY": "PASSIVE"}})


def _trainer_class():
    import ray

    @ray.remote(max_restarts=0, max_task_retries=0)
    class RunTrainer:
        """One run on one node (a detached actor: it outlives the process that launched it)."""

        def train(self, root: str, run_id: str) -> str:
            from .worker import train_queued_run

            run = RunDir(Path(root) / run_id)
            owner = owner_record("ray", node=ray.get_runtime_context().get_node_id())

            def record(run: RunDir, state: str, **fields: Any) -> None:
                run.finish(state, **fields)

            def log(line: str) -> None:
                print(line, file=sys.stderr, flush=True)

            try:
                state = train_queued_run(run, owner, stopping=lambda: False, record=record, log=log)
                if state == "done":
                    _analyse_here(run, log, {"kind": "ray", "node": owner["node"]})
                return state
            finally:
                ray.actor.exit_actor()  # free the run's CPU/GPU share at once

    return RunTrainer


def _analyse_here(run: RunDir, log: Callable[[str], None], by: dict[str, Any]) -> None:
    """A trained run's maps and attribution shares, in the task that trained it, within its CPU/GPU share
    (Ray shows the actor only its GPU share; torch is held to its CPUs here, since training restored the
    process's own thread count). The run is done already and stays so: an error no step could record
    (its folder deleted, a full disk) is only logged; its "computing" names this task (`by`), whose
    process exits next, so `run_analysis.map_progress` reads it as interrupted and a local worker redoes it."""
    import torch

    from ..analysis.embeddings import configure_numba_cache
    from .run_analysis import analyse_finished_run

    try:
        configure_numba_cache()  # umap's compiled kernels cached on this node, as the local worker does
    except OSError as err:  # no cache folder: the maps only start slower
        log(f"run {run.run_id}: no numba cache: {describe_error(err)}")
    try:
        torch.set_num_threads(max(1, int(task_resources(run.config())["num_cpus"])))
        analyse_finished_run(run, log, by)
    except Exception as err:
        log(f"run {run.run_id}: analysis stopped: {describe_error(err)}")


def launch(run: RunDir, address: str) -> None:
    """Train the queued `run` on the cluster at `address`, with its config's CPU/GPU share; returns at
    once. A failure to reach the cluster fails the run with the reason (it would wait forever else)."""
    try:
        connect(address)
        resources = task_resources(run.config())
        trainer = _trainer_class().options(name=f"run-{run.run_id}", lifetime="detached", **resources).remote()
        trainer.train.remote(str(run.path.parent), run.run_id)
    except Exception as err:
        run.finish("failed", error=f"could not start the run on the Ray cluster at {address}: {type(err).__name__}: {err}")
        raise
