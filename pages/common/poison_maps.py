"""The poisoned-vs-clean map of a finished run: each model's 2-D UMAP map with the poisoned training
images as red crosses over grey dots, and how tightly each map gathers them (cbd_core.lesson's
neighbour share). The Lesson's step 4 and the Explorer draw it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cbd_core import lesson
from cbd_core.analysis.embeddings import UMAP_FILE
from cbd_core.palette import CLEAN_GREY, POISONED_COLOUR  # POISONED_COLOUR is imported from here by two pages
from cbd_core.runs import RunDir
from pages.common import load_arrays
from pages.common.presentation import scaled


@st.cache_data(show_spinner=False, max_entries=32)
def map_points(path: str, stamp: tuple[int, int]) -> dict[str, Any] | None:
    """Each model's 2-D map, the poisoned flags aligned to it and its neighbour share (cached)."""
    run = RunDir(Path(path))
    maps = load_arrays(run, UMAP_FILE)
    weights = load_arrays(run, "sample_weights") or {}
    if maps is None or "is_poisoned" not in weights:
        return None
    index = np.asarray(maps["index"], dtype=np.int64)
    poisoned = np.asarray(weights["is_poisoned"], bool)
    if len(index) and index.max() >= len(poisoned):
        return None
    flags = poisoned[index]
    xy = {key[len("umap_"):]: maps[key] for key in maps if key.startswith("umap_")}
    return {"index": index, "flags": flags, "xy": xy,
            "shares": {n: lesson.neighbour_share(v, flags) for n, v in xy.items()}}


@dataclass
class Mark:
    """One training image singled out on a map: its training-set index, its place (x, y) and the label
    written beside it (the Lesson's step 5 image)."""
    sample: int
    x: float
    y: float
    label: str


MARK_NAME = "step 5's image"  # the marker trace's name (the legend's entry; tests find the trace by it)
MARK_COLOUR = "#ffc400"  # a gold star with a black edge: apart from the red crosses and the grey dots


def map_figure(xy: np.ndarray, flags: np.ndarray, title: str, mark: Mark | None = None) -> go.Figure:
    """The map's clean (grey dots) and poisoned (red crosses) training images; `mark`, when given, as a
    star on top with its label."""
    fig = go.Figure()
    for name, mask, colour, symbol, size in (("clean", ~flags, CLEAN_GREY, "circle", 4),
                                             ("poisoned", flags, POISONED_COLOUR, "x", 6)):
        fig.add_trace(go.Scatter(x=xy[mask, 0], y=xy[mask, 1], mode="markers", name=f"{name} ({int(mask.sum()):,})",
                                   marker={"color": colour, "symbol": symbol, "size": scaled(size),
                                           "opacity": 0.5 if name == "clean" else 0.85}, hoverinfo="skip"))
    if mark is not None:
        fig.add_trace(go.Scatter(x=[mark.x], y=[mark.y], mode="markers", name=MARK_NAME, customdata=[mark.sample],
                                 marker={"color": MARK_COLOUR, "symbol": "star", "size": scaled(20),
                                         "line": {"color": "black", "width": 1.5}},
                                 hovertemplate=f"training image {mark.sample}: {mark.label}<extra></extra>"))
        low, high = (float(xy[:, 1].min()), float(xy[:, 1].max())) if len(xy) else (mark.y, mark.y)
        below = mark.y > (low + high) / 2  # the label on the side with more room, inside the map
        fig.add_annotation(x=mark.x, y=mark.y, text=mark.label, showarrow=True, arrowhead=2, ax=0,
                           ay=scaled(34) if below else -scaled(34),
                           font={"size": scaled(13), "color": "black"}, bgcolor="rgba(255, 255, 255, 0.85)", bordercolor="black",
                           borderwidth=1)
    fig.update_layout(title=title, height=400, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.05}, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def run_maps(run: RunDir) -> dict[str, Any] | None:
    """`map_points` of a run, cached until its map or its weights change."""
    return map_points(str(run.path), (run.arrays_mtime(UMAP_FILE), run.arrays_mtime("sample_weights")))
