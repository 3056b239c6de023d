"""Uploads: validated first, stored under uploads/ by content hash, nothing left behind on failure."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from cbd_core import data as data_module, uploads
from cbd_core.attacks import get_attack
from cbd_core.data import ImageSet, load_npz
from cbd_core.errors import UserInputError
from cbd_core.uploads import save_upload


def png_bytes(size=(16, 12), seed=0, fmt="PNG", mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(pixels if channels == 3 else pixels[..., 0], mode)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def npz_bytes(**arrays) -> bytes:
    out = io.BytesIO()
    np.savez_compressed(out, **arrays)
    return out.getvalue()


def good_dataset(n=60, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.integers(0, 256, size=(n, 12, 12), dtype=np.uint8), "y": np.arange(n) % 3}


def stored_files(root) -> list[str]:
    folder = root / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_pattern_is_stored_by_content_hash_as_a_png(tmp_path):
    data = png_bytes()
    path = save_upload(tmp_path, data, "pattern")
    assert path.parent == tmp_path / "uploads"
    assert path.name == hashlib.sha256(data).hexdigest()[:16] + ".png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (16, 12)
    assert save_upload(tmp_path, data, "pattern") == path  # same content, same path
    other = save_upload(tmp_path, png_bytes(seed=1), "pattern")
    assert other != path
    assert stored_files(tmp_path) == sorted([path.name, other.name])  # no temporary files left


def test_pattern_in_another_format_becomes_a_png_blend_can_use(tmp_path, tiny_sets):
    path = save_upload(tmp_path, png_bytes(fmt="BMP", mode="L"), "pattern")
    assert path.suffix == ".png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
    train, test = tiny_sets
    data = get_attack("blend").poison(train, test, 0.1, 0, seed=0, params={"pattern_path": str(path)})
    assert data.n_poisoned == 30 and data.params["pattern_path"] == str(path)


def test_dataset_is_stored_unchanged_and_loads(tmp_path):
    data = npz_bytes(**good_dataset())
    path = save_upload(tmp_path, data, "dataset")
    assert path.name == hashlib.sha256(data).hexdigest()[:16] + ".npz"
    assert path.read_bytes() == data
    train, test, mask = load_npz(path)
    assert isinstance(train, ImageSet) and len(train) + len(test) == 60 and mask is None
    assert save_upload(tmp_path, data, "dataset") == path
    assert stored_files(tmp_path) == [path.name]


@pytest.mark.parametrize("kind, field, data", [
    ("pattern", "blend.pattern_path", b"definitely not an image"),
    ("pattern", "blend.pattern_path", png_bytes()[:60]),  # truncated: header fine, pixels missing
    ("pattern", "blend.pattern_path", b""),
    ("dataset", "npz_path", b"PK\x03\x04 not really a zip"),
    ("dataset", "npz_path", npz_bytes(x=np.zeros((30, 12, 12), np.uint8))),  # no labels
    ("dataset", "npz_path", npz_bytes(x=np.zeros((30, 12, 12), np.float32), y=np.arange(30) % 2)),
    ("dataset", "npz_path", npz_bytes(x=np.array([object()] * 3, dtype=object), y=np.arange(3))),
])
def test_bad_upload_names_the_field_and_leaves_nothing(tmp_path, kind, field, data):
    with pytest.raises(UserInputError) as caught:
        save_upload(tmp_path, data, kind)
    assert caught.value.field == field
    message = str(caught.value)
    assert message.startswith(f"{field}: ") and "\n" not in message
    assert ".tmp" not in message  # the temporary name is ours, not the user's business
    assert stored_files(tmp_path) == []


def test_wrong_npz_says_which_key_is_at_fault(tmp_path):
    bad = good_dataset()
    bad["y"] = bad["y"][:10]
    with pytest.raises(UserInputError, match=r"^npz_path: .*'y' must be a vector of 60 labels"):
        save_upload(tmp_path, npz_bytes(**bad), "dataset")


@pytest.mark.parametrize("kind, field", [("pattern", "blend.pattern_path"), ("dataset", "npz_path")])
def test_oversize_upload_is_refused_before_anything_is_written(tmp_path, monkeypatch, kind, field):
    data = png_bytes() if kind == "pattern" else npz_bytes(**good_dataset())
    monkeypatch.setitem(uploads.MAX_BYTES, kind, len(data) - 1)
    with pytest.raises(UserInputError, match=rf"^{field}: .*over the .* limit"):
        save_upload(tmp_path, data, kind)
    assert not (tmp_path / "uploads").exists()


def test_real_limits_are_200_mb_and_10_mb(tmp_path):
    assert uploads.MAX_BYTES == {"pattern": 10 * 2**20, "dataset": 200 * 2**20}
    with pytest.raises(UserInputError, match="blend.pattern_path: .*10.0 MB"):
        save_upload(tmp_path, b"\0" * (10 * 2**20 + 1), "pattern")


def test_zip_bomb_npz_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "MAX_NPZ_UNPACKED_BYTES", 1000)
    data = npz_bytes(**good_dataset())  # 60 * 144 bytes of images: more than 1000 unpacked
    with pytest.raises(UserInputError, match="npz_path: .*unpacks to"):
        save_upload(tmp_path, data, "dataset")
    assert stored_files(tmp_path) == []


def test_huge_image_dimensions_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_PATTERN_PIXELS", 100)
    with pytest.raises(UserInputError, match=r"blend.pattern_path: the image is 16x12 pixels"):
        save_upload(tmp_path, png_bytes(), "pattern")
    assert stored_files(tmp_path) == []


def test_unknown_kind_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        save_upload(tmp_path, b"x", "weights")  # type: ignore[arg-type]


def test_npz_with_a_non_array_member_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", b"not numpy at all")
        archive.writestr("y.npy", b"nor this")
    with pytest.raises(UserInputError, match="^npz_path: "):
        save_upload(tmp_path, buffer.getvalue(), "dataset")
    assert stored_files(tmp_path) == []
