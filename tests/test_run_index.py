"""One query finds runs: `find(config, match, states)`, with each meaning of "the same run" named once."""

from __future__ import annotations

from cbd_core.run_index import BASELINE, SAME_CELL, SAME_DATA, SAME_RUN, SAME_SETUP, find, scan
from cbd_core.runs import RunDir

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
