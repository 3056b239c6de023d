"""What every page shares: the runs root, choosing the active run, cached reads of run files, and
turning errors into a message in the page instead of a traceback.

Pages import it as `from pages.common import ...` (the app's folder is on sys.path). Nothing here
trains or writes into a run; reads are cached by run id and file modification time, so a page over a
finished run renders instantly after its first visit, and a run that changes is read again.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import streamlit as st

from cbd_core import jobs, verdicts
from cbd_core.data import dataset_label
from cbd_core.defenses import defense_or_none
from cbd_core.defenses.base import PLAIN_MODEL, ModelView
from cbd_core.errors import UserInputError
from cbd_core.jobs.run_analysis import (NOTE_FAILED, NOTE_STALLED, NOTE_UNDER_WAY, MapProgress, map_note_text,
                                        map_progress)
from cbd_core.text import rate_percent
from cbd_core.runs import RunDir, list_runs, runs_root

log = logging.getLogger("backdoor_lab")

# Session-state key of the active run; the URL's ?run= mirrors it so a link opens the same view.
ACTIVE_RUN = "active_run"


def runs_root_path() -> Path:
    """The runs root: $BACKDOOR_LAB_RUNS, else ./runs."""
    return runs_root()


# What gives text a meaning in Streamlit's Markdown once line breaks are gone: emphasis (* and an
# underscore at a word's edge; "poison_rate" stays as it is), links and images ([ ]), code (`), strike (~),
# HTML (< >), LaTeX ($), and the `:colour[...]` / `:material/...:` directives (a colon before a letter).
_MARKDOWN_SPECIALS = re.compile(r"([\\`*\[\]~<>$]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|:(?=[A-Za-z\[]))")


def literal(text: Any) -> str:
    """`text` (a string from a run's files: an error, a config value, a host name…) escaped so that
    st.markdown, st.error, st.caption and friends show it character for character instead of rendering
    its `**bold**`, links or colour directives; line breaks become spaces."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", " ".join(str(text).split()))


@contextlib.contextmanager
def page_errors() -> Iterator[None]:
    """Show bad input as its own one-line message and a bug as a short notice, never a traceback;
    the rest of the app keeps working. Streamlit's own control-flow exceptions pass through."""
    try:
        yield
    except UserInputError as err:
        st.error(literal(err))  # its text may quote a run's files
    except Exception as err:
        if type(err).__module__.startswith("streamlit"):  # st.stop(), st.rerun(), page switches
            raise
        log.exception("page error")
        st.error(f"Something went wrong while drawing this part of the page ({type(err).__name__}: {literal(err)}). "
                 "The run itself is untouched; other pages still work.")


def explain(text: str, summary: dict[str, Any] | None = None, with_reason: bool = True) -> None:
    """The one plain sentence beside a chart saying what to look for; given the run's `summary`, it
    goes on with what happened in that run (`verdicts.outcome_note`: removed, or why the defense failed),
    so no caption reads as a success on a run whose backdoor got through."""
    note = verdicts.outcome_note(summary, with_reason) if summary else ""
    st.caption(f"**What to look for:** {text}" + (f" {note}" if note else ""))


@st.cache_data(show_spinner=False, max_entries=256)
def _config_cached(path: str, mtime: int) -> dict[str, Any]:
    return RunDir(Path(path)).config()


def load_config(run: RunDir) -> dict[str, Any]:
    """The run's config (cached); a UserInputError saying "unreadable: <reason>" or "deleted"."""
    if not run.exists():
        raise UserInputError(f"run {run.run_id} was deleted", "run")
    return _config_cached(str(run.path), run.config_mtime())


@st.cache_data(show_spinner=False, max_entries=256)
def _summary_cached(path: str, mtime: int) -> dict[str, Any] | None:
    return RunDir(Path(path)).summary()


def load_summary(run: RunDir) -> dict[str, Any] | None:
    """The run's summary (cached), or None before it finishes (or when it is unreadable)."""
    return _summary_cached(str(run.path), run.summary_mtime())


@st.cache_data(show_spinner=False, max_entries=256)
def _metrics_cached(path: str, mtime: int) -> list[dict[str, Any]]:
    return RunDir(Path(path)).metrics()


def load_metrics(run: RunDir) -> list[dict[str, Any]]:
    """The run's metrics.jsonl lines (cached; read again when the file changes, so a run that is still
    training shows its new epochs); [] when there are none yet."""
    return _metrics_cached(str(run.path), run.file_mtime("metrics.jsonl"))


def runs_stamp(root: Path) -> tuple[tuple[str, int], ...]:
    """Each run folder's id and its status.json's modification time: it changes whenever a run is
    created, deleted or changes state (a baseline's summary is written before its status says done)."""
    # every run, for a cache stamp: nothing compared
    return tuple(sorted((run.run_id, run.status_mtime()) for run in list_runs(root)))


def finished_stamp(root: Path) -> tuple[tuple[str, int, int], ...]:
    """`runs_stamp` for readers of finished runs only: each run's summary.json modification time and, once it
    has one, its status.json's (the state turns done after the summary is written). A training run's
    progress rewrites its status.json every moment; this stamp ignores that, so a cache keyed on it holds
    while runs train."""
    stamps = []
    for run in list_runs(root):  # every run, for a cache stamp: nothing compared
        summary = run.summary_mtime()
        stamps.append((run.run_id, summary, run.status_mtime() if summary else 0))
    return tuple(sorted(stamps))


@st.cache_data(show_spinner=False, max_entries=256)
def _baseline_cached(root: str, config_json: str, stamp: tuple[tuple[str, int], ...]) -> verdicts.Baseline:
    import json

    return verdicts.lookup_baseline(json.loads(config_json), root)


def load_baseline(run: RunDir) -> verdicts.Baseline:
    """The run's undefended baseline right now (done, still training, or none), looked up live, since
    it may finish after the defended run; cached until any run under the root changes."""
    import json

    config = load_config(run)
    if config.get("defense") == verdicts.UNDEFENDED:
        return verdicts.Baseline("none")
    root = run.path.parent
    return _baseline_cached(str(root), json.dumps(config, sort_keys=True), runs_stamp(root))


def judged_summary(run: RunDir) -> dict[str, Any] | None:
    """The run's summary with `baseline_attack_success_rate` read from its baseline as it is now (when
    a finished one exists), so every sentence that judges the run from its summary alone
    (`verdicts.outcome_note`, the Lesson's notes) uses the same baseline as its banner."""
    summary = load_summary(run)
    if not summary or summary.get("defense") == verdicts.UNDEFENDED:
        return summary
    baseline = load_baseline(run)
    if baseline.state != "done":
        return summary
    return {**summary, "baseline_attack_success_rate": verdicts.baseline_asr(summary, baseline.summary)}


BANNERS = {verdicts.REMOVED: (st.success, ":material/check_circle:"),
           verdicts.WEAKENED: (st.warning, ":material/warning:"),
           verdicts.PERSISTS: (st.error, ":material/dangerous:"),
           verdicts.MADE_WORSE: (st.error, ":material/trending_up:"),
           verdicts.NOT_APPLICABLE: (st.info, ":material/info:")}


def verdict_banner(run: RunDir, status: dict[str, Any] | None = None) -> str:
    """The run's verdict as a coloured banner (success: removed, warning: weakened, error: persists,
    info: undefended or not finished) with its ASR, its clean-accuracy cost against the baseline and
    what happened, in sentences; returns the verdict."""
    state = (status or run.status()).get("state", "?")
    summary = load_summary(run) if state == "done" else None
    baseline = load_baseline(run) if summary else None
    result, text = verdicts.banner_text(summary, baseline, state)
    show, icon = BANNERS[result]
    show(text, icon=icon)
    return result


MAP_NOTES = {NOTE_FAILED: st.error, NOTE_STALLED: st.warning, NOTE_UNDER_WAY: st.info}


def map_note(run: RunDir, field: str, what: str, then: str = "") -> MapProgress:
    """Say why the map `field` ("analysis", "epoch_analysis") of `run`, `what` in the sentence, cannot be
    shown: who is computing it, or that it stopped half-way or failed (`run_analysis.map_note_text`'s words, so
    every page says it alike), in a banner of its tone; `then`, what the page offers meanwhile, follows
    unless nobody will compute it. Returns the map's progress (a page that polls compares it)."""
    progress = map_progress(run, field)
    worker_running = any(w.alive for w in jobs.workers(run.path.parent))
    tone, text = map_note_text(progress, field, what, worker_running)
    MAP_NOTES[tone](f"{text} {then}" if then and tone != NOTE_FAILED else text)
    return progress


@st.cache_data(show_spinner=False, max_entries=64)
def _read_npz_cached(path: str, name: str, mtime: int) -> dict[str, np.ndarray] | None:
    from cbd_core.runs import REQUIRED_ARRAYS

    return RunDir(Path(path)).arrays(name, REQUIRED_ARRAYS.get(name, ()))


def load_arrays(run: RunDir, name: str) -> dict[str, np.ndarray] | None:
    """Arrays of the run's `<name>.npz` (sample_weights, embeddings, images, umap), cached, read through
    `RunDir` (which checks the arrays every page counts on); None when absent. A corrupt file, or one
    lacking such an array, is a UserInputError naming it ("unreadable: ...")."""
    return _read_npz_cached(str(run.path), name, run.arrays_mtime(name))


@st.cache_resource(show_spinner=False, max_entries=16)
def _models_cached(path: str, mtime: int) -> dict[str, Any]:
    from cbd_core.analysis import load_models as load

    return load(RunDir(Path(path)))


def load_models(run: RunDir) -> dict[str, Any]:
    """The run's trained models by name (f_C first, f_B after; or `model`), CPU, eval mode, cached.
    Treat them as read-only: they are shared by every session."""
    return _models_cached(str(run.path), run.summary_mtime())


def active_run_id() -> str | None:
    """The active run's id: the URL's ?run=, else this session's choice."""
    return st.query_params.get("run") or st.session_state.get(ACTIVE_RUN)


def run_label(run: RunDir, status: dict[str, Any] | None = None) -> str:
    """One line naming a run: defense, attack, rate, seed, state and id (give `status` if already read)."""
    problem = run.problem()
    if problem:
        return f"{run.run_id} ({problem})"
    try:
        config = load_config(run)
    except UserInputError:
        return f"{run.run_id} (unreadable)"
    state = (status or run.status()).get("state", "?")
    rate = config.get("poison_rate", 0)
    rate = rate_percent(rate) if isinstance(rate, (int, float)) else "?"
    return (f"{config.get('defense')} · {config.get('attack')} {rate} · "
            f"{dataset_label(config)} · seed {config.get('seed')} · {state} · {run.run_id}")


def unreadable_note(runs: list[RunDir]) -> None:
    """One caption naming the runs that cannot be read (and why), so a damaged folder is flagged
    rather than silently missing or breaking the page. Folders whose very name is no run id (quotes,
    spaces, RLO…) are named too, escaped so that every character shows."""
    from cbd_core.runs import ODD_NAME_PROBLEM, odd_run_folders

    bad = [(run.run_id, problem) for run in runs if (problem := run.problem())]
    bad += [(name, ODD_NAME_PROBLEM) for name in odd_run_folders(runs_root_path())]
    if bad:
        st.warning(f"{len(bad)} run folder(s) cannot be read and are left out here (the **Runs** page lists them): "
                   + "; ".join(f"{literal(run_id)} ({literal(problem)})" for run_id, problem in bad[:5])
                   + (" …" if len(bad) > 5 else ""), icon=":material/report:")


def missing_run_note(wanted: str, known: list[RunDir]) -> None:
    """Say that the run the URL (or this session) names is not shown, and why."""
    found = next((run for run in known if run.run_id == wanted), None)
    if found is None:
        st.warning(f"Run `{wanted}` is not in the runs root: it was deleted, or never existed. Choose a run "
                   "from the list below.", icon=":material/search_off:")
    else:
        problem = found.problem()
        why = literal(problem) if problem else \
            f"it is {literal(found.status().get('state', '?'))}, and this page shows other runs"
        st.info(f"Run `{wanted}` cannot be shown on this page ({why}). Choose a run from the list below.",
                icon=":material/info:")


def pick_run(label: str = "Run", only: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None,
             states: tuple[str, ...] = ("done",), key: str = "run_picker") -> RunDir | None:
    """A select box of runs (newest first) whose state is in `states` and, given `only(config, status)`,
    pass it. It starts on the active run (the URL's ?run=, else the session's), and the choice becomes
    the active run. A run the URL names that is gone, unknown or not shown here is said so, and nothing
    is chosen for the user: the page never switches run silently. Unreadable runs are flagged. Shows a
    hint and returns None when no run qualifies (or none is chosen yet)."""
    candidates, labels = [], {}
    every = list_runs(runs_root_path())  # every run, listed for display (a filter, not a match between runs)
    for run in every:
        if run.problem():
            continue
        try:
            config, status = load_config(run), run.status()
        except UserInputError:
            continue
        if status.get("state") in states and (only is None or only(config, status)):
            candidates.append(run)
            labels[run.run_id] = run_label(run, status)
    unreadable_note(every)
    ids = [run.run_id for run in candidates]
    wanted = active_run_id()
    if wanted and wanted not in ids:
        missing_run_note(wanted, every)
    if not candidates:
        st.info("No run to show here yet. Start one on the **Train** page (or the **Quick demo** on the Overview).")
        return None
    if key in st.session_state and st.session_state[key] not in ids:
        del st.session_state[key]  # the chosen run was deleted or no longer qualifies
    if wanted and wanted not in ids:
        index = None
    else:
        index = ids.index(wanted) if wanted in ids else 0
    chosen = st.selectbox(label, ids, index=index, format_func=labels.get, key=key,
                          placeholder="Choose a run")
    if chosen is None:
        return None
    set_active_run(chosen)
    return candidates[ids.index(chosen)]


def chart_config(name: str, run_id: str | None = None) -> dict[str, Any]:
    """The `config` of st.plotly_chart: the modebar's camera button saves the chart as a PNG named
    after it (and its run), drawn by plotly.js in the browser, so it works offline; at twice the
    screen's resolution, sharp enough for slides."""
    stem = "-".join(filter(None, ["backdoor-lab", name, run_id]))
    filename = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)
    return {"toImageButtonOptions": {"format": "png", "filename": filename, "scale": 2}, "displaylogo": False}


DOWNLOAD_ONLY = "ignore"  # st.download_button's on_click: download without rerunning the page (see report_download)


def report_download(run: RunDir, key: str, container: Any = None) -> None:
    """A button that downloads the run as one self-contained HTML report (cbd_core.report): settings,
    verdict and baseline, CA / ASR / RA, curves and weight histogram inline. The report is drawn only
    when the button is clicked, so the page pays nothing for it; an unfinished run's report says so.

    Every download button of the app passes on_click="ignore" (DOWNLOAD_ONLY): with Streamlit's default
    ("rerun") a click reruns the page, the rerun registers the report's deferred file under a new id and
    drops the old one, and a report clicked during that rerun (say right after "Download as zip") asks
    for an id that is gone: `MediaFileStorageError: Deferred file … not found`."""
    from cbd_core.report import html_report

    (container or st).download_button(
        "Download report (HTML)", data=lambda: html_report(RunDir(run.path)).encode("utf-8"),
        file_name=f"{run.run_id}.html", mime="text/html", key=key, icon=":material/description:",
        on_click=DOWNLOAD_ONLY,
        help="One HTML file with this run's settings, verdict, numbers and figures; opens offline in any browser.")


def set_active_run(run_id: str) -> None:
    st.session_state[ACTIVE_RUN] = run_id
    if st.query_params.get("run") != run_id:
        st.query_params["run"] = run_id


def enlarge(image: np.ndarray, size: int = 112) -> np.ndarray:
    """A uint8 (H, W, C) image scaled up with nearest neighbours to about `size` pixels (more in
    presentation mode), so the few pixels of a trigger stay sharp; single-channel images come back as
    (H', W')."""
    from .presentation import scaled

    image = np.asarray(image)
    factor = max(1, scaled(size) // max(image.shape[0], image.shape[1]))
    big = np.kron(image, np.ones((factor, factor, 1), dtype=image.dtype)) if image.ndim == 3 else \
        np.kron(image, np.ones((factor, factor), dtype=image.dtype))
    return big[..., 0] if big.ndim == 3 and big.shape[-1] == 1 else big


def defense_title(name: str | None) -> str:
    """How pages name a defense (its registry title; the raw name for one this version does not know)."""
    defense = defense_or_none(name)
    return defense.title if defense else str(name)


def model_view(defense_name: str | None, model: str) -> ModelView:
    """Title and what-to-look-for texts of one of a defense's models (a plain model's for unknown ones)."""
    defense = defense_or_none(defense_name)
    return defense.model_view(model) if defense else PLAIN_MODEL


def plot_order(names: Iterable[str], defense_name: str | None) -> list[str]:
    """Models in the order the run's defense declares them (`defenses.model_order`, e.g. CBD's
    backdoored f_B on the left), so maps, attributions and the Lesson never disagree on which side a
    model sits."""
    from cbd_core.defenses import model_order

    return model_order(defense_name, list(names))


def delivered_model(defense_name: str | None, names: list[str]) -> str | None:
    """Which of a run's models its defense hands over (the last shown, for a defense this version does
    not know)."""
    defense = defense_or_none(defense_name)
    return defense.delivered if defense else (names[-1] if names else None)


def class_name(class_names: list[str], c: Any) -> str:
    """Class `c`'s name; its number as text when the run names fewer classes (or none)."""
    c = int(c)
    return class_names[c] if 0 <= c < len(class_names) else str(c)


def phase_title(defense_name: str | None, phase: str | None) -> str:
    """How pages name one of a defense's training phases, e.g. CBD's "f_C" as "deconfounded f_C"."""
    defense = defense_or_none(defense_name)
    return defense.phase_title(phase) if defense else str(phase)


def non_finite_warning(values: Any, what: str) -> bool:
    """Warn when some of `values` (from a run file) are NaN or infinite, which the charts would silently
    drop, e.g. after a training that diverged or a damaged file. Returns True when none is finite, so
    the caller has nothing to draw and says no more."""
    values = np.asarray(values, dtype=np.float64)
    bad, total = int((~np.isfinite(values)).sum()), int(values.size)
    if bad == 0:
        return False
    nothing_left = bad == total
    st.warning(f"{bad:,} of {total:,} {what} are not numbers (NaN or infinite): the training diverged or the file is "
               "damaged, so " + ("there is nothing to draw." if nothing_left else "those are left out of the charts."),
               icon=":material/warning:")
    return nothing_left


def judging_defenses() -> str:
    """'CBD, ABL or NONE': the registered defenses that score individual samples, for hints."""
    from cbd_core.defenses import DEFENSES
    from cbd_core.text import either

    return either([d.title for d in DEFENSES.values() if d.suspicion_meaning])


def defending_defenses() -> str:
    """'CBD, ABL, NONE or ASD': every registered defense but the undefended baseline, in menu order."""
    from cbd_core.defenses import DEFENSES
    from cbd_core.text import either

    return either([d.title for name, d in DEFENSES.items() if name != verdicts.UNDEFENDED])


def glossary(*terms: str) -> None:
    """An expander defining the abbreviations this page uses (cbd_core.text.GLOSSARY, one definition
    each), so a student can look a term up without leaving the page."""
    from cbd_core.text import GLOSSARY

    with st.expander("What the abbreviations mean: " + ", ".join(terms), icon=":material/menu_book:"):
        st.markdown("\n".join(f"- **{term}**: {GLOSSARY[term]}" for term in terms))
