"""Attributions: where each of a run's models looks when it classifies one test image, clean or with
the trigger (which the user can move, resize and fade), and how much of each model's attention falls
on the trigger over 100 triggered test images.

Single-image maps are computed on every rerun (milliseconds on a CPU); the 100-image averages are
cached per run and method. The maths lives in `cbd_core.analysis.attributions`.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cbd_core.analysis.attributions import (
    METHOD_DESCRIPTIONS,
    METHODS,
    apply_run_trigger,
    attribution_map,
    edit_trigger,
    mean_trigger_share,
    stored_trigger_shares,
    predict_proba,
    region_bbox,
    trigger_is_local,
    trigger_mass_share,
    triggered_test_images,
)
from cbd_core.errors import UserInputError
from cbd_core.runs import RunDir
from pages.common import (
    enlarge,
    explain,
    load_arrays,
    load_config,
    load_models,
    load_summary,
    model_view,
    page_errors,
    pick_run,
    runs_root_path,
)
from pages.common.navigation import follow_app_navigation

follow_app_navigation()

MEAN_IMAGES = 100
# Transparent where the model pays no attention, so the image shows through; hot where it does.
OVERLAY_SCALE = [
    [0.0, "rgba(255, 0, 0, 0)"],
    [0.15, "rgba(255, 40, 0, 0.25)"],
    [0.5, "rgba(255, 120, 0, 0.7)"],
    [1.0, "rgba(255, 255, 0, 0.95)"],
]
MODES = ["Clean", "Triggered"]


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


def display_order(models: dict) -> list[str]:
    """The backdoored f_B on the left of the deconfounded f_C; a single model alone."""
    return sorted(models, key=lambda name: (name != "f_B", name))


@st.cache_data(show_spinner=False, max_entries=128)
def mean_shares(root: str, run_id: str, method: str) -> dict[str, float]:
    """Each model's share of attribution inside the trigger region, averaged over up to 100 triggered
    test images (each image's predicted class explained). Cached per run and method."""
    from pathlib import Path

    run = RunDir.open(Path(root), run_id)
    stored = stored_trigger_shares(run)  # the worker computes them once when the run finishes
    if stored and method in stored and all(v is not None for v in stored[method].values()):
        return {name: float(value) for name, value in stored[method].items()}
    config = load_config(run)
    test_x, test_y, region = run_images(run)
    triggered, _ = triggered_test_images(test_x, test_y, config, MEAN_IMAGES)
    return {name: mean_trigger_share(model, triggered, region, method)
            for name, model in load_models(run).items()}


def overlay_figure(image: np.ndarray, attr: np.ndarray, region: np.ndarray | None, vmax: float) -> go.Figure:
    """The image (dimmed a little) under its attribution map; the trigger region's box outlined."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    dimmed = (rgb.astype(np.float32) * 0.7).astype(np.uint8)  # so the hot colours stand out on white strokes
    fig = go.Figure(go.Image(z=dimmed, hoverinfo="skip"))
    fig.add_trace(go.Heatmap(z=attr, zmin=0.0, zmax=vmax, colorscale=OVERLAY_SCALE, showscale=True,
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
    fig.update_layout(height=340, margin=dict(l=0, r=0, t=10, b=0))
    return fig


def percent(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.0%}"


def trigger_controls(local: bool, width: int) -> tuple[int, int, float, float]:
    """The sliders that edit the trigger: (dx, dy, scale, opacity)."""
    if not local:
        st.caption("This trigger covers the whole image, so it can only be faded, not moved or resized.")
        return 0, 0, 1.0, st.slider("Opacity", 0.0, 1.0, 1.0, 0.05, key="attr_opacity",
                                    help="0 shows the clean image, 1 the full trigger")
    cols = st.columns(4)
    dx = cols[0].slider("Move right (pixels)", -(width - 1), width - 1, 0, key="attr_dx")
    dy = cols[1].slider("Move down (pixels)", -(width - 1), width - 1, 0, key="attr_dy")
    scale = cols[2].slider("Size (x original)", 0.5, 3.0, 1.0, 0.25, key="attr_scale")
    opacity = cols[3].slider("Opacity", 0.0, 1.0, 1.0, 0.05, key="attr_opacity",
                             help="0 shows the clean image, 1 the full trigger")
    return dx, dy, scale, opacity


def main() -> None:
    run = pick_run()
    if run is None:
        return
    config = load_config(run)
    summary = load_summary(run) or {}
    test_x, test_y, region = run_images(run)
    models = load_models(run)
    class_names = summary.get("class_names") or [str(c) for c in range(int(summary.get("num_classes", 10)))]
    target = int(config.get("target_label", summary.get("target_label", 0)))
    defense = config.get("defense")
    local = trigger_is_local(region)
    n, w = test_x.shape[0], test_x.shape[2]

    left, middle, right = st.columns([5, 3, 4])
    with left:
        if n > 1:
            # Start on an image outside the target class: triggering a target-class image shows nothing.
            first = int(np.argmax(test_y != target)) if (test_y != target).any() else 0
            index = st.slider("Test image", 0, n - 1, first, key="attr_image",
                              help=f"one of the {n} clean test images this run kept")
        else:
            index = 0
    mode = middle.segmented_control("Image", MODES, default="Triggered", required=True,
                                      key="attr_mode") or "Clean"
    method = right.selectbox("Attribution method", list(METHODS), format_func=METHODS.get, key="attr_method",
                             help="\n".join(f"- **{METHODS[m]}**: {METHOD_DESCRIPTIONS[m]}" for m in METHODS))

    clean = test_x[index]
    if mode == "Triggered":
        dx, dy, scale, opacity = trigger_controls(local, w)
        image, shown_region = edit_trigger(clean, apply_run_trigger(clean, config), region, dx, dy, scale, opacity)
    else:
        image, shown_region = clean, region  # outlined where the trigger would go

    preview, note = st.columns([1, 5])
    preview.image(enlarge(image), caption=f"true label {class_names[int(test_y[index])]}")
    note.markdown(
        f"Test image **{index}** ({'with the trigger' if mode == 'Triggered' else 'clean'}); the attack's target "
        f"class is **{class_names[target]}**. The dotted box marks the trigger"
        f"{' (where it would go)' if mode == 'Clean' else ''}; brighter colour = more attribution. "
        f"{METHODS[method]} shows {METHOD_DESCRIPTIONS[method]}.")
    if not local:
        note.caption("The trigger changes almost every pixel, so no box is drawn and the share on the trigger "
                     "is close to 100% for any model.")

    names = display_order(models)
    maps = {name: attribution_map(models[name], image, None, method) for name in names}
    probs = {name: predict_proba(models[name], image) for name in names}
    vmax = max(float(m.max()) for m in maps.values()) or 1.0  # one colour scale for all maps side by side
    # At least two columns, so a single model's map is as big as each of CBD's two.
    for column, name in zip(st.columns(max(2, len(names))), names):
        with column:
            st.markdown(f"**{model_view(defense, name).title}**")
            # Every map carries the same (shared) colour bar, so the images line up at the same size.
            st.plotly_chart(overlay_figure(image, maps[name], shown_region if local else None, vmax),
                            key=f"attr_chart_{name}")
            predicted = int(np.argmax(probs[name]))
            on_target = " — the attack's target" if predicted == target else ""
            st.markdown(f"Prediction: **{class_names[predicted]}** ({probs[name][predicted]:.0%} confident)"
                        f"{on_target}")
            st.markdown(f"Attribution on the trigger: **{percent(trigger_mass_share(maps[name], shown_region))}**"
                        f" (the trigger covers {shown_region.mean():.1%} of the image)")
            # The model the defense hands over (f_C, or the only one) carries the run's outcome.
            explain(model_view(defense, name).attribution_hint, summary if name == names[-1] else None)

    st.subheader(f"Across {MEAN_IMAGES} triggered test images")
    all_methods = st.toggle("All four methods", key="attr_all_methods",
                            help="computes the other methods too (occlusion takes the longest)")
    methods = list(METHODS) if all_methods else [method]
    with st.spinner(f"Computing attributions over {MEAN_IMAGES} triggered test images..."):
        shares = {m: mean_shares(str(runs_root_path()), run.run_id, m) for m in methods}
    fig = go.Figure()
    for name in names:
        values = [shares[m].get(name, float("nan")) for m in methods]
        fig.add_trace(go.Bar(x=[METHODS[m] for m in methods], y=values, name=model_view(defense, name).title,
                             text=[percent(v) for v in values], textposition="outside"))
    fig.add_hline(y=float(region.mean()), line_dash="dash", line_color="gray")
    fig.update_layout(barmode="group", bargap=0.4, height=360, margin=dict(l=0, r=0, t=30, b=0),
                      yaxis=dict(title="attribution on the trigger", tickformat=".0%", range=[0, 1.05]),
                      legend=dict(orientation="h", y=1.12))
    chart, words = st.columns([3, 1])
    chart.plotly_chart(fig, key="attr_mean_chart")
    with words:
        explain("The dashed line is the share of the image the trigger covers. A bar far above it means that "
                "model, on triggered images, looks mostly at the trigger; after a successful defense the "
                "delivered model's bar stays near the line.", summary, with_reason=False)


st.title("Attributions")
st.write("Where does each model look when it classifies an image? Bright areas show the pixels that drove its "
         "decision. A backdoored model looks at the trigger; a clean one looks at the digit.")
with page_errors():
    main()
