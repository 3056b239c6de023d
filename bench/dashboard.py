"""How fast the dashboard is over a finished run: UMAP maps, attribution maps, and each page's render.

    python bench/dashboard.py                 # trains the default Quick-demo run first (~1 min)
    python bench/dashboard.py --run DIR       # or measure an existing finished run folder

Prints three tables:
- UMAP of the run's f_B and f_C features (5,000 training samples by default... mnist5k keeps all
  4,000): in a fresh process with an empty numba cache (cold compile), in a fresh process with the
  persistent cache filled, and a second map in the same warm process (what the worker pays per run);
- attribution maps of one image per method and model, and the 100-image trigger share per method;
- every page's script time through Streamlit's AppTest: first visit (cold caches) and second visit
  (the same process, caches warm; the issue's target is under 1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAGES = ["lesson", "overview", "attack_lab", "train", "runs", "sample_weights", "embeddings", "attributions", "compare"]


def make_run(root: Path) -> Path:
    print("training the default Quick-demo run (mnist5k, BadNets 10%, CBD)...", file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "cbd_core", "run", "--out", str(root), "--json"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["run_dir"])


def umap_in_fresh_process(run: Path, cache: Path) -> dict:
    code = (
        "import json, time, sys; t0 = time.perf_counter()\n"
        "from cbd_core.analysis.embeddings import configure_numba_cache, compute_umap\n"
        f"configure_numba_cache({str(cache)!r})\n"
        "from cbd_core.runs import RunDir; from pathlib import Path\n"
        f"run = RunDir(Path({str(run)!r}))\n"
        "t1 = time.perf_counter(); first = compute_umap(run); t2 = time.perf_counter(); compute_umap(run)\n"
        "print(json.dumps({'first': t2 - t1, 'second': time.perf_counter() - t2, 'points': first['points'],"
        " 'models': first['models']}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_umap(run: Path) -> None:
    cache = Path(tempfile.mkdtemp(prefix="numba-cache-"))
    try:
        cold = umap_in_fresh_process(run, cache)
        warm = umap_in_fresh_process(run, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"\nUMAP, {cold['points']} points x 128 features, models {', '.join(cold['models'])} (seconds for all maps)\n")
    print("| situation | seconds |")
    print("|---|---|")
    print(f"| fresh process, empty numba cache (cold compile) | {cold['first']:.1f} |")
    print(f"| fresh process, numba cache filled | {warm['first']:.1f} |")
    print(f"| same process, second run (the warm worker) | {warm['second']:.1f} |")


def bench_attributions(run_path: Path) -> None:
    from cbd_core.analysis import attributions as attr
    from cbd_core.analysis import load_models
    from cbd_core.runs import RunDir

    import torch

    torch.set_num_threads(1)  # as the app's pages run (the worker owns the other cores)
    run = RunDir(run_path)
    models = load_models(run)
    images = run.arrays("images")
    config = run.config()
    triggered = attr.triggered_test_images(images["test_x"], images["test_y"], config)
    triggered = triggered[0] if isinstance(triggered, tuple) else triggered
    one = triggered[0]
    print("\nAttribution maps (milliseconds; one 28x28 image, then the 100-image trigger share)\n")
    print("| method | " + " | ".join(f"one image, {name}" for name in models) + " | 100 images, all models |")
    print("|---|" + "---|" * (len(models) + 1))
    for method in attr.METHODS:
        cells = []
        for model in models.values():
            attr.attribution_map(model, one, config["target_label"], method)  # first call pays setup
            started = time.perf_counter()
            for _ in range(5):
                attr.attribution_map(model, one, config["target_label"], method)
            cells.append(f"{(time.perf_counter() - started) / 5 * 1000:.0f}")
        started = time.perf_counter()
        for model in models.values():
            attr.mean_trigger_share(model, triggered, images["trigger_region"], method, config["target_label"])
        cells.append(f"{(time.perf_counter() - started) * 1000:.0f}")
        print(f"| {method} | " + " | ".join(cells) + " |")


def bench_pages(run_path: Path) -> None:
    import cbd_core.jobs.launcher
    from streamlit.testing.v1 import AppTest

    cbd_core.jobs.launcher.ensure_workers = lambda *a, **k: []  # measure the pages, not a worker's start
    os.environ["BACKDOOR_LAB_RUNS"] = str(run_path.parent)
    print("\nPage script time through AppTest (seconds; the run above is the active run; one AppTest session\n"
          "visits every page twice, as a user switching pages would)\n")
    print("| page | first visit | second visit |")
    print("|---|---|---|")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params["run"] = run_path.name
    at.run()  # the session's first script run (AppTest scans component manifests once, ~0.4 s)
    for page in PAGES:
        times = []
        for _ in range(2):
            at.switch_page(f"pages/{page}.py")
            started = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - started)
            if at.exception:
                raise SystemExit(f"{page}: {at.exception[0].message}")
        print(f"| {page} | {times[0]:.2f} | {times[1]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished run folder (default: train the Quick-demo run)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores")
    if args.run:  # work on a copy: the benchmark writes umap.npz
        run = Path(tempfile.mkdtemp(prefix="backdoor-lab-dash-")) / args.run.name
        shutil.copytree(args.run, run)
    else:
        run = make_run(Path(tempfile.mkdtemp(prefix="backdoor-lab-dash-")))
    bench_umap(run)
    bench_attributions(run)
    bench_pages(run)


if __name__ == "__main__":
    main()
