"""Background jobs: the queue in the runs root, workers that claim runs once, cancel, recovery after a
worker dies, and one real worker process end to end."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

import cbd_core.jobs as jobs
from conftest import fast_config, rewrite_status
from cbd_core.config import quick_demo_config
from cbd_core.errors import UserInputError
from cbd_core.runs import RunDir, list_runs, wait_for

def _config(**overrides):
    return fast_config(**overrides)


@pytest.fixture
def fake_analysis(monkeypatch):
    """The worker's UMAP step replaced by a quick stand-in that records which runs it saw."""
    import cbd_core.analysis.attributions as attributions
    import cbd_core.analysis.embeddings as embeddings

    seen = []

    def compute(run):
        seen.append(run.run_id)
        run.save_arrays("umap", index=np.arange(3))
        return {"total": 0.0}

    def compute_epochs(run):
        seen.append(f"epochs {run.run_id}")
        run.save_arrays("umap_epochs", index=np.arange(3))
        return {"total": 0.0}

    monkeypatch.setattr(embeddings, "compute_umap", compute)
    monkeypatch.setattr(embeddings, "compute_epoch_umap", compute_epochs)
    monkeypatch.setattr(embeddings, "warm_up", lambda: None)
    monkeypatch.setattr(embeddings, "configure_numba_cache", lambda folder=None: None)
    monkeypatch.setattr(attributions, "compute_trigger_shares", lambda run: seen.append(f"shares {run.run_id}"))
    monkeypatch.setattr(attributions, "compute_attribution_views", lambda run: seen.append(f"views {run.run_id}"))
    return seen


def test_submit_validates_and_queues(tmp_path, patch_dataset):
    patch_dataset(300, 100)
    with pytest.raises(UserInputError, match="poison_rate"):
        jobs.submit(_config(poison_rate=0.9), tmp_path, start_worker=False)
    assert list_runs(tmp_path) == []  # nothing written for bad input
    first = jobs.submit(_config(), tmp_path, start_worker=False)
    second = jobs.submit(_config(seed=1), tmp_path, start_worker=False)
    assert first.status()["state"] == "queued" and first.status()["queue"] == "cpu"
    assert first.config()["defense_params"]["epochs"] == 1  # the validated, resolved config is stored
    assert [r.run_id for r in jobs.queued_runs(tmp_path)] == [first.run_id, second.run_id]
    assert jobs.queue_position(first) == 1 and jobs.queue_position(second) == 2


def test_worker_trains_the_queue_in_order(tmp_path, patch_dataset, fake_analysis):
    patch_dataset(300, 100)
    runs = [jobs.submit(_config(seed=s), tmp_path, start_worker=False) for s in (0, 1)]
    cancelled = jobs.submit(_config(seed=2), tmp_path, start_worker=False)
    assert jobs.request_cancel(cancelled) == "queued"
    assert cancelled.status()["state"] == "cancelled"

    trained = jobs.Worker(tmp_path, "cpu").serve(exit_when_idle=True)
    assert trained == 2
    for run in runs:
        status = run.status()
        assert status["state"] == "done", status
        assert status["owner"]["kind"] == "worker" and status["owner"]["device"] == "cpu"
        assert "worker" not in status  # the owner is recorded once
        assert status["progress"]["fraction"] == 1.0
        assert status["analysis"] == "done"
        assert run.summary()["run_id"] == run.run_id and run.model_names() == ["model"]
    assert runs[0].status()["started"] <= runs[1].status()["started"]
    assert fake_analysis == [runs[0].run_id, f"epochs {runs[0].run_id}", f"shares {runs[0].run_id}",
                             f"views {runs[0].run_id}", runs[1].run_id, f"epochs {runs[1].run_id}",
                             f"shares {runs[1].run_id}", f"views {runs[1].run_id}"]
    assert all(run.status()["epoch_analysis"] == "done" for run in runs)
    assert cancelled.summary() is None and cancelled.metrics() == []


def test_worker_backfills_maps_of_finished_runs(tmp_path, patch_dataset, fake_analysis):
    from cbd_core.pipeline import execute, prepare

    patch_dataset(300, 100)
    prepared = prepare(_config())
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    execute(prepared, run)  # a run made by the CLI: no map yet
    assert jobs.Worker(tmp_path, "cpu").serve(exit_when_idle=True) == 0
    assert fake_analysis == [run.run_id, f"epochs {run.run_id}", f"shares {run.run_id}", f"views {run.run_id}"]
    assert run.status()["analysis"] == "done" and run.status()["epoch_analysis"] == "done"
    # a run whose final map was made before epoch maps existed gets just the epoch maps
    (run.path / "umap_epochs.npz").unlink()
    run.update_status(epoch_analysis=None)
    fake_analysis.clear()
    assert jobs.Worker(tmp_path, "cpu").serve(exit_when_idle=True) == 0
    assert fake_analysis == [f"epochs {run.run_id}"] and run.status()["epoch_analysis"] == "done"


def test_worker_backfill_redoes_a_map_whose_process_died(tmp_path, fake_analysis):
    """A map's "computing" left by a process that died half-way (the worker killed, a Ray node lost) was
    skipped by the backfill for ever; a map whose process lives is still left to it."""
    import subprocess
    import sys

    from cbd_core.runs import owner_record

    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    dead = {**owner_record("worker", device="cpu", slot=0), "pid": killed.pid}
    abandoned = RunDir.create(tmp_path, _config().to_dict(), state="done", analysis="computing", analysis_by=dead,
                              epoch_analysis="computing", epoch_analysis_by=dead)
    abandoned.save_arrays("epoch_features", index=np.arange(3))
    live = {**owner_record("ray", node="abc"), "pid": os.getppid()}  # alive, and not this process
    busy = RunDir.create(tmp_path, _config(seed=1).to_dict(), state="done", owner=live, analysis="computing",
                         analysis_by=live)

    worker = jobs.Worker(tmp_path, "cpu")
    assert worker._backfill_one() is True
    assert fake_analysis == [abandoned.run_id, f"epochs {abandoned.run_id}", f"shares {abandoned.run_id}",
                             f"views {abandoned.run_id}"]
    status = abandoned.status()
    assert status["analysis"] == "done" and status["epoch_analysis"] == "done"
    assert status["analysis_by"]["kind"] == "worker" and status["analysis_by"]["pid"] == os.getpid()
    fake_analysis.clear()
    assert worker._backfill_one() is False
    assert fake_analysis == [] and busy.status()["analysis"] == "computing"


def test_cancel_a_running_run(tmp_path, patch_dataset, fake_analysis):
    patch_dataset(600, 100)
    run = jobs.submit(_config(defense_params={"epochs": 30, "batch_size": 32}), tmp_path, start_worker=False)
    worker = jobs.Worker(tmp_path, "cpu")
    thread = threading.Thread(target=worker.serve, kwargs={"exit_when_idle": True})
    thread.start()
    deadline = time.monotonic() + 60
    while run.status().get("state") != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.request_cancel(run) == "running"
    thread.join(60)
    assert not thread.is_alive()
    assert run.status()["state"] == "cancelled"
    assert len(run.metrics()) < 30
    assert fake_analysis == []  # a cancelled run gets no map


def test_worker_says_booting_then_ready_and_wakes_on_submit(tmp_path, patch_dataset, fake_analysis, monkeypatch):
    """The info file says "booting" until torch and the data are loaded, then "ready" with the boot's
    seconds; an idle worker takes a submitted run within a fraction of a second (the wake file), long
    before its next scan of the queue."""
    from cbd_core.jobs import worker as worker_module

    patch_dataset(300, 100)
    monkeypatch.setattr(worker_module, "IDLE_POLL_S", 30.0)  # only the wake file can be quick
    worker = jobs.Worker(tmp_path, "cpu", parent_pid=os.getpid())
    states = []
    real_boot = worker._boot

    def boot():
        states.append([(w.state, w.ready) for w in jobs.workers(tmp_path)])
        real_boot()

    worker._boot = boot
    thread = threading.Thread(target=worker.serve, kwargs={"max_runs": 1}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (jobs.workers(tmp_path) and jobs.workers(tmp_path)[0].state == "ready") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert states == [[("booting", False)]]
    info = jobs.workers(tmp_path)[0]
    assert info.ready and info.pid == os.getpid() and info.boot_seconds >= 0
    time.sleep(0.3)  # idle now, waiting on the wake file
    submitted = time.monotonic()
    run = jobs.submit(_config(), tmp_path, start_worker=False)
    while run.status().get("state") == "queued" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert time.monotonic() - submitted < 2.0, "the worker did not wake on submit"
    thread.join(60)
    status = run.status()
    assert status["state"] == "done"
    # What the Train page's elapsed time and estimate read: the whole run's share and seconds.
    assert status["progress"]["run_fraction"] == 1.0 and status["progress"]["elapsed_seconds"] > 0
    assert status["progress"]["eta_seconds"] == 0.0
    assert all(line["epoch_seconds"] > 0 for line in run.metrics())


def test_failed_prepare_is_recorded_and_the_worker_goes_on(tmp_path, patch_dataset, fake_analysis):
    patch_dataset(300, 100)
    broken = jobs.submit(_config(), tmp_path, start_worker=False)
    config = broken.config()
    config["defense_params"]["epochs"] = -3  # hand-edited into something invalid
    (broken.path / "config.json").write_text(__import__("json").dumps(config))
    good = jobs.submit(_config(seed=1), tmp_path, start_worker=False)
    assert jobs.Worker(tmp_path, "cpu").serve(exit_when_idle=True) == 2
    assert broken.status()["state"] == "failed" and "epochs" in broken.status()["error"]
    assert good.status()["state"] == "done"


def test_one_worker_per_slot(tmp_path):
    fd = jobs._try_lock(jobs._lock_path(tmp_path, "cpu", 0))
    try:
        assert jobs.slot_is_alive(tmp_path, "cpu", 0)
        assert jobs.Worker(tmp_path, "cpu").serve(exit_when_idle=True) == 0  # exits at once
        assert not jobs.slot_is_alive(tmp_path, "cpu", 1)
    finally:
        os.close(fd)
    assert not jobs.slot_is_alive(tmp_path, "cpu", 0)


def test_orphaned_runs_are_marked_failed(tmp_path):
    config = _config().to_dict()
    orphan = RunDir.create(tmp_path, config, state="running")
    orphan.update_status(worker={"device": "cpu", "slot": 0, "pid": 2**22 + 12345})
    (orphan.path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    queued = RunDir.create(tmp_path, config)
    live = RunDir.create(tmp_path, config, state="running")
    live.update_status(worker={"device": "cpu", "slot": 1, "pid": os.getpid()})
    fd = jobs._try_lock(jobs._lock_path(tmp_path, "cpu", 1))  # slot 1's worker is alive: this process
    try:
        assert jobs.recover_orphans(tmp_path) == [orphan.run_id]
    finally:
        os.close(fd)
    assert orphan.status()["state"] == "failed" and "worker stopped" in orphan.status()["error"]
    assert orphan.metrics() == [{"epoch": 1}]  # what it wrote is kept
    assert queued.status()["state"] == "queued" and live.status()["state"] == "running"


def test_workers_per_device_is_validated(monkeypatch):
    monkeypatch.setenv("BACKDOOR_LAB_WORKERS_PER_DEVICE", "0")
    with pytest.raises(UserInputError, match="outside"):
        jobs.workers_per_device()
    monkeypatch.setenv("BACKDOOR_LAB_WORKERS_PER_DEVICE", "two")
    with pytest.raises(UserInputError, match="whole number"):
        jobs.workers_per_device()


def test_tiny_demo_preset(monkeypatch):
    monkeypatch.delenv("BACKDOOR_LAB_TINY_DEMO", raising=False)
    assert quick_demo_config().validated().defense_params["epochs"] == 10
    monkeypatch.setenv("BACKDOOR_LAB_TINY_DEMO", "1")
    tiny = quick_demo_config().validated()
    assert (tiny.defense, tiny.attack, tiny.dataset) == ("cbd", "badnets", "mnist5k")
    assert tiny.defense_params["epochs"] == 2 and tiny.defense_params["backdoor_steps"] == 64


@pytest.mark.slow
def test_real_worker_process(tmp_path, monkeypatch):
    """ensure_workers starts a separate worker process that trains a queued run on the full mnist5k,
    runs its analysis step, and stops on SIGTERM. (No features are kept, so the map step has nothing
    to fit: real UMAP maps are tested in test_embeddings.py and end to end in the browser test.)"""
    run = jobs.submit(_config(embedding_samples=0), tmp_path, start_worker=False)
    pids = jobs.ensure_workers(tmp_path, devices=["cpu"], per_device=1)
    try:
        assert len(pids) == 1
        assert jobs.ensure_workers(tmp_path, devices=["cpu"], per_device=1) == []  # already served
        status = wait_for(run, timeout=240)
        assert status["state"] == "done", status
        deadline = time.monotonic() + 240
        while run.status().get("analysis") not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert run.status()["analysis"] == "done", run.status()
        assert np.array_equal(run.arrays("umap")["index"], run.arrays("embeddings")["index"])
        info = jobs.workers(tmp_path)
        assert [(w.device, w.slot, w.alive) for w in info] == [("cpu", 0, True)]
    finally:
        jobs.stop_workers(tmp_path)
    assert not jobs.slot_is_alive(tmp_path, "cpu", 0)


# -- the same config queued twice is one run ------------------------------------------------------
def test_submit_twice_is_one_run(tmp_path, patch_dataset):
    patch_dataset(300, 100)
    first = jobs.submit_once(_config(), tmp_path, start_worker=False)
    again = jobs.submit_once(_config(), tmp_path, start_worker=False)
    assert (first.reused, again.reused) == (False, True)
    assert again.run.run_id == first.run.run_id and again.state == "queued"
    assert len(list_runs(tmp_path)) == 1
    other_seed = jobs.submit_once(_config(seed=1), tmp_path, start_worker=False)
    assert not other_seed.reused  # the seed is part of the config
    other_epochs = jobs.submit_once(_config(defense_params={"epochs": 2, "batch_size": 64}), tmp_path,
                                    start_worker=False)
    assert not other_epochs.reused
    assert len(list_runs(tmp_path)) == 3

    for state, reused in (("running", True), ("done", True), ("failed", False)):
        rewrite_status(first.run, state=state)
        found = jobs.submit_once(_config(), tmp_path, start_worker=False)
        assert found.reused is reused, state
        if reused:
            assert (found.run.run_id, found.state) == (first.run.run_id, state)
    # The failed one was submitted again as a fresh queued run; submitting once more finds that one.
    fresh = jobs.submit_once(_config(), tmp_path, start_worker=False)
    assert fresh.reused and fresh.state == "queued" and fresh.run.run_id != first.run.run_id


def test_simultaneous_submits_of_one_config_make_one_run(tmp_path, patch_dataset, monkeypatch):
    """Two sessions press Start on the same settings at the same moment: both get the same run. Folder
    creation is slowed down, so without the lock both would find nothing and create a run each."""
    patch_dataset(300, 100)
    create = RunDir.create.__func__

    def slow_create(cls, *args, **kwargs):
        time.sleep(0.3)
        return create(cls, *args, **kwargs)

    monkeypatch.setattr(RunDir, "create", classmethod(slow_create))
    barrier = threading.Barrier(2)
    results = []

    def press_start():
        barrier.wait()
        results.append(jobs.submit_once(_config(), tmp_path, start_worker=False))

    threads = [threading.Thread(target=press_start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(list_runs(tmp_path)) == 1
    assert {r.run.run_id for r in results} == {list_runs(tmp_path)[0].run_id}
    assert sorted(r.reused for r in results) == [False, True]


def test_cli_submit_reuses_and_run_always_trains_fresh(tmp_path, patch_dataset, capsys):
    from cbd_core import cli

    patch_dataset(300, 100)
    flags = ["--defense", "undefended", "--epochs", "1", "--seed", "4", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.main(["submit", *flags, "--no-worker"]) == 0
    first = capsys.readouterr().out.strip()
    assert cli.main(["submit", *flags, "--no-worker", "--json"]) == 0
    out, err = capsys.readouterr()
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["run_id"] == first and answer["reused"] is True and answer["state"] == "queued"
    assert "already queued" in err and first in err
    assert cli.main(["run", *flags]) == 0  # `run` trains now, in this process, whatever is queued
    assert len(list_runs(tmp_path)) == 2


# -- what the worker is doing ---------------------------------------------------------------------
def test_worker_state_follows_the_slot_lock_and_info(tmp_path):
    from cbd_core.runs import write_json

    assert jobs.worker_state(tmp_path, "cpu") == jobs.WorkerState("none")
    fd = jobs._try_lock(jobs._lock_path(tmp_path, "cpu", 0))  # as the spawner does, before the child runs
    try:
        assert jobs.worker_state(tmp_path, "cpu").state == "starting"
        info = tmp_path / ".workers" / "cpu-0.json"
        write_json(info, {"device": "cpu", "slot": 0, "pid": 999_999_999, "current_run": None})  # a dead worker's
        assert jobs.worker_state(tmp_path, "cpu").state == "starting"
        write_json(info, {"device": "cpu", "slot": 0, "pid": os.getpid(), "current_run": None})
        assert jobs.worker_state(tmp_path, "cpu") == jobs.WorkerState("idle")
        assert jobs.worker_state(tmp_path, "cuda").state == "none"  # another device's queue

        mapped = RunDir.create(tmp_path, {"dataset": "mnist5k", "attack": "badnets", "defense": "cbd"}, state="done",
                               analysis="computing", owner={"kind": "worker", "pid": os.getpid()})
        assert jobs.worker_state(tmp_path, "cpu") == jobs.WorkerState("busy", "mapping", mapped.run_id)
        # A CLI run's epoch maps, backfilled: not the worker's run, but its info file says "analysing".
        mapped.update_status(analysis="done")
        cli_run = RunDir.create(tmp_path, {"dataset": "mnist5k", "attack": "badnets", "defense": "cbd"},
                                state="done", epoch_analysis="computing", owner={"kind": "cli", "pid": 1})
        assert jobs.worker_state(tmp_path, "cpu") == jobs.WorkerState("idle")  # the info file does not say so yet
        write_json(info, {"device": "cpu", "slot": 0, "pid": os.getpid(), "current_run": None, "state": "analysing"})
        assert jobs.worker_state(tmp_path, "cpu") == jobs.WorkerState("busy", "mapping", cli_run.run_id)
        cli_run.update_status(epoch_analysis="done")  # attribution shares next: still busy, run not told
        assert jobs.worker_state(tmp_path, "cpu") == jobs.WorkerState("busy", "mapping", None)
        write_json(info, {"device": "cpu", "slot": 0, "pid": os.getpid(), "current_run": "some-run"})
        assert jobs.worker_state(tmp_path, "cpu") == jobs.WorkerState("busy", "training", "some-run")
    finally:
        os.close(fd)
    assert jobs.worker_state(tmp_path, "cpu").state == "none"


def test_full_disk_while_starting_a_worker_frees_its_slot_and_says_why(tmp_path, monkeypatch):
    """ENOSPC after the slot's lock is taken (writing the info file) used to leave the lock held by the
    starting process with no worker behind it: the queue stalled until a restart, without a word."""
    import errno
    import subprocess

    import cbd_core.jobs.launcher as launcher

    def full_disk(root, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(root / ".workers" / "cpu-0.json"))

    monkeypatch.setattr(launcher, "write_info", full_disk)
    assert jobs.ensure_workers(tmp_path, devices=["cpu"], per_device=1) == []
    assert not jobs.slot_is_alive(tmp_path, "cpu", 0), "the slot's lock must be released"
    reason = jobs.start_failures(tmp_path)["cpu"]
    assert "No space left on device" in reason and "cpu-0.json" in reason

    # Space again: the next attempt starts a worker (a stand-in process here) and the reason goes away.
    monkeypatch.undo()

    class Started:
        pid = 4242

    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: Started())
    assert jobs.ensure_workers(tmp_path, devices=["cpu"], per_device=1) == [4242]
    assert jobs.start_failures(tmp_path) == {}


def test_runs_queued_for_ray_start_no_local_worker(tmp_path, monkeypatch):
    import subprocess

    RunDir.create(tmp_path, _config().to_dict(), state="queued", queue=jobs.RAY_QUEUE)
    started = []

    class Started:
        pid = 4243

    monkeypatch.setattr(subprocess, "Popen", lambda args, **k: started.append(args) or Started())
    jobs.ensure_workers(tmp_path, devices=["cpu"], per_device=1)
    assert [args[args.index("--device") + 1] for args in started] == ["cpu"]
