"""Sample weights: what a defense made of each training sample.

CBD gives every training sample a weight w = CE_B / (CE_B + CE_C) each epoch: the poisoned samples,
which the backdoored f_B fits far better than f_C, should sink towards 0. An epoch slider moves
through the weights as f_C trains, with epochs numbered as on the Train page (CBD: f_B's stages 1-4,
then f_C's epochs, so the first weights, from the finished f_B and an untrained f_C, are at epoch 4):
their distribution split into poisoned and clean, how well "low weight" singles out the poisoned
samples (AUROC) epoch by epoch, and the lowest- and highest-weight images. A note says from which
epoch each sample kept its lowest weight (summary's `weights_kept_from_epoch`), after which weights
can only fall. ABL and NONE get the equivalent: which samples they set
apart and how many of those were really poisoned. An undefended run has nothing to show here.
Read-only: everything comes from the run's sample_weights.npz and images.npz.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cbd_core.defenses import defense_or_none
from cbd_core.metrics import auroc
from cbd_core.runs import RunDir, epoch_number
from pages.common import (class_name, defense_title, enlarge, explain, judging_defenses, load_arrays, load_config,
                          load_metrics, load_summary, non_finite_warning, page_errors, pick_run)
from pages.common.navigation import follow_app_navigation
from pages.common.presentation import plotly_chart  # sized for presentation mode

follow_app_navigation()

GALLERY_SIZE = 8
THUMBNAIL = 84
POISONED_COLOUR, CLEAN_COLOUR = "#d62728", "#1f77b4"


def split_histogram(values: np.ndarray, is_poisoned: np.ndarray, x_title: str, bins: int = 40) -> go.Figure:
    """Two overlaid histograms, clean and poisoned, on the same bins."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 1.0)
    size = (high - low) / bins if high > low else 1.0
    fig = go.Figure()
    for name, mask, colour in (("clean", ~is_poisoned, CLEAN_COLOUR), ("poisoned", is_poisoned, POISONED_COLOUR)):
        fig.add_trace(go.Histogram(x=values[mask & finite].tolist(), name=f"{name} ({int(mask.sum()):,})",
                                   marker_color=colour, opacity=0.65,
                                   xbins={"start": low, "end": high + size, "size": size}))
    fig.update_layout(barmode="overlay", height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis_title=x_title, yaxis_title="training samples", legend={"orientation": "h", "y": 1.12})
    return fig


def precision_recall(flagged: np.ndarray, is_poisoned: np.ndarray) -> tuple[int, float, float]:
    """How many were flagged, and the share of them that were poisoned (precision) and of the poisoned
    that were flagged (recall); NaN where a share has nothing to count."""
    flagged, is_poisoned = np.asarray(flagged, bool), np.asarray(is_poisoned, bool)
    hits = int((flagged & is_poisoned).sum())
    precision = hits / flagged.sum() if flagged.any() else float("nan")
    recall = hits / is_poisoned.sum() if is_poisoned.any() else float("nan")
    return int(flagged.sum()), float(precision), float(recall)


def _percent(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.1%}"


@st.cache_data(show_spinner=False, max_entries=32)
def auroc_per_epoch(weights: np.ndarray, is_poisoned: np.ndarray) -> list[float]:
    """AUROC of "low weight = poisoned" for each row of weights (metrics.auroc(scores, positives):
    higher score = more suspected, so the score is minus the weight)."""
    return [auroc(-row, is_poisoned) for row in weights]


def gallery(title: str, order: np.ndarray, images: dict[str, np.ndarray], caption_of: Any) -> None:
    """A row of enlarged thumbnails for the training samples `order` (already chosen and sorted)."""
    st.markdown(f"**{title}**")
    position = {int(s): i for i, s in enumerate(images["train_index"].tolist())}
    columns = st.columns(GALLERY_SIZE)
    for column, sample in zip(columns, order.tolist()):
        with column:
            st.image(enlarge(images["train_x"][position[int(sample)]], THUMBNAIL), caption=caption_of(int(sample)))


def first_f_c_epoch(run: RunDir) -> int | None:
    """The run's number of f_C's first epoch (the Train page's numbering), None without metrics."""
    return epoch_number(load_metrics(run), "f_C", 1)


def kept_note(summary: dict[str, Any], weighting: str | None, offset: int) -> str:
    """From which epoch the weights only fall (CBD's "stable" weighting keeps each sample's lowest), in
    the page's numbering, or why they never did."""
    if weighting == "paper":
        return ("This run used the paper's live weighting: f_C trained on weights recomputed in every batch; the ones "
                "shown were taken at each epoch's end.")
    kept = summary.get("weights_kept_from_epoch")
    if kept is None:
        return ("The weights were never frozen in this run: each sample keeps its lowest weight only once f_C's median "
                "loss falls below f_B's, which did not happen, so every epoch's weights are fresh.")
    return (f"From epoch {offset + int(kept)} (f_C's epoch {int(kept)}) on, each sample keeps its lowest weight so "
            "far: weights can only fall from then on, so the histogram changes little after it.")


def cbd_view(run: RunDir, record: dict[str, np.ndarray], class_names: list[str], summary: dict[str, Any]) -> None:
    weights, is_poisoned = record["weights"], record["is_poisoned"].astype(bool)
    epochs = weights.shape[0] - 1
    first = first_f_c_epoch(run)
    offset = first - 1 if first else 0  # row 0 (before f_C trains) sits at f_B's last epoch
    if not offset <= st.session_state.get("weights_epoch", offset) <= offset + epochs:
        st.session_state.pop("weights_epoch", None)  # kept from a run numbered differently

    def label(number: int) -> str:
        row = number - offset
        return (f"epoch {number} (f_B done, f_C not trained yet)" if row == 0 else
                f"epoch {number} (f_C's epoch {row})")

    epoch = st.slider("Epoch", offset, offset + epochs, offset + epochs, key="weights_epoch",
                      help=f"Numbered as on the Train page: epochs 1-{offset} are f_B's, {offset + 1}-{offset + epochs} "
                           f"f_C's. Epoch {offset}: the weights f_C starts with (from the finished f_B and an "
                           "untrained f_C); each later epoch: the weights f_C trained on in the next one.")
    row = epoch - offset
    current = weights[row]
    scores = auroc_per_epoch(weights, is_poisoned)
    kept = summary.get("weights_kept_from_epoch")
    st.caption(f"**Weights kept:** {kept_note(summary, (load_config(run).get('defense_params') or {}).get('weighting'), offset)}")

    left, right = st.columns(2)
    with left:
        plotly_chart(split_histogram(current, is_poisoned, f"weight at {label(epoch)}"), width="stretch",
                        key="weights_histogram")
        explain("For CBD to work, the red bars (poisoned samples) must pile up near 0, far left of the blue ones: "
                "the samples CBD stops trusting, so f_C hardly learns from them.", summary)
    with right:
        numbers = list(range(offset, offset + epochs + 1))
        fig = go.Figure(go.Scatter(x=numbers, y=[None if not np.isfinite(s) else s for s in scores],
                                   mode="lines+markers", name="AUROC", line={"color": POISONED_COLOUR}))
        if kept is not None:
            fig.add_vrect(x0=offset + int(kept), x1=offset + epochs, fillcolor="grey", opacity=0.12, line_width=0,
                          annotation_text="lowest weight kept", annotation_position="top left")
        fig.add_vline(x=epoch, line_dash="dot", line_color="grey")
        fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                          xaxis_title="epoch (as on the Train page)", yaxis_title="poison-detection AUROC",
                          yaxis_range=[0, 1.02], xaxis_dtick=1)
        plotly_chart(fig, width="stretch", key="weights_auroc")
        explain("How well a low weight picks out the poisoned samples, epoch by epoch: 1.0 means every poisoned "
                "sample weighs less than every clean one, 0.5 is a coin toss.")
        if not is_poisoned.any():
            st.caption("This run has no poisoned samples, so there is nothing to detect (AUROC undefined).")

    images = load_arrays(run, "images") or {}
    kept = np.asarray(images.get("train_index", np.zeros(0, np.int64)), dtype=np.int64)
    kept = kept[kept < len(current)]
    if not len(kept):
        st.info("This run kept no training images, so there is no gallery.")
        return
    ranked = kept[np.argsort(current[kept], kind="stable")]
    labels, originals = record["label"], record.get("original_label", record["label"])

    def caption(sample: int) -> str:
        label = class_name(class_names, labels[sample])
        if is_poisoned[sample]:
            state = f"poisoned (really {class_name(class_names, originals[sample])})" \
                if originals[sample] != labels[sample] else "poisoned"
        else:
            state = "clean"
        return f"label {label} · {state} · w {current[sample]:.3f}"

    gallery(f"Lowest weight at {label(epoch)}", ranked[:GALLERY_SIZE], images, caption)
    gallery(f"Highest weight at {label(epoch)}", ranked[::-1][:GALLERY_SIZE], images, caption)
    explain("If CBD singled out the poison, the lowest row is mostly poisoned images (look for the trigger) and the "
            "highest row clean images f_C learns most from." + (f" Drawn from the {len(kept):,} training images this "
                                                                 "run kept." if len(kept) < len(current) else ""),
            summary, with_reason=False)


def abl_view(record: dict[str, np.ndarray], summary: dict[str, Any]) -> None:
    losses = np.asarray(record["isolation_loss"], dtype=float)
    is_poisoned = record["is_poisoned"].astype(bool)
    isolated = record["isolated"].astype(bool)
    left, right = st.columns([2, 1])
    with left:
        plotly_chart(split_histogram(np.log10(np.maximum(losses, 1e-12)), is_poisoned,
                                        "loss after the isolation phase, log10 (−4 means 0.0001)"),
                        width="stretch", key="abl_histogram")
        explain("ABL trains briefly and sets apart the samples it learned fastest, the lowest losses: for it to "
                "work, the red bars (poisoned) must sit at the far left.", summary)
    with right:
        count, precision, recall = precision_recall(isolated, is_poisoned)
        st.metric("Isolated samples", f"{count:,}")
        st.metric("Precision", _percent(precision), help="Share of the isolated samples that were poisoned.")
        st.metric("Recall", _percent(recall), help="Share of the poisoned samples that were isolated.")
        explain("ABL unlearns the isolated set: high precision means it mostly unlearns poison, not real digits.")


def none_view(record: dict[str, np.ndarray], summary: dict[str, Any]) -> None:
    filtered = np.atleast_2d(record["filtered"]).astype(bool)
    activation = np.atleast_2d(record["hyperplane_activation"])
    is_poisoned = record["is_poisoned"].astype(bool)
    rows = []
    for i, flagged in enumerate(filtered, start=1):
        count, precision, recall = precision_recall(flagged, is_poisoned)
        rows.append({"round": i, "filtered": count, "precision": _percent(precision), "recall": _percent(recall)})
    left, right = st.columns([2, 1])
    with left:
        plotly_chart(split_histogram(activation[-1], is_poisoned, "activation of the suspected neurons"),
                        width="stretch", key="none_histogram")
        explain("NONE looks for neurons that fire far above normal on a few samples; for it to work, the red bars "
                "(poisoned) must stand apart to the right, where it filters samples out.", summary)
    with right:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        explain("Per round: how many training samples NONE filtered out, the share of them that were poisoned "
                "(precision) and the share of the poisoned it caught (recall).")


def render() -> None:
    run = pick_run()
    if run is None:
        return
    defense = load_config(run).get("defense", "")
    summary = load_summary(run) or {}
    class_names = [str(c) for c in (summary.get("class_names") or range(int(summary.get("num_classes") or 10)))]
    if defense_or_none(defense) is not None and defense_or_none(defense).suspicion_meaning is None:
        st.info(f"This run is **{defense_title(defense)}**: it trained on every sample equally, so there are no "
                f"per-sample weights or suspicions to show. Pick a {judging_defenses()} run to see what a defense "
                "made of each sample.")
        return
    record = load_arrays(run, "sample_weights")
    if record is None:
        st.info("This run has no sample_weights.npz (it did not finish writing its results).")
        return
    title = defense_title(defense)
    scored = next((key for key in ("weights", "isolation_loss", "hyperplane_activation") if key in record), None)
    if scored and non_finite_warning(record[scored], f"per-sample values of {title} "
                                                     f"({scored.replace('_', ' ')}, sample_weights.npz)"):
        return
    if "weights" in record and np.ndim(record["weights"]) == 2:
        st.subheader(f"{title}: each sample's weight as f_C trains")
        cbd_view(run, record, class_names, summary)
    elif "isolation_loss" in record and "isolated" in record:
        st.subheader(f"{title}: the samples it isolated as suspects")
        abl_view(record, summary)
    elif "filtered" in record and "hyperplane_activation" in record:
        st.subheader(f"{title}: the samples it filtered out")
        none_view(record, summary)
    else:
        st.info(f"{title} records no per-sample weights, so there is nothing to show here.")


st.title("Sample weights")
st.markdown("CBD trusts each training sample as much as the deliberately backdoored model f_B fails to explain "
            "it: a sample f_B fits much better than f_C gets a small weight. Here is how those weights split the "
            "poisoned samples from the clean ones, and what the other defenses suspected.")
with page_errors():
    render()
