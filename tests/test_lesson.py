"""The Lesson's sentences about a run (cbd_core.lesson): they follow the run's own numbers, and a
failed defense is never told as a success."""

from __future__ import annotations

import numpy as np

from cbd_core import lesson


def f_b_lines(asr: list[float]) -> list[dict]:
    return [{"phase": "f_B", "epoch": i + 1, "step": 64 * (i + 1), "attack_success_rate": a, "clean_accuracy": 0.9}
            for i, a in enumerate(asr)]


def f_c_lines(asr: list[float]) -> list[dict]:
    return [{"phase": "f_C", "epoch": i + 1, "attack_success_rate": a, "clean_accuracy": 0.95}
            for i, a in enumerate(asr)]


REMOVED = {"defense": "cbd", "attack_success_rate": 0.004, "clean_accuracy": 0.96,
           "f_b_capture": {"captured": True}}
PERSISTS = {"defense": "cbd", "attack_success_rate": 0.96, "clean_accuracy": 0.96,
            "f_b_capture": {"captured": False}}


def test_training_story_of_a_removed_backdoor():
    said = " ".join(lesson.training_story(f_b_lines([1.0, 1.0]) + f_c_lines([0.01, 0.004]), REMOVED))
    assert "caught the trigger early" in said and "after 64 steps" in said
    assert "did not: its attack success rate ended at 0.4%" in said and "failed" not in said


def test_training_story_of_an_f_b_whose_test_asr_spiked_but_was_of_no_use():
    """WaNet: f_B's test ASR jumps once, but CBD's own record says it never had the trigger."""
    said = " ".join(lesson.training_story(f_b_lines([0.27, 0.0, 1.0, 0.13]) + f_c_lines([0.4, 0.96]), PERSISTS))
    assert "caught the trigger early" not in said and "did not catch the trigger in a way CBD can use" in said
    assert "f_C learned the trigger too" in said and "The defense failed in this run: the backdoor persists" in said


def test_training_story_of_an_f_b_that_never_caught_it():
    said = " ".join(lesson.training_story(f_b_lines([0.1, 0.2]) + f_c_lines([0.9]), PERSISTS))
    assert "f_B never caught the trigger" in said


def test_weights_story_follows_the_detection_auroc():
    poisoned = np.array([True] * 10 + [False] * 90)
    found = np.where(poisoned, 0.01, 0.5)[None]
    said = " ".join(lesson.weights_story(found, poisoned, {"defense": "cbd", "attack_success_rate": 0.01}))
    assert "picks out the poison almost perfectly (detection AUROC 1.000" in said and "failed" not in said
    missed = np.where(poisoned, 0.8, 0.4)[None]
    said = " ".join(lesson.weights_story(missed, poisoned, PERSISTS))
    assert "does not pick out the poison (detection AUROC 0.000" in said and "The defense failed" in said


def test_neighbour_share_sees_an_island():
    rng = np.random.default_rng(0)
    poisoned = np.array([True] * 20 + [False] * 180)
    island = np.where(poisoned[:, None], rng.normal(10, 0.1, (200, 2)), rng.normal(0, 1, (200, 2)))
    mixed = rng.normal(0, 1, (200, 2))
    assert lesson.neighbour_share(island, poisoned) == 1.0
    assert lesson.neighbour_share(mixed, poisoned) < 0.3
    said = " ".join(lesson.maps_story({"f_B": 1.0, "f_C": 0.95}, 0.1, PERSISTS))
    assert "f_C also keeps them in an island" in said and "The defense failed" in said
