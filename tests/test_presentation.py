"""Presentation mode: one sidebar toggle, kept in the session and the URL (?present=1), that enlarges
the text (a style sheet), the images and the charts of every page."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import app_at_page
from pages.common.presentation import QUERY_KEY, SCALE, TOGGLE_KEY

pytestmark = pytest.mark.usefixtures("no_worker")


def style_sheets(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if "<style>" in m.value]


def chart_heights(at: AppTest) -> list[int]:
    return [json.loads(chart.proto.spec)["layout"].get("height") for chart in at.get("plotly_chart")]


def test_the_toggle_enlarges_text_and_goes_into_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = app_at_page("overview").run()
    assert at.toggle(key=TOGGLE_KEY).value is False and not style_sheets(at)
    assert QUERY_KEY not in at.query_params
    at.toggle(key=TOGGLE_KEY).set_value(True).run()
    assert not at.exception
    sheet = "".join(style_sheets(at))
    assert f"font-size: {round(16 * SCALE)}px" in sheet
    assert at.query_params[QUERY_KEY] == "1"
    at.toggle(key=TOGGLE_KEY).set_value(False).run()
    assert not style_sheets(at) and QUERY_KEY not in at.query_params


def test_a_link_with_present_opens_in_presentation_mode_and_keeps_it_across_pages(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = app_at_page("overview")
    at.query_params[QUERY_KEY] = "1"
    at.run()
    assert at.toggle(key=TOGGLE_KEY).value is True and style_sheets(at)
    at.switch_page("pages/train.py").run()
    assert not at.exception
    assert at.toggle(key=TOGGLE_KEY).value is True and style_sheets(at)
    assert at.query_params[QUERY_KEY] == "1"


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
