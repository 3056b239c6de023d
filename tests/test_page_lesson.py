"""The Lesson page over a real (tiny) run pair: every step, Back / Next, the step and run in the URL,
a deep link to a step, the empty state with its queue button, and a failed defense told as a failure."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cbd_core import lesson, verdicts
from cbd_core.analysis.embeddings import compute_umap, configure_numba_cache
from cbd_core.runs import RunDir, list_runs, now_iso, write_json
from conftest import ROOT, app_at_page, mapped_by_ray_task
from pages.common import phase_title

configure_numba_cache()  # before umap is first imported in this process

pytestmark = pytest.mark.usefixtures("no_worker")  # the app would start a real worker process

STEPS = len(lesson.STEPS)


@pytest.fixture(scope="module")
def lesson_root(finished_runs, tmp_path_factory):
    """Copies of the shared CBD run and its undefended baseline (same data and seed), the CBD run's map
    computed as the worker would."""
    root, ids = finished_runs
    copy = tmp_path_factory.mktemp("lesson_runs")
    for defense in ("cbd", "undefended"):
        shutil.copytree(root / ids[defense], copy / ids[defense])
    compute_umap(RunDir(copy / ids["cbd"]))
    return copy, ids


@pytest.fixture
def lesson_pair(lesson_root, monkeypatch):
    root, ids = lesson_root
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    return root, ids


def open_lesson(run: str | None = None, step: int | None = None, **params) -> AppTest:
    at = app_at_page("lesson", run)
    if step is not None:
        at.query_params["step"] = str(step)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def page_text(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
                     + [s.value for s in at.subheader] + [e.value for e in at.error] + [w.value for w in at.warning]
                     + [s.value for s in at.success])


def test_lesson_is_the_default_page(lesson_pair):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert at.title[0].value == "CBD, step by step"


def test_every_step_renders_for_a_finished_run_pair(lesson_pair):
    root, ids = lesson_pair
    expected = {
        1: ("Step 1 of 6: The attack", "put the trigger on", "labelled 0"),
        2: ("Step 2 of 6: Training", "f_B", "f_C"),
        3: ("Step 3 of 6: The weights", "median poisoned image has weight", "detection AUROC"),
        4: ("Step 4 of 6: What each model sees", "nearest neighbours are poisoned", "Crosses are poisoned"),
        5: ("Step 5 of 6: Where each model looks", "of f_B's attribution falls on it", "f_C puts"),
        6: ("Step 6 of 6: The verdict", "against the undefended baseline", "without a defense"),
    }
    for step, words in expected.items():
        at = open_lesson(ids["cbd"], step)
        assert not at.exception, (step, at.exception)
        # The tiny shared run's backdoor persists (a red verdict banner); nothing else may be an error.
        assert not [e for e in at.error if "Backdoor persists" not in e.value], (step, [e.value for e in at.error])
        text = page_text(at)
        for word in words:
            assert word in text, (step, word)
        assert at.query_params["run"] == ids["cbd"] and at.query_params["step"] == str(step)
    # The pictures: images on the attack step, a chart on each of the others.
    # Four clean test digits, the same with the trigger, the trigger alone, poisoned training images.
    assert len(open_lesson(ids["cbd"], 1).get("image")) >= 9
    for step in (2, 3):
        assert len(open_lesson(ids["cbd"], step).get("plotly_chart")) == 1
    maps = open_lesson(ids["cbd"], 4)
    assert len(maps.get("plotly_chart")) == 2  # f_B's and f_C's maps
    assert any("Embeddings page" in link.proto.label for link in maps.get("page_link"))  # for the animation
    assert len(open_lesson(ids["cbd"], 5).get("plotly_chart")) == 2  # f_B's and f_C's attributions


def test_step_5_reads_the_workers_views_without_loading_a_model(lesson_root, tmp_path, monkeypatch):
    import cbd_core.analysis
    from cbd_core.analysis.attributions import compute_attribution_views, compute_trigger_shares

    root, ids = lesson_root
    for defense in ("cbd", "undefended"):
        shutil.copytree(root / ids[defense], tmp_path / ids[defense])
    compute_trigger_shares(RunDir(tmp_path / ids["cbd"]))
    compute_attribution_views(RunDir(tmp_path / ids["cbd"]))
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    loads = []
    real_load = cbd_core.analysis.load_models
    monkeypatch.setattr(cbd_core.analysis, "load_models", lambda r: loads.append(r.run_id) or real_load(r))
    at = open_lesson(ids["cbd"], 5)
    assert not at.exception and len(at.get("plotly_chart")) == 2
    assert "of f_B's attribution falls on it" in page_text(at) and "predicts" in page_text(at)
    assert at.radio(key="lesson_attr_image").value == "train"  # the training image's views, stored too
    at.radio(key="lesson_attr_image").set_value("test").run()
    assert not at.exception and len(at.get("plotly_chart")) == 2
    assert ids["cbd"] not in loads


def test_next_and_back_move_the_step_in_the_url(lesson_pair):
    root, ids = lesson_pair
    at = open_lesson(ids["cbd"])
    assert at.query_params["step"] == "1" and at.subheader[0].value.startswith("Step 1 of 6")
    assert at.button(key="lesson_back").disabled
    at.button(key="lesson_next").click().run()
    assert not at.exception
    assert at.query_params["step"] == "2" and at.subheader[0].value.startswith("Step 2 of 6")
    at.button(key="lesson_next").click().run()
    assert at.query_params["step"] == "3"
    at.button(key="lesson_back").click().run()
    assert at.query_params["step"] == "2" and at.subheader[0].value.startswith("Step 2 of 6")
    at.segmented_control(key="lesson_step_picker").set_value(6).run()
    assert at.query_params["step"] == "6" and at.button(key="lesson_next").disabled
    assert at.query_params["run"] == ids["cbd"]


def test_a_deep_link_opens_on_its_step_and_run(lesson_pair):
    root, ids = lesson_pair
    at = open_lesson(ids["cbd"], 4)
    assert not at.exception
    assert at.subheader[0].value == "Step 4 of 6: What each model sees"
    assert at.segmented_control(key="lesson_step_picker").value == 4
    assert at.selectbox(key="lesson_run").value == ids["cbd"]
    # A step out of range lands on the nearest one.
    assert open_lesson(ids["cbd"], 99).subheader[0].value.startswith("Step 6 of 6")


def test_no_runs_offers_to_queue_the_preset_and_then_shows_its_progress(tmp_path, monkeypatch):
    from cbd_core.presets import PRESETS

    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_lesson()
    assert not at.exception
    assert "has not been trained here yet" in page_text(at)
    assert not [s for s in at.subheader if s.value.startswith("Step")]  # no step without a run
    at.selectbox(key="lesson_preset").set_value("blend").run()
    at.button(key="lesson_queue_preset").click().run()
    assert not at.exception
    runs = list_runs(tmp_path)  # newest first
    assert [(r.config()["defense"], r.config()["attack"]) for r in runs] == [("undefended", "blend"), ("cbd", "blend")]
    preset = PRESETS["blend"].config().validated().to_dict()
    assert runs[1].config()["defense_params"] == preset["defense_params"]
    at.run()
    text = page_text(at)
    assert f"**The CBD run** · run `{runs[1].run_id}`" in text and f"baseline** · run `{runs[0].run_id}`" in text
    # The Train page's block for each: state, place in the queue, why it waits.
    assert [m.value for m in at.metric if m.label == "place in queue"] == ["1", "2"]
    assert "Starting the background worker" in text
    assert not [b for b in at.button if b.key == "lesson_queue_preset"]  # queued once, not offered again
    # Training: the defense's own phase names, as on the Train page (never "training train").
    runs[1].update_status(state="running", started=now_iso(), device="cpu",
                          progress={"phase": "f_C", "epoch": 3, "epochs": 10, "fraction": 0.5})
    at.run()
    bars = [bar.proto.text for bar in at.get("progress")]
    assert bars == [f"{phase_title('cbd', 'f_C')}: epoch 3 of 10"], bars
    assert [m.value for m in at.metric if m.label == "place in queue"] == ["1"]


def copy_pair(source_root, ids, root, **summary_changes) -> None:
    for defense in ("cbd", "undefended"):
        shutil.copytree(source_root / ids[defense], root / ids[defense])
    path = root / ids["cbd"] / "summary.json"
    summary = json.loads(path.read_text())
    summary.update(summary_changes)
    write_json(path, summary)


def test_a_failed_defense_is_told_as_a_failure(lesson_root, tmp_path, monkeypatch):
    source, ids = lesson_root
    # f_B never had the trigger; f_C ended with the backdoor in it.
    copy_pair(source, ids, tmp_path, attack_success_rate=0.86, poison_detection_auroc=0.41,
              f_b_capture={"captured": False, "detection_auroc": 0.3, "loss_poisoned_median": 2.0,
                           "loss_clean_median": 0.5})
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    said = {}
    for step in range(1, STEPS + 1):
        at = open_lesson(ids["cbd"], step)
        assert not at.exception and not at.success, step  # no green banner anywhere
        said[step] = page_text(at)
    assert "f_C learned the trigger" in said[2] and "f_B's loss did not single out the poison" in said[2] and "The defense failed in this run" in said[2]
    assert "the median poisoned image has weight" in said[3] and "kept much of" not in said[3] and "The defense failed in this run" in said[3]
    assert "The defense failed in this run" in said[4]
    assert "Backdoor persists: the defense failed" in said[6] and "f_B's loss did not single out the poison" in said[6]
    for step, text in said.items():
        assert "removed the backdoor" not in text, step


def test_first_screen_teaches_then_prepares_the_whole_class_with_one_estimate(tmp_path, monkeypatch):
    """An empty lab opens on what a backdoor is and the causal graph, then "Prepare this class": one click
    queues every preset with its baseline, and the page gives one estimate for the batch and its order."""
    from cbd_core.config import RunConfig
    from cbd_core.presets import PRESETS

    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    # Finished runs on another seed: what the estimate judges from (a CBD run without a baseline is no lesson).
    RunDir.create(tmp_path, PRESETS["badnets"].config(seed=7).validated().to_dict(), state="done", seconds=60.0,
                  device="cpu")
    baseline = verdicts.baseline_config(PRESETS["badnets"].config(seed=7).validated().to_dict())
    RunDir.create(tmp_path, RunConfig.from_dict(baseline).validated().to_dict(), state="done", seconds=20.0,
                  device="cpu")
    at = open_lesson()
    assert not at.exception
    headings = [s.value for s in at.subheader]
    assert headings[:3] == ["What is a backdoor?", "Why it works: a confounder", "Prepare this class"], headings
    assert len(at.get("image")) >= 3  # the digit with and without the trigger, the causal graph
    at.button(key="lesson_prepare_class").click().run()
    assert not at.exception
    queued = [r for r in list_runs(tmp_path) if r.status()["state"] == "queued"]
    assert len(queued) == 2 * len(PRESETS)
    assert {(r.config()["attack"], r.config()["defense"]) for r in queued} == \
        {(p.attack, d) for p in PRESETS.values() for d in ("cbd", "undefended")}
    at.run()
    assert not at.exception and not [b for b in at.button if b.key == "lesson_prepare_class"]
    said = page_text(at)
    # A CBD run of 60 s and a baseline of 20 s per preset, one after another, in the order they were queued.
    total = 80 * len(PRESETS)
    assert f"All done in about **{total // 60} min {total % 60:02d} s**" in said, said
    first, second = PRESETS["badnets"].label, PRESETS["blend"].label
    assert f"{first} (CBD) (about 1 min 00 s) → {first} (baseline) (about 1 min 20 s) → {second} (CBD)" in said
    assert len(at.dataframe[0].value) == 2 * len(PRESETS)


def test_the_weights_step_numbers_epochs_as_sample_weights_does_and_has_the_glossary(lesson_pair):
    """One epoch numbering (SampleView.first_epoch): step 3's first point is the Sample weights slider's
    first epoch; both pages define the abbreviations from one glossary (cbd_core.text.GLOSSARY)."""
    from cbd_core.text import GLOSSARY

    root, ids = lesson_pair
    at = open_lesson(ids["cbd"], 3)
    assert not at.exception
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    lesson_epochs = figure["data"][-1]["x"]
    weights = app_at_page("sample_weights", ids["cbd"]).run()
    assert not weights.exception
    slider = weights.slider[0]
    assert (lesson_epochs[0], lesson_epochs[-1]) == (slider.min, slider.max) == (4, 7), (lesson_epochs, slider.min)
    for page in (at, weights):
        glossary = [e for e in page.expander if e.label.startswith("What the abbreviations mean")]
        assert len(glossary) == 1
        text = " ".join(m.value for m in glossary[0].markdown)
        assert GLOSSARY["AUROC"] in text and GLOSSARY["CE"] in text


def image_captions(at: AppTest) -> list[str]:
    return [image.proto.imgs[0].caption for image in at.image]


def marked_traces(at: AppTest) -> dict[str, dict]:
    """{chart key's model: the star trace} of step 4's maps."""
    from pages.common.poison_maps import MARK_NAME

    found = {}
    for chart in at.get("plotly_chart"):
        figure = json.loads(chart.proto.spec)
        stars = [t for t in figure["data"] if t.get("name") == MARK_NAME]
        if stars:
            found[figure["layout"]["title"]["text"]] = (stars, figure["layout"].get("annotations", []))
    return found


def test_step_5s_training_image_is_the_star_on_step_4s_maps(lesson_pair):
    """Step 5 explains a poisoned training image and says where it is; step 4's maps mark that very
    sample, at its coordinates in umap.npz, with a star and a label."""
    import re

    root, ids = lesson_pair
    run = RunDir(root / ids["cbd"])
    at = open_lesson(ids["cbd"], 5)
    assert not at.exception
    assert at.radio(key="lesson_attr_image").value == "train"
    shown = [re.match(r"training image (\d+)", caption) for caption in image_captions(at)]
    shown = [int(m.group(1)) for m in shown if m]
    assert len(shown) == 1, image_captions(at)
    sample = shown[0]
    weights, umap = run.arrays("sample_weights"), run.arrays("umap")
    assert weights["is_poisoned"][sample]
    assert "marked ★ on the maps of step 4" in page_text(at)
    # Its button goes back to the maps, where the star sits on this sample in both.
    at.button(key="lesson_to_maps").click().run()
    assert not at.exception and at.query_params["step"] == "4"
    marked = marked_traces(at)
    assert len(marked) == 2, marked.keys()
    row = int(np.flatnonzero(umap["index"] == sample)[0])
    for title, (stars, notes) in marked.items():
        assert len(stars) == 1 and stars[0]["customdata"] == [sample], title
        name = "f_B" if title.startswith("f_B") else "f_C"
        assert stars[0]["x"] == pytest.approx([float(umap[f"umap_{name}"][row, 0])])
        assert stars[0]["y"] == pytest.approx([float(umap[f"umap_{name}"][row, 1])])
        assert [n["text"] for n in notes] == ["step 5's image"]
    assert f"The ★ is training image {sample}" in page_text(at)
    # The test image stays one choice away, said to be off the maps.
    at = open_lesson(ids["cbd"], 5)
    at.radio(key="lesson_attr_image").set_value("test").run()
    assert not at.exception and len(at.get("plotly_chart")) == 2
    assert "it is not on step 4's maps" in page_text(at)
    assert [c for c in image_captions(at) if c.startswith("a test ")] and \
        not [c for c in image_captions(at) if c.startswith("training image")]


@pytest.mark.parametrize("damage", ["no_maps", "damaged_embeddings"])
def test_a_run_without_what_the_star_needs_says_so(lesson_root, tmp_path, monkeypatch, damage):
    source, ids = lesson_root
    copy_pair(source, ids, tmp_path)
    run = tmp_path / ids["cbd"]
    if damage == "no_maps":
        (run / "umap.npz").unlink()
    else:
        (run / "embeddings.npz").write_bytes(b"not a zip file")
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_lesson(ids["cbd"], 5)
    assert not at.exception and not [e for e in at.error if "Backdoor persists" not in e.value]
    assert len(at.get("plotly_chart")) == 2  # the test image's attributions, as before
    said = page_text(at)
    reason = "maps (umap.npz) are not ready" if damage == "no_maps" else "kept no poisoned training image"
    assert reason in said and "so this is a test image with the trigger, which is not on step 4's maps" in said
    assert not [r for r in at.radio if r.key == "lesson_attr_image"]
    maps = open_lesson(ids["cbd"], 4)
    assert not maps.exception and not marked_traces(maps)
    if damage == "damaged_embeddings":  # the maps are there, the star is not, and the page says why
        assert len(maps.get("plotly_chart")) == 2 and "No ★ on these maps: This run kept no poisoned" in page_text(maps)


def test_step_4_without_maps_names_who_computes_them_or_that_it_stopped(lesson_root, tmp_path, monkeypatch,
                                                                          dead_pid):
    """Not always "the background worker": a Ray-trained run's own task maps it, and a map can stop half-way
    (run_analysis.map_progress, worded as on the Embeddings page)."""
    source, ids = lesson_root
    copy_pair(source, ids, tmp_path)
    (tmp_path / ids["cbd"] / "umap.npz").unlink()
    run = RunDir(tmp_path / ids["cbd"])
    task, ray_task = mapped_by_ray_task(run)
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_lesson(ids["cbd"], 4)
    assert not at.exception and not at.get("plotly_chart") and not at.warning
    said = (f"{ray_task} is computing this run's maps (UMAP takes from a few seconds to about half a minute). The "
            "**Embeddings** page waits for them; come back to this step in a moment.")
    assert said in [i.value for i in at.info], [i.value for i in at.info]
    assert "background worker" not in page_text(at)

    run.update_status(analysis_by={**task, "pid": dead_pid})  # the task's process, lost half-way
    at = open_lesson(ids["cbd"], 4)
    assert not at.exception and not at.get("plotly_chart")
    (warning,) = [w.value for w in at.warning]
    assert warning.startswith(f"{ray_task} stopped before finishing this run's maps: its process, pid {dead_pid}, "
                              "has stopped. No background worker is running to compute it again")
    assert not any("is computing" in i.value for i in at.info)
