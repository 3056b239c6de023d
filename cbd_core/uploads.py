"""Files a user uploads through the dashboard: a trigger image for Blend, or a whole dataset `.npz`.

    path = save_upload(runs_root(), uploaded_bytes, "pattern")   # -> runs/uploads/3f2a...e1.png
    RunConfig(attack="blend", attack_params={"pattern_path": str(path)})

Everything is checked before anything is kept: the image must open with PIL, the dataset must pass
`data.load_npz`, and each kind has a size limit. A file that passes is stored under
`<runs root>/uploads/` with a name the code makes from its content (the first 16 hex digits of its
SHA-256), never the user's file name, so the same upload always lands on the same path and a run's
config can point at it for good. The name the user's file had is kept beside it (`<stored name>.name`,
the first one given to that content), so the pages call an uploaded dataset what its owner called it
(`data.upload_name`, read by `data.dataset_labels`). Writes go to a temporary name and are renamed, so a
crash never leaves half a file. A bad upload is one `UserInputError` naming the field it was meant for.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Literal

from .data import NAME_SUFFIX, readable_name
from .errors import UserInputError
from .runs import _atomic_write_bytes  # temp name + rename, as for every run file

UploadKind = Literal["pattern", "dataset"]

UPLOADS_FOLDER = "uploads"

# The field each kind of upload fills, named in every error message (as the CLI names it).
FIELDS: dict[str, str] = {"pattern": "blend.pattern_path", "dataset": "npz_path"}
SUFFIXES: dict[str, str] = {"pattern": ".png", "dataset": ".npz"}
MAX_BYTES: dict[str, int] = {"pattern": 10 * 2**20, "dataset": 200 * 2**20}

# The unpacked-size cap of a dataset is data.MAX_NPZ_UNPACKED_BYTES, shared with `run --npz`
# (data.check_npz_archive checks it before anything is decompressed).
# A trigger is resized to the image (28x28 or 32x32); nothing larger than this is useful, and PIL
# would otherwise decode an image of hundreds of megapixels from a few kilobytes.
MAX_PATTERN_PIXELS = 4096 * 4096


def uploads_dir(root: str | Path) -> Path:
    """Where uploads live under a runs root (not a run folder: `list_runs` skips it)."""
    return Path(root) / UPLOADS_FOLDER


def content_name(data: bytes, kind: UploadKind) -> str:
    """The stored file name: 16 hex digits of the content's SHA-256 and the kind's suffix."""
    return hashlib.sha256(data).hexdigest()[:16] + SUFFIXES[kind]


def save_upload(root: str | Path, data: bytes, kind: UploadKind, name: str | None = None) -> Path:
    """Validate an uploaded file and store it under `<root>/uploads/`; returns its path. `name`, the
    file name it was uploaded under, is kept beside it for the pages (`data.upload_name`).

    `kind` is "pattern" (an image PIL can open; stored re-encoded as RGB PNG) or "dataset" (an npz
    that `load_npz` accepts; stored as uploaded). Too large, empty, corrupt or wrong input raises
    `UserInputError` naming `blend.pattern_path` or `npz_path`, and leaves nothing behind."""
    if kind not in FIELDS:
        raise ValueError(f"unknown upload kind {kind!r} (expected one of {', '.join(FIELDS)})")
    field = FIELDS[kind]
    data = bytes(data)
    if not data:
        raise UserInputError(f"{field}: the uploaded file is empty", field)
    if len(data) > MAX_BYTES[kind]:
        raise UserInputError(f"{field}: the uploaded file is {len(data) / 2**20:.1f} MB, over the "
                             f"{MAX_BYTES[kind] // 2**20} MB limit", field)
    folder = uploads_dir(root)
    if folder.is_symlink():  # nothing is written outside the runs root
        raise UserInputError(f"{field}: {folder} is a symbolic link; uploads are only written inside the runs root",
                             field)
    target = folder / content_name(data, kind)
    if not target.is_file():  # else the same content was validated and stored before
        folder.mkdir(parents=True, exist_ok=True)
        if kind == "pattern":
            _atomic_write_bytes(target, _pattern_as_png(data, field))
        else:
            _store_dataset(target, data, field)
    _remember_name(target, name)
    return target


def _remember_name(target: Path, name: str | None) -> None:
    """Keep the upload's own file name beside it; the first name given to a content stays. Best effort:
    a full disk or a read-only folder costs the name, never the upload."""
    label = readable_name(name or "")
    sidecar = target.with_name(target.name + NAME_SUFFIX)
    if not label or sidecar.exists() or sidecar.is_symlink():
        return
    try:
        _atomic_write_bytes(sidecar, label.encode())
    except OSError:
        pass


def _pattern_as_png(data: bytes, field: str) -> bytes:
    """The image re-encoded as an RGB PNG (what Blend reads), after PIL has decoded all of it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > MAX_PATTERN_PIXELS:
                    raise UserInputError(f"{field}: the image is {width}x{height} pixels; at most "
                                         f"{MAX_PATTERN_PIXELS} pixels are accepted", field)
                rgb = img.convert("RGB")  # decodes every pixel: a truncated file fails here
    except UserInputError:
        raise
    except Exception as err:  # PIL's UnidentifiedImageError, truncated data, bombs, bad headers
        raise UserInputError(f"{field}: the uploaded file is not a readable image ({type(err).__name__})",
                             field) from None
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()


def _store_dataset(target: Path, data: bytes, field: str) -> None:
    """Write the npz to a temporary file beside `target`, check it with `load_npz`, then rename."""
    from .data import load_npz

    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=".npz.tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _check_unpacked_size(tmp, field)
        try:
            load_npz(tmp)
        except UserInputError as err:
            # load_npz names the key at fault ("npz: missing array 'y' ..."); say which upload it was.
            reason = str(err).removeprefix("npz: ").replace(f" {tmp.name}", " it")
            raise UserInputError(f"{field}: the uploaded dataset is not usable: {reason}", field) from None
        except Exception as err:
            # e.g. a zip whose x.npy is not NumPy data: np.load hands back raw bytes, and load_npz
            # trips over them. Whatever the cause, the upload is what is wrong.
            raise UserInputError(f"{field}: the uploaded file is not a usable NumPy .npz dataset "
                                 f"({type(err).__name__})", field) from None
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_unpacked_size(path: Path, field: str) -> None:
    from .data import check_npz_archive

    try:
        check_npz_archive(path, field)
    except UserInputError as err:  # say "the uploaded dataset", not the temporary file's name
        raise UserInputError(str(err).replace(f" {path.name}", " the uploaded dataset"), field) from None
