"""Defense quality on mnist5k: the attack x defense table, median [min–max] over seeds.

    python bench/defense_quality.py                          # every attack, undefended + cbd, seeds 0-2
    python bench/defense_quality.py --attacks badnets blend --seeds 0
    python bench/defense_quality.py --cbd-variants           # CBD ablation: weighting and MI term
    python bench/defense_quality.py --defenses all           # every registered defense

A thin wrapper over `python -m cbd_core matrix` (cbd_core/matrix.py): every cell is a real run under
--out (default: a temporary folder), and rerunning with the same --out reuses finished cells. The
seconds column is one run's own time; with --jobs N, N runs share the cores (each with the threads its
config names), so it reads slower than a run alone on the machine (bench/speed.py measures that).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbd_core.attacks import ATTACKS  # noqa: E402
from cbd_core.config import default_threads  # noqa: E402
from cbd_core.defenses import DEFENSES  # noqa: E402
from cbd_core.matrix import Cell, DefenseSpec, run_matrix, write_tables  # noqa: E402

# CBD ablation: this project's weighting against the paper's, with the MI term at 0.1 (default), 0, 0.01.
CBD_VARIANTS = ["cbd", "cbd:mi_weight=0", "cbd:mi_weight=0.01", "cbd:weighting=paper",
                "cbd:weighting=paper,mi_weight=0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    parser.add_argument("--defenses", nargs="+", default=["undefended", "cbd"], help="names, specs, or all")
    parser.add_argument("--cbd-variants", action="store_true", help="compare CBD's weighting and MI settings")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--poison-rate", type=float, default=0.1)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, sharing the cores")
    parser.add_argument("--out", type=Path, help="runs root (default: a temporary folder)")
    parser.add_argument("--threads", type=int, help="CPU threads per run (part of each run's config; default: "
                        "the machine's cores, at most 8)")
    args = parser.parse_args()

    if args.cbd_variants:
        names = CBD_VARIANTS
    elif args.defenses == ["all"]:
        names = list(DEFENSES)
    else:
        names = args.defenses
    specs = [DefenseSpec.parse(name) for name in names]
    out = args.out or Path(tempfile.mkdtemp(prefix="backdoor-lab-bench-"))
    cells = [Cell("mnist5k", attack, spec, seed, args.poison_rate)
             for attack in args.attacks for spec in specs for seed in args.seeds]
    results = run_matrix(cells, out, jobs=args.jobs, device="cpu", threads=args.threads,
                         report=lambda line: print(line, file=sys.stderr, flush=True))
    csv_path, _, markdown = write_tables(results, out / "matrix")
    print(f"mnist5k, {args.poison_rate:.0%} poison, target 0, seeds {' '.join(map(str, args.seeds))}, "
          f"{args.jobs} run(s) at a time, {args.threads or default_threads()} thread(s) each "
          f"(runs: {out}, CSV: {csv_path})\n")
    print(markdown)


if __name__ == "__main__":
    main()
