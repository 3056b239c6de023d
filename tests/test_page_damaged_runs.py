"""AppTest: a runs root holding every kind of damaged run folder next to healthy ones. Every page
renders the healthy run and flags the damaged ones ("unreadable: <reason>"), never a traceback."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cbd_core.runs import RunDir
from conftest import open_page
from test_run_store import DAMAGE, damaged_root

PAGES = ["train", "runs", "sample_weights", "embeddings", "attributions", "compare"]


@pytest.fixture(scope="module")
def damaged_root_dir(tmp_path_factory, finished_runs):
    source_root, ids = finished_runs
    root = tmp_path_factory.mktemp("damaged_root")
    for run_id in ids.values():
        shutil.copytree(source_root / run_id, root / run_id)
    damaged = damaged_root(root, RunDir(root / ids["cbd"]))
    # A finished run whose per-sample record lacks an array every page counts on.
    lacking = RunDir(root / f"{ids['cbd']}-lacks-suspicion")
    shutil.copytree(source_root / ids["cbd"], lacking.path)
    record = lacking.arrays("sample_weights")
    record.pop("suspicion")
    lacking.save_arrays("sample_weights", **record)
    return root, ids, damaged, lacking


def messages(at) -> str:
    return " ".join(str(m.value) for m in [*at.error, *at.warning, *at.info])


@pytest.mark.parametrize("page", PAGES)
def test_each_page_shows_the_healthy_run_and_flags_the_damaged(damaged_root_dir, page, monkeypatch, no_worker):
    root, ids, damaged, _ = damaged_root_dir
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page(page, run=ids["cbd"])
    assert not at.exception, at.exception
    said = messages(at)
    assert "Something went wrong" not in said, said
    assert at.query_params["run"] == ids["cbd"]  # the page stayed on the run it was asked for
    if page == "runs":
        states = " ".join(str(s) for s in at.dataframe[0].value["state"])
        assert states.count("unreadable: ") == len(DAMAGE), states
        assert ids["cbd"] in str(at.selectbox[0].value)
    elif page != "train":
        assert "cannot be read" in said and "unreadable: " in said, said
        pickers = [box for box in at.selectbox if box.label == "Run"]  # other pages' boxes pick a dataset
        assert len(pickers) == 1 and pickers[0].value == ids["cbd"]


@pytest.mark.parametrize("kind", ["status_null", "config_list", "status_not_utf8"])
def test_a_damaged_run_opened_by_url_says_why(damaged_root_dir, kind, monkeypatch, no_worker):
    root, ids, damaged, _ = damaged_root_dir
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    bad = damaged[kind]
    for page in ("train", "runs", "sample_weights"):
        at = open_page(page, run=bad.run_id)
        assert not at.exception, (page, at.exception)
        said = messages(at)
        assert "unreadable" in said or "cannot be read" in said or "cannot be shown" in said, (page, said)
        assert "Something went wrong" not in said, said


def test_a_missing_array_is_named_on_the_page(damaged_root_dir, monkeypatch, no_worker):
    root, ids, _, lacking = damaged_root_dir
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page("sample_weights", run=lacking.run_id)
    assert not at.exception
    assert "sample_weights.npz lacks 'suspicion'" in messages(at)


@pytest.mark.parametrize("page", ["sample_weights", "runs", "train"])
def test_an_unknown_run_in_the_url_is_said_not_switched_silently(damaged_root_dir, page, monkeypatch, no_worker):
    root, ids, _, _ = damaged_root_dir
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = open_page(page, run="20990101-000000-gone")
    assert not at.exception
    said = messages(at)
    assert "20990101-000000-gone" in said and "not in the runs root" in said, said
    if page != "train":
        assert at.selectbox[0].value is None  # nothing chosen for the user; the list is offered


@pytest.mark.parametrize("page", ["sample_weights", "runs"])
def test_a_run_deleted_by_another_session_is_said_not_switched(tmp_path, finished_runs, page, monkeypatch,
                                                                no_worker):
    source_root, ids = finished_runs
    for run_id in (ids["cbd"], ids["undefended"]):
        shutil.copytree(source_root / run_id, tmp_path / run_id)
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_page(page, run=ids["cbd"])
    assert not at.exception and at.selectbox[0].value == ids["cbd"]
    RunDir(tmp_path / ids["cbd"]).delete()  # another session deletes the run this one watches
    at.run()
    assert not at.exception
    said = messages(at)
    assert ids["cbd"] in said and "not in the runs root" in said, said
    assert at.selectbox[0].value is None  # not silently another run


ODD_NAMES = ['bad "quoted" run', "run with spaces", "exe.\u202egnp", "*bold* run"]


@pytest.mark.parametrize("page", ["runs", "compare"])
def test_folders_with_odd_names_are_listed_as_unreadable(tmp_path, finished_runs, page, monkeypatch, no_worker):
    """Quotes, spaces, RLO (U+202E) or Markdown in a run folder's name: the folder is named as unreadable
    with every character visible (RLO escaped, Markdown not rendered), never silently left out."""
    source_root, ids = finished_runs
    shutil.copytree(source_root / ids["cbd"], tmp_path / ids["cbd"])
    for name in ODD_NAMES:
        shutil.copytree(source_root / ids["cbd"], tmp_path / name)
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    at = open_page(page)
    assert not at.exception
    if page == "runs":
        table = at.dataframe[0].value
        odd = table[table["state"].str.startswith("unreadable")]
        assert sorted(odd["run"]) == sorted(['bad "quoted" run', "run with spaces", "exe.\\u202egnp", "*bold* run"])
    else:
        said = messages(at)
        assert "unreadable" in said and "4 run folder(s)" in said
        assert r"exe.\\u202egnp" in said and "\u202e" not in said and r"\*bold\* run" in said
