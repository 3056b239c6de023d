"""A run's life has one owner: the run store checks every state change against its transitions and
writes the owner, the claim and the cancel request itself."""

from __future__ import annotations

import os

import pytest

from cbd_core.runs import (CANCEL_FILE, CLAIM_FILE, FINISHED, TRANSITIONS, IllegalTransition, RunDir, RunState,
                           can_move, owner_record)

CONFIG = {"dataset": "mnist5k", "attack": "badnets", "defense": "cbd"}


def test_the_transitions_are_the_documented_ones():
    assert set(TRANSITIONS) == set(RunState)
    assert TRANSITIONS[RunState.QUEUED] == {RunState.RUNNING, RunState.CANCELLED, RunState.FAILED}
    assert TRANSITIONS[RunState.RUNNING] == {RunState.DONE, RunState.FAILED, RunState.CANCELLED}
    assert all(not TRANSITIONS[state] for state in FINISHED)  # a finished run never changes again
    assert RunState.DONE == "done" and can_move("queued", "queued") and not can_move("done", "running")


@pytest.mark.parametrize("start, wanted", [("done", "running"), ("failed", "done"), ("cancelled", "queued"),
                                           ("queued", "done"), ("running", "queued"), ("done", "failed")])
def test_an_illegal_transition_raises_and_writes_nothing(tmp_path, start, wanted):
    run = RunDir.create(tmp_path, CONFIG, state=start)
    before = (run.path / "status.json").read_bytes()
    with pytest.raises(IllegalTransition, match=f"from {start} to {wanted}"):
        run.set_state(wanted)
    with pytest.raises(IllegalTransition):  # the low-level writer checks too: there is no way around it
        run.update_status(state=wanted)
    assert (run.path / "status.json").read_bytes() == before


def test_a_run_lives_queued_running_done_with_one_owner(tmp_path):
    run = RunDir.create(tmp_path, CONFIG)
    assert run.state() == RunState.QUEUED and run.owner() is None
    assert run.claim() and not run.claim()  # taken once
    assert (run.path / CLAIM_FILE).read_text() == str(os.getpid()) and run.claimer()[0] == os.getpid()
    owner = owner_record("worker", device="cpu", slot=0)
    status = run.start(owner)
    assert status["state"] == "running" and status["owner"] == owner and status["started"]
    assert run.finish("done", seconds=1.0) and not run.finish("done")  # the second is no move: nothing written
    status = run.status()
    assert status["state"] == "done" and status["finished"] and status["owner"] == owner
    with pytest.raises(IllegalTransition):
        run.start(owner)


def test_a_run_born_running_carries_its_owner(tmp_path):
    owner = owner_record("cli")
    run = RunDir.create(tmp_path, CONFIG, state="running", owner=owner)
    assert run.status()["owner"] == owner and run.status()["started"]


def test_the_legacy_worker_field_reads_as_a_worker_owner(tmp_path):
    run = RunDir.create(tmp_path, CONFIG, state="running", worker={"device": "cpu", "slot": 1, "pid": 12})
    assert run.owner() == {"kind": "worker", "device": "cpu", "slot": 1, "pid": 12}


def test_cancel_a_queued_run_at_once_and_a_running_one_at_its_next_batch(tmp_path):
    queued = RunDir.create(tmp_path, CONFIG)
    assert queued.request_cancel() == "queued"
    assert queued.state() == RunState.CANCELLED and queued.is_claimed()  # no worker may take it now
    assert queued.request_cancel() == "cancelled"
    running = RunDir.create(tmp_path, CONFIG, state="running", owner=owner_record("cli"))
    assert not running.cancel_requested()
    assert running.request_cancel() == "running" and running.cancel_requested()
    assert (running.path / CANCEL_FILE).exists() and running.state() == RunState.RUNNING
