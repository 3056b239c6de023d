"""The verdict banners in real headless Chromium at a laptop's 1440x900: the Train and Runs pages over a
CBD run that removed the backdoor and over one whose backdoor persists (copies of the shared finished
runs with their summary.json edited), next to their undefended baseline. Screenshots go to
test-artifacts/verdicts/ for a person to look at."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cbd_core.runs import write_json
from streamlit_server import CHROMIUM, CHROMIUM_FLAGS, IDLE, ROOT, running_app

ARTIFACTS = ROOT / "test-artifacts" / "verdicts"
RUNS = {  # run id: (summary changes, the banner's headline)
    "20990101-000000-001-removed": ({"clean_accuracy": 0.962, "attack_success_rate": 0.003,
                                     "poison_detection_auroc": 0.998}, "Backdoor removed"),
    "20990101-000000-002-persists": ({"clean_accuracy": 0.951, "attack_success_rate": 0.86,
                                      "poison_detection_auroc": 0.61}, "Backdoor persists: the defense failed"),
}
BASELINE = "20990101-000000-000-baseline"


def copy_run(source: Path, root: Path, run_id: str, changes: dict) -> None:
    shutil.copytree(source, root / run_id)
    summary = json.loads((root / run_id / "summary.json").read_text())
    summary.update(changes, run_id=run_id, run_dir=str(root / run_id))
    write_json(root / run_id / "summary.json", summary)
    # The last epoch's curve point says the same as the edited summary, so the pictures are consistent.
    lines = [json.loads(line) for line in (root / run_id / "metrics.jsonl").read_text().splitlines()]
    lines[-1].update({k: v for k, v in changes.items() if k in ("clean_accuracy", "attack_success_rate")})
    (root / run_id / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture(scope="module")
def server(tmp_path_factory, finished_runs):
    source, ids = finished_runs
    root = tmp_path_factory.mktemp("verdict_runs")
    copy_run(source / ids["undefended"], root, BASELINE, {"clean_accuracy": 0.97, "attack_success_rate": 0.99})
    for run_id, (changes, _) in RUNS.items():
        copy_run(source / ids["cbd"], root, run_id, changes)
    with running_app(root) as url:
        yield url, root


@pytest.mark.parametrize("page_name", ["train", "runs"])
@pytest.mark.parametrize("run_id", list(RUNS))
def test_banner_in_the_browser(server, page_name, run_id):
    from playwright.sync_api import sync_playwright

    url, root = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{url}/{page_name}?run={run_id}")
            page.wait_for_selector(IDLE, timeout=90_000)
            page.wait_for_selector("[data-testid='stAlert']", timeout=60_000)
            page.wait_for_selector(IDLE, timeout=90_000)
            page.wait_for_timeout(500)  # let the table and charts draw
            assert page.locator("[data-testid='stException']").count() == 0
            banners = page.locator("[data-testid='stAlert']").all_inner_texts()
            headline = RUNS[run_id][1]
            assert any(headline in b for b in banners), banners
            assert any(BASELINE in b for b in banners), banners  # the cost is against the baseline
            name = f"{page_name}_{run_id.rsplit('-', 1)[-1]}"
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
            # Streamlit scrolls inside its main container: scroll to the results for a second picture.
            below = page.get_by_text("What to look for").first if page_name == "train" else \
                page.get_by_text("Settings (config.json)").first
            below.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / f"{name}_below.png"))
        finally:
            browser.close()
