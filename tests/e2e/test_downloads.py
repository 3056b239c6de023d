"""Downloads in real headless Chromium: "Download report (HTML)" pressed right after "Download as zip"
must give the report. A download button that reruns the script on click gives every deferred download
on the page a new file id in that rerun and drops the old ones, so the second click could ask for an id
that no longer exists (`MediaFileStorageError: Deferred file … not found`)."""

from __future__ import annotations

import shutil

import pytest

from streamlit_server import CHROMIUM, CHROMIUM_FLAGS, IDLE, running_app

RUN_ID = "20990101-000000-000-download"


@pytest.fixture(scope="module")
def server(tmp_path_factory, finished_runs):
    source, ids = finished_runs
    root = tmp_path_factory.mktemp("download_runs")
    shutil.copytree(source / ids["undefended"], root / RUN_ID)
    with running_app(root) as url:
        yield url, root


def test_report_right_after_zip(server):
    from playwright.sync_api import sync_playwright

    url, root = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1200}, accept_downloads=True)
            page.goto(f"{url}/runs?run={RUN_ID}")
            page.wait_for_selector(IDLE, timeout=90_000)
            zip_button = page.get_by_role("button", name="Download as zip")
            report_button = page.get_by_role("button", name="Download report (HTML)")
            zip_button.wait_for(timeout=60_000)
            for attempt in range(4):
                with page.expect_download(timeout=30_000) as zipped:
                    zip_button.click()
                with page.expect_download(timeout=30_000) as reported:
                    report_button.click()
                assert zipped.value.failure() is None, attempt
                assert reported.value.failure() is None, attempt
                text = open(reported.value.path(), encoding="utf-8").read()
                assert RUN_ID in text and "<html" in text.lower(), attempt
                page.wait_for_selector(IDLE, timeout=90_000)
            assert page.locator("[data-testid='stException']").count() == 0
        finally:
            browser.close()
    log = (root / "streamlit.log").read_text()
    assert "not found" not in log and "MediaFileStorageError" not in log, log[-3000:]
