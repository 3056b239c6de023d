"""UMAP maps of a finished run's features: where each model places the training images in 2-D.

The background worker (`cbd_core/jobs/worker.py`) calls `compute_umap(run)` once a run is done; the
Embeddings page only reads the `umap.npz` it writes:

    umap.npz    index        (n,) the training-set indices, as in embeddings.npz
                umap_<name>  (n, 2) float32, one map per model (CBD: f_C and f_B; others: model)

and, for runs that recorded their models while training (epoch_features.npz), `compute_epoch_umap(run)`
writes umap_epochs.npz: a map per recorded epoch, coords (F, n, 2), each model's maps laid out in
order, each starting from the one before (`umap_sequence`), so the page can animate them.

How it is made fast. umap-learn compiles numba kernels the first time a process uses them, and
most of them (pynndescent's neighbour search, umap's graph and layout code) are not cached on disk,
so out of the box every fresh process pays ~45-60 s before its first 5,000-point map. Here:
- neighbours are found exactly with matrix products (`exact_neighbours`, < 1 s for 5,000 points)
  and handed to umap, so pynndescent's search is never compiled;
- umap's own kernels are set to cache to disk (`_import_umap`), in the persistent folder that
  `configure_numba_cache()` sets;
- `warm_up()` loads them once in a long-lived process (the worker).

Measured on the 2-core CPU, 5,000 x 128 random float32 features, one process each
(`rm -rf /tmp/nb; BACKDOOR_LAB_CACHE=/tmp/nb python bench/umap_cache.py [--warm-up]`):

    numba cache   import umap   first map   second map
    empty         24.3 s        12.9 s      6.3 s
    warm           2.9 s         6.3 s      6.1 s     (warm_up() itself: 0.3 s)

umap-learn as it comes (its own neighbour search, same cache folder, warm): import 4.8 s, first
map 48 s, second 6 s. A map is ~6 s of layout optimisation (500 epochs, umap's default below
10,000 points); with random_state umap runs it on one thread, and letting it use both cores
(random_state=None) was no faster here (6.3-7.3 s), so maps are seeded and reproducible.

`configure_numba_cache()` must run before anything imports numba, umap or pynndescent: numba reads
NUMBA_CACHE_DIR when it is imported, and each cached function picks its cache folder when it is
defined, i.e. when umap is imported. This module imports umap only inside its functions for that
reason.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError
from ..runs import RunDir

log = logging.getLogger(__name__)

UMAP_FILE = "umap"  # the run's umap.npz, written by compute_umap
EPOCH_UMAP_FILE = "umap_epochs"  # the run's umap_epochs.npz, written by compute_epoch_umap
# Layout epochs of each map after an epoch's first: it starts from the previous map, so far fewer than
# a fresh map's 500 are needed (measured: 100 keeps 14 maps of 1,500 points near 4 s of CPU on 2 cores).
LATER_FRAME_EPOCHS = 100
N_NEIGHBORS = 15  # umap-learn's default: local structure without shattering the digits into islands
MIN_DIST = 0.1  # umap-learn's default: tight enough to show a cluster of poisoned images as one blob
# Below this many points a neighbourhood graph says little and UMAP's spectral start can fail:
# a map of the first two principal components is drawn instead.
MIN_UMAP_POINTS = 5


def numba_cache_dir() -> Path:
    """The persistent folder for numba's compiled kernels: $BACKDOOR_LAB_CACHE/numba, else
    ~/.cache/backdoor-lab/numba."""
    base = os.environ.get("BACKDOOR_LAB_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "backdoor-lab") / "numba"


def configure_numba_cache(folder: str | Path | None = None) -> Path:
    """Point numba's on-disk cache (NUMBA_CACHE_DIR) at `folder`, default `numba_cache_dir()`,
    creating it; returns the folder.

    Call it before anything imports umap (or numba or pynndescent): kernels defined earlier keep the
    cache folder they were defined with. When numba is already imported but umap is not, numba's
    configuration is reloaded so the new folder still counts; when umap is already imported a warning
    is logged and only kernels compiled from then on in other processes benefit."""
    path = Path(folder).expanduser() if folder is not None else numba_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    if "numba" in sys.modules:
        from numba.core import config as numba_config

        numba_config.reload_config()
    if "umap" in sys.modules or "pynndescent" in sys.modules:
        log.warning("configure_numba_cache() called after umap was imported: pynndescent's kernels keep "
                    "their old cache folder in this process")
    return path


def _import_umap() -> Any:
    """umap, with its numba kernels set to cache their compiled code on disk.

    umap-learn marks few of its kernels `cache=True` (not the graph and layout ones every map uses,
    ~7 s to compile on first use here), so a fresh process would compile them every time.
    Turning caching on for each of umap's numba dispatchers, before it first compiles, is what the
    decorator's `cache=True` does; numba keys the cache on the source file, so an upgraded umap simply
    compiles again. Where numba's internals differ, maps are only slower to start."""
    global _kernel_cache_enabled
    import umap

    if not _kernel_cache_enabled:
        _kernel_cache_enabled = True
        try:
            from numba.core.caching import NullCache
            from numba.core.dispatcher import Dispatcher

            for name, module in list(sys.modules.items()):
                if name == "umap" or name.startswith("umap."):
                    for value in list(vars(module).values()):
                        if isinstance(value, Dispatcher) and isinstance(getattr(value, "_cache", None), NullCache):
                            value.enable_caching()
        except Exception as err:  # pragma: no cover - numba changed its internals
            log.info("could not turn on numba caching for umap's kernels: %s", err)
    return umap


_kernel_cache_enabled = False


def _umap_model(n_points: int, random_state: int | None, knn: tuple[np.ndarray, np.ndarray]) -> Any:
    """The one UMAP configuration used everywhere (warm_up compiles the same kernels compute uses)."""
    umap = _import_umap()

    return umap.UMAP(n_components=2, n_neighbors=knn[0].shape[1], min_dist=MIN_DIST, random_state=random_state,
                     init="spectral" if n_points > N_NEIGHBORS else "random",
                     n_jobs=1 if random_state is not None else -1, precomputed_knn=(knn[0], knn[1], None))


def exact_neighbours(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every row of `x` by Euclidean distance, each point itself first (as
    umap expects): (indices (n, k) int64, distances (n, k) float32).

    Exact and done with matrix products, in row blocks that keep memory near 200 MB: for the run's
    few thousand points this takes well under a second, and it spares umap's approximate search
    (pynndescent), whose numba kernels take most of a fresh process's first map to compile."""
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    squared = np.einsum("ij,ij->i", x, x)
    block = max(1, 16_000_000 // max(n, 1))
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        d2 = squared[rows, None] + squared[None, :] - 2.0 * (x[rows] @ x.T)
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(len(rows)), rows] = -1.0  # the point itself comes first, even among duplicates
        nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d2, nearest, axis=1), axis=1, kind="stable")
        nearest = np.take_along_axis(nearest, order, axis=1)
        indices[rows] = nearest
        distances[rows] = np.sqrt(np.maximum(np.take_along_axis(d2, nearest, axis=1), 0.0))
    return indices, distances


def standardise(features: np.ndarray) -> np.ndarray:
    """Each feature to zero mean and unit variance (constant features stay 0), float32, finite."""
    x = np.nan_to_num(np.asarray(features, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if not len(x):
        return x.astype(np.float32)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return x.astype(np.float32)


def _principal_components(x: np.ndarray) -> np.ndarray:
    """(n, 2) coordinates on the first two principal components (zeros where there are fewer)."""
    out = np.zeros((len(x), 2), dtype=np.float32)
    if len(x) > 1:
        _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
        k = min(2, vt.shape[0])
        out[:, :k] = (x - x.mean(axis=0)) @ vt[:k].T
    return out


def umap_2d(features: np.ndarray, random_state: int | None = 0) -> np.ndarray:
    """A 2-D UMAP map (n, 2) float32 of standardised `features` (n, d).

    n_neighbors 15 (n - 1 for fewer than 16 points, then with a random start), min_dist 0.1. With a
    `random_state` the map is reproducible and umap runs single-threaded; None lets it use every
    core. Fewer than MIN_UMAP_POINTS points get their first two principal components instead."""
    if np.ndim(features) != 2:
        raise ValueError(f"features must be (n, d), got shape {np.shape(features)}")
    x = standardise(features)
    if len(x) < MIN_UMAP_POINTS:
        return _principal_components(x)
    import warnings

    knn = exact_neighbours(x, min(N_NEIGHBORS, len(x) - 1))
    with warnings.catch_warnings():
        # "n_jobs overridden by random_state" (intended), "no search index: no transform" (not needed),
        # small-n and disconnected-graph notices: the map is still drawn
        warnings.simplefilter("ignore")
        coords = _umap_model(len(x), random_state, knn).fit_transform(x)
    return np.asarray(coords, dtype=np.float32)


def umap_sequence(frames: list[np.ndarray], random_state: int | None = 0,
                  later_epochs: int = LATER_FRAME_EPOCHS) -> np.ndarray:
    """2-D maps (F, n, 2) float32 of one model's features at successive epochs (each (n, d), the same
    n points in the same order), laid out so the points move smoothly from map to map.

    The first map is an ordinary `umap_2d` layout; every later one starts from the map before it and
    runs `later_epochs` epochs of UMAP's layout: a point only moves where its neighbourhood changed.
    umap-learn's AlignedUMAP does the same job with a penalty tying each point to its place in the
    neighbouring maps, but measured on this 2-core machine it took 10-20 times longer (docs/benchmarks.md,
    "Dashboard speed"), most of it in a layout kernel that numba compiles anew on every call."""
    if not frames:
        return np.zeros((0, 0, 2), dtype=np.float32)
    first = umap_2d(frames[0], random_state)
    maps = [first]
    for features in frames[1:]:
        x = standardise(features)
        if len(x) < MIN_UMAP_POINTS:
            maps.append(_principal_components(x))
            continue
        import warnings

        knn = exact_neighbours(x, min(N_NEIGHBORS, len(x) - 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as in umap_2d
            model = _umap_model(len(x), random_state, knn)
            model.set_params(init=maps[-1].astype(np.float64), n_epochs=later_epochs)
            maps.append(aligned_to(maps[-1], np.asarray(model.fit_transform(x), dtype=np.float32)))
    return np.stack(maps)


def aligned_to(reference: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`points` (n, 2) moved, turned and scaled as a whole to lie as close as possible to `reference`
    (least squares; no mirroring). umap rescales a starting map into a 10 x 10 box before it lays it
    out, so without this every map would jump as a whole and hide how single points moved."""
    ref_mean, pts_mean = reference.mean(axis=0), points.mean(axis=0)
    ref, pts = reference - ref_mean, points - pts_mean
    u, singular, vt = np.linalg.svd(pts.T @ ref)
    flip = np.sign(np.linalg.det(u @ vt)) or 1.0  # a rotation, never a reflection
    u[:, -1] *= flip
    singular[-1] *= flip
    rotation = u @ vt
    norm = float((pts ** 2).sum())
    scale = float(singular.sum()) / norm if norm > 0 else 1.0
    return (scale * pts @ rotation + ref_mean).astype(np.float32)


def warm_up(random_state: int | None = 0) -> float:
    """Compile (or load from numba's cache) umap's kernels with a tiny map; returns the seconds it took.

    Use the random_state kind that compute_umap will use (an int, or None): umap compiles a
    single-threaded and a parallel layout optimiser separately."""
    started = time.perf_counter()
    umap_2d(np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32), random_state)
    return time.perf_counter() - started


def run_random_state(run: RunDir) -> int:
    """The map's random_state, derived from the run's seed so a rerun draws the same map."""
    try:
        seed = int(run.config().get("seed", 0))
    except (UserInputError, ValueError, TypeError):
        seed = 0
    return seed % (2**32 - 1)


def has_umap(run: RunDir) -> bool:
    """Whether the run holds its umap.npz."""
    return run.has_arrays(UMAP_FILE)


def model_names_in(embeddings: dict[str, np.ndarray], defense: str | None = None) -> list[str]:
    """The models an embeddings.npz holds features of, in the order of the run's `defense`
    (`defenses.model_order`)."""
    from ..defenses import model_order

    return model_order(defense, [key[len("features_"):] for key in embeddings if key.startswith("features_")])


def compute_umap(run: RunDir, random_state: int | None = None) -> dict[str, Any]:
    """Fit a 2-D UMAP map of each model's features in the run's embeddings.npz and write umap.npz
    (`index`, `umap_<name>` (n, 2) float32) into the run, atomically. Returns the timings:
    {"points", "models", "seconds": {name: s}, "total_seconds", "random_state"}.

    `random_state` defaults to the run's seed, so the same run gives the same map (umap then lays
    it out on one thread, which costs nothing measurable at 5,000 points: see the module docstring).
    About 6 s a model for 5,000 points once the kernels are compiled. Raises UserInputError when
    the run has no embeddings.npz (a run that failed before the end)."""
    embeddings = run.arrays("embeddings")
    if embeddings is None:
        raise UserInputError(f"run {run.run_id} has no embeddings.npz to map", "run")
    if random_state is None:
        random_state = run_random_state(run)
    index = np.asarray(embeddings["index"])
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for name in model_names_in(embeddings, (run.summary() or {}).get("defense")):
        features = embeddings[f"features_{name}"]
        bad = int((~np.isfinite(features)).sum())
        if bad:  # umap would fail deep inside with "Input contains NaN"; say which model and why
            raise UserInputError(f"run {run.run_id}: {bad:,} of the {features.size:,} features of {name} are not numbers "
                                 "(NaN or infinite; the training diverged or the file is damaged), so they cannot "
                                 "be mapped", "run")
        if len(features) != len(index):
            raise UserInputError(f"run {run.run_id}: features_{name} has {len(features)} rows, index {len(index)}",
                                 "run")
        t0 = time.perf_counter()
        maps[f"umap_{name}"] = umap_2d(features.reshape(len(features), -1), random_state)
        seconds[name] = round(time.perf_counter() - t0, 3)
    run.save_arrays(UMAP_FILE, index=index, **maps)
    return {"points": int(len(index)), "models": list(seconds), "seconds": seconds,
            "total_seconds": round(time.perf_counter() - started, 3), "random_state": random_state}


def has_epoch_umap(run: RunDir) -> bool:
    """Whether the run holds its umap_epochs.npz."""
    return run.has_arrays(EPOCH_UMAP_FILE)


def compute_epoch_umap(run: RunDir, random_state: int | None = None) -> dict[str, Any] | None:
    """Lay out the run's epoch_features.npz, one `umap_sequence` per model, and write umap_epochs.npz
    (index, epoch, phase, phase_epoch, model, coords (F, n, 2)) atomically. Returns the timings
    {"points", "frames", "seconds": {model: s}, "total_seconds"}, or None for a run without
    epoch_features.npz (made before it existed, or with embedding_samples = 0)."""
    record = run.epoch_features()
    if record is None:
        return None
    if random_state is None:
        random_state = run_random_state(run)
    models, features = record["model"].astype(str), record["features"]
    coords = np.zeros(features.shape[:2] + (2,), dtype=np.float32)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for name in dict.fromkeys(models.tolist()):  # in order of first appearance
        frames = np.flatnonzero(models == name)
        frames = frames[np.argsort(record["epoch"][frames], kind="stable")]
        t0 = time.perf_counter()
        coords[frames] = umap_sequence([features[f].astype(np.float32) for f in frames], random_state)
        seconds[name] = round(time.perf_counter() - t0, 3)
    run.save_arrays(EPOCH_UMAP_FILE, **{k: record[k] for k in ("index", "epoch", "phase", "phase_epoch", "model")},
                    coords=coords)
    return {"points": int(features.shape[1]), "frames": int(features.shape[0]), "seconds": seconds,
            "total_seconds": round(time.perf_counter() - started, 3)}
