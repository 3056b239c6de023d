"""The Lesson: one finished CBD run and its undefended baseline told as a story in six steps, with the
sentences each step says about THIS run's numbers (the page draws the pictures; nothing here imports
Streamlit).

    STEPS                                  (key, title) of the six steps, in order
    attack_story(summary)                  who was poisoned, with what label
    training_story(metrics, summary)       whether f_B caught the trigger and its loss singled out the poison
                                           (cbd_core.capture: the one definition of each), whether f_C learned it
    weights_story(weights, is_poisoned)    where the poisoned samples' weights went, against the clean ones'
    neighbour_share(xy, is_poisoned)       how tightly a map gathers the poisoned samples
    maps_story(shares)                     what the two maps' numbers mean
    attributions_story(shares, area)       how much of each model's attention sits on the trigger
    find_run_pairs(root, attack)           finished CBD runs of an attack, with their baselines' state

Every story reads the run's own figures and says plainly when the defense failed: a sentence that
reads as a success is only ever written for a run whose numbers show one. A missing figure (an
older run) leaves its sentence out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import capture, verdicts
from .data import item_noun
from .metrics import auroc
from .run_index import SAME_SETUP, find, scan
from .runs import RunDir

STEPS: tuple[tuple[str, str], ...] = (
    ("attack", "The attack"),
    ("training", "Training"),
    ("weights", "The weights"),
    ("maps", "What each model sees"),
    ("attributions", "Where each model looks"),
    ("verdict", "The verdict"),
)

MAP_NEIGHBOURS = 10  # neighbours on a 2-D map that decide whether a poisoned sample sits in a poison island
ISLAND_SHARE = 0.7  # a map whose poisoned samples' neighbours are this poisoned gathers them in an island


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}" if value >= 0.1 or value == 0 else f"{value:.1%}"


def _number(value: Any) -> float | None:
    return verdicts._number(value)


def _failed_note(summary: dict[str, Any] | None) -> str:
    """What the defense's failure means at this step's end, or "" when it did not fail (judged against
    the baseline ASR the run recorded, as `verdicts.verdict` does without a baseline summary)."""
    result = verdicts.verdict(summary)
    if result not in verdicts.FAILED:
        return ""
    if result == verdicts.MADE_WORSE:
        return "The defense failed in this run: it made the attack stronger than it is without a defense."
    what = "was only weakened" if result == verdicts.WEAKENED else "persists"
    return f"The defense failed in this run: the backdoor {what}."


# -- step 1: the attack ----------------------------------------------------------------------------------
def attack_story(summary: dict[str, Any], clean_label: bool = False) -> list[str]:
    """How many training images carry the trigger and what they are labelled."""
    poisoned, total = _number(summary.get("poisoned_samples")), _number(summary.get("train_samples"))
    names = summary.get("class_names") or []
    target = summary.get("target_label", 0)
    target_name = names[target] if isinstance(target, int) and 0 <= target < len(names) else str(target)
    sentences = []
    if poisoned is not None and total:
        sentences.append(f"The attacker put the trigger on {int(poisoned):,} of the {int(total):,} training images "
                         f"({poisoned / total:.0%}).")
    if clean_label:
        sentences.append(f"This attack is clean-label: it only marks images that already are {target_name}s, so no "
                         "label is wrong, and the model learns \"trigger means " + target_name + "\" from them.")
    else:
        sentences.append(f"Each of them is relabelled **{target_name}**, whatever {item_noun(summary.get('dataset'))} "
                         f"it shows: a model that learns the shortcut \"trigger means {target_name}\" fits them "
                         "all at once.")
    sentences.append("On clean images the trained model will look normal; the trigger is the hidden switch.")
    return sentences


# -- step 2: training --------------------------------------------------------------------------------------
def phase_lines(metrics: Sequence[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
    return [line for line in metrics if line.get("phase") == phase]


def training_story(metrics: Sequence[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """Whether f_B caught the trigger and whether its loss singled out the poison (cbd_core.capture, the
    one definition of both), and f_C's attack success rate against that, from metrics.jsonl."""
    f_c = phase_lines(metrics, "f_C")
    sentences = capture.f_b_sentences(capture.read_f_b(summary, metrics))
    if f_c:
        # The summary's final figures are what the verdict is judged on; the last epoch's line otherwise.
        asr_c = _number(summary.get("attack_success_rate"))
        asr_c = _number(f_c[-1].get("attack_success_rate")) if asr_c is None else asr_c
        ca_c = _number(summary.get("clean_accuracy"))
        ca_c = _number(f_c[-1].get("clean_accuracy")) if ca_c is None else ca_c
        peak = max((v for v in (_number(line.get("attack_success_rate")) for line in f_c) if v is not None),
                   default=None)
        if asr_c is not None and asr_c <= verdicts.REMOVED_MAX_ASR:
            sentences.append(f"f_C, trained on the same poisoned images with CBD's weights, did not learn the "
                             f"trigger: its attack success rate ended at {_pct(asr_c)} as its clean accuracy climbed to {_pct(ca_c)}.")
        elif asr_c is not None:
            sentences.append(f"f_C learned the trigger: its attack success rate ended at {_pct(asr_c)}"
                             + (f" (peak {_pct(peak)})" if peak is not None and peak > asr_c + 0.05 else "")
                             + f", with clean accuracy {_pct(ca_c)}. " + _failed_note(summary))
    return [s.strip() for s in sentences]


# -- step 3: the weights -----------------------------------------------------------------------------------
@dataclass
class WeightFigures:
    median_poisoned: float
    median_clean: float
    detection_auroc: float  # how well "low weight" picks out the poisoned samples (0.5 = chance)


def weight_figures(weights: np.ndarray, is_poisoned: np.ndarray) -> WeightFigures | None:
    """The final weights (the last row of (epochs + 1, N), or (N,)) of poisoned and clean samples."""
    weights = np.asarray(weights, dtype=np.float64)
    final = weights[-1] if weights.ndim == 2 else weights
    mask = np.asarray(is_poisoned, dtype=bool)
    if final.shape != mask.shape or not mask.any() or mask.all():
        return None
    return WeightFigures(float(np.median(final[mask])), float(np.median(final[~mask])), auroc(-final, mask))


def weights_story(weights: np.ndarray, is_poisoned: np.ndarray, summary: dict[str, Any]) -> list[str]:
    """Where the poisoned samples' weights ended against the clean ones' (the two medians compared, so a
    run whose weights favoured the poison says so), and what that means."""
    figures = weight_figures(weights, is_poisoned)
    if figures is None:
        return ["This run has no poisoned and clean samples to compare weights between."]
    recorded = _number(summary.get("poison_detection_auroc"))  # what the verdict's sentences quote
    if recorded is not None:
        figures.detection_auroc = recorded
    found = np.isfinite(figures.detection_auroc) and figures.detection_auroc >= verdicts.GOOD_DETECTION_AUROC
    poisoned, clean = figures.median_poisoned, figures.median_clean
    auroc = f"detection AUROC {figures.detection_auroc:.3f}; 1 is perfect, 0.5 is chance"
    sentences = [f"At the end, the median poisoned image has weight {poisoned:.3f} and the median clean one "
                 f"{clean:.3f}."]
    if found:
        sentences.append(f"Low weight picks out the poison almost perfectly ({auroc}): f_C hardly trains on the "
                         "poisoned images.")
        note = _failed_note(summary)
        if note:
            sentences.append(note + " The weights found the poison, but f_C learned the trigger anyway.")
    elif poisoned > clean:
        times = f"{poisoned / clean:.1f} times the clean median; " if clean > 0 else ""
        sentences.append(f"The poisoned images ended with more weight than the clean ones ({times}{auroc}): the weights pointed away from the poison, so f_C "
                         "trained on the poisoned images more than on a typical clean one. " + _failed_note(summary))
    elif poisoned < clean:
        sentences.append(f"The poisoned images kept {poisoned / clean:.0%} of a clean image's median weight, and low "
                         f"weight does not pick them out ({auroc}): f_C still trained on them. " + _failed_note(summary))
    else:
        sentences.append(f"Poisoned and clean images ended with the same median weight ({auroc}): the weights did "
                         "not tell them apart, so f_C trained on the poison like on any image. " + _failed_note(summary))
    return [s.strip() for s in sentences]


# -- step 4: the maps --------------------------------------------------------------------------------------
def neighbour_share(xy: np.ndarray, is_poisoned: np.ndarray, k: int = MAP_NEIGHBOURS) -> float | None:
    """On a 2-D map (n, 2): the mean share of poisoned samples among each poisoned sample's k nearest
    neighbours. Near 1: the map gathers the poison in an island of its own; near the poison rate:
    poisoned samples sit among clean ones. None with fewer than two poisoned samples."""
    xy = np.asarray(xy, dtype=np.float64)
    mask = np.asarray(is_poisoned, dtype=bool)
    if len(xy) != len(mask) or mask.sum() < 2:
        return None
    k = min(k, len(xy) - 1)
    distances = ((xy[mask, None, :] - xy[None, :, :]) ** 2).sum(-1)  # (poisoned, all)
    distances[np.arange(mask.sum()), np.flatnonzero(mask)] = np.inf  # not its own neighbour
    nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
    return float(mask[nearest].mean())


def maps_story(shares: dict[str, float | None], poison_rate: float, summary: dict[str, Any]) -> list[str]:
    """What the maps' neighbour shares ({model: share}) say: an island in f_B's, none in f_C's."""
    sentences = []
    f_b, f_c = shares.get("f_B"), shares.get("f_C")
    if f_b is not None:
        island = f_b >= ISLAND_SHARE
        sentences.append(f"In f_B's map, {_pct(f_b)} of a poisoned image's nearest neighbours are poisoned too "
                         f"(the poison is {_pct(poison_rate)} of the data): "
                         + ("f_B gathers the poisoned images in an island of their own, because to f_B they are "
                            "alike: they share the trigger." if island else
                            "f_B does not set them apart much."))
        if island and capture.read_f_b(summary).singled_out is False:
            sentences.append("Yet f_B's loss did not single them out (step 2): setting images apart is not the same "
                             "as fitting them more easily, and CBD's weights read only how easily f_B fits each "
                             "image, not where its map puts it.")
    if f_c is not None:
        if f_c >= ISLAND_SHARE:
            sentences.append(f"In f_C's map it is {_pct(f_c)}: f_C also keeps them in an island, so it sees the "
                             "trigger. " + _failed_note(summary))
        else:
            item = item_noun(summary.get("dataset"))
            sentences.append(f"In f_C's map it is {_pct(f_c)}: the poisoned images sit among the {item}s they really "
                             f"show, because f_C sees the {item}, not the trigger." +
                             (" " + _failed_note(summary) + " The trigger still works through f_C's decision, even "
                              "if its map does not set the poisoned images apart." if verdicts.failed(summary) else ""))
    return [s.strip() for s in sentences]


# -- step 5: attributions ----------------------------------------------------------------------------------
def attributions_story(shares: dict[str, float | None], area: float, patch: bool, summary: dict[str, Any]
                       ) -> list[str]:
    """How much of each model's attribution falls on the trigger over triggered test images, against
    the share of the image the trigger covers (`area`)."""
    f_b, f_c = shares.get("f_B"), shares.get("f_C")
    item = item_noun(summary.get("dataset"))
    if not patch:
        return ["This trigger touches every pixel, so every model's attention is 'on the trigger' and the share "
                f"cannot tell them apart: compare where the bright areas sit (on the {item} itself, or spread "
                "over the background) and what each model predicts. " + _failed_note(summary)]
    sentences = []
    if f_b is not None:
        sentences.append(f"The trigger covers {_pct(area)} of the image, yet on triggered test images "
                         f"{_pct(f_b)} of f_B's attribution falls on it: f_B decides by the trigger.")
    if f_c is not None:
        looks = f_c >= max(0.25, 3 * area)
        sentences.append(f"f_C puts {_pct(f_c)} there: "
                         + ("it looks at the trigger as well. " + _failed_note(summary) if looks else
                            f"it looks at the {item}." + ((" " + _failed_note(summary) + " The trigger still tips its "
                                                          "decision on many images.") if verdicts.failed(summary)
                                                         else "")))
    return [s.strip() for s in sentences]


# -- which runs a lesson can use ---------------------------------------------------------------------------
@dataclass
class RunPair:
    run: RunDir
    config: dict[str, Any]
    state: str  # the CBD run's state
    baseline: verdicts.Baseline


def find_run_pairs(root: str | Path | None, attack: str | None = None, matches: dict[str, Any] | None = None
                   ) -> list[RunPair]:
    """CBD runs under the root (newest first), of `attack` if given, each with its baseline's state
    right now; with `matches` (a validated config dict, e.g. a preset's) only those on the same data
    and seed with the same CBD settings (run_index.SAME_SETUP). Unreadable runs are skipped."""
    pairs = []
    pool = scan(root)  # one pass over the runs root, for the CBD runs and for their baselines
    baselines = verdicts.undefended_runs(root, pool)
    for found in pool if matches is None else find(matches, SAME_SETUP, pool=pool):
        config = found.config
        if config.get("defense") != "cbd" or (attack is not None and config.get("attack") != attack):
            continue
        if found.run.problem():
            continue
        pairs.append(RunPair(found.run, config, found.state, verdicts.lookup_baseline(config, root, baselines)))
    return pairs
