"""Train: choose a defense and its key settings, queue the run for the background worker, and watch
it live (phase, epoch, CA and ASR per epoch for f_B and f_C) with a Cancel button.

The page never trains: Start calls `cbd_core.jobs.submit`, which validates the settings exactly like
the CLI and queues a run folder; the live panel is a fragment that re-reads that folder every second.
"""

from __future__ import annotations

import pages.warm  # noqa: F401  first: every heavy import, once per process (see pages/warm)
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from cbd_core import jobs, rate_grid, verdicts
from cbd_core.attacks import ATTACKS
from cbd_core.config import RunConfig, poison_rate_in_words, poison_rate_warnings
from cbd_core.data import DATASETS, data_source, dataset_label
from cbd_core.defenses import DEFENSES
from cbd_core.errors import UserInputError
from cbd_core.palette import PHASE_COLOURS
from cbd_core.runs import FINISHED, RunDir, list_runs
from cbd_core.text import number
from pages.common import (active_run_id, chart_config, defense_title, explain, literal, load_config, load_metrics,
                          finished_stamp, judged_summary, page_errors, phase_title, runs_root_path, set_active_run,
                          verdict_banner)
from pages.common.navigation import follow_app_navigation
from pages.common.presentation import plotly_chart  # sized for presentation mode
from pages.common.run_progress import run_progress
from pages.common.settings import AttackSettings
from pages.common.widgets import changed_values, param_widget

follow_app_navigation()


# The form's values live in session state under these keys, and a copy in FORM_MEMORY: Streamlit forgets
# a widget's value when its page is left, and the copy brings it back, so Start, the reruns after it and
# a visit to another page never reset what the user chose.
FORM_MEMORY = "train_form_memory"
CARRIED = "train_form_carried"  # the Attack lab settings last applied to the form


def remembered(key: str, default: Any, allowed: list[Any] | None = None) -> None:
    """Before the widget `key` is drawn: give it its remembered value, else `default` (a remembered
    value no longer among `allowed` falls back to the default)."""
    memory = st.session_state.setdefault(FORM_MEMORY, {})
    if key not in st.session_state:
        value = memory.get(key, default)
        st.session_state[key] = default if allowed is not None and value not in allowed else value


def remember(*keys: str) -> None:
    memory = st.session_state.setdefault(FORM_MEMORY, {})
    for key in keys:
        memory[key] = st.session_state[key]


def take_attack_lab_settings(carried: AttackSettings) -> None:
    """New settings from the Attack lab replace the data and attack fields once; after that the user's
    own edits stand."""
    if not AttackSettings.was_saved() or st.session_state.get(CARRIED) == carried:
        return
    st.session_state[CARRIED] = carried
    memory = st.session_state.setdefault(FORM_MEMORY, {})
    for key, value in (("train_dataset", carried.dataset), ("train_attack", carried.attack),
                       ("train_rate_percent", round(100 * float(carried.poison_rate), 4)),
                       ("train_target", int(carried.target_label))):
        st.session_state[key] = memory[key] = value


def poison_rate_input(column: Any) -> float:
    """The poison rate field, in percent (`rate_guardrails` echoes it in words under the form, so 0.5
    cannot be taken for 50 %); returns it as the fraction RunConfig (and the CLI's --poison-rate) uses."""
    remembered("train_rate_percent", 10.0)
    percent = column.number_input("poison rate (%)", 0.0, 50.0, step=0.5, format="%.1f", key="train_rate_percent",
                                  help="percent of the training set that carries the trigger: 10 means one image "
                                       "in ten, 0.5 one in two hundred")
    remember("train_rate_percent")
    return round(float(percent) / 100, 6)


def rate_guardrails(rate: float, dataset: str, attack: str) -> None:
    """The rate in words (share, one-in-N, count) and what goes wrong at it, under the data fields."""
    info = DATASETS.get(dataset)
    st.caption(f":material/percent: Poison rate: **{poison_rate_in_words(rate, info.train_size if info else None)}**.")
    owner = ATTACKS.get(attack)
    for warning in poison_rate_warnings(rate, bool(getattr(owner, "clean_label", False)),
                                        info.num_classes if info else None):
        st.warning(warning, icon=":material/warning:")


def settings_form() -> RunConfig | None:
    """The data and defense settings as a RunConfig (validated on Start), prefilled from the Attack lab."""
    carried = AttackSettings.current()
    take_attack_lab_settings(carried)
    st.markdown("**1 · Data and attack**")
    if AttackSettings.was_saved():
        st.caption("Prefilled from the **Attack lab** (its attack parameters and uploads come along).")
    c1, c2, c3, c4 = st.columns(4)
    names = list(DATASETS) + (["npz"] if carried.dataset == "npz" else [])
    remembered("train_dataset", "mnist5k", names)
    dataset = c1.selectbox("dataset", names, key="train_dataset",
                           format_func=lambda n: n if n == "npz" else f"{n} ({'offline' if DATASETS[n].offline else 'files needed'})")
    attacks = list(ATTACKS)
    remembered("train_attack", "badnets", attacks)
    attack = c2.selectbox("attack", attacks, key="train_attack", format_func=lambda n: ATTACKS[n].title)
    rate = poison_rate_input(c3)
    remembered("train_target", 0)
    target = c4.number_input("target label", 0, 999, step=1, key="train_target",
                             help="the class the trigger sends images to")
    remember("train_dataset", "train_attack", "train_target")
    rate_guardrails(rate, dataset, attack)
    attack_params = carried.attack_params if carried.attack == attack else {}

    st.markdown("**2 · Defense**")
    c1, c2, c3 = st.columns([2, 1, 1])
    remembered("train_defense", "cbd", list(DEFENSES))
    defense_name = c1.selectbox("defense", list(DEFENSES), key="train_defense",
                                format_func=lambda n: f"{DEFENSES[n].title}: {DEFENSES[n].description}")
    remembered("train_seed", 0)
    seed = c2.number_input("seed", 0, 2**31 - 1, step=1, key="train_seed",
                           help="the same seed gives the same poisoned set and run")
    remembered("train_device", "auto", available_devices())
    device = c3.selectbox("device", available_devices(), key="train_device", help="auto picks a GPU when there is one")
    remember("train_defense", "train_seed", "train_device")
    defense = DEFENSES[defense_name]
    shape = DATASETS[dataset].image_shape if dataset in DATASETS else (28, 28, 1)
    defaults = defense.defaults(shape)
    declared = {p.name: p for p in defense.params}
    key_names = [n for n in defense.key_params if n in declared]
    chosen: dict[str, Any] = {}
    for column, name in zip(st.columns(max(1, len(key_names))), key_names):
        with column:
            chosen[name] = param_widget(declared[name], defaults[name], f"train_{defense_name}_{name}")
    with st.expander("All parameters of " + defense.title):
        for param in defense.params:
            if param.name not in key_names:
                chosen[param.name] = param_widget(param, defaults[param.name], f"train_{defense_name}_{param.name}")
    changed = changed_values(chosen, defaults)
    return RunConfig(dataset=dataset, attack=attack, poison_rate=rate, target_label=int(target),
                     defense=defense_name, seed=int(seed), attack_params=dict(attack_params),
                     defense_params=changed, device=device, npz_path=carried.npz_path if dataset == "npz" else None)


@st.cache_data(show_spinner=False, max_entries=4)
def _grid_points(root: str, stamp: tuple[tuple[str, int, int], ...]) -> list[rate_grid.GridPoint]:
    return rate_grid.grid_points(root)


def runs_like_note(config: RunConfig) -> None:
    """What the finished runs in the runs root with these very settings (data, attack and its setting,
    rate, target, defense and its parameters, any seed) say, before Start: their verdicts and attack success
    rates, a "made worse" among them said outright. Nothing where there are none."""
    info = DATASETS.get(config.dataset)
    if info is None and config.defense_params:  # a user's .npz: its image shape, hence the defaults, unknown here
        return
    shape = info.image_shape if info is not None else None
    try:
        params = DEFENSES[config.defense].resolve(shape or (28, 28, 1), config.defense_params)
    except UserInputError:
        return  # Start says what is wrong with them
    as_run = {**config.to_dict(), "defense_params": params}  # a run's config.json holds every parameter
    root = runs_root_path()
    points = _grid_points(str(root), finished_stamp(root))  # read again when a run finishes, not as one trains
    line, undefended = rate_grid.runs_like(points, data_source(config.to_dict()), config.attack, config.poison_rate,
                                           rate_grid.defense_label(as_run, shape), rate_grid.setup_label(as_run, shape),
                                           config.target_label)
    sentence = rate_grid.runs_like_sentence(line, undefended)
    if sentence is not None:
        st.caption(f":material/history: {sentence}")


@st.cache_resource(show_spinner=False)
def available_devices() -> list[str]:
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def active_run() -> RunDir | None:
    """The active run if it still exists, else the newest run, saying so when the URL (or this
    session) named one that is gone: the page never switches run silently."""
    wanted = active_run_id()
    runs = list_runs(runs_root_path())  # every run, to show one by id (or the newest): nothing compared
    chosen = next((run for run in runs if run.run_id == wanted), runs[0] if runs else None)
    if chosen is not None and chosen.run_id != wanted:
        if wanted:
            st.warning(f"Run `{wanted}` is not in the runs root (deleted, or never existed); showing the newest "
                       f"run, `{chosen.run_id}`, instead.", icon=":material/search_off:")
        set_active_run(chosen.run_id)
    return chosen


def curves(metrics: list[dict[str, Any]], defense: str) -> go.Figure:
    """CA (solid) and ASR (dashed) per epoch, one colour per phase, epochs numbered across phases."""
    fig = go.Figure()
    phases: list[str] = []
    for line in metrics:
        if line.get("phase") not in phases:
            phases.append(line.get("phase"))
    for colour, phase in zip(PHASE_COLOURS * 4, phases):
        points = [(i + 1, m) for i, m in enumerate(metrics) if m.get("phase") == phase]
        x = [i for i, _ in points]
        name = phase_title(defense, phase)
        fig.add_trace(go.Scatter(x=x, y=[m.get("clean_accuracy") for _, m in points], mode="lines+markers",
                                 name=f"{name}: clean accuracy", line={"color": colour}))
        fig.add_trace(go.Scatter(x=x, y=[m.get("attack_success_rate") for _, m in points], mode="lines+markers",
                                 name=f"{name}: attack success", line={"color": colour, "dash": "dash"},
                                 marker={"symbol": "x"}))
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 30, "b": 10}, yaxis={"range": [0, 1.02]},
                      xaxis_title="epoch (all phases in order)", xaxis={"dtick": 1}, yaxis_title="share of test images",
                      legend={"orientation": "h", "y": -0.25})
    return fig


def live_panel() -> None:
    """Status, progress, curves and Cancel of the active run; re-run every second while it is active."""
    run = active_run()
    if run is None:
        st.info("No run yet: choose the settings above and press **Start**.")
        return
    problem = run.problem()
    if problem:
        st.error(f"Run `{run.run_id}` cannot be read ({literal(problem)}); the **Runs** page can delete it. Other runs are "
                 "not affected.", icon=":material/report:")
        return
    try:
        config = load_config(run)
    except UserInputError as err:
        st.error(literal(err))
        return
    status = run.status()
    state = status.get("state", "?")
    # When the run finishes, rerun the whole page once so the fragment stops polling.
    was_active = st.session_state.get("train_panel_active")
    st.session_state["train_panel_active"] = state not in FINISHED
    if was_active and state in FINISHED:
        st.rerun()
    st.markdown(f"**{literal(defense_title(config['defense']))}** against **{literal(config['attack'])}** at "
                f"{config['poison_rate'] * 100:g} % on {literal(dataset_label(config))} (seed {literal(config['seed'])}) · "
                f"run `{run.run_id}`")
    metrics = load_metrics(run)  # read again only when the file changes: the estimate and the curves
    run_progress(run, status, config, metrics)
    if state in ("queued", "running"):
        if st.button("Cancel this run", key="cancel_active"):
            found = jobs.request_cancel(run)
            st.toast("Cancelled." if found == "queued" else "Cancelling at the next batch…")
    if state == "failed":
        st.error(f"This run failed: {literal(status.get('error') or 'no reason recorded')}")
    if state == "cancelled":
        st.warning("This run was cancelled; what it had written is kept.")
    summary = judged_summary(run) if state == "done" else None
    if state == "done":
        verdict_banner(run, status)
    if metrics:
        plotly_chart(curves(metrics, config["defense"]), width="stretch", key="train_curves",
                     config=chart_config("training-curves", run.run_id))
        explain("solid lines are clean accuracy (higher is better), dashed lines the attack success rate "
                "(lower is better for a defense). For CBD, f_B's dashed line should shoot up - it learns the "
                "trigger on purpose - while f_C's is meant to stay near zero as its clean accuracy climbs.",
                summary, with_reason=False)  # the banner above gives the reason
    elif state in ("queued", "running"):
        st.caption("The curves appear when the first epoch ends.")
    if summary:
        c1, c2, c3 = st.columns(3)
        # a summary may be hand-edited or cut short: a figure it lacks reads "n/a", the page goes on
        ca, asr, seconds = (number(summary.get(k)) for k in ("clean_accuracy", "attack_success_rate", "seconds"))
        c1.metric("clean accuracy", "n/a" if ca is None else f"{ca:.1%}")
        c2.metric("attack success rate", "n/a" if asr is None else f"{asr:.1%}")
        c3.metric("seconds", "n/a" if seconds is None else f"{seconds:.0f}")
        st.page_link("pages/sample_weights.py", label="See the per-sample weights →")
        st.page_link("pages/embeddings.py", label="See the embeddings →")
        st.page_link("pages/attributions.py", label="See where each model looks →")


START_NOTE = "train_start_note"  # what Start did ({run, lines}), shown above the live panel of that run


def start_run(config: RunConfig, with_baseline: bool) -> str:
    """Queue `config` (and its baseline) and return the run id to follow. The same settings pressed
    twice (a double click, a class pressing Start together) give one run: the existing one is followed
    and the note says so."""
    root = runs_root_path()
    (run, reused, state), baseline = (jobs.submit_with_baseline(config, root) if with_baseline
                                      else (jobs.submit_once(config, root), None))
    lines = []
    if reused:
        lines.append(f"These exact settings (seed {config.seed} included) already have a run, {state}: `{run.run_id}`. "
                     "Following it instead of training the same numbers twice; change the seed to train another.")
    if baseline is not None:
        lines.append(f"Baseline: reusing the undefended run `{baseline.run.run_id}`." if baseline.reused else
                     f"Baseline: the undefended run `{baseline.run.run_id}` is queued after this one.")
    st.session_state[START_NOTE] = {"run": run.run_id, "lines": lines}
    return run.run_id


st.title("Train a defense")
st.write("Pick the poisoned data and a defense, press **Start**, and watch it train. Training runs in a "
         "background worker: you can change pages, reload or close the tab, and the run goes on.")

# The run being watched comes first: the Quick demo and Start both land here.
st.subheader("Live progress")
with page_errors():
    run = active_run()
    note = st.session_state.get(START_NOTE)
    if note and run is not None and note["run"] == run.run_id:
        for line in note["lines"]:
            st.info(line, icon=":material/info:")
    active = run is not None and run.status().get("state") not in FINISHED
    st.fragment(live_panel, run_every=1.0 if active else None)()

st.divider()
st.subheader("Start a new run")
with page_errors():
    config = settings_form()
    runs_like_note(config)
    remembered("train_with_baseline", True)
    with_baseline = config.defense != verdicts.UNDEFENDED and st.checkbox(
        "also train the undefended baseline (reused if it exists)", key="train_with_baseline",
        help="The same poisoned data and seed without a defense, queued after this run: the verdict compares "
             "clean accuracy against it and checks that the attack takes hold at all.")
    remember("train_with_baseline")
    if st.button("Start", type="primary", key="train_start"):
        with st.spinner("Checking the settings and queueing the run…"):
            started = start_run(config, with_baseline)
        set_active_run(started)
        st.rerun()  # the live panel above follows the new run; the form keeps its values
