"""Finding runs: the one query over the runs root, `find(config, match, states)`.

"The same run" means different things to different callers, so each meaning is named here once:

    SAME_RUN    every field of config.json: submitting it again would train the same numbers
                (the queue's reuse of a run already queued, running or done)
    SAME_CELL   the same, except the device: a `matrix` grid resumed on another machine reuses its cells
    SAME_DATA   the same poisoned data, seed, model and arithmetic (BASELINE_KEYS): what a defended run
                and its undefended baseline share
    BASELINE    SAME_DATA and the same defense: pass `{**config, "defense": "undefended"}` to find a
                run's baseline
    SAME_SETUP  SAME_DATA and the same defense with the same settings (the Lesson's preset pairs)
    SAME_TIMING the same work on the same device (TIMING_KEYS, and the device status.json says the run
                trained on): runs that should take about as long (`timing`'s estimates)

    scan(root)                                        (run, config, state, status) of every readable run,
                                                      newest first
    find(config, match, states, root, pool, status)   those that match `config` (and, for a match with
                                                      `status_keys`, `status`), newest first

Callers that look up many runs at once read `scan(root)` once and pass it as `pool`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from .errors import UserInputError
from .runs import RunDir, list_runs, to_json

# The config.json fields that make two runs train on the same poisoned data with the same arithmetic.
BASELINE_KEYS = ("dataset", "npz_path", "data_root", "attack", "attack_params", "poison_rate", "target_label",
                 "seed", "model", "threads", "deterministic")
# The config.json fields that decide how long a run trains (not which images are poisoned, nor the seed).
TIMING_KEYS = ("dataset", "npz_path", "model", "defense", "defense_params", "threads", "embedding_samples",
               "deterministic")


def _same(a: Any, b: Any) -> bool:
    """Equal as config.json holds them (tuples are lists, dict keys unordered); floats within 1e-9
    (a rate typed as 0.1 and one computed as 0.1000000001 are the same rate)."""
    numbers = (int, float)
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
                and not isinstance(b, bool) and abs(a - b) <= 1e-9)
    return json.loads(to_json(a)) == json.loads(to_json(b))


@dataclass(frozen=True)
class Match:
    """Which fields of config.json two runs must share to count as the same for one purpose."""

    name: str
    keys: tuple[str, ...] | None = None  # None: every field either config has
    ignore: tuple[str, ...] = ()
    # Fields of the found run's status.json (what happened, not what was asked) it must share with the
    # `status` a `find` passes, compared as text: the device a run trained on ("cuda"), which config.json
    # may only say as "auto".
    status_keys: tuple[str, ...] = ()

    def same(self, config: dict[str, Any], other: dict[str, Any]) -> bool:
        """Whether two config.json dicts are the same for this purpose (`status_keys` aside)."""
        keys = self.keys if self.keys is not None else sorted(set(config) | set(other))
        return all(_same(config.get(key), other.get(key)) for key in keys if key not in self.ignore)

    def same_status(self, wanted: dict[str, Any], status: dict[str, Any]) -> bool:
        """Whether a run's status.json holds the `wanted` value of every one of `status_keys`."""
        return all(str(wanted.get(key)) == str(status.get(key)) for key in self.status_keys)


SAME_RUN = Match("same run")
SAME_CELL = Match("same cell", ignore=("device",))
SAME_DATA = Match("same data", BASELINE_KEYS)
BASELINE = Match("baseline", (*BASELINE_KEYS, "defense"))
SAME_SETUP = Match("same setup", (*BASELINE_KEYS, "defense", "defense_params"))
# Unlike the matches above, this one is about cost, not results: the seed, the attack and the poison
# rate change which images are poisoned but not how long training takes, while the device that
# actually trained the run (status.json's, not config.json's "auto") changes it most.
SAME_TIMING = Match("same timing", TIMING_KEYS, status_keys=("device",))


class Found(NamedTuple):
    run: RunDir
    config: dict[str, Any]
    state: str
    status: dict[str, Any]  # status.json as read by the scan (`state` is its state)


def scan(root: str | Path | None = None) -> list[Found]:
    """Every run under the root whose config.json reads, with its state, newest first: one pass.
    Unreadable folders are left out (the Runs page lists them)."""
    found = []
    for run in list_runs(root):
        try:
            config = run.config()
        except (OSError, ValueError, UserInputError):
            continue
        status = run.status()
        found.append(Found(run, config, str(status.get("state")), status))
    return found


def find(config: dict[str, Any], match: Match, states: Iterable[str] | None = None,
         root: str | Path | None = None, pool: list[Found] | None = None,
         status: dict[str, Any] | None = None) -> list[Found]:
    """The runs under the root (or in `pool`, a `scan`) that are `match`.same as `config` (a validated
    config's dict), in one of `states` (any when None), newest first. A match with `status_keys`
    (SAME_TIMING) also compares their status.json with `status` ({"device": "cuda"})."""
    wanted = None if states is None else {str(s) for s in states}
    status = status or {}
    return [found for found in (scan(root) if pool is None else pool)
            if (wanted is None or found.state in wanted) and match.same(config, found.config)
            and match.same_status(status, found.status)]
