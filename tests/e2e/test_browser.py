"""End to end in real headless Chromium: start `streamlit run app.py` on a free port with an empty runs
root, press Quick demo (shrunk by $BACKDOOR_LAB_TINY_DEMO=1 to 64 steps of f_B and 2 epochs of f_C), wait for the
background worker to train it and map it, then open every page on that run: no Streamlit exception
anywhere, and a screenshot of each page under test-artifacts/e2e/ for a person to look at.

Chromium comes from the system (`apt-get install -y chromium`, which .ci/run does when it is
missing); Playwright only drives it (never `playwright install`).
"""

from __future__ import annotations

import time

import pytest

from cbd_core.runs import list_runs
from streamlit_server import CHROMIUM, CHROMIUM_FLAGS, IDLE, ROOT, running_app

ARTIFACTS = ROOT / "test-artifacts" / "e2e"

# Every page after the demo: (url path, text that must be on it).
PAGES = [("attack_lab", "Attack lab"), ("train", "Train a defense"), ("runs", "Runs"),
         ("sample_weights", "Sample weights"), ("embeddings", "Embeddings"), ("attributions", "Attributions"),
         ("compare", "Compare")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e_runs")
    with running_app(root, {"BACKDOOR_LAB_TINY_DEMO": "1"}) as url:
        yield url, root


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def settle(page, timeout_ms: int = 90_000) -> None:
    """Wait until the script has finished running (never a fixed sleep for the script itself)."""
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def assert_no_exception(page, where: str) -> None:
    errors = page.locator("[data-testid='stException']")
    assert errors.count() == 0, f"{where}: {errors.first.inner_text()[:2000]}"


def test_quick_demo_and_every_page(server, browser):
    url, root = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    page.goto(url + "/overview")  # the Lesson is the default page; the demo starts from the Overview
    settle(page)
    assert_no_exception(page, "overview")
    page.screenshot(path=str(ARTIFACTS / "01_overview.png"), full_page=True)

    page.get_by_role("button", name="Quick demo").click()
    page.wait_for_selector("h1:has-text('Train a defense')", timeout=60_000)
    settle(page)
    runs = list_runs(root)  # newest first
    assert [r.config()["defense"] for r in runs] == ["undefended", "cbd"], \
        "Quick demo queues its run and then the undefended baseline it is measured against"
    run = runs[1]
    assert f"run={run.run_id}" in page.url, "the Train page's address names the demo, so a copied link opens it"

    # The worker trains it in the background; the live panel follows (the fragment polls the folder).
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and run.status().get("state") not in ("done", "failed", "cancelled"):
        if run.status().get("state") == "running" and not (ARTIFACTS / "02_train_live.png").exists() and run.metrics():
            page.screenshot(path=str(ARTIFACTS / "02_train_live.png"), full_page=True)
        time.sleep(1)
    status = run.status()
    assert status["state"] == "done", status
    while time.monotonic() < deadline and run.status().get("analysis") not in ("done", "failed"):
        time.sleep(1)
    assert run.status().get("analysis") == "done", run.status()
    page.wait_for_selector("text=attack success rate", timeout=30_000)  # the panel shows the result
    settle(page)
    assert_no_exception(page, "train (finished)")
    page.screenshot(path=str(ARTIFACTS / "03_train_done.png"), full_page=True)

    for number, (path, title) in enumerate(PAGES, start=4):
        page.goto(f"{url}/{path}?run={run.run_id}")
        settle(page)
        page.wait_for_selector(f"h1:has-text('{title}')", timeout=60_000)
        settle(page)
        page.wait_for_timeout(500)  # let charts draw before the screenshot
        assert_no_exception(page, path)
        page.screenshot(path=str(ARTIFACTS / f"{number:02d}_{path}.png"), full_page=True)

    # The Lesson (the app's default page, at "/") over the demo run, every step by its link.
    for step in range(1, 7):
        page.goto(f"{url}/?run={run.run_id}&step={step}")
        settle(page)
        page.wait_for_selector(f"h3:has-text('Step {step} of 6')", timeout=60_000)
        settle(page)
        assert_no_exception(page, f"lesson step {step}")
        page.screenshot(path=str(ARTIFACTS / f"12_lesson_step{step}.png"), full_page=True)
    page.close()

    # A link opened as the very first request of a fresh server (a teacher's link, the app just
    # started) lands on the same view, inside the app's navigation, not on the lone page file that
    # Streamlit's legacy `pages/` mode would serve. A second server over the same runs root: the first
    # one has already run app.py, which would hide exactly that failure.
    with running_app(root, log_name="streamlit-fresh.log") as fresh_url:
        fresh = browser.new_context(viewport={"width": 1400, "height": 2400})
        linked = fresh.new_page()
        linked.goto(f"{fresh_url}/embeddings?run={run.run_id}")
        settle(linked)
        linked.wait_for_selector("h1:has-text('Embeddings')", timeout=60_000)
        settle(linked)
        assert_no_exception(linked, "deep link")
        nav = linked.locator("[data-testid='stSidebarNav']")
        assert "Look inside a run" in nav.inner_text() and "common" not in nav.inner_text(), nav.inner_text()
        assert run.run_id in linked.url and "Click a point on a map" in linked.locator("[data-testid='stMain']").inner_text()
        # A fresh server sends Plotly's code on first use: the script can be done before a map is drawn.
        linked.wait_for_function("""() => { const g = document.querySelector('.js-plotly-plot');
            return g && g.data && g._fullLayout && g.data.some(d => d.x && d.x.length); }""", timeout=60_000)
        linked.screenshot(path=str(ARTIFACTS / "11_deep_link_embeddings.png"), full_page=True)
        # One click on a point selects it (Streamlit turns click-to-select off in lasso drag mode, and
        # loses the first click when a chart's spec changes between reruns).
        point = linked.evaluate("""() => { const g = document.querySelector('.js-plotly-plot');
            const t = g.data.find(d => d.x.length), l = g._fullLayout, r = g.getBoundingClientRect();
            return {x: r.left + l._size.l + l.xaxis.l2p(t.x[0]), y: r.top + l._size.t + l.yaxis.l2p(t.y[0]),
                    sample: t.customdata[0]}; }""")
        linked.mouse.move(point["x"], point["y"])
        linked.wait_for_timeout(300)
        linked.mouse.click(point["x"], point["y"])
        linked.wait_for_selector(f"h3:has-text('Sample {point['sample']}')", timeout=30_000)
        assert_no_exception(linked, "selected point")
        fresh.close()
