"""CA, ASR and the poison-detection AUROC against brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cbd_core.metrics import accuracy, attack_success_rate, auroc


def brute_force_auroc(scores, positives):
    """P(score of a positive > score of a negative) + 0.5 P(equal), over every pair."""
    pos, neg = scores[positives], scores[~positives]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(8))
def test_auroc_matches_pairwise_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    scores = rng.integers(0, 6, n).astype(float)  # few distinct values: many ties
    positives = rng.random(n) < rng.uniform(0.05, 0.6)
    positives[0], positives[1] = True, False
    assert auroc(scores, positives) == pytest.approx(brute_force_auroc(scores, positives), abs=1e-12)
    # float32 scores and an integer mask are accepted too
    assert auroc(scores.astype(np.float32), positives.astype(int)) == pytest.approx(
        brute_force_auroc(scores, positives), abs=1e-12)


def test_auroc_continuous_and_shuffled():
    rng = np.random.default_rng(11)
    scores = rng.normal(size=500)
    positives = rng.random(500) < 0.2
    scores[positives] += 1.0
    expected = brute_force_auroc(scores, positives)
    assert 0.7 < expected < 0.85
    assert auroc(scores, positives) == pytest.approx(expected, abs=1e-12)
    perm = rng.permutation(500)
    assert auroc(scores[perm], positives[perm]) == pytest.approx(expected, abs=1e-12)


def test_auroc_extremes():
    positives = np.array([True, True, False, False, False])
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), positives) == 1.0
    assert auroc(np.array([0.0, 0.1, 0.5, 0.6, 0.7]), positives) == 0.0
    assert auroc(np.full(5, 0.42), positives) == 0.5
    # By hand: the positive 1.0 ties one negative and beats two (2.5), the positive 0.0 loses one and
    # ties two (1.0): 3.5 of 6 pairs.
    assert auroc(np.array([1.0, 0.0, 1.0, 0.0, 0.0]), positives) == pytest.approx(3.5 / 6)
    # Monotone transforms do not change the ranking.
    scores = np.array([3.0, 1.0, 2.0, 0.5, 2.0])
    assert auroc(scores, positives) == auroc(np.exp(scores), positives) == auroc(scores * 10 - 3, positives)


def test_auroc_empty_class_is_nan():
    assert math.isnan(auroc(np.array([0.1, 0.2, 0.3]), np.zeros(3, bool)))
    assert math.isnan(auroc(np.array([0.1, 0.2, 0.3]), np.ones(3, bool)))
    assert math.isnan(auroc(np.array([]), np.array([], bool)))


def test_accuracy():
    assert accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75
    assert accuracy(np.array([0, 0]), np.array([1, 1])) == 0.0
    assert isinstance(accuracy(np.array([1]), np.array([1])), float)
    assert math.isnan(accuracy(np.array([], int), np.array([], int)))


def test_attack_success_rate():
    assert attack_success_rate(np.array([3, 3, 1, 3, 0]), 3) == 0.6
    assert attack_success_rate(np.array([3, 3]), 3) == 1.0
    assert attack_success_rate(np.array([0, 1, 2]), 3) == 0.0
    assert isinstance(attack_success_rate(np.array([3]), 3), float)
    assert math.isnan(attack_success_rate(np.array([], int), 3))
