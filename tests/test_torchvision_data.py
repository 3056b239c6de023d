"""`load_dataset` on tiny fake copies of MNIST, Fashion-MNIST, CIFAR-10 and GTSRB in torchvision's own layout.

Nothing is downloaded: each test writes the files exactly where and how torchvision expects them under
`tmp_path`, so the real torchvision readers run and the conversion to uint8 (N, H, W, C) is checked.
"""

import hashlib
import pickle
import struct

import numpy as np
import pytest
import torchvision.datasets
from PIL import Image

from cbd_core.data import load_dataset
from cbd_core.errors import UserInputError


def _pattern(n, shape, offset):
    """Images whose every pixel is known: (index * 7 + position + offset) mod 256."""
    size = int(np.prod(shape))
    return ((np.arange(n)[:, None] * 7 + np.arange(size)[None, :] + offset) % 256).astype(np.uint8).reshape(n, *shape)


def _write_idx(path, array):
    """An uncompressed IDX file: magic 2051 (uint8, 3 dims) for images, 2049 (uint8, 1 dim) for labels."""
    magic = 0x0800 + array.ndim
    path.write_bytes(struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder,first_class", [("mnist", "MNIST", "0"),
                                                     ("fashion-mnist", "FashionMNIST", "T-shirt/top")])
def test_mnist_formats(tmp_path, name, folder, first_class):
    raw = tmp_path / folder / "raw"  # torchvision: root/<class name>/raw, files without .gz
    raw.mkdir(parents=True)
    splits = {"train": (_pattern(30, (28, 28), 0), np.arange(30) % 10),
              "t10k": (_pattern(10, (28, 28), 100), np.arange(10)[::-1])}
    for prefix, (x, y) in splits.items():
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)

    train, test = load_dataset(name, data_root=tmp_path)

    for got, (x, y) in zip((train, test), splits.values()):
        assert got.x.shape == (len(x), 28, 28, 1) and got.x.dtype == np.uint8
        np.testing.assert_array_equal(got.x[..., 0], x)
        np.testing.assert_array_equal(got.y, y)
        assert got.num_classes == 10 and got.class_names[0] == first_class
    assert train.x[3, 5, 6, 0] == (3 * 7 + 5 * 28 + 6) % 256  # row-major pixel order survives


def test_cifar10_format(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    # CIFAR stores each image as 3072 bytes: the red plane, then green, then blue (C, H, W).
    batches = {f"data_batch_{i}": _pattern(4, (3, 32, 32), i) for i in range(1, 6)}
    batches["test_batch"] = _pattern(5, (3, 32, 32), 50)
    for fname, x in batches.items():
        entry = {"data": x.reshape(len(x), -1), "labels": [(i + len(fname)) % 10 for i in range(len(x))]}
        (folder / fname).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))

    # torchvision verifies every file against the md5 of the real CIFAR-10 files (`_check_integrity`
    # and `_load_meta`). The fake files get their own checksums, so that check still runs on them;
    # monkeypatch keeps the change to this test.
    def md5(fname):
        return hashlib.md5((folder / fname).read_bytes()).hexdigest()

    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "train_list", [[f, md5(f)] for f in batches if f != "test_batch"])
    monkeypatch.setattr(cifar, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": md5("batches.meta")})

    train, test = load_dataset("cifar10", data_root=tmp_path)

    assert train.x.shape == (20, 32, 32, 3) and test.x.shape == (5, 32, 32, 3)
    assert train.x.dtype == np.uint8 and train.x.flags.c_contiguous
    np.testing.assert_array_equal(test.x, batches["test_batch"].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(train.x[4:8], batches["data_batch_2"].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(test.y, [(i + 10) % 10 for i in range(5)])
    assert train.y[0] == len("data_batch_1") % 10
    assert train.class_names == names and train.num_classes == 10


def test_gtsrb_format(tmp_path):
    base = tmp_path / "gtsrb"
    # Training: one folder per class, named by its 5-digit number, holding .ppm files (other files,
    # like the per-class GT csv of the real set, are ignored). Only some classes are present here.
    train_cases = {0: [(30, 31), (15, 15)], 2: [(64, 40)], 42: [(250, 200)]}
    for cls, sizes in train_cases.items():
        d = base / "GTSRB" / "Training" / f"{cls:05d}"
        d.mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.new("RGB", (w, h), (cls * 5, 100, 200)).save(d / f"00000_{i:05d}.ppm")
        (d / f"GT-{cls:05d}.csv").write_text("Filename;ClassId\n")
    # Test: images in Final_Test/Images, labels in gtsrb/GT-final_test.csv (';'-separated).
    images = base / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    test_cases = [(7, (40, 45), (255, 0, 0)), (13, (20, 20), (0, 255, 0))]
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, (cls, (w, h), color) in enumerate(test_cases):
        Image.new("RGB", (w, h), color).save(images / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;{w};{h};1;1;{w - 1};{h - 1};{cls}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")

    train, test = load_dataset("gtsrb", data_root=tmp_path)

    assert train.x.shape == (4, 32, 32, 3) and test.x.shape == (2, 32, 32, 3)
    assert train.x.dtype == np.uint8 and train.num_classes == 43 and len(train.class_names) == 43
    # labels are the folder numbers, not torchvision's ranks among the folders present (0, 1, 2)
    np.testing.assert_array_equal(train.y, [0, 0, 2, 42])
    assert (train.x[3] == (210, 100, 200)).all()  # a flat colour stays that colour after resizing
    np.testing.assert_array_equal(test.y, [7, 13])
    assert (test.x[0] == (255, 0, 0)).all() and (test.x[1] == (0, 255, 0)).all()


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"),
                                         ("cifar10", "cifar-10-batches-py"), ("gtsrb", "gtsrb")])
def test_missing_files_name_the_folder(tmp_path, name, folder):
    with pytest.raises(UserInputError) as info:
        load_dataset(name, data_root=tmp_path, download=False)
    message = str(info.value)
    assert info.value.field == "dataset" and "\n" not in message
    assert str(tmp_path / folder) in message and "--download" in message and name in message


def test_half_copied_gtsrb_is_a_user_error(tmp_path):
    # the test images are there, their labels (GT-final_test.csv) are not
    (tmp_path / "gtsrb" / "GTSRB" / "Training" / "00000").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(tmp_path / "gtsrb" / "GTSRB" / "Training" / "00000" / "a.ppm")
    (tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images").mkdir(parents=True)
    with pytest.raises(UserInputError, match="incomplete"):
        load_dataset("gtsrb", data_root=tmp_path)


def test_unknown_dataset(tmp_path):
    with pytest.raises(UserInputError) as info:
        load_dataset("imagenet", data_root=tmp_path)
    assert info.value.field == "dataset" and "imagenet" in str(info.value)


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    # CIFAR-10 and GTSRB let urllib's error through; MNIST catches it per mirror and raises a
    # several-line RuntimeError instead. Both must end up as one line naming the folder.
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    for name, folder in [("cifar10", "cifar-10-batches-py"), ("mnist", "MNIST/raw")]:
        with pytest.raises(UserInputError, match="could not download") as info:
            load_dataset(name, data_root=tmp_path, download=True)
        assert "\n" not in str(info.value) and str(tmp_path / folder) in str(info.value)
