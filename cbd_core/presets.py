"""Named runs, one per attack: what to queue before a class, what each one is and what to look for.

    from cbd_core.presets import PRESETS, preset_config, measured
    config = preset_config("sig", seed=0)       # a RunConfig, validated later like any other
    figures = measured("sig")                   # the preset across seeds, as `make bench` measured it

    python -m cbd_core run --preset wanet        (the CLI's run and submit take --preset)

Every preset is CBD with its defaults on the embedded mnist5k, target label 0. Each attack declares its
own (`Attack.preset`, in its module: label, poison rate, what to look for); this module only turns them
into run configurations, so adding an attack adds its preset. A preset says what it
IS (the attack, its rate, what to look for in the Lesson), never how it ends: the outcome of a run is
read from that run's files, and figures across seeds only from the file `bench/presets.py` writes
(MEASURED_FILE, with its date and command). Its texts hold no digits: the rate in the title is
formatted from `poison_rate` (tests/test_presets.py checks both).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from .attacks import ATTACKS
from .config import RunConfig
from .errors import UserInputError

# Written by `python bench/presets.py` (a step of `make bench`): the presets across seeds.
MEASURED_FILE = Path(__file__).resolve().parents[1] / "bench" / "results" / "presets.json"


@dataclass(frozen=True)
class Preset:
    name: str
    label: str  # the attack and its trigger, in words (the title adds the rate)
    attack: str
    poison_rate: float
    look_for: str  # what the preset is and what the class should look for; never its outcome
    attack_params: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.label}, {self.poison_rate:.0%} poisoned"

    def config(self, seed: int = 0, **overrides: Any) -> RunConfig:
        base = RunConfig(dataset="mnist5k", attack=self.attack, poison_rate=self.poison_rate, target_label=0,
                         defense="cbd", seed=seed, attack_params=dict(self.attack_params))
        return dataclasses.replace(base, **overrides)


class _Presets(Mapping[str, Preset]):
    """{attack name: its Preset}, read from the attack registry whenever it is asked, so an attack
    registered later (a plug-in, a test's toy attack) has its preset too."""

    def __getitem__(self, name: str) -> Preset:
        p = ATTACKS[name].preset
        return Preset(name, p.label, name, p.poison_rate, p.look_for, dict(p.attack_params))

    def __iter__(self) -> Iterator[str]:
        return iter(ATTACKS)

    def __len__(self) -> int:
        return len(ATTACKS)


PRESETS: Mapping[str, Preset] = _Presets()


def measured(name: str, path: str | Path | None = None) -> dict[str, Any] | None:
    """The preset's row of MEASURED_FILE (or `path`), with the file's `written` date, `command` and
    `seeds` added; None when the file is missing or unreadable or has no row for it."""
    try:
        data = json.loads(Path(path or MEASURED_FILE).read_text())
        row = next(r for r in data["rows"] if r.get("preset") == name)
        return {**row, "written": str(data["written"]), "command": str(data["command"]), "seeds": list(data["seeds"])}
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


def _spread(values: list[float]) -> str:
    """median [min–max] of fractions, in percent."""
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:.1%}" if lo == hi else f"{med:.1%} [{lo:.1%}–{hi:.1%}]"


def measured_text(name: str, path: str | Path | None = None) -> str:
    """The preset across seeds in one paragraph, with the date and command that measured it; or where
    the figures would come from when `make bench` has not written them."""
    row = measured(name, path)
    if row is None:
        return ("No figures across seeds yet: `make bench` (its step `python bench/presets.py`) writes them to "
                f"`{Path(path or MEASURED_FILE).name}`.")
    try:
        verdict_counts = ", ".join(f"{verdict} on {count}" for verdict, count in row["cbd_verdicts"].items())
        return (f"Across seeds {', '.join(map(str, row['seeds']))} (median [min–max]): attack success rate "
                f"{_spread(row['cbd_asr'])} with CBD against {_spread(row['undefended_asr'])} undefended; clean "
                f"accuracy {_spread(row['cbd_ca'])} against {_spread(row['undefended_ca'])}; verdicts: "
                f"{verdict_counts}; f_B's loss singled out the poison on {row['singled_out']} of "
                f"{len(row['cbd_asr'])}. Measured on {row['written']} by `{row['command']}`.")
    except (KeyError, TypeError, ValueError, AttributeError):
        return f"The measured figures in `{Path(path or MEASURED_FILE).name}` cannot be read; `make bench` rewrites them."


def preset_config(name: str, seed: int = 0, **overrides: Any) -> RunConfig:
    """The RunConfig of preset `name` (UserInputError naming the choices when unknown)."""
    if name not in PRESETS:
        raise UserInputError(f"preset: unknown '{name}' (choose from {', '.join(PRESETS)})", "preset")
    return PRESETS[name].config(seed, **overrides)
