"""Compare: every finished run side by side, and which training samples a defense suspected.

Filters at the top (dataset, poison rate, model); then a table of the runs, clean accuracy against
attack success rate (one point per run), and heatmaps of mean ASR and CA by defense and attack. Below,
for any one run, its per-sample suspicion score against the true poison mask: how the two groups
separate, the detection AUROC, precision and recall when the top k are flagged, and the most
suspected training images. Read-only: everything comes from the run folders through pages.common.
"""

from __future__ import annotations

import pages.warm  # noqa: F401  first: every heavy import, once per process (see pages/warm)
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from cbd_core import rate_grid, verdicts
from cbd_core.attacks import ATTACKS
from cbd_core.defenses import DEFENSES, defense_or_none
from cbd_core.data import data_source, dataset_labels
from cbd_core.errors import UserInputError
from cbd_core.metrics import auroc
from cbd_core.palette import SERIES_COLOURS, UNDEFENDED_COLOUR
from cbd_core.runs import RunDir, list_runs
from pages.common import (finished_stamp, chart_config, defense_title, enlarge, explain, judging_defenses, load_arrays, load_config,
                          load_summary, non_finite_warning, page_errors, pick_run, report_download, runs_root_path,
                          verdict_banner)
from pages.common.navigation import follow_app_navigation
from pages.common.presentation import plotly_chart  # sized for presentation mode

follow_app_navigation()


GALLERY_SIZE = 12
THUMBNAIL = 84

HINT = ("No finished runs to compare yet. Train a few on the **Train** page, or from a terminal run a grid: "
        "`python -m cbd_core matrix --datasets mnist5k --attacks badnets blend --defenses all --seeds 0 1`.")


def _short(value: Any) -> str:
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return Path(value).name  # an uploaded trigger image: its content-hash name is enough
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_note(owner: Any, image_shape: tuple[int, int, int], resolved: dict[str, Any]) -> str:
    """The parameters a run set away from the owner's defaults, as "a=1, b=2" ('' when none), so
    runs of different variants are not averaged together unseen."""
    try:
        defaults = owner.resolve(image_shape, {})
    except Exception:  # a defense or attack renamed since the run: show nothing rather than fail
        return ""
    changed = [f"{k}={_short(v)}" for k, v in resolved.items() if k in defaults and defaults[k] != v]
    return ", ".join(changed)


def finished_runs_table() -> pd.DataFrame:
    """One row per finished ("done") run with its figures; unreadable runs are skipped (the Runs
    page shows them)."""

    rows = []
    root = runs_root_path()
    undefended = verdicts.undefended_runs(root)  # every row's baseline from one pass over the runs root
    for run in list_runs(root):  # every finished run, for display (baselines: verdicts, via run_index)
        if run.status().get("state") != "done":
            continue
        try:
            config = load_config(run)
        except UserInputError:
            continue
        summary = load_summary(run)
        if not summary:
            continue
        shape = tuple(summary.get("image_shape") or ())
        defense, attack = config.get("defense", "?"), config.get("attack", "?")
        defense_note = attack_note = ""
        if len(shape) == 3:
            if defense in DEFENSES:
                defense_note = settings_note(DEFENSES[defense], shape, config.get("defense_params") or {})
            if attack in ATTACKS:
                attack_note = settings_note(ATTACKS[attack], shape, config.get("attack_params") or {})
        rows.append({
            "run_id": run.run_id, "defense": defense, "defense_settings": defense_note,
            "Defense": defense_title(defense), "attack": attack, "attack_settings": attack_note,
            "Attack": attack, "Dataset": data_source(config), "Rate": 100 * float(config.get("poison_rate", 0)),
            "Seed": config.get("seed"), "Model": summary.get("model"),
            "CA": _percent(summary.get("clean_accuracy")), "ASR": _percent(summary.get("attack_success_rate")),
            "RA": _percent(summary.get("robust_accuracy")), "Verdict": verdicts.verdict(summary, verdicts.lookup_baseline(config, root, undefended).summary),
            "AUROC": summary.get("poison_detection_auroc"),
            "Seconds": summary.get("seconds"),
        })
    labels = dataset_labels(r["Dataset"] for r in rows)  # each run's data by its name, as on every page
    for r in rows:
        r["Dataset"] = labels[r["Dataset"]]
    return pd.DataFrame(rows)


def name_variants(table: pd.DataFrame) -> pd.DataFrame:
    """Spell out a defense's (or attack's) non-default settings in its label only where the shown runs
    hold more than one setting of it, so different variants are never averaged together and the
    common case keeps short labels."""
    table = table.copy()
    for label, settings in (("Defense", "defense_settings"), ("Attack", "attack_settings")):
        variants = table.groupby(label)[settings].transform("nunique")
        spelled = table[label] + " (" + table[settings].where(table[settings] != "", "defaults") + ")"
        table[label] = table[label].where(variants <= 1, spelled)
    table["Settings"] = [", ".join(filter(None, pair)) for pair in zip(table["defense_settings"],
                                                                          table["attack_settings"])]
    return table


def _percent(value: Any) -> float:
    return 100 * float(value) if isinstance(value, (int, float)) else float("nan")


def _order(labels: pd.Series, names: list[str]) -> list[str]:
    """Labels in registry order (undefended, CBD, ABL, NONE / badnets, blend, ...), variants after."""
    rank = {name: i for i, name in enumerate(names)}
    return sorted(labels.drop_duplicates(), key=lambda label: (rank.get(label.split(" (")[0], len(rank)), label))


def scatter(table: pd.DataFrame) -> go.Figure:
    fig = px.scatter(table, x="CA", y="ASR", color="Attack", symbol="Defense", hover_name="run_id",
                     color_discrete_sequence=px.colors.qualitative.D3,
                     hover_data={"Dataset": True, "Rate": ":.1f", "Seed": True, "RA": ":.1f", "CA": ":.1f",
                                 "ASR": ":.1f"},
                     labels={"CA": "clean accuracy (%)", "ASR": "attack success rate (%)"})
    fig.update_traces(marker=dict(size=12, line=dict(width=1, color="white")))
    low = min(50.0, float(np.nanmin(table["CA"])) - 5) if table["CA"].notna().any() else 0.0
    fig.update_xaxes(range=[low, 101])
    fig.update_yaxes(range=[-3, 103])
    fig.add_shape(type="rect", x0=90, x1=101, y0=-3, y1=10, fillcolor="green", opacity=0.08, line_width=0,
                  layer="below")
    # Above the shaded corner, on a translucent ground, so it names the corner without hiding the runs in it.
    fig.add_annotation(x=101, y=10, xanchor="right", yanchor="bottom", text="ideal corner: high CA, low ASR",
                       showarrow=False, font=dict(size=11, color="#2e7d32"), bgcolor="rgba(255,255,255,0.6)")
    fig.update_layout(height=440, margin=dict(t=20, b=10, l=10, r=10), legend=dict(title="attack, defense"))
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def condition_labels(table: pd.DataFrame) -> pd.Series:
    """Each run's poisoned-data condition as a heatmap column label: attack and poison rate, and the
    dataset when the table holds more than one. Runs are averaged only within one condition: a
    defense's ASR at 10 % and at 50 % poison are different results, never one cell."""
    label = table["Attack"] + "<br>" + table["Rate"].map(lambda rate: f"{rate:g} %")
    if table["Dataset"].nunique() > 1:
        label = label + "<br>" + table["Dataset"].astype(str)
    return label


def condition_order(table: pd.DataFrame, labels: pd.Series) -> list[str]:
    """Condition labels by attack (registry order, variants after), then rate, then dataset."""
    rank = {name: i for i, name in enumerate(ATTACKS)}
    keys = {label: (rank.get(attack.split(" (")[0], len(rank)), attack, rate, str(dataset))
            for label, attack, rate, dataset in zip(labels, table["Attack"], table["Rate"], table["Dataset"])}
    return sorted(keys, key=keys.get)


def heatmap(table: pd.DataFrame, column: str, good_high: bool) -> go.Figure:
    """Mean of `column` per defense (rows) and condition (columns: attack at one poison rate, on one
    dataset), "mean ± std (n)" in each cell."""
    table = table.assign(Condition=condition_labels(table))
    stats = table.groupby(["Defense", "Condition"])[column].agg(["mean", "std", "count"])
    rows = _order(table["Defense"], [d.title for d in DEFENSES.values()])
    cols = condition_order(table, table["Condition"])
    z = np.full((len(rows), len(cols)), np.nan)
    text = [["" for _ in cols] for _ in rows]
    for (defense, condition), (mean, std, count) in stats.iterrows():
        i, j = rows.index(defense), cols.index(condition)
        z[i, j] = mean
        if count == 0:
            text[i][j] = "n/a"
        elif count == 1 or np.isnan(std):
            text[i][j] = f"{mean:.1f} ({count:.0f})"
        else:
            text[i][j] = f"{mean:.1f} ± {std:.1f} ({count:.0f})"
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=rows, text=text, texttemplate="%{text}", textfont=dict(size=13),
                               zmin=0, zmax=100,
                               colorscale="RdYlGn" if good_high else "RdYlGn_r", colorbar=dict(title="%"),
                               hovertemplate="%{y}<br>%{x}<br>%{text}<extra></extra>", xgap=2, ygap=2))
    lines = max(label.count("<br>") + 1 for label in cols) if cols else 1
    fig.update_layout(height=110 + 45 * len(rows) + 16 * lines, margin=dict(t=20, b=10, l=10, r=10),
                      yaxis=dict(autorange="reversed"))
    fig.update_xaxes(type="category", automargin=True, showgrid=False, title_text="attack · poison rate"
                     + (" · dataset" if lines > 2 else ""))
    fig.update_yaxes(type="category", automargin=True, showgrid=False)  # no grid lines across empty cells
    return fig


@st.cache_data(show_spinner=False, max_entries=4)
def rate_lines(root: str, stamp: tuple[tuple[str, int, int], ...]) -> list[rate_grid.GridLine]:
    """Median and min-max over seeds per (dataset, attack, defense, rate), re-read when a run finishes."""
    return rate_grid.summarise(rate_grid.grid_points(root))




def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def rate_figure(lines: list[rate_grid.GridLine], metric: str) -> go.Figure:
    """ASR ("asr") or CA ("ca") in % against the poison rate (log axis): one line per defense through its
    median over seeds, a band from its min to its max, the undefended line dashed grey."""
    fig = go.Figure()
    defenses = sorted({l.defense for l in lines}, key=lambda d: (not rate_grid.is_undefended(d), d))
    for i, defense in enumerate(defenses):
        own = sorted((l for l in lines if l.defense == defense), key=lambda l: l.poison_rate)
        x = [100 * l.poison_rate for l in own]
        median = [100 * getattr(l, f"{metric}_median") for l in own]
        low = [100 * getattr(l, f"{metric}_min") for l in own]
        high = [100 * getattr(l, f"{metric}_max") for l in own]
        colour = UNDEFENDED_COLOUR if rate_grid.is_undefended(defense) else SERIES_COLOURS[i % len(SERIES_COLOURS)]
        if any(h > lo for h, lo in zip(high, low)):
            fig.add_trace(go.Scatter(x=x + x[::-1], y=high + low[::-1], fill="toself", fillcolor=_rgba(colour, 0.15),
                                     line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=defense))
        seeds = [f"{l.seeds} seed{'s' if l.seeds != 1 else ''}" for l in own]
        fig.add_trace(go.Scatter(
            x=x, y=median, mode="lines+markers", name=defense, legendgroup=defense,
            line={"color": colour, "dash": "dash" if rate_grid.is_undefended(defense) else "solid"},
            customdata=list(zip(low, high, seeds)),
            hovertemplate=f"<b>{defense}</b><br>rate %{{x:g}} %<br>median %{{y:.1f}} % "
                          "[%{customdata[0]:.1f}–%{customdata[1]:.1f}]<br>%{customdata[2]}<extra></extra>"))
    title = "attack success rate (%)" if metric == "asr" else "clean accuracy (%)"
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis_title=title,
                      xaxis={"title": "poison rate (%, log scale)", "type": "log"},
                      legend={"orientation": "h", "y": -0.25})
    if metric == "asr":
        fig.update_yaxes(range=[-3, 103])
    return fig


def rate_view(root: Path) -> None:
    """The picture of where each defense holds: ASR and CA against the poison rate for one dataset and
    attack, from every finished run (cbd_core.rate_grid, the same numbers bench/rate_grid.py prints)."""
    lines = rate_lines(str(root), finished_stamp(root))  # finished runs only: a training run's progress is no change
    pairs = sorted({(l.dataset, l.attack) for l in lines})
    if not pairs:
        return
    st.subheader("Across poison rates")
    left, right = st.columns(2)
    dataset = left.selectbox("Dataset", sorted({d for d, _ in pairs}), key="rate_dataset")
    attack = right.selectbox("Attack", sorted({a for d, a in pairs if d == dataset}), key="rate_attack")
    here = [l for l in lines if l.dataset == dataset and l.attack == attack]
    c1, c2 = st.columns(2)
    with c1:
        plotly_chart(rate_figure(here, "asr"), config=chart_config(f"asr-by-rate-{dataset}-{attack}"),
                     key="rate_asr")
    with c2:
        plotly_chart(rate_figure(here, "ca"), config=chart_config(f"ca-by-rate-{dataset}-{attack}"), key="rate_ca")
    worse = sum(l.verdicts.get(verdicts.MADE_WORSE, 0) for l in here)
    explain("Each line is a defense through its median over seeds, the band its lowest and highest seed; the dashed "
            "grey line is the undefended model. A defense holds where its ASR line stays near 0 % while its CA "
            "line stays beside the undefended one."
            + (f" **{worse} run{'s' if worse != 1 else ''} here made the attack stronger** than without a defense."
               if worse else ""))
    holes = rate_grid.missing_cells(lines, dataset, attack)
    if holes:
        rates = sorted({r for _, r in holes})
        st.caption(f"Missing from the picture: {', '.join(f'{d} at {r:.1%}' for d, r in holes)}. "
                   f"`python -m cbd_core matrix --datasets {dataset} --attacks {attack} --poison-rates "
                   f"{' '.join(f'{r:g}' for r in rates)} --defenses …` fills them.")


def top_k_report(suspicion: np.ndarray, is_poisoned: np.ndarray, k: int) -> tuple[float, float, float]:
    """(precision, recall, threshold) when the k most suspected samples are flagged; ties are broken
    by sample order, NaN scores count as least suspected."""
    order = np.argsort(-np.nan_to_num(suspicion, nan=-np.inf), kind="stable")
    flagged = order[:k]
    hits = int(is_poisoned[flagged].sum())
    n_poisoned = int(is_poisoned.sum())
    return (hits / k if k else float("nan"), hits / n_poisoned if n_poisoned else float("nan"),
            float(suspicion[flagged[-1]]) if k else float("nan"))


def suspicion_histogram(suspicion: np.ndarray, is_poisoned: np.ndarray, threshold: float) -> go.Figure:
    finite = np.isfinite(suspicion)
    edges = np.histogram_bin_edges(suspicion[finite], bins=50)
    bins = dict(start=float(edges[0]), end=float(edges[-1]), size=float(edges[1] - edges[0]) or 1.0)
    fig = go.Figure()
    for name, mask, colour in (("clean", ~is_poisoned, "#4c78a8"), ("poisoned", is_poisoned, "#e45756")):
        fig.add_trace(go.Histogram(x=suspicion[mask & finite], name=f"{name} ({int(mask.sum()):,})", xbins=bins,
                                   marker_color=colour, opacity=0.65))
    # The label goes on the side of the line with room, so it is never cut off at the plot's edge.
    right_half = np.isfinite(threshold) and threshold > (edges[0] + edges[-1]) / 2
    fig.add_vline(x=threshold, line_dash="dash", annotation_text="top k flagged →",
                  annotation_position="top left" if right_half else "top right")
    # One tick per power of ten (1, 10, 100, 1,000): Plotly's default log ticks read "1 2 5 10 2 5 100".
    fig.update_layout(barmode="overlay", height=340, margin=dict(t=50, b=10, l=10, r=10),
                      xaxis_title="suspicion (higher = more suspected)", legend=dict(orientation="h", y=1.18))
    fig.update_yaxes(type="log", dtick=1, exponentformat="none", separatethousands=True,
                     title_text="training samples (log scale)", automargin=True)
    fig.update_xaxes(automargin=True)
    return fig


def suspected_poison_view(run: RunDir) -> None:
    config = load_config(run)
    defense = config.get("defense", "?")
    title = defense_title(defense)
    record = load_arrays(run, "sample_weights")
    if record is None:
        st.info("This run kept no per-sample record (sample_weights.npz), so there is nothing to show here.")
        return
    suspicion = np.asarray(record["suspicion"], dtype=np.float64)
    is_poisoned = np.asarray(record["is_poisoned"], dtype=bool)
    judges = getattr(defense_or_none(defense), "suspicion_meaning", True) is not None  # unknown: assume it does
    if judges and non_finite_warning(suspicion, f"{title}'s suspicion scores (sample_weights.npz)"):
        return
    if np.isnan(suspicion).all():
        st.info(f"{title} has no opinion about individual samples: it trains on every sample as given and never "
                f"scores them, so there is no suspicion to show. Pick a {judging_defenses()} run.")
        return
    n_poisoned, n = int(is_poisoned.sum()), len(is_poisoned)
    if n_poisoned == 0:
        st.info("This run has no poisoned training samples, so there is nothing for a detector to find.")
        return
    meaning = getattr(defense_or_none(defense), "suspicion_meaning", None) or "higher = more suspected"
    st.caption(f"{title}'s suspicion: {meaning}. The true poison "
               "mask is only used here, to score it; the defense never saw it.")

    k = st.slider("Flag the k most suspected samples", 1, n, value=n_poisoned, key=f"compare_k_{run.run_id}",
                  help="Defaults to the true number of poisoned samples; ties are broken by sample order.")
    precision, recall, threshold = top_k_report(suspicion, is_poisoned, k)
    left, middle, right = st.columns(3)
    left.metric("Detection AUROC", f"{auroc(np.nan_to_num(suspicion, nan=-np.inf), is_poisoned):.3f}",
                help="Chance that a random poisoned sample is more suspected than a random clean one (0.5 = chance).")
    middle.metric(f"Precision of the top {k:,}", f"{precision:.1%}")
    right.metric(f"Recall of the top {k:,}", f"{recall:.1%}",
                 help=f"Share of the {n_poisoned:,} poisoned samples found.")
    plotly_chart(suspicion_histogram(suspicion, is_poisoned, threshold),
                 config=chart_config("suspicion", run.run_id))
    explain("Red is the truly poisoned samples, blue the clean ones (log scale): a good detector pushes red to the "
            "right of the dashed line and keeps blue to its left; the AUROC is how well they separate.")

    images = load_arrays(run, "images")
    if images is None or "train_x" not in images:
        st.info("This run kept no training thumbnails (images.npz), so the gallery cannot be drawn.")
        return
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-np.nan_to_num(suspicion, nan=-np.inf), kind="stable")] = np.arange(n)
    kept = np.asarray(images["train_index"])
    order = np.argsort(rank[kept], kind="stable")[:GALLERY_SIZE]
    labels = record.get("label", np.full(n, -1))
    st.markdown(f"**The most suspected training images** (of the {len(kept):,} the run kept thumbnails of)")
    thumbnails = [enlarge(images["train_x"][i], THUMBNAIL) for i in order]
    st.image(thumbnails,
             caption=[f"#{rank[kept[i]] + 1} · {'poisoned' if is_poisoned[kept[i]] else 'clean'} · label "
                      f"{labels[kept[i]]}" for i in order],
             width=int(thumbnails[0].shape[1]) if thumbnails else "content")
    explain("Ranked by suspicion (#1 = most suspected of all training samples); if the defense works, these carry "
            "the trigger and say 'poisoned'.", load_summary(run), with_reason=False)


# -- the page ----------------------------------------------------------------------------------

st.title("Compare")
st.markdown("Every finished run side by side: does the defense remove the backdoor (low attack success rate) "
            "without costing clean accuracy? And which training samples did it suspect?")
st.caption(":material/photo_camera: Every chart saves as a PNG: hover over it and click the camera icon at its top "
           "right. The **Runs** page exports a run as one HTML report.")

with page_errors():
    table = finished_runs_table()
    if table.empty:
        st.info(HINT)
        st.stop()

    left, middle, right = st.columns(3)
    datasets = sorted(table["Dataset"].dropna().unique())
    rates = sorted(table["Rate"].unique())
    models = sorted(table["Model"].dropna().unique())
    chosen_datasets = left.multiselect("Dataset", datasets, default=datasets, key="compare_datasets")
    chosen_rates = middle.multiselect("Poison rate", rates, default=rates, format_func=lambda r: f"{r:g}%",
                                      key="compare_rates")
    chosen_models = right.multiselect("Model", models, default=models, key="compare_models")
    shown = name_variants(table[table["Dataset"].isin(chosen_datasets) & table["Rate"].isin(chosen_rates)
                                & table["Model"].isin(chosen_models)])

    if shown.empty:
        st.info("No finished run matches these filters.")
    else:
        st.subheader(f"{len(shown)} finished run{'s' if len(shown) != 1 else ''}")
        columns = ["Defense", "Attack", "Dataset", "Rate", "Seed", "CA", "ASR", "Verdict", "RA", "AUROC", "Seconds",
                   "Settings", "run_id"]
        st.dataframe(shown[columns], hide_index=True, column_config={
            "Rate": st.column_config.NumberColumn("Rate", format="%.1f%%"),
            "CA": st.column_config.NumberColumn("CA", format="%.1f%%", help="Clean accuracy on the untouched test set"),
            "ASR": st.column_config.NumberColumn("ASR", format="%.1f%%",
                                                 help="Attack success rate: triggered test images sent to the target"),
            "Verdict": st.column_config.TextColumn(
                "Verdict", help=verdicts.legend()),
            "RA": st.column_config.NumberColumn(
                "RA", format="%.1f%%", help="Robust accuracy: triggered test images still given their true label"),
            "AUROC": st.column_config.NumberColumn(
                "Detection AUROC", format="%.3f", help="How well the defense's suspicion ranks poisoned samples first"),
            "Seconds": st.column_config.NumberColumn("Seconds", format="%.0f"),
            "Settings": st.column_config.TextColumn("Settings", help="Parameters set away from their defaults"),
            "run_id": st.column_config.TextColumn("Run id"),
        })
        explain("One row per run; sort by a column by clicking its header. A good defense keeps CA near the "
                "undefended run's and brings ASR close to 0%; the Verdict column says which runs did (removed) and "
                "which did not (weakened, persists).")

        st.subheader("Clean accuracy against attack success")
        plotly_chart(scatter(shown), config=chart_config("ca-vs-asr"))
        explain("Each point is a run (hover for its id): the shaded bottom-right corner is where a defense wants to "
                "be, keeping accuracy and leaving the trigger powerless; undefended runs sit at the top.")

        st.subheader("Mean attack success rate")
        plotly_chart(heatmap(shown, "ASR", good_high=False), config=chart_config("mean-asr"))
        explain("Green is a defense that held against that attack; each column is one attack at one poison rate "
                "(runs at different rates are never averaged together), each cell mean ± std over its runs (n).")
        st.subheader("Mean clean accuracy")
        plotly_chart(heatmap(shown, "CA", good_high=True), config=chart_config("mean-ca"))
        explain("What each defense costs on clean images; compare a row with the Undefended row.")

    rate_view(runs_root_path())

    st.divider()
    st.subheader("Which samples did the defense suspect?")
    run = pick_run("Run", key="compare_run")
    if run is not None:
        verdict_banner(run)
        report_download(run, "compare_report")
        suspected_poison_view(run)
