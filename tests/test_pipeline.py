"""End to end through `pipeline.prepare` + `execute`: what a finished, a cancelled and a failed run leave
behind. Training runs on small stratified subsets of mnist5k (see `patch_dataset` in conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import cbd_core.pipeline as pipeline
from cbd_core.config import RunConfig
from cbd_core.defenses import Defense
from cbd_core.errors import UserInputError
from cbd_core.metrics import accuracy, auroc
from cbd_core.models import build_model
from cbd_core.pipeline import execute, prepare
from cbd_core.progress import Cancelled, ProgressEvent
from cbd_core.runs import RunDir, list_runs
from cbd_core.training import predict, to_tensor

SUMMARY_KEYS = {"dataset", "attack", "poison_rate", "target_label", "defense", "seed", "model", "clean_accuracy",
                "attack_success_rate", "robust_accuracy", "poison_detection_auroc", "poisoned_samples",
                "train_samples", "seconds", "device", "run_dir", "run_id", "notes"}


def _config(**overrides) -> RunConfig:
    values = dict(dataset="mnist5k", attack="badnets", poison_rate=0.1, target_label=0, defense="undefended",
                  seed=0, device="cpu", embedding_samples=300)
    values.update(overrides)
    return RunConfig(**values)


# -- one real undefended run, shared by the tests below ------------------------------------------

@pytest.fixture(scope="module")
def undefended_run(tmp_path_factory, mnist5k):
    from conftest import small_subset

    train, test = small_subset(*mnist5k, 1500, 500)
    events: list[ProgressEvent] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "load_dataset", lambda name, *a, **k: (train, test))
        # A short schedule: 3 epochs of 47 batches of 32 (the default 128 gives too few steps on 1,500).
        prepared = prepare(_config(defense_params={"epochs": 3, "batch_size": 32}))
        run = RunDir.create(tmp_path_factory.mktemp("runs"), prepared.config.to_dict())
        summary = execute(prepared, run, progress=events.append)
    return prepared, run, summary, events


def test_undefended_learns_the_backdoor(undefended_run):
    _, _, summary, _ = undefended_run
    assert summary["clean_accuracy"] > 0.5
    assert summary["attack_success_rate"] > 0.5  # chance would be about 0.1
    assert summary["robust_accuracy"] < 0.5
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert 0.0 <= summary[key] <= 1.0


def test_undefended_summary(undefended_run):
    prepared, run, summary, _ = undefended_run
    assert SUMMARY_KEYS <= set(summary)
    assert summary["dataset"] == "mnist5k" and summary["attack"] == "badnets" and summary["defense"] == "undefended"
    assert summary["poison_rate"] == 0.1 and summary["target_label"] == 0 and summary["seed"] == 0
    assert summary["model"] == "cnn" and summary["device"] == "cpu"
    assert summary["poisoned_samples"] == 150 and summary["train_samples"] == 1500
    assert summary["poison_detection_auroc"] is None  # no defense, no suspicion
    assert summary["run_dir"] == str(run.path) and summary["run_id"] == run.run_id
    assert summary["seconds"] > 0 and summary["notes"] == []
    on_disk = json.loads((run.path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert run.summary() == on_disk


def test_undefended_folder(undefended_run):
    prepared, run, summary, _ = undefended_run
    assert {"config.json", "status.json", "metrics.jsonl", "summary.json", "models", "sample_weights.npz",
            "embeddings.npz", "images.npz"} <= {p.name for p in run.path.iterdir()}
    assert not (run.path / "error.txt").exists()
    assert not [p for p in run.path.rglob("*") if p.name.endswith(".tmp")]
    config = run.config()
    assert config == json.loads(json.dumps(prepared.config.to_dict()))
    assert config["attack_params"] == {"size": 3, "row": None, "col": None, "pattern": "checkerboard"}
    assert config["defense_params"]["epochs"] == 3 and config["defense_params"]["batch_size"] == 32
    assert RunConfig.from_dict(config).validated().to_dict() == config  # enough to rerun it
    status = run.status()
    assert status["state"] == "done" and status["device"] == "cpu" and status["error"] is None
    assert {"created", "started", "finished", "seconds"} <= set(status)
    assert [r.run_id for r in list_runs(run.path.parent)] == [run.run_id]


def test_undefended_metrics_and_progress(undefended_run):
    _, run, summary, events = undefended_run
    lines = run.metrics()
    assert len(lines) == 3
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert all(line["phase"] == "train" and line["epochs"] == 3 for line in lines)
    assert all({"clean_accuracy", "attack_success_rate", "robust_accuracy", "train_loss"} <= set(line)
               for line in lines)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    # The last epoch's line scores the model that was delivered.
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert lines[-1][key] == pytest.approx(summary[key])
    # Progress: one event per batch (47 per epoch) and one closing each epoch.
    closing = [e for e in events if e.metrics is not None]
    assert len(closing) == 3 and closing[-1].fraction == 1.0
    steps = [e for e in events if e.metrics is None]
    assert len(steps) == 3 * 47 and steps[0].step == 1 and steps[0].steps == 47


def test_undefended_model_file(undefended_run):
    prepared, run, summary, _ = undefended_run
    assert run.model_names() == ["model"]
    state = torch.load(run.path / "models" / "model.pt", map_location="cpu", weights_only=True)
    model = build_model("cnn", 1, 10)
    model.load_state_dict(state)
    test = prepared.poisoned.test
    pred = predict(model, to_tensor(test.x)).argmax(1).numpy()
    assert accuracy(pred, test.y) == pytest.approx(summary["clean_accuracy"], abs=0.005)
    trig = prepared.poisoned.test_triggered
    pred = predict(model, to_tensor(trig.x)).argmax(1).numpy()
    assert np.mean(pred == 0) == pytest.approx(summary["attack_success_rate"], abs=0.005)


def test_undefended_arrays(undefended_run):
    prepared, run, _, _ = undefended_run
    data = prepared.poisoned
    sw = run.arrays("sample_weights")
    assert set(sw) == {"index", "is_poisoned", "label", "original_label", "suspicion"}
    for key in sw:
        assert sw[key].shape == (1500,), key
    np.testing.assert_array_equal(sw["index"], np.arange(1500))
    np.testing.assert_array_equal(sw["is_poisoned"], data.is_poisoned)
    assert sw["is_poisoned"].sum() == 150
    assert np.all(sw["label"][sw["is_poisoned"]] == 0)
    assert np.all(sw["original_label"][sw["is_poisoned"]] != 0)
    np.testing.assert_array_equal(sw["label"][~sw["is_poisoned"]], sw["original_label"][~sw["is_poisoned"]])
    assert np.all(np.isnan(sw["suspicion"]))

    emb = run.arrays("embeddings")
    assert set(emb) == {"index", "features_model", "prediction_model"}
    index = emb["index"]
    assert index.shape == (300,) and len(np.unique(index)) == 300 and index.max() < 1500
    # stratified on the training labels (poisoned ones included): class 0 holds 300 of the 1,500
    counts = np.bincount(data.train.y[index], minlength=10)
    assert 55 <= counts[0] <= 60 and np.all((counts[1:] >= 20) & (counts[1:] <= 32))
    assert emb["features_model"].shape == (300, 128) and emb["features_model"].dtype == np.float32
    assert emb["prediction_model"].shape == (300,)
    # predictions agree with the labels the model was trained on, mostly
    assert np.mean(emb["prediction_model"] == data.train.y[index]) > 0.5

    img = run.arrays("images")
    assert set(img) == {"train_x", "train_index", "test_x", "test_y", "trigger_region"}
    np.testing.assert_array_equal(img["train_index"], index)
    np.testing.assert_array_equal(img["train_x"], data.train.x[index])
    assert img["train_x"].shape == (300, 28, 28, 1) and img["train_x"].dtype == np.uint8
    assert img["test_x"].shape == (200, 28, 28, 1) and img["test_y"].shape == (200,)
    assert img["trigger_region"].shape == (28, 28) and img["trigger_region"].dtype == np.bool_
    assert img["trigger_region"].sum() == 9


# -- CBD -----------------------------------------------------------------------------------------

def test_cbd_run(tmp_path, patch_dataset):
    patch_dataset(600, 200)
    prepared = prepare(_config(defense="cbd", defense_params={"backdoor_steps": 8, "epochs": 1},
                               embedding_samples=100))
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    summary = execute(prepared, run)
    assert run.status()["state"] == "done"
    assert run.model_names() == ["f_B", "f_C"]
    for name in ("f_B", "f_C"):
        model = build_model("cnn", 1, 10)
        model.load_state_dict(torch.load(run.path / "models" / f"{name}.pt", map_location="cpu", weights_only=True))
    sw = run.arrays("sample_weights")
    assert sw["weights"].shape == (2, 600)  # (epochs + 1, N): row 0 before f_C trains
    assert np.all((sw["weights"] >= 0) & (sw["weights"] <= 1))
    assert sw["suspicion"].shape == (600,) and np.all(np.isfinite(sw["suspicion"]))
    assert sw["is_poisoned"].sum() == 60
    value = summary["poison_detection_auroc"]
    assert value is not None and 0.0 <= value <= 1.0
    assert value == pytest.approx(auroc(sw["suspicion"], sw["is_poisoned"]))
    assert SUMMARY_KEYS <= set(summary) and summary["defense"] == "cbd"
    # f_B reports its 8 steps in four stages; then one f_C epoch
    assert [(m["phase"], m["epoch"]) for m in run.metrics()] == [("f_B", 1), ("f_B", 2), ("f_B", 3), ("f_B", 4),
                                                                 ("f_C", 1)]
    assert [m["step"] for m in run.metrics()[:4]] == [2, 4, 6, 8]
    capture = summary["f_b_capture"]
    assert capture["steps"] == 8 and isinstance(capture["captured"], bool)
    assert capture["detection_auroc"] == pytest.approx(auroc(-sw["loss_backdoor"], sw["is_poisoned"]))
    emb = run.arrays("embeddings")
    assert {"features_f_C", "features_f_B", "prediction_f_C", "prediction_f_B"} <= set(emb)
    assert emb["features_f_B"].shape == emb["features_f_C"].shape == (100, 128)


# -- cancelled and failed runs ---------------------------------------------------------------------

@pytest.mark.parametrize("when", ["after the first step", "after the first epoch"])
def test_cancelled_run(tmp_path, patch_dataset, when):
    patch_dataset(400, 100)
    prepared = prepare(_config(defense_params={"epochs": 3}))
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    calls = []

    def is_cancelled() -> bool:
        calls.append(1)
        return len(calls) > 1 if when == "after the first step" else len(run.metrics()) >= 1

    with pytest.raises(Cancelled):
        execute(prepared, run, is_cancelled=is_cancelled)
    status = run.status()
    assert status["state"] == "cancelled" and "finished" in status and status["seconds"] >= 0
    assert run.config() == json.loads(json.dumps(prepared.config.to_dict()))
    lines = run.metrics()
    if when == "after the first step":
        assert len(calls) == 2 and lines == []
    else:
        assert len(lines) == 1 and lines[0]["epoch"] == 1
    assert run.summary() is None
    assert run.model_names() == []
    assert not (run.path / "error.txt").exists()


class _Broken(Defense):
    """A defense whose training fails after one step."""

    name = "undefended"
    model_names = ("model",)

    def __init__(self, error):
        self.error = error

    def total_epochs(self, params):
        return 1

    def train(self, ctx):
        ctx.step("train", 1, 1, 1, 1)
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("boom"), UserInputError("lr: too high", "lr")])
def test_failed_run(tmp_path, patch_dataset, monkeypatch, error):
    patch_dataset(200, 100)
    prepared = prepare(_config(defense_params={"epochs": 1}))
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    monkeypatch.setattr(pipeline, "get_defense", lambda name: _Broken(error))
    with pytest.raises(type(error)):
        execute(prepared, run)
    status = run.status()
    assert status["state"] == "failed" and "finished" in status
    if isinstance(error, UserInputError):
        assert status["error"] == "lr: too high"
        assert not (run.path / "error.txt").exists()  # the user's mistake, not a bug: no traceback
    else:
        assert status["error"] == "RuntimeError: boom"
        text = (run.path / "error.txt").read_text()
        assert "Traceback" in text and "boom" in text
    assert run.summary() is None


# -- prepare ------------------------------------------------------------------------------------

def test_prepare_fails_fast_before_loading(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(pipeline, "load_dataset", no_loading)
    for config, field in [(_config(poison_rate=0.9), "poison_rate"), (_config(attack="nope"), "attack"),
                          (_config(defense="nope"), "defense"), (_config(target_label=10), "target_label"),
                          (_config(attack_params={"size": 99}), "badnets.size"),
                          (_config(defense_params={"epochs": 0}), "epochs"),
                          (_config(device="tpu"), "device"), (_config(model="vgg"), "model")]:
        with pytest.raises(UserInputError) as err:
            prepare(config)
        assert err.value.field == field


def test_prepare_is_deterministic(patch_dataset):
    patch_dataset(300, 100)
    a = prepare(_config(attack="blend", seed=4))
    b = prepare(_config(attack="blend", seed=4))
    np.testing.assert_array_equal(a.poisoned.is_poisoned, b.poisoned.is_poisoned)
    np.testing.assert_array_equal(a.poisoned.train.x, b.poisoned.train.x)
    assert a.config.attack_params == {"alpha": 0.2, "pattern_path": None}
    assert a.config.defense_params["epochs"] == 10  # undefended's default at 28x28


def test_prepare_premade_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 12, 12), dtype=np.uint8)
    x[:, 0, 0] = np.arange(100)
    y = np.arange(100) % 5
    mask = np.arange(100) % 10 == 3
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y, is_poisoned=mask)
    prepared = prepare(_config(dataset="npz", npz_path=str(path), target_label=2))
    data = prepared.poisoned
    ids = data.train.x[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(data.is_poisoned, mask[ids])  # the file's own mask, no new poison
    np.testing.assert_array_equal(data.train.x[..., 0], x[ids])
    np.testing.assert_array_equal(data.train.y, y[ids])
    assert any("came poisoned" in note for note in data.notes)
    assert np.all(data.test_triggered.y == 2) and len(data.test_triggered) == int((data.test.y != 2).sum())
    assert prepared.config.attack_params["size"] == 3
    with pytest.raises(UserInputError) as err:
        prepare(_config(dataset="npz", npz_path=str(path), target_label=7))  # only 5 classes in the file
    assert err.value.field == "target_label"


def test_zero_embedding_samples(tmp_path, patch_dataset):
    patch_dataset(200, 100)
    prepared = prepare(_config(defense_params={"epochs": 1}, embedding_samples=0))
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    execute(prepared, run)
    assert run.status()["state"] == "done"
    assert run.arrays("embeddings")["index"].shape == (0,)
