"""AppTest: the Train page queues the undefended baseline with a defended run (or reuses one, or not
when opted out), and Train, Runs, Compare and the other pages say whether the backdoor was removed
or persists, in their banners and their "What to look for" captions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cbd_core.runs import RunDir, list_runs, write_json
from conftest import open_page, rewrite_status

REMOVED_ID = "20990101-000000-001-removed"
PERSISTS_ID = "20990101-000000-002-persists"
BASELINE_ID = "20990101-000000-000-baseline"


@pytest.fixture
def runs_root(tmp_path, monkeypatch, no_worker):
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    return tmp_path


def start(at) -> None:
    [b for b in at.button if b.label == "Start"][0].click()
    at.run()
    assert not at.exception and not at.error


# -- queueing the baseline -----------------------------------------------------------------------------

def test_start_queues_the_run_and_its_baseline_then_reuses_it(runs_root):
    at = open_page("train")  # CBD is the default defense
    box = at.checkbox(key="train_with_baseline")
    assert box.label == "also train the undefended baseline (reused if it exists)" and box.value is True
    start(at)
    runs = list_runs(runs_root)  # newest first
    assert [run.config()["defense"] for run in runs] == ["undefended", "cbd"]
    defended, baseline = runs[1], runs[0]
    assert at.query_params["run"] == defended.run_id
    same = ("dataset", "attack", "attack_params", "poison_rate", "target_label", "seed", "model", "threads",
            "deterministic", "npz_path", "data_root")
    assert {k: baseline.config()[k] for k in same} == {k: defended.config()[k] for k in same}
    assert baseline.status()["state"] == "queued"
    assert any(f"`{baseline.run_id}` is queued after this one" in i.value for i in at.info)

    # Another CBD setting on the same data: a new defended run, and the queued baseline is reused.
    at.number_input(key="train_cbd_mi_weight").set_value(0.2).run()
    start(at)
    runs = list_runs(runs_root)
    assert [run.config()["defense"] for run in runs] == ["cbd", "undefended", "cbd"]
    assert any(f"reusing the undefended run `{baseline.run_id}`" in i.value for i in at.info)


def test_opting_out_queues_one_run(runs_root):
    at = open_page("train")
    at.checkbox(key="train_with_baseline").uncheck()
    at.run()
    start(at)
    assert [run.config()["defense"] for run in list_runs(runs_root)] == ["cbd"]


def test_an_undefended_run_gets_no_baseline(runs_root):
    at = open_page("train")
    at.selectbox[2].set_value("undefended")  # dataset, attack, defense, device
    at.run()
    assert not [c for c in at.checkbox if c.key == "train_with_baseline"]
    start(at)
    assert [run.config()["defense"] for run in list_runs(runs_root)] == ["undefended"]


# -- banners -------------------------------------------------------------------------------------------

def copy_run(source: Path, root: Path, run_id: str, **summary_changes) -> RunDir:
    """A copy of a shared finished run under a new id, its summary.json edited (never the shared one)."""
    shutil.copytree(source, root / run_id)
    run = RunDir(root / run_id)
    summary = json.loads((run.path / "summary.json").read_text())
    summary.update(summary_changes, run_id=run_id, run_dir=str(run.path))
    write_json(run.path / "summary.json", summary)
    return run


@pytest.fixture
def judged_runs(runs_root, finished_runs):
    """Under an empty root: the undefended baseline (CA 97%, ASR 99%), a CBD run that removed the
    backdoor (ASR 0.4%, CA 96%) and a copy whose backdoor persists (ASR 86%, AUROC 0.61)."""
    root, ids = finished_runs
    copy_run(root / ids["undefended"], runs_root, BASELINE_ID, clean_accuracy=0.97, attack_success_rate=0.99)
    # f_B had the trigger in both (the shared tiny run's own record depends on its training, not the page).
    had_it = {"captured": True, "detection_auroc": 0.97, "loss_poisoned_median": 0.001,
              "loss_clean_median": 0.2, "steps": 40, "test_attack_success_rate": 1.0}
    copy_run(root / ids["cbd"], runs_root, REMOVED_ID, clean_accuracy=0.96, attack_success_rate=0.004,
             poison_detection_auroc=0.998, f_b_capture=had_it)
    copy_run(root / ids["cbd"], runs_root, PERSISTS_ID, clean_accuracy=0.95, attack_success_rate=0.86,
             poison_detection_auroc=0.61, f_b_capture=had_it)
    return runs_root


def captions(at) -> str:
    return " ".join(c.value for c in at.caption)


@pytest.mark.parametrize("page", ["train", "runs"])
def test_removed_banner(judged_runs, page):
    at = open_page(page, run=REMOVED_ID)
    assert not at.exception
    assert len(at.success) == 1 and not at.error and not at.warning
    said = at.success[0].value
    assert "Backdoor removed" in said and "0.4%" in said
    assert "Clean-accuracy cost: 1.0 points (96.0% against the undefended baseline's 97.0%" in said
    assert BASELINE_ID in said
    assert "CBD removed the backdoor" in said and "AUROC 0.998" in said
    if page == "train":
        assert "In this run the backdoor was removed" in captions(at)


@pytest.mark.parametrize("page", ["train", "runs"])
def test_persisting_banner(judged_runs, page):
    at = open_page(page, run=PERSISTS_ID)
    assert not at.exception
    assert len(at.error) == 1 and not at.success
    said = at.error[0].value
    assert "Backdoor persists: the defense failed" in said and "86.0%" in said
    assert "Clean-accuracy cost: 2.0 points (95.0% against the undefended baseline's 97.0%" in said
    assert "did not separate poisoned from clean samples (detection AUROC 0.610" in said
    assert "removed the backdoor" not in said
    if page == "train":
        text = captions(at)
        assert "In this run the defense failed: the backdoor persists" in text
        assert "was removed" not in text


def test_runs_table_has_a_verdict_column(judged_runs):
    at = open_page("runs", run=BASELINE_ID)
    table = at.dataframe[0].value
    verdict_of = dict(zip(table["run"], table["verdict"]))
    assert verdict_of == {REMOVED_ID: "removed", PERSISTS_ID: "persists", BASELINE_ID: "n/a"}
    assert any("this run is undefended" in i.value for i in at.info)  # its banner: no verdict


def test_banner_without_a_baseline_and_with_one_still_training(runs_root, finished_runs):
    root, ids = finished_runs
    copy_run(root / ids["cbd"], runs_root, PERSISTS_ID, attack_success_rate=0.3)
    at = open_page("runs", run=PERSISTS_ID)
    assert len(at.warning) == 1 and "Backdoor weakened, not removed" in at.warning[0].value
    assert "no baseline" in at.warning[0].value
    baseline = copy_run(root / ids["undefended"], runs_root, BASELINE_ID)
    rewrite_status(baseline, state="running")
    at = open_page("runs", run=PERSISTS_ID)
    assert f"baseline still training (run `{BASELINE_ID}`)" in at.warning[0].value


def test_compare_shows_verdicts(judged_runs):
    at = open_page("compare", run=PERSISTS_ID)
    assert not at.exception
    table = at.dataframe[0].value
    assert dict(zip(table["run_id"], table["Verdict"])) == {REMOVED_ID: "removed", PERSISTS_ID: "persists",
                                                             BASELINE_ID: "n/a"}
    assert len(at.error) == 1 and "Backdoor persists" in at.error[0].value
    assert "the defense failed" in captions(at)  # the suspected-poison gallery's caption
    at = open_page("compare", run=REMOVED_ID)
    assert len(at.success) == 1 and "Backdoor removed" in at.success[0].value and not at.error


@pytest.mark.parametrize("page", ["sample_weights", "embeddings", "attributions"])
def test_look_for_texts_follow_the_outcome(judged_runs, page):
    if page == "embeddings":  # no worker made a map: draw the features' first two dimensions instead
        import numpy as np

        for run_id in (PERSISTS_ID, REMOVED_ID):
            run = RunDir(judged_runs / run_id)
            emb = run.arrays("embeddings")
            run.save_arrays("umap", index=emb["index"], **{f"umap_{n}": emb[f"features_{n}"][:, :2].astype(np.float32)
                                                           for n in ("f_B", "f_C")})
    failed = captions(open_page(page, run=PERSISTS_ID))
    assert "In this run the defense failed: the backdoor persists (attack success rate 86.0%)" in failed
    assert "backdoor was removed" not in failed and "did not get in" not in failed
    removed = captions(open_page(page, run=REMOVED_ID))
    assert "In this run the backdoor was removed (attack success rate 0.4%)" in removed
    assert "defense failed" not in removed


MADE_WORSE_ID = "20990101-000000-003-made-worse"


def test_a_run_above_its_baseline_is_made_worse_on_every_page(runs_root, finished_runs):
    """The issue's case: the attack alone does not take hold (ASR 1 %), the defended run's ASR is 100 %:
    "made worse" in the banner, the tables and the captions, never "did not take hold"."""
    root, ids = finished_runs
    copy_run(root / ids["undefended"], runs_root, BASELINE_ID, clean_accuracy=0.975, attack_success_rate=0.01)
    copy_run(root / ids["cbd"], runs_root, MADE_WORSE_ID, clean_accuracy=0.961, attack_success_rate=1.0,
             poison_detection_auroc=0.002, baseline_attack_success_rate=None,
             f_b_capture={"captured": False, "loss_poisoned_median": 4.13, "loss_clean_median": 0.023})
    for page in ("train", "runs", "compare"):
        at = open_page(page, run=MADE_WORSE_ID)
        assert not at.exception
        assert len(at.error) == 1 and not at.success, page
        said = at.error[0].value
        assert "Attack made stronger" in said and "100.0%" in said and "against 1.0% without a defense" in said
        assert "not the defense's merit" not in said and "did not take hold even without" not in said
    table = open_page("runs", run=MADE_WORSE_ID).dataframe[0].value
    assert dict(zip(table["run"], table["verdict"]))[MADE_WORSE_ID] == "made worse"
    table = open_page("compare", run=MADE_WORSE_ID).dataframe[0].value
    assert dict(zip(table["run_id"], table["Verdict"]))[MADE_WORSE_ID] == "made worse"
    caption = captions(open_page("sample_weights", run=MADE_WORSE_ID))
    assert "made the attack stronger" in caption and "was removed" not in caption
