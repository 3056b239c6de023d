"""Where each defense holds across poisoning rates: the rate x attack grid, trained and tabulated.

    python bench/rate_grid.py --out /tmp/backdoor-lab-bench                       # the full grid (hours)
    python bench/rate_grid.py --out /tmp/backdoor-lab-bench --rates 0.01 0.1 --seeds 0 1 2
    python bench/rate_grid.py --out /tmp/backdoor-lab-bench --no-train --write bench/results/rate_grid.md

Every cell is an ordinary run through `matrix` (finished cells under --out are reused, so an
interrupted grid resumes), trained with the defense's defaults. The tables come from
`cbd_core.rate_grid`, the same module the Compare page's "Across poison rates" view draws from, over
every finished run under --out that matches the grid's datasets, attacks and rates.

Per (dataset, attack, rate), for each defense: ASR and CA, median [min-max] over seeds, in %;
"held" = seeds where the defense's ASR <= 2 % and its CA is at most 2 points below the undefended CA
of the same seed; "made worse" = seeds with that verdict (ASR more than 5 points above the undefended
run's). With --write the tables go to a Markdown file headed by the date and the exact command.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbd_core import verdicts  # noqa: E402
from cbd_core.matrix import Cell, DefenseSpec, run_matrix  # noqa: E402
from cbd_core import rate_grid  # noqa: E402
from cbd_core.rate_grid import GridPoint, grid_points, summarise  # noqa: E402

ASR_TARGET = 0.02
CA_COST_TARGET = 0.02
RATES = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]


def pct(median: float, low: float, high: float, seeds: int) -> str:
    return f"{100 * median:.1f}" if seeds == 1 else f"{100 * median:.1f} [{100 * low:.1f}–{100 * high:.1f}]"


def held(ours: list[GridPoint], base: dict[int, GridPoint]) -> str:
    """"k/n": seeds (with an undefended twin) where ASR <= 2 % and CA within 2 points of the twin's."""
    paired = [p for p in ours if p.seed in base]
    if not paired:
        return "n/a"
    ok = sum(p.attack_success_rate <= ASR_TARGET
             and base[p.seed].clean_accuracy - p.clean_accuracy <= CA_COST_TARGET + 1e-9 for p in paired)
    return f"{ok}/{len(paired)}"


def tables(points: list[GridPoint], datasets: list[str], attacks: list[str], rates: list[float]) -> str:
    wanted = [p for p in points if p.dataset in datasets and p.attack in attacks
              and any(abs(p.poison_rate - r) < 1e-12 for r in rates)]
    lines = summarise(wanted)
    out = []
    for dataset in datasets:
        for attack in attacks:
            here = [line for line in lines if line.dataset == dataset and line.attack == attack]
            if not here:
                continue
            out += [f"\n**{dataset}, {attack}** (ASR and CA in %, median [min–max] over seeds)\n",
                    "| rate | defense | seeds | ASR | CA | held | made worse |", "|---|---|---|---|---|---|---|"]
            for line in here:
                ours = [p for p in wanted if (p.dataset, p.attack, p.line) == (dataset, attack, line.defense)
                        and p.poison_rate == line.poison_rate]
                setup = ours[0].setup if ours else ""  # a line's baseline is the undefended run of the same setup
                base = {p.seed: p for p in wanted if (p.dataset, p.attack, p.defense, p.setup)
                        == (dataset, attack, rate_grid.UNDEFENDED_LABEL, setup) and p.poison_rate == line.poison_rate}
                undefended = rate_grid.is_undefended(line.defense)
                out.append(f"| {100 * line.poison_rate:g} % | {line.defense} | {line.seeds} "
                           f"| {pct(line.asr_median, line.asr_min, line.asr_max, line.seeds)} "
                           f"| {pct(line.ca_median, line.ca_min, line.ca_max, line.seeds)} "
                           f"| {'–' if undefended else held(ours, base)} "
                           f"| {'–' if undefended else line.verdicts.get(verdicts.MADE_WORSE, 0)} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="runs root (reused: finished cells are kept)")
    parser.add_argument("--datasets", nargs="+", default=["mnist5k"])
    parser.add_argument("--attacks", nargs="+", default=["badnets", "blend", "trojan"])
    parser.add_argument("--rates", nargs="+", type=float, default=RATES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--defenses", nargs="+", default=["cbd"], help="besides the undefended model")
    parser.add_argument("--no-train", action="store_true", help="only tabulate the finished runs under --out")
    parser.add_argument("--write", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args()

    if not args.no_train:
        specs = [DefenseSpec("undefended")] + [DefenseSpec.parse(d) for d in args.defenses]
        # rate by rate, so an interrupted grid has whole rates rather than a scatter
        cells = [Cell(d, attack, spec, seed, rate) for rate in args.rates for d in args.datasets
                 for attack in args.attacks for seed in args.seeds for spec in specs]
        run_matrix(cells, args.out, report=lambda line: print(line, file=sys.stderr, flush=True))
    text = tables(grid_points(args.out), args.datasets, args.attacks, args.rates)
    print(text)
    if args.write:
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(f"<!-- generated by bench/rate_grid.py: do not edit by hand -->\n"
                              f"Generated {datetime.date.today().isoformat()} by `{command}`.\n{text}\n")
        print(f"\nwritten: {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
