"""Label-Consistent: only target-class images, labels kept, adversarially hardened within eps, then stamped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cbd_core.attacks.label_consistent as lc
from cbd_core.attacks import ATTACKS, get_attack
from cbd_core.errors import UserInputError

TARGET = 3


@pytest.fixture(scope="module")
def poisoned(tiny_sets):
    train, test = tiny_sets
    return train, test, get_attack("label_consistent").poison(train, test, poison_rate=0.05, target_label=TARGET,
                                                                seed=0)


def test_registered_as_a_clean_label_patch_attack():
    attack = ATTACKS["label_consistent"]
    assert attack.clean_label and attack.patch and attack.preset.poison_rate > 0


def test_only_target_images_are_poisoned_and_no_label_changes(poisoned):
    train, _, data = poisoned
    assert data.n_poisoned == 15  # 5% of 300, half the target class of 30
    assert (train.y[data.is_poisoned] == TARGET).all()
    np.testing.assert_array_equal(data.train.y, train.y)
    np.testing.assert_array_equal(data.train.x[~data.is_poisoned], train.x[~data.is_poisoned])


def test_perturbation_stays_in_the_budget_and_the_trigger_is_on_top(poisoned):
    train, _, data = poisoned
    chosen = data.is_poisoned
    eps = data.params["eps"]
    region = data.trigger_region
    assert region.sum() == 9 and region[-3:, -3:].all()  # the 3x3 checkerboard, bottom right
    gap = np.abs(data.train.x[chosen].astype(int) - train.x[chosen].astype(int))
    assert gap[:, ~region].max() <= eps and gap[:, ~region].max() > 0  # perturbed, within the ball
    np.testing.assert_array_equal(data.train.x[chosen][:, region], get_attack("label_consistent").apply(
        train.x[chosen], data.params)[:, region])


@pytest.mark.slow
def test_the_perturbation_makes_the_images_hard_for_the_surrogate(tiny_sets, poisoned):
    train, _, data = poisoned
    attack = get_attack("label_consistent")
    hard = attack.perturbed(train, TARGET, 0, data.params)
    targets = np.flatnonzero(train.y == TARGET)
    model = lc.train_surrogate(train, data.params["surrogate_steps"], 0)  # the same seeded surrogate

    def loss(x):
        with torch.no_grad():
            logits = model(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0)
        return F.cross_entropy(logits, torch.full((len(x),), TARGET)).item()

    assert loss(hard) > loss(train.x[targets]) + 1.0


@pytest.mark.slow
def test_perturbations_are_computed_once_per_data_and_seed(tiny_sets, monkeypatch):
    train, test = tiny_sets
    calls = []
    real = lc.train_surrogate
    monkeypatch.setattr(lc, "train_surrogate", lambda *a: calls.append(a) or real(*a))
    attack = get_attack("label_consistent")
    first = attack.poison(train, test, 0.05, 1, seed=5)
    again = attack.poison(train, test, 0.08, 1, seed=5)  # another rate: the same perturbations reused
    assert len(calls) == 1
    both = first.is_poisoned & again.is_poisoned
    np.testing.assert_array_equal(first.train.x[both], again.train.x[both])
    attack.poison(train, test, 0.05, 1, seed=6)
    assert len(calls) == 2


def test_four_corners_and_a_patch_too_big(tiny_sets):
    attack = get_attack("label_consistent")
    params = attack.resolve((28, 28, 1), {"corners": "four"})
    assert attack.trigger_region((28, 28, 1), params).sum() == 36
    with pytest.raises(UserInputError, match="label_consistent.size"):
        attack.resolve((28, 28, 1), {"size": 15})
