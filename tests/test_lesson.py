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
    assert "f_B caught the trigger at step 64" in said
    assert "did not learn the trigger: its attack success rate ended at 0.4%" in said and "failed" not in said


def test_training_story_quotes_f_b_at_the_step_it_caught_the_trigger():
    """The clean accuracy quoted beside "caught the trigger" is f_B's at that step, not its final one."""
    lines = f_b_lines([0.1, 0.9, 1.0])
    lines[1]["clean_accuracy"], lines[2]["clean_accuracy"] = 0.487, 0.96
    said = " ".join(lesson.training_story(lines, REMOVED))
    assert "caught the trigger at step 128: 90%" in said and "clean accuracy was still 49% at that step" in said
    assert "96%" not in said


def test_training_story_when_f_b_caught_the_trigger_but_its_loss_did_not_single_out_the_poison():
    """WaNet: f_B's test ASR peaks, but its loss does not single out the poison; both are said, and why."""
    wanet = {**PERSISTS, "f_b_capture": {"captured": False, "detection_auroc": 0.587, "loss_poisoned_median": 0.4,
                                         "loss_clean_median": 0.3, "test_attack_success_rate": 0.13}}
    said = " ".join(lesson.training_story(f_b_lines([0.27, 0.0, 0.89, 0.13]) + f_c_lines([0.4, 0.96]), wanet))
    assert "f_B caught the trigger at step 192: 89%" in said and "swung back to 13%" in said
    assert "f_B's loss did not single out the poison" in said and "AUROC 0.587" in said
    assert "Why both can be true" in said and "never caught" not in said
    assert "f_C learned the trigger" in said and "The defense failed in this run: the backdoor persists" in said


def test_training_story_of_an_f_b_that_never_caught_it():
    said = " ".join(lesson.training_story(f_b_lines([0.1, 0.2]) + f_c_lines([0.9]), PERSISTS))
    assert "f_B never caught the trigger" in said and "peak 20%" in said
    assert "Why both can be true" not in said


def test_maps_story_says_why_an_island_in_f_b_did_not_help_cbd():
    wanet = {**PERSISTS, "f_b_capture": {"captured": False, "detection_auroc": 0.587}}
    said = " ".join(lesson.maps_story({"f_B": 0.97, "f_C": 0.9}, 0.1, wanet))
    assert "island of their own" in said and "Yet f_B's loss did not single them out" in said
    said = " ".join(lesson.maps_story({"f_B": 0.97, "f_C": 0.1}, 0.1, REMOVED))
    assert "Yet" not in said


def test_weights_story_follows_the_detection_auroc():
    poisoned = np.array([True] * 10 + [False] * 90)
    found = np.where(poisoned, 0.01, 0.5)[None]
    said = " ".join(lesson.weights_story(found, poisoned, {"defense": "cbd", "attack_success_rate": 0.01}))
    assert "picks out the poison almost perfectly (detection AUROC 1.000" in said and "failed" not in said
    missed = np.where(poisoned, 0.8, 0.4)[None]
    said = " ".join(lesson.weights_story(missed, poisoned, PERSISTS))
    assert "more weight than the clean ones (2.0 times the clean median; detection AUROC 0.000" in said
    assert "kept much of" not in said and "The defense failed" in said


def test_weights_story_compares_the_medians():
    """A run whose weights favour the poison ("made worse") never reads as "kept much of its weight"."""
    poisoned = np.array([True] * 10 + [False] * 90)
    kept = np.where(poisoned, 0.3, 0.5)[None]
    kept[0, :4] = 0.01  # some poisoned images low, not enough to pick them out
    said = " ".join(lesson.weights_story(kept, poisoned, {**PERSISTS, "poison_detection_auroc": 0.7}))
    assert "kept 60% of a clean image's median weight" in said and "AUROC 0.700" in said
    same = np.full((1, 100), 0.5)
    said = " ".join(lesson.weights_story(same, poisoned, {**PERSISTS, "poison_detection_auroc": 0.5}))
    assert "the same median weight" in said


def test_neighbour_share_sees_an_island():
    rng = np.random.default_rng(0)
    poisoned = np.array([True] * 20 + [False] * 180)
    island = np.where(poisoned[:, None], rng.normal(10, 0.1, (200, 2)), rng.normal(0, 1, (200, 2)))
    mixed = rng.normal(0, 1, (200, 2))
    assert lesson.neighbour_share(island, poisoned) == 1.0
    assert lesson.neighbour_share(mixed, poisoned) < 0.3
    said = " ".join(lesson.maps_story({"f_B": 1.0, "f_C": 0.95}, 0.1, PERSISTS))
    assert "f_C also keeps them in an island" in said and "The defense failed" in said


def test_sentences_name_what_the_run_s_images_show():
    """The stories say "digit" on MNIST and what a CIFAR-10 or GTSRB image or a user's .npz shows elsewhere:
    a class training on traffic signs is not told that f_C "looks at the digit"."""
    def everything(dataset: str) -> str:
        summary = {**REMOVED, "dataset": dataset, "poisoned_samples": 40, "train_samples": 400,
                   "class_names": [str(c) for c in range(10)], "target_label": 0}
        return " ".join([*lesson.attack_story(summary), *lesson.maps_story({"f_B": 0.97, "f_C": 0.1}, 0.1, summary),
                         *lesson.attributions_story({"f_B": 0.8, "f_C": 0.05}, 0.01, True, summary),
                         *lesson.attributions_story({"f_B": 0.8, "f_C": 0.05}, 0.01, False, summary)])
    assert "whatever digit it shows" in everything("mnist5k") and "looks at the digit" in everything("mnist5k")
    for dataset, item in (("gtsrb", "sign"), ("fashion-mnist", "garment"), ("cifar10", "object"), ("npz", "object")):
        said = everything(dataset)
        assert "digit" not in said, (dataset, said)
        assert f"whatever {item} it shows" in said and f"looks at the {item}." in said and f"among the {item}s" in said
