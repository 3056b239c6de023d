"""Where each defense holds: finished runs across poisoning rates, the picture the Compare page's
"Across poison rates" view draws, bench/rate_grid.py tabulates and the Explorer page moves through
(one module, so all three mean the same by a grid cell).

    runs = finished_runs(root)        one GridPoint per finished run (figures None when its summary has none)
    points = grid_points(root)        the same, only runs with finite CA and ASR
    lines = summarise(points)         per (dataset, attack, defense, rate): median and min-max over seeds

A grid cell is (dataset, attack, defense name, poison rate) (`GridPoint.cell`); within it each line
(the defense with its defaults, or a variant) has its seeds and target labels.

A run's defense is labelled by its title plus any parameter set away from its defaults
("CBD (unfitted=off)"), so an ablation is a line of its own; an attack parameter or a model set away
from the defaults (`GridPoint.setup`, "alpha=0.3, model=resnet18") makes a line of its own too
("Undefended [alpha=0.3]"), never a seed of the default line. Runs that differ only in what does not
change the data or the defense (threads, device) count as the same seed: the newest is kept.
Verdicts are judged against the undefended run on the same data that exists now (`verdicts`).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from . import verdicts
from .data import data_source, dataset_labels
from .errors import UserInputError
from .run_index import scan


UNDEFENDED_LABEL = "Undefended"  # the undefended runs' line, drawn apart (dashed grey) and listed first


@dataclass(frozen=True)
class GridPoint:
    dataset: str
    attack: str
    defense: str  # the line's label: "Undefended", "CBD", "CBD (unfitted=off)"
    poison_rate: float
    seed: int
    clean_accuracy: float | None  # None only from `finished_runs`, for a summary without figures
    attack_success_rate: float | None
    verdict: str
    run_id: str
    defense_name: str = ""  # the registry's name ("cbd"), what `matrix --defenses` takes
    target_label: int | None = None
    setup: str = ""  # attack parameters and model set away from the defaults ("alpha=0.3"); "" when none
    source: str = ""  # what `matrix --datasets` takes for the run's data: the dataset's name or its .npz file

    @property
    def line(self) -> str:
        """The chart line this run belongs to: its defense label, plus its setup when it has one."""
        return f"{self.defense} [{self.setup}]" if self.setup else self.defense

    @property
    def cell(self) -> tuple[str, str, str, float]:
        """The grid cell this run sits in: (dataset, attack, defense name, poison rate). A cell may hold
        several lines (`defense`: the defaults and each variant, "CBD (unfitted=off)") and seeds."""
        return (self.dataset, self.attack, self.defense_name, self.poison_rate)


@dataclass(frozen=True)
class GridLine:
    """One (dataset, attack, defense, rate) over its seeds."""

    dataset: str
    attack: str
    defense: str  # the line's label (`GridPoint.line`): "CBD", "CBD (unfitted=off)", "Undefended [alpha=0.3]"
    poison_rate: float
    seeds: int
    asr_median: float
    asr_min: float
    asr_max: float
    ca_median: float
    ca_min: float
    ca_max: float
    verdicts: dict[str, int]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _changed(component: Any, params: Any, image_shape: tuple[int, ...] | None, skip: tuple[str, ...] = ()) -> list[str]:
    """"k=v" for each of `params` (a run's attack_params or defense_params) that differs from the
    component's defaults for this image shape; none when there is nothing to compare with (no
    component, a hand-edited shape or params). A parameter the run's config does not name (the run
    predates it) counts as what such runs did (`Param.before`), so an older run is never taken for
    one with today's defaults; one the component no longer has (a run from other code: a parameter
    removed since, a hand-edited name) is named too, so such a run is never taken for them either."""
    if component is None or not isinstance(params, dict) or not params or not image_shape or len(image_shape) != 3:
        return []
    try:
        defaults = component.defaults(tuple(image_shape))
    except Exception:  # a hand-edited shape: nothing to compare with
        return []
    older = {p.name: p.before for p in getattr(component, "params", ()) if p.before is not None}
    params = {**{k: v for k, v in older.items() if k not in params}, **params}
    return [f"{k}={v}" for k, v in sorted(params.items())
            if k not in skip and (k not in defaults or defaults[k] != v)]


def defense_label(config: dict[str, Any], image_shape: tuple[int, ...] | None) -> str:
    """The defense's title, plus the parameters the run set away from the defense's defaults."""
    from .defenses import DEFENSES

    name = str(config.get("defense") or "?")
    defense = DEFENSES.get(name)
    if defense is None:
        return name
    if name == verdicts.UNDEFENDED:
        return UNDEFENDED_LABEL  # the baseline of every line: its training settings are not a variant
    # epochs follow the defense's main model in every grid line, so they do not make a variant
    changed = _changed(defense, config.get("defense_params"), image_shape, skip=("epochs",))
    return f"{defense.title} ({', '.join(changed)})" if changed else defense.title


def is_undefended(line: str) -> bool:
    """Whether a line label (`GridPoint.line`, `GridLine.defense`) is an undefended one, drawn dashed."""
    return line == UNDEFENDED_LABEL or line.startswith(UNDEFENDED_LABEL + " [")


def setup_label(config: dict[str, Any], image_shape: tuple[int, ...] | None) -> str:
    """The attack parameters the run set away from its attack's defaults for this image shape, and its
    model when one was named: "alpha=0.3, model=resnet18"; "" for the defaults."""
    from .attacks import ATTACKS

    changed = _changed(ATTACKS.get(str(config.get("attack"))), config.get("attack_params"), image_shape)
    if config.get("model") is not None:
        changed.append(f"model={config['model']}")
    return ", ".join(changed)


def finished_runs(root: str | Path | None) -> list[GridPoint]:
    """Every finished, readable run under `root` with a poison rate and a seed, newest first and the
    newest only per (cell, target, seed); its clean_accuracy and attack_success_rate are None (and
    its verdict "n/a") when its summary holds no finite figures. Unreadable folders are skipped (the
    Runs page lists them)."""
    pool = scan(root)  # one pass over the runs root, for the runs and for their baselines
    undefended = verdicts.undefended_runs(root, pool)
    seen: dict[tuple, GridPoint] = {}
    for found in pool:  # newest first
        if found.state != "done":
            continue
        run, config = found.run, found.config
        try:
            if run.problem():
                continue
            summary = run.summary()
        except (OSError, ValueError, UserInputError):
            continue
        summary = summary if isinstance(summary, dict) else {}
        ca, asr = _finite(summary.get("clean_accuracy")), _finite(summary.get("attack_success_rate"))
        rate, seed = _finite(config.get("poison_rate")), config.get("seed")
        if rate is None or isinstance(seed, bool) or not isinstance(seed, int):
            continue
        source = data_source(config)
        result = verdicts.NOT_APPLICABLE
        if asr is not None:
            result = verdicts.verdict(summary, verdicts.lookup_baseline(config, root, undefended).summary)
        target = config.get("target_label")
        shape = tuple(summary.get("image_shape") or ())
        point = GridPoint(source, str(config.get("attack")), defense_label(config, shape),
                          rate, seed, ca, asr, result, run.run_id, str(config.get("defense") or "?"),
                          target if isinstance(target, int) and not isinstance(target, bool) else None,
                          setup_label(config, shape), source)
        # The newest per chart point. Not a run_index match: a point is keyed by what the chart labels (the
        # data, the defense's title plus its settings away from the defaults of the summary's image shape,
        # the attack's and model's), and this module is its one definition for Compare, the Explorer and bench.
        seen.setdefault((*point.cell, point.line, point.target_label, seed), point)
    # Keyed by source above; each point then takes its data's name (`data.dataset_labels`), which differs
    # between different files even where their names would not.
    labels = dataset_labels(p.source for p in seen.values())
    return [replace(p, dataset=labels[p.source]) for p in seen.values()]


def grid_points(root: str | Path | None) -> list[GridPoint]:
    """Every finished run under `root` whose summary holds finite CA and ASR, newest per (dataset,
    attack, defense, rate, target, seed); unreadable folders are skipped (the Runs page lists them)."""
    return [p for p in finished_runs(root) if p.clean_accuracy is not None and p.attack_success_rate is not None]


def summarise(points: Iterable[GridPoint]) -> list[GridLine]:
    """Median and min-max of ASR and CA over seeds per (dataset, attack, defense, rate), sorted by
    dataset, attack, defense (Undefended first) and rate."""
    groups: dict[tuple[str, str, str, float], list[GridPoint]] = {}
    for p in points:
        groups.setdefault((p.dataset, p.attack, p.line, p.poison_rate), []).append(p)
    lines = []
    for (dataset, attack, defense, rate), members in groups.items():
        asr = [m.attack_success_rate for m in members]
        ca = [m.clean_accuracy for m in members]
        lines.append(GridLine(dataset, attack, defense, rate, len(members), statistics.median(asr), min(asr), max(asr),
                              statistics.median(ca), min(ca), max(ca),
                              dict(Counter(m.verdict for m in members if m.verdict != verdicts.NOT_APPLICABLE))))
    return sorted(lines, key=lambda l: (l.dataset, l.attack, not is_undefended(l.defense), l.defense, l.poison_rate))


def missing_cells(lines: list[GridLine], dataset: str, attack: str) -> list[tuple[str, float]]:
    """(defense, rate) pairs that some defense of this dataset and attack has and another lacks: the
    holes in the picture, which `matrix` fills."""
    here = [l for l in lines if l.dataset == dataset and l.attack == attack]
    rates = sorted({l.poison_rate for l in here})
    defenses = sorted({l.defense for l in here})
    have = {(l.defense, l.poison_rate) for l in here}
    return [(d, r) for d in defenses for r in rates if (d, r) not in have]


def runs_like(points: Iterable[GridPoint], source: str, attack: str, poison_rate: float, line: str,
              setup: str = "", target_label: int | None = None) -> tuple[GridLine | None, GridLine | None]:
    """(the line `line` of this data (`source`: `data.data_source` of a config), attack, rate, attack setup and
    target label (any, where None), the
    undefended line beside it) over `points`, each None where no finished run has it: what the runs already
    here say about a setting before a new run of it starts."""
    undefended = UNDEFENDED_LABEL + (f" [{setup}]" if setup else "")
    wanted = f"{line} [{setup}]" if setup else line
    found: dict[str, GridLine] = {}
    for grid_line in summarise(p for p in points if p.source == source and p.attack == attack
                               and round(p.poison_rate, 6) == round(poison_rate, 6) and p.setup == setup
                               and (target_label is None or p.target_label == target_label)):
        found[grid_line.defense] = grid_line
    return found.get(wanted), (None if wanted == undefended else found.get(undefended))


def _asr_spread(line: GridLine) -> str:
    if line.seeds == 1:
        return f"{line.asr_median:.1%}"
    return f"{line.asr_median:.1%} [{line.asr_min:.1%}–{line.asr_max:.1%}]"


def runs_like_sentence(line: GridLine | None, undefended: GridLine | None) -> str | None:
    """One sentence on the finished runs of a setting (its verdicts by count, its ASR median [min–max] over
    seeds, the undefended runs' beside it), saying outright when one was made worse; None without runs."""
    if line is None:
        return None
    seeds = f"{line.seeds} seed{'s' if line.seeds != 1 else ''}"
    counts = ", ".join(f"{verdict} on {line.verdicts[verdict]}" for verdict in verdicts.VERDICTS
                       if line.verdicts.get(verdict))
    text = (f"Finished runs here with these settings ({line.defense}, {seeds}): "
            + (f"{counts}; " if counts and not is_undefended(line.defense) else "")
            + f"attack success rate {_asr_spread(line)}"
            + (f" against {_asr_spread(undefended)} undefended" if undefended is not None else "") + ".")
    worse = line.verdicts.get(verdicts.MADE_WORSE, 0)
    if worse:
        text += f" On {worse} of them {line.defense} left the attack stronger than no defense did; a new run may too."
    return text
