"""The run directory: one folder per run under the runs root, plain documented files.

    runs/<run id>/
      config.json         the validated RunConfig: enough to rerun it (seed included)
      status.json         state (queued, running, done, failed, cancelled), timestamps, device,
                          the latest progress, and the error text when it failed
      metrics.jsonl       one JSON line per epoch and phase: CA, ASR, RA, train loss, ...
      summary.json        the final figures, the verdict and, if an undefended baseline was done by
                          then, the cost against it (see `pipeline` and `verdicts`)
      models/<name>.pt    state dicts (f_C and f_B for CBD, `model` otherwise); load with weights_only
      sample_weights.npz  per training sample: index, is_poisoned, label, original_label,
                          suspicion (higher = more suspected), and the defense's own arrays
                          (CBD: weights, shape (epochs + 1, N): row 0 before f_C trains)
      embeddings.npz      for a stratified subset of training samples: index, and for each model
                          features_<name> (n, d) and prediction_<name> (n,)
      images.npz          what the pages draw: train_x / train_index for the embedding subset,
                          test_x / test_y, a few clean test images (triggers are re-applied live)
      umap.npz            written by the background worker after the run: index, umap_<name> (n, 2)
      attribution_shares.json  also the worker's: {method: {model: mean share of attribution on the
                          trigger over 100 triggered test images}}
      error.txt           the traceback, when a run failed on a bug

Every file is written under a temporary name and renamed, so a crash never leaves half a file;
metrics.jsonl is appended a whole line at a time and readers skip a torn last line.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserInputError

FINISHED = ("done", "failed", "cancelled")


def runs_root(root: str | Path | None = None) -> Path:
    """The runs root: `root`, else $BACKDOOR_LAB_RUNS, else ./runs."""
    return Path(root or os.environ.get("BACKDOOR_LAB_RUNS") or "runs").expanduser().resolve()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite_or_none(value: Any) -> Any:
    """The same structure with NaN / infinity replaced by None: JSON has no NaN, and tools reject it."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    return json.dumps(finite_or_none(value), indent=indent, default=_json_default, allow_nan=False)


def write_json(path: Path, value: Any) -> None:
    _atomic_write_bytes(path, (to_json(value, indent=2) + "\n").encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    _atomic_write_bytes(path, buffer.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz, loaded eagerly, never unpickling objects."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def new_run_id(config: dict[str, Any]) -> str:
    """A sortable, readable id that the code makes (never a path the user typed)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]  # milliseconds: ids sort by creation
    return f"{stamp}-{config['dataset']}-{config['attack']}-{config['defense']}-{secrets.token_hex(2)}"


def valid_run_id(run_id: str) -> bool:
    return bool(run_id) and all(c.isalnum() or c in "-_." for c in run_id) and not run_id.startswith(".")


@dataclass
class RunDir:
    """A run's folder and typed access to its files."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, config: dict[str, Any], state: str = "queued") -> "RunDir":
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            path = root / new_run_id(config)
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise RuntimeError("could not find a free run id")
        run = cls(path)
        write_json(run.path / "config.json", config)
        write_json(run.path / "status.json", {"state": state, "created": now_iso()})
        return run

    @classmethod
    def open(cls, root: Path, run_id: str) -> "RunDir":
        if not valid_run_id(run_id):
            raise UserInputError(f"run: '{run_id}' is not a valid run id", "run")
        path = root / run_id
        if not (path / "config.json").is_file():
            raise UserInputError(f"run: no run '{run_id}' under {root}", "run")
        return cls(path)

    # -- reading -------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return read_json(self.path / "config.json")

    def status(self) -> dict[str, Any]:
        try:
            return read_json(self.path / "status.json")
        except (FileNotFoundError, json.JSONDecodeError):
            return {"state": "failed", "error": "status.json is missing or unreadable"}

    def summary(self) -> dict[str, Any] | None:
        try:
            return read_json(self.path / "summary.json")
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def metrics(self) -> list[dict[str, Any]]:
        """Every complete line of metrics.jsonl (a torn last line, from a crash, is skipped)."""
        lines = []
        try:
            text = (self.path / "metrics.jsonl").read_text()
        except FileNotFoundError:
            return lines
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return lines

    def arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """Arrays of `<name>.npz` (sample_weights, embeddings, images), or None when absent."""
        path = self.path / f"{name}.npz"
        return read_npz(path) if path.is_file() else None

    def model_state(self, name: str) -> dict[str, Any]:
        import torch

        return torch.load(self.path / "models" / f"{name}.pt", map_location="cpu", weights_only=True)

    def model_names(self) -> list[str]:
        folder = self.path / "models"
        return sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []

    # -- writing (the worker or CLI that runs it, never a page) --------------------------------
    def update_status(self, **fields: Any) -> dict[str, Any]:
        status = self.status()
        status.update(fields)
        write_json(self.path / "status.json", status)
        return status

    def append_metrics(self, line: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(to_json(line) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / "summary.json", summary)

    def save_model(self, name: str, state_dict: dict[str, Any]) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
        _atomic_write_bytes(self.path / "models" / f"{name}.pt", buffer.getvalue())

    def save_arrays(self, name: str, **arrays: np.ndarray) -> None:
        write_npz(self.path / f"{name}.npz", **arrays)

    def delete(self) -> None:
        shutil.rmtree(self.path)

    def zip_bytes(self) -> bytes:
        """The whole run folder as a zip (paths start with the run id), for downloading; the
        worker's bookkeeping files (claim, cancel) and temporary files are left out."""
        import zipfile

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(self.path.rglob("*")):
                if path.is_file() and not path.name.startswith(".") and path.name not in ("claim", "cancel"):
                    archive.write(path, f"{self.run_id}/{path.relative_to(self.path)}")
        return buffer.getvalue()


def list_runs(root: str | Path | None = None) -> list[RunDir]:
    """Every run under the root, newest first."""
    folder = runs_root(root)
    if not folder.is_dir():
        return []
    runs = [RunDir(p) for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file()]

    def created(run: RunDir) -> tuple[int, str]:
        try:  # config.json is written once, when the run is created
            return (run.path / "config.json").stat().st_mtime_ns, run.run_id
        except FileNotFoundError:  # deleted meanwhile
            return 0, run.run_id

    return sorted(runs, key=created, reverse=True)


def wait_for(run: RunDir, timeout: float = 600.0, poll: float = 0.5) -> dict[str, Any]:
    """Block until the run has finished (for scripts and tests); returns its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run.status()
        if status.get("state") in FINISHED:
            return status
        time.sleep(poll)
    raise TimeoutError(f"run {run.run_id} did not finish in {timeout} s")
