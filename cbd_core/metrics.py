"""The numbers every run reports, all fractions in [0, 1].

- clean accuracy (CA): accuracy on the untouched test set;
- attack success rate (ASR): share of triggered non-target test images predicted as the target;
- robust accuracy (RA): share of those same triggered images still predicted as their true label;
- poison-detection AUROC: how well a per-sample suspicion score (CBD: 1 - weight) ranks the truly
  poisoned training samples above the clean ones; 0.5 is chance, 1 is perfect.
"""

from __future__ import annotations

import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels)) if len(labels) else float("nan")


def attack_success_rate(triggered_predictions: np.ndarray, target_label: int) -> float:
    return float(np.mean(triggered_predictions == target_label)) if len(triggered_predictions) else float("nan")


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the boolean `positives` (Mann-Whitney U, ties halved).

    NaN when one of the two groups is empty (e.g. a poison rate of 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties, so equal scores count as half a win
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(scores)]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
