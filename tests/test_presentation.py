"""Presentation mode: one sidebar toggle, kept in the session and the URL (?present=1), that enlarges
the text (a style sheet), the images and the charts of every page."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import app_at_page
from pages.common.presentation import QUERY_KEY, SCALE, TOGGLE_KEY, sidebar_state, toggle_key

pytestmark = pytest.mark.usefixtures("no_worker")


def style_sheets(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if "<style>" in m.value]


def chart_heights(at: AppTest) -> list[int]:
    return [json.loads(chart.proto.spec)["layout"].get("height") for chart in at.get("plotly_chart")]


def open_overview(present_in_url: bool = False, **state) -> AppTest:
    """A fresh session on the Overview. (AppTest reruns a switched-to page without app.py, whose sidebar
    holds the toggle, so every state is checked on a fresh run; the browser test clicks it for real.)"""
    at = app_at_page("overview", session_state=state)
    if present_in_url:
        at.query_params[QUERY_KEY] = "1"
    return at.run()


def test_off_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_overview()
    assert not at.exception
    assert at.toggle(key=toggle_key(False)).value is False and not style_sheets(at)
    assert QUERY_KEY not in at.query_params


def test_switched_on_it_enlarges_the_text_and_goes_into_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_overview(**{TOGGLE_KEY: True})
    assert not at.exception
    assert f"html {{ font-size: {round(16 * SCALE)}px; }}" in "".join(style_sheets(at))
    assert at.query_params[QUERY_KEY] == "1"


def test_a_link_with_present_opens_in_presentation_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_overview(present_in_url=True)
    assert not at.exception
    assert at.toggle(key=toggle_key(True)).value is True and style_sheets(at)
    assert at.query_params[QUERY_KEY] == "1"


def test_switched_off_it_leaves_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_overview(present_in_url=True, **{TOGGLE_KEY: False})  # the session's choice wins over the link
    assert at.toggle(key=toggle_key(False)).value is False and not style_sheets(at)
    assert QUERY_KEY not in at.query_params


def test_charts_and_images_grow_in_presentation_mode(finished_runs, monkeypatch):
    root, ids = finished_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    normal = app_at_page("attributions", ids["cbd"]).run()
    big = app_at_page("attributions", ids["cbd"], {TOGGLE_KEY: True}).run()
    assert not normal.exception and not big.exception
    assert chart_heights(big) == [round(h * SCALE) for h in chart_heights(normal)]
    fonts = [json.loads(c.proto.spec)["layout"].get("font", {}).get("size") for c in big.get("plotly_chart")]
    assert fonts and all(size == round(12 * SCALE) for size in fonts)


def test_enlarge_scales_with_presentation_mode(monkeypatch):
    import pages.common.presentation as presentation
    from pages.common import enlarge

    image = np.zeros((28, 28, 1), np.uint8)
    assert enlarge(image, 112).shape == (112, 112)  # no app session: normal size
    monkeypatch.setattr(presentation, "presenting", lambda: True)
    assert enlarge(image, 112).shape == (28 * int(112 * SCALE // 28),) * 2


def test_the_toggle_flips_the_mode(tmp_path, monkeypatch):
    """The widget only flips the mode kept under TOGGLE_KEY (AppTest reruns the page without app.py, so
    the style sheet and the URL after a click are the browser test's to check)."""
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_overview(present_in_url=True)
    at.toggle(key=toggle_key(True)).set_value(False).run()
    assert not at.exception and at.session_state[TOGGLE_KEY] is False
    assert sidebar_state() == "auto"  # outside an app session: nothing asked for
