"""Wall time of the Quick-demo run on this machine: mnist5k, BadNets 10%, default CBD, all cores.

    python bench/speed.py [--repeats 3] [--defense cbd]

Runs the CLI in a fresh process each time (so torch's import and the dataset's first load count,
as they do for a user) and prints a table: total wall seconds (process start to exit) and the
run's own seconds (training + evaluation + writing the run folder), with CA and ASR, then the median.
Run i uses seed i - 1; threads are the config's default (the machine's cores, at most 8).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--defense", default="cbd")
    parser.add_argument("--attack", default="badnets")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="backdoor-lab-speed-"))
    sys.path.insert(0, str(ROOT))
    from cbd_core.config import default_threads

    print(f"{os.cpu_count()} CPU cores, {default_threads()} torch threads (the config's default)\n")
    print("| run | defense | attack | wall s | run s | CA | ASR | device |")
    print("|---|---|---|---|---|---|---|---|")
    walls, runs = [], []
    for i in range(args.repeats):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "cbd_core", "run", "--attack", args.attack, "--defense",
                               args.defense, "--seed", str(i), "--out", str(out), "--json"],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(done.stderr)
        s = json.loads(done.stdout.strip().splitlines()[-1])
        walls.append(wall)
        runs.append(s["seconds"])
        print(f"| {i + 1} | {args.defense} | {args.attack} | {wall:.1f} | {s['seconds']:.1f} | "
              f"{s['clean_accuracy']:.3f} | {s['attack_success_rate']:.3f} | {s['device']} |")
    import statistics

    print(f"| median | | | {statistics.median(walls):.1f} | {statistics.median(runs):.1f} | | | |")


if __name__ == "__main__":
    main()
