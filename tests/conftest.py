"""Shared fixtures: the repository root on sys.path, few CPU threads, and cached mnist5k subsets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

# The tests train tiny models: two threads are plenty and keep the machine usable.
torch.set_num_threads(min(2, torch.get_num_threads()))

from cbd_core.data import ImageSet, load_mnist5k  # noqa: E402


def stratified_indices(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """`per_class` indices of every class (sorted), fixed by `seed`."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def small_subset(train: ImageSet, test: ImageSet, n_train: int, n_test: int, seed: int = 0
                 ) -> tuple[ImageSet, ImageSet]:
    """A stratified (n_train, n_test) subset of a train/test pair with 10 classes."""
    return (train.subset(stratified_indices(train.y, n_train // train.num_classes, seed)),
            test.subset(stratified_indices(test.y, n_test // test.num_classes, seed)))


@pytest.fixture(scope="session")
def mnist5k() -> tuple[ImageSet, ImageSet]:
    """The embedded 4,000 / 1,000 MNIST split, loaded once per session (treat it as read-only)."""
    return load_mnist5k()


@pytest.fixture(scope="session")
def tiny_sets(mnist5k) -> tuple[ImageSet, ImageSet]:
    """300 train / 100 test images of mnist5k, 30 / 10 per class."""
    return small_subset(*mnist5k, 300, 100)


@pytest.fixture
def patch_dataset(monkeypatch, mnist5k):
    """`patch_dataset(n_train, n_test)`: make `pipeline.load_dataset("mnist5k")` return a stratified
    subset of that size instead of all 5,000 images (the training runs stay small and fast)."""
    import cbd_core.pipeline

    def patch(n_train: int = 1500, n_test: int = 500) -> tuple[ImageSet, ImageSet]:
        train, test = small_subset(*mnist5k, n_train, n_test)

        def fake_load_dataset(name, data_root=None, download=False):
            assert name == "mnist5k", name
            return train.subset(np.arange(len(train))), test.subset(np.arange(len(test)))

        monkeypatch.setattr(cbd_core.pipeline, "load_dataset", fake_load_dataset)
        return train, test

    return patch


# -- finished runs for the dashboard's page tests ----------------------------------------------

# Short schedules: every defense writes a complete run folder in a few seconds on 600 images.
FINISHED_RUN_PARAMS = {
    "cbd": {"backdoor_steps": 40, "epochs": 3, "batch_size": 32},
    "undefended": {"epochs": 3, "batch_size": 32},
    "abl": {"isolation_epochs": 1, "epochs": 2, "unlearn_epochs": 1, "batch_size": 32},
    "nonlinearity": {"epochs": 3, "batch_size": 32},
}


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory, mnist5k):
    """A runs root holding one finished BadNets run per defense on 1,000 / 200 images of mnist5k.

    Returns (root, {defense: run_id}). Session-wide and shared: tests must not modify these runs
    (copy one with `shutil.copytree` first). Pages find the root through $BACKDOOR_LAB_RUNS."""
    from cbd_core.config import RunConfig

    root = tmp_path_factory.mktemp("finished_runs")
    configs = {defense: RunConfig(dataset="mnist5k", attack="badnets", poison_rate=0.1, defense=defense, seed=0,
                                  device="cpu", embedding_samples=300, defense_params=params)
               for defense, params in FINISHED_RUN_PARAMS.items()}
    return root, train_runs(root, configs, small_subset(*mnist5k, 1000, 200))


def train_runs(root: Path, configs: dict, data: tuple[ImageSet, ImageSet]) -> dict[str, str]:
    """Train each RunConfig of `configs` ({key: config}, dataset "mnist5k") on `data` (a train / test
    pair) into a run folder under `root`, in this process; returns {key: run id}."""
    import cbd_core.pipeline as pipeline

    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "load_dataset", lambda name, *a, **k: data)
        for key, config in configs.items():
            ids[key] = pipeline.train_run(config, root)[0].run_id
    return ids


def rewrite_status(run, **fields) -> None:
    """Set fields of a run's status.json as a hand edit would, past the run store's transition check:
    for fixtures that need a state a run's life does not reach that way (a finished run shown as
    running again, a done run as failed). Code never does this; `RunDir.set_state` refuses it."""
    import json

    status = {k: v for k, v in run.status().items() if k != "unreadable"}
    status.update(fields)
    (run.path / "status.json").write_text(json.dumps(status))


def fast_config(**overrides):
    """A one-epoch undefended BadNets run on mnist5k (use with `patch_dataset` to shrink the data):
    what the queue and run-folder tests train."""
    from cbd_core.config import RunConfig

    values = dict(dataset="mnist5k", attack="badnets", poison_rate=0.1, defense="undefended", seed=0,
                  device="cpu", embedding_samples=200, defense_params={"epochs": 1, "batch_size": 64})
    values.update(overrides)
    return RunConfig(**values)


def app_at_page(name: str, run: str | None = None, session_state: dict | None = None):
    """An AppTest of the whole app (app.py's navigation) switched to `pages/<name>.py`, not yet run.

    Going through app.py, as the browser does, makes page links and page switches resolve. Use it
    with the `no_worker` fixture (or your own patch) so no real worker process is started."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    if run is not None:
        at.query_params["run"] = run
    for key, value in (session_state or {}).items():
        at.session_state[key] = value
    at.switch_page(f"pages/{name}.py")
    return at


def open_page(name: str, run: str | None = None, session_state: dict | None = None):
    """`app_at_page(...)`, run once."""
    at = app_at_page(name, run, session_state)
    at.run()
    return at


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process of this machine that has exited (a worker or a Ray task killed half-way)."""
    import subprocess

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def mapped_by_ray_task(run) -> tuple[dict, str]:
    """Make `run` (a done run) a Ray-trained one whose task is computing its map now (a live process of this
    machine: the test's parent); returns the task's record and how the pages name it."""
    import socket

    from cbd_core.runs import owner_record

    task = {**owner_record("ray", node="abc"), "pid": os.getppid()}
    run.update_status(owner=task, analysis="computing", analysis_by=task)
    return task, f"The run's task on the Ray cluster (on {socket.gethostname()})"


@pytest.fixture
def no_worker(monkeypatch):
    """No background worker process: `ensure_workers` does nothing (tests run workers in-process)."""
    import cbd_core.jobs
    import cbd_core.jobs.launcher

    # The launcher is the one place that starts workers (submit and keep_workers_running call it).
    monkeypatch.setattr(cbd_core.jobs.launcher, "ensure_workers", lambda *a, **k: [])
    monkeypatch.setattr(cbd_core.jobs, "ensure_workers", lambda *a, **k: [])


# -- the fast tier ---------------------------------------------------------------------------------

# Tests that train runs or render pages take seconds each; `pytest -m "not slow"` leaves them out (under
# a minute), `make test` runs everything. A test is slow when it asks for a fixture that trains or
# starts the app (or a Ray cluster), or lives in a module that drives the app or a browser; others mark
# themselves (@pytest.mark.slow: each took over a second here, 2 cores).
SLOW_FIXTURES = {"finished_runs", "patch_dataset", "no_worker", "undefended_run", "cbd_pair", "ray_head"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or path.name.startswith("test_page_") \
                or "e2e" in path.parts:
            item.add_marker(pytest.mark.slow)
