"""A run's numbers depend on its config, never on how it was started: the CLI (`run`), `matrix` and
the dashboard's worker (reached through `submit`) are separate processes here, started with
different thread settings in their environment, and must give identical CA / ASR / RA and
bit-identical per-sample weights for the same config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbd_core.config import RunConfig, default_threads
from cbd_core.errors import UserInputError
from cbd_core.runs import RunDir, list_runs

from conftest import ROOT, small_subset

# A small CBD run on a user's .npz: every path trains exactly this.
FLAGS = ["--attack", "blend", "--poison-rate", "0.1", "--defense", "cbd", "--seed", "3", "--device", "cpu",
         "--defense-param", "backdoor_steps=24", "--defense-param", "epochs=2", "--defense-param", "batch_size=64"]
METRICS = ("clean_accuracy", "attack_success_rate", "robust_accuracy", "poison_detection_auroc")


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory, mnist5k) -> Path:
    train, test = small_subset(*mnist5k, 500, 200)
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=train.x, y=train.y, x_test=test.x, y_test=test.y)
    return path


def _cli(args: list[str], threads_env: str | None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads_env is not None:  # what a shell, a scheduler or another tool might set around the process
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads_env
    result = subprocess.run([sys.executable, "-m", "cbd_core", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _only_run(root: Path) -> RunDir:
    runs = list_runs(root)
    assert len(runs) == 1, [r.run_id for r in runs]
    return runs[0]


@pytest.mark.slow
def test_cli_matrix_and_worker_give_identical_numbers(tmp_path, npz_file):
    # 1. The CLI, in a process whose environment asks for one thread.
    cli = _cli(["run", "--npz", str(npz_file), *FLAGS, "--out", str(tmp_path / "cli"), "--json"], threads_env="1")
    cli_summary = json.loads(cli.stdout.strip().splitlines()[-1])

    # 2. submit queues it; a real worker process (the dashboard's) trains it, with no thread setting.
    submitted = _cli(["submit", "--npz", str(npz_file), *FLAGS, "--out", str(tmp_path / "queue"), "--no-worker",
                      "--json"], threads_env=None)
    queued = json.loads(submitted.stdout.strip().splitlines()[-1])
    queued_run = RunDir(Path(queued["run_dir"]))
    assert queued_run.status()["state"] == "queued" and queued["queue"] == "cpu"
    _cli(["worker", "--root", str(tmp_path / "queue"), "--device", "cpu", "--exit-when-idle"], threads_env="2")
    assert queued_run.status()["state"] == "done", queued_run.status()
    worker_summary = queued_run.summary()

    # 3. matrix, a dataset given as the .npz path, yet another environment.
    grid = ["matrix", "--datasets", str(npz_file), "--attacks", "blend", "--defenses",
            "cbd:backdoor_steps=24,epochs=2,batch_size=64", "--seeds", "3", "--device", "cpu",
            "--out", str(tmp_path / "grid")]
    _cli(grid, threads_env="1")
    matrix_run = _only_run(tmp_path / "grid")

    runs = {"cli": RunDir(Path(cli_summary["run_dir"])), "worker": queued_run, "matrix": matrix_run}
    configs = {name: run.config() for name, run in runs.items()}
    assert configs["cli"] == configs["worker"] == configs["matrix"]
    assert configs["cli"]["threads"] == default_threads() and configs["cli"]["deterministic"] is True
    summaries = {"cli": cli_summary, "worker": worker_summary, "matrix": matrix_run.summary()}
    for metric in METRICS:
        values = {name: s[metric] for name, s in summaries.items()}
        assert len(set(values.values())) == 1, (metric, values)
    weights = {name: run.arrays("sample_weights")["weights"] for name, run in runs.items()}
    assert np.array_equal(weights["cli"], weights["worker"]) and np.array_equal(weights["cli"], weights["matrix"])
    # And the whole epoch-by-epoch record, not only the end.
    curves = {name: [(m["phase"], m["epoch"], m["clean_accuracy"], m["attack_success_rate"], m.get("train_loss"))
                     for m in run.metrics()] for name, run in runs.items()}
    assert curves["cli"] == curves["worker"] == curves["matrix"]


def test_threads_are_part_of_the_config():
    resolved = RunConfig().validated()
    assert resolved.threads == default_threads() >= 1
    assert RunConfig(threads=3).validated().threads == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(UserInputError, match="threads"):
            RunConfig(threads=bad).validated()
    with pytest.raises(UserInputError, match="deterministic"):
        RunConfig(deterministic="yes").validated()


def test_training_restores_the_process_settings(tmp_path, patch_dataset):
    """A run sets its threads for its own duration only: the worker's next run, or the app's pages,
    keep theirs."""
    import torch

    from cbd_core.pipeline import execute, prepare

    patch_dataset(200, 100)
    before = torch.get_num_threads()
    seen = []
    config = RunConfig(defense="undefended", device="cpu", threads=1 if before != 1 else 2, embedding_samples=50,
                       defense_params={"epochs": 1})
    prepared = prepare(config)
    execute(prepared, RunDir.create(tmp_path, prepared.config.to_dict()),
            progress=lambda event: seen.append(torch.get_num_threads()))
    assert set(seen) == {prepared.config.threads}
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_submit_rejects_bad_input_without_queueing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cbd_core", "submit", "--poison-rate", "0.9", "--out",
                             str(tmp_path), "--no-worker"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: poison_rate: 0.9 is outside [0, 0.5]"]
    assert list_runs(tmp_path) == []
