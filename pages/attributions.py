"""Attributions: where each of a run's models looks when it classifies one test image, clean or with
the trigger (which the user can move, resize and fade), and how much of each model's attention falls
on the trigger over 100 triggered test images.

Single-image maps are computed on every rerun (milliseconds on a CPU); the 100-image averages are
cached per run and method. The maths lives in `cbd_core.analysis.attributions`.
"""

from __future__ import annotations

import pages.warm  # noqa: F401  first: every heavy import, once per process (see pages/warm)
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cbd_core.analysis.attributions import (
    METHOD_DESCRIPTIONS,
    METHODS,
    apply_run_trigger,
    attribution_map,
    edit_trigger,
    predict_proba,
    trigger_is_patch,
    trigger_mass_share,
)
from cbd_core.attacks import ATTACKS
from cbd_core.jobs.run_analysis import map_progress
from pages.common import (
    delivered_model,
    enlarge,
    explain,
    load_config,
    load_models,
    judged_summary,
    model_view,
    page_errors,
    pick_run,
    plot_order,
    runs_root_path,
)
from pages.common.attribution_views import (
    MEAN_IMAGES,
    colour_limits,
    example_index,
    mean_shares,
    overlay_figure,
    percent,
    run_images,
    stored_views,
)
from pages.common.navigation import follow_app_navigation
from pages.common.presentation import plotly_chart

follow_app_navigation()

MODES = ["Clean", "Triggered"]
IMAGE_KEY, IMAGE_RUN_KEY = "attr_image", "attr_image_run"


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


def image_slider(run_id: str, n: int, example: int) -> int:
    """The test-image slider; it opens on `example` and again whenever the run changes."""
    if st.session_state.get(IMAGE_RUN_KEY) != run_id:
        st.session_state[IMAGE_RUN_KEY] = run_id
        st.session_state[IMAGE_KEY] = min(example, n - 1)
    return st.slider("Test image", 0, n - 1, key=IMAGE_KEY,
                     help=f"one of the {n} clean test images this run kept; it opens on one that every model "
                          "classifies right when clean and that f_B sends to the target when triggered")


def trigger_note(attack_title: str, patch: bool, mode: str) -> str:
    """What the picture shows about the trigger: a box for a patch, why there is none otherwise."""
    if patch:
        return f"The dotted box marks the trigger{' (where it would go)' if mode == 'Clean' else ''}."
    return (f"{attack_title}'s trigger changes almost every pixel of the image, so it is not outlined, and "
            "the share of attribution on the trigger is close to 100% for any model: compare where the bright "
            "areas sit instead (on what the image shows, or spread over the background).")


def main() -> None:
    run = pick_run()
    if run is None:
        return
    config = load_config(run)
    summary = judged_summary(run) or {}
    test_x, test_y, region = run_images(run)
    class_names = summary.get("class_names") or [str(c) for c in range(int(summary.get("num_classes", 10)))]
    target = int(config.get("target_label", summary.get("target_label", 0)))
    defense = config.get("defense")
    local = trigger_is_patch(config, region)
    attack = ATTACKS.get(str(config.get("attack")))
    attack_title = attack.title if attack is not None else str(config.get("attack"))
    n, w = test_x.shape[0], test_x.shape[2]

    left, middle, right = st.columns([5, 3, 4])
    with left:
        index = image_slider(run.run_id, n, example_index(run)) if n > 1 else 0
    mode = middle.segmented_control("Image", MODES, default="Triggered", required=True,
                                    key="attr_mode") or "Clean"
    method = right.selectbox("Attribution method", list(METHODS), format_func=METHODS.get, key="attr_method",
                             help="\n".join(f"- **{METHODS[m]}**: {METHOD_DESCRIPTIONS[m]}" for m in METHODS))

    clean = test_x[index]
    at_rest = True  # the trigger where the run put it: what the worker stored maps for
    if mode == "Triggered":
        dx, dy, scale, opacity = trigger_controls(local, w)
        at_rest = (dx, dy, scale, opacity) == (0, 0, 1.0, 1.0)
        image, shown_region = edit_trigger(clean, apply_run_trigger(clean, config), region, dx, dy, scale, opacity)
    else:
        image, shown_region = clean, region  # outlined where the trigger would go

    names = plot_order(run.model_names(), defense)
    shared_scale = len(names) > 1 and st.toggle(
        "One colour scale for all models", value=False, key="attr_shared_scale",
        help="Off: each map is coloured from zero to its own largest value, so a model whose attributions are "
             "small overall (often f_C) still shows where it looks. On: one scale, so brightness compares "
             "across models.")
    preview, note = st.columns([1, 5])
    preview.image(enlarge(image), caption=f"true label {class_names[int(test_y[index])]}")
    scale_note = ("One colour scale for all maps: brightness compares across models." if shared_scale else
                  "Each map has its own colour scale (see its bar), so compare where each model looks, not how "
                  "bright one map is against the other." if len(names) > 1 else "")
    note.markdown(
        f"Test image **{index}** ({'with the trigger' if mode == 'Triggered' else 'clean'}); the attack's target "
        f"class is **{class_names[target]}**. {trigger_note(attack_title, local, mode)} Brighter colour = more "
        f"attribution. {scale_note} {METHODS[method]} shows {METHOD_DESCRIPTIONS[method]}.")

    stored = stored_views(run, mode.lower(), method, names, index) if at_rest else None
    if stored is not None:
        maps, probs = stored  # the worker's, so the app server loads no model for this view
    else:
        # A moved or faded trigger, or a run without the worker's views (made by the CLI, or older):
        # computed here, in the app's own process.
        models = load_models(run)
        maps = {name: attribution_map(models[name], image, None, method) for name in names}
        probs = {name: predict_proba(models[name], image) for name in names}
        if at_rest:
            # Whoever analyses the run (the background worker, or a Ray-trained run's own task) writes its views
            # right after its maps.
            st.caption("These maps are computed by the app itself: this run has no stored views "
                       f"(`attribution_views.npz`, which {map_progress(run, 'analysis').by} writes after the run "
                       "is done).")
    tops = colour_limits(maps, per_model=not shared_scale)
    # At least two columns, so a single model's map is as big as each of CBD's two.
    for column, name in zip(st.columns(max(2, len(names))), names):
        with column:
            st.markdown(f"**{model_view(defense, name).title}**")
            # Every map carries its colour bar, so the images line up at the same size.
            plotly_chart(overlay_figure(image, maps[name], shown_region if local else None, tops[name]),
                         key=f"attr_chart_{name}")
            predicted = int(np.argmax(probs[name]))
            on_target = " — the attack's target" if predicted == target else ""
            st.markdown(f"Prediction: **{class_names[predicted]}** ({probs[name][predicted]:.0%} confident)"
                        f"{on_target}")
            if local:
                st.markdown(f"Attribution on the trigger: **{percent(trigger_mass_share(maps[name], shown_region))}**"
                            f" (the trigger covers {shown_region.mean():.1%} of the image)")
            # The model the defense hands over carries the run's outcome.
            explain(model_view(defense, name).attribution_hint,
                    summary if name == delivered_model(defense, names) else None)

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
    with chart:
        plotly_chart(fig, key="attr_mean_chart")
    with words:
        if local:
            explain("The dashed line is the share of the image the trigger covers. A bar far above it means that "
                    "model, on triggered images, looks mostly at the trigger; after a successful defense the "
                    "delivered model's bar stays near the line.", summary, with_reason=False)
        else:
            explain(f"{attack_title}'s trigger covers the whole image (the dashed line), so every bar sits near "
                    "it whatever the model looks at: for this attack the maps above tell more than these bars.",
                    summary, with_reason=False)


st.title("Attributions")
st.write("Where does each model look when it classifies an image? Bright areas show the pixels that drove its "
         "decision. A backdoored model looks at the trigger; a clean one looks at what the image shows.")
with page_errors():
    main()
