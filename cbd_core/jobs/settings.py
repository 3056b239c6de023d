"""What every part of the jobs package shares: file names in the runs root, timings, how many
workers serve a device, which queue a run waits in."""

from __future__ import annotations

import os

from ..config import RunConfig
from ..errors import UserInputError
from ..runs import CANCEL_FILE, CLAIM_FILE  # noqa: F401  (the run store owns them; re-exported for callers)

WORKERS_DIR = ".workers"
RAY_QUEUE = "ray"  # the queue runs for a Ray cluster wait in; local workers never serve it (jobs.cluster)
PROGRESS_EVERY_S = 0.5  # status.json rewrites while training: often enough for a live page, cheap
IDLE_POLL_S = 1.0  # an idle worker scans its queue this often anyway
WAKE_POLL_S = 0.05  # and checks its wake file (one stat) this often: `submit` touches it, so a run starts at once


def wake_file_name(device: str) -> str:
    """`<root>/.workers/wake-<device>`: touched by `submit` after it queues a run for that device."""
    return f"wake-{device.replace(':', '_')}"


def workers_per_device() -> int:
    """Runs trained at once per device: $BACKDOOR_LAB_WORKERS_PER_DEVICE, default 1 (one run uses
    every CPU core; on a large GPU two small runs can share it)."""
    raw = os.environ.get("BACKDOOR_LAB_WORKERS_PER_DEVICE", "1")
    try:
        value = int(raw)
    except ValueError:
        raise UserInputError(f"BACKDOOR_LAB_WORKERS_PER_DEVICE: expected a whole number, got {raw!r}",
                             "workers") from None
    if not 1 <= value <= 16:
        raise UserInputError(f"BACKDOOR_LAB_WORKERS_PER_DEVICE: {value} is outside [1, 16]", "workers")
    return value


def device_key(config: RunConfig) -> str:
    """The queue a run waits in: the device it will train on ("cpu", "cuda", "cuda:1", "mps")."""
    from ..training import choose_device

    device = choose_device(config.device)
    return str(device) if device.index is not None else device.type
