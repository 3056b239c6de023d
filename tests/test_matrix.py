"""The matrix command: a grid of real runs, resumable, summarised as CSV and Markdown."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbd_core.cli import main
from cbd_core.errors import UserInputError
from cbd_core.matrix import Cell, DefenseSpec, tables


def test_defense_spec_parses_parameters():
    spec = DefenseSpec.parse("cbd:mi_weight=0,weighting=paper")
    assert spec.name == "cbd" and dict(spec.params) == {"mi_weight": 0, "weighting": "paper"}
    assert spec.label == "cbd:mi_weight=0,weighting=paper"
    with pytest.raises(UserInputError):
        DefenseSpec.parse("cbd:mi_weight")


def test_matrix_runs_each_cell_once_and_resumes(tmp_path, patch_dataset, capsys):
    patch_dataset(400, 200)
    argv = ["matrix", "--attacks", "badnets", "--defenses", "undefended", "cbd:mi_weight=0",
            "--seeds", "0", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "2 to run" in err
    assert "| mnist5k | badnets | 0.1 | undefended |" in out and "| mnist5k | badnets | 0.1 | cbd:mi_weight=0 |" in out
    with open(tmp_path / "matrix" / "matrix.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["defense"] for r in rows] == ["undefended", "cbd:mi_weight=0"]
    assert all(0.0 <= float(r["clean_accuracy"]) <= 1.0 for r in rows)
    run_folders = sorted(p for p in tmp_path.iterdir() if p.name != "matrix")
    assert len(run_folders) == 2

    # The same grid again: nothing reruns, the same numbers come back.
    assert main(argv) == 0
    out2, err2 = capsys.readouterr()
    assert "2 already done, 0 to run" in err2
    assert out2 == out
    assert len([p for p in tmp_path.iterdir() if p.name != "matrix"]) == 2


def test_a_failed_cell_does_not_stop_the_grid_and_a_rerun_retries_only_it(tmp_path, patch_dataset, capsys,
                                                                          monkeypatch):
    """One cell fails (here its training raises, as a full disk or a folder deleted mid-run would): the
    cells after it still train, the tables hold them, the exit code and stderr name the failed cell, and
    the same command again trains that cell alone."""
    import cbd_core.pipeline as pipeline

    patch_dataset(400, 200)
    real_train_run = pipeline.train_run

    def seed_1_fails(config, *args, **kwargs):
        if config.seed == 1:
            raise OSError(28, "No space left on device")
        return real_train_run(config, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_run", seed_1_fails)
    argv = ["matrix", "--attacks", "badnets", "--defenses", "undefended", "--seeds", "0", "1", "2",
            "--epochs", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "seed 1: FAILED (OSError: [Errno 28] No space left on device)" in err
    assert "seed 2: CA" in err  # the cell after the failed one trained
    assert "1 of 3 cells failed" in err
    with open(tmp_path / "matrix" / "matrix.csv") as f:
        assert [r["seed"] for r in csv.DictReader(f)] == ["0", "2"]  # the finished cells are in the tables

    monkeypatch.setattr(pipeline, "train_run", real_train_run)
    assert main(argv) == 0
    _, err = capsys.readouterr()
    assert "2 already done, 1 to run" in err


def test_tables_report_median_and_range():
    spec = DefenseSpec("cbd")
    results = [(Cell("mnist5k", "badnets", spec, seed, 0.1),
                {"clean_accuracy": ca, "attack_success_rate": 0.0, "robust_accuracy": 0.9,
                 "poison_detection_auroc": None, "seconds": 10.0})
               for seed, ca in enumerate([0.9, 1.0, 0.92])]
    rows, markdown = tables(results)
    assert len(rows) == 3
    assert ("| mnist5k | badnets | 0.1 | cbd | 3 | 0.920 [0.900–1.000] | 0.000 [0.000–0.000] "
            "| 0.900 [0.900–0.900] | n/a | 10 | 3 removed |") in markdown


def test_matrix_rejects_bad_grid(capsys):
    assert main(["matrix", "--attacks", "nope"]) == 2
    assert main(["matrix", "--defenses", "cbd:mi_weight=-1"]) == 2
    assert main(["matrix", "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "attack" in err and "cbd.mi_weight" in err and "jobs" in err and "Traceback" not in err


@pytest.mark.slow
def test_matrix_resumes_a_grid_on_an_npz_dataset(tmp_path, tiny_sets, capsys):
    """A user's .npz: its defaults depend on its image shape, so "already done" must resolve them
    against the file, or every cell would run again."""
    import numpy as np

    train, test = tiny_sets
    data = tmp_path / "mine.npz"
    np.savez(data, x=train.x[..., 0], y=train.y, x_test=test.x[..., 0], y_test=test.y)
    argv = ["matrix", "--datasets", str(data), "--attacks", "badnets", "--defenses", "undefended", "--seeds", "0",
            "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "runs")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "1 to run" in err and "| mine | badnets | 0.1 | undefended | 1 |" in out
    assert main(argv) == 0
    assert "1 already done, 0 to run" in capsys.readouterr().err


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc (Linux)")
def test_killing_a_grid_ends_the_processes_that_train_its_cells(tmp_path):
    """A grid killed by a signal (a scheduler's SIGTERM, `kill`) takes its cells' processes with it: they
    do not train on unseen, beside whatever runs next. Their runs then read as interrupted, not done."""
    from cbd_core.runs import list_runs

    argv = [sys.executable, "-m", "cbd_core", "matrix", "--datasets", "mnist5k", "--attacks", "badnets",
            "--defenses", "undefended", "--seeds", "0", "1", "--epochs", "200", "--jobs", "2", "--threads", "1",
            "--device", "cpu", "--out", str(tmp_path)]
    grid = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline and grid.poll() is None:
            time.sleep(0.2)
            pids = [o["pid"] for o in (run.owner() for run in list_runs(tmp_path)) if o and o.get("pid")]
        assert len(pids) == 2 and all(_running(p) for p in pids), "both cells should be training"
        grid.send_signal(signal.SIGTERM)
        grid.wait(10)
        deadline = time.monotonic() + 15
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(p) for p in pids)
        assert all(run.state() != "done" for run in list_runs(tmp_path))
    finally:
        grid.kill()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
