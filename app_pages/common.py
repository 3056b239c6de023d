"""What every page shares: the runs root, choosing the active run, cached reads of run files, and
turning errors into a message in the page instead of a traceback.

Pages import it as `from app_pages.common import ...` (the app's folder is on sys.path). Nothing here
trains or writes into a run; reads are cached by run id and file modification time, so a page over a
finished run renders instantly after its first visit, and a run that changes is read again.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import streamlit as st

from cbd_core import verdicts
from cbd_core.errors import UserInputError
from cbd_core.runs import RunDir, list_runs, runs_root

log = logging.getLogger("backdoor_lab")

# Session-state key of the active run; the URL's ?run= mirrors it so a link opens the same view.
ACTIVE_RUN = "active_run"


def runs_root_path() -> Path:
    """The runs root: $BACKDOOR_LAB_RUNS, else ./runs."""
    return runs_root()


@contextlib.contextmanager
def page_errors() -> Iterator[None]:
    """Show bad input as its own one-line message and a bug as a short notice, never a traceback;
    the rest of the app keeps working. Streamlit's own control-flow exceptions pass through."""
    try:
        yield
    except UserInputError as err:
        st.error(str(err))
    except Exception as err:
        if type(err).__module__.startswith("streamlit"):  # st.stop(), st.rerun(), page switches
            raise
        log.exception("page error")
        st.error(f"Something went wrong while drawing this part of the page ({type(err).__name__}: {err}). "
                 "The run itself is untouched; other pages still work.")


def explain(text: str, summary: dict[str, Any] | None = None, with_reason: bool = True) -> None:
    """The one plain sentence beside a chart saying what to look for; given the run's `summary`, it
    goes on with what happened in that run (`verdicts.outcome_note`: removed, or why the defense failed),
    so no caption reads as a success on a run whose backdoor got through."""
    note = verdicts.outcome_note(summary, with_reason) if summary else ""
    st.caption(f"**What to look for:** {text}" + (f" {note}" if note else ""))


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


@st.cache_data(show_spinner=False, max_entries=256)
def _read_json_cached(path: str, mtime: int) -> Any:
    import json

    return json.loads(Path(path).read_text())


def load_config(run: RunDir) -> dict[str, Any]:
    """The run's config.json (cached)."""
    path = run.path / "config.json"
    try:
        return _read_json_cached(str(path), _mtime(path))
    except FileNotFoundError:
        raise UserInputError(f"run {run.run_id} was deleted", "run") from None
    except ValueError:
        raise UserInputError(f"run {run.run_id}: config.json is unreadable", "run") from None


def load_summary(run: RunDir) -> dict[str, Any] | None:
    """The run's summary.json (cached), or None before it finishes."""
    path = run.path / "summary.json"
    try:
        return _read_json_cached(str(path), _mtime(path))
    except (FileNotFoundError, ValueError):
        return None


def _runs_stamp(root: Path) -> tuple[tuple[str, int], ...]:
    """Each run folder's id and its status.json's modification time: it changes whenever a run is
    created, deleted or changes state (a baseline's summary is written before its status says done)."""
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return ()
    return tuple((p.name, _mtime(p / "status.json")) for p in folders)


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
    return _baseline_cached(str(root), json.dumps(config, sort_keys=True), _runs_stamp(root))


BANNERS = {verdicts.REMOVED: (st.success, ":material/check_circle:"),
           verdicts.WEAKENED: (st.warning, ":material/warning:"),
           verdicts.PERSISTS: (st.error, ":material/dangerous:"),
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


@st.cache_data(show_spinner=False, max_entries=64)
def _read_npz_cached(path: str, mtime: int) -> dict[str, np.ndarray]:
    from cbd_core.runs import read_npz

    return read_npz(Path(path))


def load_arrays(run: RunDir, name: str) -> dict[str, np.ndarray] | None:
    """Arrays of the run's `<name>.npz` (sample_weights, embeddings, images, umap), cached; None when
    absent. A corrupt file is a UserInputError naming it."""
    path = run.path / f"{name}.npz"
    if not path.is_file():
        return None
    try:
        return _read_npz_cached(str(path), _mtime(path))
    except Exception as err:
        raise UserInputError(f"run {run.run_id}: {name}.npz is unreadable ({type(err).__name__})", "run") from None


@st.cache_resource(show_spinner=False, max_entries=16)
def _models_cached(path: str, mtime: int) -> dict[str, Any]:
    from cbd_core.analysis import load_models as load

    return load(RunDir(Path(path)))


def load_models(run: RunDir) -> dict[str, Any]:
    """The run's trained models by name (f_C first, f_B after; or `model`), CPU, eval mode, cached.
    Treat them as read-only: they are shared by every session."""
    return _models_cached(str(run.path), _mtime(run.path / "summary.json"))


def active_run_id() -> str | None:
    """The active run's id: the URL's ?run=, else this session's choice."""
    return st.query_params.get("run") or st.session_state.get(ACTIVE_RUN)


def run_label(run: RunDir, status: dict[str, Any] | None = None) -> str:
    """One line naming a run: defense, attack, rate, seed, state and id (give `status` if already read)."""
    try:
        config = load_config(run)
    except UserInputError:
        return f"{run.run_id} (unreadable)"
    state = (status or run.status()).get("state", "?")
    return (f"{config.get('defense')} · {config.get('attack')} {float(config.get('poison_rate', 0)):.0%} · "
            f"{config.get('dataset')} · seed {config.get('seed')} · {state} · {run.run_id}")


def pick_run(label: str = "Run", only: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None,
             states: tuple[str, ...] = ("done",), key: str = "run_picker") -> RunDir | None:
    """A select box of runs (newest first) whose state is in `states` and, given `only(config, status)`,
    pass it. It starts on the active run (the URL's ?run=, else the session's), and the choice becomes
    the active run. Shows a hint and returns None when no run qualifies."""
    candidates, labels = [], {}
    for run in list_runs(runs_root_path()):
        try:
            config, status = load_config(run), run.status()
        except UserInputError:
            continue
        if status.get("state") in states and (only is None or only(config, status)):
            candidates.append(run)
            labels[run.run_id] = run_label(run, status)
    if not candidates:
        st.info("No run to show here yet. Start one on the **Train** page (or the **Quick demo** on the Overview).")
        return None
    ids = [run.run_id for run in candidates]
    wanted = active_run_id()
    if key in st.session_state and st.session_state[key] not in ids:
        del st.session_state[key]  # the chosen run was deleted or no longer qualifies
    index = ids.index(wanted) if wanted in ids else 0
    chosen = st.selectbox(label, ids, index=index, format_func=labels.get, key=key)
    set_active_run(chosen)
    return candidates[ids.index(chosen)]


def set_active_run(run_id: str) -> None:
    st.session_state[ACTIVE_RUN] = run_id
    if st.query_params.get("run") != run_id:
        st.query_params["run"] = run_id


def enlarge(image: np.ndarray, size: int = 112) -> np.ndarray:
    """A uint8 (H, W, C) image scaled up with nearest neighbours to about `size` pixels, so the few
    pixels of a trigger stay sharp; single-channel images come back as (H', W')."""
    image = np.asarray(image)
    factor = max(1, size // max(image.shape[0], image.shape[1]))
    big = np.kron(image, np.ones((factor, factor, 1), dtype=image.dtype)) if image.ndim == 3 else \
        np.kron(image, np.ones((factor, factor), dtype=image.dtype))
    return big[..., 0] if big.ndim == 3 and big.shape[-1] == 1 else big


DEFENSE_TITLES = {"undefended": "Undefended", "cbd": "CBD", "abl": "ABL", "nonlinearity": "NONE"}
