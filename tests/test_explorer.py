"""The Explorer: a grid of finished runs by poison rate x attack x defense, switched at once, and a
missing cell that says the command filling it."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbd_core.analysis.embeddings import compute_umap, configure_numba_cache
from cbd_core.explorer import explorer_grid, explorer_grids, fill_command
from cbd_core.runs import RunDir, write_json
from conftest import app_at_page, mapped_by_ray_task

configure_numba_cache()  # before umap is first imported in this process

pytestmark = pytest.mark.usefixtures("no_worker")


def copy_at_rate(source, root, run_id: str, rate: float, asr: float) -> None:
    """A copy of a finished run that says it was trained at `rate` (its config and summary edited)."""
    shutil.copytree(source, root / run_id)
    for name, changes in (("config.json", {"poison_rate": rate}),
                          ("summary.json", {"poison_rate": rate, "attack_success_rate": asr, "run_id": run_id})):
        data = json.loads((root / run_id / name).read_text())
        data.update(changes)
        write_json(root / run_id / name, data)


def test_grid_keeps_finished_runs_seed_zero_first(tmp_path):
    base = {"dataset": "mnist5k", "attack": "badnets", "defense": "cbd", "poison_rate": 0.1, "seed": 0}
    seed0 = RunDir.create(tmp_path, base, state="done")
    RunDir.create(tmp_path, {**base, "seed": 1}, state="done")  # newer, but seed 0 is preferred
    RunDir.create(tmp_path, {**base, "poison_rate": 0.05}, state="queued")  # not finished
    RunDir.create(tmp_path, {**base, "dataset": "cifar10"}, state="done")  # other data
    grid = explorer_grid(tmp_path)
    assert grid.cells == {("badnets", 0.1, "cbd"): seed0.run_id}
    assert grid.rates == [0.1] and grid.run_id("badnets", 0.1, "cbd") == seed0.run_id
    assert fill_command("mnist5k", ["wanet"], [0.05], ["undefended", "cbd"]) == \
        "python -m cbd_core matrix --datasets mnist5k --attacks wanet --poison-rates 0.05 --defenses undefended cbd --seeds 0"


def test_page_switches_between_real_runs_and_names_the_missing_cell(finished_runs, tmp_path, monkeypatch):
    source, ids = finished_runs
    copy_at_rate(source / ids["cbd"], tmp_path, "20990101-000000-001-high", 0.1, 0.9)
    copy_at_rate(source / ids["cbd"], tmp_path, "20990101-000000-002-low", 0.05, 0.01)
    copy_at_rate(source / ids["undefended"], tmp_path, "20990101-000000-003-base", 0.1, 0.99)
    compute_umap(RunDir(tmp_path / "20990101-000000-001-high"))  # as the worker would; the low one has none yet
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = app_at_page("explorer").run()
    assert not at.exception
    captions = lambda: " ".join(c.value for c in at.caption)  # noqa: E731
    assert "20990101-000000-001-high" in captions(), [i.value for i in at.info] + [w.value for w in at.warning]
    assert [m.value for m in at.metric if m.label.startswith("attack success")] == ["90.0%"]
    assert len(at.get("plotly_chart")) == 3  # the weights histogram and both maps
    at.select_slider(key="explorer_rate").set_value(0.05).run()
    assert not at.exception and "20990101-000000-002-low" in captions()
    assert len(at.get("plotly_chart")) == 1  # no maps: a note says why, as the Embeddings page does
    assert [w.value for w in at.warning] == ["No background worker is running to compute this run's maps; it starts "
                                             "with the app (reload the page in a moment)."]
    assert [m.value for m in at.metric if m.label.startswith("attack success")] == ["1.0%"]
    at.selectbox(key="explorer_defense").set_value("undefended").run()  # no undefended run at 5%
    assert not at.exception
    code = [c.value for c in at.code]
    assert code == [fill_command("mnist5k", ["badnets"], [0.05], ["undefended", "cbd"])], code


def test_a_cell_without_maps_names_who_computes_them_or_why_they_failed(finished_runs, tmp_path, monkeypatch,
                                                                        dead_pid):
    """Not always "the background worker": a Ray-trained run's own task maps it, and a map can stop half-way
    or fail (run_analysis.map_progress, worded as on the Embeddings page)."""
    source, ids = finished_runs
    copy_at_rate(source / ids["cbd"], tmp_path, "20990101-000000-001-ray", 0.1, 0.9)
    run = RunDir(tmp_path / "20990101-000000-001-ray")
    task, ray_task = mapped_by_ray_task(run)
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = app_at_page("explorer").run()
    assert not at.exception and len(at.get("plotly_chart")) == 1  # the weights, no maps
    assert [i.value for i in at.info] == [f"{ray_task} is computing this run's maps (UMAP takes from a few "
                                          "seconds to about half a minute)."]
    assert not any("background worker" in text for text in [c.value for c in at.caption] + [i.value for i in at.info])

    run.update_status(analysis_by={**task, "pid": dead_pid})  # the task's process, lost half-way
    at = app_at_page("explorer").run()
    assert not at.exception and not at.info
    (warning,) = [w.value for w in at.warning]
    assert warning.startswith(f"{ray_task} stopped before finishing this run's maps: its process, pid {dead_pid}, "
                              "has stopped. No background worker is running to compute it again")

    run.update_status(analysis="failed", analysis_error="ValueError: no features")
    at = app_at_page("explorer").run()
    assert not at.exception and not at.warning and not at.info
    assert [e.value for e in at.error if "could not compute" in e.value] == [
        f"{ray_task} could not compute this run's maps: ValueError: no features"]


def test_explorer_and_rate_grid_share_one_scan(tmp_path):
    """The Explorer's cells come from rate_grid's scan: the same runs, the same verdicts ("made worse"
    included); a finished run without figures is a cell there but no grid point."""
    from cbd_core import verdicts
    from cbd_core.rate_grid import finished_runs, grid_points

    base = {"dataset": "mnist5k", "attack": "wanet", "poison_rate": 0.05, "seed": 0, "target_label": 0}
    for defense, asr in (("undefended", 0.2), ("cbd", 0.9)):
        run = RunDir.create(tmp_path, {**base, "defense": defense}, state="done")
        write_json(run.path / "summary.json", {**base, "defense": defense, "clean_accuracy": 0.9,
                                               "attack_success_rate": asr})
    bare = RunDir.create(tmp_path, {**base, "poison_rate": 0.1, "defense": "cbd"}, state="done")
    grid = explorer_grid(tmp_path)
    assert grid.verdict("wanet", 0.05, "cbd") == verdicts.MADE_WORSE
    assert {p.run_id for p in finished_runs(tmp_path)} == set(grid.cells.values())
    assert bare.run_id not in {p.run_id for p in grid_points(tmp_path)}
    assert {(p.attack, p.poison_rate, p.defense_name): p.verdict for p in grid_points(tmp_path)} == \
        {k: grid.verdict(*k) for k in grid.cells if grid.cells[k] != bare.run_id}


def _done(root, config, asr, shape=(28, 28, 1)):
    run = RunDir.create(root, config, state="done")
    write_json(run.path / "summary.json", {**config, "clean_accuracy": 0.95, "attack_success_rate": asr,
                                           "image_shape": list(shape)})
    return run


def test_other_attack_settings_and_models_are_lines_of_their_own(tmp_path):
    """Runs on the same seed that differ in an attack parameter or the model are different questions:
    each is a line of its own (never a seed of the default line, never collapsed to the newest), with its
    own undefended line, dashed; the Explorer shows only the default setting."""
    from cbd_core.rate_grid import grid_points, is_undefended, summarise

    base = {"dataset": "mnist5k", "attack": "blend", "poison_rate": 0.05, "seed": 0, "target_label": 0}
    default = _done(tmp_path, {**base, "defense": "undefended", "attack_params": {"alpha": 0.2}}, 0.97)
    _done(tmp_path, {**base, "defense": "undefended", "attack_params": {"alpha": 0.05}}, 0.30)
    _done(tmp_path, {**base, "defense": "undefended", "model": "resnet18"}, 0.99)
    lines = {line.defense: line.asr_median for line in summarise(grid_points(tmp_path))}
    assert lines == {"Undefended": 0.97, "Undefended [alpha=0.05]": 0.30, "Undefended [model=resnet18]": 0.99}
    assert all(is_undefended(name) for name in lines) and not is_undefended("CBD (max_weight=1.0)")
    grid = explorer_grid(tmp_path)
    assert grid.cells == {("blend", 0.05, "undefended"): default.run_id}


def test_explorer_shows_the_defaults_before_a_newer_ablation(tmp_path):
    from cbd_core.defenses import DEFENSES

    base = {"dataset": "mnist5k", "attack": "badnets", "poison_rate": 0.01, "seed": 0, "target_label": 0,
            "defense": "cbd"}
    defaults = DEFENSES["cbd"].defaults((28, 28, 1))  # what config.json holds: every parameter, resolved
    default = _done(tmp_path, {**base, "defense_params": defaults}, 0.006)
    ablation = _done(tmp_path, {**base, "defense_params": {**defaults, "max_weight": 1.0}}, 0.97)  # newer
    assert explorer_grid(tmp_path).cells == {("badnets", 0.01, "cbd"): default.run_id}
    shutil.rmtree(default.path)
    assert explorer_grid(tmp_path).cells == {("badnets", 0.01, "cbd"): ablation.run_id}  # better than nothing


def test_a_run_older_than_a_parameter_is_not_taken_for_todays_default(tmp_path):
    """A CBD run from before the probes (its config names neither `probe_epochs` nor `drop_below`)
    trained with the former rule: the grid labels it so (from `Param.before`), a line apart from a run
    with today's defaults, never a seed of it."""
    from cbd_core.defenses import DEFENSES
    from cbd_core.rate_grid import grid_points, summarise

    base = {"dataset": "mnist5k", "attack": "blend", "poison_rate": 0.01, "seed": 0, "target_label": 0,
            "defense": "cbd"}
    today = DEFENSES["cbd"].defaults((28, 28, 1))
    older = {k: v for k, v in today.items() if k not in ("probe_epochs", "probe_rounds", "drop_below")}
    _done(tmp_path, {**base, "defense_params": today}, 0.01)
    _done(tmp_path, {**base, "defense_params": older}, 0.97)  # newer folder, older code
    lines = {line.defense: line.asr_median for line in summarise(grid_points(tmp_path))}
    assert lines == {"CBD": 0.01, "CBD (drop_below=0.0, probe_epochs=0)": 0.97}
    assert explorer_grid(tmp_path).variant("blend", 0.01, "cbd") is None  # the cell shows the defaults' run


def test_a_run_with_a_parameter_this_code_does_not_know_is_not_taken_for_todays_default(tmp_path):
    """A run whose config names a parameter the defense no longer has (removed since, or hand-edited)
    trained with other code: it is a line of its own, named by that parameter, never a seed of the
    defaults' line, and the cell shows the run with today's defaults."""
    from cbd_core.defenses import DEFENSES
    from cbd_core.rate_grid import grid_points, summarise

    base = {"dataset": "mnist5k", "attack": "trojan", "poison_rate": 0.005, "seed": 0, "target_label": 0,
            "defense": "cbd"}
    today = DEFENSES["cbd"].defaults((28, 28, 1))
    _done(tmp_path, {**base, "defense_params": today}, 0.9)
    _done(tmp_path, {**base, "defense_params": {**today, "weight_ceiling": "typical"}}, 0.5)  # newer folder
    lines = {line.defense: line.asr_median for line in summarise(grid_points(tmp_path))}
    assert lines == {"CBD": 0.9, "CBD (weight_ceiling=typical)": 0.5}
    assert explorer_grid(tmp_path).variant("trojan", 0.005, "cbd") is None


def test_a_cell_showing_a_variant_names_it(finished_runs, tmp_path, monkeypatch):
    """Where a cell has no run with the defense's defaults, the page names the variant it shows (its line
    label, as the Compare chart and bench/rate_grid.py name it), in the cell and in the verdicts by rate,
    instead of heading it as the defense with its defaults."""
    source, ids = finished_runs
    copy_at_rate(source / ids["cbd"], tmp_path, "20990101-000000-001-variant", 0.1, 0.9)
    config = json.loads((tmp_path / "20990101-000000-001-variant" / "config.json").read_text())
    config["defense_params"] = {**config["defense_params"], "shortcut_cut": 3.0}
    write_json(tmp_path / "20990101-000000-001-variant" / "config.json", config)
    line = explorer_grid(tmp_path).variant("badnets", 0.1, "cbd")
    assert line.startswith("CBD (") and "shortcut_cut=3.0" in line  # the fixture's short training is in it too
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = app_at_page("explorer").run()
    assert not at.exception
    assert [c.value for c in at.caption if "shows a variant" in c.value] == [
        f"No CBD run with its defaults in this cell yet; it shows a variant, {line}."]
    (by_rate,) = [c.value for c in at.caption if "verdict by poison rate" in c.value]
    assert by_rate.startswith("CBD on badnets (mnist5k data), verdict by poison rate: 10.0%: ") and by_rate.endswith(f"({line})")


def on_npz(root, run_id: str, npz_path: str) -> None:
    """Make a copied run say it was trained on a user's .npz file (its config and summary edited)."""
    for name in ("config.json", "summary.json"):
        data = json.loads((root / run_id / name).read_text())
        data.update({"dataset": "npz", "npz_path": npz_path})
        write_json(root / run_id / name, data)


def test_every_dataset_with_finished_runs_has_its_own_grid(tmp_path):
    base = {"attack": "badnets", "defense": "cbd", "poison_rate": 0.1, "seed": 0}
    embedded = RunDir.create(tmp_path, {**base, "dataset": "mnist5k"}, state="done")
    small = RunDir.create(tmp_path, {**base, "dataset": "npz", "npz_path": "/data/mnist2k.npz", "poison_rate": 0.005},
                          state="done")
    grids = explorer_grids(tmp_path)
    assert list(grids) == ["mnist5k", "mnist2k"]  # the embedded data first
    assert grids["mnist2k"].cells == {("badnets", 0.005, "cbd"): small.run_id}
    assert grids["mnist5k"].cells == {("badnets", 0.1, "cbd"): embedded.run_id}
    assert (grids["mnist2k"].source, grids["mnist5k"].source) == ("/data/mnist2k.npz", "mnist5k")
    assert explorer_grid(tmp_path, "mnist2k").cells == grids["mnist2k"].cells
    assert explorer_grid(tmp_path, "cifar10").cells == {}


def test_different_files_of_one_name_are_different_grids_and_an_upload_keeps_its_name(tmp_path):
    """Two .npz files called mnist2k.npz in different folders (and one named after the embedded set) are
    different data: each is a grid of its own, named with its path; a dataset uploaded on the dashboard is
    called what its file was called, not by the content hash it is stored under."""
    from cbd_core.data import data_source, dataset_labels
    from cbd_core.uploads import save_upload

    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, x=rng.integers(0, 255, (40, 28, 28, 1), dtype=np.uint8), y=np.arange(40) % 10)
    uploaded = save_upload(tmp_path, buffer.getvalue(), "dataset", name="C:\\class\\traffic_signs.npz")
    assert uploaded.stem != "traffic_signs"  # stored under its content's hash
    base = {"attack": "badnets", "defense": "cbd", "poison_rate": 0.1, "seed": 0, "dataset": "npz"}
    runs = {path: RunDir.create(tmp_path / "runs", {**base, "npz_path": path}, state="done")
            for path in ("/a/mnist2k.npz", "/b/mnist2k.npz", "/c/mnist5k.npz", str(uploaded))}
    embedded = RunDir.create(tmp_path / "runs", {**base, "dataset": "mnist5k", "npz_path": None}, state="done")
    grids = explorer_grids(tmp_path / "runs")
    assert list(grids) == ["mnist5k", "mnist2k (/a/mnist2k.npz)", "mnist2k (/b/mnist2k.npz)",
                           "mnist5k (/c/mnist5k.npz)", "traffic_signs"]
    assert grids["mnist5k"].cells == {("badnets", 0.1, "cbd"): embedded.run_id}
    for label, path in (("mnist2k (/b/mnist2k.npz)", "/b/mnist2k.npz"), ("traffic_signs", str(uploaded))):
        assert grids[label].cells == {("badnets", 0.1, "cbd"): runs[path].run_id} and grids[label].source == path
    # the same definition names a single run's data on the Runs page and in Compare's table
    assert dataset_labels([data_source({**base, "npz_path": str(uploaded)})]) == {str(uploaded): "traffic_signs"}
    # a second upload of the same content under another name keeps the first name; a hand-edited name
    # file is shown only as plain characters, and an unreadable one falls back to the file's stem
    assert save_upload(tmp_path, buffer.getvalue(), "dataset", name="other.npz") == uploaded
    assert dataset_labels([str(uploaded)])[str(uploaded)] == "traffic_signs"
    Path(str(uploaded) + ".name").write_text("**bold** \u202eevil")
    assert dataset_labels([str(uploaded)])[str(uploaded)] == "bold evil"
    Path(str(uploaded) + ".name").write_bytes(b"\xff\xfe")
    assert dataset_labels([str(uploaded)])[str(uploaded)] == uploaded.stem


def test_page_explores_a_grid_on_another_dataset(finished_runs, tmp_path, monkeypatch):
    """A runs root holding runs on the embedded data and on a user's .npz: the page offers both datasets,
    the embedded one first; choosing the other shows its runs (its rates, which the embedded grid lacks,
    replace the rate chosen there; a lone rate is said, not put on a slider) and names the .npz file in the
    command that fills its missing cell."""
    source, ids = finished_runs
    copy_at_rate(source / ids["cbd"], tmp_path, "20990101-000000-001-embedded", 0.1, 0.9)
    copy_at_rate(source / ids["cbd"], tmp_path, "20990101-000000-002-small", 0.02, 0.05)
    on_npz(tmp_path, "20990101-000000-002-small", "/data/mnist2k.npz")
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = app_at_page("explorer").run()
    assert not at.exception
    captions = lambda: " ".join(c.value for c in at.caption)  # noqa: E731
    assert at.selectbox(key="explorer_dataset").options == ["mnist5k", "mnist2k"]
    assert "20990101-000000-001-embedded" in captions()
    at.selectbox(key="explorer_dataset").set_value("mnist2k").run()
    assert not at.exception
    assert "20990101-000000-002-small" in captions() and "20990101-000000-001-embedded" not in captions()
    assert [m.value for m in at.metric if m.label.startswith("attack success")] == ["5.0%"]
    assert not at.select_slider  # one rate: said, not a slider with one stop
    assert any("**2.0%**, the only rate" in m.value for m in at.markdown)
    copy_at_rate(source / ids["undefended"], tmp_path, "20990101-000000-003-small-base", 0.05, 0.99)
    on_npz(tmp_path, "20990101-000000-003-small-base", "/data/mnist2k.npz")
    at.run()
    at.selectbox(key="explorer_defense").set_value("undefended").run()
    at.select_slider(key="explorer_rate").set_value(0.02).run()  # no undefended run at 2 % on mnist2k
    assert not at.exception
    assert [c.value for c in at.code] == [fill_command("/data/mnist2k.npz", ["badnets"], [0.02], ["undefended", "cbd"])]
    assert "on mnist2k" in " ".join(w.value for w in at.warning)


def test_a_runs_root_with_no_finished_run_says_how_to_fill_the_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = app_at_page("explorer").run()
    assert not at.exception and not at.selectbox
    assert [c.value for c in at.code] == [fill_command("mnist5k", ["all"], [0.01, 0.05, 0.1], ["undefended", "cbd"])]
