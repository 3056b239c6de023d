"""Where a finished run's maps stand (`run_analysis.map_progress`), read from run folders written by hand:
a "computing" whose process is gone is interrupted, not computing for ever, and each map says who computes
it (the background worker, or a Ray-trained run's own task). No training here."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from cbd_core.jobs.run_analysis import (COMPUTING, DONE, FAILED, INTERRUPTED, NOTE_FAILED, NOTE_STALLED,
                                        NOTE_UNDER_WAY, PENDING, STALE_AFTER_S, analyser, map_note_text, map_progress)
from cbd_core.runs import RunDir, owner_record
from conftest import fast_config


def done_run(root, **status) -> RunDir:
    return RunDir.create(root, fast_config().to_dict(), state="done", **status)


def hours_ago(hours: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(hours=hours)).isoformat(timespec="seconds")


def worker_record(pid: int, **fields) -> dict:
    return {**owner_record("worker", device="cpu", slot=0), "pid": pid, **fields}


def test_a_map_whose_process_died_is_interrupted(tmp_path, dead_pid):
    run = done_run(tmp_path, analysis="computing", analysis_by=worker_record(dead_pid))
    progress = map_progress(run, "analysis")
    assert progress.state == INTERRUPTED and progress.by == "the background worker"
    assert f"pid {dead_pid}" in progress.reason


def test_a_map_whose_process_lives_is_computing(tmp_path):
    # The test's parent process: alive, started before the record was written.
    run = done_run(tmp_path, analysis="computing", analysis_by=worker_record(os.getppid()))
    assert map_progress(run, "analysis") == map_progress(run, "analysis", idle_here=True)
    assert map_progress(run, "analysis").state == COMPUTING


def test_a_pid_reused_by_a_later_process_does_not_keep_a_map_computing(tmp_path):
    # The record says its process began in 2001; the live process with that pid (this one) began later.
    run = done_run(tmp_path, analysis="computing", analysis_by=worker_record(os.getpid(), started=hours_ago(200_000)))
    assert map_progress(run, "analysis").state == INTERRUPTED


def test_a_map_of_this_very_process_is_left_over_when_it_computes_nothing(tmp_path):
    """A step whose "failed" the full disk refused leaves "computing" under a live worker: the worker, between
    runs, knows it is not computing it."""
    run = done_run(tmp_path, analysis="computing", analysis_by=worker_record(os.getpid()))
    assert map_progress(run, "analysis").state == COMPUTING  # a page cannot tell
    assert map_progress(run, "analysis", idle_here=True).state == INTERRUPTED


def test_another_hosts_map_is_interrupted_only_after_the_age_limit(tmp_path):
    ray = {"kind": "ray", "node": "abc", "pid": 12345, "host": "node-7"}
    recent = done_run(tmp_path, owner={**ray, "started": hours_ago(1)}, analysis="computing",
                      analysis_by={**ray, "started": hours_ago(0.1)})
    assert map_progress(recent, "analysis") == map_progress(recent, "analysis", idle_here=True)
    assert map_progress(recent, "analysis").state == COMPUTING
    stale = done_run(tmp_path, owner={**ray, "started": hours_ago(4)}, analysis="computing",
                     analysis_by={**ray, "started": hours_ago(STALE_AFTER_S / 3600 + 1)})
    progress = map_progress(stale, "analysis")
    assert progress.state == INTERRUPTED and "node-7" in progress.reason
    assert progress.by == "the run's task on the Ray cluster (on node-7)"


def test_a_computing_that_names_no_process_counts_by_its_age(tmp_path):
    """Statuses written before `<field>_by` existed: interrupted once status.json is old."""
    run = done_run(tmp_path, epoch_analysis="computing")
    assert map_progress(run, "epoch_analysis").state == COMPUTING
    old = datetime.now().timestamp() - STALE_AFTER_S - 60
    os.utime(run.path / "status.json", (old, old))
    assert map_progress(run, "epoch_analysis").state == INTERRUPTED


def test_who_computes_a_map_is_read_from_the_status(tmp_path, dead_pid):
    # A Ray run whose task is alive (here: this machine's parent process) maps it right after training.
    ray_owner = {**owner_record("ray", node="abc"), "pid": os.getppid()}
    ray_run = done_run(tmp_path, owner=ray_owner, finished=hours_ago(0))
    assert map_progress(ray_run, "analysis") == MapProgressLike(PENDING, "the run's task on the Ray cluster")
    # ... unless its task is gone: then the local worker's backfill does.
    gone = done_run(tmp_path, owner={**ray_owner, "pid": dead_pid}, finished=hours_ago(0))
    assert map_progress(gone, "analysis") == MapProgressLike(PENDING, "the background worker")
    cli_run = done_run(tmp_path, owner=owner_record("cli"))
    assert map_progress(cli_run, "analysis") == MapProgressLike(PENDING, "the background worker")
    failed = done_run(tmp_path, owner=ray_owner, analysis="failed", analysis_error="ValueError: no features",
                      analysis_by={**ray_owner, "pid": dead_pid})
    assert map_progress(failed, "analysis") == MapProgressLike(FAILED, "the run's task on the Ray cluster",
                                                              "ValueError: no features")
    # Maps recorded before `<field>_by` existed: a Ray run's task made them, else the worker.
    assert map_progress(done_run(tmp_path, owner=ray_owner, analysis="done"), "analysis").state == DONE
    assert "Ray cluster" in map_progress(done_run(tmp_path, owner=ray_owner, analysis="done"), "analysis").by
    assert analyser(None) == analyser(owner_record("worker")) == "the background worker"


def test_the_record_of_who_computes_a_map_is_its_by_else_whoever_trained_the_run(tmp_path):
    """The one reading of `<field>_by` (the worker state asks it which run a worker maps): the record names
    the process; statuses written before it existed name whoever trained the run, a worker or a Ray task,
    while a CLI run's maps are a worker's backfill, whichever (None)."""
    trainer = {**owner_record("worker", device="cpu", slot=0), "pid": os.getppid()}
    mapper = {**owner_record("worker", device="cpu", slot=1), "pid": os.getppid()}
    assert map_progress(done_run(tmp_path, owner=trainer, analysis="computing", analysis_by=mapper),
                        "analysis").record == mapper
    assert map_progress(done_run(tmp_path, owner=trainer, analysis="computing"), "analysis").record == trainer
    assert map_progress(done_run(tmp_path, worker={"device": "cpu", "slot": 0, "pid": 7}, analysis="done"),
                        "analysis").record == {"kind": "worker", "device": "cpu", "slot": 0, "pid": 7}  # older runs
    assert map_progress(done_run(tmp_path, owner=owner_record("cli"), analysis="computing"), "analysis").record is None
    assert map_progress(done_run(tmp_path, owner=owner_record("cli")), "analysis").record is None


def test_what_a_page_says_of_a_map_it_cannot_show(tmp_path, dead_pid):
    """One wording for the Embeddings, Lesson and Explorer pages: who is computing it, or that it stopped or
    failed, and whether a worker runs to compute it again."""
    ray = {**owner_record("ray", node="abc"), "pid": os.getppid(), "host": "node-7"}
    computing = map_progress(done_run(tmp_path, owner=ray, analysis="computing", analysis_by=ray), "analysis")
    assert map_note_text(computing, "analysis", "this run's maps", worker_running=False) == (
        NOTE_UNDER_WAY, "The run's task on the Ray cluster (on node-7) is computing this run's maps (UMAP takes from "
                        "a few seconds to about half a minute).")
    stopped = map_progress(done_run(tmp_path, analysis="computing", analysis_by=worker_record(dead_pid)), "analysis")
    tone, text = map_note_text(stopped, "epoch_analysis", "the epoch maps", worker_running=True)
    assert tone == NOTE_STALLED and text == (f"The background worker stopped before finishing the epoch maps: its "
                                             f"process, pid {dead_pid}, has stopped. The background worker computes "
                                             "it again.")
    assert "No background worker is running to compute it again" in map_note_text(stopped, "analysis", "x", False)[1]
    waiting = map_progress(done_run(tmp_path, owner=owner_record("cli")), "analysis")
    assert map_note_text(waiting, "analysis", "this run's map", worker_running=False) == (
        NOTE_STALLED, "No background worker is running to compute this run's map; it starts with the app (reload "
                      "the page in a moment).")
    assert map_note_text(waiting, "analysis", "this run's map", worker_running=True)[0] == NOTE_UNDER_WAY
    failed = map_progress(done_run(tmp_path, analysis="failed", analysis_error="ValueError: no features"), "analysis")
    assert map_note_text(failed, "analysis", "this run's map", worker_running=True) == (
        NOTE_FAILED, "The background worker could not compute this run's map: ValueError: no features")
    done = map_progress(done_run(tmp_path, analysis="done"), "analysis")  # yet the page cannot read its file
    assert map_note_text(done, "analysis", "this run's map", worker_running=True)[0] == NOTE_FAILED


class MapProgressLike:
    """Compares with a MapProgress by state, the start of `by` (the host it names varies) and reason."""

    def __init__(self, state: str, by: str, reason: str | None = None):
        self.state, self.by, self.reason = state, by, reason

    def __eq__(self, other) -> bool:
        return (other.state, other.reason) == (self.state, self.reason) and other.by.startswith(self.by)

    def __repr__(self) -> str:
        return f"MapProgressLike({self.state!r}, {self.by!r}, {self.reason!r})"
