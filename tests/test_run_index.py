"""One query finds runs: `find(config, match, states)`, with each meaning of "the same run" named once."""

from __future__ import annotations

from cbd_core.run_index import BASELINE, SAME_CELL, SAME_DATA, SAME_RUN, SAME_SETUP, SAME_TIMING, find, scan
from cbd_core.runs import RunDir, write_json

BASE = {"dataset": "mnist5k", "attack": "badnets", "poison_rate": 0.1, "seed": 0, "defense": "cbd",
        "defense_params": {"epochs": 10}, "device": "auto", "threads": None}


def test_each_match_compares_what_its_purpose_needs(tmp_path):
    same = RunDir.create(tmp_path, BASE, state="done")
    on_gpu = RunDir.create(tmp_path, {**BASE, "device": "cuda"}, state="done")
    shorter = RunDir.create(tmp_path, {**BASE, "defense_params": {"epochs": 2}}, state="queued")
    baseline = RunDir.create(tmp_path, {**BASE, "defense": "undefended", "defense_params": {}}, state="running")
    other_seed = RunDir.create(tmp_path, {**BASE, "seed": 1}, state="done")

    def ids(found):
        return [f.run.run_id for f in found]

    assert ids(find(BASE, SAME_RUN, root=tmp_path)) == [same.run_id]
    assert ids(find(BASE, SAME_CELL, root=tmp_path)) == [on_gpu.run_id, same.run_id]  # newest first
    assert set(ids(find(BASE, SAME_DATA, root=tmp_path))) == {same.run_id, on_gpu.run_id, shorter.run_id,
                                                               baseline.run_id}
    assert ids(find({**BASE, "defense": "undefended"}, BASELINE, root=tmp_path)) == [baseline.run_id]
    assert ids(find(BASE, SAME_DATA, ("queued",), root=tmp_path)) == [shorter.run_id]
    assert set(ids(find(BASE, SAME_SETUP, root=tmp_path))) == {same.run_id, on_gpu.run_id}
    assert other_seed.run_id not in ids(find(BASE, SAME_DATA, root=tmp_path))
    # a float written another way is the same rate; one pass can serve many queries
    pool = scan(tmp_path)
    assert ids(find({**BASE, "poison_rate": 0.1 + 1e-12}, SAME_RUN, pool=pool)) == [same.run_id]


def test_submit_with_baseline_queues_the_pair_once(tmp_path, patch_dataset):
    from conftest import fast_config

    from cbd_core import jobs

    patch_dataset(300, 100)
    config = fast_config(defense="cbd", defense_params={"backdoor_steps": 4, "epochs": 1, "batch_size": 64})
    run, baseline = jobs.submit_with_baseline(config, tmp_path, start_worker=False)
    assert not run.reused and not baseline.reused and baseline.run.config()["defense"] == "undefended"
    again, again_baseline = jobs.submit_with_baseline(config, tmp_path, start_worker=False)
    assert again.reused and again.run == run.run and again_baseline.reused and again_baseline.run == baseline.run
    assert jobs.submit_with_baseline(fast_config(), tmp_path, start_worker=False)[1] is None  # undefended: none


def test_same_timing_is_the_work_and_the_device_it_trained_on(tmp_path):
    """`timing.similar_durations` counts exactly the runs `SAME_TIMING` finds: other data and seed
    count; another schedule, model, thread count or dataset does not; the device is the one status.json
    says the run trained on, whatever config.json asked for."""
    from cbd_core.timing import similar_durations

    config = {**BASE, "threads": 2, "model": "small_cnn"}

    def done(seconds, trained_on="cpu", **changes):
        return RunDir.create(tmp_path, {**config, **changes}, state="done", seconds=seconds, device=trained_on)

    other_data = done(10.0, seed=3, attack="blend", poison_rate=0.2, target_label=4)
    asked_auto = done(11.0)  # config.json says "auto"; it trained on the CPU
    asked_cuda = done(12.0, device="cuda")  # asked for cuda, trained on the CPU
    done(20.0, defense_params={"epochs": 3})
    done(21.0, threads=1)
    done(22.0, model="preact_resnet18")
    done(23.0, dataset="cifar10")
    done(24.0, defense="abl")
    on_gpu = done(30.0, trained_on="cuda")
    RunDir.create(tmp_path, config, state="failed", seconds=1.0, device="cpu")
    RunDir.create(tmp_path, config, state="running", device="cpu")

    def ids(device):
        return [f.run.run_id for f in find(config, SAME_TIMING, ("done",), root=tmp_path, status={"device": device})]

    assert set(ids("cpu")) == {other_data.run_id, asked_auto.run_id, asked_cuda.run_id}
    assert ids("cuda") == [on_gpu.run_id]
    assert similar_durations(config, "cpu", tmp_path) == [12.0, 11.0, 10.0]  # newest first
    assert similar_durations(config, "cuda", tmp_path) == [30.0]
    assert similar_durations(config, "mps", tmp_path) == []
    # the newest MAX_SIMILAR only, from a pool as from the root
    from cbd_core.timing import MAX_SIMILAR

    for n in range(MAX_SIMILAR):
        done(40.0 + n)
    assert similar_durations(config, "cpu", None, scan(tmp_path)) == [40.0 + n for n in reversed(range(MAX_SIMILAR))]
    # SAME_TIMING.same compares config.json alone; the device is the status's
    assert SAME_TIMING.same(config, {**config, "seed": 9, "device": "cuda"})
    assert not SAME_TIMING.same_status({"device": "cpu"}, {"device": "cuda"})


def test_lesson_pairs_are_the_same_setup(tmp_path):
    """`lesson.find_run_pairs(matches=...)` keeps exactly the CBD runs `SAME_SETUP` finds: another
    device still counts; other threads, settings, seed or attack settings do not."""
    from cbd_core.lesson import find_run_pairs

    preset = {**BASE, "threads": 2, "attack_params": {"size": 3}}
    same = RunDir.create(tmp_path, preset, state="done")
    on_gpu = RunDir.create(tmp_path, {**preset, "device": "cuda"}, state="queued")
    for changes in ({"threads": 1}, {"defense_params": {"epochs": 2}}, {"seed": 1}, {"attack_params": {"size": 4}},
                    {"model": "preact_resnet18"}):
        RunDir.create(tmp_path, {**preset, **changes}, state="done")
    baseline = RunDir.create(tmp_path, {**preset, "defense": "undefended", "defense_params": {}}, state="done")
    write_json(baseline.path / "summary.json", {"clean_accuracy": 0.98, "attack_success_rate": 1.0})
    RunDir.create(tmp_path, {**preset, "defense": "abl"}, state="done")  # same data, not CBD: no pair

    pairs = find_run_pairs(tmp_path, "badnets", preset)
    assert [p.run.run_id for p in pairs] == [f.run.run_id for f in find(preset, SAME_SETUP, root=tmp_path)] \
        == [on_gpu.run_id, same.run_id]
    assert [p.state for p in pairs] == ["queued", "done"]
    assert {(p.baseline.state, p.baseline.run_id) for p in pairs} == {("done", baseline.run_id)}
    assert find_run_pairs(tmp_path, "blend", preset) == []
    # without `matches`, every CBD run of the attack
    assert len(find_run_pairs(tmp_path, "badnets")) == 7
