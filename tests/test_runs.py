"""The run folder: creation, typed reads and writes, atomic files, ids and listing."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

import numpy as np
import pytest
import torch

import cbd_core.runs as runs
from cbd_core.errors import UserInputError
from cbd_core.runs import RunDir, list_runs, runs_root, valid_run_id, write_json, write_npz

CONFIG = {"dataset": "mnist5k", "attack": "badnets", "defense": "cbd", "seed": 3, "poison_rate": 0.1}


def _temp_files(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_create_and_open(tmp_path):
    root = tmp_path / "runs"  # created on demand
    run = RunDir.create(root, CONFIG)
    assert run.path.parent == root and run.path.is_dir()
    assert valid_run_id(run.run_id)
    assert run.run_id.split("-")[3:6] == ["mnist5k", "badnets", "cbd"]
    assert run.config() == CONFIG
    assert json.loads((run.path / "config.json").read_text()) == CONFIG
    status = run.status()
    assert status["state"] == "queued" and "created" in status
    assert run.summary() is None and run.metrics() == [] and run.model_names() == []
    assert run.arrays("sample_weights") is None
    opened = RunDir.open(root, run.run_id)
    assert opened.path == run.path and opened.config() == CONFIG
    other = RunDir.create(root, CONFIG, state="running")
    assert other.run_id != run.run_id and other.status()["state"] == "running"


@pytest.mark.parametrize("bad", ["", "..", ".hidden", "../etc", "a/b", "a\\b", "a b", "run;rm", "/abs"])
def test_invalid_run_ids_rejected(tmp_path, bad):
    assert not valid_run_id(bad)
    with pytest.raises(UserInputError) as err:
        RunDir.open(tmp_path, bad)
    assert err.value.field == "run"


def test_open_missing_run(tmp_path):
    (tmp_path / "20240101-000000-x").mkdir()  # a folder without config.json is not a run
    for run_id in ("20240101-000000-x", "20990101-000000-nothing"):
        with pytest.raises(UserInputError) as err:
            RunDir.open(tmp_path, run_id)
        assert err.value.field == "run" and run_id in str(err.value)


def test_valid_run_ids():
    for good in ("20240101-120000-mnist5k-badnets-cbd-ab12", "run_1.2", "A-b_c"):
        assert valid_run_id(good)


def test_status_updates(tmp_path):
    run = RunDir.create(tmp_path, CONFIG)
    created = run.status()["created"]
    s = run.update_status(state="running", device="cpu")
    assert s == run.status()
    assert s["state"] == "running" and s["device"] == "cpu" and s["created"] == created
    run.update_status(state="done", seconds=1.5, progress={"epoch": 2})
    s = run.status()
    assert s == {"state": "done", "created": created, "device": "cpu", "seconds": 1.5, "progress": {"epoch": 2},
                 "schema_version": runs.SCHEMA_VERSION}
    # A missing or corrupt status reads as failed, never as an exception.
    (run.path / "status.json").write_text("{not json")
    assert run.status()["state"] == "failed"
    (run.path / "status.json").unlink()
    assert run.status()["state"] == "failed"
    assert _temp_files(run.path) == []


def test_metrics_lines_and_torn_tail(tmp_path):
    run = RunDir.create(tmp_path, CONFIG)
    run.append_metrics({"phase": "train", "epoch": 1, "clean_accuracy": np.float32(0.5), "n": np.int64(3)})
    run.append_metrics({"phase": "train", "epoch": 2, "clean_accuracy": 0.75, "weights": np.arange(2)})
    lines = run.metrics()
    assert lines == [{"phase": "train", "epoch": 1, "clean_accuracy": 0.5, "n": 3},
                     {"phase": "train", "epoch": 2, "clean_accuracy": 0.75, "weights": [0, 1]}]
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"phase": "train", "epoch": 3, "clean_ac')  # a crash in the middle of a line
    assert run.metrics() == lines
    assert len((run.path / "metrics.jsonl").read_text().splitlines()) == 3


def test_summary_roundtrip(tmp_path):
    run = RunDir.create(tmp_path, CONFIG)
    summary = {"clean_accuracy": np.float64(0.9), "poisoned": np.int32(7), "path": tmp_path, "notes": ["a"],
               "auroc": None}
    run.write_summary(summary)
    assert run.summary() == {"clean_accuracy": 0.9, "poisoned": 7, "path": str(tmp_path), "notes": ["a"],
                             "auroc": None}
    with pytest.raises(TypeError):
        run.write_summary({"bad": object()})
    assert run.summary()["poisoned"] == 7  # the failed write left the old file whole
    assert _temp_files(run.path) == []


def test_arrays_roundtrip(tmp_path):
    run = RunDir.create(tmp_path, CONFIG)
    weights = np.random.default_rng(0).random((3, 50)).astype(np.float32)
    mask = np.arange(50) % 5 == 0
    run.save_arrays("sample_weights", weights=weights, is_poisoned=mask, index=np.arange(50))
    got = run.arrays("sample_weights")
    assert set(got) == {"weights", "is_poisoned", "index"}
    np.testing.assert_array_equal(got["weights"], weights)
    assert got["weights"].dtype == np.float32
    np.testing.assert_array_equal(got["is_poisoned"], mask)
    assert got["is_poisoned"].dtype == np.bool_
    assert run.arrays("embeddings") is None
    run.save_arrays("sample_weights", weights=weights[:1])  # overwritten whole
    assert set(run.arrays("sample_weights")) == {"weights"}
    assert _temp_files(run.path) == []


def test_model_roundtrip(tmp_path):
    from cbd_core.models import build_model

    run = RunDir.create(tmp_path, CONFIG)
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10)
    model(torch.rand(4, 1, 28, 28))  # move the BatchNorm running stats off their defaults
    run.save_model("f_C", model.state_dict())
    run.save_model("f_B", torch.nn.Linear(3, 2).state_dict())
    assert run.model_names() == ["f_B", "f_C"]
    state = run.model_state("f_C")
    assert set(state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(state[key], value.cpu(), rtol=0, atol=0)
    fresh = build_model("cnn", 1, 10)
    fresh.load_state_dict(state)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))
    # The file is plain tensors: loadable with weights_only.
    direct = torch.load(run.path / "models" / "f_C.pt", map_location="cpu", weights_only=True)
    assert set(direct) == set(state)
    assert _temp_files(run.path) == []


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "file.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    write_npz(tmp_path / "deep" / "arr.npz", x=np.zeros(3))
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["arr.npz", "file.json"]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_json(target, {"a": 3})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 2}  # the old file is whole
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["arr.npz", "file.json"]


class _Clock(datetime):
    """A datetime whose now() ticks one second per call (no sleeping)."""

    start = datetime(2024, 5, 1, 12, 0, 0)
    ticks = 0

    @classmethod
    def now(cls, tz=None):
        cls.ticks += 1
        value = cls.start + timedelta(seconds=cls.ticks)
        return value.replace(tzinfo=tz) if tz else value


def test_list_runs_newest_first(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "datetime", _Clock)
    root = tmp_path / "runs"
    assert list_runs(root) == []
    created = [RunDir.create(root, {**CONFIG, "dataset": name, "seed": i})
               for i, name in enumerate(["zeta", "alpha", "mnist5k", "beta"])]
    (root / "not-a-run").mkdir()
    (root / "stray.txt").write_text("x")
    listed = list_runs(root)
    assert [r.run_id for r in listed] == [r.run_id for r in reversed(created)]
    assert [r.config()["seed"] for r in listed] == [3, 2, 1, 0]
    # The root can come from the environment.
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    assert [r.run_id for r in list_runs()] == [r.run_id for r in listed]
    created[0].delete()
    assert len(list_runs(root)) == 3


def test_runs_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path / "env"))
    assert runs_root() == (tmp_path / "env").resolve()
    assert runs_root(tmp_path / "given") == (tmp_path / "given").resolve()
    monkeypatch.delenv("BACKDOOR_LAB_RUNS")
    monkeypatch.chdir(tmp_path)
    assert runs_root() == (tmp_path / "runs").resolve()


def test_wait_for_finished_run(tmp_path):
    run = RunDir.create(tmp_path, CONFIG, state="done")
    assert runs.wait_for(run, timeout=1.0)["state"] == "done"
    pending = RunDir.create(tmp_path, CONFIG)
    with pytest.raises(TimeoutError):
        runs.wait_for(pending, timeout=0.0)


def test_run_files_readable_without_the_library(tmp_path):
    run = RunDir.create(tmp_path, CONFIG)
    run.save_arrays("embeddings", index=np.arange(3))
    with np.load(run.path / "embeddings.npz", allow_pickle=False) as f:
        np.testing.assert_array_equal(f["index"], np.arange(3))
    assert os.path.getsize(run.path / "config.json") > 0


class _FrozenClock(datetime):
    """A datetime whose now() never moves: several runs created within one second."""

    @classmethod
    def now(cls, tz=None):
        value = datetime(2024, 5, 1, 12, 0, 0)
        return value.replace(tzinfo=tz) if tz else value


def test_list_runs_newest_first_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "datetime", _FrozenClock)
    older = RunDir.create(tmp_path, {**CONFIG, "dataset": "zeta"})
    newer = RunDir.create(tmp_path, {**CONFIG, "dataset": "alpha"})
    assert [r.run_id for r in list_runs(tmp_path)] == [newer.run_id, older.run_id]
