"""The Embeddings page: waiting for the worker's map, one map per model, the colour and poisoned-image
toggles, the epoch-by-epoch animation, and the selection's details (AppTest cannot click a Plotly
point, so the selection is set through the page's session-state key)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cbd_core.analysis.embeddings import EPOCH_UMAP_FILE, UMAP_FILE, compute_epoch_umap, compute_umap, configure_numba_cache
from cbd_core.runs import RunDir
from conftest import app_at_page, mapped_by_ray_task

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
        compute_epoch_umap(RunDir(copy_root / ids[defense]))
    return copy_root, ids


def traces_by_name(spec: dict) -> dict[str, dict]:
    return {trace["name"]: trace for trace in spec["data"]}


def shown_samples(spec: dict) -> list[int]:
    return sorted(s for trace in spec["data"] if trace["name"] != "selected" for s in trace["customdata"])


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


def test_a_ray_runs_map_names_its_task_and_says_when_that_task_died(finished_runs, tmp_path, monkeypatch, dead_pid):
    """A Ray-trained run's map is computed by its task on the cluster, not by "the background worker" (none
    runs here); a "computing" whose process died says it stopped, instead of waiting for it for ever."""
    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    (tmp_path / ids["cbd"] / f"{UMAP_FILE}.npz").unlink(missing_ok=True)
    run = RunDir(tmp_path / ids["cbd"])
    task, ray_task = mapped_by_ray_task(run)
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_page(ids["cbd"])
    assert not at.exception and not at.error and not at.warning
    assert any(i.value.startswith(f"{ray_task} is computing this run's map") for i in at.info), [i.value for i in at.info]

    run.update_status(analysis_by={**task, "pid": dead_pid})  # the task's process, lost half-way
    at = open_page(ids["cbd"])
    assert not at.exception and not at.error
    (warning,) = [w.value for w in at.warning]
    assert warning.startswith(f"{ray_task} stopped before finishing this run's map")
    assert f"pid {dead_pid}" in warning and "No background worker is running to compute it again" in warning
    assert not any("is computing" in i.value for i in at.info)


def test_a_map_that_failed_says_why(finished_runs, tmp_path, monkeypatch):
    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    RunDir(tmp_path / ids["cbd"]).update_status(analysis="failed", analysis_error="ValueError: no features")
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_page(ids["cbd"])
    assert not at.exception
    assert any("no features" in e.value for e in at.error)


def test_cbd_shows_f_b_left_and_f_c_right_with_a_legend(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page(ids["cbd"])
    assert not at.exception and not at.error
    specs = chart_specs(at)
    assert [spec["layout"]["title"]["text"] for spec in specs] == ["backdoored model f_B", "deconfounded model f_C"]
    embeddings = RunDir(root / ids["cbd"]).arrays("embeddings")
    record = RunDir(root / ids["cbd"]).arrays("sample_weights")
    poisoned = record["is_poisoned"][embeddings["index"]]
    for spec in specs:
        assert spec["layout"]["showlegend"] is True  # the colour key is the chart's own legend
        assert shown_samples(spec) == sorted(embeddings["index"].tolist())  # every point once
        *classes, crosses = spec["data"]
        # clean images one trace per class, drawn first; the poisoned after them as crosses
        assert [t["name"] for t in classes] == [str(c) for c in range(10)]
        assert all(t["marker"]["symbol"] == "circle" for t in classes)
        assert crosses["name"] == "poisoned (✕)" and crosses["marker"]["symbol"] == "x"
        assert sorted(crosses["customdata"]) == sorted(embeddings["index"][poisoned].tolist())
        # same size and transparency for all, so the crosses do not bury the clean images
        assert {t["marker"]["size"] for t in spec["data"]} == {6}
        assert {t["marker"]["opacity"] for t in spec["data"]} == {0.7}
        # coloured by true class by default: a cross has the colour of its real digit
        colours = dict(zip((t["name"] for t in classes), (t["marker"]["color"] for t in classes)))
        true_class = dict(zip(embeddings["index"].tolist(), record["original_label"][embeddings["index"]].tolist()))
        assert [colours[str(true_class[s])] for s in crosses["customdata"]] == crosses["marker"]["color"]
    assert len(at.caption) >= 2  # an explanation beside each chart
    assert any("Click a point on a map" in c.value for c in at.caption)  # its details go beside the maps


def test_poisoned_images_like_the_others_or_hidden(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    embeddings = RunDir(root / ids["cbd"]).arrays("embeddings")
    poisoned = RunDir(root / ids["cbd"]).arrays("sample_weights")["is_poisoned"][embeddings["index"]]
    at = open_page(ids["cbd"])
    at.radio(key="embedding_poisoned_view").set_value("as dots").run()
    assert not at.exception and not at.error
    spec = chart_specs(at)[0]
    assert "poisoned (✕)" not in traces_by_name(spec) and shown_samples(spec) == sorted(embeddings["index"].tolist())
    at.radio(key="embedding_poisoned_view").set_value("hidden").run()
    spec = chart_specs(at)[0]
    assert shown_samples(spec) == sorted(embeddings["index"][~poisoned].tolist())


def test_undefended_run_has_one_map(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page(ids["undefended"])
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 1
    assert "final weight" not in at.radio(key="embedding_colour_by").options


def test_colour_by_weight_on_a_log_scale(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page(ids["cbd"])
    at.radio(key="embedding_colour_by").set_value("final weight").run()
    assert not at.exception and not at.error
    final = RunDir(root / ids["cbd"]).arrays("sample_weights")["weights"][-1]
    for spec in chart_specs(at):
        clean, crosses = spec["data"]
        assert clean["marker"]["colorbar"]["title"]["text"] == "weight (log)"
        assert crosses["marker"]["cmin"] == clean["marker"]["cmin"]  # one scale for both
        for trace in (clean, crosses):
            expected = np.log10(np.clip(final[trace["customdata"]], 1e-4, 1.0))
            np.testing.assert_allclose(trace["marker"]["color"], expected, atol=1e-4)


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
    for spec in chart_specs(at):  # a ring around the chosen point on both maps, drawn last
        assert spec["data"][-1]["name"] == "selected" and spec["data"][-1]["customdata"] == [sample]


def test_a_selection_of_many_shows_its_count_and_images(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    run = RunDir(root / ids["cbd"])
    index = run.arrays("embeddings")["index"]
    poisoned = run.arrays("sample_weights")["is_poisoned"]
    chosen = index[poisoned[index]][:5].tolist() + index[~poisoned[index]][:10].tolist()
    at = open_page(ids["cbd"], embedding_selected_sample=chosen)
    assert not at.exception and not at.error
    assert any(h.value == "15 images selected" for h in at.subheader)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["poisoned"] == "5" and metrics["clean"] == "10"
    assert len(at.image) == 15
    assert sum("poisoned" in image.proto.imgs[0].caption for image in at.image) == 5
    for spec in chart_specs(at):
        assert sorted(spec["data"][-1]["customdata"]) == sorted(chosen)
    at.button(key="embedding_clear_selection").click().run()
    assert not at.image and not any(spec["data"][-1]["name"] == "selected" for spec in chart_specs(at))


def test_epoch_by_epoch_animates_both_models_in_the_train_pages_numbering(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    run = RunDir(root / ids["cbd"])
    at = open_page(ids["cbd"], embedding_view="epoch by epoch")
    assert not at.exception and not at.error
    (spec,) = chart_specs(at)
    metrics = run.metrics()
    numbers = [str(i) for i in range(1, len(metrics) + 1)]  # the Train page's numbering: f_B's stages, then f_C
    assert [frame["name"] for frame in spec["frames"]] == numbers
    (slider,) = spec["layout"]["sliders"]
    assert [step["label"] for step in slider["steps"]] == numbers
    assert all(step["args"][0] == [n] for step, n in zip(slider["steps"], numbers))
    buttons = spec["layout"]["updatemenus"][0]["buttons"]
    assert [b["label"] for b in buttons] == ["▶ Play", "❚❚ Pause"] and buttons[0]["method"] == "animate"
    titles = [a["text"] for a in spec["layout"]["annotations"]]
    assert titles == ["backdoored model f_B", "deconfounded model f_C"]  # the registry's model titles
    # f_C has no map until its first epoch; f_B keeps its last map while f_C trains
    f_b_stages = sum(line["phase"] == "f_B" for line in metrics)
    traces_per_model = len(spec["data"]) // 2
    for number, frame in enumerate(spec["frames"], start=1):
        f_b, f_c = frame["data"][:traces_per_model], frame["data"][traces_per_model:]
        assert sum(len(t["x"]) for t in f_b) == len(run.arrays(EPOCH_UMAP_FILE)["index"])
        assert (sum(len(t["x"]) for t in f_c) == 0) == (number <= f_b_stages)
        assert f"Epoch {number} of {len(metrics)}" in frame["layout"]["title"]["text"]
    assert spec["frames"][-1]["data"][0]["x"] == spec["frames"][f_b_stages - 1]["data"][0]["x"]
    assert spec["frames"][1]["data"][0]["x"] != spec["frames"][0]["data"][0]["x"]  # f_B's map moves as it trains


def test_old_runs_say_the_animation_needs_a_newer_run(mapped_runs, tmp_path, monkeypatch):
    root, ids = mapped_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    for name in ("epoch_features", EPOCH_UMAP_FILE):
        (tmp_path / ids["cbd"] / f"{name}.npz").unlink()
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_page(ids["cbd"], embedding_view="epoch by epoch")
    assert not at.exception and not at.error
    assert any("needs a run made by a newer version" in info.value for info in at.info)
    at.radio(key="embedding_view").set_value("final models").run()
    assert len(chart_specs(at)) == 2  # the final maps still render


def test_a_sample_not_on_the_map_is_explained(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page(ids["undefended"], embedding_selected_sample=10**9)
    assert not at.exception and not at.error
    assert any("not on this run's map" in info.value for info in at.info)


def test_the_animation_opens_poisoned_vs_clean_with_its_controls_above_the_maps(mapped_runs, monkeypatch):
    """Epoch by epoch: red and grey until the user picks a colouring; Play and the epoch slider sit
    above the maps (paper y above 1), so they are on screen where the maps start; no point touches a
    map's edge."""
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page(ids["cbd"], embedding_view="epoch by epoch")
    assert not at.exception and not at.error
    assert at.radio(key="embedding_colour_by").value == "poisoned vs clean"
    (spec,) = chart_specs(at)
    names = [t["name"] for t in spec["data"] if t.get("showlegend", True)]
    assert [n.split(" (")[0] for n in names] == ["clean", "poisoned"], names
    assert spec["layout"]["updatemenus"][0]["y"] > 1 and spec["layout"]["sliders"][0]["y"] > 1
    for frame in spec["frames"]:
        for axis, key in (("xaxis", "x"), ("yaxis", "y")):
            low, high = spec["layout"][axis]["range"]
            values = [v for t in frame["data"][:len(frame["data"]) // 2] for v in t[key]]
            if values:
                assert low < min(values) and max(values) < high
    at.radio(key="embedding_colour_by").set_value("true class").run()  # the user's choice then stays
    at.radio(key="embedding_view").set_value("final models").run()
    assert at.radio(key="embedding_colour_by").value == "true class"
    for spec in chart_specs(at):  # the final maps leave room around their points too
        xs = [v for t in spec["data"] for v in t["x"]]
        assert spec["layout"]["xaxis"]["range"][0] < min(xs) and max(xs) < spec["layout"]["xaxis"]["range"][1]


def test_a_clicked_points_details_sit_beside_the_maps(mapped_runs, monkeypatch):
    root, ids = mapped_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    sample = int(RunDir(root / ids["cbd"]).arrays("embeddings")["index"][0])
    at = open_page(ids["cbd"], embedding_selected_sample=sample)
    assert not at.exception and not at.error
    columns = list(at.columns)
    side = next(i for i, c in enumerate(columns) if any(s.value == f"Sample {sample}" for s in c.subheader))
    # a column of the same row, before the details', holds both maps (each in a column of its own inside it)
    assert any(len(c.get("plotly_chart")) == 2 for c in columns[:side]) and not columns[side].get("plotly_chart")
