"""A run's state while it waits or trains, drawn the same way on every page that follows one (Train's
live panel, the Lesson while its preset pair trains): state, device, place in the queue or phase,
the progress bar with the defense's own phase names, why a queued run waits (what the worker is doing),
and elapsed time with an estimate of what is left (cbd_core.timing).

    run_progress(run, status, config, metrics)   the whole block for one run
    waiting_note(status)                          why a queued run waits
    timing_line(run, status, config, metrics)     elapsed, and about how long is left
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from cbd_core import jobs
from cbd_core.runs import FINISHED, RunDir
from cbd_core.timing import duration_text, run_timing, seconds_between, similar_durations
from pages.common import literal, phase_title, runs_root_path


def waiting_note(status: dict[str, Any]) -> None:
    """Why a queued run waits, from what its device's worker is doing (none, starting, busy, idle)."""
    device = status.get("queue") or "cpu"
    if device == jobs.RAY_QUEUE:
        st.info("Queued on the Ray cluster: a node takes it as soon as it has the CPUs (and GPU share) this run "
                "asks for; its progress shows here.", icon=":material/schedule:")
        return
    worker = jobs.worker_state(runs_root_path(), device)
    failure = jobs.start_failures(runs_root_path()).get(device) if worker.state == "none" else None
    if failure:
        st.error(f"The background worker could not start: {literal(failure)}. This run stays queued; free the "
                 "problem (disk space, permissions) and the next page view tries again.", icon=":material/error:")
    elif worker.state == "none":
        st.info("Starting the background worker… It loads Python and PyTorch before it takes this run; this "
                "takes a few seconds (longer on a busy machine).", icon=":material/hourglass_top:")
    elif worker.state == "starting":
        st.info("Starting the background worker… it is loading Python and PyTorch and takes this run as soon as "
                "it is ready.", icon=":material/hourglass_top:")
    elif worker.task == "training":
        st.info(f"The worker is training run `{worker.run_id}` first; this run follows in queue order.",
                icon=":material/schedule:")
    elif worker.task == "mapping":
        which = f"run `{worker.run_id}`" if worker.run_id else "a finished run"
        st.info(f"The worker is computing the maps and attribution shares of {which} (so its pages open at "
                "once) and takes this run right after; the first map after a restart takes longer while its code "
                "compiles.", icon=":material/schedule:")
    else:
        st.info("The worker is ready and takes this run in a moment.", icon=":material/schedule:")


@st.cache_data(show_spinner=False, ttl=30, max_entries=64)
def similar_run_durations(root: str, config_json: str, device: str) -> list[float]:
    """How long finished runs like this one took: they do not change while it trains, so a live panel
    (redrawn every second) reads the runs root for them at most every 30 s, not on every redraw."""
    return similar_durations(json.loads(config_json), device, root)


def timing_line(run: RunDir, status: dict[str, Any], config: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    """Elapsed time and, while it trains, about how long is left and what that estimate rests on (from the
    config and metrics the caller has already read)."""
    state = status.get("state")
    if state == "queued":
        waited = seconds_between(status.get("created"))
        if waited is not None:
            st.caption(f":material/timer: Waiting for {duration_text(waited)}.")
        return
    durations = None
    if state == "running":
        durations = similar_run_durations(str(run.path.parent), json.dumps(config, sort_keys=True),
                                          str(status.get("device") or status.get("queue")))
    timing = run_timing(run, status, durations=durations, config=config, metrics=metrics)
    if timing.elapsed is None:
        return
    if state == "done":
        st.caption(f":material/timer: Took {duration_text(timing.elapsed)} to train.")
    elif state in FINISHED:
        st.caption(f":material/timer: Ran for {duration_text(timing.elapsed)} before it stopped.")
    elif timing.remaining is None:
        st.caption(f":material/timer: Elapsed {duration_text(timing.elapsed)} · {timing.basis}.")
    else:
        st.caption(f":material/timer: Elapsed {duration_text(timing.elapsed)} · about "
                   f"{duration_text(timing.remaining)} left, {timing.basis}.")


def run_progress(run: RunDir, status: dict[str, Any], config: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    """State, device, place in queue or phase, the progress bar, why it waits and the timing line."""
    state = status.get("state", "?")
    c1, c2, c3 = st.columns(3)
    c1.metric("state", state)
    c2.metric("device", status.get("device") or status.get("queue", "?"))
    progress = status.get("progress") or {}
    phase = phase_title(config.get("defense"), progress.get("phase")) if progress.get("phase") else None
    if state == "queued":
        position = jobs.queue_position(run)
        c3.metric("place in queue", position if position is not None else "starting")
        waiting_note(status)
    elif state == "done":
        c3.metric("phase", "done")
        st.progress(1.0, text="done: every stage trained, the model saved and scored")
    elif state in FINISHED:
        c3.metric("phase", f"stopped in {phase}" if phase else "stopped")
    elif progress:
        c3.metric("phase", phase)
        epoch = max(1, int(progress.get("epoch") or 0))
        st.progress(float(progress.get("fraction", 0.0)), text=f"{phase}: epoch {epoch} of {progress.get('epochs')}")
    else:
        c3.metric("phase", "preparing")
        st.caption(":material/hourglass_top: Loading the data, applying the trigger and building the models; the "
                   "first epoch starts in a moment.")
    timing_line(run, status, config, metrics)
