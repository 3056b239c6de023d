"""Runs: every run in the runs root with its state, settings and results; make one the active run,
cancel it, download it as a zip, or delete it (with confirmation).

Deleting and cancelling are the only writes a page makes, and both go through `cbd_core`: a page
never edits a run's files.
"""

from __future__ import annotations

import pages.warm  # noqa: F401  first: every heavy import, once per process (see pages/warm)
from typing import Any

import streamlit as st

from cbd_core import jobs, verdicts
from cbd_core.data import data_source, dataset_labels
from cbd_core.runs import FINISHED, ODD_NAME_PROBLEM, RunDir, list_runs, odd_run_folders
from pages.common import (ACTIVE_RUN, DOWNLOAD_ONLY, active_run_id, defense_title, literal, load_baseline,
                          load_config, load_summary, missing_run_note, page_errors, report_download, run_label, runs_root_path,
                          set_active_run, unreadable_note, verdict_banner)
from pages.common.navigation import follow_app_navigation

follow_app_navigation()


def row(run: RunDir, positions: dict[str, int]) -> dict[str, Any]:
    """One table row (`positions`: places in the queue); a half-written or hand-edited folder becomes
    a row that says so."""
    problem = run.problem()
    if problem:
        return {"state": problem, "run": run.run_id}
    try:
        config = load_config(run)
    except Exception as err:
        return {"state": f"unreadable ({err})", "run": run.run_id}
    status = run.status()
    summary = load_summary(run) or {}
    state = jobs.status_line(status)
    if status.get("state") == "queued":
        position = positions.get(run.run_id)
        state = f"queued (#{position})" if position else "queued"
    return {
        "state": state, "verdict": verdicts.verdict(summary, load_baseline(run).summary) if status.get("state") == "done" else "",
        "defense": defense_title(config.get("defense")),
        "attack": config.get("attack"), "poison rate": _percent(config.get("poison_rate")),
        "dataset": data_source(config),  # named by `table`, which sees every run's data
        "seed": config.get("seed"), "clean accuracy": summary.get("clean_accuracy"),
        "attack success rate": summary.get("attack_success_rate"), "robust accuracy": summary.get("robust_accuracy"),
        "seconds": summary.get("seconds") or status.get("seconds"), "created": status.get("created"),
        "run": run.run_id,  # last: the long id would push the figures off screen
    }


def _percent(fraction: Any) -> float | None:
    """A fraction as percent, so the poison rate reads as on the Train page (10 %, never 0.10)."""
    return round(100 * float(fraction), 4) if isinstance(fraction, (int, float)) else None


@st.cache_data(show_spinner=False, max_entries=4)
def zipped(path: str, finished: str) -> bytes:
    """The run as a zip; cached by the time it finished, so each finished run is zipped once."""
    from pathlib import Path

    return RunDir(Path(path)).zip_bytes()


def table() -> None:
    fraction = st.column_config.NumberColumn(format="%.3f")
    root = runs_root_path()
    positions = jobs.queue_positions(root)
    odd = [{"state": ODD_NAME_PROBLEM, "run": name} for name in odd_run_folders(root)]  # escaped: every character shows
    rows = [row(run, positions) for run in list_runs(root)]  # every run, listed for display
    labels = dataset_labels(r["dataset"] for r in rows if "dataset" in r)
    for r in rows:
        if "dataset" in r:
            r["dataset"] = labels[r["dataset"]]
    st.dataframe(rows + odd, hide_index=True, width="stretch",
                 column_config={"clean accuracy": fraction, "attack success rate": fraction,
                                "robust accuracy": fraction,
                                "poison rate": st.column_config.NumberColumn(
                                    format="%g %%", help="percent of the training set poisoned"),
                                "seconds": st.column_config.NumberColumn(format="%.0f")})


def workers_line() -> None:
    alive = [w for w in jobs.workers(runs_root_path()) if w.alive]
    if alive:
        st.caption("Background workers: " + ", ".join(
            f"{w.device} #{w.slot} ({'training ' + w.current_run if w.current_run else 'idle'})" for w in alive))
    else:
        st.caption("No background worker is running; one starts when a run is queued.")
    for device, failure in sorted(jobs.start_failures(runs_root_path()).items()):
        if not any(w.device == device for w in alive):
            st.error(f"The {device} worker could not start: {literal(failure)}. Queued runs wait until it can; the next "
                     "page view tries again.", icon=":material/error:")


def delete_controls(run: RunDir) -> None:
    confirm = st.checkbox("Yes, delete this run for good", key=f"confirm_delete_{run.run_id}")
    if st.button("Delete run", disabled=not confirm, type="primary" if confirm else "secondary"):
        run.delete()  # refuses a run whose process is still training it
        if st.session_state.get(ACTIVE_RUN) == run.run_id:
            st.session_state.pop(ACTIVE_RUN, None)
            st.query_params.pop("run", None)
        st.toast(f"Deleted {run.run_id}.")
        st.rerun()


def unreadable_details(run: RunDir, problem: str) -> None:
    """A damaged folder: what is wrong, and a way to remove it (nothing else reads it)."""
    st.markdown(f"**{literal(run.run_id)}**")
    st.error(f"This run folder cannot be read: {literal(problem.removeprefix('unreadable: '))}. The other runs are not "
             "affected. Fix the file by hand, or delete the run.", icon=":material/report:")
    if run.status().get("state") in ("queued", "running") and run.owner_alive() is not False:
        st.caption("It is still training; cancel it before deleting it.")
    else:
        delete_controls(run)


def details(run: RunDir) -> None:
    problem = run.problem()
    if problem:
        unreadable_details(run, problem)
        return
    status = run.status()
    state = status.get("state")
    st.markdown(f"**{literal(run_label(run))}**")
    verdict_banner(run, status)
    c1, c2, c3, c4 = st.columns(4)
    if c1.button("Make this the active run", help="the other pages open on the active run"):
        set_active_run(run.run_id)
        st.toast("Active run set.")
    if state in ("queued", "running") and c2.button("Cancel run"):
        jobs.request_cancel(run)
        st.toast("Cancelled." if state == "queued" else "Cancelling at the next batch…")
    if state in FINISHED:
        c2.download_button("Download as zip", zipped(str(run.path), str(status.get("finished"))),
                           file_name=f"{run.run_id}.zip", mime="application/zip", on_click=DOWNLOAD_ONLY)
    report_download(run, f"report_{run.run_id}", c3)
    with c4:
        if state in FINISHED:
            delete_controls(run)
        else:
            st.caption("Cancel a run before deleting it.")
    owner = status.get("owner") if isinstance(status.get("owner"), dict) else None
    if owner and state in ("queued", "running"):
        st.caption(f"Trained by the {literal(owner.get('kind', '?'))} process {literal(owner.get('pid'))} on "
                   f"{literal(owner.get('host'))} since {literal(owner.get('started'))}; Cancel stops it at its next batch.")
    if status.get("error"):
        st.error(f"Error: {literal(status['error'])}")
    with st.expander("Settings (config.json)"):
        st.json(load_config(run))
    with st.expander("Status (status.json)"):
        st.json(status)
    summary = load_summary(run)
    if summary:
        with st.expander("Summary (summary.json)"):
            st.json(summary)


st.title("Runs")
st.write("Every run in the runs root, newest first. Training happens in a background worker, so this list "
         "is the same in every browser tab.")

with page_errors():
    st.caption(f"Runs root: `{runs_root_path()}`")
    workers_line()
    runs = list_runs(runs_root_path())  # every run, listed for display
    if not runs:
        st.info("No runs yet. Start one on the **Train** page, or press **Quick demo** on the Overview.")
        unreadable_note([])  # folders whose name is no run id are still named
    else:
        busy = any(run.status().get("state") in ("queued", "running") for run in runs)
        # While something trains, the table refreshes itself every 2 s (states, places in the queue).
        st.fragment(table, run_every=2.0 if busy else None)()
        st.caption("Clean accuracy: share of untouched test images classified right. Attack success rate: share of "
                   "triggered test images sent to the attacker's label (lower is better for a defense). Verdict: "
                   + verdicts.legend() + ".")
        by_id = {run.run_id: run for run in runs}
        labels = {run.run_id: run_label(run) for run in runs}
        ids, wanted = list(by_id), active_run_id()
        if wanted and wanted not in ids:
            missing_run_note(wanted, runs)
        if st.session_state.get("runs_page_choice") not in (None, *ids):
            del st.session_state["runs_page_choice"]  # deleted meanwhile (here or in another session)
        index = None if wanted and wanted not in ids else (ids.index(wanted) if wanted in ids else 0)
        chosen = st.selectbox("Run", ids, index=index, format_func=labels.get, key="runs_page_choice",
                              placeholder="Choose a run")
        if chosen is not None:
            details(by_id[chosen])
