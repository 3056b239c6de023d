"""The run directory: one folder per run under the runs root, plain documented files.

    runs/<run id>/
      config.json         the validated RunConfig: enough to rerun it (seed included)
      status.json         state (queued, running, done, failed, cancelled), timestamps, device,
                          the latest progress, and the error text when it failed
      metrics.jsonl       one JSON line per epoch and phase: CA, ASR, RA, train loss, ...
      summary.json        the final figures (the verdict is judged when the run is read, against the
                          baseline that exists then: `verdicts`)
      models/<name>.pt    state dicts (f_C and f_B for CBD, `model` otherwise); load with weights_only
      sample_weights.npz  per training sample: index, is_poisoned, label, original_label,
                          suspicion (higher = more suspected), and the defense's own arrays
                          (CBD: weights, shape (epochs + 1, N): row 0 before f_C trains)
      embeddings.npz      for a stratified subset of training samples: index, and for each model
                          features_<name> (n, d) and prediction_<name> (n,)
      images.npz          what the pages draw: train_x / train_index for the embedding subset,
                          test_x / test_y, a few clean test images (triggers are re-applied live)
      epoch_features.npz  the same models while they trained, for a subset of embeddings.npz's samples
                          (every poisoned one up to 750, clean ones to 1,500 in all; see
                          `cbd_core/epoch_features.py`), one frame per recorded epoch:
                            index (n,) training indices; epoch (F,) the run's epoch number, i.e. the
                            frame's line position in metrics.jsonl counted from 1 (the Train page's
                            numbering: CBD's f_B stages, then f_C's epochs); phase (F,) and
                            phase_epoch (F,) that line's phase and epoch; model (F,) the model recorded
                            (f_B, f_C or model); features (F, n, d) float16; prediction (F, n) int16
      umap.npz            written by the background worker after the run: index, umap_<name> (n, 2)
      umap_epochs.npz     also the worker's, from epoch_features.npz: index, epoch, phase, phase_epoch,
                          model (F,) as there, coords (F, n, 2) float32; each model's frames are laid
                          out in order, each starting from the one before, so points move smoothly
      attribution_shares.json  also the worker's: {method: {model: mean share of attribution on the
                          trigger over 100 triggered test images}}
      attribution_views.npz  also the worker's (`analysis.attributions.compute_attribution_views`):
                          each model's probabilities and maps for every kept test image, clean and
                          triggered, the Attributions page's `example`, and for the Lesson's poisoned
                          training image (`train_example`, mode "train")
      error.txt           the traceback, when a run failed on a bug
      claim, cancel       a queued run was taken (by a worker, or a cancel), cancel asked: written by
                          `RunDir.claim` / `request_cancel` alone

status.json also holds `schema_version` (SCHEMA_VERSION) and, from the moment a run trains, `owner`:
{kind: worker | cli | matrix | ray, pid, host, started} (a worker's also device and slot, a Ray task's its
node). Once a done run is analysed it also holds `analysis` and `epoch_analysis` (computing, done or
failed) and, beside each, `analysis_by` / `epoch_analysis_by`: a record of the same shape naming the
process that computes (or computed) that map, so a "computing" whose process is gone can be told
(`jobs.run_analysis.map_progress`).

Every file is written under a temporary name and renamed, so a crash never leaves half a file;
metrics.jsonl is appended a whole line at a time and readers skip a torn last line.

A run's life has one owner too: its state is a `RunState` that moves only as TRANSITIONS allows
(queued -> running -> done / failed / cancelled; queued -> cancelled / failed), checked on every write
(IllegalTransition); `RunDir.start` records the owner, `finish` the end, `claim` and `request_cancel` the
queue's files. The worker, the launcher's recovery, the pipeline and the Ray task all call these.

This module is the one owner of that format: everything else (the pipeline, the worker, `matrix`,
`verdicts`, every page) reads and writes a run through `RunDir`. Reads are typed and tolerant: a file
that is not UTF-8, not JSON, or JSON of the wrong shape (`null`, `[]`, a state nobody knows) never
raises out of a listing; `RunDir.problem()` names it ("unreadable: status.json is not UTF-8 text")
and the run shows as failed with that reason, while every other run goes on working. status.json
carries `schema_version` and, once a run trains, its `owner` (pid, host, start time, kind: worker,
cli or matrix), which is what recovery trusts before it marks a run failed.

Writes never leave the run folder: they never create it again once it is gone (`RunGone`), never
follow a symlink, and a run that cannot be created whole leaves no folder behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import stat
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserInputError

class RunState(StrEnum):
    """A run's state in status.json. A StrEnum, so `RunState.DONE == "done"` and the file holds plain text."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The allowed moves (writing the state a run is already in is no move, and always allowed). A finished run
# never changes again: a run that recovery failed because its process was provably gone stays failed,
# even if a process it did not know of finishes it later. A queued run may fail without running (its
# config no longer validates, a Ray cluster cannot be reached, its claimer died before starting it).
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLED, RunState.FAILED}),
    RunState.RUNNING: frozenset({RunState.DONE, RunState.FAILED, RunState.CANCELLED}),
    RunState.DONE: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
}
FINISHED = (RunState.DONE, RunState.FAILED, RunState.CANCELLED)
STATES = tuple(RunState)
CLAIM_FILE = "claim"  # O_EXCL-created by whoever takes a queued run (a worker to train it, or a cancel)
CANCEL_FILE = "cancel"  # touched to ask the process training a run to stop at its next batch


class IllegalTransition(RuntimeError):
    """A state change that TRANSITIONS does not allow (a bug in the caller, never a user's input)."""

    def __init__(self, run_id: str, current: str, wanted: str):
        super().__init__(f"run {run_id}: cannot go from {current} to {wanted}")
        self.current, self.wanted = current, wanted


def can_move(current: str, wanted: str) -> bool:
    """Whether a run in state `current` may be set to `wanted` (the same state counts: no move)."""
    return current == wanted or RunState(wanted) in TRANSITIONS[RunState(current)]
SCHEMA_VERSION = 1  # in status.json of every run made since the format had an owner

# Arrays every reader may count on, per npz file; a file lacking one is unreadable (named).
REQUIRED_ARRAYS: dict[str, tuple[str, ...]] = {
    "sample_weights": ("index", "is_poisoned", "label", "suspicion"),
    "embeddings": ("index",),
    "images": ("train_x", "train_index", "test_x", "test_y", "trigger_region"),
    "umap": ("index",),
    "epoch_features": ("index", "epoch", "phase", "phase_epoch", "model", "features"),
    "umap_epochs": ("index", "epoch", "phase", "phase_epoch", "model", "coords"),
}


class RunGone(Exception):
    """The run folder disappeared (deleted while in use): nothing is written, nothing re-created."""


class RunUnreadable(UserInputError):
    """A run file that cannot be read as the format says; `reason` names the file and the fault."""

    def __init__(self, run_id: str, reason: str):
        super().__init__(f"run {run_id}: unreadable: {reason}", "run")
        self.reason = reason


class _BadFile(Exception):
    """A run file exists but is not what the format says (the message is the reason)."""


def _load_json(path: Path) -> Any:
    """The JSON value in `path`; FileNotFoundError when absent, _BadFile when it cannot be read."""
    try:
        if path.is_symlink():
            raise _BadFile(f"{path.name} is a symbolic link")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise _BadFile(f"{path.name} is a folder") from None
    except OSError as err:
        raise _BadFile(f"{path.name} cannot be read ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadFile(f"{path.name} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _BadFile(f"{path.name} is not valid JSON ({err.msg}, line {err.lineno})") from None
    except RecursionError:
        raise _BadFile(f"{path.name} is nested too deeply") from None


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _BadFile(f"{name} holds {_kind(value)}, not a JSON object")
    return value


def _kind(value: Any) -> str:
    return {type(None): "null", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


# Fields of status.json with a fixed type; a field of another type is dropped on reading.
_STATUS_TYPES: dict[str, type | tuple[type, ...]] = {
    "progress": dict, "worker": dict, "owner": dict, "error": str, "queue": str, "created": str,
    "started": str, "finished": str, "device": str, "analysis": str, "analysis_error": str,
    "epoch_analysis": str, "epoch_analysis_error": str, "analysis_by": dict, "epoch_analysis_by": dict,
    "seconds": (int, float), "schema_version": int,
}


# Fields of config.json that listings, lookups and pages read, with their types: a config missing one of
# the first three, or holding any of them with another type, is unreadable (named).
_CONFIG_REQUIRED = ("dataset", "attack", "defense")
_CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "dataset": str, "attack": str, "defense": str, "poison_rate": (int, float), "seed": int,
    "target_label": int, "attack_params": dict, "defense_params": dict, "embedding_samples": int,
}


def _typed_config(config: dict[str, Any]) -> dict[str, Any]:
    for key in _CONFIG_REQUIRED:
        if key not in config:
            raise _BadFile(f"config.json has no '{key}'")
    for key, kind in _CONFIG_TYPES.items():
        if key in config and config[key] is not None and not _is_type(config[key], kind):
            raise _BadFile(f"config.json: '{key}' is {_kind(config[key])}")
    return config


def owner_record(kind: str, **extra: Any) -> dict[str, Any]:
    """Who trains a run: this process (pid, host, start time) and how it runs (worker, cli, matrix)."""
    return {"kind": kind, "pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(), **extra}


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid exists on this machine."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except OverflowError:
        return False
    return True


def recorded_process_alive(record: dict[str, Any] | None) -> bool | None:
    """Whether the process an `owner_record` names is provably alive (True), provably gone (False), or
    cannot be told from here (None: another host, no record or no pid). The run's owner is one such
    record; the process computing a run's map (`jobs.run_analysis`) is another."""
    if not isinstance(record, dict) or not record.get("pid"):
        return None
    host = record.get("host")
    if host is not None and host != socket.gethostname():
        return None
    if not pid_alive(record.get("pid")):
        return False
    started = process_start_time(record["pid"])
    recorded = _parse_iso(record.get("started"))
    if started is not None and recorded is not None and started > recorded + 5:
        return False  # the pid was reused by a process that started after the record was written
    return True


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (Unix time), from /proc on Linux; None where it cannot be told."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat: start time in clock ticks after boot
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _parse_iso(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if isinstance(text, str) else None
    except ValueError:
        return None


def describe_error(err: BaseException) -> str:
    """One line for status.json: a write error says which file and why ("no space left on device")."""
    if isinstance(err, OSError) and err.errno is not None:
        reason = os.strerror(err.errno).lower() if err.errno else str(err)
        where = f" ({Path(err.filename).name})" if getattr(err, "filename", None) else ""
        return f"could not write the run's files: {reason}{where}"
    return f"{type(err).__name__}: {err}"


def runs_root(root: str | Path | None = None) -> Path:
    """The runs root: `root`, else $BACKDOOR_LAB_RUNS, else ./runs."""
    return Path(root or os.environ.get("BACKDOOR_LAB_RUNS") or "runs").expanduser().resolve()


def check_writable_root(root: str | Path | None, field: str = "out") -> Path:
    """The runs root, proven usable before any data is loaded: it is a folder (or can be made under
    the nearest existing folder) and a probe file can be written there. Nothing is created; a path
    that is a file, or a folder nobody may write, is one UserInputError."""
    path = runs_root(root)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserInputError(f"{field}: {existing} is a file, not a folder for runs", field)
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserInputError(f"{field}: cannot write runs under {path} ({(err.strerror or str(err)).lower()})",
                             field) from None
    return path


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _atomic_write_bytes(path: Path, data: bytes, make_parents: bool = True) -> None:
    """Write `data` to a temporary name beside `path`, fsync, rename. With `make_parents` off, a
    missing folder is a FileNotFoundError (a run folder is never created again by a write)."""
    if make_parents:
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
    """A JSON file (FileNotFoundError when absent, ValueError when it is not UTF-8 JSON)."""
    try:
        return _load_json(path)
    except _BadFile as err:
        raise ValueError(str(err)) from None


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    _atomic_write_bytes(path, buffer.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz, loaded eagerly, never unpickling objects."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for key, value in arrays.items():  # a member that is not a .npy file comes back as raw bytes
        if not isinstance(value, np.ndarray):
            raise ValueError(f"'{key}' is not a NumPy array")
    return arrays


def new_run_id(config: dict[str, Any]) -> str:
    """A sortable, readable id that the code makes (never a path the user typed)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]  # milliseconds: ids sort by creation
    return f"{stamp}-{config['dataset']}-{config['attack']}-{config['defense']}-{secrets.token_hex(2)}"


def valid_run_id(run_id: str) -> bool:
    return bool(run_id) and all(c.isalnum() or c in "-_." for c in run_id) and not run_id.startswith(".")


@dataclass
class RunDir:
    """A run's folder and typed access to its files (the only code that knows their names)."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, config: dict[str, Any], state: str = RunState.QUEUED,
               owner: dict[str, Any] | None = None, **status: Any) -> "RunDir":
        """A new run folder holding status.json (written first: a listed run always has one; `status`
        adds fields to it, e.g. the queue) and config.json. If either cannot be written (a full disk),
        the folder is removed again and the error is raised: no empty, invisible run is left behind.
        A run is born queued (a worker takes it), or running with its `owner` when the process that
        creates it trains it at once (`pipeline.train_run`), so no worker ever takes it for a queued
        one. Birth is not a transition: tests may create a run in any state."""
        state = RunState(state)
        if owner is not None:
            status = {**status, "owner": owner, "started": status.get("started") or now_iso()}
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
        try:
            run._write("status.json", _json_bytes({"state": state, "created": now_iso(),
                                                   "schema_version": SCHEMA_VERSION, **status}))
            run._write("config.json", _json_bytes(config))
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return run

    @classmethod
    def open(cls, root: Path, run_id: str) -> "RunDir":
        if not valid_run_id(run_id):
            raise UserInputError(f"run: '{run_id}' is not a valid run id", "run")
        path = root / run_id
        if path.is_symlink() or not _is_plain_file(path / "config.json"):
            raise UserInputError(f"run: no run '{run_id}' under {root}", "run")
        return cls(path)

    def exists(self) -> bool:
        """Whether the folder is still there (a real folder, not a link)."""
        return _is_plain_dir(self.path)

    # -- the run's life: the one writer of state, owner, claim and cancel ----------------------
    # Everything that queues, claims, trains, cancels or recovers a run goes through these methods, so
    # TRANSITIONS is checked on every change and the files' names live here alone.
    def state(self) -> RunState:
        """The run's state now (an unreadable status.json reads as failed)."""
        return RunState(self.status().get("state", RunState.FAILED))

    def set_state(self, state: str, **fields: Any) -> dict[str, Any]:
        """Move the run to `state`, writing `fields` with it; IllegalTransition when TRANSITIONS does
        not allow it (checked against the state on disk, not a copy the caller read earlier)."""
        return self.update_status(state=RunState(state), **fields)

    def start(self, owner: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """queued -> running, recording `owner` (`owner_record`): the owner is written here, or by
        `create` for a run born running, and nowhere else. Recovery trusts it before it marks a run
        failed."""
        return self.set_state(RunState.RUNNING, owner=owner, started=now_iso(), progress=None, error=None, **fields)

    def finish(self, state: str, **fields: Any) -> bool:
        """End the run as done, failed or cancelled (with `finished`); False, and nothing written, when
        it already is in that state (a cancel recorded by the training loop and again by its worker)."""
        state = RunState(state)
        if state not in FINISHED:
            raise IllegalTransition(self.run_id, "(any)", state)
        if self.status().get("state") == state:
            return False
        self.set_state(state, finished=now_iso(), **fields)
        return True

    def owner(self, status: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Who trains the run ({kind, pid, host, started, ...}), or None when none is recorded. Runs
        made before `owner` existed recorded a worker's {device, slot, pid} as `worker`: read as a worker
        owner here, the one place that knows the old field."""
        status = status if status is not None else self.status()
        if isinstance(status.get("owner"), dict):
            return status["owner"]
        if isinstance(status.get("worker"), dict):
            return {"kind": "worker", **status["worker"]}
        return None

    def claim(self) -> bool:
        """Take a queued run for this process (a worker to train it, or a cancel), once: an O_EXCL file
        holding our pid. False when someone took it first, or the run was deleted meanwhile."""
        try:
            fd = os.open(self.path / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
        except (FileExistsError, FileNotFoundError):
            return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True

    def is_claimed(self) -> bool:
        return (self.path / CLAIM_FILE).exists()

    def claimer(self) -> tuple[int | None, float | None]:
        """(pid written in the claim file or None while it is unreadable, seconds since it was made or
        None when there is no claim)."""
        path = self.path / CLAIM_FILE
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None, None
        try:
            return int(path.read_text().strip()), age
        except (OSError, ValueError, UnicodeDecodeError):
            return None, age

    def request_cancel(self) -> str:
        """Cancel the run: a queued one now (claimed first, so no worker starts it), a running one at its
        next batch (the cancel file, which every training loop checks). Returns the state it was found
        in, or "deleted"."""
        state = self.status().get("state")
        if state in FINISHED:
            return state
        if state == RunState.QUEUED and self.claim():
            self.finish(RunState.CANCELLED, error=None)
            with contextlib.suppress(OSError):  # a Ray task that took it this instant stops at its first batch
                (self.path / CANCEL_FILE).touch()
            return RunState.QUEUED
        try:
            (self.path / CANCEL_FILE).touch()
        except FileNotFoundError:
            return "deleted"
        return RunState.RUNNING

    def cancel_requested(self) -> bool:
        return (self.path / CANCEL_FILE).exists()

    # -- reading -------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """config.json as a dict; RunUnreadable (a UserInputError) when missing or unreadable."""
        try:
            return _typed_config(_object(_load_json(self.path / "config.json"), "config.json"))
        except FileNotFoundError:
            raise RunUnreadable(self.run_id, "config.json is missing (the run was deleted?)") from None
        except _BadFile as err:
            raise RunUnreadable(self.run_id, str(err)) from None

    def status(self) -> dict[str, Any]:
        """status.json as a dict, always: a missing or unreadable one reads as failed, with
        `unreadable` (and `error`) saying why; fields of the wrong type are dropped."""
        try:
            raw = _object(_load_json(self.path / "status.json"), "status.json")
            if raw.get("state") not in STATES:
                raise _BadFile(f"status.json has an unknown state {raw.get('state')!r}")
        except FileNotFoundError:
            return _unreadable_status("status.json is missing")
        except _BadFile as err:
            return _unreadable_status(str(err))
        return {k: v for k, v in raw.items()
                if k not in _STATUS_TYPES or v is None or _is_type(v, _STATUS_TYPES[k])}

    def problem(self) -> str | None:
        """Why this run cannot be shown ("unreadable: <reason>"), or None when its config, status and
        (for a finished run) summary read as the format says."""
        try:
            self.config()
        except RunUnreadable as err:
            return f"unreadable: {err.reason}"
        status = self.status()
        if status.get("unreadable"):
            return f"unreadable: {status['unreadable']}"
        if status.get("state") == "done":
            reason = self._summary_problem()
            if reason:
                return f"unreadable: {reason}"
        return None

    def _summary_or_reason(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            return _object(_load_json(self.path / "summary.json"), "summary.json"), None
        except FileNotFoundError:
            return None, None
        except _BadFile as err:
            return None, str(err)

    def _summary_problem(self) -> str | None:
        return self._summary_or_reason()[1]

    def summary(self) -> dict[str, Any] | None:
        """summary.json as a dict, or None before the run finishes or when it is unreadable
        (`problem()` says which)."""
        return self._summary_or_reason()[0]

    def metrics(self) -> list[dict[str, Any]]:
        """Every complete line of metrics.jsonl that is a JSON object (a torn last line, from a
        crash, or a line of bytes that are not UTF-8, is skipped)."""
        lines: list[dict[str, Any]] = []
        path = self.path / "metrics.jsonl"
        if path.is_symlink():
            return lines
        try:
            raw = path.read_bytes()
        except OSError:  # absent, a folder, unreadable
            return lines
        for line in raw.splitlines():
            try:
                value = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                continue
            if isinstance(value, dict):
                lines.append(value)
        return lines

    def read_json_file(self, name: str) -> dict[str, Any] | None:
        """Another JSON object of the run (the worker's attribution shares); None when absent or
        unreadable."""
        try:
            return _object(_load_json(self.path / name), name)
        except (FileNotFoundError, _BadFile):
            return None

    def has_arrays(self, name: str) -> bool:
        return _is_plain_file(self.path / f"{name}.npz")

    def arrays_mtime(self, name: str) -> int:
        """The modification time (ns) of `<name>.npz`, 0 when absent: a cache key for readers."""
        return _mtime_ns(self.path / f"{name}.npz")

    def file_mtime(self, name: str) -> int:
        """The modification time (ns) of one of the run's files, 0 when absent."""
        return _mtime_ns(self.path / name)

    # Cache keys for readers that keep what they read (the pages): they change when the file does.
    def config_mtime(self) -> int:
        return self.file_mtime("config.json")

    def status_mtime(self) -> int:
        return self.file_mtime("status.json")

    def summary_mtime(self) -> int:
        return self.file_mtime("summary.json")

    def arrays(self, name: str, require: tuple[str, ...] = ()) -> dict[str, np.ndarray] | None:
        """Arrays of `<name>.npz` (sample_weights, embeddings, images, umap), or None when absent.
        A file that cannot be read, or lacks one of the `require`d arrays, is RunUnreadable (the
        typed readers below require what every reader of that file counts on)."""
        path = self.path / f"{name}.npz"
        if not _is_plain_file(path):
            return None
        try:
            arrays = read_npz(path)
        except Exception as err:  # zip errors, truncation, pickled objects, raw members
            raise RunUnreadable(self.run_id, f"{name}.npz cannot be read ({type(err).__name__}: {err})") from None
        missing = [key for key in require if key not in arrays]
        if missing:
            raise RunUnreadable(self.run_id, f"{name}.npz lacks {', '.join(repr(k) for k in missing)}")
        return arrays

    def sample_record(self) -> dict[str, np.ndarray] | None:
        """sample_weights.npz: index, is_poisoned, label, suspicion (+ original_label, the defense's own)."""
        return self.arrays("sample_weights", REQUIRED_ARRAYS["sample_weights"])

    def embeddings(self) -> dict[str, np.ndarray] | None:
        """embeddings.npz: index, features_<model> (n, d), prediction_<model> (n,)."""
        return self.arrays("embeddings", REQUIRED_ARRAYS["embeddings"])

    def images(self) -> dict[str, np.ndarray] | None:
        """images.npz: train_x / train_index, test_x / test_y, trigger_region."""
        return self.arrays("images", REQUIRED_ARRAYS["images"])

    def umap(self) -> dict[str, np.ndarray] | None:
        """umap.npz (the worker's): index, umap_<model> (n, 2)."""
        return self.arrays("umap", REQUIRED_ARRAYS["umap"])

    def epoch_features(self) -> dict[str, np.ndarray] | None:
        """epoch_features.npz: index (n,), epoch / phase / phase_epoch / model (F,), features (F, n, d),
        prediction (F, n); None for runs made before it existed."""
        return self.arrays("epoch_features", REQUIRED_ARRAYS["epoch_features"])

    def umap_epochs(self) -> dict[str, np.ndarray] | None:
        """umap_epochs.npz (the worker's): index (n,), epoch / phase / phase_epoch / model (F,),
        coords (F, n, 2)."""
        return self.arrays("umap_epochs", REQUIRED_ARRAYS["umap_epochs"])

    def model_state(self, name: str) -> dict[str, Any]:
        import torch

        path = self.path / "models" / f"{name}.pt"
        if not _is_plain_file(path):
            raise RunUnreadable(self.run_id, f"models/{name}.pt is missing")
        return torch.load(path, map_location="cpu", weights_only=True)

    def model_names(self) -> list[str]:
        folder = self.path / "models"
        return sorted(p.stem for p in folder.glob("*.pt") if _is_plain_file(p)) if _is_plain_dir(folder) else []

    def owner_alive(self, status: dict[str, Any] | None = None) -> bool | None:
        """Whether the process training this run is provably alive (True), provably gone (False), or
        cannot be told from here (None: another host, no owner recorded)."""
        return recorded_process_alive(self.owner(status))

    # -- writing (the worker or CLI that runs it, never a page) --------------------------------
    def _write(self, name: str, data: bytes) -> None:
        """Atomically write a file inside the run folder; RunGone when the folder is gone, and never
        through a symbolic link (the folder, or `models/`)."""
        target = self.path / name
        if not _is_plain_dir(self.path) or (target.parent != self.path and target.parent.is_symlink()):
            raise RunGone(f"run {self.run_id}: its folder is gone")
        if target.parent != self.path:
            try:
                target.parent.mkdir(exist_ok=True)
            except FileNotFoundError:
                raise RunGone(f"run {self.run_id}: its folder is gone") from None
        try:
            _atomic_write_bytes(target, data, make_parents=False)
        except FileNotFoundError:
            if not _is_plain_dir(self.path):
                raise RunGone(f"run {self.run_id}: its folder is gone") from None
            raise

    def update_status(self, **fields: Any) -> dict[str, Any]:
        """Write `fields` into status.json. A `state` among them is checked against TRANSITIONS
        (IllegalTransition); callers change state through `set_state`, `start` and `finish`."""
        status = self.status()
        if status.pop("unreadable", None):  # start over rather than carry the reader's stand-in
            status = {"state": "failed"}  # (and a writer that knows better may replace it: no check)
        elif "state" in fields and not can_move(status.get("state", RunState.FAILED), fields["state"]):
            raise IllegalTransition(self.run_id, status.get("state"), fields["state"])
        status.setdefault("schema_version", SCHEMA_VERSION)
        status.update(fields)
        self._write("status.json", _json_bytes(status))
        return status

    def append_metrics(self, line: dict[str, Any]) -> None:
        if not _is_plain_dir(self.path):
            raise RunGone(f"run {self.run_id}: its folder is gone")
        try:
            fd = os.open(self.path / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:
            raise RunGone(f"run {self.run_id}: its folder is gone") from None
        with os.fdopen(fd, "a") as f:
            f.write(to_json(line) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._write("summary.json", _json_bytes(summary))

    def write_error(self, text: str) -> None:
        self._write("error.txt", text.encode())

    def write_json_file(self, name: str, value: Any) -> None:
        """Another JSON file of the run (the worker's attribution shares)."""
        self._write(name, _json_bytes(value))

    def save_model(self, name: str, state_dict: dict[str, Any]) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
        self._write(f"models/{name}.pt", buffer.getvalue())

    def save_arrays(self, name: str, **arrays: np.ndarray) -> None:
        """`<name>.npz`, as np.savez_compressed writes it but at zlib's fastest level: a finished CBD run's
        four files took 0.35 s at the default level 6 and 0.10 s at level 1, 12% larger (the
        features' zeros compress either way). np.load reads both alike."""
        import zipfile

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for key, value in arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        self._write(f"{name}.npz", buffer.getvalue())

    def delete(self) -> None:
        """Remove the run folder (never following a link). A run still training, by a process that is
        provably alive, is refused: cancel it first."""
        if self.path.is_symlink() or not self.path.is_dir():
            raise UserInputError(f"run {self.run_id}: not a run folder (a link, or already deleted)", "run")
        status = self.status()
        if status.get("state") in ("running", "queued") and self.owner_alive(status) is not False \
                and (status.get("state") == "running" or self.is_claimed()):
            raise UserInputError(f"run {self.run_id} is {status.get('state')}; cancel it before deleting it", "run")
        shutil.rmtree(self.path)

    def zip_bytes(self) -> bytes:
        """The whole run folder as a zip (paths start with the run id), for downloading; the
        worker's bookkeeping files (claim, cancel), temporary files and symbolic links (which could
        point anywhere) are left out."""
        import zipfile

        if not _is_plain_dir(self.path):
            raise UserInputError(f"run {self.run_id}: not a run folder", "run")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for folder, dirs, files in os.walk(self.path, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not (Path(folder) / d).is_symlink())
                for name in sorted(files):
                    path = Path(folder) / name
                    if name.startswith(".") or name in (CLAIM_FILE, CANCEL_FILE) or not _is_plain_file(path):
                        continue
                    archive.write(path, f"{self.run_id}/{path.relative_to(self.path)}")
        return buffer.getvalue()


def _json_bytes(value: Any) -> bytes:
    return (to_json(value, indent=2) + "\n").encode()


def _unreadable_status(reason: str) -> dict[str, Any]:
    return {"state": "failed", "error": f"unreadable: {reason}", "unreadable": reason}


def _is_type(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool and bool not in
                                            (kind if isinstance(kind, tuple) else (kind,)))


def _is_plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_plain_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _mtime_ns(path: Path) -> int:
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return 0


def epoch_number(metrics: list[dict[str, Any]], phase: str, epoch: int) -> int | None:
    """The run's number for `phase`'s `epoch`: the position (from 1) of its line in metrics.jsonl, the
    numbering the Train page and epoch_features.npz use (CBD: f_B's stages 1-4, then f_C's epochs).
    None when the run has no such line."""
    for number, line in enumerate(metrics, start=1):
        if line.get("phase") == phase and line.get("epoch") == epoch:
            return number
    return None


def list_runs(root: str | Path | None = None) -> list[RunDir]:
    """Every run under the root, newest first: real folders (never a link) holding a config.json.
    Unreadable runs are listed too; `RunDir.problem()` says what is wrong with them."""
    folder = runs_root(root)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    runs = [RunDir(Path(e.path)) for e in entries
            if e.is_dir(follow_symlinks=False) and valid_run_id(e.name) and _is_plain_file(Path(e.path) / "config.json")]

    def created(run: RunDir) -> tuple[int, str]:
        # config.json is written once, when the run is created (0 when deleted meanwhile)
        return _mtime_ns(run.path / "config.json"), run.run_id

    return sorted(runs, key=created, reverse=True)


def visible_name(name: str) -> str:
    """`name` with every character that is invisible or reorders the text around it (control and format
    characters such as RLO, U+202E; line breaks; the backslash itself) written as a \\uXXXX escape, so
    what a page shows is exactly what is on disk and no name can disguise itself."""
    import unicodedata

    return "".join(c if c.isprintable() and c != "\\" and unicodedata.category(c)[0] != "C" else f"\\u{ord(c):04x}"
                   for c in name)


def odd_run_folders(root: str | Path | None = None) -> list[str]:
    """The visible names (`visible_name`) of folders under the root that look like runs (a real folder
    holding a config.json) but whose name is no valid run id (quotes, spaces, RLO…): `list_runs` leaves
    them out, since nothing may address them by name, and the pages list them as unreadable instead of
    letting them vanish. Hidden folders (.workers) are not runs."""
    folder = runs_root(root)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(visible_name(e.name) for e in entries
                  if not e.name.startswith(".") and not valid_run_id(e.name) and e.is_dir(follow_symlinks=False)
                  and _is_plain_file(Path(e.path) / "config.json"))


ODD_NAME_PROBLEM = ("unreadable: the folder name holds characters a run id may not have (only letters, digits, "
                    "- _ and .); rename or delete it by hand")


def wait_for(run: RunDir, timeout: float = 600.0, poll: float = 0.5) -> dict[str, Any]:
    """Block until the run has finished (for scripts and tests); returns its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run.status()
        if status.get("state") in FINISHED:
            return status
        time.sleep(poll)
    raise TimeoutError(f"run {run.run_id} did not finish in {timeout} s")


def status_line(status: dict[str, Any]) -> str:
    """A short human description of a run's status, for tables ("running: train epoch 2/10")."""
    state = status.get("state", "?")
    progress = status.get("progress") if isinstance(status.get("progress"), dict) else {}
    if state == "running" and progress:
        epoch = progress.get("epoch") if isinstance(progress.get("epoch"), int) else 0
        return f"running: {progress.get('phase')} epoch {max(1, epoch)}/{progress.get('epochs')}"
    return state
