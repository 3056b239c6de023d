"""Explorer: move between finished runs by poison rate, attack and defense, at once.

Every answer is a real run already in the runs root (no training here): its verdict against its
baseline, clean accuracy and attack success rate, the histogram of its final per-sample weights (or
suspicion) for poisoned and clean images, and f_B's and f_C's poisoned-vs-clean maps. A cell that has
no finished run says the exact command that trains it. Everything is read through the pages' caches,
so switching between runs that were seen once is instant.
"""

from __future__ import annotations

import pages.warm  # noqa: F401  first: every heavy import, once per process (see pages/warm)
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cbd_core import verdicts
from cbd_core.palette import CLEAN_GREY
from cbd_core.attacks import ATTACKS
from cbd_core.defenses import defense_or_none
from cbd_core.explorer import EMBEDDED, Grid, explorer_grids, fill_command
from cbd_core.presets import PRESETS
from cbd_core.runs import RunDir
from pages.common import (finished_stamp, defense_title, judged_summary, literal, load_arrays, load_config, map_note,
                          page_errors, plot_order, runs_root_path, verdict_banner)
from pages.common.navigation import follow_app_navigation
from pages.common.poison_maps import POISONED_COLOUR, map_figure, run_maps
from pages.common.presentation import plotly_chart

follow_app_navigation()

PRESET_DEFENSE = next(iter(PRESETS.values())).config().defense  # the defense the Lesson teaches, shown first


@st.cache_data(show_spinner=False, max_entries=8)
def _grids_cached(root: str, stamp: tuple[tuple[str, int, int], ...]) -> dict[str, Grid]:
    return explorer_grids(root)


def grids() -> dict[str, Grid]:
    """Every dataset's grid (the embedded data's first), read again when a run finishes or is deleted (not
    while one trains: its progress changes no cell)."""
    root = runs_root_path()
    return _grids_cached(str(root), finished_stamp(root))


def forget_choices_not_in(found: Grid) -> None:
    """Another dataset's grid may lack the rate, attack or defense chosen on the last one: such a choice is
    dropped, so the control starts from its default on this grid whatever a widget does with a value that
    is no longer among its options."""
    for key, options in (("explorer_rate", found.rates), ("explorer_attack", found.attacks),
                         ("explorer_defense", found.defenses)):
        if key in st.session_state and st.session_state[key] not in options:
            del st.session_state[key]


def weights_histogram(run: RunDir) -> go.Figure | None:
    """The final per-sample score the run's defense declares (CBD's weight, ABL's or NONE's suspicion)
    for poisoned and clean training images; None when the defense scores no samples."""
    defense = defense_or_none(load_config(run).get("defense", ""))
    view = defense.sample_view if defense is not None else None
    arrays = load_arrays(run, "sample_weights") or {}
    poisoned = arrays.get("is_poisoned")
    values = arrays.get(view.score) if view is not None else None
    if values is None or poisoned is None:
        return None
    values = np.asarray(values, dtype=np.float64)
    final = values[-1] if values.ndim == 2 else values
    poisoned = np.asarray(poisoned, bool)
    if final.shape != poisoned.shape or not np.isfinite(final).all():
        return None
    if view.log_scale:
        final = np.log10(np.maximum(final, 1e-12))
    fig = go.Figure()
    for name, mask, colour in (("clean", ~poisoned, CLEAN_GREY), ("poisoned", poisoned, POISONED_COLOUR)):
        fig.add_trace(go.Histogram(x=final[mask], name=f"{name} ({int(mask.sum()):,})", marker_color=colour,
                                   opacity=0.75, histnorm="percent", nbinsx=40))
    fig.update_layout(barmode="overlay", height=300, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis_title=("log10 " if view.log_scale else "") + view.score_title,
                      yaxis_title="% of the group", legend={"orientation": "h", "y": -0.3},
                      title="poisoned and clean training images")
    return fig


def show_cell(run: RunDir) -> None:
    summary = judged_summary(run) or {}
    verdict_banner(run)
    c1, c2 = st.columns(2)
    asr, ca = summary.get("attack_success_rate"), summary.get("clean_accuracy")
    c1.metric("clean accuracy (CA)", f"{ca:.1%}" if isinstance(ca, (int, float)) else "n/a")
    c2.metric("attack success rate (ASR)", f"{asr:.1%}" if isinstance(asr, (int, float)) else "n/a")
    left, right = st.columns([2, 3])
    with left:
        figure = weights_histogram(run)
        if figure is None:
            st.caption("This run keeps no per-sample weights or suspicion.")
        else:
            plotly_chart(figure, key="explorer_weights")
    with right:
        points = run_maps(run)
        if points is None or not points["xy"]:
            map_note(run, "analysis", "this run's maps")  # who computes them, or that it stopped or failed
        else:
            names = plot_order(points["xy"], load_config(run).get("defense"))
            for column, name in zip(st.columns(len(names)), names):
                with column:
                    plotly_chart(map_figure(points["xy"][name], points["flags"], name), height=320,
                                 key=f"explorer_map_{name}")
    st.caption(f"Run `{run.run_id}`: red crosses are poisoned training images, grey dots clean ones.")


def verdicts_across_rates(found: Grid, attack: str, defense: str) -> None:
    """One line with the defense's verdict at every rate of this attack (a "made worse" cell
    included), so a class sees where it holds before moving the slider."""
    if defense == verdicts.UNDEFENDED:
        return
    title, parts = defense_title(defense), []
    for rate in found.rates:
        variant = found.variant(attack, rate, defense)  # named where no run with the defaults is there
        parts.append(f"{rate:.1%}: {found.verdict(attack, rate, defense) or 'no run yet'}"
                     + (f" ({variant})" if variant else ""))
    # The data is named here too: with one dataset in the runs root there is no dataset choice to show it.
    st.caption(f"{title} on {attack} ({literal(found.dataset)} data), verdict by poison rate: " + " · ".join(parts))


def main() -> None:
    found_all = grids()
    if not found_all:
        st.info("No finished runs yet. Fill the grid before class, for example:", icon=":material/grid_on:")
        st.code(fill_command(EMBEDDED, ["all"], [0.01, 0.05, 0.1], ["undefended", "cbd"]), language="bash")
        return
    names = list(found_all)
    dataset = names[0] if len(names) == 1 else st.columns([1, 3])[0].selectbox(
        "dataset", names, key="explorer_dataset",
        help="Every dataset with finished runs in the runs root; the embedded data first.")
    found = found_all[dataset]
    forget_choices_not_in(found)
    c1, c2, c3 = st.columns([3, 3, 2])
    if len(found.rates) == 1:  # a slider with one stop shows the rate twice and moves nowhere
        rate = found.rates[0]
        c1.markdown(f"poison rate  \n**{rate:.1%}**, the only rate with finished runs here")
    else:
        rate = c1.select_slider("poison rate", found.rates, value=found.rates[-1], format_func=lambda r: f"{r:.1%}",
                                key="explorer_rate")
    attack = c2.segmented_control("attack", found.attacks, key="explorer_attack", required=True,
                                  default=found.attacks[0],
                                  format_func=lambda a: ATTACKS[a].title if a in ATTACKS else a)
    defense = c3.selectbox("defense", found.defenses, key="explorer_defense", format_func=defense_title,
                           index=found.defenses.index(PRESET_DEFENSE) if PRESET_DEFENSE in found.defenses else 0)
    verdicts_across_rates(found, attack, defense)
    run_id = found.run_id(attack, rate, defense)
    if run_id is None:
        st.warning(f"No finished {defense_title(defense)} run of {attack} at {rate:.1%} on {found.dataset} yet. "
                   "This trains it (with the other cells of the row; cells already done are reused):",
                   icon=":material/grid_off:")
        st.code(fill_command(found.source, [attack], [rate], found.defenses), language="bash")
        return
    variant = found.variant(attack, rate, defense)
    if variant:
        st.caption(f"No {defense_title(defense)} run with its defaults in this cell yet; it shows a variant, {variant}.")
    show_cell(RunDir(runs_root_path() / run_id))


st.title("Explorer")
st.caption("Move the poison rate, the attack and the defense: each answer is a finished run, shown at once.")
with page_errors():
    main()
