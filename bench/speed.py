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

    python bench/speed.py --against ccbb8db [--repeats 3]

compares this tree with an older commit in one run on one machine, because machines differ 2x in
speed and only a ratio travels: the commit is unpacked (`git archive`) into a temporary folder, and
for each tree in turn a worker of *that* tree's code trains *that* tree's Quick demo (seeds 0..n-1,
after one uncounted run), then a fresh CLI process trains the same seeds. It prints each tree's
medians, the worker's time over the CLI's (the dashboard path's overhead) and this tree's time
over the older one's.
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
# The code measured: this tree, or (in `--against`'s child processes) an older commit's unpacked copy.
CODE = Path(os.environ.get("BACKDOOR_LAB_SPEED_CODE", ROOT))
sys.path.insert(0, str(CODE))

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


def warm_up(root: Path, demo) -> dict:
    """The worker's first run (not counted: it pays first-use costs), then its UMAP warm-up; the run's marks."""
    import dataclasses

    first = timed_run(root, dataclasses.replace(demo, seed=99))
    wait(lambda: "UMAP warm-up took" in (root / ".workers" / "cpu-0.log").read_text(), 300, 0.2)
    return first


def epoch_seconds(metrics: list[dict], phase: str) -> float:
    return statistics.median(m["epoch_seconds"] for m in metrics if m["phase"] == phase)


def cli_seconds(seed: int, out: Path) -> dict:
    """A fresh `python -m cbd_core run` of CODE's Quick demo: wall seconds from process start."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cbd_core", "run", "--seed", str(seed), "--out", str(out),
                           "--json"], cwd=CODE, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(CODE)})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(done.stderr)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, "seconds": summary["seconds"], "ca": summary["clean_accuracy"],
            "asr": summary["attack_success_rate"]}


def cli_runs(repeats: int, out: Path) -> None:
    print("\n| seed | wall s (fresh process) | run s | CA | ASR |\n|---|---|---|---|---|")
    runs = [cli_seconds(seed, out) for seed in range(repeats)]
    for seed, r in enumerate(runs):
        print(f"| {seed} | {r['wall']:.1f} | {r['seconds']:.1f} | {r['ca']:.3f} | {r['asr']:.3f} |")
    print(f"| median | {statistics.median(r['wall'] for r in runs):.1f} | "
          f"{statistics.median(r['seconds'] for r in runs):.1f} | | |")


def one_tree(repeats: int) -> None:
    """`--against`'s child: CODE's Quick demo through a warm worker, then through the CLI; one JSON line."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import dataclasses

    from cbd_core import jobs
    from cbd_core.config import quick_demo_config

    root = Path(tempfile.mkdtemp(prefix="backdoor-lab-speed-"))
    demo = quick_demo_config()
    start_worker(root)
    try:
        warm_up(root, demo)
        worker = [timed_run(root, dataclasses.replace(demo, seed=seed)) for seed in range(repeats)]
    finally:
        jobs.stop_workers(root)
    cli = [cli_seconds(seed, root / "cli") for seed in range(repeats)]
    print(json.dumps({"worker": [{k: r[k] for k in ("done", "ca", "asr")} for r in worker], "cli": cli}))
    shutil.rmtree(root, ignore_errors=True)


def against(rev: str, repeats: int) -> None:
    old = Path(tempfile.mkdtemp(prefix=f"backdoor-lab-speed-{rev}-"))
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    trees = [(rev, old), (f"this tree ({head}{', modified' if dirty else ''})", ROOT)]
    print(f"{os.cpu_count()} CPU cores; median of {repeats} seeds; load average at the start "
          f"{os.getloadavg()[0]:.1f}\n")
    found = {}
    for name, code in trees:
        child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one-tree", "--repeats",
                                str(repeats)], cwd=code, capture_output=True, text=True,
                               env={**os.environ, "BACKDOOR_LAB_SPEED_CODE": str(code), "PYTHONPATH": str(code)})
        if child.returncode != 0:
            sys.exit(f"{name}: {child.stderr[-3000:]}")
        found[name] = json.loads(child.stdout.strip().splitlines()[-1])
    shutil.rmtree(old, ignore_errors=True)
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| code | Start to done, warm worker (s) | CLI run, fresh process (s) | worker / CLI | "
          "CA | ASR |\n|---|---|---|---|---|---|")
    medians = {}
    for name, runs in found.items():
        worker = statistics.median(r["done"] for r in runs["worker"])
        cli = statistics.median(r["wall"] for r in runs["cli"])
        ca = statistics.median(r["ca"] for r in runs["worker"])
        asr = statistics.median(r["asr"] for r in runs["worker"])
        medians[name] = worker
        print(f"| {name} | {worker:.1f} | {cli:.1f} | {worker / cli:.2f} | {ca:.3f} | {asr:.3f} |")
    (old_name, this_name) = list(found)
    print(f"\nStart to done, this tree / {old_name}: {medians[this_name] / medians[old_name]:.2f}")
    for name, runs in found.items():
        print(f"  {name} per seed, worker / CLI (s): " + ", ".join(
            f"{w['done']:.1f} / {c['wall']:.1f}" for w, c in zip(runs["worker"], runs["cli"])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also time fresh CLI processes")
    parser.add_argument("--against", metavar="COMMIT",
                        help="compare this tree's Quick demo with COMMIT's, in one run (worker and CLI)")
    parser.add_argument("--one-tree", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_tree:
        return one_tree(args.repeats)
    if args.against:
        return against(args.against, args.repeats)
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
    first = warm_up(root, demo)

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
