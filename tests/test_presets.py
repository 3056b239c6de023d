"""Presets: one per attack, each a valid CBD config; the CLI's --preset sets the attack and rate."""

from __future__ import annotations

import pytest

from cbd_core.attacks import ATTACKS
from cbd_core.cli import build_parser, config_from_args
from cbd_core.errors import UserInputError
from cbd_core.presets import PRESETS, preset_config


def test_one_valid_preset_per_attack():
    assert {p.attack for p in PRESETS.values()} == set(ATTACKS)
    for name, preset in PRESETS.items():
        config = preset_config(name, seed=3).validated()
        assert config.defense == "cbd" and config.dataset == "mnist5k" and config.seed == 3
        assert preset.lesson and preset.title


def test_sig_preset_leaves_part_of_the_target_class_clean():
    from cbd_core.pipeline import prepare

    data = prepare(preset_config("sig")).poisoned
    target = data.train.y == 0
    assert 0 < data.is_poisoned.sum() < target.sum()


def test_cli_preset_sets_attack_and_rate_and_keeps_other_flags():
    args = build_parser().parse_args(["run", "--preset", "sig", "--seed", "4", "--threads", "1", "--epochs", "3"])
    config = config_from_args(args)
    assert (config.attack, config.poison_rate, config.defense, config.seed, config.threads) == ("sig", 0.05, "cbd", 4, 1)
    assert config.defense_params["epochs"] == 3
    with pytest.raises(UserInputError, match="preset: unknown 'nope'"):
        config_from_args(build_parser().parse_args(["run", "--preset", "nope"]))
