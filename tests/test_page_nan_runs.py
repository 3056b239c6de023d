"""AppTest: a finished CBD run whose per-sample weights, suspicion, features and map coordinates are NaN
(a training that diverged, or a damaged file). Every page that plots them says so in a warning instead of
drawing empty charts, and Compare never calls a NaN-filled CBD record "no opinion"."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cbd_core.analysis.embeddings import UMAP_FILE, compute_umap
from cbd_core.errors import UserInputError
from cbd_core.runs import RunDir
from conftest import open_page

pytestmark = pytest.mark.usefixtures("no_worker")


@pytest.fixture
def nan_run(finished_runs, tmp_path, monkeypatch):
    source, ids = finished_runs
    run = RunDir(tmp_path / ids["cbd"])
    shutil.copytree(source / ids["cbd"], run.path)
    record = run.arrays("sample_weights")
    record["weights"] = np.full_like(record["weights"], np.nan)
    record["suspicion"] = np.full_like(record["suspicion"], np.nan)
    run.save_arrays("sample_weights", **record)
    embeddings = run.arrays("embeddings")
    features = {key: np.full_like(value, np.nan) for key, value in embeddings.items() if key.startswith("features_")}
    run.save_arrays("embeddings", **{**embeddings, **features})
    # The map a worker could have written before the file was damaged: every point NaN.
    run.save_arrays(UMAP_FILE, index=embeddings["index"],
                    **{f"umap_{key[len('features_'):]}": np.full((len(embeddings["index"]), 2), np.nan, np.float32)
                       for key in features})
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path))
    return run


def warnings_of(at) -> str:
    return " ".join(str(w.value) for w in at.warning)


@pytest.mark.parametrize("page", ["sample_weights", "embeddings", "compare"])
def test_nan_values_are_said_not_silently_dropped(nan_run, page):
    at = open_page(page, run=nan_run.run_id)
    assert not at.exception
    assert "are not numbers (NaN or infinite)" in warnings_of(at)
    said = " ".join(str(m.value) for m in [*at.info, *at.warning, *at.error])
    assert "no opinion" not in said


def test_nan_features_are_refused_with_a_reason_before_umap(nan_run):
    with pytest.raises(UserInputError, match="are not numbers"):
        compute_umap(nan_run)
