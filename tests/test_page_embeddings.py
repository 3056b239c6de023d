"""The Embeddings page: waiting for the worker's map, one map per model, the colour toggle, and the
selected sample's details (AppTest cannot click a Plotly point, so the selection is set through the
page's session-state key)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cbd_core.analysis.embeddings import UMAP_FILE, compute_umap, configure_numba_cache
from cbd_core.runs import RunDir
from conftest import app_at_page

configure_numba_cache()  # before umap is first imported in this process

pytestmark = pytest.mark.usefixtures("no_worker")  # the app would start a real worker process


def open_page(run_id: str, **state) -> AppTest:
    return app_at_page("embeddings", run_id, state).run()


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


@pytest.fixture(scope="module")
def mapped_runs(finished_runs, tmp_path_factory):
    """Copies of the CBD and undefended runs with their umap.npz computed (as the worker would)."""
    root, ids = finished_runs
    copy_root = tmp_path_factory.mktemp("mapped_runs")
    for defense in ("cbd", "undefended"):
        shutil.copytree(root / ids[defense], copy_root / ids[defense])
        compute_umap(RunDir(copy_root / ids[defense]))
    return copy_root, ids


def test_without_a_map_the_page_says_the_worker_is_on_it(finished_runs, tmp_path, monkeypatch):
    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    (tmp_path / ids["cbd"] / f"{UMAP_FILE}.npz").unlink(missing_ok=True)
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_page(ids["cbd"])
    assert not at.exception and not at.error
    assert any("background worker" in w.value for w in at.warning)  # none is running in this test
    assert not at.get("plotly_chart")
    assert not (tmp_path / ids["cbd"] / f"{UMAP_FILE}.npz").exists()  # the page never computes it


def test_a_map_that_failed_says_why(finished_runs, tmp_path, monkeypatch):
    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    RunDir(tmp_path / ids["cbd"]).update_status(analysis="failed", analysis_error="ValueError: no features")
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_page(ids["cbd"])
    assert not at.exception
    assert any("no features" in e.value for e in at.error)


def test_cbd_shows_f_b_left_and_f_c_right_one_trace_each(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page(ids["cbd"])
    assert not at.exception and not at.error
    specs = chart_specs(at)
    assert [spec["layout"]["title"]["text"] for spec in specs] == ["backdoored model f_B", "deconfounded model f_C"]
    embeddings = RunDir(root / ids["cbd"]).arrays("embeddings")
    poisoned = RunDir(root / ids["cbd"]).arrays("sample_weights")["is_poisoned"][embeddings["index"]]
    for spec in specs:
        (trace,) = spec["data"]
        assert trace["type"] == "scattergl"
        assert trace["customdata"] == embeddings["index"].tolist()
        assert trace["marker"]["symbol"] == ["x" if p else "circle" for p in poisoned]
        assert all(isinstance(c, str) and c.startswith("#") for c in trace["marker"]["color"])
    assert len(at.caption) >= 2  # an explanation beside each chart


def test_undefended_run_has_one_map(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page(ids["undefended"])
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 1
    assert "CBD's final weight" not in at.radio(key="embedding_colour_by").options


def test_colour_by_weight(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page(ids["cbd"])
    at.radio(key="embedding_colour_by").set_value("CBD's final weight").run()
    assert not at.exception and not at.error
    final = RunDir(root / ids["cbd"]).arrays("sample_weights")["weights"][-1]
    index = RunDir(root / ids["cbd"]).arrays("embeddings")["index"]
    for spec in chart_specs(at):
        marker = spec["data"][0]["marker"]
        assert "colorscale" in marker
        np.testing.assert_allclose(marker["color"], final[index], rtol=1e-6)


def test_selected_sample_shows_its_image_and_every_prediction(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    run = RunDir(root / ids["cbd"])
    index = run.arrays("embeddings")["index"]
    record = run.arrays("sample_weights")
    sample = int(index[np.flatnonzero(record["is_poisoned"][index])[0]])
    at = open_page(ids["cbd"], embedding_selected_sample=sample)
    assert not at.exception and not at.error
    assert len(at.image) == 1
    details = " ".join(md.value for md in at.markdown)
    assert "backdoored model f_B predicts" in details and "deconfounded model f_C predicts" in details
    assert "Poisoned:** yes" in details
    assert f"{record['weights'][-1][sample]:.4f}" in details
    # the chosen point is drawn larger on both maps
    for spec in chart_specs(at):
        sizes = spec["data"][0]["marker"]["size"]
        assert sizes[int(np.flatnonzero(index == sample)[0])] == max(sizes)


def test_a_sample_not_on_the_map_is_explained(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page(ids["undefended"], embedding_selected_sample=10**9)
    assert not at.exception and not at.error
    assert any("not on this run's map" in info.value for info in at.info)
