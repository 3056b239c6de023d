"""The Lesson in real headless Chromium, on a projector's 1280x720 and 1920x1080, in and out of
presentation mode: every step of a finished CBD run (the shared tiny BadNets pair), walked with Next.
After each Next the step's heading and its Back / Next controls are within the viewport, no page
link label is cut, and in presentation mode the sidebar is collapsed. Screenshots of every step go
to test-artifacts/lesson/ for a person to look at."""

from __future__ import annotations

import shutil

import pytest

from cbd_core import lesson
from cbd_core.analysis.embeddings import compute_umap, configure_numba_cache
from cbd_core.runs import RunDir
from streamlit_server import CHROMIUM, CHROMIUM_FLAGS, IDLE, ROOT, running_app

ARTIFACTS = ROOT / "test-artifacts" / "lesson"
SCREENS = [(1280, 720, True), (1920, 1080, True), (1280, 720, False)]


@pytest.fixture(scope="module")
def server(tmp_path_factory, finished_runs):
    configure_numba_cache()
    source, ids = finished_runs
    root = tmp_path_factory.mktemp("lesson_e2e_runs")
    for defense in ("cbd", "undefended"):
        shutil.copytree(source / ids[defense], root / ids[defense])
    compute_umap(RunDir(root / ids["cbd"]))  # as the worker would, so step 4 has its maps
    with running_app(root) as url:
        yield url, ids["cbd"]


def in_view(page, locator) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] \
        and box["x"] >= 0 and box["x"] + box["width"] <= size["width"]


def cut_link_labels(page) -> list[str]:
    """Page-link labels whose text is wider than the box that shows it (cut with an ellipsis)."""
    return page.evaluate("""() => [...document.querySelectorAll("[data-testid='stPageLink'] p, "
                                                     + "[data-testid='stPageLink'] span")]
        .filter(el => el.scrollWidth > el.clientWidth + 1).map(el => el.innerText)""")


def test_every_step_on_a_projector(server):
    from playwright.sync_api import sync_playwright

    url, run_id = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    steps = len(lesson.STEPS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            for width, height, present in SCREENS:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(f"{url}/?run={run_id}&step=1" + ("&present=1" if present else ""))
                page.wait_for_selector(IDLE, timeout=120_000)
                name = f"{width}x{height}_{'present' if present else 'normal'}"
                for step in range(1, steps + 1):
                    if step > 1:
                        page.get_by_role("button", name="Next →").click()
                        page.wait_for_selector(f"h3:has-text('Step {step} of {steps}')", timeout=60_000)
                    page.wait_for_selector(IDLE, timeout=120_000)
                    page.wait_for_timeout(400)  # let the charts draw
                    where = f"{name} step {step}"
                    assert page.locator("[data-testid='stException']").count() == 0, where
                    heading = page.locator(f"h3:has-text('Step {step} of {steps}')").first
                    assert in_view(page, heading), where
                    assert in_view(page, page.get_by_role("button", name="Next →")), where
                    assert in_view(page, page.get_by_role("button", name="← Back")), where
                    assert cut_link_labels(page) == [], where
                    page.screenshot(path=str(ARTIFACTS / f"{name}_step{step}.png"))
                    if step > 1:  # a student scrolls down and the controls stay
                        page.mouse.wheel(0, 3000)
                        page.wait_for_timeout(300)
                        assert in_view(page, heading) and in_view(page, page.get_by_role("button", name="Next →")), \
                            where + " (scrolled)"
                if present:  # collapsed: off screen, or no width (the arrow at the top left brings it back)
                    box = page.locator("[data-testid='stSidebar']").bounding_box()
                    assert box is None or box["x"] + box["width"] <= 1 or box["width"] <= 1, (name, box)
                page.close()
        finally:
            browser.close()
