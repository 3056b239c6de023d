"""Lesson: one real CBD run and its undefended baseline, told step by step for a class.

The teacher picks an attack's preset; the page works from a finished run pair (queued before class,
or queued here in one click and followed live). Six steps, each a picture from the run's own files
and a few plain sentences about THIS run's numbers (`cbd_core.lesson`), failures included: the
attack, training (f_B catches the trigger, f_C does not), the weights, the maps, where each model
looks, and the verdict against the undefended baseline. The run and the step live in the URL
(?run=...&step=3), so every student's screen can open the teacher's link on the same step.
"""

from __future__ import annotations

import pages.warm  # noqa: F401  first: every heavy import, once per process (see pages/warm)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import streamlit.components.v1 as components
from plotly.subplots import make_subplots

from cbd_core import capture, jobs, lesson, verdicts
from cbd_core.analysis.attributions import (TRAIN_MODE, apply_run_trigger, attribution_map, edit_trigger,
                                            predict_proba, trigger_is_patch)
from cbd_core.attacks import ATTACKS
from cbd_core.attacks.base import amplified_difference
from cbd_core.data import item_noun
from cbd_core.defenses import defense_or_none
from cbd_core.errors import UserInputError
from cbd_core.presets import PRESETS, Preset, measured_text
from cbd_core.runs import FINISHED, RunDir
from cbd_core.timing import duration_text, queue_forecast
from pages.common import (ACTIVE_RUN, active_run_id, class_name, enlarge, load_arrays, load_baseline, load_config,
                          load_metrics, load_models, judged_summary, map_note, model_view, page_errors, plot_order,
                          run_label, runs_root_path, set_active_run, verdict_banner, runs_stamp, glossary, literal)
from pages.common.attribution_views import (colour_limits, example_index, mean_shares, overlay_figure, run_images,
                                            stored_views, training_example_index)
from pages.common.intro import backdoor_intro
from pages.common.navigation import follow_app_navigation
from pages.common.presentation import plotly_chart, presenting, scaled
from pages.common.poison_maps import POISONED_COLOUR, Mark, map_figure, run_maps
from pages.common.run_progress import run_progress

follow_app_navigation()

STEP_PARAM = "step"
PRESET_KEY, RUN_KEY, STEP_PICKER = "lesson_preset", "lesson_run", "lesson_step_picker"
PENDING_STEP = "lesson_pending_step"
IMAGE_PICKER = "lesson_attr_image"  # step 5: the training image marked on step 4's maps, or a test image
SHOWN_STEP = "lesson_shown_step"  # the step drawn last, so a change of step scrolls back to the top
STEP_TITLES = [title for _, title in lesson.STEPS]
CLEAN_COLOUR, BASELINE_COLOUR = "#1f77b4", "#7f7f7f"
LESSON_METHOD = "integrated_gradients"  # the Attributions page's default: fine maps, a few ms per image


# -- state: the step in the URL ----------------------------------------------------------------------------
def current_step() -> int:
    """The step Back / Next / the step list just chose, else the one the URL names (1..6), else 1."""
    try:
        step = int(st.session_state.pop(PENDING_STEP, None) or st.query_params.get(STEP_PARAM, 1))
    except (TypeError, ValueError):
        step = 1
    return min(max(step, 1), len(lesson.STEPS))


def go_to(step: int) -> None:
    """Move to `step`. The script run that follows writes it into the URL (`main`): a query parameter
    written inside a button's callback reached the browser without the others (?present=1 was lost)."""
    st.session_state[PENDING_STEP] = min(max(step, 1), len(lesson.STEPS))


def _picked_step() -> None:
    go_to(st.session_state.get(STEP_PICKER) or 1)


def _picked_preset() -> None:
    """A new preset starts its lesson from the top, on its own run."""
    st.session_state.pop(ACTIVE_RUN, None)
    st.query_params.pop("run", None)
    go_to(1)


def _picked_run() -> None:
    set_active_run(st.session_state[RUN_KEY])


# -- which run pair ------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def _pairs_cached(root: str, stamp: tuple[tuple[str, int], ...]) -> list[dict[str, Any]]:
    return [{"run_id": p.run.run_id, "attack": p.config.get("attack"), "state": p.state,
             "baseline": p.baseline.state}
            for p in lesson.find_run_pairs(root)]


def run_pairs() -> list[dict[str, Any]]:
    """Every CBD run under the runs root with its state and its baseline's (cached until a run changes)."""
    root = runs_root_path()
    return _pairs_cached(str(root), runs_stamp(root))


@st.cache_data(show_spinner=False, max_entries=16)
def _preset_run_ids(root: str, stamp: tuple[tuple[str, int], ...], name: str) -> list[str]:
    matches = PRESETS[name].config().validated().to_dict()
    return [p.run.run_id for p in lesson.find_run_pairs(root, PRESETS[name].attack, matches)]


def preset_run_ids(preset: Preset) -> list[str]:
    """The CBD runs trained with exactly this preset's settings (any state), newest first. Each call scans
    the runs root (for the cache key), so `main` calls it once per rerun and hands the list down."""
    root = runs_root_path()
    return _preset_run_ids(str(root), runs_stamp(root), preset.name)


def choose_preset(pairs: list[dict[str, Any]]) -> Preset:
    """The preset select box; it follows the run the URL names (a shared link opens on its attack)."""
    names = list(PRESETS)
    wanted = next((p for p in pairs if p["run_id"] == active_run_id()), None)
    if wanted is not None:
        by_attack = next((n for n in names if PRESETS[n].attack == wanted["attack"]), None)
        if by_attack:
            st.session_state[PRESET_KEY] = by_attack
    st.session_state.setdefault(PRESET_KEY, names[0])
    name = st.selectbox("Attack to teach", names, format_func=lambda n: PRESETS[n].title, key=PRESET_KEY,
                        on_change=_picked_preset,
                        help="One preset per attack, each with its lesson; the Lesson shows a finished run of it.")
    return PRESETS[name]


def preset_status(preset: Preset, pairs: list[dict[str, Any]], ids: list[str]) -> None:
    """Whether the preset's own run pair is ready (`ids`: its runs, `preset_run_ids`); progress while it
    trains; a button when it is not queued."""
    mine = [p for p in pairs if p["run_id"] in ids]
    ready = [p for p in mine if p["state"] == "done" and p["baseline"] == "done"]
    active = [p for p in mine if p["state"] in ("queued", "running")
              or (p["state"] == "done" and p["baseline"] == "training")]
    if ready:
        return
    if active:
        st.fragment(pair_progress, run_every=2.0)(active[0]["run_id"])
        return
    done = [p for p in mine if p["state"] == "done"]
    if done:  # the CBD run finished, its baseline failed or was deleted
        st.info(f"The preset's run `{done[0]['run_id']}` is done, but its undefended baseline is not: the verdict "
                "step needs it.", icon=":material/info:")
        if st.button("Queue its baseline", key="lesson_queue_baseline"):
            jobs.submit_baseline(RunDir(runs_root_path() / done[0]["run_id"]), runs_root_path())
            st.rerun()
        return
    others = any(p["attack"] == preset.attack and p["state"] == "done" for p in pairs)
    text = (f"**{preset.title}** has not been trained here yet. Queue it before class, with its undefended "
            "baseline (the page then says how long they need)"
            + ("; meanwhile the lesson below uses another finished run of this attack." if others else "."))
    if presenting() and others:
        # On a projector the lesson below is what the class looks at: one line, so a step's content
        # starts on the first screen instead of under a banner that is a note for the teacher.
        note, action = st.columns([4, 1], vertical_alignment="center")
        note.caption(text)
        queue = action.button("Queue this preset", key="lesson_queue_preset")
    else:
        st.info(text, icon=":material/schedule:")
        queue = st.button("Queue this preset and its baseline", type="primary", key="lesson_queue_preset")
    if queue:
        with st.spinner("Queueing the preset and its undefended baseline…"):
            run = jobs.submit_with_baseline(preset.config(), runs_root_path())[0].run
        set_active_run(run.run_id)
        go_to(1)
        st.rerun()


def pair_progress(run_id: str) -> None:
    """The preset run's and its baseline's progress, as the Train page shows a run (state, phase names,
    why it waits, time left), with one estimate for both; reruns the page once both are done."""
    root = runs_root_path()
    run = RunDir(root / run_id)
    if not run.exists():
        st.rerun()
    baseline = verdicts.lookup_baseline(load_config(run), root)
    rows = [("The CBD run", run)] + ([("Its undefended baseline", RunDir(root / baseline.run_id))]
                                     if baseline.run_id else [])
    finished = True
    for what, item in rows:
        status = item.status()
        finished &= status.get("state") in FINISHED
        with st.container(border=True):
            st.markdown(f"**{what}** · run `{item.run_id}`")
            run_progress(item, status, load_config(item), load_metrics(item))
    batch_estimate([item.run_id for _, item in rows], {item.run_id: what for what, item in rows})
    st.caption("The lesson opens on this run as soon as both have finished; you can stay on this page.")
    if finished:
        st.rerun()


def batch_estimate(run_ids: list[str], names: dict[str, str]) -> None:
    """One line for runs queued together: when the last is done, and the order they finish in."""
    forecast = [f for f in queue_forecast(run_ids, runs_root_path()) if f.seconds is None or f.seconds > 0]
    if not forecast:
        return
    if any(f.seconds is None for f in forecast):
        st.caption(":material/timer: No estimate for all of them yet: it needs a finished run on this device "
                   "to judge from (or the first stage of the one training now).")
        return
    order = " → ".join(f"{names.get(f.run_id, f.run_id)} (about {duration_text(f.seconds)})" for f in forecast)
    st.caption(f":material/timer: All done in about **{duration_text(forecast[-1].seconds)}**, in this order: "
               f"{order}. Judged from finished runs on this device; a busy machine is slower.")


# -- the first screen: what a backdoor is, then one click to prepare the whole class ------------------------
def class_runs() -> list[tuple[str, str, str]]:
    """(run id, what it is, state) of every preset's newest CBD run and its baseline; a preset never
    queued has none."""
    root = runs_root_path()
    found = []
    for preset in PRESETS.values():
        ids = preset_run_ids(preset)
        if not ids:
            continue
        run = RunDir(root / ids[0])
        found.append((run.run_id, f"{preset.label} (CBD)", run.status().get("state", "?")))
        baseline = verdicts.lookup_baseline(load_config(run), root)
        if baseline.run_id:
            base = RunDir(root / baseline.run_id)
            found.append((base.run_id, f"{preset.label} (baseline)", base.status().get("state", "?")))
    return found


def prepare_class() -> bool:
    """"Prepare this class": one click queues every preset with its undefended baseline (runs already
    there are reused, `jobs.submit_with_baseline`), then their progress with one estimate for the whole batch.
    True once every preset is queued (the caller then shows nothing else)."""
    missing = [preset for preset in PRESETS.values() if not preset_run_ids(preset)]
    st.subheader("Prepare this class")
    if missing:
        st.markdown(f"The Lesson walks a class through real runs. One click trains every preset ({len(PRESETS)} "
                    "attacks) with CBD and, after each, the same poisoned data without a defense, so every verdict "
                    f"has its baseline: {2 * len(missing)} runs, one after another in the background. Press it before "
                    "class; this page shows how long the whole batch needs and opens the lesson when the first "
                    "pair is done.")
        if st.button("Prepare this class", type="primary", key="lesson_prepare_class", icon=":material/school:"):
            with st.spinner("Queueing every preset and its baseline…"):
                root = runs_root_path()
                for preset in missing:
                    jobs.submit_with_baseline(preset.config(), root)
            st.rerun()
        return False
    active = any(state in ("queued", "running") for _, _, state in class_runs())
    st.fragment(class_progress, run_every=2.0 if active else None)()
    return True


def class_progress() -> None:
    """Every preset run's state and the batch's one estimate; reruns the page when the first pair is done."""
    runs = class_runs()
    st.dataframe([{"run": what, "state": state, "id": run_id} for run_id, what, state in runs],
                 hide_index=True, width="stretch")
    batch_estimate([run_id for run_id, _, state in runs if state in ("queued", "running")],
                   {run_id: what for run_id, what, _ in runs})
    if any(p["state"] == "done" and p["baseline"] == "done" for p in run_pairs()):
        st.rerun()  # the first pair is ready: the lesson can start


def choose_run(preset: Preset, pairs: list[dict[str, Any]], preset_ids: list[str]) -> RunDir | None:
    """The finished CBD run of the preset's attack the lesson shows: the URL's, else the preset's own
    (`preset_ids`, from `preset_run_ids`), else the newest. Says why when the URL names a run the lesson
    cannot show."""
    done = [p for p in pairs if p["attack"] == preset.attack and p["state"] == "done"]
    wanted = active_run_id()
    ids = [p["run_id"] for p in done]
    if not ids:
        if not [p for p in pairs if p["attack"] == preset.attack]:
            st.caption(f"No CBD run of {preset.attack} has finished yet, so there is nothing to walk through.")
        return None
    if wanted in ids:
        chosen = wanted
    else:
        if wanted and wanted not in [p["run_id"] for p in pairs]:
            st.caption(f"Run `{wanted}` is not a CBD run (or no longer exists); the lesson needs one, so it shows "
                       "the run below.")
        own = [i for i in preset_ids if i in ids]
        chosen = own[0] if own else ids[0]
    if chosen != wanted:
        set_active_run(chosen)
    st.session_state[RUN_KEY] = chosen
    root = runs_root_path()
    own = set(preset_ids)
    st.selectbox("Run", ids, key=RUN_KEY, on_change=_picked_run,
                 format_func=lambda i: ("preset · " if i in own else "") + run_label(RunDir(root / i)),
                 help="Finished CBD runs of this attack: the preset's own first, then any other.")
    return RunDir(root / chosen)


# -- the run as the steps read it ----------------------------------------------------------------------------
@dataclass
class Lesson:
    run: RunDir
    config: dict[str, Any]
    summary: dict[str, Any]
    baseline: verdicts.Baseline
    class_names: list[str]
    target: int
    preset: Preset | None  # when the run is the preset's own

    def name(self, c: int) -> str:
        return class_name(self.class_names, c)

    @property
    def item(self) -> str:
        """What one image of the run's data shows ("digit" on MNIST), for the captions."""
        return item_noun(self.config.get("dataset"))


@dataclass
class MapSample:
    """The poisoned training image step 5 explains and step 4 marks with a star (`training_example_index`)."""
    sample: int  # its training-set index
    image: np.ndarray  # its pixels as the models trained on them, trigger included (images.npz)
    caption: str  # what it shows and how it was labelled (sample_weights.npz)
    xy: dict[str, tuple[float, float]]  # its place on each model's map (umap.npz)


def map_sample(ctx: Lesson) -> tuple[MapSample | None, str]:
    """The image steps 4 and 5 share, read from the run's files; without one, why not (a sentence's start,
    for a run made before the maps, or one whose files are missing or damaged)."""
    try:
        points = run_maps(ctx.run)
        images = load_arrays(ctx.run, "images") or {}
        weights = load_arrays(ctx.run, "sample_weights") or {}
        sample = training_example_index(ctx.run)
    except UserInputError as err:
        return None, f"A file of this run cannot be read ({literal(err)})"
    if points is None or not points["xy"]:
        return None, "This run's maps (umap.npz) are not ready or cannot be drawn"
    if sample is None:
        return None, ("This run kept no poisoned training image with its pixels and its place on the maps "
                      "(embeddings.npz, images.npz)")
    on_map = np.flatnonzero(points["index"] == sample)
    kept = np.flatnonzero(np.asarray(images.get("train_index", []), dtype=np.int64) == sample)
    if not len(on_map) or not len(kept) or "train_x" not in images:
        return None, f"Training image {sample}, the one chosen to explain, is not on this run's maps with its pixels"
    labels, truth = weights.get("label"), weights.get("original_label")
    caption = f"training image {sample}, poisoned"
    if truth is not None and sample < len(truth):
        caption = f"training image {sample}: a {ctx.name(int(truth[sample]))} with the trigger"
    if labels is not None and sample < len(labels):
        caption += f", labelled {ctx.name(int(labels[sample]))}"
    xy = {name: (float(coords[on_map[0], 0]), float(coords[on_map[0], 1])) for name, coords in points["xy"].items()}
    return MapSample(sample, images["train_x"][kept[0]], caption, xy), ""


def say(sentences: list[str]) -> None:
    """The step's sentences about this run, as one block a class can read."""
    st.markdown("#### What this run shows\n" + "\n".join(f"- {s}" for s in sentences if s))


def image_row(images: list[np.ndarray], captions: list[str], size: int = 112) -> None:
    for column, image, caption in zip(st.columns(len(images)), images, captions):
        column.image(enlarge(image, size), caption=caption)


def shown_test_images(ctx: Lesson, count: int = 4) -> np.ndarray:
    """The example image first, then the first image of other classes outside the target."""
    test_x, test_y, _ = run_images(ctx.run)
    chosen = [example_index(ctx.run)]
    for c in np.unique(test_y):
        if len(chosen) >= count:
            break
        if c != ctx.target and c not in test_y[chosen]:
            chosen.append(int(np.flatnonzero(test_y == c)[0]))
    return np.asarray(chosen)


# -- the six steps -------------------------------------------------------------------------------------------
def trigger_zoom(image: np.ndarray, region: np.ndarray, margin: int = 2) -> tuple[np.ndarray, int] | None:
    """The corner of `image` (H, W, C) around a patch trigger's `region` (H, W), with `margin` pixels of
    the image around it, and how many pixels wide it is; None when the region is empty."""
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    if not len(rows) or not len(cols):
        return None
    top, bottom = max(0, rows[0] - margin), min(image.shape[0], rows[-1] + 1 + margin)
    left, right = max(0, cols[0] - margin), min(image.shape[1], cols[-1] + 1 + margin)
    return image[top:bottom, left:right], right - left


def step_attack(ctx: Lesson) -> None:
    attack = ATTACKS.get(str(ctx.config.get("attack")))
    test_x, test_y, region = run_images(ctx.run)
    chosen = shown_test_images(ctx)
    clean = test_x[chosen]
    triggered = apply_run_trigger(clean, ctx.config)
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Test images, clean** and **with the trigger** (this run's attack)")
        image_row(list(clean), [f"a clean {ctx.name(int(c))}" for c in test_y[chosen]])
        image_row(list(triggered), ["with the trigger"] * len(chosen))
        poisoned = poisoned_training_images(ctx)
        if poisoned:
            st.markdown(f"**Poisoned training images**, as the model saw them (labelled {ctx.name(ctx.target)})")
            image_row([p[0] for p in poisoned], [p[1] for p in poisoned])
    with right:
        if attack is not None:  # the attack's own honest view of its trigger (a warp has no pattern)
            preview = attack.trigger_preview(attack.resolve(test_x.shape[1:], ctx.config.get("attack_params") or {}),
                                             test_x.shape[1:])
            for column, image, caption in zip(st.columns(3), preview.images, preview.captions):
                column.image(enlarge(image, 112), width=scaled(112), caption=caption)
            st.caption(preview.sentence)
        zoom = trigger_zoom(triggered[0], region) if trigger_is_patch(ctx.config, region) else None
        if zoom is not None:  # a 3x3 patch is a few pixels on a projector: show its corner large
            crop, width = zoom
            st.image(enlarge(crop, 200), width=scaled(200),
                     caption=f"the trigger on the first {ctx.item}, zoomed (the {width}-pixel-wide corner around it)")
        else:
            difference, gain = amplified_difference(clean[:1], triggered[:1])
            st.image(enlarge(difference[0], 112), width=scaled(112),
                     caption=f"what the trigger changed in the first {ctx.item} (×{gain:.0f})")
        clean_label = bool(attack and attack.clean_label)
        say([f"**{attack.title if attack else ctx.config.get('attack')}**: "
             f"{attack.description if attack else ''}."] + lesson.attack_story(ctx.summary, clean_label))


def poisoned_training_images(ctx: Lesson, count: int = 4) -> list[tuple[np.ndarray, str]]:
    """Up to `count` poisoned training images the run kept, with their training and true labels."""
    images = load_arrays(ctx.run, "images") or {}
    weights = load_arrays(ctx.run, "sample_weights") or {}
    if "train_index" not in images or "is_poisoned" not in weights:
        return []
    index = np.asarray(images["train_index"])
    poisoned = np.asarray(weights["is_poisoned"], bool)
    if len(index) and index.max() >= len(poisoned):
        return []
    labels, truth = weights.get("label"), weights.get("original_label")
    kept = np.flatnonzero(poisoned[index])
    if truth is not None and len(kept):  # one per true digit, so the row shows different digits
        _, first = np.unique(np.asarray(truth)[index[kept]], return_index=True)
        kept = kept[np.sort(first)]
    kept = kept[:count]
    out = []
    for k in kept.tolist():
        sample = int(index[k])
        caption = f"labelled {ctx.name(int(labels[sample]))}" if labels is not None else "poisoned"
        if truth is not None and labels is not None and truth[sample] != labels[sample]:
            caption += f", really a {ctx.name(int(truth[sample]))}"
        out.append((images["train_x"][k], caption))
    return out


def training_figure(metrics: list[dict[str, Any]], baseline_metrics: list[dict[str, Any]],
                    summary: dict[str, Any]) -> go.Figure:
    """f_B's clean accuracy and attack success rate over its steps (the step it caught the trigger
    marked), f_C's over its epochs, and the undefended model's attack success rate beside f_C's."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("f_B: trained briefly, on purpose",
                                                        "f_C: trained with CBD's weights"), horizontal_spacing=0.08)
    f_b, f_c = lesson.phase_lines(metrics, "f_B"), lesson.phase_lines(metrics, "f_C")
    b_x = [line.get("step", line.get("epoch")) for line in f_b]
    c_x = [line.get("epoch") for line in f_c]
    for col, x, lines in ((1, b_x, f_b), (2, c_x, f_c)):
        fig.add_trace(go.Scatter(x=x, y=[m.get("attack_success_rate") for m in lines], mode="lines+markers",
                                 name="attack success rate", line={"color": POISONED_COLOUR, "width": 3},
                                 showlegend=col == 1, legendgroup="asr"), row=1, col=col)
        fig.add_trace(go.Scatter(x=x, y=[m.get("clean_accuracy") for m in lines], mode="lines+markers",
                                 name="clean accuracy", line={"color": CLEAN_COLOUR, "width": 3},
                                 showlegend=col == 1, legendgroup="ca"), row=1, col=col)
    base = [m for m in baseline_metrics if m.get("attack_success_rate") is not None]
    if base:
        fig.add_trace(go.Scatter(x=[m.get("epoch") for m in base], y=[m["attack_success_rate"] for m in base],
                                 mode="lines", name="attack success rate without a defense",
                                 line={"color": BASELINE_COLOUR, "dash": "dot", "width": 2}), row=1, col=2)
    caught = capture.read_f_b(summary, metrics)
    if caught.caught_step is not None:  # the moment step 2's sentence quotes
        fig.add_vline(x=caught.caught_step, line={"color": POISONED_COLOUR, "dash": "dash", "width": 1}, row=1, col=1,
                      annotation_text="caught the trigger", annotation_position="bottom right")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    fig.update_xaxes(title_text="training step", row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=1, col=2)
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.22})
    return fig


def step_training(ctx: Lesson) -> None:
    metrics = load_metrics(ctx.run)
    baseline_metrics = load_metrics(RunDir(ctx.run.path.parent / ctx.baseline.run_id)) \
        if ctx.baseline.state == "done" else []
    left, right = st.columns([3, 2])
    with left:
        if metrics:
            plotly_chart(training_figure(metrics, baseline_metrics, ctx.summary), key="lesson_training_chart")
        else:
            st.info("This run recorded no per-epoch metrics.")
    with right:
        say(lesson.training_story(metrics, ctx.summary) or ["This run recorded no per-epoch metrics."])
        st.caption("Attack success rate: the share of triggered test images sent to the target. Clean accuracy: "
                   "the share of clean test images classified right.")


def weights_figure(weights: np.ndarray, is_poisoned: np.ndarray, first_epoch: int = 0) -> go.Figure:
    """Median weight of poisoned and clean samples per f_C epoch, with their 10-90% band; row 0 is
    epoch `first_epoch` (the Train page's numbering, as on the Sample weights page)."""
    fig = go.Figure()
    epochs = list(range(first_epoch, first_epoch + weights.shape[0]))
    for name, mask, colour in (("clean", ~is_poisoned, CLEAN_COLOUR), ("poisoned", is_poisoned, POISONED_COLOUR)):
        rows = weights[:, mask]
        low, mid, high = (np.percentile(rows, q, axis=1) for q in (10, 50, 90))
        fig.add_trace(go.Scatter(x=epochs + epochs[::-1], y=list(high) + list(low[::-1]), fill="toself",
                                 fillcolor=colour, opacity=0.18, line={"width": 0}, hoverinfo="skip",
                                 showlegend=False))
        fig.add_trace(go.Scatter(x=epochs, y=mid, mode="lines+markers", name=f"{name} images (median, 10–90%)",
                                 line={"color": colour, "width": 3}))
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 20, "b": 10}, yaxis_title="weight in f_C's loss",
                      xaxis_title=f"epoch, as on the Train page ({first_epoch}: the weights f_C starts with)",
                      xaxis={"dtick": 1},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def step_weights(ctx: Lesson) -> None:
    arrays = load_arrays(ctx.run, "sample_weights") or {}
    weights, poisoned = arrays.get("weights"), arrays.get("is_poisoned")
    left, right = st.columns([3, 2])
    if weights is None or poisoned is None or weights.ndim != 2:
        st.info("This run kept no per-epoch weights.")
        return
    poisoned = poisoned.astype(bool)
    with left:
        defense = defense_or_none(ctx.summary.get("defense"))
        view = defense.sample_view if defense is not None else None
        first = view.first_epoch(load_metrics(ctx.run)) if view is not None else 0
        plotly_chart(weights_figure(weights, poisoned, first), key="lesson_weights_chart")
    with right:
        st.markdown("CBD weighs every training image by **w = CE_B / (CE_B + CE_C)**: an image f_B fits far more "
                    "easily than f_C (a small loss CE_B) counts for little in f_C's training.")
        say(lesson.weights_story(weights, poisoned, ctx.summary))
        st.page_link("pages/sample_weights.py", label="Every weight, epoch by epoch: the Sample weights page →")


def step_maps(ctx: Lesson) -> None:
    points = run_maps(ctx.run)
    if points is None or not points["xy"]:
        # Not always the worker's: a Ray-trained run's own task maps it, and a map can stop half-way or fail.
        map_note(ctx.run, "analysis", "this run's maps",
                 then="The **Embeddings** page waits for them; come back to this step in a moment.")
        st.page_link("pages/embeddings.py", label="The Embeddings page →")
        return
    names = plot_order(points["xy"], ctx.config.get("defense"))
    columns = st.columns(len(names) + 1, gap="medium") if len(names) < 3 else st.columns(len(names))
    titles = {"f_B": "f_B, the backdoored model", "f_C": "f_C, the deconfounded model"}
    marked, missing = map_sample(ctx)
    for column, name in zip(columns, names):
        mark = Mark(marked.sample, *marked.xy[name], "step 5's image") if marked and name in marked.xy else None
        with column:
            plotly_chart(map_figure(points["xy"][name], points["flags"], titles.get(name, name), mark),
                         key=f"lesson_map_{name}")
    with columns[-1]:
        st.markdown("Each dot is a training image, placed by what the model \"sees\" (its last hidden layer, "
                    "mapped to 2-D with UMAP): images the model finds alike sit together. Crosses are poisoned."
                    + (f" The ★ is {marked.caption}: step 5 shows where each model looks in it." if marked else ""))
        if not marked:
            st.caption(f"No ★ on these maps: {missing}.")
        say(lesson.maps_story(points["shares"], float(ctx.config.get("poison_rate", 0.0)), ctx.summary))
        st.page_link("pages/embeddings.py", label="Watch the maps form epoch by epoch: the Embeddings page →")


def step_attributions(ctx: Lesson) -> None:
    test_x, test_y, region = run_images(ctx.run)
    patch = trigger_is_patch(ctx.config, region)
    names = plot_order(ctx.run.model_names(), ctx.config.get("defense"))
    marked, missing = map_sample(ctx)
    columns = st.columns([1] + [2] * len(names) + [2])
    with columns[0]:
        training = marked is not None and st.radio(
            "Image", ["train", "test"], key=IMAGE_PICKER,
            format_func=lambda k: "★ training image" if k == "train" else "test image",
            help="A poisoned training image, marked ★ on the maps of step 4, or a test image with the trigger, "
                 "which the models never trained on.") == "train"
    if training:
        image = marked.image
        stored = stored_views(ctx.run, TRAIN_MODE, LESSON_METHOD, names, 0)
        caption = marked.caption
    else:
        index = example_index(ctx.run)
        image = apply_run_trigger(test_x[index], ctx.config)
        # The worker's maps when it explained this very image (the Attributions page's trigger at rest).
        same_image = np.array_equal(edit_trigger(test_x[index], image, region)[0], image)
        stored = stored_views(ctx.run, "triggered", LESSON_METHOD, names, index) if same_image else None
        caption = f"a test {ctx.name(int(test_y[index]))} with the trigger"
    if stored is not None:
        maps, probs = stored
    else:  # a run without the worker's views: computed here, in the app's process
        models = load_models(ctx.run)
        maps = {name: attribution_map(models[name], image, None, LESSON_METHOD) for name in names}
        probs = {name: predict_proba(models[name], image) for name in names}
    tops = colour_limits(maps, per_model=True)
    with columns[0]:
        st.image(enlarge(image, 112), caption=caption)
    for column, name in zip(columns[1:], names):
        with column:
            st.markdown(f"**{model_view(ctx.config.get('defense'), name).title}**")
            plotly_chart(overlay_figure(image, maps[name], region if patch else None, tops[name], height=280,
                                        colour_bar=False),
                         key=f"lesson_attr_{name}")
            predicted = int(np.argmax(probs[name]))
            st.markdown(f"predicts **{ctx.name(predicted)}**"
                        + (" — the attack's target" if predicted == ctx.target else ""))
    with columns[-1]:
        if training:
            st.markdown("This poisoned training image is **marked ★ on the maps of step 4**.")
            st.button("★ See it on step 4's maps", key="lesson_to_maps", on_click=go_to, args=(4,), type="tertiary")
        elif marked is not None:
            st.markdown("A test image: the models never trained on it, so it is not on step 4's maps (they show "
                        "training images).")
        else:
            st.caption(f"{missing}, so this is a test image with the trigger, which is not on step 4's maps.")
        st.caption("Bright = the pixels that drove the model's decision (integrated gradients; each map is coloured "
                   "from zero to its own largest value)." + (" The dotted box is the trigger." if patch else
                                       " This trigger changes the whole image, so it is not outlined."))
        shares = mean_shares(str(runs_root_path()), ctx.run.run_id, LESSON_METHOD)
        say(lesson.attributions_story(shares, float(region.mean()), patch, ctx.summary))
        st.page_link("pages/attributions.py", label="Try other images and methods →")


def step_verdict(ctx: Lesson) -> None:
    verdict_banner(ctx.run)  # the verdict, the cost and what happened, in sentences
    left, right = st.columns([3, 2])
    with left:
        base = ctx.baseline.summary if ctx.baseline.state == "done" else None
        c1, c2 = st.columns(2)
        asr, ca = ctx.summary.get("attack_success_rate"), ctx.summary.get("clean_accuracy")
        if base:
            base_asr, base_ca = base["attack_success_rate"], base["clean_accuracy"]
            # Green only for a removed backdoor: a small drop of a persisting one is no success.
            removed = verdicts.verdict(ctx.summary, base) == verdicts.REMOVED
            c1.metric("attack success rate with CBD", f"{asr:.1%}",
                      f"{(asr - base_asr) * 100:+.1f} points against {base_asr:.1%} undefended",
                      delta_color="inverse" if removed else "off")
            c2.metric("clean accuracy with CBD", f"{ca:.1%}",
                      f"{(ca - base_ca) * 100:+.1f} points against {base_ca:.1%} undefended")
        else:
            c1.metric("attack success rate with CBD", f"{asr:.1%}")
            c2.metric("clean accuracy with CBD", f"{ca:.1%}")
        if ctx.baseline.state == "training":
            st.info(f"The undefended baseline `{ctx.baseline.run_id}` is still training; the comparison appears "
                    "when it is done.")
        elif ctx.baseline.state == "none":
            st.warning("No undefended run on the same data and seed has finished, so there is nothing to measure "
                       "this run against.")
            if st.button("Queue the undefended baseline", key="lesson_verdict_baseline"):
                jobs.submit_baseline(ctx.run, runs_root_path())
                st.rerun()
    with right:
        if ctx.preset is not None:
            st.markdown(f"#### This preset\n{ctx.preset.look_for}")
            st.caption(measured_text(ctx.preset.name))  # across seeds, only from the file `make bench` writes
        st.markdown("#### Next\nPick another attack above and walk through it the same way: each preset's steps "
                    "say what its own run shows.")


STEP_VIEWS = {"attack": step_attack, "training": step_training, "weights": step_weights, "maps": step_maps,
              "attributions": step_attributions, "verdict": step_verdict}


# The step's heading and controls stay at the top of the screen while the step scrolls under them (a
# teacher presses Next at the bottom of a long step and the new step's title must be in view). Streamlit
# wraps a keyed container in a layout wrapper of its own height, so the wrapper is what sticks. Page-link
# labels wrap instead of being cut in narrow columns.
HEADER_KEY = "lesson_header"
LESSON_STYLE = f"""
<style>
[data-testid="stLayoutWrapper"]:has(> .st-key-{HEADER_KEY}) {{ position: sticky; top: 3.75rem; z-index: 100; }}
.st-key-{HEADER_KEY} {{ background: white; padding: 0.25rem 0 0.4rem; border-bottom: 1px solid rgba(49, 51, 63, 0.2); }}
.st-key-{HEADER_KEY} h3 {{ padding: 0; }}
[data-testid="stPageLink"] p, [data-testid="stPageLink"] span {{ white-space: normal !important;
    overflow: visible !important; text-overflow: clip !important; }}
</style>
"""


def step_header(step: int) -> None:
    """Back, the step's heading and Next on one bar, the list of steps to jump to under it; the bar
    sticks to the top of the screen (LESSON_STYLE)."""
    st.markdown(LESSON_STYLE, unsafe_allow_html=True)
    if st.session_state.get(SHOWN_STEP) not in (None, step):  # a new step starts at its top, not mid-page
        components.html(f"<script>/* step {step} */ window.parent.document.querySelector("
                        "'[data-testid=\"stMain\"]')?.scrollTo(0, 0);</script>", height=0)
    st.session_state[SHOWN_STEP] = step
    with st.container(key=HEADER_KEY):
        back, heading, forward = st.columns([1, 6, 1], vertical_alignment="center")
        back.button("← Back", key="lesson_back", disabled=step == 1, on_click=go_to, args=(step - 1,),
                    width="stretch")
        heading.subheader(f"Step {step} of {len(lesson.STEPS)}: {STEP_TITLES[step - 1]}")
        forward.button("Next →", key="lesson_next", disabled=step == len(lesson.STEPS), on_click=go_to,
                       args=(step + 1,), type="primary", width="stretch")
        st.session_state[STEP_PICKER] = step
        st.segmented_control("Step", list(range(1, len(lesson.STEPS) + 1)), key=STEP_PICKER, required=True,
                             format_func=lambda i: f"{i} · {STEP_TITLES[i - 1]}", on_change=_picked_step,
                             label_visibility="collapsed")


def main() -> None:
    pairs = run_pairs()
    if not any(p["state"] == "done" and p["baseline"] == "done" for p in pairs):  # nothing to teach from yet
        backdoor_intro()
        if prepare_class():
            return
        st.subheader("Or one attack")
    # On a projector the step is what the class reads: the teacher's choice of attack and run folds into
    # one line, so at 1280x720 a step's pictures start on the first screen instead of under the selectors.
    chooser = st.expander("CBD, step by step: the attack and the run", icon=":material/tune:") if presenting() \
        else st.container()
    with chooser:
        top = st.columns([2, 3])
        with top[0]:
            preset = choose_preset(pairs)
        preset_ids = preset_run_ids(preset)  # once per rerun: each call scans the runs root
        with top[1]:
            run = choose_run(preset, pairs, preset_ids)
        preset_status(preset, pairs, preset_ids)
    if run is None:
        return
    config = load_config(run)
    summary = judged_summary(run) or {}
    own = run.run_id in preset_ids
    ctx = Lesson(run, config, summary, load_baseline(run), [str(c) for c in summary.get("class_names") or
                                                                 range(int(summary.get("num_classes", 10)))],
                 int(config.get("target_label", 0)), preset if own else None)
    step = current_step()
    if st.query_params.get(STEP_PARAM) != str(step):
        st.query_params[STEP_PARAM] = str(step)
    step_header(step)
    with page_errors():
        STEP_VIEWS[lesson.STEPS[step - 1][0]](ctx)
    glossary("ASR", "CA", "CE", "UMAP", "AUROC")


if not presenting():  # on a projector the step itself gets the room (the expander above the step names it)
    st.title("CBD, step by step")
    st.caption("One real run, step by step: the attack, how the two models train, whether CBD's weights find the "
               "poison, what each model sees and where it looks, and the verdict. Share the page's link: it opens on "
               "the same run and step.")
with page_errors():
    main()
