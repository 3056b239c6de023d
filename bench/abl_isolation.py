"""Does ABL isolate the same samples whatever the thread count? Its isolation, over seeds x threads.

    python bench/abl_isolation.py --out /tmp/backdoor-lab-bench                   # BadNets 10 %, seeds 0-4 x 1, 2, 4 threads
    python bench/abl_isolation.py --out /tmp/backdoor-lab-bench --attacks blend trojan --seeds 0 1 2 --threads 1 2
    python bench/abl_isolation.py --out /tmp/backdoor-lab-bench --write bench/results/abl_isolation.md

Each cell is an ordinary ABL run (`python -m cbd_core run --defense abl --threads T`) with the
defaults' isolation length, one clean epoch and no unlearning (only isolation is measured; what
follows it cannot change the isolated set). The run records every isolation epoch's per-sample
losses (`isolation_loss_epochs`), so both rankings are read from the same run with ABL's own
`window_loss`: the official one (the loss after epoch 4, the old default length, "last"), the
geometric mean over the second half of isolation ("window", the default until 2026-12-08) and the
default, each sample's mean rank by loss over that half ("ranks"). Finished runs under --out are
reused. Precision is the share of the isolated 1 % that is really poisoned; the true
mask is only used to score.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbd_core.config import RunConfig  # noqa: E402
from cbd_core.defenses.abl import ABL, isolate_lowest, window_loss  # noqa: E402
from cbd_core.pipeline import execute, prepare  # noqa: E402
from cbd_core import run_index  # noqa: E402
from cbd_core.runs import RunDir  # noqa: E402

OFFICIAL_EPOCHS = 4  # the isolation length (28x28) before the window, ranked on its last epoch


def config(attack: str, rate: float, seed: int, threads: int) -> RunConfig:
    return RunConfig(dataset="mnist5k", attack=attack, poison_rate=rate, target_label=0, defense="abl", seed=seed,
                     threads=threads, defense_params={"epochs": 1, "unlearn_epochs": 0})


def run_cell(out: Path, wanted: RunConfig) -> RunDir:
    """The finished run under `out` with this config (so a grid resumes), else a new one."""
    prepared = prepare(wanted)
    done = run_index.find(prepared.config.to_dict(), run_index.SAME_CELL, ("done",), out)
    if done:
        return done[0].run
    run = RunDir.create(out, prepared.config.to_dict())
    execute(prepared, run)
    return run


RANKINGS = ("official", "window", "ranks")


def precisions(run: RunDir) -> tuple[float, float, float]:
    record = run.arrays("sample_weights")
    epochs = list(record["isolation_loss_epochs"])
    poisoned = np.asarray(record["is_poisoned"], dtype=bool)
    ratio = run.config()["defense_params"]["isolation_ratio"]
    official = isolate_lowest(window_loss(epochs[:OFFICIAL_EPOCHS], "last"), ratio)
    window = isolate_lowest(window_loss(epochs, "window"), ratio)
    ranks = isolate_lowest(window_loss(epochs, "ranks"), ratio)
    return float(poisoned[official].mean()), float(poisoned[window].mean()), float(poisoned[ranks].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="runs root for the bench's runs")
    parser.add_argument("--attacks", nargs="+", default=["badnets"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--write", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    isolation_epochs = ABL().defaults((28, 28, 1))["isolation_epochs"]

    rows = ["| attack | rate | seed | " + " | ".join(f"{t} thr: " + " / ".join(RANKINGS) for t in args.threads) + " |",
            "|---|---|---|" + "---|" * len(args.threads)]
    found: dict[str, list[float]] = {name: [] for name in RANKINGS}
    for attack in args.attacks:
        for rate in args.rates:
            for seed in args.seeds:
                cells = []
                for threads in args.threads:
                    values = precisions(run_cell(args.out, config(attack, rate, seed, threads)))
                    for name, value in zip(RANKINGS, values):
                        found[name].append(value)
                    cells.append(" / ".join(f"{v:.2f}" for v in values))
                    print(f"{attack} {rate:g} seed {seed} threads {threads}: " +
                          ", ".join(f"{name} {v:.2f}" for name, v in zip(RANKINGS, values)), flush=True)
                rows.append(f"| {attack} | {100 * rate:g} % | {seed} | " + " | ".join(cells) + " |")

    def tally(values: list[float]) -> str:
        return (f"median {statistics.median(values):.2f}, min {min(values):.2f}, "
                f"{sum(v >= 0.9 for v in values)}/{len(values)} runs >= 0.9")

    window = f"epochs {isolation_epochs // 2 + 1}-{isolation_epochs}"
    lines = [f"ABL isolation precision (share of the isolated 1 % that is poisoned), mnist5k, {isolation_epochs} isolation "
             f"epochs. official = the loss after epoch {OFFICIAL_EPOCHS} (the code's ranking at the old length); "
             f"window = the geometric mean of the losses over {window} (`isolation_score=window`); ranks = the default, "
             f"each sample's mean rank by loss over {window} (`isolation_score=ranks`).", "",
             *rows, "", "; ".join(f"{name}: {tally(found[name])}" for name in RANKINGS) + "."]
    table = "\n".join(lines)
    print()
    print(table)
    if args.write:
        command = "python bench/abl_isolation.py " + shlex.join(sys.argv[1:])
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(f"<!-- written by `{command}` on {datetime.date.today().isoformat()} -->\n\n"
                              f"{table}\n")


if __name__ == "__main__":
    main()
