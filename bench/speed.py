"""How long the Quick demo takes, as the dashboard runs it: through the background worker.

    python bench/speed.py [--repeats 3] [--cli]

One run prints, each figure the median of `--repeats` (seeds 0, 1, 2, ...), with the core count:

- cold worker ready: from asking for a worker (`jobs.ensure_workers`, what Start does when none is
  running) to its info file saying "ready" (torch imported, the training code and mnist5k loaded);
- Start to done, warm worker: from `jobs.submit` (validation and poisoning in this process, as the
  app does) to status "done", with a worker that has trained before;
- first live point: from submit to the first progress in status.json (a step counted) and to the
  first metrics line (the first point of the Train page's curves: f_B's first quarter);
- CBD f_C epoch / undefended epoch: median `epoch_seconds` of f_C's epochs against an undefended
  run's on the same data and model (both from the runs' metrics.jsonl);
- contention: Start to done while another process runs single-thread torch inference non-stop (what
  a page computing attributions does) against the same run without it.

`--cli` adds the former table: a fresh `python -m cbd_core run` process per seed (wall seconds from
process start, and the run's own seconds). Threads are the config's default (the machine's cores,
at most 8); workers run with OMP_WAIT_POLICY=PASSIVE, as the launcher starts them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The competitor: single-thread inference of the small CNN, non-stop, like a page explaining a run.
COMPETITOR = """
import torch
torch.set_num_threads(1)
from cbd_core.models import build_model
model = build_model("cnn", 1, 10).eval()
x = torch.rand(64, 1, 28, 28)
with torch.no_grad():
    while True:
        model(x)
"""


def wait(predicate, timeout: float, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("timed out")


def worker_state(root: Path) -> str | None:
    from cbd_core import jobs

    found = [w for w in jobs.workers(root) if w.alive]
    return found[0].state if found else None


def start_worker(root: Path) -> float:
    """Ask for a worker as Start does; seconds until it says "ready"."""
    from cbd_core import jobs

    started = time.perf_counter()
    jobs.ensure_workers(root, devices=["cpu"], per_device=1)
    wait(lambda: worker_state(root) == "ready", 120)
    return time.perf_counter() - started


def timed_run(root: Path, config) -> dict:
    """Submit `config` to the running worker; seconds to the first progress, the first metrics line
    and done; then wait until the worker is idle again (its map of the run computed)."""
    from cbd_core import jobs

    started = time.perf_counter()
    run = jobs.submit(config, root, start_worker=False)
    marks: dict[str, float] = {}
    while True:
        status = run.status()
        now = time.perf_counter() - started
        if "progress" not in marks and (status.get("progress") or {}).get("step"):
            marks["progress"] = now
        if "point" not in marks and (run.path / "metrics.jsonl").exists() and run.metrics():
            marks["point"] = now
        if status.get("state") in ("done", "failed", "cancelled"):
            marks["done"] = now
            break
        time.sleep(0.01)
    if status["state"] != "done":
        sys.exit(f"run {run.run_id} {status['state']}: {status.get('error')}")
    wait(lambda: worker_state(root) == "ready" and run.status().get("analysis") in ("done", "failed"), 300, 0.1)
    summary = run.summary()
    marks.update(ca=summary["clean_accuracy"], asr=summary["attack_success_rate"], metrics=run.metrics())
    shutil.rmtree(run.path)  # else submitting the same config again returns this run instead of training
    return marks


def epoch_seconds(metrics: list[dict], phase: str) -> float:
    return statistics.median(m["epoch_seconds"] for m in metrics if m["phase"] == phase)


def cli_runs(repeats: int, out: Path) -> None:
    print("\n| seed | wall s (fresh process) | run s | CA | ASR |\n|---|---|---|---|---|")
    walls, runs = [], []
    for seed in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "cbd_core", "run", "--seed", str(seed), "--out", str(out),
                               "--json"], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(done.stderr)
        s = json.loads(done.stdout.strip().splitlines()[-1])
        walls.append(wall)
        runs.append(s["seconds"])
        print(f"| {seed} | {wall:.1f} | {s['seconds']:.1f} | {s['clean_accuracy']:.3f} | "
              f"{s['attack_success_rate']:.3f} |")
    print(f"| median | {statistics.median(walls):.1f} | {statistics.median(runs):.1f} | | |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also time fresh CLI processes")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # this process's torch too (submit poisons here)
    import dataclasses

    from cbd_core import jobs
    from cbd_core.config import default_threads, quick_demo_config

    root = Path(tempfile.mkdtemp(prefix="backdoor-lab-speed-"))
    n = args.repeats
    print(f"{os.cpu_count()} CPU cores, {default_threads()} torch threads (the config's default); "
          f"median of {n}; runs root {root}; load average at the start {os.getloadavg()[0]:.1f}\n")

    cold = []
    for _ in range(n):
        cold.append(start_worker(root))
        jobs.stop_workers(root)
    start_worker(root)
    demo = quick_demo_config()
    first = timed_run(root, dataclasses.replace(demo, seed=99))  # the worker's first run: not counted
    wait(lambda: "UMAP warm-up took" in (root / ".workers" / "cpu-0.log").read_text(), 300, 0.2)

    quiet, undefended, busy = [], [], []
    for seed in range(n):
        quiet.append(timed_run(root, dataclasses.replace(demo, seed=seed)))
        undefended.append(timed_run(root, dataclasses.replace(demo, seed=seed, defense="undefended")))
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        time.sleep(2)  # its imports done: from here on it only computes
        for seed in range(n):
            busy.append(timed_run(root, dataclasses.replace(demo, seed=seed)))
    finally:
        os.kill(competitor.pid, signal.SIGTERM)
        competitor.wait()
        jobs.stop_workers(root)

    def med(values):
        return statistics.median(values)

    ratios = [epoch_seconds(q["metrics"], "f_C") / epoch_seconds(u["metrics"], "train")
              for q, u in zip(quiet, undefended)]
    rows = [
        ("cold worker ready (s)", med(cold), "<= 5"),
        ("Start to done, warm worker (s)", med(r["done"] for r in quiet), "<= 15 (stretch 12)"),
        ("Start to first progress (s)", med(r["progress"] for r in quiet), ""),
        ("Start to first curve point (s)", med(r["point"] for r in quiet), "<= 3"),
        ("CBD f_C epoch / undefended epoch", med(ratios), "<= 1.4"),
        ("slowdown beside a busy 1-thread process", med(b["done"] / q["done"] for b, q in zip(busy, quiet)), "<= 1.5"),
    ]
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(above the core count, other processes shared the CPU and every figure is slower)\n")
    print("| figure | median | target |\n|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value:.2f} | {target} |")
    print("\nper seed: Start to done quiet / busy (s), f_C epoch / undefended epoch (s), CA, ASR")
    for seed, (q, u, b) in enumerate(zip(quiet, undefended, busy)):
        print(f"  seed {seed}: {q['done']:.1f} / {b['done']:.1f}; {epoch_seconds(q['metrics'], 'f_C'):.2f} / "
              f"{epoch_seconds(u['metrics'], 'train'):.2f}; CA {q['ca']:.3f} ASR {q['asr']:.3f}")
    print(f"  (the worker's first run, not counted: {first['done']:.1f} s to done)")
    if args.cli:
        cli_runs(n, root)


if __name__ == "__main__":
    main()
