"""Presets: one per attack, each a valid CBD config; the CLI's --preset sets the attack and rate."""

from __future__ import annotations

import json
import re

import pytest

from cbd_core.attacks import ATTACKS
from cbd_core.cli import build_parser, config_from_args
from cbd_core.errors import UserInputError
from cbd_core.presets import PRESETS, measured_text, preset_config


def test_one_valid_preset_per_attack():
    assert {p.attack for p in PRESETS.values()} == set(ATTACKS)
    for name, preset in PRESETS.items():
        config = preset_config(name, seed=3).validated()
        assert config.defense == "cbd" and config.dataset == "mnist5k" and config.seed == 3
        assert preset.look_for and preset.title


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


OUTCOME_WORDS = ("remove", "persist", "weaken", "fail", "work", "succeed", "defeat", "cannot", "worse", "beat",
                 "amplif", "no effect", "helps", "stops", "blocks")


def test_preset_texts_say_what_a_preset_is_never_how_it_ends():
    """No outcome word and no number (but a Lesson step it points to): a preset's rate in its title is formatted from `poison_rate`, and
    figures across seeds come only from the file `make bench` writes (measured_text)."""
    for preset in PRESETS.values():
        for text in (preset.label, preset.look_for):
            lowered = text.lower()
            assert not [w for w in OUTCOME_WORDS if w in lowered], (preset.name, text)
            assert not re.search(r"\d", re.sub(r"\(step \d\)", "", text)), (preset.name, text)  # "(step 2)" points
        assert re.findall(r"\d+", preset.title) == [f"{preset.poison_rate * 100:.0f}"]


def test_measured_figures_come_from_the_generated_file_with_its_date_and_command(tmp_path):
    path = tmp_path / "presets.json"
    assert "No figures across seeds yet" in measured_text("badnets", path)  # nothing invented when missing
    path.write_text(json.dumps({
        "written": "2026-12-05", "command": "python bench/presets.py --out /tmp/b --seeds 0 1", "seeds": [0, 1],
        "rows": [{"preset": "badnets", "attack": "badnets", "rate": 0.1, "undefended_asr": [1.0, 0.99],
                  "cbd_asr": [0.004, 0.008], "undefended_ca": [0.97, 0.97], "cbd_ca": [0.96, 0.955],
                  "cbd_verdicts": {"removed": 2}, "singled_out": 2}]}))
    said = measured_text("badnets", path)
    assert "0.6% [0.4%–0.8%] with CBD" in said and "removed on 2" in said and "singled out the poison on 2 of 2" in said
    assert "Measured on 2026-12-05 by `python bench/presets.py --out /tmp/b --seeds 0 1`" in said
    assert "No figures across seeds yet" in measured_text("wanet", path)  # no row for it
    path.write_text("{broken")
    assert "No figures across seeds yet" in measured_text("badnets", path)
