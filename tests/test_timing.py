"""Elapsed time and the estimate of what is left (cbd_core.timing): from earlier runs with the same
settings, else from this run's own pace, else none; and the finished runs it learns from."""

from __future__ import annotations

import pytest

from cbd_core.runs import RunDir
from cbd_core.timing import (duration_text, estimate, queue_forecast, run_timing, similar_durations, total_stages,
                             typical_seconds)

STARTED = "2026-01-01T10:00:00+00:00"


def running(**progress):
    return {"state": "running", "started": STARTED, "progress": progress or None}


def test_no_estimate_before_the_first_stage_ends():
    timing = estimate(running(), [], 10, [], now="2026-01-01T10:00:07+00:00")
    assert timing.elapsed == 7 and timing.remaining is None
    assert "first stage" in timing.basis


def test_estimate_from_the_runs_own_pace():
    metrics = [{"phase": "train", "epoch": i, "elapsed_seconds": 4.0 * i} for i in (1, 2, 3)]
    # 3 of 10 stages done at 4 s each, half-way through the fourth: 6.5 stages * 4 s to go.
    timing = estimate(running(epoch=4, step=5, steps=10), metrics, 10, [], now="2026-01-01T10:00:15+00:00")
    assert timing.elapsed == 15 and timing.remaining == pytest.approx(26.0)
    assert "4.0 s per stage" in timing.basis and "7 of 10 to go" in timing.basis


def test_estimate_from_finished_runs_with_the_same_settings():
    metrics = [{"phase": "train", "epoch": 1, "elapsed_seconds": 1.0}]
    timing = estimate(running(), metrics, 10, [50.0, 60.0, 70.0], now="2026-01-01T10:00:20+00:00")
    assert timing.remaining == 40.0  # median 60 s minus 20 s spent
    assert "3 finished runs" in timing.basis and "60 s" in timing.basis
    # Slower than every earlier run: their median says nothing any more; the run's own pace takes over.
    late = estimate(running(), metrics, 10, [50.0], now="2026-01-01T10:01:30+00:00")
    assert late.remaining == pytest.approx(9.0) and "this run's pace" in late.basis


def test_finished_and_waiting_runs():
    done = estimate({"state": "done", "started": STARTED, "seconds": 42.5}, [], None, [])
    assert (done.elapsed, done.remaining) == (42.5, 0.0)
    queued = estimate({"state": "queued", "created": STARTED}, [], 10, [60.0])
    assert (queued.elapsed, queued.remaining) == (None, None)
    failed = estimate({"state": "failed", "started": STARTED, "finished": "2026-01-01T10:00:09+00:00"}, [], 10, [])
    assert (failed.elapsed, failed.remaining) == (9.0, None)


def test_similar_durations_match_timing_settings_and_device(tmp_path):
    config = {"dataset": "mnist5k", "attack": "badnets", "defense": "cbd", "seed": 0, "threads": 2,
              "defense_params": {"epochs": 3}, "poison_rate": 0.1}

    def finished(seconds, device="cpu", **changes):
        run = RunDir.create(tmp_path, {**config, **changes}, state="done", seconds=seconds, device=device)
        return run

    finished(30.0, seed=1, attack="blend", poison_rate=0.2)  # other data, same work: counts
    finished(99.0, defense_params={"epochs": 9})  # other schedule
    finished(98.0, threads=1)  # other arithmetic
    finished(5.0, device="cuda")  # other device
    RunDir.create(tmp_path, config, state="failed", seconds=1.0, device="cpu")  # not finished well
    assert similar_durations(config, "cpu", tmp_path) == [30.0]
    assert similar_durations(config, "cuda", tmp_path) == [5.0]


def test_typical_seconds_from_same_settings_else_the_devices_pace(tmp_path):
    config = {"dataset": "mnist5k", "attack": "badnets", "defense": "cbd", "seed": 0, "threads": 2,
              "defense_params": {"epochs": 3}, "poison_rate": 0.1}
    assert typical_seconds(config, "cpu", tmp_path) is None  # nothing finished: no honest number
    other = {**config, "defense_params": {"epochs": 6}}
    RunDir.create(tmp_path, other, state="done", seconds=60.0, device="cpu")
    per_stage = 60.0 / total_stages(other)
    assert typical_seconds(config, "cpu", tmp_path) == pytest.approx(per_stage * total_stages(config))
    assert typical_seconds(config, "cuda", tmp_path) is None  # another device's pace says nothing
    for seconds in (20.0, 30.0, 100.0):
        RunDir.create(tmp_path, config, state="done", seconds=seconds, device="cpu")
    assert typical_seconds(config, "cpu", tmp_path) == 30.0  # the median of the same settings


def test_run_timing_of_a_running_run(tmp_path):
    config = {"dataset": "mnist5k", "attack": "badnets", "defense": "undefended", "seed": 0, "threads": 2,
              "defense_params": {"epochs": 4}}
    run = RunDir.create(tmp_path, config, state="running", started=STARTED, device="cpu")
    for epoch in (1, 2):
        run.append_metrics({"phase": "train", "epoch": epoch, "epochs": 4, "elapsed_seconds": 3.0 * epoch})
    timing = run_timing(run, now="2026-01-01T10:00:08+00:00")
    assert timing.elapsed == 8 and timing.remaining == pytest.approx(6.0)  # 2 epochs of 3 s to go
    assert total_stages({"defense": "cbd", "defense_params": {"epochs": 5}}) == 4 + 5  # f_B's stages, f_C's epochs
    probed = {"epochs": 10, "probe_epochs": 4, "probe_rounds": 2, "weighting": "stable"}
    assert total_stages({"defense": "cbd", "defense_params": probed}) == 4 + 8 + 10  # the probes' epochs too
    assert total_stages({"defense": "cbd", "defense_params": {**probed, "weighting": "paper"}}) == 4 + 10


def test_epochs_without_a_line_count_as_stages():
    """CBD's probes train 8 epochs between f_B's last line and f_C's first and write no line: the pace
    counts them (the line's `stage`, the progress's share of the run), so the estimate neither drops them
    while they train nor takes them for slow f_C epochs afterwards."""
    f_b = [{"phase": "f_B", "epoch": i, "elapsed_seconds": 2.0 * i, "stage": i} for i in (1, 2, 3, 4)]
    # Half-way through the probes (4 of 8 ended): 14 stages of 2 s to go, not 18.
    probing = estimate(running(phase="probe", epoch=1, step=0, steps=10, run_fraction=8 / 22), f_b, 22, [],
                       now="2026-01-01T10:00:17+00:00")
    assert probing.remaining == pytest.approx(28.0) and "14 of 22 to go" in probing.basis
    # The first f_C epoch ended at 26 s, the 13th stage: 2 s per stage, 9 to go (not 26/5 s over 17).
    f_c = f_b + [{"phase": "f_C", "epoch": 1, "elapsed_seconds": 26.0, "stage": 13}]
    fitting = estimate(running(phase="f_C", epoch=2, step=0, steps=10, run_fraction=13 / 22), f_c, 22, [],
                       now="2026-01-01T10:00:27+00:00")
    assert fitting.remaining == pytest.approx(18.0) and "2.0 s per stage over 13 finished, 9 of 22" in fitting.basis


def test_duration_text():
    assert [duration_text(s) for s in (None, 4.4, 65, 3720)] == ["?", "4 s", "1 min 05 s", "1 h 02 min"]


def test_queue_forecast_plays_the_queue_forward(tmp_path, monkeypatch):
    """A batch's finish times: the run training now ends after its estimate, then each queued run in the
    workers' order takes its typical duration; a setting never trained on this device is judged from
    the device's seconds per stage over all its finished runs."""
    from datetime import datetime, timedelta, timezone

    monkeypatch.delenv("BACKDOOR_LAB_WORKERS_PER_DEVICE", raising=False)
    base = {"dataset": "mnist5k", "attack": "badnets", "seed": 0, "threads": 2, "poison_rate": 0.1}
    undefended = {**base, "defense": "undefended", "defense_params": {"epochs": 4}}
    cbd = {**base, "defense": "cbd", "defense_params": {"epochs": 5}}  # 9 stages
    other = {**base, "defense": "undefended", "defense_params": {"epochs": 2}}  # never trained: 2 stages
    RunDir.create(tmp_path, undefended, state="done", seconds=40.0, device="cpu", queue="cpu")
    RunDir.create(tmp_path, cbd, state="done", seconds=90.0, device="cpu", queue="cpu")
    started = (datetime.now(timezone.utc) - timedelta(seconds=10)).isoformat()
    running = RunDir.create(tmp_path, {**undefended, "seed": 1}, state="running", started=started, device="cpu",
                            queue="cpu")
    first = RunDir.create(tmp_path, {**cbd, "seed": 1}, state="queued", queue="cpu")
    second = RunDir.create(tmp_path, {**other, "seed": 1}, state="queued", queue="cpu")
    forecast = queue_forecast([second.run_id, first.run_id, running.run_id], tmp_path)
    assert [f.run_id for f in forecast] == [running.run_id, first.run_id, second.run_id]
    # 30 s left of the running one's typical 40; then 90; then 2 stages at (40 + 90) / (4 + 9) s each.
    assert [f.seconds for f in forecast] == pytest.approx([30, 120, 140], abs=2)
    assert [f.order for f in forecast] == [1, 2, 3]
    alone = RunDir.create(tmp_path / "new", other, state="queued", queue="cpu")  # nothing finished to judge from
    assert queue_forecast([alone.run_id], tmp_path / "new")[0].seconds is None
