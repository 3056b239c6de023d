"""Sample weights: what a defense made of each training sample.

Every defense that judges samples declares how to draw its record (`Defense.sample_view`): which array
scores the samples, which end is suspicious, and what to say; this page never asks which defense it
is. A score kept per epoch (CBD's weight w = CE_B / (CE_B + CE_C), which should sink towards 0 on the
poison) gets an epoch slider, numbered as on the Train page (CBD: f_B's stages 1-4, then f_C's epochs,
so the first weights, from the finished f_B and an untrained f_C, are at epoch 4): the histogram split
into poisoned and clean, how well the score singles out the poisoned samples (AUROC) epoch by epoch,
and the most and least suspected images. A score kept once or per round (ABL's isolation loss, NONE's
activations) gets its histogram and how many of what the defense set apart were really poisoned.
A defense without a view (undefended) has nothing to show here.
Read-only: everything comes from the run's sample_weights.npz and images.npz.
"""

from __future__ import annotations

import pages.warm  # noqa: F401  first: every heavy import, once per process (see pages/warm)
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cbd_core.defenses import Defense, SampleView, defense_or_none
from cbd_core.metrics import auroc
from cbd_core.palette import CLEAN_COLOUR, POISONED_COLOUR
from cbd_core.runs import RunDir
from pages.common import (class_name, defense_title, enlarge, explain, judging_defenses, load_arrays, load_config,
                          load_metrics, judged_summary, non_finite_warning, page_errors, pick_run,
                          glossary)
from pages.common.navigation import follow_app_navigation
from pages.common.presentation import plotly_chart  # sized for presentation mode

follow_app_navigation()

GALLERY_SIZE = 8
THUMBNAIL = 84


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
def auroc_per_epoch(suspicion: np.ndarray, is_poisoned: np.ndarray) -> list[float]:
    """AUROC of each row of a suspicion (higher = more suspected: `SampleView.suspicion`, e.g. minus
    CBD's weight) against the poison."""
    return [auroc(row, is_poisoned) for row in suspicion]


def gallery(title: str, order: np.ndarray, images: dict[str, np.ndarray], caption_of: Any) -> None:
    """A row of enlarged thumbnails for the training samples `order` (already chosen and sorted)."""
    st.markdown(f"**{title}**")
    position = {int(s): i for i, s in enumerate(images["train_index"].tolist())}
    columns = st.columns(GALLERY_SIZE)
    for column, sample in zip(columns, order.tolist()):
        with column:
            st.image(enlarge(images["train_x"][position[int(sample)]], THUMBNAIL), caption=caption_of(int(sample)))


def row_offset(run: RunDir, view: SampleView) -> int:
    """The Train page's epoch number of the record's row 0: the view's phase's epoch `first_row`
    (CBD: f_B's last epoch, 4, for the weights before f_C's first), or the run's own epoch `first_row`."""
    return view.first_epoch(load_metrics(run))


def shown(view: SampleView, values: np.ndarray) -> np.ndarray:
    """The score as the histogram draws it (log10 for losses spanning many decades)."""
    values = np.asarray(values, dtype=float)
    return np.log10(np.maximum(values, 1e-12)) if view.log_scale else values


def axis_title(view: SampleView, what: str) -> str:
    return f"{view.score_title}{', log10' if view.log_scale else ''} at {what}" if what else \
        f"{view.score_title}{', log10 (−4 means 0.0001)' if view.log_scale else ''}"


def epoch_view(run: RunDir, defense: Defense, view: SampleView, record: dict[str, np.ndarray],
               class_names: list[str], summary: dict[str, Any]) -> None:
    """A score per epoch: a slider through them, the histogram at the chosen one, how well the score
    ranks the poison epoch by epoch, and the most and least suspected images."""
    scores, is_poisoned = np.atleast_2d(record[view.score]), record["is_poisoned"].astype(bool)
    rows = scores.shape[0] - 1
    offset = row_offset(run, view)
    if not offset <= st.session_state.get("weights_epoch", offset) <= offset + rows:
        st.session_state.pop("weights_epoch", None)  # kept from a run numbered differently

    def label(number: int) -> str:
        caption = view.row_caption(number - offset)
        return f"epoch {number}" + (f" ({caption})" if caption else "")

    if rows:
        epoch = st.slider("Epoch", offset, offset + rows, offset + rows, key="weights_epoch",
                          help="Numbered as on the Train page; each epoch shows the scores the defense held then.")
    else:
        epoch = offset
    row = epoch - offset
    current = scores[row]
    curve = auroc_per_epoch(view.suspicion(scores), is_poisoned)
    note = defense.sample_note(summary, load_config(run).get("defense_params") or {}, offset)
    if note:
        st.caption(f"**Note:** {note}")
    kept = summary.get(view.kept_from) if view.kept_from else None

    left, right = st.columns(2)
    with left:
        plotly_chart(split_histogram(shown(view, current), is_poisoned, axis_title(view, label(epoch))),
                     width="stretch", key="weights_histogram")
        explain(view.hint, summary)
        if view.flagged is not None and view.flagged in record:
            flagged_metrics(np.atleast_2d(record[view.flagged])[min(row, len(np.atleast_2d(record[view.flagged])) - 1)],
                            is_poisoned, view)
    with right:
        numbers = list(range(offset, offset + rows + 1))
        fig = go.Figure(go.Scatter(x=numbers, y=[None if not np.isfinite(s) else s for s in curve],
                                   mode="lines+markers", name="AUROC", line={"color": POISONED_COLOUR}))
        if isinstance(kept, int):
            fig.add_vrect(x0=offset + kept, x1=offset + rows, fillcolor="grey", opacity=0.12, line_width=0,
                          annotation_text=view.kept_label, annotation_position="top left")
        fig.add_vline(x=epoch, line_dash="dot", line_color="grey")
        fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                          xaxis_title="epoch (as on the Train page)", yaxis_title="poison-detection AUROC",
                          yaxis_range=[0, 1.02], xaxis_dtick=1)
        plotly_chart(fig, width="stretch", key="weights_auroc")
        explain(f"How well a {view.suspicious} {view.score_title} picks out the poisoned samples, epoch by epoch: 1.0 "
                "means every poisoned sample is more suspected than every clean one, 0.5 is a coin toss.")
        if not is_poisoned.any():
            st.caption("This run has no poisoned samples, so there is nothing to detect (AUROC undefined).")

    images = load_arrays(run, "images") or {}
    kept_images = np.asarray(images.get("train_index", np.zeros(0, np.int64)), dtype=np.int64)
    kept_images = kept_images[kept_images < len(current)]
    if not len(kept_images):
        st.info("This run kept no training images, so there is no gallery.")
        return
    ranked = kept_images[np.argsort(view.suspicion(current[kept_images]), kind="stable")][::-1]
    labels, originals = record["label"], record.get("original_label", record["label"])
    low_first = view.suspicious == "low"

    def caption(sample: int) -> str:
        label_ = class_name(class_names, labels[sample])
        if is_poisoned[sample]:
            state = f"poisoned (really {class_name(class_names, originals[sample])})" \
                if originals[sample] != labels[sample] else "poisoned"
        else:
            state = "clean"
        return f"label {label_} · {state} · {view.score_short or view.score_title} {current[sample]:.3f}"

    most, least = ranked[:GALLERY_SIZE], ranked[::-1][:GALLERY_SIZE]
    lowest, highest = (most, least) if low_first else (least, most)
    gallery(f"Lowest {view.score_title} at {label(epoch)}", lowest, images, caption)
    gallery(f"Highest {view.score_title} at {label(epoch)}", highest, images, caption)
    explain(view.gallery_hint + (f" Drawn from the {len(kept_images):,} training images this run kept."
                                 if len(kept_images) < len(current) else ""), summary, with_reason=False)


def flagged_metrics(flagged: np.ndarray, is_poisoned: np.ndarray, view: SampleView) -> None:
    count, precision, recall = precision_recall(flagged, is_poisoned)
    st.metric(f"{view.flagged_title.capitalize()} samples", f"{count:,}")
    st.metric("Precision", _percent(precision), help=f"Share of the {view.flagged_title} samples that were poisoned.")
    st.metric("Recall", _percent(recall), help=f"Share of the poisoned samples that were {view.flagged_title}.")


def final_view(view: SampleView, record: dict[str, np.ndarray], summary: dict[str, Any]) -> None:
    """One score per sample (or per round, the last drawn): its histogram and what the defense set apart."""
    scores = np.atleast_2d(np.asarray(record[view.score], dtype=float))
    is_poisoned = record["is_poisoned"].astype(bool)
    left, right = st.columns([2, 1])
    with left:
        plotly_chart(split_histogram(shown(view, scores[-1]), is_poisoned, axis_title(view, "")),
                     width="stretch", key="score_histogram")
        explain(view.hint, summary)
    if view.flagged is None or view.flagged not in record:
        return
    flagged = np.atleast_2d(record[view.flagged]).astype(bool)
    with right:
        if view.rows == "round":
            rows = []
            for i, row in enumerate(flagged, start=1):
                count, precision, recall = precision_recall(row, is_poisoned)
                rows.append({"round": i, view.flagged_title: count, "precision": _percent(precision),
                             "recall": _percent(recall)})
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        else:
            flagged_metrics(flagged[-1], is_poisoned, view)
        explain(view.flagged_hint)


def render() -> None:
    run = pick_run()
    if run is None:
        return
    name = load_config(run).get("defense", "")
    defense = defense_or_none(name)
    summary = judged_summary(run) or {}
    class_names = [str(c) for c in (summary.get("class_names") or range(int(summary.get("num_classes") or 10)))]
    if defense is not None and defense.sample_view is None:
        st.info(f"This run is **{defense_title(name)}**: it trained on every sample equally, so there are no "
                f"per-sample weights or suspicions to show. Pick a {judging_defenses()} run to see what a defense "
                "made of each sample.")
        return
    record = load_arrays(run, "sample_weights")
    if record is None:
        st.info("This run has no sample_weights.npz (it did not finish writing its results).")
        return
    view = defense.sample_view if defense is not None else None
    if view is None or view.score not in record:
        st.info(f"{defense_title(name)} records no per-sample scores this version can draw, so there is nothing "
                "to show here.")
        return
    if non_finite_warning(record[view.score], f"per-sample values of {defense.title} "
                                              f"({view.score.replace('_', ' ')}, sample_weights.npz)"):
        return
    st.subheader(f"{defense.title}: {view.heading}")
    if np.ndim(record[view.score]) == 2 and view.rows == "epoch":
        epoch_view(run, defense, view, record, class_names, summary)
    else:
        final_view(view, record, summary)


st.title("Sample weights")
st.markdown("A defense that judges training samples gives each a score: CBD a weight (a sample its backdoored "
            "f_B fits much better than f_C gets a small one), others a loss or an activation, or a pool it puts the "
            "sample in. Here is how those scores split the poisoned samples from the clean ones.")
glossary("CE", "AUROC", "ASR")
with page_errors():
    render()
