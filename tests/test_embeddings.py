"""UMAP maps of a finished run (cbd_core.analysis.embeddings): the file it writes, reproducibility,
tiny inputs, the exact neighbour search it relies on, and the numba cache setting.

The first UMAP call in a process compiles numba kernels (tens of seconds on 2 cores); the persistent
numba cache, configured before umap is imported, makes a second test session quicker.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbd_core.analysis.embeddings import (UMAP_FILE, compute_umap, configure_numba_cache, exact_neighbours, has_umap,
                                          numba_cache_dir, standardise, umap_2d)
from cbd_core.errors import UserInputError
from cbd_core.runs import RunDir

configure_numba_cache()  # before anything in this process imports umap


@pytest.fixture
def cbd_run(finished_runs, tmp_path) -> RunDir:
    """A private copy of the finished CBD run (the shared one must stay untouched)."""
    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    run = RunDir(tmp_path / ids["cbd"])
    (run.path / f"{UMAP_FILE}.npz").unlink(missing_ok=True)
    return run


def test_compute_umap_writes_one_finite_map_per_model(cbd_run):
    assert not has_umap(cbd_run)
    embeddings = cbd_run.arrays("embeddings")
    timings = compute_umap(cbd_run)

    assert has_umap(cbd_run)
    maps = cbd_run.arrays(UMAP_FILE)
    assert set(maps) == {"index", "umap_f_C", "umap_f_B"}
    np.testing.assert_array_equal(maps["index"], embeddings["index"])
    for name in ("f_C", "f_B"):
        xy = maps[f"umap_{name}"]
        assert xy.shape == (len(embeddings["index"]), 2) and xy.dtype == np.float32
        assert np.isfinite(xy).all()
        assert xy.std(axis=0).min() > 0  # a real spread, not a collapsed point
    assert timings["points"] == len(embeddings["index"])
    assert set(timings["seconds"]) == {"f_C", "f_B"} and timings["random_state"] == 0
    assert not list(cbd_run.path.glob(".*.tmp"))  # written through a temporary file and renamed


@pytest.mark.slow
def test_same_seed_same_map_and_the_seed_matters():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((120, 24)).astype(np.float32)
    first, second = umap_2d(features, random_state=7), umap_2d(features, random_state=7)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, umap_2d(features, random_state=8))


def test_separate_groups_stay_separate_on_the_map():
    """Two well separated clouds in 32-D (a small "poisoned" group and the rest) end up apart in 2-D:
    every point is nearer its own group's centre than the other's."""
    rng = np.random.default_rng(0)
    small = rng.standard_normal((30, 32)) + 8.0
    large = rng.standard_normal((170, 32))
    xy = umap_2d(np.vstack([small, large]).astype(np.float32), random_state=0)
    group = np.r_[np.ones(30, bool), np.zeros(170, bool)]
    centre_small, centre_large = xy[group].mean(0), xy[~group].mean(0)
    nearer_small = np.linalg.norm(xy - centre_small, axis=1) < np.linalg.norm(xy - centre_large, axis=1)
    np.testing.assert_array_equal(nearer_small, group)


@pytest.mark.parametrize("n", [0, 1, 3, 5, 10, 16])
def test_tiny_inputs_still_give_a_finite_map(n):
    features = np.random.default_rng(n).standard_normal((n, 8)).astype(np.float32)
    xy = umap_2d(features, random_state=0)
    assert xy.shape == (n, 2) and np.isfinite(xy).all()


def test_small_run_is_mapped(cbd_run):
    embeddings = cbd_run.arrays("embeddings")
    keep = slice(0, 10)
    cbd_run.save_arrays("embeddings", **{k: v[keep] for k, v in embeddings.items()})
    compute_umap(cbd_run)
    maps = cbd_run.arrays(UMAP_FILE)
    assert maps["umap_f_B"].shape == (10, 2) and np.isfinite(maps["umap_f_B"]).all()
    np.testing.assert_array_equal(maps["index"], embeddings["index"][keep])


def test_run_without_embeddings_is_a_clear_error(cbd_run):
    (cbd_run.path / "embeddings.npz").unlink()
    with pytest.raises(UserInputError, match="embeddings.npz"):
        compute_umap(cbd_run)
    assert not has_umap(cbd_run)


def test_exact_neighbours_match_brute_force():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    x[7] = x[3]  # a duplicate: each point must still come first in its own list
    indices, distances = exact_neighbours(x, 5)
    full = np.linalg.norm(x[:, None] - x[None], axis=-1)
    assert (indices[:, 0] == np.arange(50)).all() and np.allclose(distances[:, 0], 0, atol=1e-3)
    assert (np.diff(distances, axis=1) >= -1e-5).all()
    np.testing.assert_allclose(distances, np.take_along_axis(full, indices, axis=1), atol=1e-3)
    np.testing.assert_allclose(np.sort(full, axis=1)[:, :5], distances, atol=1e-3)


def test_standardise_handles_constant_and_non_finite_features():
    x = np.array([[1.0, 5.0, np.nan], [3.0, 5.0, 1.0], [5.0, 5.0, np.inf]])
    z = standardise(x)
    assert z.dtype == np.float32 and np.isfinite(z).all()
    np.testing.assert_allclose(z[:, 0], [-1.2247449, 0.0, 1.2247449], rtol=1e-5)
    assert (z[:, 1] == 0).all()


def test_numba_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKDOOR_LAB_CACHE", str(tmp_path / "cache"))
    assert numba_cache_dir() == tmp_path / "cache" / "numba"
    before = os.environ.get("NUMBA_CACHE_DIR")
    try:
        folder = configure_numba_cache()
        assert folder.is_dir() and os.environ["NUMBA_CACHE_DIR"] == str(folder)
        explicit = configure_numba_cache(tmp_path / "elsewhere")
        assert explicit.is_dir() and os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "elsewhere")
    finally:  # numba's config follows the variable: put both back for the rest of the session
        configure_numba_cache(before) if before else os.environ.pop("NUMBA_CACHE_DIR", None)
    monkeypatch.delenv("BACKDOOR_LAB_CACHE")
    assert numba_cache_dir() == Path.home() / ".cache" / "backdoor-lab" / "numba"
