"""The explorer's grid: finished runs by poison rate x attack x defense, so a class can move between
real runs at once instead of queueing a new one for every question.

    explorer_grid(root, dataset)         Grid: the rates, attacks and defenses present, and per cell the
                                         newest finished run (seed 0 first, the presets' seed)
    explorer_grids(root)                 {dataset: Grid} for every dataset with finished runs, from one
                                         scan (the embedded data first): a grid on 2,000 images or a
                                         user's .npz is explored as the embedded one is
    fill_command(dataset, attacks, rates, defenses)   the command that trains missing cells (`matrix`)

The runs and their cells are `cbd_core.rate_grid`'s (`finished_runs`, `GridPoint.cell`: one
definition of a finished run, its verdict and its cell for the Explorer, the Compare page's "Across
poison rates" chart and bench/rate_grid.py). The Explorer shows one run per cell: the newest of seed 0
(the presets' and `fill_command`'s seed), else the newest of any seed; a run with the defense's defaults
before an ablation; whatever its target label (the run's page shows it). Runs with an attack parameter or
a model set away from the defaults are a different question and left out; unreadable runs are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import verdicts
from .rate_grid import GridPoint, finished_runs

EMBEDDED = "mnist5k"  # the presets' and the class's data
Key = tuple[str, float, str]  # (attack, poison rate, defense name): a rate_grid cell on one dataset


@dataclass
class Grid:
    dataset: str = EMBEDDED
    source: str = EMBEDDED  # what `matrix --datasets` takes to fill a cell: the dataset's name or its .npz file
    attacks: list[str] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    defenses: list[str] = field(default_factory=list)  # registry names, undefended first
    cells: dict[Key, str] = field(default_factory=dict)  # run id of each filled cell
    points: dict[Key, GridPoint] = field(default_factory=dict)  # the run each cell shows, with its verdict

    def run_id(self, attack: str, rate: float, defense: str) -> str | None:
        return self.cells.get((attack, round(rate, 6), defense))

    def verdict(self, attack: str, rate: float, defense: str) -> str | None:
        """The cell's verdict (judged when the grid was read, against the baseline there was then)."""
        point = self.points.get((attack, round(rate, 6), defense))
        return point.verdict if point is not None else None

    def variant(self, attack: str, rate: float, defense: str) -> str | None:
        """The line label of the run the cell shows ("CBD (shortcut_cut=3.0)") where that run is a
        variant, because the cell has no run with the defense's defaults; None where it has one."""
        point = self.points.get((attack, round(rate, 6), defense))
        return None if point is None or _with_defaults(point) else point.defense


def _with_defaults(point: GridPoint) -> bool:
    from .defenses import DEFENSES

    return point.defense_name == verdicts.UNDEFENDED or (
        point.defense_name in DEFENSES and point.defense == DEFENSES[point.defense_name].title)


def _preference(point: GridPoint) -> tuple[bool, bool]:
    """Lower is shown first: the defense with its defaults (an ablation such as "CBD (unfitted=off)"
    only where no default run exists), then seed 0."""
    return (not _with_defaults(point), point.seed != 0)


def explorer_grids(root: str | Path | None) -> dict[str, Grid]:
    """Every finished run with the attacks' default settings and the default model, by dataset and then
    by (attack, rate, defense): per cell the newest with the defense's defaults and seed 0, else the newest
    with its defaults, else the newest of any parameters (`_preference`). The embedded data's grid comes
    first, the others by name."""
    grids: dict[str, Grid] = {}
    for point in finished_runs(root):  # newest first
        if point.setup:  # another attack setting or model: a different question than the cell asks
            continue
        grid = grids.setdefault(point.dataset, Grid(point.dataset, point.source or point.dataset))
        _, attack, defense, rate = point.cell
        key = (attack, round(rate, 6), defense)
        held = grid.points.get(key)
        if held is None or _preference(point) < _preference(held):
            grid.points[key] = point
    for grid in grids.values():
        grid.cells = {key: point.run_id for key, point in grid.points.items()}
        grid.attacks = sorted({k[0] for k in grid.cells})
        grid.rates = sorted({k[1] for k in grid.cells})
        grid.defenses = sorted({k[2] for k in grid.cells}, key=lambda d: (d != verdicts.UNDEFENDED, d))
    return {name: grids[name] for name in sorted(grids, key=lambda name: (name != EMBEDDED, name))}


def explorer_grid(root: str | Path | None, dataset: str = EMBEDDED) -> Grid:
    """`explorer_grids`' grid of one dataset (an empty one where it has no finished run)."""
    return explorer_grids(root).get(dataset) or Grid(dataset, dataset)


def fill_command(dataset: str, attacks: list[str], rates: list[float], defenses: list[str]) -> str:
    """The command that trains these cells on seed 0 (matrix reuses the cells already done)."""
    return (f"python -m cbd_core matrix --datasets {dataset} --attacks {' '.join(attacks)} --poison-rates "
            f"{' '.join(f'{r:g}' for r in rates)} --defenses {' '.join(defenses)} --seeds 0")
