"""The explorer's grid: finished runs by poison rate x attack x defense, so a class can move between
real runs at once instead of queueing a new one for every question.

    explorer_grid(root, dataset)         Grid: the rates, attacks and defenses present, and per cell the
                                         newest finished run (seed 0 first, the presets' seed)
    fill_command(dataset, attacks, rates, defenses)   the command that trains missing cells (`matrix`)

Only finished runs count; a cell holds the newest of seed 0 (the presets' and `fill_command`'s seed),
else the newest of any seed, whatever its other settings (the run's page shows them); unreadable runs
are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserInputError
from .runs import list_runs

Key = tuple[str, float, str]  # (attack, poison rate, defense)


@dataclass
class Grid:
    attacks: list[str] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    defenses: list[str] = field(default_factory=list)
    cells: dict[Key, str] = field(default_factory=dict)  # run id of each filled cell

    def run_id(self, attack: str, rate: float, defense: str) -> str | None:
        return self.cells.get((attack, round(rate, 6), defense))


def explorer_grid(root: str | Path | None, dataset: str = "mnist5k") -> Grid:
    """Every finished run on `dataset`, by (attack, rate, defense): the newest of seed 0, else the newest
    of any seed."""
    grid = Grid()
    chosen: dict[Key, tuple[bool, str]] = {}  # key: (is seed 0, run id); runs come newest first
    for run in list_runs(root):
        if run.status().get("state") != "done" or run.problem():
            continue
        try:
            config = run.config()
        except UserInputError:
            continue
        if config.get("dataset") != dataset:
            continue
        rate = config.get("poison_rate")
        if not isinstance(rate, (int, float)):
            continue
        key = (str(config.get("attack")), round(float(rate), 6), str(config.get("defense")))
        seed_zero = config.get("seed") == 0
        if key not in chosen or (seed_zero and not chosen[key][0]):
            chosen[key] = (seed_zero, run.run_id)
    grid.cells = {key: run_id for key, (_, run_id) in chosen.items()}
    grid.attacks = sorted({k[0] for k in grid.cells})
    grid.rates = sorted({k[1] for k in grid.cells})
    grid.defenses = sorted({k[2] for k in grid.cells}, key=lambda d: (d != "undefended", d))
    return grid


def fill_command(dataset: str, attacks: list[str], rates: list[float], defenses: list[str]) -> str:
    """The command that trains these cells on seed 0 (matrix reuses the cells already done)."""
    return (f"python -m cbd_core matrix --datasets {dataset} --attacks {' '.join(attacks)} --poison-rates "
            f"{' '.join(f'{r:g}' for r in rates)} --defenses {' '.join(defenses)} --seeds 0")
