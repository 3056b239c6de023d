"""Verdicts (cbd_core/verdicts.py): thresholds, the undefended baseline, the clean-accuracy cost, the
sentences that say what happened, and the fields a real run's summary.json and the CLI's --json carry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbd_core import verdicts
from cbd_core.runs import RunDir
from cbd_core.verdicts import (Baseline, clean_accuracy_cost, explain, find_baseline, find_reusable_baseline,
                               lookup_baseline, verdict)

CONFIG = {"dataset": "mnist5k", "attack": "badnets", "poison_rate": 0.1, "target_label": 0, "defense": "cbd",
          "seed": 0, "attack_params": {"size": 3, "position": "bottom-right"}, "defense_params": {},
          "model": None, "device": "cpu", "data_root": None, "download": False, "npz_path": None,
          "embedding_samples": 300, "threads": 2, "deterministic": True}


def summary(asr: float | None, defense: str = "cbd", **extra) -> dict:
    values = {"defense": defense, "attack": "badnets", "clean_accuracy": 0.95, "attack_success_rate": asr}
    values.update(extra)
    return values


# -- thresholds --------------------------------------------------------------------------------------

@pytest.mark.parametrize("asr, expected", [
    (0.0, "removed"), (0.05, "removed"), (0.0500001, "weakened"), (0.2, "weakened"), (0.4999999, "weakened"),
    (0.50, "persists"), (0.86, "persists"), (1.0, "persists"),
])
def test_thresholds(asr, expected):
    assert verdict(summary(asr)) == expected


def test_the_named_constants_are_the_documented_ones():
    assert verdicts.REMOVED_MAX_ASR == 0.05 and verdicts.PERSISTS_MIN_ASR == 0.50
    for constant in ("REMOVED_MAX_ASR", "PERSISTS_MIN_ASR", "ATTACK_TOOK_HOLD_MIN_ASR", "GOOD_DETECTION_AUROC"):
        assert constant in verdicts.__doc__


@pytest.mark.parametrize("value", [None, {}, summary(0.99, defense="undefended"), summary(None),
                                   summary(float("nan")), summary("high")])
def test_no_verdict(value):
    assert verdict(value) == "n/a"


# -- the baseline ------------------------------------------------------------------------------------

def make_run(root: Path, state: str = "done", asr: float = 0.98, ca: float = 0.97, **config) -> RunDir:
    values = {**CONFIG, "defense": "undefended", **config}
    run = RunDir.create(root, values, state=state)
    if state == "done":
        run.write_summary({"defense": values["defense"], "clean_accuracy": ca, "attack_success_rate": asr})
    return run


def test_find_baseline_matches_the_same_data_and_seed(tmp_path):
    good = make_run(tmp_path)
    assert find_baseline(CONFIG, tmp_path).run_id == good.run_id
    assert lookup_baseline(CONFIG, tmp_path) == Baseline("done", good.run_id, good.summary())


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"attack_params": {"size": 4, "position": "bottom-right"}}, {"poison_rate": 0.05},
    {"attack": "blend"}, {"target_label": 3}, {"dataset": "mnist"}, {"model": "wrn-16-1"}, {"threads": 1},
    {"deterministic": False}, {"npz_path": "/tmp/x.npz"}, {"defense": "abl"},
])
def test_a_different_run_is_not_a_baseline(tmp_path, change):
    make_run(tmp_path, **change)
    assert find_baseline(CONFIG, tmp_path) is None
    assert find_reusable_baseline(CONFIG, tmp_path) is None
    assert lookup_baseline(CONFIG, tmp_path).state == "none"


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_a_failed_run_is_not_a_baseline(tmp_path, state):
    make_run(tmp_path, state=state)
    assert find_baseline(CONFIG, tmp_path) is None
    assert find_reusable_baseline(CONFIG, tmp_path) is None


@pytest.mark.parametrize("state", ["queued", "running"])
def test_an_unfinished_baseline_is_reused_but_not_measured_against(tmp_path, state):
    waiting = make_run(tmp_path, state=state)
    assert find_baseline(CONFIG, tmp_path) is None
    assert find_reusable_baseline(CONFIG, tmp_path).run_id == waiting.run_id
    assert lookup_baseline(CONFIG, tmp_path) == Baseline("training", waiting.run_id)


def test_a_done_baseline_is_preferred_and_broken_folders_are_skipped(tmp_path):
    done = make_run(tmp_path)
    make_run(tmp_path, state="queued")  # newer, but not done
    broken = tmp_path / "20200101-000000-000-broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert find_reusable_baseline(CONFIG, tmp_path).run_id == done.run_id
    assert find_baseline(CONFIG, tmp_path).run_id == done.run_id


def test_an_undefended_run_has_no_baseline(tmp_path):
    make_run(tmp_path)
    assert lookup_baseline({**CONFIG, "defense": "undefended"}, tmp_path).state == "none"


# -- cost ----------------------------------------------------------------------------------------------

def test_clean_accuracy_cost():
    cost = clean_accuracy_cost(summary(0.01, clean_accuracy=0.95), summary(0.98, "undefended", clean_accuracy=0.97))
    assert cost.clean_accuracy_cost == pytest.approx(0.02) and cost.baseline_attack_success_rate == 0.98
    gained = clean_accuracy_cost(summary(0.01, clean_accuracy=0.98), summary(0.98, "undefended", clean_accuracy=0.97))
    assert gained.clean_accuracy_cost == pytest.approx(-0.01)
    assert clean_accuracy_cost(summary(0.01), {}) == (None, None)
    assert clean_accuracy_cost(None, None) == (None, None)


# -- sentences -----------------------------------------------------------------------------------------

BASE = summary(0.99, "undefended", clean_accuracy=0.97)


def text(*args, **kwargs) -> str:
    sentences = explain(*args, **kwargs)
    assert all(isinstance(s, str) and s for s in sentences)
    return " ".join(sentences)


def test_explain_removed_gives_the_numbers():
    said = text(summary(0.003, poison_detection_auroc=0.998, clean_accuracy=0.962), BASE)
    assert "CBD removed the backdoor" in said and "0.3%" in said and "99.0%" in said
    assert "AUROC 0.998" in said
    assert "0.8 points of clean accuracy" in said and "97.0% → 96.2%" in said


def test_explain_cbd_f_b_never_caught_the_trigger():
    capture = {"captured": False, "detection_auroc": 0.55, "loss_poisoned_median": 1.9, "loss_clean_median": 2.0,
               "steps": 64}
    said = text(summary(0.86, f_b_capture=capture, poison_detection_auroc=0.97))
    assert "persists" in said and "86.0%" in said
    assert "f_B's loss did not single out the poison" in said and "could not point at the poison" in said
    assert "median loss 1.9 on poisoned images, 2 on clean ones" in said
    assert "did find the poison" not in said  # the capture decides before the AUROC


def test_explain_cbd_weights_found_the_poison_but_f_c_learned_it():
    capture = {"captured": True, "detection_auroc": 0.99}
    said = text(summary(0.30, f_b_capture=capture, poison_detection_auroc=0.95))
    assert "weakened the backdoor but did not remove it" in said
    assert "did find the poison (detection AUROC 0.950)" in said and "f_C learned the trigger anyway" in said


def test_explain_cbd_weights_did_not_separate():
    said = text(summary(0.9, poison_detection_auroc=0.61))
    assert "did not separate poisoned from clean samples (detection AUROC 0.610" in said
    assert "removed the backdoor" not in said


def test_explain_abl_and_none():
    abl = text(summary(1.0, "abl", isolated_precision=1.0, isolated_recall=0.11, isolated_count=40))
    assert "ABL isolated 40 samples (100.0% of them poisoned, catching 11.0% of the poison)" in abl
    assert "most poisoned samples stayed in the training set" in abl
    found = text(summary(1.0, "abl", isolated_precision=0.95, isolated_recall=0.9))
    assert "it found the poison, but unlearning it did not undo the backdoor" in found
    none = text(summary(0.75, "nonlinearity", filtered_precision=0.2, filtered_recall=0.9, filtered_count=900))
    assert "NONE filtered out 900 samples (20.0% of them poisoned, catching 90.0% of the poison)" in none
    assert "most of what it filtered out were clean images" in none
    nothing = text(summary(0.75, "nonlinearity", filtered_precision=0.0, filtered_recall=0.0, filtered_count=0))
    assert "filtered out no training samples" in nothing


def test_explain_the_attack_did_not_take_hold():
    said = text(summary(0.02), summary(0.30, "undefended", clean_accuracy=0.97))
    assert "did not take hold even without a defense (undefended ASR 30.0%)" in said
    assert "not the defense's merit" in said


@pytest.mark.parametrize("value", [
    summary(0.9), summary(0.9, "abl"), summary(0.9, "nonlinearity"), summary(0.9, "something-new"),
    summary(0.9, f_b_capture={}), summary(0.9, f_b_capture="garbage", poison_detection_auroc="x"),
    summary(0.9, "abl", isolated_precision=None), summary(0.9, "nonlinearity", reset_channels=[{}]),
    summary(None), summary(0.01, "undefended"), {}, None, {"attack_success_rate": 0.2},
])
def test_explain_never_raises_on_missing_fields(value):
    explain(value, None)
    explain(value, {"clean_accuracy": None})
    verdicts.banner_text(value, Baseline("done", "x", {}))
    verdicts.outcome_note(value)


def test_outcome_note_follows_the_verdict():
    assert verdicts.outcome_note(summary(0.01)).startswith("In this run the backdoor was removed")
    failed = verdicts.outcome_note(summary(0.86, poison_detection_auroc=0.5))
    assert "the defense failed" in failed and "persists" in failed and "did not separate" in failed
    assert verdicts.outcome_note(summary(0.99, "undefended")) == ""


def test_banner_text_says_the_cost_or_why_not():
    kind, said = verdicts.banner_text(summary(0.86), Baseline("done", "base-1", BASE))
    assert kind == "persists" and "Clean-accuracy cost: 2.0 points" in said and "base-1" in said
    gained = verdicts.banner_text(summary(0.01, clean_accuracy=0.98), Baseline("done", "b", BASE))[1]
    assert "Clean-accuracy cost: none, 1.0 points gained (98.0% against the undefended baseline's 97.0%" in gained
    same = verdicts.banner_text(summary(0.01, clean_accuracy=0.97), Baseline("done", "b", BASE))[1]
    assert "Clean-accuracy cost: none (97.0% against" in same
    assert "baseline still training" in verdicts.banner_text(summary(0.01), Baseline("training", "b"))[1]
    assert "no baseline" in verdicts.banner_text(summary(0.01), Baseline("none"))[1]
    assert verdicts.banner_text(None, None, state="running")[0] == "n/a"


# -- real runs -------------------------------------------------------------------------------------------

def test_cli_json_carries_the_verdict_and_the_cost_against_an_earlier_baseline(capsys, tmp_path, patch_dataset):
    from cbd_core.cli import main

    patch_dataset(300, 100)
    out = tmp_path / "runs"
    common = ["run", "--json", "--out", str(out), "--device", "cpu", "--attack", "badnets", "--seed", "3"]

    def run(*args: str) -> dict:
        assert main([*common, *args]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    lonely = run("--defense", "cbd", "--defense-param", "backdoor_steps=8", "--epochs", "1")
    assert lonely["verdict"] == verdict(lonely) and lonely["verdict"] in ("removed", "weakened", "persists")
    assert "clean_accuracy_cost" not in lonely  # no baseline yet

    base = run("--defense", "undefended", "--epochs", "1")
    assert base["verdict"] == "n/a" and "clean_accuracy_cost" not in base

    defended = run("--defense", "cbd", "--defense-param", "backdoor_steps=8", "--epochs", "1")
    assert defended["baseline_run_id"] == base["run_id"]
    assert defended["baseline_attack_success_rate"] == base["attack_success_rate"]
    assert defended["clean_accuracy_cost"] == pytest.approx(base["clean_accuracy"] - defended["clean_accuracy"])
    # summary.json holds the figures; the judgement is read-time (it needs the baseline that exists now)
    written = json.loads((Path(defended["run_dir"]) / "summary.json").read_text())
    assert "verdict" not in written and "baseline_run_id" not in written
    assert {**written, **verdicts.summary_fields(written, RunDir(Path(defended["run_dir"])).config(), out)} == defended


def test_baseline_trains_as_long_as_the_defended_model():
    from cbd_core.verdicts import baseline_config

    config = {"dataset": "mnist5k", "defense": "cbd", "defense_params": {"backdoor_steps": 64, "epochs": 2}}
    assert baseline_config(config)["defense_params"] == {"epochs": 2}
    assert baseline_config({"defense": "cbd", "defense_params": {}})["defense_params"] == {}


# -- made worse ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("asr, base_asr, expected", [
    (1.0, 0.01, "made worse"), (0.0600001, 0.01, "made worse"), (0.06, 0.01, "weakened"),
    (0.30, 0.20, "made worse"), (0.99, 0.97, "persists"), (0.004, 0.99, "removed"),
])
def test_made_worse_is_judged_against_the_baseline(asr, base_asr, expected):
    base = summary(base_asr, "undefended")
    assert verdict(summary(asr), base) == expected
    # without a baseline summary, the baseline ASR the run recorded when it finished
    assert verdict(summary(asr, baseline_attack_success_rate=base_asr)) == expected
    assert verdict(summary(asr)) != "made worse"  # no baseline at all: nothing to be worse than


def test_made_worse_sentences_never_say_the_attack_did_not_take_hold():
    # The case: BadNets 1 %, undefended ASR 1 %, CBD ASR 100 %, the poison favoured by the weights.
    cbd_run = summary(1.0, poison_detection_auroc=0.002,
                      f_b_capture={"captured": False, "loss_poisoned_median": 4.13, "loss_clean_median": 0.023})
    base = summary(0.01, "undefended", clean_accuracy=0.975)
    said = text(cbd_run, base)
    assert "CBD made the attack stronger: 100.0% of triggered test images reach the target label, against 1.0%" in said
    assert "Without a defense the attack did not take hold; with it, it did." in said
    assert "favoured the poisoned samples" in said
    assert "did not take hold even without a defense" not in said and "not the defense's merit" not in said
    kind, banner = verdicts.banner_text(cbd_run, Baseline("done", "base-1", base))
    assert kind == "made worse" and "Attack made stronger" in banner and "not the defense's merit" not in banner
    note = verdicts.outcome_note(cbd_run, baseline_summary=base)
    assert "made the attack stronger" in note and "removed" not in note
    assert verdicts.failed(cbd_run, base)


def test_the_attack_did_not_take_hold_only_where_the_defended_run_agrees():
    base = summary(0.30, "undefended")
    assert "did not take hold even without a defense" in text(summary(0.02), base)
    assert "did not take hold even without a defense" not in text(summary(0.60), base)  # made worse


def test_a_poison_rate_below_one_percent_is_not_rounded_to_zero(tmp_path):
    """A 0.5 % run was labelled "trojan 0%" in every page's run picker (and "at 0%" by the CLI)."""
    from cbd_core.text import rate_percent
    from pages.common import run_label

    assert rate_percent(0.005) == "0.5%" and rate_percent(0.1) == "10%" and rate_percent(0.025) == "2.5%"
    assert " 0.5% · " in run_label(make_run(tmp_path, poison_rate=0.005))
