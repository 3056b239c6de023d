"""MNIST, Fashion-MNIST, CIFAR-10 and GTSRB read through torchvision's own dataset classes.

The files stay in torchvision's on-disk layout under `data_root` (`MNIST/raw`, `FashionMNIST/raw`,
`cifar-10-batches-py`, `gtsrb`), so a folder torchvision filled for other work is used as is, and
torchvision keeps doing the downloads, mirrors and checksums. Each set comes back as uint8 (N, H, W, C) arrays.
Missing files and failed downloads are `UserInputError`s: they are fixed by the user, not by a bug fix.

    (x, y, names), test = load("cifar10", Path("~/.cache/backdoor-lab").expanduser(), download=True)
    x.shape  # (50000, 32, 32, 3)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserInputError

GTSRB_SIZE = (32, 32)  # GTSRB images range from 15x15 to 250x250 pixels; the models need one size


def _folder(name: str, data_root: Path) -> Path:
    """Where torchvision looks for (and downloads) the files of `name`."""
    return data_root / {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw",
                        "cifar10": "cifar-10-batches-py", "gtsrb": "gtsrb"}[name]


def _open(name: str, data_root: Path, train: bool, download: bool):
    """The torchvision dataset of one split; torchvision's own errors become one line for the user."""
    from torchvision import datasets  # imported here: loading torch is slow and only these sets need it

    try:
        if name == "gtsrb":
            return datasets.GTSRB(data_root, split="train" if train else "test", download=download)
        cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
        return cls(data_root, train=train, download=download)
    # torchvision says "Dataset not found" with a RuntimeError; a failed download is a RuntimeError
    # (MNIST's mirrors), a URLError or a timeout (both OSError), and a half-copied GTSRB a FileNotFoundError.
    except (RuntimeError, OSError) as err:
        folder = _folder(name, data_root)
        if download:
            reason = " ".join(str(err).split())  # torchvision's messages span several lines
            raise UserInputError(f"dataset: could not download {name} into {folder} ({reason}); check the "
                                 f"internet connection, or copy the files there by hand", "dataset") from None
        raise UserInputError(f"dataset: {name} files not found (or incomplete) in {folder}; pass --download "
                             f"(or tick the dashboard's download box) to fetch them when online", "dataset") from None


def _gtsrb_images(ds) -> tuple[np.ndarray, np.ndarray]:
    """GTSRB is a folder of .ppm files of many sizes: read each as RGB and resize it to 32x32."""
    paths, labels = zip(*ds._samples)  # (path, label) pairs; torchvision has no public accessor
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize(GTSRB_SIZE, Image.Resampling.BILINEAR))
                  for p in paths])
    if ds._split == "train":
        # torchvision numbers the training classes by their sorted folders, which shifts the labels when a
        # folder is missing; the folder's name (00000..00042) is the class itself.
        labels = [int(Path(p).parent.name) for p in paths]
    return x, np.asarray(labels, dtype=np.int64)


Split = tuple[np.ndarray, np.ndarray, list[str] | None]  # images, labels, class names (None: "0", "1", ...)


def _split(name: str, data_root: Path, train: bool, download: bool) -> Split:
    ds = _open(name, data_root, train, download)
    if name == "gtsrb":
        x, y = _gtsrb_images(ds)
        return x, y, None  # class names default to "0".."42"
    if name == "cifar10":
        x, names = ds.data, list(ds.classes)  # already (N, 32, 32, 3) uint8
    else:
        x = ds.data.numpy()[..., None]  # (N, 28, 28) uint8 tensor -> (N, 28, 28, 1)
        # MNIST's classes read "0 - zero"; the digit alone is the label's name
        names = [str(c) for c in range(10)] if name == "mnist" else list(ds.classes)
    return np.ascontiguousarray(x, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64), names


def load(name: str, data_root: Path, download: bool = False) -> tuple[Split, Split]:
    """Train and test arrays of torchvision dataset `name`, read from (or downloaded into) `data_root`;
    `data.load_dataset` makes them ImageSets (this module knows nothing of them, so data -> here is the
    only direction of import)."""
    if name not in ("mnist", "fashion-mnist", "cifar10", "gtsrb"):
        raise UserInputError(f"dataset: '{name}' is not a torchvision dataset", "dataset")
    data_root = Path(data_root)
    return _split(name, data_root, True, download), _split(name, data_root, False, download)
