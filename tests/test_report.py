"""The HTML report of one run (cbd_core.report, `python -m cbd_core report`): self-contained (nothing
fetched from a network), holds this run's numbers and verdict, and renders for runs that failed or
have not finished, saying so."""

from __future__ import annotations

import re
import shutil

import pytest

from cbd_core import capture, cli, verdicts
from cbd_core.report import _markdown as report_markdown, html_report
from cbd_core.runs import RunDir
from conftest import rewrite_status

# Any attribute that makes a browser fetch something: src=, href=, url(...) or @import pointing outside.
REMOTE = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import""", re.I)


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not REMOTE.search(page), REMOTE.search(page).group(0)
    assert "<script" not in page.lower()


def test_report_of_a_finished_cbd_run(finished_runs, tmp_path):
    root, ids = finished_runs
    for defense in ("cbd", "undefended"):
        shutil.copytree(root / ids[defense], tmp_path / ids[defense])
    run = RunDir(tmp_path / ids["cbd"])
    summary = run.summary()
    page = html_report(run)
    assert_self_contained(page)
    assert f"{summary['clean_accuracy']:.1%}" in page
    assert f"{summary['attack_success_rate']:.1%}" in page
    assert f"{summary['robust_accuracy']:.1%}" in page
    headline = verdicts.HEADLINES[verdicts.verdict(summary)]
    assert f"<strong>{headline}.</strong>" in page
    assert ids["undefended"] in page  # the baseline it is measured against
    assert page.count("<svg") == 2  # the curves and the weight histogram, inline
    assert "Not a finished run" not in page
    # f_B told as the Lesson tells it: the one definition of each question (cbd_core.capture)
    said = capture.f_b_sentences(capture.read_f_b(summary, run.metrics()))
    assert said and all(report_markdown(sentence) in page for sentence in said)


@pytest.mark.parametrize("state, words", [("failed", "This run failed"), ("running", "still training"),
                                          ("cancelled", "was cancelled")])
def test_report_of_a_run_that_did_not_finish(finished_runs, tmp_path, state, words):
    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    run = RunDir(tmp_path / ids["cbd"])
    rewrite_status(run, state=state, error="the worker stopped" if state == "failed" else None)
    page = html_report(run)
    assert_self_contained(page)
    assert "Not a finished run" in page and words in page
    assert ("No verdict yet" if state == "running" else "it has none") in page and "Backdoor removed" not in page
    if state == "failed":
        assert "the worker stopped" in page


def test_report_of_a_queued_run_with_nothing_written(tmp_path):
    run = RunDir.create(tmp_path, {"dataset": "mnist5k", "attack": "badnets", "defense": "cbd", "seed": 3,
                                   "poison_rate": 0.05})
    page = html_report(run)
    assert_self_contained(page)
    assert "still waiting in the queue" in page and "No epoch finished" in page and "5 %" in page


def test_cli_report(finished_runs, tmp_path, capsys):
    root, ids = finished_runs
    out = tmp_path / "report.html"
    assert cli.main(["report", ids["abl"], "--root", str(root), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert ids["abl"] in page and "wrote" in capsys.readouterr().err
    assert cli.main(["report", "no-such-run", "--root", str(root), "--out", str(out)]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err


def test_runs_and_compare_pages_offer_the_report(finished_runs, tmp_path, monkeypatch, no_worker):
    from conftest import open_page

    root, ids = finished_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    for page in ("runs", "compare"):
        at = open_page(page, run=ids["cbd"])
        assert not at.exception
        labels = [button.proto.label for button in at.get("download_button")]
        assert "Download report (HTML)" in labels, page
    queued = RunDir.create(tmp_path, {"dataset": "mnist5k", "attack": "badnets", "defense": "cbd", "seed": 0,
                                      "poison_rate": 0.1})
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_page("runs", run=queued.run_id)
    assert not at.exception
    assert [button.proto.label for button in at.get("download_button")] == ["Download report (HTML)"]  # no zip yet
