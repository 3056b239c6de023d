"""How long a run has taken and about how long it still needs, with what the estimate rests on.

    run_timing(run)        RunTiming(elapsed, remaining, basis) from the run's own files and the
                           finished runs beside it; what the Train page shows under the progress bar
    estimate(...)          the same from plain values (status, metrics, stages, earlier durations)
    typical_seconds(cfg)   how long a run of these settings usually trains here (the Overview's promise)
    queue_forecast(ids)    when each of several runs will be done, in the order they finish (a batch
                           queued at once: the Lesson's "Prepare this class", a preset pair)

Elapsed time counts from `started` in status.json (training began; the worker's data loading is
before it) to now, or to `finished`. The remaining time comes, in this order, from
  1. finished runs with the same timing settings (dataset, model, defense and its parameters, threads,
     device; `run_index.SAME_TIMING`): the median of their durations minus the time already spent,
     while the run is within it;
  2. this run's own pace: the mean seconds per finished stage (an epoch, or one of CBD's f_B stages;
     `elapsed_seconds` and `stage` of metrics.jsonl) times the stages still to go (the defense's
     `progress_stages`: epochs that write no line, CBD's probes, count too, and the share of the run
     done in status.json's progress says how many of them have ended since the last line);
  3. nothing yet: before the first stage ends there is no honest number.
Both are estimates: a shared CPU slows every run, and the last stage is followed by a few seconds of
saving and the map.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .run_index import SAME_TIMING, Found, find, scan
from .runs import RunDir, now_iso

MAX_SIMILAR = 5  # the newest few are enough, and reading more costs page time


@dataclass(frozen=True)
class RunTiming:
    elapsed: float | None  # seconds training so far (or in all, once finished); None before it starts
    remaining: float | None  # seconds still to go, estimated; 0 when finished; None when unknown
    basis: str  # what `remaining` rests on, in words ("" when there is nothing to say)


def seconds_between(start: Any, end: Any = None) -> float | None:
    """Seconds from one ISO time to another (default: now); None when either cannot be read."""
    end = end or now_iso()
    try:
        a, b = datetime.fromisoformat(str(start)), datetime.fromisoformat(str(end))
    except ValueError:
        return None
    return max(0.0, (b - a).total_seconds())


def estimate(status: dict[str, Any], metrics: list[dict[str, Any]], total_stages: int | None,
             similar_seconds: list[float], now: str | None = None) -> RunTiming:
    """RunTiming of a run whose status.json is `status` and metrics.jsonl `metrics`, which trains
    `total_stages` stages in all, given the durations of finished runs with the same timing settings
    (`similar_seconds`). `now` is an ISO time (default: now)."""
    state = status.get("state")
    now = now or now_iso()
    if state == "done":
        seconds = status.get("seconds")
        elapsed = float(seconds) if isinstance(seconds, (int, float)) else \
            seconds_between(status.get("started"), status.get("finished"))
        return RunTiming(elapsed, 0.0, "")
    if state != "running" or not status.get("started"):
        end = status.get("finished") if state in ("failed", "cancelled") else None
        elapsed = seconds_between(status["started"], end) if status.get("started") and end else None
        return RunTiming(elapsed, None, "")
    elapsed = seconds_between(status["started"], now) or 0.0

    if similar_seconds:
        typical = statistics.median(similar_seconds)
        if elapsed < typical:
            runs = f"{len(similar_seconds)} finished run{'s' if len(similar_seconds) != 1 else ''}"
            return RunTiming(elapsed, typical - elapsed,
                             f"judged from {runs} with the same settings, typically {typical:.0f} s in all")
    stages = [m for m in metrics if isinstance(m.get("elapsed_seconds"), (int, float))]
    if stages and total_stages:
        # Stages ended by the last line: its `stage` (unreported epochs before it included), else its position.
        stage = stages[-1].get("stage")
        done = stage if isinstance(stage, int) and not isinstance(stage, bool) and len(stages) <= stage <= total_stages \
            else len(stages)
        paced, per_stage = done, float(stages[-1]["elapsed_seconds"]) / done
        progress = status.get("progress") if isinstance(status.get("progress"), dict) else {}
        share = progress.get("run_fraction")
        if isinstance(share, (int, float)) and not isinstance(share, bool) and 0 <= share <= 1:
            done = max(done, int(share * total_stages + 1e-6))  # epochs without a line ended since (CBD's probes)
        left = max(0, total_stages - done)
        step, steps = progress.get("step"), progress.get("steps")
        within = step / steps if isinstance(step, int) and isinstance(steps, int) and steps > 0 and left else 0.0
        return RunTiming(elapsed, max(0.0, per_stage * (left - within)),
                         f"judged from this run's pace: {per_stage:.1f} s per stage over {paced} finished, "
                         f"{left} of {total_stages} to go")
    return RunTiming(elapsed, None, "an estimate follows when the first stage ends")


def similar_durations(config: dict[str, Any], device: Any, root: str | Path | None,
                      pool: list[Found] | None = None) -> list[float]:
    """Durations (summary seconds, from status.json) of the newest finished runs under the root (or in
    `pool`, a `run_index.scan`) with the same timing settings on the same device (`run_index.SAME_TIMING`),
    at most MAX_SIMILAR of them. Unreadable folders are skipped (the Runs page shows them)."""
    found = [float(f.status["seconds"]) for f in find(config, SAME_TIMING, ("done",), root, pool, {"device": device})
             if isinstance(f.status.get("seconds"), (int, float))]
    return found[:MAX_SIMILAR]


def total_stages(config: dict[str, Any]) -> int | None:
    """Stages a run with this config trains in all: the defense's `progress_stages` (its metric lines
    and the epochs that write none, CBD's probes)."""
    from .defenses import defense_or_none

    defense = defense_or_none(config.get("defense"))
    try:
        return int(defense.progress_stages(config.get("defense_params") or {})) if defense else None
    except (KeyError, TypeError, ValueError):
        return None


def run_timing(run: RunDir, status: dict[str, Any] | None = None, now: str | None = None,
               durations: list[float] | None = None, config: dict[str, Any] | None = None,
               metrics: list[dict[str, Any]] | None = None) -> RunTiming:
    """`estimate` for a run folder, from its own files and the finished runs beside it. A caller that
    has already read them passes `status`, `config`, `metrics` and `durations` (`similar_durations`,
    which it may cache); the rest are read here."""
    status = status if status is not None else run.status()
    if status.get("state") != "running":
        return estimate(status, [], None, [], now)
    config = config if config is not None else run.config()
    if durations is None:
        durations = similar_durations(config, status.get("device") or status.get("queue"), run.path.parent)
    metrics = metrics if metrics is not None else run.metrics()
    return estimate(status, metrics, total_stages(config), durations, now)


def duration_text(seconds: float | None) -> str:
    """"42 s", "3 min 05 s", "1 h 02 min"; "?" for None."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass(frozen=True)
class Forecast:
    run_id: str
    seconds: float | None  # from now until the run is done; None when there is nothing to judge from
    order: int  # 1 for the run that finishes first among those asked about


def _seconds_per_stage(device: str, finished: list[tuple[dict[str, Any], dict[str, Any]]]) -> float | None:
    """Mean training seconds per stage over every finished run on `device` (any settings)."""
    seconds = stages = 0.0
    for config, status in finished:
        count = total_stages(config)
        if str(status.get("device")) == device and count and isinstance(status.get("seconds"), (int, float)):
            seconds, stages = seconds + float(status["seconds"]), stages + count
    return seconds / stages if stages else None


def typical_seconds(config: dict[str, Any], device: str, root: str | Path | None,
                    pool: list[Found] | None = None) -> float | None:
    """About how many seconds a run of `config` trains on `device`, judged from the finished runs under
    the root (or in `pool`, a `run_index.scan`): the median of those with the same timing settings
    (`similar_durations`), else the device's mean seconds per stage over all its finished runs times this
    run's stages; None when nothing has finished on the device (there is no honest number yet)."""
    pool = scan(root) if pool is None else pool
    similar = similar_durations(config, device, root, pool)
    if similar:
        return statistics.median(similar)
    finished = [(found.config, found.status) for found in pool if found.state == "done"]
    per_stage, stages = _seconds_per_stage(device, finished), total_stages(config)
    return per_stage * stages if per_stage is not None and stages else None


def queue_forecast(run_ids: list[str], root: str | Path | None) -> list[Forecast]:
    """When each of `run_ids` will be done, in the order they will finish (unknown ones last). Every
    device queue is played forward in the workers' order: the runs training now end after their
    `run_timing` estimate, each queued run then takes the first free slot for its typical duration
    (finished runs with the same settings, `similar_durations`; else the device's seconds per stage
    over all its finished runs times the run's stages). The worker's map of each finished run is not
    counted (seconds on mnist5k)."""
    import heapq

    from .jobs import queued_runs, workers_per_device

    pool = scan(root)  # one pass over the runs root: every readable run's config and status
    read = [(found.run, found.status) for found in pool]
    configs: dict[str, dict[str, Any]] = {found.run.run_id: found.config for found in pool}

    def typical(config: dict[str, Any], device: str) -> float | None:
        return typical_seconds(config, device, root, pool)

    done_at: dict[str, float | None] = {}
    for run, status in read:
        if status.get("state") == "done":
            done_at[run.run_id] = 0.0
    for queue in sorted({str(s.get("queue") or "cpu") for _, s in read if s.get("state") in ("queued", "running")}):
        slots: list[float] = []
        unknown = False
        for run, status in read:
            if status.get("state") == "running" and str(status.get("queue") or "cpu") == queue:
                config = configs.get(run.run_id)
                timing = run_timing(run, status, config=config)
                left = timing.remaining
                whole = typical(config, queue) if left is None and config is not None else None
                if whole is not None:  # before its first stage ends: its typical duration, less what it has run
                    left = max(0.0, whole - (timing.elapsed or 0.0))
                done_at[run.run_id] = left
                if left is None:
                    unknown = True
                else:
                    slots.append(left)
        slots += [0.0] * max(0, workers_per_device() - len(slots))
        heapq.heapify(slots)
        for run in queued_runs(root, queue):
            config = configs.get(run.run_id)
            duration = typical(config, queue) if config is not None else None
            if unknown or duration is None or not slots:
                unknown, done_at[run.run_id] = True, None  # everything behind an unknown is unknown too
                continue
            done_at[run.run_id] = heapq.heappop(slots) + duration
            heapq.heappush(slots, done_at[run.run_id])
    known = sorted((done_at[i], i) for i in run_ids if done_at.get(i) is not None)
    ordered = [i for _, i in known] + [i for i in run_ids if done_at.get(i) is None]
    return [Forecast(i, done_at.get(i), n) for n, i in enumerate(ordered, 1)]
