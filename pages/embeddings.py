"""Embeddings: a 2-D UMAP map of what each model "sees", one dot per training image.

For CBD the backdoored f_B (left) should gather the poisoned images into a tight cluster of their
own, while the deconfounded f_C (right) should put them back among the images of their true class;
other defenses show their one model. Two views: the final models' maps, and "epoch by epoch", an
animation (Play, or drag its epoch slider) of the same maps while the models trained, numbered as
the Train page numbers epochs (CBD: f_B's stages, then f_C's epochs). Colour by class, by the
training label, or by what the defense thought of each sample (CBD's final weight on a log scale,
the others' suspicion as a rank); poisoned samples are crosses on top, plain dots, or hidden.
Click a point to see its image, labels and every model's prediction; box or lasso several to count
them and see their images.

The maps come from the run's umap.npz and umap_epochs.npz, which the background worker (or, for a run
trained on Ray, the run's own task) computes once a run is done; this page only reads them, and while
they are missing says who is computing them, or that it stopped half-way and who computes them again
(`run_analysis.map_progress`). The figures themselves are built in pages/common/maps.py.
"""

from __future__ import annotations

import pages.warm  # noqa: F401  first: every heavy import, once per process (see pages/warm)
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cbd_core.analysis.embeddings import EPOCH_UMAP_FILE, UMAP_FILE, has_epoch_umap, has_umap, model_names_in
from cbd_core.defenses import defense_or_none
from cbd_core.epoch_features import EPOCH_FEATURES_FILE
from cbd_core.jobs.run_analysis import FAILED, map_progress
from cbd_core.runs import RunDir
from pages.common import (class_name, defense_title, delivered_model, enlarge, explain, load_arrays, load_config,
                          load_metrics, judged_summary, map_note, model_view, non_finite_warning, page_errors,
                          phase_title, pick_run, plot_order, glossary)
from pages.common.maps import (POISONED_CLEAN, POISONED_VIEWS, SUSPICION, TRAINING_LABEL,
                               TRUE_CLASS, WEIGHT, animated_figure, colour_groups, epoch_timeline,
                               hover_texts, map_figure)
from pages.common.navigation import follow_app_navigation
from pages.common.presentation import plotly_chart  # sized for presentation mode

follow_app_navigation()


SELECTED = "embedding_selected_sample"  # the chosen training samples' ids (a list; one int is read as one)
COLOUR_BY = "embedding_colour_by"
COLOUR_CHOSEN = "embedding_colour_chosen"  # set once the user picks a colouring; until then it follows the view
POISONED_VIEW = "embedding_poisoned_view"
VIEW = "embedding_view"
FINAL, EPOCHS = "final models", "epoch by epoch"
GRID_MAX, GRID_COLUMNS = 40, 10  # thumbnails shown for a selection of many images


def _table(run: RunDir, index: np.ndarray, predictions: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per-sample arrays for the points `index` (training indices), as plain arrays; missing ones are None."""
    weights = load_arrays(run, "sample_weights") or {}

    def per_sample(key: str) -> np.ndarray | None:
        values = weights.get(key)
        if values is None or values.ndim < 1 or (len(index) and index.max() >= values.shape[-1]):
            return None
        return np.asarray(values[..., index])

    defense = defense_or_none(load_config(run).get("defense"))
    view = defense.sample_view if defense is not None else None
    # A per-epoch training weight in [0, 1] (CBD's) colours the maps on a log scale; other scores by rank.
    final_weight = per_sample(view.score) if view is not None and view.is_weight else None
    suspicion = per_sample("suspicion")
    return {
        "index": index, "predictions": predictions,
        "label": per_sample("label"), "original_label": per_sample("original_label"),
        "is_poisoned": per_sample("is_poisoned"),
        "weight": final_weight[-1] if final_weight is not None and final_weight.ndim == 2 else None,
        "suspicion": suspicion if suspicion is not None and np.isfinite(suspicion).any() else None,
    }


@st.cache_data(show_spinner=False, max_entries=32)
def point_table(run_path: str, stamp: tuple[int, ...]) -> dict[str, Any]:
    """Everything the final maps draw, aligned to the embedding subset (cached by run and file times)."""
    run = RunDir(Path(run_path))
    umap_maps = load_arrays(run, UMAP_FILE) or {}
    embeddings = load_arrays(run, "embeddings") or {}
    index = np.asarray(umap_maps.get("index", embeddings.get("index", np.zeros(0, np.int64))), dtype=np.int64)
    names = model_names_in(embeddings)
    table = _table(run, index, {n: embeddings[f"prediction_{n}"] for n in names if f"prediction_{n}" in embeddings})
    table["maps"] = {n: umap_maps[f"umap_{n}"] for n in names if f"umap_{n}" in umap_maps}
    return table


@st.cache_data(show_spinner=False, max_entries=32)
def epoch_table(run_path: str, stamp: tuple[int, ...]) -> dict[str, Any]:
    """The animation's points (the images followed while training), their maps per recorded epoch and
    the final models' predictions for them (cached by run and file times)."""
    run = RunDir(Path(run_path))
    maps = load_arrays(run, EPOCH_UMAP_FILE) or {}
    embeddings = load_arrays(run, "embeddings") or {}
    index = np.asarray(maps["index"], dtype=np.int64)
    where = {int(s): i for i, s in enumerate(np.asarray(embeddings.get("index", [])).tolist())}
    rows = np.array([where.get(int(s), -1) for s in index.tolist()], dtype=np.int64)
    predictions = {n: embeddings[f"prediction_{n}"][rows] for n in model_names_in(embeddings)
                   if f"prediction_{n}" in embeddings and (rows >= 0).all()}
    table = _table(run, index, predictions)
    table.update(coords=maps["coords"], epoch=maps["epoch"], model=maps["model"].astype(str),
                 phase=maps["phase"].astype(str), phase_epoch=maps["phase_epoch"])
    return table


def _stamp(run: RunDir) -> tuple[int, ...]:
    return tuple(run.arrays_mtime(n) for n in (UMAP_FILE, EPOCH_UMAP_FILE, "embeddings", "sample_weights"))


@st.cache_data(show_spinner=False, max_entries=64)
def final_figures(run_path: str, stamp: tuple[int, ...], defense: str, colour_by: str, poisoned_view: str,
                  class_names: tuple[str, ...], selected: tuple[int, ...]) -> dict[str, Any]:
    """{model: its final map figure, as a plain dict} (cached: a figure of 5,000 points takes a noticeable
    moment). Dicts, not Figures: a pickled Figure comes back with its template in another order, and
    Streamlit keys a chart's selection on its spec, so the first click after a cache hit was lost."""
    table = point_table(run_path, stamp)
    groups = colour_groups(table, colour_by, list(class_names), poisoned_view, list(selected))
    return {name: map_figure(table, table["maps"][name], groups, model_view(defense, name).title,
                             hover_texts(table, list(class_names), name)).to_dict()
            for name in plot_order(list(table["maps"]), defense)}


@st.cache_data(show_spinner=False, max_entries=64)
def epoch_figure(run_path: str, stamp: tuple[int, ...], defense: str, colour_by: str, poisoned_view: str,
                 class_names: tuple[str, ...], selected: tuple[int, ...], total_epochs: int) -> dict[str, Any]:
    """The animation, as a plain dict (see final_figures)."""
    table = epoch_table(run_path, stamp)
    models = plot_order(list(dict.fromkeys(table["model"].tolist())), defense)
    phases = {p: phase_title(defense, p) for p in set(table["phase"].tolist())}
    steps = epoch_timeline(table["epoch"], table["model"], table["phase"], table["phase_epoch"], models, phases)
    groups = colour_groups(table, colour_by, list(class_names), poisoned_view, list(selected))
    # Without a model, hover_texts leaves out predictions, so every model shares the one list.
    shared_hover = hover_texts(table, list(class_names), None)
    hover = {m: shared_hover for m in models}
    titles = {m: model_view(defense, m).title for m in models}
    return animated_figure(table, table["coords"], steps, models, titles, groups, hover, total_epochs).to_dict()


def as_selection(value: Any) -> list[int]:
    """The session's selection as a list of sample ids (one id or a list of them)."""
    if value is None:
        return []
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    return [int(v) for v in value]


def selected_from(event: Any) -> list[int]:
    """Every selected point's sample id (customdata) from a plotly_chart selection event, in order,
    without repeats (a point under its ring counts once)."""
    try:
        points = event.selection.points if hasattr(event, "selection") else event["selection"]["points"]
    except (KeyError, TypeError, AttributeError):
        return []
    chosen: dict[int, None] = {}
    for point in points or []:
        value = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            chosen[int(value)] = None
    return list(chosen)


def chart(figure: Any, key: str) -> None:
    """Draw a map that can be clicked, boxed or lassoed; a new selection on it becomes the page's."""
    event = plotly_chart(go.Figure(figure), on_select="rerun", selection_mode=("points", "box", "lasso"), key=key)
    chosen = selected_from(event)
    # Only a chart whose selection changed moves the choice, so another chart's old selection does not
    # win it back on every rerun.
    if st.session_state.get(f"{key}_last") != chosen:
        st.session_state[f"{key}_last"] = chosen
        if chosen and chosen != as_selection(st.session_state.get(SELECTED)):
            st.session_state[SELECTED] = chosen
            st.rerun()


def sample_details(run: RunDir, points: dict[str, Any], sample: int, class_names: list[str], defense: str) -> None:
    """The selected sample's image, labels, weight and every model's prediction."""
    position = np.flatnonzero(points["index"] == sample)
    if not len(position):
        st.info(f"Sample {sample} is not on this run's map; select a point above.")
        return
    i = int(position[0])

    st.subheader(f"Sample {sample}")
    # beside the maps: a narrow column, so the picture sits above its facts
    picture, facts = st.container(), st.container()
    images = load_arrays(run, "images") or {}
    kept = np.flatnonzero(np.asarray(images.get("train_index", [])) == sample)
    with picture:
        if len(kept):
            st.image(enlarge(images["train_x"][int(kept[0])], 140), caption=f"training image {sample}")
        else:
            st.caption("This run did not keep this image.")
    with facts:
        poisoned = bool(points["is_poisoned"][i]) if points["is_poisoned"] is not None else None
        rows = []
        if points["label"] is not None:
            rows.append(f"- **Training label:** {class_name(class_names, points['label'][i])}")
        if points["original_label"] is not None:
            rows.append(f"- **Original label:** {class_name(class_names, points['original_label'][i])}")
        if poisoned is not None:
            rows.append(f"- **Poisoned:** {'yes: it carries the trigger' if poisoned else 'no'}")
        if points["weight"] is not None:
            rows.append(f"- **{defense_title(defense)} weight at the end:** {points['weight'][i]:.4f}")
        elif points["suspicion"] is not None:
            rows.append(f"- **{defense_title(defense)} suspicion:** {points['suspicion'][i]:.4g}")
        for name in plot_order(list(points["predictions"]), defense):
            rows.append(f"- **{model_view(defense, name).title} predicts:** "
                        f"{class_name(class_names, points['predictions'][name][i])}")
        st.markdown("\n".join(rows))


def selection_grid(run: RunDir, points: dict[str, Any], samples: list[int], class_names: list[str]) -> None:
    """A selection of many: how many, how many of them poisoned, and their images."""
    positions = np.flatnonzero(np.isin(points["index"], samples))
    poisoned = points["is_poisoned"][positions].astype(bool) if points["is_poisoned"] is not None else None
    st.subheader(f"{len(positions):,} images selected")
    if poisoned is not None:
        counts = st.columns(3)
        counts[0].metric("poisoned", f"{int(poisoned.sum()):,}")
        counts[1].metric("clean", f"{int((~poisoned).sum()):,}")
        if points["label"] is not None and len(positions):
            labels, frequency = np.unique(points["label"][positions], return_counts=True)
            top = int(np.argmax(frequency))
            counts[2].metric("most common training label", class_name(class_names, labels[top]),
                             f"{int(frequency[top]):,} of {len(positions):,}", delta_color="off")
    images = load_arrays(run, "images") or {}
    where = {int(s): i for i, s in enumerate(np.asarray(images.get("train_index", [])).tolist())}
    shown = [p for p in positions.tolist() if int(points["index"][p]) in where][:GRID_MAX]
    for start in range(0, len(shown), GRID_COLUMNS):
        for column, p in zip(st.columns(GRID_COLUMNS), shown[start:start + GRID_COLUMNS]):
            sample = int(points["index"][p])
            state = "poisoned" if poisoned is not None and points["is_poisoned"][p] else "clean"
            label = class_name(class_names, points["label"][p]) if points["label"] is not None else "?"
            column.image(enlarge(images["train_x"][where[sample]], 84), caption=f"{label} · {state}")
    if len(positions) > len(shown):
        st.caption(f"The first {len(shown)} of the {len(positions):,} selected images.")


def wait_for_map(run: RunDir, field: str, what: str, ready: Any) -> None:
    """Say why the map `field` (`what`) is not there yet: who is computing it, or that it stopped half-way or
    failed (pages.common.map_note); poll until it is `ready` while someone can still make it."""
    progress = map_note(run, field, what, then="This page shows it as soon as it is ready.")
    if progress.state != FAILED:
        rerun_when_changed(run, field, ready, progress.state)


def rerun_when_changed(run: RunDir, field: str, ready: Any, shown: str) -> None:
    """Every 2 s, rerun the page once `ready(run)`, or once the map's progress is no longer the `shown` one
    (it failed, stopped half-way, or is computed again), so the note above stays true."""

    @st.fragment(run_every=2)
    def poll() -> None:
        if ready(run) or map_progress(run, field).state != shown:
            st.rerun()

    poll()


def epoch_notes(run: RunDir) -> bool:
    """Say why the epoch-by-epoch view is not there; True when it is."""
    if has_epoch_umap(run):
        return True
    if not run.has_arrays(EPOCH_FEATURES_FILE):
        st.info("The epoch animation needs a run made by a newer version of the lab: this run did not record its "
                "models while they trained. Train it again (same settings) to watch its maps form.")
        return False
    wait_for_map(run, "epoch_analysis", "the epoch by epoch layout of this run's maps", has_epoch_umap)
    return False


def render() -> None:
    run = pick_run()
    if run is None:
        return
    config = load_config(run)
    defense = config.get("defense", "")
    if load_arrays(run, "embeddings") is None:
        st.info("This run kept no features to map (it has no embeddings.npz).")
        return
    if not has_umap(run):
        wait_for_map(run, "analysis", "this run's map", has_umap)
        return
    stamp = _stamp(run)
    points = point_table(str(run.path), stamp)
    if not points["maps"]:
        st.info("This run kept no features to map (it was trained with embedding_samples = 0).")
        return
    unusable = [non_finite_warning(coords, f"map coordinates of {model_view(defense, name).title} ({UMAP_FILE}.npz)")
                for name, coords in points["maps"].items()]
    if all(unusable):
        return
    summary = judged_summary(run) or {}
    num_classes = int(summary.get("num_classes") or (int(points["label"].max()) + 1 if points["label"] is not None
                                                      and len(points["label"]) else 10))
    class_names = tuple(str(c) for c in (summary.get("class_names") or range(num_classes)))

    options = [POISONED_CLEAN, TRUE_CLASS, TRAINING_LABEL]
    if points["weight"] is not None:
        options.append(WEIGHT)
    elif points["suspicion"] is not None:
        options.append(SUSPICION)
    if st.session_state.get(COLOUR_BY) not in options:
        st.session_state.pop(COLOUR_BY, None)  # e.g. "CBD's final weight" kept from a CBD run
        st.session_state.pop(COLOUR_CHOSEN, None)
    view_column, colour_column, poisoned_column = st.columns([1.3, 2.05, 1.45])
    view = view_column.radio("Show", (FINAL, EPOCHS), horizontal=True, key=VIEW,
                             help="Final models: the maps of the models as training left them. Epoch by epoch: the "
                                  "same maps while they trained, to play or scrub through.")
    if not st.session_state.get(COLOUR_CHOSEN):
        # Until a colouring is picked: the animation shows where the poison goes (two colours), the final
        # maps the classes (do the crosses sit with their true class?).
        st.session_state[COLOUR_BY] = POISONED_CLEAN if view == EPOCHS else TRUE_CLASS
    colour_by = colour_column.radio(
        "Colour by", options, horizontal=True, key=COLOUR_BY,
        on_change=lambda: st.session_state.update({COLOUR_CHOSEN: True}),
        help="Poisoned vs clean: red for the poisoned images, grey for the rest. True class: the class the image "
             "really shows. Training label: what the (poisoned) training set says. Weight (log scale) / suspicion "
             "(rank): what the defense made of each sample.")
    poisoned_view = poisoned_column.radio(
        "Poisoned images", POISONED_VIEWS, horizontal=True, key=POISONED_VIEW,
        help="✕ on top: crosses drawn after the clean images, same size. As dots: plain dots like the others, so every "
             "colour shows as the data has it. Hidden: only the clean images.")
    if colour_by == WEIGHT:
        non_finite_warning(points["weight"], "final weights of the mapped samples (sample_weights.npz)")
    selected = as_selection(st.session_state.get(SELECTED))

    # The maps on the left and what a click picks on the right, so the answer to a click is on screen
    # beside the point, not below the maps.
    maps_area, side = st.columns([4, 1.2])
    with side:
        if len(selected) == 1:
            sample_details(run, points, selected[0], list(class_names), defense)
        else:
            st.caption("Click a point on a map to see its image, labels and predictions here; box or lasso "
                       "several to count them and see their images below the maps.")
        if selected and st.button("Clear the selection", key="embedding_clear_selection"):
            st.session_state.pop(SELECTED, None)
            st.rerun()
    with maps_area:
        draw_maps(run, view, stamp, points, defense, colour_by, poisoned_view, class_names, selected, summary)
    if len(selected) > 1:
        selection_grid(run, points, selected, list(class_names))


def draw_maps(run: RunDir, view: str, stamp: tuple[int, ...], points: dict[str, Any], defense: str, colour_by: str,
              poisoned_view: str, class_names: tuple[str, ...], selected: list[int], summary: dict[str, Any]) -> None:
    """The final maps side by side, or the epoch-by-epoch animation, with what to look for."""
    if view == FINAL:
        figures = final_figures(str(run.path), stamp, defense, colour_by, poisoned_view, class_names, tuple(selected))
        names = list(figures)
        for column, name in zip(st.columns(len(names)), names):
            with column:
                chart(figures[name], f"umap_chart_{name}")
                delivered = name == delivered_model(defense, names)  # the model the defense hands over
                explain(model_view(defense, name).map_hint,
                        summary if delivered else None)
        st.caption(f"{len(points['index']):,} training images, a stratified subset; the map is UMAP (15 neighbours) "
                   "of each model's standardised penultimate-layer features. Click a point to inspect it; box or "
                   "lasso several (toolbar, top right of a map) to count them and see their images.")
    elif epoch_notes(run):
        table = epoch_table(str(run.path), stamp)
        total = len(load_metrics(run)) or int(table["epoch"].max())
        chart(epoch_figure(str(run.path), stamp, defense, colour_by, poisoned_view, class_names, tuple(selected), total),
              "umap_epochs_chart")
        poisoned_count = int(table["is_poisoned"].sum()) if table["is_poisoned"] is not None else 0
        models = plot_order(list(dict.fromkeys(table["model"].tolist())), defense)
        explain("Press Play (or drag the epoch slider under the maps) and watch where the crosses go as training "
                "goes on; epochs are numbered as on the Train page, and a model keeps its last map while another "
                "trains. " + " ".join(f"{model_view(defense, m).title}: {model_view(defense, m).map_hint}"
                                      for m in models), summary)
        st.caption(f"{len(table['index']):,} training images followed while training: all {poisoned_count:,} "
                   "poisoned ones of the map's subset (up to 750) and clean ones in proportion to their classes, so "
                   "the poison is over-represented here. Each epoch's map starts from the one before (UMAP), so a "
                   "point moves only as far as the model's view of it changed.")


st.title("Embeddings")
st.markdown('Each dot is a training image, placed by what the model "sees" (its last hidden layer, mapped to 2-D '
            "with UMAP): images the model finds alike sit together. The backdoored f_B should pull the poisoned "
            "images into a tight cluster of their own; f_C should place them with their true class.")
with page_errors():
    render()
glossary("UMAP", "ASR", "CE")
