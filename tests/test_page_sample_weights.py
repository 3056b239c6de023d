"""The Sample weights page: CBD's weights (histogram, AUROC per epoch, gallery) with the epoch slider,
the undefended run's explanation, and ABL's and NONE's compact views."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cbd_core.metrics import auroc
from cbd_core.runs import RunDir
from conftest import app_at_page

pytestmark = pytest.mark.usefixtures("no_worker")  # the app would start a real worker process


def open_page(root, run_id: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    return app_at_page("sample_weights", run_id).run()


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def test_cbd_run_shows_histogram_auroc_and_gallery(finished_runs, monkeypatch):
    root, ids = finished_runs
    at = open_page(root, ids["cbd"], monkeypatch)
    assert not at.exception and not at.error
    record = RunDir(root / ids["cbd"]).arrays("sample_weights")
    epochs = record["weights"].shape[0] - 1
    # numbered as on the Train page: f_B's 4 stages first, so the weights f_C starts with sit at epoch 4
    assert (at.slider[0].min, at.slider[0].max, at.slider[0].value) == (4, 4 + epochs, 4 + epochs)

    histogram, curve = charts(at)
    assert [t["type"] for t in histogram["data"]] == ["histogram", "histogram"]
    assert sum(len(t["x"]) for t in histogram["data"]) == record["weights"].shape[1]
    expected = [auroc(-w, record["is_poisoned"]) for w in record["weights"]]
    np.testing.assert_allclose(curve["data"][0]["y"], expected)
    assert curve["data"][0]["x"] == list(range(4, 5 + epochs))
    assert 2 * 8 == len(at.image)  # lowest- and highest-weight rows
    shown = [caption for image in at.image for caption in image.proto.imgs[0].caption.split("\n")]
    assert all(" · poisoned" in c or " · clean · " in c for c in shown)  # each image says which it is
    assert len(at.caption) >= 3  # an explanation beside each chart


def test_gallery_ranks_and_labels_the_poison(finished_runs, monkeypatch, tmp_path):
    """The lowest-weight row is the lowest weights, labelled poisoned. The shared tiny CBD run does not
    separate its poison (detection AUROC ~0.7 since runs record their threads), so a copy of it gets
    final weights that do: 0.01 on every poisoned sample, 0.9 on the clean ones."""
    import shutil

    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    run = RunDir(tmp_path / ids["cbd"])
    record = run.arrays("sample_weights")
    record["weights"][-1] = np.where(record["is_poisoned"], 0.01, 0.9)
    run.save_arrays("sample_weights", **record)
    at = open_page(tmp_path, ids["cbd"], monkeypatch)
    assert not at.exception
    lowest = [image.proto.imgs[0].caption for image in at.image[:8]]
    highest = [image.proto.imgs[0].caption for image in at.image[8:]]
    assert all("poisoned" in c and c.endswith("w 0.010") for c in lowest), lowest
    assert all(" · clean · " in c and c.endswith("w 0.900") for c in highest), highest


def test_moving_the_epoch_slider(finished_runs, monkeypatch):
    root, ids = finished_runs
    at = open_page(root, ids["cbd"], monkeypatch)
    at.slider[0].set_value(4).run()  # f_B's last epoch: the weights before f_C trains (row 0)
    assert not at.exception and not at.error
    weights = RunDir(root / ids["cbd"]).arrays("sample_weights")["weights"]
    histogram = charts(at)[0]
    shown = sorted(x for t in histogram["data"] for x in t["x"])
    np.testing.assert_allclose(shown, np.sort(weights[0]), rtol=1e-6)
    assert "epoch 4 (f_B done, f_C not trained yet)" in histogram["layout"]["xaxis"]["title"]["text"]
    at.slider[0].set_value(6).run()
    histogram = charts(at)[0]
    np.testing.assert_allclose(sorted(x for t in histogram["data"] for x in t["x"]), np.sort(weights[2]), rtol=1e-6)
    assert "epoch 6 (f_C's epoch 2)" in histogram["layout"]["xaxis"]["title"]["text"]


def test_the_page_says_from_which_epoch_weights_were_kept(finished_runs, monkeypatch, tmp_path):
    import shutil

    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    run = RunDir(tmp_path / ids["cbd"])
    run.write_summary({**run.summary(), "weights_kept_from_epoch": 2})
    at = open_page(tmp_path, ids["cbd"], monkeypatch)
    assert not at.exception and not at.error
    assert any("From epoch 6 (f_C's epoch 2) on, each sample keeps its lowest weight" in c.value for c in at.caption)
    curve = charts(at)[1]
    (shade,) = [shape for shape in curve["layout"]["shapes"] if shape["type"] == "rect"]
    assert (shade["x0"], shade["x1"]) == (6, 4 + run.sample_record()["weights"].shape[0] - 1)
    run.write_summary({**run.summary(), "weights_kept_from_epoch": None})
    at = open_page(tmp_path, ids["cbd"], monkeypatch)
    assert any("The weights were never frozen in this run" in c.value for c in at.caption)


def test_undefended_run_says_why_there_is_nothing(finished_runs, monkeypatch):
    root, ids = finished_runs
    at = open_page(root, ids["undefended"], monkeypatch)
    assert not at.exception and not at.error
    assert any("trained on every sample equally" in info.value for info in at.info)
    assert not at.get("plotly_chart")


def test_abl_run(finished_runs, monkeypatch):
    root, ids = finished_runs
    at = open_page(root, ids["abl"], monkeypatch)
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 1
    record = RunDir(root / ids["abl"]).arrays("sample_weights")
    assert at.metric[0].value == f"{int(record['isolated'].sum()):,}"


def test_none_run(finished_runs, monkeypatch):
    root, ids = finished_runs
    at = open_page(root, ids["nonlinearity"], monkeypatch)
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 1
    table = at.dataframe[0].value
    record = RunDir(root / ids["nonlinearity"]).arrays("sample_weights")
    assert list(table["filtered"]) == [int(f.sum()) for f in np.atleast_2d(record["filtered"])]
