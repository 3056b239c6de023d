"""The Attributions page over finished runs: side-by-side maps, the trigger sliders, broken runs."""

from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest

import cbd_core.jobs
import conftest


def open_page(monkeypatch, root, run_id: str) -> AppTest:
    """The app on the Attributions page over `run_id` under `root` (no worker process)."""
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    monkeypatch.setattr(cbd_core.jobs.launcher, "ensure_workers", lambda *a, **k: [])
    return conftest.open_page("attributions", run=run_id)


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_cbd_run_shows_both_models_side_by_side(monkeypatch, finished_runs):
    root, ids = finished_runs
    at = open_page(monkeypatch, root, ids["cbd"])
    assert not at.exception and not at.error
    assert at.title[0].value == "Attributions"
    page = texts(at)
    assert "backdoored model f_B" in page and "deconfounded model f_C" in page
    assert page.index("backdoored model f_B") < page.index("deconfounded model f_C")
    # Two overlays and the 100-image bar chart, each with its plain sentence.
    assert len(at.get("plotly_chart")) == 3
    assert sum("What to look for" in c.value for c in at.caption) == 3
    assert page.count("Prediction:") == 2 and page.count("Attribution on the trigger:") == 2
    assert at.segmented_control(key="attr_mode").value == "Triggered"
    # A local (BadNets) trigger can be moved, resized and faded.
    labels = [s.label for s in at.slider]
    assert {"Move right (pixels)", "Move down (pixels)", "Size (x original)", "Opacity"} <= set(labels)


def test_undefended_run_shows_one_model_and_every_method(monkeypatch, finished_runs):
    root, ids = finished_runs
    at = open_page(monkeypatch, root, ids["undefended"])
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 2
    assert "trained model" in texts(at)
    for method in ("saliency", "grad_cam", "occlusion"):
        at.selectbox(key="attr_method").set_value(method).run()
        assert not at.exception and not at.error, method
        assert len(at.get("plotly_chart")) == 2


def test_trigger_sliders_move_resize_and_fade(monkeypatch, finished_runs):
    root, ids = finished_runs
    at = open_page(monkeypatch, root, ids["undefended"])
    assert "the trigger covers 1.1% of the image" in texts(at)  # 3x3 of 28x28
    at.slider(key="attr_dx").set_value(-10)
    at.slider(key="attr_dy").set_value(-12)
    at.slider(key="attr_scale").set_value(2.0)
    at.slider(key="attr_opacity").set_value(0.5)
    at.slider(key="attr_image").set_value(150)
    at.run()
    assert not at.exception and not at.error
    # Doubled to 6x6 and moved into the middle of the image: 36 pixels.
    assert f"the trigger covers {36 / 784:.1%} of the image" in texts(at)
    assert "Test image **150**" in texts(at)

    at.segmented_control(key="attr_mode").set_value("Clean").run()
    assert not at.exception and not at.error
    assert [s.label for s in at.slider] == ["Test image"]
    assert "(where it would go)" in texts(at)


@pytest.mark.parametrize("damage", ["corrupt_images", "missing_images", "missing_models"])
def test_broken_run_shows_an_error_not_a_traceback(monkeypatch, finished_runs, tmp_path, damage):
    root, ids = finished_runs
    copy_root = tmp_path / "runs"
    shutil.copytree(root / ids["cbd"], copy_root / ids["cbd"])
    run_dir = copy_root / ids["cbd"]
    if damage == "corrupt_images":
        (run_dir / "images.npz").write_bytes(b"not a zip file")
    elif damage == "missing_images":
        (run_dir / "images.npz").unlink()
    else:
        for path in (run_dir / "models").glob("*"):
            path.unlink()
    at = open_page(monkeypatch, copy_root, ids["cbd"])
    assert not at.exception
    assert at.error, damage
    message = at.error[0].value
    assert ("images.npz" in message) if damage != "missing_models" else ("model" in message)


def test_whole_image_trigger_can_only_be_faded(monkeypatch, finished_runs, tmp_path):
    """A run whose trigger is a blend (the BadNets models stand in; only the page's controls matter)."""
    import json

    from cbd_core.attacks import get_attack
    from cbd_core.runs import read_npz, write_npz

    root, ids = finished_runs
    run_dir = tmp_path / "runs" / ids["undefended"]
    shutil.copytree(root / ids["undefended"], run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    blend = get_attack("blend")
    config["attack"], config["attack_params"] = "blend", blend.resolve((28, 28, 1), None)
    (run_dir / "config.json").write_text(json.dumps(config))
    arrays = read_npz(run_dir / "images.npz")
    arrays["trigger_region"] = blend.trigger_region((28, 28, 1), config["attack_params"])
    write_npz(run_dir / "images.npz", **arrays)

    at = open_page(monkeypatch, tmp_path / "runs", ids["undefended"])
    assert not at.exception and not at.error
    assert [s.label for s in at.slider] == ["Test image", "Opacity"]
    at.slider(key="attr_opacity").set_value(0.0).run()
    assert not at.exception and not at.error


def test_page_uses_the_shares_the_worker_stored(finished_runs, tmp_path, monkeypatch):
    import json

    import cbd_core.analysis.attributions as attributions
    from cbd_core.analysis.attributions import METHODS, SHARES_FILE

    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    stored = {method: {"f_C": 0.0123, "f_B": 0.4567} for method in METHODS}
    (tmp_path / ids["cbd"] / SHARES_FILE).write_text(json.dumps(stored))

    def must_not_run(*args, **kwargs):
        raise AssertionError("the page recomputed a stored share")

    monkeypatch.setattr(attributions, "mean_trigger_share", must_not_run)
    at = open_page(monkeypatch, tmp_path, ids["cbd"])
    assert not at.exception and not at.error
    specs = [chart.proto.spec for chart in at.get("plotly_chart")]
    assert any("0.4567" in spec or "45.67" in spec or "46%" in spec for spec in specs)


def test_a_run_with_the_workers_views_renders_without_loading_a_model(finished_runs, tmp_path, monkeypatch):
    """What the worker stores once per run (shares, then each kept image's maps and predictions) is all
    the page needs at rest: the app server loads no model. Moving the trigger computes here again."""
    import cbd_core.analysis
    from cbd_core.analysis.attributions import compute_attribution_views, compute_trigger_shares
    from cbd_core.runs import RunDir

    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    run = RunDir(tmp_path / ids["cbd"])
    compute_trigger_shares(run)
    views = compute_attribution_views(run)
    loads = []
    real_load = cbd_core.analysis.load_models
    monkeypatch.setattr(cbd_core.analysis, "load_models", lambda r: loads.append(r.run_id) or real_load(r))

    at = open_page(monkeypatch, tmp_path, ids["cbd"])
    assert not at.exception and not at.error
    assert loads == [], "the page loaded the models although the worker stored its views"
    assert at.slider(key="attr_image").value == int(views["example"])
    assert "computed by the app itself" not in "\n".join(c.value for c in at.caption)
    tops = colour_tops(at)
    stored = [float(views[f"map__triggered__integrated_gradients__{name}"][int(views["example"])].max())
              for name in ("f_B", "f_C")]
    assert tops == pytest.approx(stored, rel=1e-5)

    at.slider(key="attr_dx").set_value(-3).run()  # a moved trigger has no stored map: computed here
    assert not at.exception and loads == [ids["cbd"]]


def test_a_ray_runs_missing_views_are_credited_to_its_task(finished_runs, tmp_path, monkeypatch):
    """The views the page computes itself are the ones whoever analyses the run would have stored: for a run
    trained on Ray, its task on the cluster, not "the background worker"."""
    import os

    from cbd_core.runs import RunDir, owner_record

    root, ids = finished_runs
    shutil.copytree(root / ids["undefended"], tmp_path / ids["undefended"])
    task = {**owner_record("ray", node="abc"), "pid": os.getppid()}
    RunDir(tmp_path / ids["undefended"]).update_status(owner=task, analysis="done", analysis_by=task)
    at = open_page(monkeypatch, tmp_path, ids["undefended"])
    assert not at.exception and not at.error
    (note,) = [c.value for c in at.caption if "computed by the app itself" in c.value]
    assert "which the run's task on the Ray cluster" in note and "background worker" not in note


def chart_specs(at: AppTest) -> list[dict]:
    import json

    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def colour_tops(at: AppTest) -> list[float]:
    """The top of each overlay's colour scale (the heatmap's zmax), f_B's first."""
    return [trace["zmax"] for spec in chart_specs(at) for trace in spec["data"] if trace.get("type") == "heatmap"]


def test_opens_on_an_image_both_models_get_right_and_f_b_sends_to_the_target(monkeypatch, finished_runs):
    from cbd_core.analysis import load_models
    from cbd_core.analysis.attributions import example_test_image
    from cbd_core.runs import RunDir

    root, ids = finished_runs
    run = RunDir(root / ids["cbd"])
    images = run.arrays("images")
    expected = example_test_image(load_models(run), images["test_x"], images["test_y"], run.config())
    at = open_page(monkeypatch, root, ids["cbd"])
    assert at.slider(key="attr_image").value == expected
    assert "the attack's target" in texts(at)  # f_B, on the triggered example, predicts the target


def test_each_model_has_its_own_colour_scale_unless_asked_for_one(monkeypatch, finished_runs):
    root, ids = finished_runs
    at = open_page(monkeypatch, root, ids["cbd"])
    assert at.toggle(key="attr_shared_scale").value is False
    own = colour_tops(at)
    assert len(own) == 2 and own[0] != own[1]
    assert "Each map has its own colour scale" in texts(at)
    at.toggle(key="attr_shared_scale").set_value(True).run()
    shared = colour_tops(at)
    assert shared[0] == shared[1] == max(own)
    assert "One colour scale for all maps" in texts(at)


def test_a_patch_trigger_is_outlined_and_captioned(monkeypatch, finished_runs):
    root, ids = finished_runs
    at = open_page(monkeypatch, root, ids["cbd"])
    assert "The dotted box marks the trigger." in texts(at)
    assert all(len(spec["layout"].get("shapes", [])) == 1 for spec in chart_specs(at)[:2])


@pytest.mark.parametrize("attack", ["blend", "sig", "wanet"])
def test_a_whole_image_trigger_has_no_box_and_no_caption_about_one(monkeypatch, finished_runs, tmp_path, attack):
    """The BadNets run relabelled as another attack: only the page's words and drawings matter here."""
    import json

    from cbd_core.attacks import get_attack
    from cbd_core.runs import read_npz, write_npz

    root, ids = finished_runs
    run_dir = tmp_path / "runs" / ids["cbd"]
    shutil.copytree(root / ids["cbd"], run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    chosen = get_attack(attack)
    config["attack"], config["attack_params"] = attack, chosen.resolve((28, 28, 1), None)
    (run_dir / "config.json").write_text(json.dumps(config))
    arrays = read_npz(run_dir / "images.npz")
    arrays["trigger_region"] = chosen.trigger_region((28, 28, 1), config["attack_params"])
    write_npz(run_dir / "images.npz", **arrays)
    (run_dir / "attribution_shares.json").unlink(missing_ok=True)

    at = open_page(monkeypatch, tmp_path / "runs", ids["cbd"])
    assert not at.exception and not at.error
    words = texts(at) + "\n".join(c.value for c in at.caption)
    assert "box" not in words.lower()
    assert f"{chosen.title}'s trigger changes almost every pixel" in words
    assert all(not spec["layout"].get("shapes") for spec in chart_specs(at)[:2])
