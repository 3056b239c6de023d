"""Named runs whose lesson is clear, one per attack: what to queue before a class, with what it shows.

    from cbd_core.presets import PRESETS, preset_config
    config = preset_config("sig", seed=0)       # a RunConfig, validated later like any other

    python -m cbd_core run --preset wanet        (the CLI's run and submit take --preset)

Every preset is CBD with its defaults on the embedded mnist5k, target label 0. Each attack declares its
own (`Attack.preset`, in its module: title, poison rate, lesson); this module only turns them into run
configurations, so adding an attack adds its preset. The lessons of the first five state the outcome
measured with `python bench/presets.py` (the table in README), including the preset where CBD fails
and why. The pages read `title` and `lesson`; nothing branches on a name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from .attacks import ATTACKS
from .config import RunConfig
from .errors import UserInputError


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    attack: str
    poison_rate: float
    lesson: str  # what the class should see, and why; the outcome as measured
    attack_params: dict[str, Any] = field(default_factory=dict)

    def config(self, seed: int = 0, **overrides: Any) -> RunConfig:
        base = RunConfig(dataset="mnist5k", attack=self.attack, poison_rate=self.poison_rate, target_label=0,
                         defense="cbd", seed=seed, attack_params=dict(self.attack_params))
        return dataclasses.replace(base, **overrides)


class _Presets(Mapping[str, Preset]):
    """{attack name: its Preset}, read from the attack registry whenever it is asked, so an attack
    registered later (a plug-in, a test's toy attack) has its preset too."""

    def __getitem__(self, name: str) -> Preset:
        attack = ATTACKS[name]
        p = attack.preset
        return Preset(name, p.title, name, p.poison_rate, p.lesson, dict(p.attack_params))

    def __iter__(self) -> Iterator[str]:
        return iter(ATTACKS)

    def __len__(self) -> int:
        return len(ATTACKS)


PRESETS: Mapping[str, Preset] = _Presets()


def preset_config(name: str, seed: int = 0, **overrides: Any) -> RunConfig:
    """The RunConfig of preset `name` (UserInputError naming the choices when unknown)."""
    if name not in PRESETS:
        raise UserInputError(f"preset: unknown '{name}' (choose from {', '.join(PRESETS)})", "preset")
    return PRESETS[name].config(seed, **overrides)
