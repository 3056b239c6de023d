"""The run format's owner (`cbd_core.runs`) against a runs root that holds damaged folders, several
writers, symbolic links, a deleted run and a full disk: one bad folder never breaks the others."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
import io

import numpy as np
import pytest

import cbd_core.jobs as jobs
from conftest import fast_config
import cbd_core.runs as runs
from cbd_core import matrix, verdicts
from cbd_core.errors import UserInputError
from cbd_core.run_index import scan
from cbd_core.runs import RunDir, RunGone, list_runs, owner_record

def _config(**overrides):
    return fast_config(**{"embedding_samples": 0, **overrides})


# Each kind of damage the fault probe found, as (file, bytes written over it).
DAMAGE = {
    "status_null": ("status.json", b"null"),
    "status_list": ("status.json", b"[]"),
    "status_not_utf8": ("status.json", b'{"state": "done\xff\xfe"}'),
    "status_truncated": ("status.json", b'{"state": "do'),
    "status_unknown_state": ("status.json", b'{"state": 7}'),
    "config_list": ("config.json", b"[]"),
    "config_truncated": ("config.json", b'{"dataset": "mnist5k", "att'),
    "config_not_utf8": ("config.json", b"\xff\xfe\x00"),
    "config_wrong_types": ("config.json", b'{"dataset": "mnist5k", "attack": "badnets", "defense": "cbd", '
                                          b'"poison_rate": "lots", "seed": 0}'),
    "summary_not_utf8": ("summary.json", b"\x80\x81"),
    "summary_null": ("summary.json", b"null"),
}


def damaged_root(root, template: RunDir) -> dict[str, RunDir]:
    """A copy of the finished `template` run per kind of damage, under `root`."""
    made = {}
    for kind, (name, data) in DAMAGE.items():
        target = root / f"{template.run_id}-{kind.replace('_', '-')}"
        shutil.copytree(template.path, target)
        (target / name).write_bytes(data)
        made[kind] = RunDir(target)
    return made


@pytest.fixture
def healthy_and_damaged(tmp_path, finished_runs):
    """A runs root with one healthy finished run (undefended) and every kind of damaged copy of it."""
    source_root, ids = finished_runs
    healthy = RunDir(tmp_path / ids["undefended"])
    shutil.copytree(source_root / ids["undefended"], healthy.path)
    return tmp_path, healthy, damaged_root(tmp_path, healthy)


def test_every_damaged_folder_is_listed_as_unreadable_and_never_raises(healthy_and_damaged):
    root, healthy, damaged = healthy_and_damaged
    listed = {run.run_id for run in list_runs(root)}
    assert healthy.run_id in listed and {run.run_id for run in damaged.values()} <= listed
    assert healthy.problem() is None
    for kind, run in damaged.items():
        problem = run.problem()
        assert problem and problem.startswith("unreadable: "), (kind, problem)
        status = run.status()
        assert isinstance(status, dict) and status["state"] in runs.STATES
        assert isinstance(run.metrics(), list)
        assert run.summary() is None or isinstance(run.summary(), dict)
    assert "not UTF-8" in damaged["status_not_utf8"].problem()
    assert "null" in damaged["status_null"].problem() and "a list" in damaged["config_list"].problem()
    with pytest.raises(UserInputError, match="unreadable: config.json"):
        damaged["config_truncated"].config()
    # Everything that walks the root goes on: recovery, the queue, matrix resume, the baseline lookup.
    assert jobs.recover_orphans(root) == []
    assert jobs.queued_runs(root) == [] and jobs.queue_positions(root) == {}
    config = healthy.config()
    assert matrix.finished_summary(config, scan(root)) == healthy.summary()
    assert verdicts.find_baseline({**config, "defense": "cbd"}, root).run_id == healthy.run_id
    assert verdicts.lookup_baseline({**config, "defense": "cbd"}, root).state == "done"


def test_non_utf8_metrics_lines_are_skipped(tmp_path):
    run = RunDir.create(tmp_path, {"dataset": "d", "attack": "a", "defense": "x"})
    run.append_metrics({"epoch": 1})
    with open(run.path / "metrics.jsonl", "ab") as f:
        f.write(b'{"epoch": "\xff"}\n[1, 2]\nnull\n')
    run.append_metrics({"epoch": 2})
    assert run.metrics() == [{"epoch": 1}, {"epoch": 2}]


def test_wrong_typed_status_fields_are_dropped(tmp_path):
    run = RunDir.create(tmp_path, {"dataset": "d", "attack": "a", "defense": "x"})
    (run.path / "status.json").write_text(json.dumps({"state": "running", "progress": "half", "worker": [1],
                                                      "error": 3}))
    status = run.status()
    assert status == {"state": "running"}
    assert jobs.status_line(status) == "running"
    assert run.problem() is None


def test_a_missing_array_is_named(tmp_path):
    run = RunDir.create(tmp_path, {"dataset": "d", "attack": "a", "defense": "x"})
    run.save_arrays("sample_weights", index=np.arange(3), is_poisoned=np.zeros(3, bool), label=np.zeros(3, int))
    with pytest.raises(UserInputError, match="sample_weights.npz lacks 'suspicion'"):
        run.sample_record()
    (run.path / "embeddings.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserInputError, match="unreadable: embeddings.npz cannot be read"):
        run.embeddings()


def test_new_runs_carry_a_schema_version(tmp_path):
    run = RunDir.create(tmp_path, {"dataset": "d", "attack": "a", "defense": "x"})
    assert json.loads((run.path / "status.json").read_text())["schema_version"] == runs.SCHEMA_VERSION



@pytest.fixture
def mapless_worker(monkeypatch):
    """A worker that skips the UMAP step (warm-up, numba cache, maps): these tests are about run folders."""
    import cbd_core.analysis.embeddings as embeddings

    monkeypatch.setattr(embeddings, "warm_up", lambda: None)
    monkeypatch.setattr(embeddings, "configure_numba_cache", lambda folder=None: None)
    monkeypatch.setattr(embeddings, "compute_umap", lambda run: {})

def test_submit_and_the_worker_go_on_beside_damaged_folders(healthy_and_damaged, patch_dataset, mapless_worker, monkeypatch):
    """Fault 1: jobs.submit raised after writing a queued folder, and the worker exited."""
    root, healthy, damaged = healthy_and_damaged
    patch_dataset(300, 100)
    queued = jobs.submit(_config(), root, start_worker=False)
    assert jobs.queued_runs(root) == [queued]
    assert jobs.Worker(root, "cpu").serve(exit_when_idle=True) == 1
    assert queued.status()["state"] == "done" and queued.status().get("error") is None
    assert healthy.problem() is None


# -- many writers -------------------------------------------------------------------------------------

@pytest.fixture
def live_process():
    """A real process of this machine that stays alive until the test ends (the run's "CLI")."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def test_a_cli_run_training_in_the_apps_root_is_never_marked_failed(tmp_path, live_process):
    """Fault 2: recover_orphans marked any running run without a live worker failed."""
    config = _config().to_dict()
    for kind in ("cli", "matrix"):
        run = RunDir.create(tmp_path, config, state="running")
        run.update_status(owner={**owner_record(kind), "pid": live_process.pid})
    elsewhere = RunDir.create(tmp_path, config, state="running")  # another host: cannot be proven gone
    elsewhere.update_status(owner={**owner_record("cli"), "pid": 2**22 + 7, "host": "some-other-host"})
    legacy = RunDir.create(tmp_path, config, state="running")  # no owner recorded: left alone
    assert jobs.recover_orphans(tmp_path) == []
    for run in list_runs(tmp_path):
        assert run.status()["state"] == "running"
    # Deleting it while its process lives is refused, so nobody pulls the folder from under it.
    cli_run = next(r for r in list_runs(tmp_path) if r.status().get("owner", {}).get("kind") == "cli"
                   and r.status()["owner"]["host"] == socket.gethostname())
    with pytest.raises(UserInputError, match="cancel it before deleting"):
        cli_run.delete()
    assert cli_run.path.is_dir()
    # Once the process is provably gone (same host, pid dead), recovery marks it failed, naming it.
    live_process.kill()
    live_process.wait()
    recovered = jobs.recover_orphans(tmp_path)
    assert cli_run.run_id in recovered and elsewhere.run_id not in recovered and legacy.run_id not in recovered
    assert "cli process" in cli_run.status()["error"]
    cli_run.delete()  # a failed run can go
    assert not cli_run.path.exists()


def test_a_finished_run_carries_no_stale_error(tmp_path, patch_dataset):
    from cbd_core.pipeline import execute, prepare

    patch_dataset(300, 100)
    prepared = prepare(_config())
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    run.update_status(error="the background worker stopped while this run was in progress")  # stale, from before
    execute(prepared, run)
    status = run.status()
    assert status["state"] == "done" and status.get("error") is None
    assert status["owner"]["kind"] == "cli" and status["owner"]["pid"] == os.getpid()


def test_writes_never_recreate_a_deleted_run(tmp_path):
    """Fault 3 (unit): every write into a deleted run raises RunGone and leaves no folder."""
    run = RunDir.create(tmp_path, {"dataset": "d", "attack": "a", "defense": "x"})
    shutil.rmtree(run.path)
    for write in (lambda: run.update_status(state="running"), lambda: run.append_metrics({"epoch": 1}),
                  lambda: run.write_summary({}), lambda: run.save_arrays("embeddings", index=np.arange(2)),
                  lambda: run.write_error("x")):
        with pytest.raises(RunGone):
            write()
    assert not run.path.exists()


def test_real_worker_survives_damage_and_a_run_deleted_mid_training(tmp_path, finished_runs):
    """Faults 1 and 3 with a real worker process: a root holding damaged folders does not stop it, a run
    whose folder is deleted while it trains is stopped (not re-created), and the next run is trained."""
    source_root, ids = finished_runs
    template = RunDir(tmp_path / ids["undefended"])
    shutil.copytree(source_root / ids["undefended"], template.path)
    damaged_root(tmp_path, template)
    long_run = jobs.submit(_config(defense_params={"epochs": 200, "batch_size": 32}), tmp_path, start_worker=False)
    next_run = jobs.submit(_config(seed=1, defense_params={"epochs": 1, "batch_size": 256}), tmp_path,
                           start_worker=False)
    assert jobs.ensure_workers(tmp_path, devices=["cpu"], per_device=1)
    try:
        deadline = time.monotonic() + 180
        while long_run.status().get("state") != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert long_run.status()["state"] == "running", long_run.status()
        owner = long_run.status()["owner"]
        assert owner["kind"] == "worker" and owner["host"] == socket.gethostname()
        with pytest.raises(UserInputError, match="cancel it before deleting"):
            long_run.delete()  # the app refuses; a user's rm -r is what the worker must survive
        shutil.rmtree(long_run.path)
        status = runs.wait_for(next_run, timeout=240)
        assert status["state"] == "done", status
        assert not long_run.path.exists()
        assert [w.alive for w in jobs.workers(tmp_path)] == [True]
    finally:
        jobs.stop_workers(tmp_path)
    log = (tmp_path / jobs.WORKERS_DIR / "cpu-0.log").read_text()
    assert "deleted while it trained" in log, log


# -- filesystem trust -------------------------------------------------------------------------------

def test_links_are_never_followed(tmp_path):
    """Fault 4: the zip followed a link to /etc/passwd, and a linked run folder was listed."""
    root, outside = tmp_path / "runs", tmp_path / "outside"
    run = RunDir.create(root, {"dataset": "d", "attack": "a", "defense": "x"}, state="done")
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (run.path / "passwd").symlink_to(secret)
    (run.path / "models").mkdir()
    (run.path / "models" / "evil").symlink_to(tmp_path, target_is_directory=True)
    names = zipfile.ZipFile(io.BytesIO(run.zip_bytes())).namelist()
    assert f"{run.run_id}/config.json" in names
    assert not any("passwd" in n or "evil" in n or "secret" in n for n in names), names
    foreign = RunDir.create(outside, {"dataset": "d", "attack": "a", "defense": "x"}, state="done")
    (root / "20990101-000000-linked").symlink_to(foreign.path, target_is_directory=True)
    assert [r.run_id for r in list_runs(root)] == [run.run_id]
    with pytest.raises(UserInputError):
        RunDir.open(root, "20990101-000000-linked")
    with pytest.raises(UserInputError):
        RunDir(root / "20990101-000000-linked").zip_bytes()
    with pytest.raises(UserInputError):
        RunDir(root / "20990101-000000-linked").delete()
    assert foreign.path.is_dir() and secret.read_text() == "not yours"
    # A metrics.jsonl that is a link is never appended through.
    (run.path / "metrics.jsonl").symlink_to(secret)
    with pytest.raises(OSError):
        run.append_metrics({"epoch": 1})
    assert secret.read_text() == "not yours"
    run.delete()  # removes the links, never what they point at
    assert secret.read_text() == "not yours" and foreign.path.is_dir()


# -- write errors -----------------------------------------------------------------------------------

def _enospc_for(monkeypatch, marker: str) -> None:
    """Make the atomic writer fail with ENOSPC for files whose path contains `marker`."""
    real = runs._atomic_write_bytes

    def full(path, data, make_parents=True):
        if marker in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, make_parents)

    monkeypatch.setattr(runs, "_atomic_write_bytes", full)


def test_disk_full_mid_run_fails_that_run_with_the_reason_and_the_worker_goes_on(tmp_path, patch_dataset,
                                                                                  mapless_worker, monkeypatch):
    """Fault 6: the run stayed "running", the worker died, and a 0-byte error.txt was left."""
    patch_dataset(300, 100)
    first = jobs.submit(_config(), tmp_path, start_worker=False)
    second = jobs.submit(_config(seed=1), tmp_path, start_worker=False)
    _enospc_for(monkeypatch, f"{first.run_id}/models/")
    assert jobs.Worker(tmp_path, "cpu").serve(exit_when_idle=True) == 2
    status = first.status()
    assert status["state"] == "failed" and "no space left on device" in status["error"], status
    assert second.status()["state"] == "done"
    error_txt = first.path / "error.txt"
    assert not error_txt.exists() or error_txt.stat().st_size > 0
    assert jobs.recover_orphans(tmp_path) == []


def test_disk_full_at_start_leaves_no_empty_folder(tmp_path, patch_dataset, monkeypatch):
    patch_dataset(300, 100)
    _enospc_for(monkeypatch, "config.json")
    with pytest.raises(OSError):
        jobs.submit(_config(), tmp_path, start_worker=False)
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


# -- data bounds ----------------------------------------------------------------------------------

def _npz(path, y, n=40):
    x = np.random.default_rng(0).integers(0, 255, (n, 12, 12), dtype=np.uint8)
    np.savez_compressed(path, x=x, y=y)
    return path


@pytest.mark.parametrize("label", [1000, 1_000_000, 2**40])
def test_labels_beyond_a_thousand_classes_are_refused(tmp_path, label):
    """Fault 5: one label of 1,000,000 trained a 1,000,001-class model; 2**40 was a MemoryError."""
    from cbd_core import uploads
    from cbd_core.data import load_npz

    y = np.arange(40) % 2
    y[3] = label
    path = _npz(tmp_path / "big.npz", y.astype(np.int64))
    with pytest.raises(UserInputError, match="labels must be 0..K-1 with at most 1000 classes"):
        load_npz(path)
    with pytest.raises(UserInputError, match="npz_path: .*at most 1000 classes"):
        uploads.save_upload(tmp_path / "root", path.read_bytes(), "dataset")
    y[3] = 999  # the largest label allowed
    load_npz(_npz(tmp_path / "ok.npz", y.astype(np.int64)))


def test_one_unpacked_size_cap_for_the_cli_and_uploads(tmp_path, monkeypatch, capsys):
    from cbd_core import data, uploads
    from cbd_core.cli import main

    path = _npz(tmp_path / "d.npz", np.arange(40) % 2)
    monkeypatch.setattr(data, "MAX_NPZ_UNPACKED_BYTES", 1000)
    loaded = []
    monkeypatch.setattr(np, "load", lambda *a, **k: loaded.append(a) or pytest.fail("np.load ran"))
    with pytest.raises(UserInputError, match="unpacks to .* over the"):
        data.load_npz(path)
    with pytest.raises(UserInputError, match="npz_path: the uploaded dataset unpacks to"):
        uploads.save_upload(tmp_path / "root", path.read_bytes(), "dataset")
    assert main(["run", "--npz", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unpacks to" in err and len(err.strip().splitlines()) == 1
    assert loaded == []


def test_a_non_npz_file_says_so(tmp_path, capsys):
    from cbd_core.cli import main

    text = tmp_path / "notes.npz"
    text.write_text("just some text\n")
    single = tmp_path / "array.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    for path, said in ((text, "is not a NumPy .npz archive"), (single, "single .npy array")):
        assert main(["run", "--npz", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert said in err and "pickled" not in err, err


def test_out_problems_are_found_before_any_data_is_loaded(tmp_path, monkeypatch, capsys):
    """Fault 5: --out at a file or a read-only folder exited 1 "internal error" after loading the data."""
    import cbd_core.pipeline as pipeline
    from cbd_core.cli import main

    monkeypatch.setattr(pipeline, "load_dataset", lambda *a, **k: pytest.fail("data was loaded"))
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for command in ("run", "submit"):
        assert main([command, "--out", str(a_file)]) == 2
        err = capsys.readouterr().err
        assert "is a file, not a folder" in err and len(err.strip().splitlines()) == 1, err
    assert main(["matrix", "--attacks", "badnets", "--defenses", "undefended", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err

    def read_only(*a, **k):  # as root a chmod cannot make a folder read-only, so the probe is refused
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(runs.tempfile, "mkstemp", read_only)
    assert main(["run", "--out", str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err
    assert "cannot write runs under" in err and "read-only file system" in err and len(err.strip().splitlines()) == 1


def _cli_run(root, epochs: int) -> subprocess.Popen:
    """`python -m cbd_core run` (undefended, one thread) training into `root`, in the background."""
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "cbd_core", "run", "--defense", "undefended", "--epochs",
                             str(epochs), "--device", "cpu", "--threads", "1", "--out", str(root)],
                            cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_real_cli_run_in_the_apps_root_survives_recovery_and_ends_clean(tmp_path):
    """Fault 2 end to end: `python -m cbd_core run` trains in the app's root while recovery runs (as the
    app does every 30 s); it is never marked failed, cannot be deleted meanwhile, and ends done with
    no error."""
    process = _cli_run(tmp_path, epochs=2)
    try:
        deadline = time.monotonic() + 120
        checked = 0
        while process.poll() is None and time.monotonic() < deadline:
            assert jobs.recover_orphans(tmp_path) == []
            found = list_runs(tmp_path)
            if found and found[0].status().get("state") == "running":
                owner = found[0].status()["owner"]
                assert owner["kind"] == "cli" and owner["pid"] == process.pid
                if not checked:
                    with pytest.raises(UserInputError, match="cancel it before deleting"):
                        found[0].delete()
                checked += 1
            time.sleep(0.2)
        assert process.wait(timeout=120) == 0, process.stderr.read()
    finally:
        process.kill()
    assert checked > 0
    [run] = list_runs(tmp_path)
    status = run.status()
    assert status["state"] == "done" and status.get("error") is None, status


def test_a_failure_the_full_disk_refused_to_record_is_recorded_once_it_can(tmp_path, patch_dataset, mapless_worker, monkeypatch):
    patch_dataset(300, 100)
    first = jobs.submit(_config(), tmp_path, start_worker=False)
    second = jobs.submit(_config(seed=1), tmp_path, start_worker=False)
    real = runs._atomic_write_bytes
    disk = {"full": False}

    def writer(path, data, make_parents=True):
        if f"{first.run_id}/models/" in str(path):
            disk["full"] = True  # from here the disk takes nothing for the first run...
        if second.run_id in str(path):
            disk["full"] = False  # ...until space is freed, while the worker trains the next run
        if disk["full"] and first.run_id in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, make_parents)

    monkeypatch.setattr(runs, "_atomic_write_bytes", writer)
    assert jobs.Worker(tmp_path, "cpu").serve(exit_when_idle=True) == 2
    assert second.status()["state"] == "done"
    status = first.status()
    assert status["state"] == "failed" and "no space left on device" in status["error"], status


def test_the_launcher_owns_the_workers_lifetime(tmp_path, monkeypatch):
    """The app no longer decides when to start workers: `keep_workers_running` checks at most once per
    interval per root, and a failure to start one is logged, never raised into a page."""
    import cbd_core.jobs.launcher as launcher

    calls = []

    def flaky(root, *a, **k):
        calls.append(root)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(launcher, "ensure_workers", flaky)
    monkeypatch.setattr(launcher, "_last_check", {})
    assert launcher.keep_workers_running(tmp_path, every=60) is True
    assert launcher.keep_workers_running(tmp_path, every=60) is False
    assert launcher.keep_workers_running(tmp_path / "other", every=60) is True
    assert calls == [str(tmp_path), str(tmp_path / "other")]


def test_a_reused_pid_does_not_keep_a_dead_owner_alive(tmp_path, live_process):
    """The owner's start time is recorded: a live process with the same pid that started later is
    another process, so the run's owner is gone."""
    if runs.process_start_time(live_process.pid) is None:
        pytest.skip("no /proc here")
    run = RunDir.create(tmp_path, _config().to_dict(), state="running")
    run.update_status(owner={**owner_record("cli"), "pid": live_process.pid, "started": "2001-01-01T00:00:00+00:00"})
    assert run.owner_alive() is False
    assert jobs.recover_orphans(tmp_path) == [run.run_id]
    current = RunDir.create(tmp_path, _config().to_dict(), state="running", owner=owner_record("cli"))
    assert current.owner_alive() is True and jobs.recover_orphans(tmp_path) == []


@pytest.mark.slow
def test_the_apps_cancel_stops_a_cli_run(tmp_path):
    """The Runs page offers Cancel on a CLI run in its root: the CLI honours the same cancel file."""
    process = _cli_run(tmp_path, epochs=100)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (list_runs(tmp_path) and list_runs(tmp_path)[0].metrics()):
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.2)
        [run] = list_runs(tmp_path)
        assert jobs.request_cancel(run) == "running"
        assert process.wait(timeout=120) == 130
    finally:
        process.kill()
    assert run.status()["state"] == "cancelled" and len(run.metrics()) < 100


def test_worker_files_are_never_written_through_a_link(tmp_path):
    outside, root = tmp_path / "outside", tmp_path / "root"
    outside.mkdir()
    root.mkdir()
    (root / jobs.WORKERS_DIR).symlink_to(outside, target_is_directory=True)
    jobs.ensure_workers(root, devices=["cpu"], per_device=1)  # never raises: the pages show why instead
    assert "symbolic link" in jobs.start_failures(root).get("cpu", "")
    assert jobs.workers(root) == []
    assert list(outside.iterdir()) == []


def test_a_damaged_worker_info_file_is_skipped(tmp_path):
    folder = tmp_path / jobs.WORKERS_DIR
    folder.mkdir()
    (folder / "cpu-0.json").write_text("null")
    (folder / "cpu-1.json").write_bytes(b"\xff")
    assert jobs.workers(tmp_path) == []


def test_a_claimed_run_is_recovered_by_its_claimers_pid(tmp_path, live_process):
    """A queued run claimed by a worker that died before writing its status is failed at once (its pid
    is in the claim file); one claimed by a live process is left, however old the claim."""
    config = _config().to_dict()
    dead = RunDir.create(tmp_path, config)
    (dead.path / jobs.CLAIM_FILE).write_text(str(2**22 + 11))
    alive = RunDir.create(tmp_path, config)
    (alive.path / jobs.CLAIM_FILE).write_text(str(live_process.pid))
    os.utime(alive.path / jobs.CLAIM_FILE, (0, 0))  # an old claim
    assert jobs.recover_orphans(tmp_path) == [dead.run_id]
    assert alive.status()["state"] == "queued"


@pytest.mark.slow
def test_a_real_worker_survives_write_errors_and_records_the_reason(tmp_path):
    """Fault 6 with a real worker process: its files may not grow past 200 kB (RLIMIT_FSIZE, as a full
    disk would refuse them), so every model file fails to write. Each run ends failed with that reason,
    none is left running, no 0-byte error.txt is left, and the worker takes the next run and exits
    normally."""
    import resource
    import signal
    from pathlib import Path

    runs_made = [jobs.submit(_config(seed=s), tmp_path, start_worker=False) for s in (0, 1)]

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    script = ("import sys; import cbd_core.analysis.embeddings as e; e.warm_up = lambda: None; "
              "from cbd_core.jobs import worker_main; sys.exit(worker_main(sys.argv[1], 'cpu', exit_when_idle=True))")
    project = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=project, env=env, timeout=300,
                          capture_output=True, text=True, preexec_fn=limit_file_size)
    assert done.returncode == 0, done.stdout + done.stderr
    for run in runs_made:
        status = run.status()
        assert status["state"] == "failed" and "file too large" in status["error"], status
        error_txt = run.path / "error.txt"
        assert not error_txt.exists() or error_txt.stat().st_size > 0
    assert jobs.recover_orphans(tmp_path) == []
