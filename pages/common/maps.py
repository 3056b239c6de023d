"""The Embeddings page's figures: a map per model (one trace per colour group, so Plotly's own legend
is the colour key) and the epoch-by-epoch animation of the same maps. Pure functions of arrays the
page has read; no Streamlit here.

How a map stays readable: every point has the same size and is a little transparent; the poisoned
images are drawn after the clean ones as crosses (or like the others, or not at all: `POISONED_VIEWS`),
so they never hide a class's colour; weights are coloured on a log scale, where the suspected images
(weights near 0) stand apart instead of all sharing one dark end; the selected images get a ring.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from cbd_core.palette import CLEAN_GREY, POISONED_COLOUR
from pages.common import class_name  # shared with the other pages; pages.common does not import this module

TRUE_CLASS, TRAINING_LABEL, WEIGHT, SUSPICION = "true class", "training label", "final weight", "suspicion"
POISONED_CLEAN = "poisoned vs clean"  # two colours only: where the poison goes is the story of the animation
MARKED, LIKE_OTHERS, HIDDEN = "✕ on top", "as dots", "hidden"
POISONED_VIEWS = (MARKED, LIKE_OTHERS, HIDDEN)
POINT_SIZE, OPACITY = 6, 0.7
FEW_SELECTED = 20
WEIGHT_FLOOR = 1e-4  # weights below count as this on the log scale
MAP_HEIGHT, ANIMATION_HEIGHT = 620, 660
MAP_PAD = 0.06  # share of the points' span left free around them on every map
ANIMATION_TOP, ANIMATION_BOTTOM = 175, 15  # px above the maps (title, controls, legend) and below them


def class_colours(count: int) -> list[str]:
    palette = plotly.colors.qualitative.Plotly if count <= 10 else plotly.colors.qualitative.Alphabet
    return [palette[i % len(palette)] for i in range(count)]


def numeric_colours(table: dict[str, Any], colour_by: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-point colour values and the colour bar for weight (log10) or suspicion (rank) colouring.

    CBD's weights span orders of magnitude (the suspected images sit near 0.001, most clean ones near
    0.05): on a linear scale nearly every point shares the dark end. Suspicion scores differ in kind
    between defenses, so they are shown as a rank (0 = least suspected, 1 = most)."""
    if colour_by == WEIGHT:
        values = np.log10(np.clip(np.nan_to_num(table["weight"].astype(float), nan=1.0), WEIGHT_FLOOR, 1.0))
        low = float(np.floor(values.min())) if len(values) else -4.0
        ticks = [t for t in range(int(low), 1)]
        return values, {"cmin": low, "cmax": 0.0, "colorscale": "Viridis",
                        "colorbar": {"title": {"text": "weight (log)"}, "tickvals": ticks,
                                     "ticktext": [f"{10.0 ** t:g}" for t in ticks], "thickness": 14}}
    scores = np.nan_to_num(table["suspicion"].astype(float), nan=-np.inf)
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable") / max(1, len(scores) - 1)
    return ranks, {"cmin": 0.0, "cmax": 1.0, "colorscale": "Viridis_r",
                   "colorbar": {"title": {"text": "suspicion rank"}, "tickvals": [0, 0.5, 1],
                                "ticktext": ["least", "median", "most"], "thickness": 14}}


def colour_groups(table: dict[str, Any], colour_by: str, class_names: list[str], poisoned_view: str,
                  selected: list[int]) -> list[dict[str, Any]]:
    """The traces of a map, drawn in this order: {name, positions (into the table's points), marker}.
    Clean points by colour (a class each, or one group on a colour scale), then the poisoned ones,
    then a ring around each selected point."""
    n = len(table["index"])
    poisoned = table["is_poisoned"].astype(bool) if table["is_poisoned"] is not None else np.zeros(n, bool)
    apart = poisoned if poisoned_view == MARKED else np.zeros(n, bool)
    shown = ~poisoned if poisoned_view == HIDDEN else np.ones(n, bool)
    base = {"size": POINT_SIZE, "opacity": OPACITY, "line": {"width": 0}}
    groups: list[dict[str, Any]] = []
    if colour_by == POISONED_CLEAN:
        # the same grey and red as the Lesson's and the Explorer's maps; crosses unless drawn as dots
        for name, mask, colour, symbol in (("clean", shown & ~poisoned, CLEAN_GREY, "circle"),
                                           ("poisoned", shown & poisoned, POISONED_COLOUR,
                                            "x" if poisoned_view == MARKED else "circle")):
            if mask.any():
                groups.append({"name": f"{name} ({int(mask.sum()):,})", "positions": np.flatnonzero(mask),
                               "marker": {**base, "symbol": symbol, "color": colour}})
    elif colour_by in (WEIGHT, SUSPICION):
        values, scale = numeric_colours(table, colour_by)
        parts = ((("training images", shown, "circle"),) if poisoned_view == LIKE_OTHERS else
                 (("clean", shown & ~poisoned, "circle"), ("poisoned (✕)", shown & apart, "x")))
        for name, mask, symbol in parts:
            if mask.any():
                positions = np.flatnonzero(mask)
                marker = {**base, "symbol": symbol, "color": values[positions].round(4).tolist(),
                          "cmin": scale["cmin"], "cmax": scale["cmax"], "colorscale": scale["colorscale"]}
                if not groups:
                    marker.update(showscale=True, colorbar=scale["colorbar"])
                groups.append({"name": name, "positions": positions, "marker": marker})
    else:
        labels = table["label"]
        by = (table["original_label"] if colour_by == TRUE_CLASS and table["original_label"] is not None else labels)
        by = by if by is not None else np.zeros(n, np.int64)
        colours = class_colours(len(class_names))
        for c in np.unique(by[shown & ~apart]).tolist() if (shown & ~apart).any() else []:
            positions = np.flatnonzero(shown & ~apart & (by == c))
            groups.append({"name": class_name(class_names, c), "positions": positions,
                           "marker": {**base, "symbol": "circle", "color": colours[int(c) % len(colours)]}})
        if (shown & apart).any():
            positions = np.flatnonzero(shown & apart)
            groups.append({"name": "poisoned (✕)", "positions": positions,
                           "marker": {**base, "symbol": "x", "color": [colours[int(c) % len(colours)]
                                                                        for c in by[positions].tolist()]}})
    chosen = np.flatnonzero(np.isin(table["index"], np.asarray(selected, dtype=np.int64)))
    if len(chosen):
        few = len(chosen) <= FEW_SELECTED  # a bold ring finds one point; hundreds of them would hide the map
        groups.append({"name": "selected", "positions": chosen,
                       "marker": {"symbol": "circle-open", "size": 15 if few else 9, "color": "black",
                                  "line": {"width": 2 if few else 1}, "opacity": 1.0 if few else 0.45}})
    return groups


def hover_texts(table: dict[str, Any], class_names: list[str], model: str | None) -> list[str]:
    """One line per point: sample id, label (and true class), poisoned or clean, prediction, weight."""
    labels, true_labels = table["label"], table["original_label"]
    poisoned = table["is_poisoned"]
    predictions = table["predictions"].get(model) if model is not None else None
    out = []
    for i, sample in enumerate(table["index"].tolist()):
        parts = [f"sample {sample}"]
        if labels is not None:
            parts.append(f"label {class_name(class_names, labels[i])}")
            if true_labels is not None and true_labels[i] != labels[i]:
                parts.append(f"really {class_name(class_names, true_labels[i])}")
        if poisoned is not None:
            parts.append("poisoned" if poisoned[i] else "clean")
        if predictions is not None:
            parts.append(f"predicted {class_name(class_names, predictions[i])}")
        if table["weight"] is not None:
            parts.append(f"weight {table['weight'][i]:.3g}")
        out.append(" · ".join(parts))
    return out


def _legend(showlegend: bool = True) -> dict[str, Any]:
    return {"showlegend": showlegend, "legend": {"orientation": "h", "y": -0.02, "yanchor": "top", "x": 0,
                                                 "itemsizing": "constant", "font": {"size": 13}}}


def padded_range(values: np.ndarray) -> list[float]:
    """An axis range holding every value with MAP_PAD of its span to spare on each side: with Plotly's
    autorange a point on the map's edge is cut in half by the frame (or hidden under the title)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return [0.0, 1.0]
    low, high = float(values.min()), float(values.max())
    pad = (high - low) * MAP_PAD + 1e-6
    return [low - pad, high + pad]


def map_figure(table: dict[str, Any], xy: np.ndarray, groups: list[dict[str, Any]], title: str,
               hover: list[str]) -> go.Figure:
    """One model's final map: a WebGL trace per colour group; customdata = training index."""
    fig = go.Figure()
    index = table["index"]
    for group in groups:
        p = group["positions"]
        fig.add_trace(go.Scattergl(x=xy[p, 0].round(3).tolist(), y=xy[p, 1].round(3).tolist(), mode="markers",
                                   name=group["name"], customdata=index[p].tolist(), marker=group["marker"],
                                   hovertext=[hover[i] for i in p.tolist()], hoverinfo="text"))
    fig.update_layout(title=title, height=MAP_HEIGHT, margin={"l": 10, "r": 10, "t": 40, "b": 10}, **_legend(),
                      xaxis={"showticklabels": False, "title": None, "zeroline": False, "range": padded_range(xy[:, 0])},
                      yaxis={"showticklabels": False, "title": None, "zeroline": False, "range": padded_range(xy[:, 1])})
    return fig


def epoch_timeline(frame_epochs: np.ndarray, frame_models: np.ndarray, frame_phases: np.ndarray,
                   frame_phase_epochs: np.ndarray, models: list[str], phase_titles: dict[str, str]
                   ) -> list[dict[str, Any]]:
    """The animation's steps, one per recorded epoch number in order: {epoch, label, frame: {model:
    the frame (row) shown for it, or None before that model's first recorded epoch}}; `phase_titles`
    name the phases in the labels (the defense registry's phase titles). A model keeps
    its latest frame while another trains (CBD's f_B is frozen while f_C learns)."""
    steps, current = [], {m: None for m in models}
    for row in np.argsort(frame_epochs, kind="stable").tolist():
        model = str(frame_models[row])
        current[model] = row
        steps.append({"epoch": int(frame_epochs[row]), "frame": dict(current),
                      "label": f"{phase_titles.get(str(frame_phases[row]), str(frame_phases[row]))} "
                               f"epoch {int(frame_phase_epochs[row])}"})
    return steps


def animated_figure(table: dict[str, Any], coords: np.ndarray, steps: list[dict[str, Any]], models: list[str],
                    titles: dict[str, str], groups: list[dict[str, Any]], hover: dict[str, list[str]],
                    total_epochs: int) -> go.Figure:
    """Every model's map side by side, one animation frame per step, with a Play / Pause button and an
    epoch slider (Plotly's own, so scrubbing and playing run in the browser without a page rerun).
    SVG traces, so points glide between epochs (WebGL ones cannot be tweened). `titles`: each model's
    title (the defense registry's)."""
    from plotly.subplots import make_subplots

    index = table["index"]
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=[titles.get(m, m) for m in models],
                        horizontal_spacing=0.03)
    ranges = {}
    for col, model in enumerate(models, start=1):
        rows = [s["frame"][model] for s in steps if s["frame"][model] is not None]
        xy = coords[rows].reshape(-1, 2) if rows else np.zeros((1, 2))
        ranges[model] = (padded_range(xy[:, 0]), padded_range(xy[:, 1]))

    def frame_data(step: dict[str, Any]) -> list[go.Scatter]:
        data = []
        for model in models:
            row = step["frame"][model]
            for group in groups:
                p = group["positions"]
                xy = coords[row][p] if row is not None else np.zeros((0, 2))
                data.append(go.Scatter(x=xy[:, 0].round(3).tolist(), y=xy[:, 1].round(3).tolist()))
        return data

    first = frame_data(steps[0])
    for col, model in enumerate(models, start=1):
        for g, group in enumerate(groups):
            p = group["positions"]
            trace = first[(col - 1) * len(groups) + g]
            fig.add_trace(go.Scatter(x=trace.x, y=trace.y, mode="markers", name=group["name"], legendgroup=group["name"],
                                     showlegend=col == 1, customdata=index[p].tolist(),
                                     marker={**group["marker"], **({"showscale": False} if col > 1 else {})},
                                     hovertext=[hover[model][i] for i in p.tolist()], hoverinfo="text"),
                          row=1, col=col)
        fig.update_xaxes(range=ranges[model][0], showticklabels=False, zeroline=False, row=1, col=col)
        fig.update_yaxes(range=ranges[model][1], showticklabels=False, zeroline=False, row=1, col=col)

    def caption(step: dict[str, Any]) -> str:
        waiting = [titles.get(m, m) for m in models if step["frame"][m] is None]
        return (f"Epoch {step['epoch']} of {total_epochs}: {step['label']}"
                + (f" ({', '.join(waiting)} has not started yet)" if waiting else ""))

    fig.frames = [go.Frame(name=str(s["epoch"]), data=frame_data(s), layout={"title": {"text": caption(s)}})
                  for s in steps]
    play = {"frame": {"duration": 900, "redraw": True}, "transition": {"duration": 600, "easing": "cubic-in-out"},
            "fromcurrent": True, "mode": "immediate"}
    pause = {"frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}, "mode": "immediate"}
    # From the top: the title, then Play / Pause and the epoch slider in one row (so the controls are on
    # screen as soon as the maps start, not under them), then the legend, then the maps. Plotly places
    # them in units of the plot area's height, so the rows are worked out in pixels (CONTROLS_* below).
    plot = ANIMATION_HEIGHT - ANIMATION_TOP - ANIMATION_BOTTOM

    def above(pixels: float) -> float:  # paper y of a point `pixels` above the maps
        return 1 + pixels / plot

    fig.update_layout(
        title={"text": caption(steps[0]), "y": 0.99, "yanchor": "top"}, height=ANIMATION_HEIGHT,
        margin={"l": 10, "r": 10, "t": ANIMATION_TOP, "b": ANIMATION_BOTTOM},
        showlegend=True, legend={"orientation": "h", "x": 0, "y": above(28), "yanchor": "bottom",
                                 "itemsizing": "constant", "font": {"size": 13}},
        updatemenus=[{"type": "buttons", "direction": "left", "x": 0, "y": above(ANIMATION_TOP - 52), "xanchor": "left",
                      "yanchor": "top", "showactive": False, "pad": {"t": 0},
                      "buttons": [{"label": "▶ Play", "method": "animate", "args": [None, play]},
                                  {"label": "❚❚ Pause", "method": "animate", "args": [[None], pause]}]}],
        sliders=[{"active": 0, "x": 0.27, "len": 0.73, "y": above(ANIMATION_TOP - 40), "yanchor": "top",
                  "pad": {"t": 0, "b": 0},
                  "currentvalue": {"prefix": "epoch ", "font": {"size": 14}, "xanchor": "left", "offset": 4},
                  "steps": [{"label": str(s["epoch"]), "method": "animate",
                             "args": [[str(s["epoch"])], {**pause, "transition": {"duration": 300}}]}
                            for s in steps]}])
    return fig
