"""What the Attributions page and the Lesson's "where each model looks" step share: a run's kept test
images, the image to open on, the overlay figure, and the cached 100-image shares. The maths lives in
`cbd_core.analysis.attributions`; this module only caches and draws.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cbd_core.analysis.attributions import (
    VIEWS_FILE,
    example_test_image,
    mean_trigger_share,
    region_bbox,
    run_training_example,
    stored_trigger_shares,
    triggered_test_images,
    view_key,
)
from cbd_core.errors import UserInputError
from cbd_core.runs import RunDir
from pages.common import load_arrays, load_config, load_models

MEAN_IMAGES = 100
# Transparent where the model pays no attention, so the image shows through; hot where it does.
OVERLAY_SCALE = [
    [0.0, "rgba(255, 0, 0, 0)"],
    [0.15, "rgba(255, 40, 0, 0.25)"],
    [0.5, "rgba(255, 120, 0, 0.7)"],
    [1.0, "rgba(255, 255, 0, 0.95)"],
]


def run_images(run: RunDir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's kept clean test images, their labels and the trigger region, checked."""
    arrays = load_arrays(run, "images")
    if arrays is None:
        raise UserInputError(f"run {run.run_id} has no images.npz, so there are no test images to explain", "run")
    missing = [k for k in ("test_x", "test_y", "trigger_region") if k not in arrays]
    if missing:
        raise UserInputError(f"run {run.run_id}: images.npz lacks {', '.join(missing)}", "run")
    test_x, test_y, region = arrays["test_x"], arrays["test_y"], arrays["trigger_region"].astype(bool)
    if test_x.dtype != np.uint8 or test_x.ndim != 4 or len(test_x) == 0 or len(test_y) != len(test_x) \
            or region.shape != test_x.shape[1:3]:
        raise UserInputError(f"run {run.run_id}: images.npz holds no usable test images "
                             f"(test_x {test_x.dtype} {test_x.shape}, region {region.shape})", "run")
    return test_x, test_y, region


@st.cache_data(show_spinner=False, max_entries=64)
def _example_cached(path: str, mtime: int) -> int:
    run = RunDir(Path(path))
    test_x, test_y, _ = run_images(run)
    return example_test_image(load_models(run), test_x, test_y, load_config(run))


@st.cache_resource(show_spinner=False, max_entries=16)
def _views_cached(path: str, mtime: int) -> dict[str, np.ndarray] | None:
    # cache_resource, not cache_data: one run's views are about 20 MB of arrays, which cache_data would
    # unpickle anew for every render of every session; these are shared and only read.
    try:
        return RunDir(Path(path)).arrays(VIEWS_FILE)
    except Exception:  # a damaged file: the page computes the views itself, as for a run without one
        return None


def load_views(run: RunDir) -> dict[str, np.ndarray] | None:
    """The worker's `attribution_views.npz` of the run (read-only, shared), None when absent or unreadable."""
    return _views_cached(str(run.path), run.arrays_mtime(VIEWS_FILE))


def example_index(run: RunDir) -> int:
    """The test image a page opens on (`example_test_image`: right when clean, sent to the target by
    f_B when triggered): the worker's choice when it stored the run's views, else chosen here (cached)."""
    views = load_views(run)
    if views is not None and "example" in views:
        return int(views["example"])
    return _example_cached(str(run.path), run.summary_mtime())


@st.cache_data(show_spinner=False, max_entries=64)
def _training_example_cached(path: str, stamp: tuple[int, ...]) -> int | None:
    return run_training_example(RunDir(Path(path)))


def training_example_index(run: RunDir) -> int | None:
    """The poisoned training image the Lesson explains and marks on its maps (`run_training_example`):
    the worker's choice when it stored the run's views, else chosen here from the run's files (cached);
    None when the run kept none or its files cannot be read."""
    views = load_views(run)
    if views is not None and "train_example" in views:
        return int(views["train_example"])
    return _training_example_cached(str(run.path), tuple(run.arrays_mtime(name) for name in
                                                         ("embeddings", "sample_weights", "images")))


def stored_views(run: RunDir, mode: str, method: str, names: list[str], index: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """Each model's map and class probabilities for kept test image `index`, clean or triggered
    (`mode`, lower case) with the trigger sliders at rest, or for the Lesson's training image (mode
    TRAIN_MODE, index 0), as the worker stored them
    (`compute_attribution_views`); None when the run has no such file or it lacks one of them (the page
    then computes them itself)."""
    views = load_views(run)
    if views is None or not names:
        return None
    keys = {name: (view_key("map", mode, name, method), view_key("probs", mode, name)) for name in names}
    if not all(k in views and index < len(views[k]) for pair in keys.values() for k in pair):
        return None
    return ({name: views[m][index] for name, (m, _) in keys.items()},
            {name: views[p][index] for name, (_, p) in keys.items()})


@st.cache_data(show_spinner=False, max_entries=128)
def mean_shares(root: str, run_id: str, method: str) -> dict[str, float]:
    """Each model's share of attribution inside the trigger region, averaged over up to 100 triggered
    test images (each image's predicted class explained). Cached per run and method."""
    run = RunDir.open(Path(root), run_id)
    stored = stored_trigger_shares(run)  # the worker computes them once when the run finishes
    if stored and method in stored and all(v is not None for v in stored[method].values()):
        return {name: float(value) for name, value in stored[method].items()}
    config = load_config(run)
    test_x, test_y, region = run_images(run)
    triggered, _ = triggered_test_images(test_x, test_y, config, MEAN_IMAGES)
    return {name: mean_trigger_share(model, triggered, region, method)
            for name, model in load_models(run).items()}


def overlay_figure(image: np.ndarray, attr: np.ndarray, region: np.ndarray | None, vmax: float,
                   height: int = 340, colour_bar: bool = True) -> go.Figure:
    """The image (dimmed a little) under its attribution map, coloured from 0 to `vmax`; the trigger
    region's box outlined when `region` is given (patch triggers only). Without the colour bar the
    image gets the whole width (the Lesson, where the caption says how maps are scaled)."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    dimmed = (rgb.astype(np.float32) * 0.7).astype(np.uint8)  # so the hot colours stand out on white strokes
    fig = go.Figure(go.Image(z=dimmed, hoverinfo="skip"))
    fig.add_trace(go.Heatmap(z=attr, zmin=0.0, zmax=vmax or 1.0, colorscale=OVERLAY_SCALE, showscale=colour_bar,
                             colorbar=dict(title="attribution", thickness=12),
                             hovertemplate="column %{x}, row %{y}<br>attribution %{z:.3g}<extra></extra>"))
    box = region_bbox(region) if region is not None else None
    if box is not None:
        top, left, bottom, right = box
        fig.add_shape(type="rect", x0=left - 0.5, x1=right - 0.5, y0=top - 0.5, y1=bottom - 0.5,
                      line=dict(color="deepskyblue", width=3, dash="dot"))
    h, w = attr.shape
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5])
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor="x")
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=10, b=0))
    return fig


def colour_limits(maps: dict[str, np.ndarray], per_model: bool) -> dict[str, float]:
    """Each map's top colour: its own maximum (per-model scales: every map uses its full range, so a
    model with weak attributions still shows where it looks), or the largest of all (one shared scale:
    brightness compares across models)."""
    peaks = {name: float(m.max()) if m.size else 0.0 for name, m in maps.items()}
    shared = max(peaks.values(), default=0.0)
    return {name: ((peak if per_model else shared) or 1.0) for name, peak in peaks.items()}


def percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.0%}"
