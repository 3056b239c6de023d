"""AppTest for the Train page's guardrails: the poison rate said as a share and a count, a warning at
high rates, Start pressed twice makes one run, the page follows the run just started (session and
?run=) with the form keeping its values, a note while the worker starts, elapsed time and an estimate,
and "done" at the end."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from streamlit.testing.v1 import AppTest

import cbd_core.jobs as jobs
from cbd_core.runs import RunDir, list_runs, write_json
from conftest import fast_config, open_page


@pytest.fixture
def runs_root(tmp_path, monkeypatch, no_worker):
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    return tmp_path


def start(at: AppTest) -> None:
    at.button(key="train_start").click().run()
    assert not at.exception


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def infos(at: AppTest) -> str:
    return "\n".join(i.value for i in at.info)


def test_poison_rate_is_said_as_a_share_and_a_count(runs_root):
    at = open_page("train")
    assert "10 % of the training set = 1 image in 10 = 400 of 4,000 training images" in captions(at)
    at.number_input(key="train_rate_percent").set_value(0.5).run()
    assert "0.5 % of the training set = 1 image in 200 = 20 of 4,000 training images" in captions(at)
    assert not at.warning
    start(at)
    assert RunDir(runs_root / at.query_params["run"]).config()["poison_rate"] == 0.005  # the CLI's fraction


def test_high_poison_rate_is_warned_about(runs_root):
    at = open_page("train")
    at.number_input(key="train_rate_percent").set_value(30.0).run()
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("At 30 % the poison is no longer a small minority") for w in warnings)
    at.number_input(key="train_rate_percent").set_value(20.0).run()
    assert not at.warning  # 20 % is still allowed without a word
    at.selectbox(key="train_attack").set_value("sig").run()
    at.number_input(key="train_rate_percent").set_value(15.0).run()
    assert any("clean-label" in w.value for w in at.warning)  # SIG can poison only the target class


def test_start_pressed_twice_is_one_run(runs_root):
    at = open_page("train")
    start(at)
    first = at.query_params["run"]
    start(at)
    assert at.query_params["run"] == first
    assert sorted(run.config()["defense"] for run in list_runs(runs_root)) == ["cbd", "undefended"]
    assert f"already have a run, queued: `{first}`" in infos(at)


def test_train_follows_the_run_just_started_and_keeps_the_form(runs_root):
    at = open_page("train")
    at.selectbox(key="train_defense").set_value("undefended").run()
    at.number_input(key="train_undefended_epochs").set_value(2).run()
    start(at)
    first = RunDir(runs_root / at.query_params["run"])
    first.update_status(state="cancelled")  # finished: the page must not fall back to it
    at.number_input(key="train_seed").set_value(1).run()
    start(at)
    second = at.query_params["run"]
    assert second != first.run_id and at.session_state["active_run"] == second
    assert RunDir(runs_root / second).config()["seed"] == 1
    assert any(second in m.value for m in at.markdown)  # the live panel shows the new run
    assert (at.selectbox(key="train_defense").value, at.number_input(key="train_seed").value) == ("undefended", 1)
    # Another page and back: the form still holds what was chosen.
    at.switch_page("pages/runs.py").run()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    assert (at.selectbox(key="train_defense").value, at.number_input(key="train_seed").value) == ("undefended", 1)


def test_a_queued_run_says_what_the_worker_is_doing(runs_root):
    at = open_page("train")
    start(at)
    assert "Starting the background worker" in infos(at)
    assert "Waiting for" in captions(at)
    fd = jobs._try_lock(jobs._lock_path(runs_root, "cpu", 0))  # a worker process that has just been spawned
    try:
        at.run()
        assert "loading Python and PyTorch" in infos(at)
        write_json(runs_root / ".workers" / "cpu-0.json", {"device": "cpu", "slot": 0, "pid": __import__("os").getpid(),
                                                           "current_run": "20260101-other-run"})
        at.run()
        assert "training run `20260101-other-run` first" in infos(at)
    finally:
        __import__("os").close(fd)


def test_a_running_run_shows_elapsed_time_and_an_estimate(runs_root):
    config = fast_config(defense_params={"epochs": 4, "batch_size": 64}).to_dict()
    started = (datetime.now(timezone.utc) - timedelta(seconds=20)).isoformat(timespec="seconds")
    run = RunDir.create(runs_root, config, state="running", started=started, device="cpu",
                        progress={"phase": "train", "epoch": 3, "epochs": 4, "step": 0, "steps": 10, "fraction": 0.5})
    for epoch in (1, 2):
        run.append_metrics({"phase": "train", "epoch": epoch, "epochs": 4, "clean_accuracy": 0.5,
                            "attack_success_rate": 0.5, "elapsed_seconds": 5.0 * epoch})
    at = open_page("train", run=run.run_id)
    assert not at.exception
    text = captions(at)
    assert re.search(r"Elapsed 2\d s · about 10 s left, judged from this run's pace: 5\.0 s per stage over 2 "
                     r"finished, 2 of 4 to go\.", text), text
    assert [m.value for m in at.metric if m.label == "phase"] == ["training"]


def test_a_finished_run_reads_done(runs_root, patch_dataset, monkeypatch):
    import cbd_core.analysis.attributions as attributions
    import cbd_core.analysis.embeddings as embeddings

    patch_dataset(300, 100)
    monkeypatch.setattr(attributions, "compute_trigger_shares", lambda run: {})
    monkeypatch.setattr(attributions, "compute_attribution_views", lambda run: {})
    monkeypatch.setattr(embeddings, "compute_umap", lambda run: {})
    monkeypatch.setattr(embeddings, "warm_up", lambda: None)
    monkeypatch.setattr(embeddings, "configure_numba_cache", lambda folder=None: None)
    at = open_page("train")
    at.selectbox(key="train_defense").set_value("undefended").run()
    at.number_input(key="train_undefended_epochs").set_value(1).run()
    start(at)
    assert jobs.Worker(runs_root, "cpu").serve(exit_when_idle=True) == 1
    at.run()
    assert not at.exception
    assert [m.value for m in at.metric if m.label == "phase"] == ["done"]
    assert "Took" in captions(at) and "Elapsed" not in captions(at)
    assert "deconfounded" not in " ".join(m.value for m in at.metric) and "training" not in \
        [m.value for m in at.metric]


def test_runs_already_here_with_the_same_settings_are_said_before_start(runs_root):
    """Before Start, the page says what the finished runs with these very settings say (their verdicts and
    attack success rates, any seed), a "made worse" among them outright; not for other settings, not for a
    variant of the defense's parameters."""
    base = {"dataset": "mnist5k", "attack": "badnets", "poison_rate": 0.005, "target_label": 0}
    for seed, undefended_asr, cbd_asr in ((0, 0.01, 0.9), (1, 0.02, 0.01)):
        for defense, asr in (("undefended", undefended_asr), ("cbd", cbd_asr)):
            config = {**base, "seed": seed, "defense": defense}
            run = RunDir.create(runs_root, config, state="done")
            write_json(run.path / "summary.json", {**config, "clean_accuracy": 0.97, "attack_success_rate": asr,
                                                   "image_shape": [28, 28, 1]})
    at = open_page("train")
    assert "Finished runs here" not in captions(at)  # 10 %: no run has it
    at.number_input(key="train_rate_percent").set_value(0.5).run()
    assert ("Finished runs here with these settings (CBD, 2 seeds): made worse on 1, removed on 1; attack success "
            "rate 45.5% [1.0%–90.0%] against 1.5% [1.0%–2.0%] undefended. On 1 of them CBD left the attack "
            "stronger than no defense did; a new run may too.") in captions(at)
    at.number_input(key="train_target").set_value(3).run()  # another target: another question
    assert "Finished runs here" not in captions(at)
    at.number_input(key="train_target").set_value(0).run()
    at.selectbox(key="train_defense").set_value("undefended").run()
    assert "Finished runs here with these settings (Undefended, 2 seeds): attack success rate 1.5% [1.0%–2.0%]." \
        in captions(at)
    at.selectbox(key="train_defense").set_value("cbd").run()
    at.number_input(key="train_cbd_drop_below").set_value(0.5).run()  # a variant: those runs do not answer it
    assert "Finished runs here" not in captions(at)


def test_a_finished_run_whose_summary_lacks_figures_reads_not_available(runs_root):
    """A summary cut short or hand-edited (no seconds, a NaN, text for a number): the live panel says "n/a" for
    each figure it lacks instead of failing the page."""
    config = {"dataset": "mnist5k", "attack": "badnets", "poison_rate": 0.1, "target_label": 0, "seed": 0,
              "defense": "undefended"}
    run = RunDir.create(runs_root, config, state="done")
    (run.path / "summary.json").write_text('{"clean_accuracy": NaN, "attack_success_rate": 0.5, "seconds": "ten"}')
    at = open_page("train")
    assert not at.exception
    figures = {m.label: m.value for m in at.metric if m.label in ("clean accuracy", "attack success rate", "seconds")}
    assert figures == {"clean accuracy": "n/a", "attack success rate": "50.0%", "seconds": "n/a"}


def test_the_stamp_of_finished_runs_holds_while_a_run_trains_and_moves_when_one_finishes(runs_root):
    """The Train page's note on the runs already here is cached on `finished_stamp`: a training run rewrites
    its status.json with its progress every moment, which must not make every form change read the whole
    runs root again; a run that finishes (its summary, then its state) must."""
    import os

    from pages.common import finished_stamp

    config = {"dataset": "mnist5k", "attack": "badnets", "poison_rate": 0.1, "target_label": 0, "seed": 0,
              "defense": "cbd"}
    run = RunDir.create(runs_root, config, state="running")
    before = finished_stamp(runs_root)
    status = run.path / "status.json"
    os.utime(status, ns=(status.stat().st_atime_ns, status.stat().st_mtime_ns + 10**9))  # progress written
    assert finished_stamp(runs_root) == before
    write_json(run.path / "summary.json", {**config, "clean_accuracy": 0.9, "attack_success_rate": 0.01})
    after_summary = finished_stamp(runs_root)
    assert after_summary != before
    os.utime(status, ns=(status.stat().st_atime_ns, status.stat().st_mtime_ns + 10**9))  # the state turns done
    assert finished_stamp(runs_root) != after_summary
