"""AppTest for the Overview, Train and Runs pages: queueing through the same validation as the CLI,
the live panel over a run the worker trains, cancelling, deleting, downloading, broken folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import cbd_core.jobs as jobs
from cbd_core.defenses import DEFENSES
from cbd_core.runs import RunDir, list_runs
from conftest import open_page, rewrite_status
from pages.common.settings import AttackSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def runs_root(tmp_path, monkeypatch, no_worker):
    """An empty runs root; no real worker process is started (the tests run one in-process)."""
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    return tmp_path


@pytest.fixture
def fast_worker(monkeypatch, patch_dataset):
    """Train whatever is queued, in this process, on 300 images, with a stand-in for the UMAP step."""
    import cbd_core.analysis.attributions as attributions
    import cbd_core.analysis.embeddings as embeddings

    patch_dataset(300, 100)
    monkeypatch.setattr(attributions, "compute_trigger_shares", lambda run: {})
    monkeypatch.setattr(attributions, "compute_attribution_views", lambda run: {})
    monkeypatch.setattr(embeddings, "compute_umap", lambda run: {})
    monkeypatch.setattr(embeddings, "warm_up", lambda: None)
    monkeypatch.setattr(embeddings, "configure_numba_cache", lambda folder=None: None)
    return lambda root: jobs.Worker(root, "cpu").serve(exit_when_idle=True)


def start(at: AppTest) -> None:
    [b for b in at.button if b.label == "Start"][0].click()


def test_train_page_queues_and_shows_progress(runs_root, fast_worker):
    at = open_page("train")
    assert not at.exception
    at.selectbox[2].set_value("undefended")  # dataset, attack, defense, device
    at.run()
    at.number_input(key="train_undefended_epochs").set_value(2)
    start(at)
    at.run()
    assert not at.exception and not at.error
    runs = list_runs(runs_root)
    assert len(runs) == 1
    run = runs[0]
    assert run.config()["defense"] == "undefended" and run.config()["defense_params"]["epochs"] == 2
    assert at.query_params["run"] == run.run_id
    assert any(m.label == "place in queue" for m in at.metric)

    assert fast_worker(runs_root) == 1
    at.run()  # AppTest does not fire run_every: rerun by hand
    assert not at.exception
    assert run.status()["state"] == "done"
    assert at.get("plotly_chart"), "the CA / ASR curves"
    assert [m.value for m in at.metric if m.label == "state"] == ["done"]


def test_train_page_rejects_bad_settings(runs_root):
    at = open_page("train")
    at.number_input[1].set_value(12)  # target label 12 on a 10-class dataset
    start(at)
    at.run()
    assert not at.exception
    assert any("target_label" in e.value for e in at.error)
    assert list_runs(runs_root) == []  # nothing queued


def test_train_page_cancels_a_queued_run(runs_root):
    at = open_page("train")
    start(at)
    at.run()
    run = RunDir(runs_root / at.query_params["run"])  # the active run: the defended one, not its baseline
    assert run.config()["defense"] == "cbd"
    cancel = [b for b in at.button if b.label == "Cancel this run"]
    assert cancel
    cancel[0].click()
    at.run()
    assert not at.exception
    assert run.status()["state"] == "cancelled"


def test_train_page_takes_the_attack_lab_settings(runs_root):
    at = open_page("train", session_state={"attack_settings": AttackSettings(
        dataset="mnist5k", attack="blend", poison_rate=0.05, target_label=3, attack_params={"alpha": 0.3})})
    start(at)
    at.run()
    assert not at.exception and not at.error
    config = RunDir(runs_root / at.query_params["run"]).config()
    assert (config["attack"], config["poison_rate"], config["target_label"]) == ("blend", 0.05, 3)
    assert config["attack_params"]["alpha"] == 0.3


def test_failed_run_shows_its_error(runs_root, finished_runs):
    root, ids = finished_runs
    shutil.copytree(root / ids["undefended"], runs_root / ids["undefended"])
    run = RunDir(runs_root / ids["undefended"])
    rewrite_status(run, state="failed", error="worker stopped")  # a done run, failed by hand
    at = open_page("train", run=run.run_id)
    assert not at.exception
    assert any("worker stopped" in e.value for e in at.error)


def test_runs_page_lists_downloads_and_deletes(runs_root, finished_runs):
    root, ids = finished_runs
    for defense in ("cbd", "undefended"):
        shutil.copytree(root / ids[defense], runs_root / ids[defense])
    broken = runs_root / "20200101-000000-000-broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    at = open_page("runs", run=ids["cbd"])
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 3 and "unreadable" in " ".join(map(str, table["state"].tolist()))
    assert at.get("download_button"), "a finished run can be downloaded"
    delete = [b for b in at.button if b.label == "Delete run"][0]
    assert delete.disabled  # not before the confirmation is ticked
    at.checkbox(key=f"confirm_delete_{ids['cbd']}").check()
    at.run()
    [b for b in at.button if b.label == "Delete run"][0].click()
    at.run()
    assert not at.exception
    assert not (runs_root / ids["cbd"]).exists() and (runs_root / ids["undefended"]).exists()


def test_runs_and_compare_call_an_uploaded_dataset_by_its_file_name(runs_root, finished_runs):
    """A dataset uploaded on the dashboard is stored under its content's hash; the Runs page and Compare's
    table call its runs by the name the file had ("traffic_signs"), not "npz" or the hash, and keep runs
    on another file apart from them."""
    import io

    import numpy as np

    from cbd_core.runs import write_json
    from cbd_core.uploads import save_upload

    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.default_rng(0).integers(0, 255, (40, 28, 28, 1), dtype=np.uint8), y=np.arange(40) % 10)
    uploaded = save_upload(runs_root, buffer.getvalue(), "dataset", name="traffic_signs.npz")
    root, ids = finished_runs
    for defense, path in (("cbd", str(uploaded)), ("undefended", "/elsewhere/digits.npz")):
        shutil.copytree(root / ids[defense], runs_root / ids[defense])
        config = json.loads((runs_root / ids[defense] / "config.json").read_text())
        write_json(runs_root / ids[defense] / "config.json", {**config, "dataset": "npz", "npz_path": path})
    at = open_page("runs")
    assert not at.exception
    table = at.dataframe[0].value
    assert sorted(table["dataset"].tolist()) == ["digits", "traffic_signs"]
    at = open_page("compare")
    assert not at.exception
    assert at.multiselect(key="compare_datasets").options == ["digits", "traffic_signs"]


def test_runs_page_empty_root(runs_root):
    at = open_page("runs")
    assert not at.exception and at.info


def test_zip_holds_the_run(finished_runs):
    import io
    import zipfile

    root, ids = finished_runs
    run = RunDir(root / ids["cbd"])
    names = zipfile.ZipFile(io.BytesIO(run.zip_bytes())).namelist()
    for expected in ("config.json", "status.json", "summary.json", "metrics.jsonl", "models/f_C.pt", "models/f_B.pt"):
        assert f"{run.run_id}/{expected}" in names
    assert json.loads(zipfile.ZipFile(io.BytesIO(run.zip_bytes())).read(f"{run.run_id}/config.json"))["defense"] == "cbd"


def test_overview_quick_demo_opens_the_train_page(runs_root, monkeypatch):
    at = open_page("overview")
    assert not at.exception
    demo = [b for b in at.button if "Quick demo" in b.label]
    assert demo
    demo[0].click()
    at.run()
    assert not at.exception
    runs = list_runs(runs_root)  # newest first: the demo's undefended baseline is queued right after it
    assert [run.config()["defense"] for run in runs] == ["undefended", "cbd"]
    assert [run.status()["state"] for run in runs] == ["queued", "queued"]
    demo, baseline = runs[1].config(), runs[0].config()
    assert {k: v for k, v in baseline.items() if k not in ("defense", "defense_params")} == \
        {k: v for k, v in demo.items() if k not in ("defense", "defense_params")}
    assert baseline["defense_params"] == DEFENSES["undefended"].resolve((28, 28, 1), {})  # its defaults
    assert at.session_state["active_run"] == runs[1].run_id  # the demo itself, not its baseline
    assert at.query_params["run"] == runs[1].run_id  # a copied link opens the demo, not the newest run
    assert at.title[0].value == "Train a defense"


def test_overview_names_the_defenses_from_the_registry(runs_root):
    """"Train for any defense (...)" lists every registered defense but the undefended baseline (ASD was
    once left out of a typed list), and the Quick demo's sentence names the demo's own attack and defense."""
    from cbd_core.attacks import ATTACKS
    from cbd_core.config import quick_demo_config

    at = open_page("overview")
    assert not at.exception
    [train] = [m.value for m in at.markdown if "for any defense" in m.value]
    assert "for any defense (CBD, ABL, NONE or ASD) or none" in train
    assert all((d.title in train) == (name != "undefended") for name, d in DEFENSES.items())
    demo = quick_demo_config()
    [said] = [m.value for m in at.markdown if "Quick demo" in m.value]
    assert f"with the {ATTACKS[demo.attack].title} trigger (target {demo.target_label})" in said
    assert f"trains {DEFENSES[demo.defense].title} on them" in said and "poisons 10% of" in said


def test_overview_promises_a_duration_only_from_runs_finished_here(runs_root):
    """The Quick demo's duration is read from finished runs with the demo's (and its baseline's) timing
    settings on this machine's device, never typed: nothing before any run has finished, then their sum."""
    from cbd_core.config import quick_demo_config
    from cbd_core.jobs.settings import device_key
    from cbd_core.verdicts import baseline_config

    at = open_page("overview")
    [said] = [m.value for m in at.markdown if "Quick demo" in m.value]
    assert "about" not in said and " s " not in said  # no finished run: no promise
    demo = quick_demo_config()
    device = device_key(demo)
    RunDir.create(runs_root, demo.to_dict(), state="done", seconds=37.0, device=device)
    RunDir.create(runs_root, baseline_config(demo.to_dict()), state="done", seconds=14.0, device=device)
    at = open_page("overview")
    assert not at.exception
    [said] = [m.value for m in at.markdown if "Quick demo" in m.value]
    assert "(about 51 s for it and its undefended twin, judged from runs finished here)" in said


def test_overview_queues_a_preset_with_its_baseline(runs_root, monkeypatch):
    from cbd_core.presets import PRESETS

    at = open_page("overview")
    box = at.selectbox(key="overview_preset")
    box.select(PRESETS["wanet"]).run()
    assert not at.exception
    assert any(PRESETS["wanet"].look_for == info.value for info in at.info)  # the lesson of the chosen preset
    at.button(key="queue_preset").click().run()
    assert not at.exception
    runs = list_runs(runs_root)
    assert [(r.config()["defense"], r.config()["attack"]) for r in runs] == [("undefended", "wanet"), ("cbd", "wanet")]
    assert at.session_state["active_run"] == runs[1].run_id
    assert at.title[0].value == "Train a defense"


def test_train_and_runs_pages_say_why_the_worker_could_not_start(runs_root, monkeypatch):
    """A full disk while starting the worker: the queued run's Train page and the Runs page name the
    reason instead of "Starting the background worker…" forever."""
    import errno

    import cbd_core.jobs.launcher as launcher

    at = open_page("train")
    start(at)
    at.run()
    run_id = at.query_params["run"]

    def full_disk(root, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(root / ".workers" / "cpu-0.json"))

    with monkeypatch.context() as disk:
        disk.setattr(launcher, "write_info", full_disk)
        assert launcher._spawn_worker(runs_root.resolve(), "cpu", 0) is None
    try:
        at = open_page("train", run=run_id)
        assert not at.exception
        assert any("could not start" in e.value and "No space left on device" in e.value for e in at.error)
        at = open_page("runs")
        assert not at.exception
        assert any("could not start" in e.value and "No space left on device" in e.value for e in at.error)
    finally:
        launcher._start_failures.clear()


MARKDOWN_ERROR = "**bold** [a link](http://example.com) :red[red] $x^2$ `code` _it_"


@pytest.mark.parametrize("page", ["train", "runs"])
def test_markdown_in_run_files_is_shown_literally(runs_root, page):
    """An error text or a host name in a run's status.json is shown as written: its Markdown is escaped,
    never rendered (no bold, link, colour or LaTeX from a run file)."""
    from conftest import fast_config

    run = RunDir.create(runs_root, fast_config().to_dict())
    run.update_status(state="failed", error=MARKDOWN_ERROR,
                      owner={"kind": "cli", "pid": 1, "host": "**host**", "started": "now"})
    at = open_page(page, run=run.run_id)
    assert not at.exception
    shown = [e.value for e in at.error if "bold" in e.value]
    assert shown, [e.value for e in at.error]
    for text in shown:
        assert "**bold**" not in text and "[a link](" not in text and ":red[" not in text
        assert r"\*\*bold\*\*" in text and r"\[a link\]" in text and r"\$x^2\$" in text


def test_a_run_queued_for_ray_says_so(runs_root):
    """A run waiting for the Ray cluster is not "Starting the background worker…": no local worker takes it."""
    from conftest import fast_config

    run = RunDir.create(runs_root, fast_config().to_dict(), state="queued", queue=jobs.RAY_QUEUE)
    at = open_page("train", run=run.run_id)
    assert not at.exception
    assert any("Ray cluster" in i.value for i in at.info)
    assert not any("Starting the background worker" in i.value for i in at.info)
