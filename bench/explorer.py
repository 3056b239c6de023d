"""How fast the Explorer page answers, timed in headless Chromium over a small real grid of finished runs.

    python bench/explorer.py                  # trains the grid first (6 short runs, a few minutes on 2 cores)
    python bench/explorer.py --runs DIR       # or reuse a grid this script trained before (its --keep folder)

The grid: BadNets at 5 % and 10 % and WaNet at 10 %, each undefended and with CBD, trained on mnist5k with
a short schedule (2 epochs), with their UMAP maps as the worker makes them. The script opens the
Explorer, moves the rate slider and the attack control, and times each switch from the input until the new
run's figures are drawn (its run id in the caption, the script idle, its three charts rendered). The first
view of a cell may read files; a switch back to a cell already seen is answered from the page's caches.
The round of revisits is played twice and each switch counts its better try (another process holding
the CPU for a moment is not the page's doing; both tries are printed).

Prints one row per switch, then the slowest first view, the slowest revisit (its better try) and their
ratio, all from this one run: seconds differ twofold between machines and with what else runs, so compare
figures only within a run. tests/e2e/test_explorer_switches.py drives the same switches and checks that
each one draws the right run; it times nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # the app server and Chromium of the browser tests

CELLS = [("badnets", 0.05), ("badnets", 0.1), ("wanet", 0.1)]
SMALL_PARAMS = {"cbd": {"backdoor_steps": 40, "epochs": 2, "probe_epochs": 1},
                "undefended": {"epochs": 2}}
GRID_FILE = "explorer_grid.json"
ROUND = 4  # switches in one round of revisits


def train_grid(root: Path) -> dict[tuple, str]:
    """Train the grid's runs on mnist5k into `root` (a few epochs each: the Explorer shows the embedded
    data's runs) and make their maps; writes {cell: run id} to root/explorer_grid.json and returns it."""
    from cbd_core import pipeline
    from cbd_core.analysis.embeddings import compute_umap, configure_numba_cache
    from cbd_core.config import RunConfig
    from cbd_core.runs import RunDir

    configure_numba_cache()
    ids = {}
    for attack, rate in CELLS:
        for defense, params in SMALL_PARAMS.items():
            print(f"training {attack} {rate:.0%} {defense}...", file=sys.stderr)
            config = RunConfig(dataset="mnist5k", attack=attack, poison_rate=rate, defense=defense, seed=0,
                               device="cpu", embedding_samples=300, defense_params=params)
            run, _ = pipeline.train_run(config, root)
            compute_umap(RunDir(run.path))
            ids[(attack, rate, defense)] = run.run_id
    (root / GRID_FILE).write_text(json.dumps([[*key, run_id] for key, run_id in ids.items()]))
    return ids


def read_grid(root: Path) -> dict[tuple, str]:
    return {tuple(row[:3]): row[3] for row in json.loads((root / GRID_FILE).read_text())}


def shown(page, run_id: str, timeout_ms: int = 60_000) -> None:
    """Wait until the run's caption is on the page, the script is idle and every chart has drawn."""
    page.wait_for_function(
        """(id) => {
            const app = document.querySelector("[data-testid='stApp']");
            if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
            const text = [...document.querySelectorAll("[data-testid='stCaptionContainer']")].map(e => e.innerText);
            if (!text.some(t => t.includes(id))) return false;
            const charts = document.querySelectorAll("[data-testid='stPlotlyChart']");
            return charts.length === 3 && [...charts].every(c => c.querySelector('.main-svg'));
        }""", arg=run_id, timeout=timeout_ms, polling="raf")


def play_switches(url: str, ids: dict, screenshot: Path | None = None) -> list[dict]:
    """Open the Explorer over a grid with the cells of CELLS (CBD and undefended each), move between them
    and return one record per switch: its label, the cell it went to, whether that cell had been seen,
    the seconds from the input until the cell's run was drawn, and whether the page showed an exception."""
    from streamlit_server import IDLE, chromium_browser

    records: list[dict] = []
    with chromium_browser() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(f"{url}/explorer")
        page.wait_for_selector(IDLE, timeout=120_000)
        shown(page, ids[("badnets", 0.1, "cbd")])  # opens on the highest rate, CBD
        seen = {("badnets", 0.1, "cbd")}

        def switch(action, cell, label):
            start = time.perf_counter()
            action()
            shown(page, ids[cell])
            records.append({"switch": label, "cell": "/".join(map(str, cell)), "revisit": cell in seen,
                            "seconds": round(time.perf_counter() - start, 3),
                            "exception": page.locator("[data-testid='stException']").count() > 0})
            seen.add(cell)

        thumb = page.locator("[data-testid='stSlider'] [aria-valuetext]").first
        rate_down = lambda: (thumb.focus(), page.keyboard.press("ArrowLeft"))  # noqa: E731
        rate_up = lambda: (thumb.focus(), page.keyboard.press("ArrowRight"))  # noqa: E731
        to_wanet = lambda: page.get_by_text("WaNet", exact=True).click()  # noqa: E731
        to_badnets = lambda: page.get_by_text("BadNets", exact=True).click()  # noqa: E731
        switch(rate_down, ("badnets", 0.05, "cbd"), "rate 10% -> 5%")
        switch(rate_up, ("badnets", 0.1, "cbd"), "rate 5% -> 10%")
        switch(to_wanet, ("wanet", 0.1, "cbd"), "attack BadNets -> WaNet")
        for _ in range(2):  # every cell has been seen once: these ROUND switches answer from the caches
            switch(to_badnets, ("badnets", 0.1, "cbd"), "attack WaNet -> BadNets")
            switch(rate_down, ("badnets", 0.05, "cbd"), "rate 10% -> 5%")
            switch(rate_up, ("badnets", 0.1, "cbd"), "rate 5% -> 10%")
            switch(to_wanet, ("wanet", 0.1, "cbd"), "attack BadNets -> WaNet")
        if screenshot is not None:
            page.screenshot(path=str(screenshot))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, help="a folder this script trained its grid into before (--keep)")
    parser.add_argument("--keep", type=Path, help="train the grid into this folder and keep it")
    args = parser.parse_args()
    from streamlit_server import running_app

    with tempfile.TemporaryDirectory() as scratch:
        root = args.runs or args.keep or Path(scratch)
        if args.runs:
            ids = read_grid(root)
        else:
            root.mkdir(parents=True, exist_ok=True)
            ids = train_grid(root)
        with running_app(root) as url:
            records = play_switches(url, ids)
    first = [r["seconds"] for r in records if not r["revisit"]]
    rounds = records[-2 * ROUND:]  # the two rounds of revisits: each switch counts its better try
    best = [min(a["seconds"], b["seconds"]) for a, b in zip(rounds[:ROUND], rounds[ROUND:])]
    print("| switch | cell | seen before | seconds |\n|---|---|---|---|")
    for r in records:
        print(f"| {r['switch']} | {r['cell']} | {'yes' if r['revisit'] else 'no'} | {r['seconds']:.3f} |")
    print(f"\nslowest first view {max(first):.3f} s; slowest revisit (better of two tries) {max(best):.3f} s; "
          f"revisit / first view {max(best) / max(first):.2f}")
    if any(r["exception"] for r in records):
        print("an exception showed on the page during a switch", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
