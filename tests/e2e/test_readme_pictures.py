"""The README's two pictures, made by the real app in headless Chromium (1440x900) over a CBD run trained
here and its undefended baseline: BadNets 10% on 2,000 / 500 images of mnist5k, CBD's own 256 steps of f_B
and 4 epochs of f_C (a few seconds on two quiet cores; the Quick demo's 10 epochs on all 4,000 images
took minutes on a busy machine), with the maps the worker would compute (on 500 images):

- the Lesson on step 4 (both maps, step 5's image starred on each);
- a strip of the Embeddings page's epoch-by-epoch animation: the animation's own epoch slider is
  clicked to a few epochs spread over training, each frame's chart is captured, and the frames are set
  side by side in one PNG. Each frame must show a non-empty "poisoned" trace, and the plotted points
  (read from the Plotly graph div, not from pixels) must differ from one frame to the next.

Both land in test-artifacts/readme/ on every run. With BACKDOOR_LAB_UPDATE_README_ASSETS=1 the test also
writes them, shrunk and palette-quantised, to assets/lesson.png and assets/epoch_strip.png (the
README's pictures; commit them):

    BACKDOOR_LAB_UPDATE_README_ASSETS=1 .venv/bin/python -m pytest tests/e2e/test_readme_pictures.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from cbd_core.analysis.embeddings import compute_epoch_umap, compute_umap, configure_numba_cache
from cbd_core.config import RunConfig
from cbd_core.runs import RunDir
from conftest import small_subset, train_runs
from pages.common.poison_maps import MARK_NAME
from streamlit_server import IDLE, ROOT, chromium_browser, running_app
from test_lesson_screens import STAR_DRAWN

ARTIFACTS = ROOT / "test-artifacts" / "readme"
ASSETS = ROOT / "assets"
UPDATE_ASSETS = os.environ.get("BACKDOOR_LAB_UPDATE_README_ASSETS") == "1"
VIEWPORT = {"width": 1440, "height": 900}
SCHEDULES = {"cbd": {"epochs": 4}, "undefended": {"epochs": 4}}  # the rest: each defense's defaults
STRIP_FRAMES = 5  # epochs shown in the strip, spread from the first to the last
# The README's copies: at most this wide (pixels), in this many colours (a PNG palette). The screenshot
# keeps its 1440 pixels (shrinking it blurs the text and, anti-aliased, compresses worse), the strip of
# five 750-pixel charts is shrunk; each stays under README_COPY_BYTES (test_docs_links allows 200 KB).
README_COPIES = {"lesson.png": (1440, 128), "epoch_strip.png": (2400, 64)}
README_COPY_BYTES = 150_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, mnist5k):
    configure_numba_cache()
    root = tmp_path_factory.mktemp("readme_pictures")
    configs = {d: RunConfig(dataset="mnist5k", attack="badnets", poison_rate=0.1, target_label=0, defense=d, seed=0,
                            device="cpu", embedding_samples=500, defense_params=SCHEDULES[d])
               for d in SCHEDULES}
    run_id = train_runs(root, configs, small_subset(*mnist5k, 2000, 500))["cbd"]
    run = RunDir(root / run_id)
    compute_umap(run)  # as the worker would: the final maps (Lesson step 4) and the epoch by epoch ones
    assert compute_epoch_umap(run) is not None, "the run recorded no epoch features"
    with running_app(root) as url, chromium_browser() as browser:
        yield url, run_id, browser


def readme_copy(source: Path, name: str) -> Path:
    """Write `source` shrunk to its README width and palette-quantised to assets/<name>; returns the path."""
    width, colours = README_COPIES[name]
    image = Image.open(source).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image = image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    target = ASSETS / name
    image.save(target, optimize=True)
    assert target.stat().st_size < README_COPY_BYTES, (name, target.stat().st_size)
    return target


def assert_no_exception(page, where: str) -> None:
    errors = page.locator("[data-testid='stException']")
    assert errors.count() == 0, f"{where}: {errors.first.inner_text()[:1500]}"


def open_page(browser, address: str, heading: str):
    """A 1440x900 page at `address`, once `heading` is shown and the script is idle, with no exception."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(address)
    page.wait_for_selector(heading, timeout=120_000)
    page.wait_for_selector(IDLE, timeout=120_000)
    assert_no_exception(page, address)
    return page


def test_lesson_step_4_screenshot(server):
    url, run_id, browser = server
    page = open_page(browser, f"{url}/?run={run_id}&step=4", "h3:has-text('Step 4 of 6')")
    try:  # plotly draws after the script is idle; a busy machine may take seconds
        page.wait_for_function(f"(name) => JSON.stringify(({STAR_DRAWN})(name)) === '[true,true]'",
                               arg=MARK_NAME, timeout=30_000)
    except PlaywrightTimeout:
        pass  # the assertion below reports what is drawn
    assert page.evaluate(STAR_DRAWN, MARK_NAME) == [True, True], "step 4's two maps, step 5's image starred"
    # The step at the top of the window (below Streamlit's header): its heading, its tabs, both maps.
    heading = page.locator("h3:has-text('Step 4 of 6')").first
    heading.evaluate("h => { h.style.scrollMarginTop = '80px'; h.scrollIntoView({block: 'start'}); }")
    page.wait_for_timeout(500)
    assert page.evaluate(STAR_DRAWN, MARK_NAME) == [True, True], "the maps, scrolled to the step"
    shot = ARTIFACTS / "lesson_step4.png"
    page.screenshot(path=str(shot))
    page.close()
    assert Image.open(shot).size == (VIEWPORT["width"], VIEWPORT["height"])
    if UPDATE_ASSETS:
        readme_copy(shot, "lesson.png")


# The animation's chart: the epoch shown by its slider, and every trace's name and points as drawn.
FRAME_STATE = """(gd) => ({active: gd.layout.sliders[0].active,
    label: gd.layout.sliders[0].steps[gd.layout.sliders[0].active].label,
    title: gd._fullLayout.title.text,
    traces: gd.data.map(t => ({name: t.name, axis: t.xaxis || 'x', x: Array.from(t.x || []),
                               y: Array.from(t.y || [])}))})"""
# Where to click on the slider's rail to land on step `i`: its tick's x, the rail's middle y.
STEP_POINT = """([gd, i]) => {
    const rail = gd.querySelector('.slider-rail-rect').getBoundingClientRect();
    const tick = gd.querySelectorAll('.slider-tick-rect')[i].getBoundingClientRect();
    return {x: tick.left + tick.width / 2, y: rail.top + rail.height / 2}; }"""


def test_epoch_animation_strip(server):
    url, run_id, browser = server
    page = open_page(browser, f"{url}/embeddings?run={run_id}", "h1:has-text('Embeddings')")
    page.locator("[data-testid='stRadio']").filter(has_text="epoch by epoch").get_by_text("epoch by epoch").click()
    page.wait_for_function("""() => [...document.querySelectorAll('.js-plotly-plot')].some(
        g => g._fullLayout && (g.layout.sliders || []).length)""", timeout=60_000)
    page.wait_for_selector(IDLE, timeout=120_000)
    assert_no_exception(page, "embeddings, epoch by epoch")
    chart = page.locator(".js-plotly-plot").filter(has=page.locator(".slider-rail-rect")).first
    chart.scroll_into_view_if_needed()
    graph = chart.element_handle()
    steps = graph.evaluate("gd => gd.layout.sliders[0].steps.length")
    assert steps >= STRIP_FRAMES, steps
    chosen = sorted({round(i * (steps - 1) / (STRIP_FRAMES - 1)) for i in range(STRIP_FRAMES)})
    frames, states = [], []
    for i in chosen:
        point = page.evaluate(STEP_POINT, [graph, i])
        page.mouse.click(point["x"], point["y"])
        page.wait_for_function("([gd, i]) => gd.layout.sliders[0].active === i", arg=[graph, i], timeout=10_000)
        page.wait_for_timeout(700)  # the slider's 300 ms transition, then a settled frame
        state = graph.evaluate(FRAME_STATE)
        assert state["active"] == i and f"Epoch {state['label']} of" in state["title"], state["title"]
        drawn = {t["axis"] for t in state["traces"] if t["x"]}  # the maps that have started
        assert drawn, f"epoch {state['label']}: no map"
        for axis in drawn:  # each of them shows the poisoned images
            assert [t for t in state["traces"] if t["axis"] == axis and t["name"].startswith("poisoned") and t["x"]], \
                f"epoch {state['label']}, map {axis}: no poisoned points"
        states.append(state)
        page.mouse.move(0, 0)  # off the chart: no hover label, no modebar in the picture
        page.wait_for_timeout(300)
        shot = ARTIFACTS / f"epoch_{state['label']}.png"
        chart.screenshot(path=str(shot))
        frames.append(Image.open(shot).convert("RGB"))
    page.close()
    points = [[(t["x"], t["y"]) for t in s["traces"]] for s in states]
    for before, after, earlier, later in zip(points, points[1:], states, states[1:]):
        assert before != after, f"the points did not move from epoch {earlier['label']} to {later['label']}"
    # The frames side by side, in one PNG.
    strip = Image.new("RGB", (sum(f.width for f in frames), max(f.height for f in frames)), "white")
    x = 0
    for frame in frames:
        strip.paste(frame, (x, 0))
        x += frame.width
    out = ARTIFACTS / "epoch_strip.png"
    strip.save(out)
    assert len({frame.tobytes() for frame in frames}) == len(frames), "two frames look the same"
    if UPDATE_ASSETS:
        readme_copy(out, "epoch_strip.png")
