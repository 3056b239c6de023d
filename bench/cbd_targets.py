"""Does CBD with its defaults hold beyond the data it was tuned on? The issue's targets, per dataset.

    python bench/cbd_targets.py --out /tmp/cbd-targets                 # every set, seeds 0-4 (~1.5 h, 2 cores)
    python bench/cbd_targets.py --out /tmp/cbd-targets --datasets mnist5k --attacks blend

For each dataset (mnist5k and the evaluation sets of bench/eval_datasets.py, built under
<out>/datasets), attack and seed it trains the undefended model and CBD, every one with its
defaults, through `matrix` (so cells already under --out are reused, and each is an ordinary run
folder). Target per seed: CBD's ASR <= 2% and its CA at most 2 points below the undefended CA of the
same poisoned data and seed; met when it holds on >= 4 of 5 seeds. Prints one Markdown row per
(dataset, attack): medians and [min-max] over seeds, the seeds meeting the target, and on how many
seeds f_B had the trigger (`f_b_capture`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval_datasets import build  # noqa: E402

from cbd_core.matrix import Cell, DefenseSpec, run_matrix  # noqa: E402

ASR_TARGET = 0.02
CA_COST_TARGET = 0.02
DATASETS = ["mnist5k", "mnist1k", "mnist2k", "mnist20", "shapes"]


def spread(values: list[float], percent: bool = False) -> str:
    """median [min–max]; fractions as 0.968, or in % with one decimal."""
    scale, fmt = (100, "{:.1f}") if percent else (1, "{:.3f}")
    med, lo, hi = (fmt.format(v * scale) for v in (statistics.median(values), min(values), max(values)))
    return f"{med} [{lo}–{hi}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="runs root (reused: finished cells are kept)")
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--attacks", nargs="+", default=["badnets", "blend", "trojan"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--poison-rate", type=float, default=0.1)
    parser.add_argument("--cbd", default="cbd", help="the CBD spec to measure, e.g. cbd:backdoor_loss=final")
    args = parser.parse_args()

    files = build(args.out / "datasets")
    names = {name: (name if name == "mnist5k" else str(files[name])) for name in args.datasets}
    undefended, cbd = DefenseSpec("undefended"), DefenseSpec.parse(args.cbd)
    cells = [Cell(names[d], attack, spec, seed, args.poison_rate)
             for d in args.datasets for attack in args.attacks for seed in args.seeds for spec in (undefended, cbd)]
    results = dict(run_matrix(cells, args.out, report=lambda line: print(line, file=sys.stderr, flush=True)))

    print(f"\nCBD ({args.cbd}) against the undefended model, poison rate {args.poison_rate:.0%}, target label 0, "
          f"seeds {' '.join(map(str, args.seeds))}; ASR in %, median [min–max]")
    print("| dataset | attack | undefended CA | undefended ASR | CBD CA | CBD ASR | CA cost (points) | "
          "target met | f_B captured |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in args.datasets:
        for attack in args.attacks:
            base = [results[Cell(names[d], attack, undefended, s, args.poison_rate)] for s in args.seeds]
            ours = [results[Cell(names[d], attack, cbd, s, args.poison_rate)] for s in args.seeds]
            costs = [b["clean_accuracy"] - o["clean_accuracy"] for b, o in zip(base, ours)]
            met = sum(o["attack_success_rate"] <= ASR_TARGET and c <= CA_COST_TARGET + 1e-9
                      for o, c in zip(ours, costs))
            captured = sum(bool((o.get("f_b_capture") or {}).get("captured")) for o in ours)
            print(f"| {d} | {attack} | {spread([b['clean_accuracy'] for b in base])} "
                  f"| {spread([b['attack_success_rate'] for b in base], True)} "
                  f"| {spread([o['clean_accuracy'] for o in ours])} | {spread([o['attack_success_rate'] for o in ours], True)} "
                  f"| {spread(costs, percent=True)} | {met}/{len(ours)} "
                  f"| {captured}/{len(ours)} |")


if __name__ == "__main__":
    main()
