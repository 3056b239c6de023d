"""The Compare page's "Across poison rates" view in real headless Chromium, over a small real grid:
undefended and CBD runs trained here at two poison rates and two seeds (tiny data, few steps). The
charts must draw one line per defense through the medians that cbd_core.rate_grid computes from the
same run folders (the numbers bench/rate_grid.py prints), with the min-max band where seeds differ.
A screenshot goes to test-artifacts/rate_grid/ for a person to look at."""

from __future__ import annotations

import pytest

from cbd_core import rate_grid
from cbd_core.config import RunConfig
from streamlit_server import CHROMIUM, CHROMIUM_FLAGS, IDLE, ROOT, running_app

ARTIFACTS = ROOT / "test-artifacts" / "rate_grid"
RATES = (0.05, 0.2)
SEEDS = (0, 1)
PARAMS = {"cbd": {"backdoor_steps": 30, "epochs": 2, "batch_size": 32},
          "undefended": {"epochs": 2, "batch_size": 32}}


@pytest.fixture(scope="module")
def grid_root(tmp_path_factory, mnist5k):
    from conftest import small_subset, train_runs

    root = tmp_path_factory.mktemp("rate_grid_runs")
    configs = {(defense, rate, seed): RunConfig(dataset="mnist5k", attack="badnets", poison_rate=rate,
                                                defense=defense, seed=seed, device="cpu", embedding_samples=0,
                                                defense_params=params)
               for defense, params in PARAMS.items() for rate in RATES for seed in SEEDS}
    train_runs(root, configs, small_subset(*mnist5k, 600, 200))
    return root


def test_rate_view_draws_the_grid_medians_in_the_browser(grid_root):
    from playwright.sync_api import sync_playwright

    expected = {(line.defense, round(100 * line.poison_rate, 6)): line
                for line in rate_grid.summarise(rate_grid.grid_points(grid_root))}
    cbd = "CBD (backdoor_steps=30, batch_size=32)"  # a variant's line names what it set away from the defaults
    assert {d for d, _ in expected} == {"Undefended", cbd} and len(expected) == 4
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_app(grid_root) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{url}/compare")
            page.wait_for_selector(IDLE, timeout=90_000)
            heading = page.get_by_text("Across poison rates").first
            heading.wait_for(timeout=60_000)
            assert page.locator("[data-testid='stException']").count() == 0
            heading.scroll_into_view_if_needed()
            # Plotly's bundle loads lazily and draws after the script is idle: wait (up to a minute, CI
            # machines are busy) until both log-x charts hold their traces, instead of a fixed pause.
            log_charts = """[...document.querySelectorAll('.js-plotly-plot')]
                .filter(gd => gd.layout && gd.layout.xaxis && gd.layout.xaxis.type === 'log'
                              && gd.data && gd.data.length > 0)"""
            page.wait_for_function(f"() => {log_charts}.length >= 2", timeout=60_000)
            # Every plotly chart's traces, as the browser holds them; ours are the two with a log x axis.
            charts = page.evaluate(f"""() => {log_charts}
                .map(gd => ({{title: gd.layout.yaxis.title.text,
                             traces: gd.data.filter(t => t.name).map(t => ({{name: t.name, x: t.x, y: t.y,
                                                                            dash: t.line.dash}}))}}))""")
            page.screenshot(path=str(ARTIFACTS / "compare_rates.png"))
        finally:
            browser.close()
    assert sorted(c["title"] for c in charts) == ["attack success rate (%)", "clean accuracy (%)"], charts
    for chart in charts:
        metric = "asr" if chart["title"].startswith("attack") else "ca"
        names = [t["name"] for t in chart["traces"]]
        assert names == ["Undefended", cbd], names  # undefended first, dashed
        for trace in chart["traces"]:
            assert (trace["dash"] == "dash") == (trace["name"] == "Undefended")
            assert trace["x"] == [100 * r for r in RATES]
            for x, y in zip(trace["x"], trace["y"]):
                line = expected[(trace["name"], round(x, 6))]
                assert line.seeds == len(SEEDS)
                assert y == pytest.approx(100 * getattr(line, f"{metric}_median"))
