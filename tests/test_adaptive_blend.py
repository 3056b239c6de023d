"""Adap-Blend: partial triggers on the poison, clean-labelled cover images, the whole trigger at test time."""

from __future__ import annotations

import numpy as np
import pytest

from cbd_core.attacks import ATTACKS, get_attack
from cbd_core.attacks.adaptive_blend import piece_masks
from cbd_core.errors import UserInputError


@pytest.fixture(scope="module")
def poisoned(tiny_sets):
    train, test = tiny_sets
    return train, test, get_attack("adaptive_blend").poison(train, test, poison_rate=0.1, target_label=0, seed=3)


def changed_pieces(clean: np.ndarray, poisoned: np.ndarray, side: int = 4) -> np.ndarray:
    """(N, side*side) bool: which pieces of each image the attack changed."""
    n, h, w, _ = clean.shape
    moved = (clean != poisoned).any(-1).reshape(n, side, h // side, side, w // side)
    return moved.any(axis=(2, 4)).reshape(n, side * side)


def test_registered_with_a_preset():
    assert "adaptive_blend" in ATTACKS and ATTACKS["adaptive_blend"].preset.poison_rate > 0


def test_poison_gets_half_the_pieces_and_the_target_label(poisoned):
    train, _, data = poisoned
    chosen = np.flatnonzero(data.is_poisoned)
    assert len(chosen) == 30 and (data.train.y[chosen] == 0).all() and (train.y[chosen] != 0).all()
    pieces = changed_pieces(train.x[chosen], data.train.x[chosen])
    # 8 of 16 pieces carry the trigger (a piece of a dark digit can round to no change, never more than 8)
    assert pieces.sum(1).max() == 8 and pieces.sum(1).mean() > 7
    assert len({tuple(row) for row in pieces}) > 20  # a different half for (nearly) every image
    # the trigger is blended at alpha 0.15: a pixel moves at most 15% of the way to the pattern
    gap = np.abs(data.train.x[chosen].astype(int) - train.x[chosen].astype(int))
    assert gap.max() <= np.ceil(0.15 * 255)


def test_cover_images_carry_pieces_but_keep_their_label(poisoned):
    train, _, data = poisoned
    changed = (data.train.x != train.x).any(axis=(1, 2, 3))
    cover = changed & ~data.is_poisoned
    assert cover.sum() == data.is_poisoned.sum() == 30  # cover_ratio 1
    np.testing.assert_array_equal(data.also_changed, cover)
    assert (data.train.y[cover] == train.y[cover]).all()
    assert changed_pieces(train.x[cover], data.train.x[cover]).sum(1).max() == 8
    assert any("30 cover images" in note for note in data.notes)


def test_test_trigger_is_the_whole_pattern_at_test_alpha(poisoned):
    _, test, data = poisoned
    attack = get_attack("adaptive_blend")
    keep = data.test_triggered_index
    assert (data.test_triggered.y == 0).all() and (test.y[keep] != 0).all()
    pieces = changed_pieces(test.x[keep], data.test_triggered.x)
    assert pieces.all(axis=1).mean() > 0.9  # every piece, not half
    np.testing.assert_array_equal(data.test_triggered.x, attack.apply(test.x[keep], data.params))
    assert data.params["test_alpha"] == 0.2 and data.params["alpha"] == 0.15


def test_same_seed_same_set_other_seed_other_set(tiny_sets, poisoned):
    train, test, data = poisoned
    again = get_attack("adaptive_blend").poison(train, test, poison_rate=0.1, target_label=0, seed=3)
    np.testing.assert_array_equal(again.train.x, data.train.x)
    other = get_attack("adaptive_blend").poison(train, test, poison_rate=0.1, target_label=0, seed=4)
    assert not np.array_equal(other.train.x, data.train.x)


def test_piece_masks_mask_exactly_the_asked_share():
    masks = piece_masks(50, (28, 28, 1), 16, 8, np.random.default_rng(0))
    assert masks.shape == (50, 28, 28, 1)
    assert (masks.reshape(50, -1).mean(1) == 0.5).all()


def test_a_grid_that_does_not_divide_the_image_is_refused():
    with pytest.raises(UserInputError, match="adaptive_blend.pieces"):
        get_attack("adaptive_blend").resolve((28, 28, 1), {"pieces": 9})  # 28 is not divisible by 3
    with pytest.raises(UserInputError, match="adaptive_blend.pieces"):
        get_attack("adaptive_blend").resolve((32, 32, 3), {"pieces": 12})  # not a square
