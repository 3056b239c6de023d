"""Defense quality on mnist5k: the attack x defense table, mean +- std over seeds.

    python bench/defense_quality.py                          # every attack, undefended + cbd, seeds 0-2
    python bench/defense_quality.py --attacks badnets blend --seeds 0
    python bench/defense_quality.py --cbd-variants           # CBD ablation: weighting, f_B choice, MI term
    python bench/defense_quality.py --jobs 2                 # cells in parallel, one core each

Each cell is a real run through the CLI (`python -m cbd_core run --json`), written under --out
(default: a temporary folder). The seconds column is the wall time of one run; with --jobs N > 1
each run gets one core, so it reads slower than a run alone on the machine (bench/speed.py
measures that). Prints a Markdown table; --csv also writes the raw per-run rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ["badnets", "blend", "trojan", "sig", "wanet"]

# CBD ablation: this project's choices against the paper's, one at a time (see defenses/cbd.py).
CBD_VARIANTS = {
    "cbd default (stable, MI 0.01)": {},
    "cbd stable, no MI": {"mi_weight": 0},
    "cbd stable, MI 0.1": {"mi_weight": 0.1},
    "cbd paper weighting": {"weighting": "paper"},
    "cbd paper weighting, no MI": {"weighting": "paper", "mi_weight": 0},
}


def run_cell(defense: str, params: dict, attack: str, seed: int, rate: float, out: Path, threads: int) -> dict:
    cmd = [sys.executable, "-m", "cbd_core", "run", "--dataset", "mnist5k", "--attack", attack,
           "--poison-rate", str(rate), "--defense", defense, "--seed", str(seed), "--device", "cpu",
           "--out", str(out), "--json"]
    for key, value in params.items():
        cmd += ["--defense-param", f"{key}={json.dumps(value)}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS)
    parser.add_argument("--defenses", nargs="+", default=["undefended", "cbd"])
    parser.add_argument("--cbd-variants", action="store_true", help="compare CBD's weighting and MI settings")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--poison-rate", type=float, default=0.1)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each gets cores / jobs threads)")
    parser.add_argument("--out", type=Path, help="runs root (default: a temporary folder)")
    parser.add_argument("--csv", type=Path, help="also write every run's summary here")
    args = parser.parse_args()

    variants = dict(CBD_VARIANTS) if args.cbd_variants else {d: {} for d in args.defenses}
    out = args.out or Path(tempfile.mkdtemp(prefix="backdoor-lab-bench-"))
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    cells = [(name, attack, seed) for attack in args.attacks for name in variants for seed in args.seeds]

    def work(cell):
        name, attack, seed = cell
        defense = "cbd" if name.startswith("cbd") else name
        summary = run_cell(defense, variants[name], attack, seed, args.poison_rate, out, threads)
        print(f"  {name:<24} {attack:<8} seed {seed}: CA {summary['clean_accuracy']:.3f} "
              f"ASR {summary['attack_success_rate']:.3f} {summary['seconds']:.0f} s", file=sys.stderr, flush=True)
        return name, attack, seed, summary

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(work, cells))

    print(f"\nmnist5k, {args.poison_rate:.0%} poison, target 0, seeds {' '.join(map(str, args.seeds))}, "
          f"{args.jobs} run(s) at a time, {threads} thread(s) each\n")
    print("| attack | defense | CA | ASR | RA | poison AUROC | seconds |")
    print("|---|---|---|---|---|---|---|")
    for attack in args.attacks:
        for name in variants:
            rows = [s for n, a, _, s in results if n == name and a == attack]
            print(f"| {attack} | {name} | {mean_std([r['clean_accuracy'] for r in rows])} | "
                  f"{mean_std([r['attack_success_rate'] for r in rows])} | "
                  f"{mean_std([r['robust_accuracy'] for r in rows])} | "
                  f"{mean_std([r['poison_detection_auroc'] for r in rows])} | "
                  f"{statistics.mean(r['seconds'] for r in rows):.0f} |")
    if args.csv:
        keys = ["variant", "attack", "seed", "clean_accuracy", "attack_success_rate", "robust_accuracy",
                "poison_detection_auroc", "seconds", "run_dir"]
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, keys, extrasaction="ignore")
            writer.writeheader()
            for name, attack, seed, summary in results:
                writer.writerow({"variant": name, "attack": attack, "seed": seed, **summary})


if __name__ == "__main__":
    main()
