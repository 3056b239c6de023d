"""Ray as the engine past one machine, on a REAL local Ray cluster started by this module (2 CPUs,
stopped at the end; no mock): `matrix --ray ADDRESS` trains every cell as a Ray task that writes the run
folder into the same runs root, with the same numbers as the local grid, a run queued for the cluster
can be cancelled while it waits, and a run's maps and attribution shares are computed by its own task."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cbd_core.cli import main
from cbd_core.jobs import cluster
from cbd_core.runs import list_runs, wait_for
from conftest import ROOT
from test_reproducibility import npz_file  # noqa: F401  (the same 500-image .npz fixture)

GRID = ["--attacks", "blend", "--defenses", "cbd:backdoor_steps=24,epochs=2,batch_size=64", "--seeds", "3",
        "--device", "cpu", "--threads", "1"]
METRICS = ("clean_accuracy", "attack_success_rate", "robust_accuracy", "poison_detection_auroc")


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray cluster of 2 CPUs owned by this process (its GCS address), shut down afterwards."""
    import ray

    os.environ.pop(cluster.RAY_ADDRESS_ENV, None)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, namespace=cluster.NAMESPACE, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _wait_until_its_task_exits(run, timeout: float = 240) -> None:
    """Wait until the run's Ray actor has exited (trained, analysed, its share freed), so the next test
    finds both of the cluster's CPUs free."""
    import time

    import ray

    def alive() -> bool:
        try:
            ray.get_actor(f"run-{run.run_id}", namespace=cluster.NAMESPACE)
        except ValueError:  # no live actor holds the name: it exited
            return False
        return True

    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(), f"run {run.run_id}: its task still holds its share after {timeout} s"


def test_matrix_on_ray_gives_the_local_numbers(tmp_path, npz_file, ray_head):
    assert main(["matrix", "--datasets", str(npz_file), *GRID, "--out", str(tmp_path / "local")]) == 0
    # Another process, as a user would type it: the grid as Ray tasks on the cluster at that address.
    result = subprocess.run([sys.executable, "-m", "cbd_core", "matrix", "--ray", ray_head, "--datasets",
                             str(npz_file), *GRID, "--out", str(tmp_path / "ray")],
                            cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"as Ray tasks on {ray_head}" in result.stderr
    [local], [remote] = list_runs(tmp_path / "local"), list_runs(tmp_path / "ray")
    assert remote.config() == local.config()
    status = remote.status()
    assert status["state"] == "done" and status["queue"] == cluster.RAY_QUEUE
    assert status["owner"]["kind"] == "ray" and status["owner"]["pid"] != os.getpid()
    assert status["progress"]["phase"], "the task wrote its progress into the run folder"
    local_summary, remote_summary = local.summary(), remote.summary()
    for metric in METRICS:
        assert remote_summary[metric] == local_summary[metric], metric
    assert np.array_equal(remote.arrays("sample_weights")["weights"], local.arrays("sample_weights")["weights"])
    curve = [(m["phase"], m["epoch"], m["clean_accuracy"], m["attack_success_rate"], m.get("train_loss"))
             for m in local.metrics()]
    assert [(m["phase"], m["epoch"], m["clean_accuracy"], m["attack_success_rate"], m.get("train_loss"))
            for m in remote.metrics()] == curve
    _wait_until_its_task_exits(remote)  # its maps and shares, computed after `matrix` has returned
    assert remote.status()["analysis"] == "done", remote.status()


def test_a_ray_run_can_be_cancelled_and_says_so(tmp_path, npz_file, ray_head):
    from cbd_core.config import RunConfig
    from cbd_core.jobs import request_cancel, submit_once

    config = RunConfig(dataset="npz", npz_path=str(npz_file), attack="badnets", poison_rate=0.1, defense="cbd",
                       seed=5, device="cpu", threads=1,
                       defense_params={"backdoor_steps": 400, "epochs": 30, "batch_size": 32})
    run = submit_once(config, tmp_path, start_worker=False, ray=ray_head).run
    assert run.status()["queue"] == cluster.RAY_QUEUE
    request_cancel(run)
    status = wait_for(run, timeout=120, poll=0.2)
    assert status["state"] == "cancelled", status


def test_a_running_ray_run_stops_on_cancel_and_a_failing_one_says_why(tmp_path, npz_file, ray_head):
    """Run A takes both of the cluster's CPUs, so run B waits in Ray's queue; B's data file is then
    damaged. Cancelling A stops it at its next batch, and B, now placed, fails with the reason."""
    import shutil
    import time

    from cbd_core.config import RunConfig
    from cbd_core.jobs import request_cancel, submit_once

    def config(path, threads, seed):
        return RunConfig(dataset="npz", npz_path=str(path), attack="badnets", poison_rate=0.1, defense="cbd",
                         seed=seed, device="cpu", threads=threads,
                         defense_params={"backdoor_steps": 400, "epochs": 30, "batch_size": 32})

    first = submit_once(config(npz_file, 2, 6), tmp_path, start_worker=False, ray=ray_head).run
    deadline = time.monotonic() + 120
    while not (first.status().get("progress") or {}).get("phase") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.status()["state"] == "running", first.status()
    own = tmp_path / "own.npz"
    shutil.copy(npz_file, own)
    second = submit_once(config(own, 1, 7), tmp_path / "runs", start_worker=False, ray=ray_head).run
    assert second.status()["state"] == "queued"  # no CPU free: Ray holds it back
    own.write_bytes(b"not an npz any more")
    request_cancel(first)
    assert wait_for(first, timeout=120, poll=0.2)["state"] == "cancelled"
    failed = wait_for(second, timeout=180, poll=0.2)
    assert failed["state"] == "failed", failed
    assert "own.npz" in failed["error"], failed["error"]
    for stopped in (first, second):  # neither is analysed: only a run that ends done is
        _wait_until_its_task_exits(stopped)
        assert "analysis" not in stopped.status(), stopped.status()


def test_a_ray_run_is_analysed_by_the_task_that_trained_it(tmp_path, npz_file, ray_head):
    """No local worker serves this runs root, yet once the run's Ray task has exited (freeing its share),
    the run folder holds its UMAP map, its epoch maps and its attribution shares and views, with each
    step's outcome in status.json as the local worker records it."""
    from cbd_core.analysis.attributions import VIEWS_FILE, stored_trigger_shares
    from cbd_core.analysis.embeddings import has_epoch_umap, has_umap
    from cbd_core.config import RunConfig
    from cbd_core.jobs import Worker, submit_once, workers
    from cbd_core.jobs.run_analysis import map_progress

    config = RunConfig(dataset="npz", npz_path=str(npz_file), attack="badnets", poison_rate=0.1,
                       defense="undefended", seed=8, device="cpu", threads=1, embedding_samples=200,
                       defense_params={"epochs": 1, "batch_size": 64})
    run = submit_once(config, tmp_path, start_worker=False, ray=ray_head).run
    assert wait_for(run, timeout=180, poll=0.2)["state"] == "done"
    _wait_until_its_task_exits(run)
    status = run.status()
    assert status["owner"]["kind"] == "ray"
    assert status["analysis"] == "done" and status["epoch_analysis"] == "done", status
    # each map names the task that computed it, so the pages say so (and a lost task can be told)
    assert status["analysis_by"]["kind"] == "ray" and status["analysis_by"]["node"] == status["owner"]["node"]
    assert map_progress(run, "analysis").by.startswith("the run's task on the Ray cluster")
    assert {"attribution_shares_seconds", "attribution_views_seconds"} <= status.keys(), status
    assert has_umap(run) and has_epoch_umap(run) and run.has_arrays(VIEWS_FILE)
    assert set(stored_trigger_shares(run) or {}), "no attribution shares"
    assert workers(tmp_path) == [], "a local worker was started: the analysis must be the task's own"
    # and a local worker on this root later finds nothing to fill in: its backfill does not redo the task's work
    assert Worker(tmp_path, "cpu")._backfill_one() is False
