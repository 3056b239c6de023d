"""Embeddings: a 2-D UMAP map of what each model "sees", one dot per training image.

For CBD the backdoored f_B (left) should gather the poisoned images into a tight cluster of their
own, while the deconfounded f_C (right) should put them back among the images of their true digit;
other defenses show their one model. Colour by class, by the training label, or by what the defense
thought of each sample (CBD's final weight, the others' suspicion); poisoned samples are crosses.
Select a point (click, box or lasso) to see its image, labels and every model's prediction.

The maps come from the run's umap.npz, which the background worker computes once a run is done;
this page only reads it (and waits for it when it is not there yet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import plotly.colors
import plotly.graph_objects as go
import streamlit as st

from cbd_core.analysis.embeddings import UMAP_FILE, has_umap, model_names_in
from cbd_core.runs import RunDir
from pages.common import (defense_title, enlarge, explain, load_arrays, load_config, load_summary, model_view,
                          page_errors, pick_run)
from pages.common.navigation import follow_app_navigation

follow_app_navigation()


SELECTED = "embedding_selected_sample"  # the chosen training sample's id (its index in the training set)
COLOUR_BY = "embedding_colour_by"
TRUE_DIGIT, TRAINING_LABEL, WEIGHT, SUSPICION = "true class", "training label", "CBD's final weight", "suspicion"
def plot_order(names: list[str]) -> list[str]:
    """f_B on the left, f_C on the right; any other model alone."""
    return sorted(names, key=lambda n: (n != "f_B", n))


def class_colours(count: int) -> list[str]:
    palette = plotly.colors.qualitative.Plotly if count <= 10 else plotly.colors.qualitative.Alphabet
    return [palette[i % len(palette)] for i in range(count)]


@st.cache_data(show_spinner=False, max_entries=32)
def point_table(run_path: str, stamp: tuple[int, ...]) -> dict[str, Any]:
    """Everything the maps draw, aligned to the embedding subset, as plain arrays (cached by run and
    file times). Missing per-sample arrays come back as None."""
    run = RunDir(Path(run_path))
    umap_maps = load_arrays(run, UMAP_FILE) or {}
    embeddings = load_arrays(run, "embeddings") or {}
    weights = load_arrays(run, "sample_weights") or {}
    index = np.asarray(umap_maps.get("index", embeddings.get("index", np.zeros(0, np.int64))), dtype=np.int64)

    def per_sample(key: str) -> np.ndarray | None:
        values = weights.get(key)
        if values is None or values.ndim < 1 or (len(index) and index.max() >= values.shape[-1]):
            return None
        return np.asarray(values[..., index])

    final_weight = per_sample("weights")
    suspicion = per_sample("suspicion")
    return {
        "index": index,
        "maps": {name: umap_maps[f"umap_{name}"] for name in model_names_in(embeddings) if f"umap_{name}" in umap_maps},
        "predictions": {name: embeddings[f"prediction_{name}"] for name in model_names_in(embeddings)
                        if f"prediction_{name}" in embeddings},
        "label": per_sample("label"), "original_label": per_sample("original_label"),
        "is_poisoned": per_sample("is_poisoned"),
        "weight": final_weight[-1] if final_weight is not None and final_weight.ndim == 2 else None,
        "suspicion": suspicion if suspicion is not None and np.isfinite(suspicion).any() else None,
    }


def _stamp(run: RunDir) -> tuple[int, ...]:
    return tuple(run.arrays_mtime(n) for n in (UMAP_FILE, "embeddings", "sample_weights"))


def figure(points: dict[str, Any], name: str, colour_by: str, class_names: list[str], selected: int | None,
           title: str) -> go.Figure:
    """One Scattergl trace: a dot per sample, customdata its training index."""
    xy, index = points["maps"][name], points["index"]
    poisoned = points["is_poisoned"] if points["is_poisoned"] is not None else np.zeros(len(index), bool)
    labels = points["label"]
    true_labels = points["original_label"] if points["original_label"] is not None else labels
    colours = class_colours(len(class_names))

    def class_name(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else str(c)

    marker: dict[str, Any] = {"symbol": ["x" if p else "circle" for p in poisoned.tolist()],
                              "size": [14 if i == selected else (7 if p else 5) for i, p in
                                       zip(index.tolist(), poisoned.tolist())],
                              "opacity": 0.8, "line": {"width": 0}}
    if colour_by in (WEIGHT, SUSPICION):
        values = points["weight"] if colour_by == WEIGHT else points["suspicion"]
        marker.update(color=np.nan_to_num(values.astype(float)).tolist(), colorscale="Viridis", showscale=True,
                      colorbar={"title": {"text": "weight" if colour_by == WEIGHT else "suspicion"}, "thickness": 12})
    else:
        by = true_labels if colour_by == TRUE_DIGIT else labels
        marker["color"] = [colours[c % len(colours)] for c in by.tolist()] if by is not None else "#636efa"

    hover = []
    for i, sample in enumerate(index.tolist()):
        parts = [f"sample {sample}"]
        if labels is not None:
            parts.append(f"label {class_name(int(labels[i]))}")
            if true_labels is not None and true_labels[i] != labels[i]:
                parts.append(f"really {class_name(int(true_labels[i]))}")
        parts.append("poisoned" if poisoned[i] else "clean")
        if name in points["predictions"]:
            parts.append(f"predicted {class_name(int(points['predictions'][name][i]))}")
        if points["weight"] is not None:
            parts.append(f"weight {points['weight'][i]:.3f}")
        hover.append(" · ".join(parts))

    fig = go.Figure(go.Scattergl(x=xy[:, 0].tolist(), y=xy[:, 1].tolist(), mode="markers",
                                 customdata=index.tolist(), hovertext=hover, hoverinfo="text", marker=marker))
    fig.update_layout(title=title, height=460, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      dragmode="lasso", showlegend=False,
                      xaxis={"showticklabels": False, "title": None}, yaxis={"showticklabels": False, "title": None})
    return fig


def selected_from(event: Any) -> int | None:
    """The first selected point's sample id from a plotly_chart selection event, or None."""
    try:
        points = event.selection.points if hasattr(event, "selection") else event["selection"]["points"]
    except (KeyError, TypeError, AttributeError):
        return None
    for point in points or []:
        value = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


def legend(class_names: list[str], colour_by: str) -> None:
    """The colour key under the maps (one trace per map, so Plotly's own legend has nothing to list)."""
    if colour_by in (WEIGHT, SUSPICION):
        key = ("light = high weight (trusted), dark = low weight (suspected)" if colour_by == WEIGHT
               else "light = more suspected, dark = less")
    else:
        colours = class_colours(len(class_names))
        key = " ".join(f'<span style="color:{colours[i % len(colours)]}">●</span>&nbsp;{name}'
                       for i, name in enumerate(class_names))
    st.markdown(f"<small>Colour ({colour_by}): {key} &nbsp;·&nbsp; ✕ poisoned, ● clean</small>",
                unsafe_allow_html=True)


def sample_details(run: RunDir, points: dict[str, Any], sample: int, class_names: list[str], defense: str) -> None:
    """The selected sample's image, labels, weight and every model's prediction."""
    position = np.flatnonzero(points["index"] == sample)
    if not len(position):
        st.info(f"Sample {sample} is not on this run's map; select a point above.")
        return
    i = int(position[0])

    def class_name(c: Any) -> str:
        c = int(c)
        return f"{class_names[c]}" if 0 <= c < len(class_names) else str(c)

    st.subheader(f"Sample {sample}")
    picture, facts = st.columns([1, 3])
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
            rows.append(f"- **Training label:** {class_name(points['label'][i])}")
        if points["original_label"] is not None:
            rows.append(f"- **Original label:** {class_name(points['original_label'][i])}")
        if poisoned is not None:
            rows.append(f"- **Poisoned:** {'yes: it carries the trigger' if poisoned else 'no'}")
        if points["weight"] is not None:
            rows.append(f"- **CBD weight at the end:** {points['weight'][i]:.4f}")
        elif points["suspicion"] is not None:
            rows.append(f"- **{defense_title(defense)} suspicion:** {points['suspicion'][i]:.4g}")
        for name in plot_order(list(points["predictions"])):
            rows.append(f"- **{model_view(defense, name).title} predicts:** "
                        f"{class_name(points['predictions'][name][i])}")
        st.markdown("\n".join(rows))


def waiting_for_map(run: RunDir) -> None:
    """Say why there is no map yet; poll for it while the worker can still make it."""
    from cbd_core import jobs

    status = run.status()
    if status.get("analysis") == "failed":
        st.error(f"The background worker could not compute this run's map: {status.get('analysis_error')}")
        return
    if not any(w.alive for w in jobs.workers(run.path.parent)):
        st.warning("No background worker is running to compute this run's map; it starts with the app "
                   "(reload the page in a moment). This page shows the map as soon as it is ready.")
    else:
        st.info("The background worker is computing this run's map (UMAP takes from a few seconds to about half a "
                "minute). This page shows it as soon as it is ready.")

    @st.fragment(run_every=2)
    def poll() -> None:
        if has_umap(run) or run.status().get("analysis") == "failed":
            st.rerun()

    poll()


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
        waiting_for_map(run)
        return
    points = point_table(str(run.path), _stamp(run))
    if not points["maps"]:
        st.info("This run kept no features to map (it was trained with embedding_samples = 0).")
        return
    summary = load_summary(run) or {}
    num_classes = int(summary.get("num_classes") or (int(points["label"].max()) + 1 if points["label"] is not None
                                                      and len(points["label"]) else 10))
    class_names = [str(c) for c in (summary.get("class_names") or range(num_classes))]

    options = [TRUE_DIGIT, TRAINING_LABEL]
    if points["weight"] is not None:
        options.append(WEIGHT)
    elif points["suspicion"] is not None:
        options.append(SUSPICION)
    if st.session_state.get(COLOUR_BY) not in options:
        st.session_state.pop(COLOUR_BY, None)  # e.g. "CBD's final weight" kept from a CBD run
    colour_by = st.radio("Colour by", options, horizontal=True, key=COLOUR_BY,
                         help="True class: the digit the image really shows. Training label: what the (poisoned) "
                              "training set says. Weight / suspicion: what the defense made of each sample.")

    selected = st.session_state.get(SELECTED)
    names = plot_order(list(points["maps"]))
    columns = st.columns(len(names))
    for column, name in zip(columns, names):
        with column:
            key = f"umap_chart_{name}"
            event = st.plotly_chart(figure(points, name, colour_by, class_names, selected, model_view(defense, name).title), width="stretch",
                                    on_select="rerun", selection_mode=("points", "box", "lasso"), key=key)
            chosen = selected_from(event)
            # Only a chart whose selection changed moves the choice, so the other chart's old
            # selection does not win it back on every rerun.
            if st.session_state.get(f"{key}_last") != chosen:
                st.session_state[f"{key}_last"] = chosen
                if chosen is not None and chosen != selected:
                    st.session_state[SELECTED] = chosen
                    st.rerun()
            delivered = name == names[-1]  # the model the defense hands over (f_C, or the only one)
            explain(model_view(defense, name).map_hint,
                    summary if delivered else None)
    legend(class_names, colour_by)
    st.caption(f"{len(points['index']):,} training images, a stratified subset; the map is UMAP (15 neighbours) "
               "of each model's standardised penultimate-layer features. Click, box or lasso a point to inspect it.")

    if selected is not None:
        sample_details(run, points, int(selected), class_names, defense)
    else:
        st.caption("Select a point on a map to see its image, labels and predictions here.")


st.title("Embeddings")
st.markdown('Each dot is a training image, placed by what the model "sees" (its last hidden layer, mapped to 2-D '
            "with UMAP): images the model finds alike sit together. The backdoored f_B should pull the poisoned "
            "images into a tight cluster of their own; f_C should place them with their true digit.")
with page_errors():
    render()
