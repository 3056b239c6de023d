"""The Compare page over the shared finished runs: table, scatter, heatmaps, suspected-poison view."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import cbd_core.jobs
from cbd_core.metrics import auroc as metrics_auroc
from cbd_core.runs import RunDir
from conftest import open_page



def page(monkeypatch, root, run_id: str | None = None) -> AppTest:
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    monkeypatch.setattr(cbd_core.jobs.launcher, "ensure_workers", lambda *a, **k: [])
    return open_page("compare", run=run_id)


def errors(at: AppTest) -> list[str]:
    """Error messages, the red verdict banner of a run whose backdoor persists left out (that one is
    the page working: tests/test_page_verdicts.py checks it)."""
    return [e.value for e in at.error if not e.value.startswith("**Backdoor persists")]


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    return "\n".join(parts)


def test_table_scatter_and_heatmaps(monkeypatch, finished_runs):
    root, ids = finished_runs
    at = page(monkeypatch, root)
    assert not at.exception and not errors(at)
    table = at.dataframe[0].value
    assert sorted(table["run_id"]) == sorted(ids.values())
    # Short test schedules differ from the defaults, so each defense's label says how.
    assert {label.split(" (")[0] for label in table["Defense"]} == {"Undefended", "CBD", "ABL", "NONE"}
    assert table["CA"].between(0, 100).all() and table["ASR"].between(0, 100).all()
    assert table.loc[table["run_id"] == ids["undefended"], "AUROC"].isna().all()
    assert table.loc[table["run_id"] == ids["cbd"], "AUROC"].between(0, 1).all()
    charts = at.get("plotly_chart")
    assert len(charts) >= 3  # scatter + two heatmaps (+ the histogram of the picked run)
    assert [s.label for s in at.multiselect] == ["Dataset", "Poison rate", "Model"]
    assert at.multiselect[1].value == [10.0]


def test_variants_of_one_defense_are_not_averaged_together(monkeypatch, finished_runs, tmp_path):
    root, ids = finished_runs
    copy_root = tmp_path / "runs"
    for run_id in (ids["cbd"], ids["undefended"]):
        shutil.copytree(root / run_id, copy_root / run_id)
    variant = copy_root / (ids["cbd"][:-4] + "beef")
    shutil.copytree(root / ids["cbd"], variant)
    config = json.loads((variant / "config.json").read_text())
    config["defense_params"]["mi_weight"] = 0.0
    (variant / "config.json").write_text(json.dumps(config))
    at = page(monkeypatch, copy_root)
    assert not at.exception and not errors(at)
    labels = at.dataframe[0].value.set_index("run_id")["Defense"]
    assert labels[variant.name] != labels[ids["cbd"]]
    assert "mi_weight=0" in labels[variant.name] and "mi_weight" not in labels[ids["cbd"]]
    assert labels[ids["undefended"]] == "Undefended"  # one setting only: the short title


def test_filters_that_match_nothing_say_so(monkeypatch, finished_runs):
    root, _ = finished_runs
    at = page(monkeypatch, root)
    at.multiselect(key="compare_datasets").set_value([]).run()
    assert not at.exception
    assert any("No finished run matches" in i.value for i in at.info)
    assert not at.dataframe


def test_suspected_poison_view_for_cbd(monkeypatch, finished_runs):
    root, ids = finished_runs
    at = page(monkeypatch, root, ids["cbd"])
    assert not at.exception and not errors(at)
    assert at.selectbox(key="compare_run").value == ids["cbd"]
    metrics = {m.label: m.value for m in at.metric}
    auroc = float(metrics["Detection AUROC"])
    assert 0.5 < auroc <= 1.0  # CBD's weights find BadNets' poisoned samples even on short schedules
    assert "Precision of the top 100" in metrics  # k defaults to the 100 poisoned samples of 1,000
    gallery = at.image[-1]
    assert len(gallery.captions) == 12
    assert gallery.captions[0].startswith("#") and all(("poisoned" in c or "clean" in c) for c in gallery.captions)

    # The figures are those of the run's own record: AUROC of the suspicion, hits among the top 10.
    record = RunDir(root / ids["cbd"]).arrays("sample_weights")
    assert auroc == pytest.approx(metrics_auroc(record["suspicion"], record["is_poisoned"]), abs=5e-4)
    at.slider(key=f"compare_k_{ids['cbd']}").set_value(10).run()
    assert not at.exception
    top10 = np.argsort(-record["suspicion"], kind="stable")[:10]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Precision of the top 10"] == f"{record['is_poisoned'][top10].mean():.1%}"
    assert metrics["Recall of the top 10"] == f"{record['is_poisoned'][top10].sum() / 100:.1%}"


def test_undefended_run_has_no_opinion(monkeypatch, finished_runs):
    root, ids = finished_runs
    at = page(monkeypatch, root, ids["undefended"])
    assert not at.exception and not errors(at)
    assert any("has no opinion" in i.value and "Undefended" in i.value for i in at.info)
    assert not at.metric


@pytest.mark.parametrize("defense", ["abl", "nonlinearity"])
def test_other_defenses_show_their_detector(monkeypatch, finished_runs, defense):
    root, ids = finished_runs
    at = page(monkeypatch, root, ids[defense])
    assert not at.exception and not errors(at)
    assert np.isfinite(float({m.label: m.value for m in at.metric}["Detection AUROC"]))


def test_empty_runs_root_shows_the_hint(monkeypatch, tmp_path):
    at = page(monkeypatch, tmp_path / "nothing here")
    assert not at.exception and not errors(at)
    assert any("No finished runs to compare yet" in i.value for i in at.info)
    assert not at.get("plotly_chart")



def _figures(at: AppTest) -> list[tuple[dict, dict]]:
    """(figure spec, plotly config) of every chart on the page."""
    return [(json.loads(chart.proto.spec), json.loads(chart.proto.config)) for chart in at.get("plotly_chart")]


def test_runs_at_different_poison_rates_never_share_a_cell(monkeypatch, finished_runs, tmp_path):
    root, ids = finished_runs
    copy_root = tmp_path / "runs"
    shutil.copytree(root / ids["cbd"], copy_root / ids["cbd"])
    high = copy_root / (ids["cbd"][:-4] + "f00d")
    shutil.copytree(root / ids["cbd"], high)
    config = json.loads((high / "config.json").read_text())
    config["poison_rate"] = 0.5
    (high / "config.json").write_text(json.dumps(config))
    at = page(monkeypatch, copy_root)
    assert not at.exception and not errors(at)
    heatmaps = [fig["data"][0] for fig, _ in _figures(at) if fig["data"][0]["type"] == "heatmap"]
    assert len(heatmaps) == 2  # ASR and CA
    for trace in heatmaps:
        assert trace["x"] == ["badnets<br>10 %", "badnets<br>50 %"]
        cells = [text for row in trace["text"] for text in row if text]
        assert len(cells) == 2 and all(text.endswith("(1)") for text in cells)  # one run each, never averaged


def test_charts_save_as_png_and_log_ticks_are_powers_of_ten(monkeypatch, finished_runs):
    root, ids = finished_runs
    at = page(monkeypatch, root, ids["cbd"])
    figures = _figures(at)
    names = [config["toImageButtonOptions"]["filename"] for _, config in figures]
    assert names[:3] == ["backdoor-lab-ca-vs-asr", "backdoor-lab-mean-asr", "backdoor-lab-mean-ca"]
    assert f"backdoor-lab-suspicion-{ids['cbd']}" in names
    assert all(config["toImageButtonOptions"]["format"] == "png" for _, config in figures)
    histogram = figures[names.index(f"backdoor-lab-suspicion-{ids['cbd']}")][0]["layout"]["yaxis"]
    assert (histogram["type"], histogram["dtick"]) == ("log", 1)
