"""The attack x defense grid: every cell a real run, resumable, summarised as CSV and Markdown.

    python -m cbd_core matrix --datasets mnist5k --attacks all --defenses all --seeds 0 1 2

A defense may carry parameters, `cbd:mi_weight=0,weighting=paper`, so ablations are grids too.
Runs go under the runs root like any other; a cell whose finished run (same validated config) is
already there is not run again, so an interrupted grid picks up where it stopped. With `jobs` > 1
cells run in parallel processes; each keeps the threads its config names (`--threads` sets them), so a
cell gives the same numbers from `matrix` as from `run`. A dataset may be a path to an .npz (a user's
own data, as `run --npz` takes it).
"""

from __future__ import annotations

import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig
from .errors import UserInputError
from .run_index import SAME_CELL, Found, find, scan
from .runs import owner_record, runs_root
from .verdicts import UNDEFENDED, verdict


@dataclass(frozen=True)
class DefenseSpec:
    """A defense name with parameter overrides, written `name` or `name:key=value,key=value`."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "DefenseSpec":
        name, _, rest = text.partition(":")
        params = []
        for item in filter(None, rest.split(",")):
            key, sep, raw = item.partition("=")
            if not sep:
                raise UserInputError(f"defenses: expected key=value in {text!r}, got {item!r}", "defenses")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            params.append((key, value))
        return cls(name, tuple(params))

    @property
    def label(self) -> str:
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in self.params) if self.params else "")


@dataclass(frozen=True)
class Cell:
    dataset: str
    attack: str
    defense: DefenseSpec
    seed: int
    poison_rate: float

    def config(self, epochs: int | None = None, device: str = "auto", threads: int | None = None) -> RunConfig:
        # A dataset given as a path to an .npz is a user's own file (`run --npz`).
        own = self.dataset.endswith(".npz")
        return RunConfig(dataset="npz" if own else self.dataset,
                         npz_path=str(Path(self.dataset).expanduser().resolve()) if own else None,
                         attack=self.attack, poison_rate=self.poison_rate,
                         defense=self.defense.name, seed=self.seed, defense_params=dict(self.defense.params),
                         device=device, threads=threads).with_epochs(epochs)


METRICS = ("clean_accuracy", "attack_success_rate", "robust_accuracy", "poison_detection_auroc", "seconds")


def finished_summary(config: dict[str, Any], pool: list[Found]) -> dict[str, Any] | None:
    """The summary of the newest done run in `pool` (`run_index.scan`) that is the same cell as `config`
    (`run_index.SAME_CELL`: the device does not change what a cell means, so a grid resumed on another
    machine reuses its runs), when it holds the table's figures; else None (run it again)."""
    for found in find(config, SAME_CELL, ("done",), pool=pool):
        summary = found.run.summary()
        if summary is not None and _has_figures(summary):
            return summary
    return None


def _has_figures(summary: dict[str, Any]) -> bool:
    """Whether a summary holds the figures a grid's table reads (a hand-edited one may not)."""
    return all(isinstance(summary.get(m), (int, float)) for m in ("clean_accuracy", "attack_success_rate",
                                                                   "seconds"))


def _run_cell(config_dict: dict[str, Any], root: str) -> dict[str, Any]:
    """One cell in a worker process (module-level so it pickles); the config sets its threads."""
    from .pipeline import train_run

    return train_run(RunConfig.from_dict(config_dict), root, owner=owner_record("matrix"))[1]


def _exit_with_grid(grid_pid: int) -> None:
    """Pool initializer: a cell's process ends when the grid's process does. A pool's worker otherwise
    outlives a grid killed by a signal (SIGTERM from a job scheduler, `kill`, a closed session): it trains its
    cell to the end, minutes of CPU nobody sees, beside whatever runs next, and writes a run into the runs
    root that no grid asked for. Its run folder's owner is then gone, so the run reads as interrupted."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == grid_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-grid", daemon=True).start()


def _npz_shape(path: str | None, cache: dict) -> tuple[tuple[int, int, int], int]:
    """(image shape, number of classes) of an .npz dataset, read once per grid."""
    if path not in cache:
        from .data import load_npz

        train, _, _ = load_npz(path)
        cache[path] = (train.image_shape, train.num_classes)
    return cache[path]


def run_matrix(cells: list[Cell], root: str | Path | None = None, jobs: int = 1, epochs: int | None = None,
               device: str = "auto", threads: int | None = None, report: Callable[[str], None] = print,
               ray: str | None = None, failures: list[tuple[Cell, str]] | None = None) -> list[tuple[Cell, dict[str, Any]]]:
    """Run every cell not already done under the runs root; returns (cell, summary) in cell order.
    With a Ray address (`ray`, else $BACKDOOR_LAB_RAY_ADDRESS) every cell is a Ray task
    (`jobs.cluster`), all queued at once; `jobs` is then the cluster's business.

    A cell that fails (a bug, a full disk, its folder deleted while it trained) does not stop the others:
    it is reported at once and the grid goes on. With a `failures` list, each failed cell and its reason are
    appended to it and the finished cells are returned; without one, the grid ends with a UserInputError
    naming every failed cell once the rest have run. Either way a rerun resumes: only the failed and the
    missing cells train again."""
    from .jobs.cluster import ray_address

    address = ray_address(ray)
    folder = runs_root(root)
    pool = scan(folder)  # one pass over the runs root for every cell
    todo, results = [], {}
    npz_shapes: dict[str, tuple[tuple[int, int, int], int]] = {}
    for cell in cells:
        # Validating resolves every default, so "already done" compares the full configs; and a bad
        # cell stops the grid here, before anything runs.
        validated = cell.config(epochs, device, threads).validated()
        if validated.dataset == "npz":
            # A user's file: its image shape, which the attack's and defense's defaults depend on, is
            # known only once it is read, so resolve against it (as the run itself will).
            validated = validated.validated(*_npz_shape(validated.npz_path, npz_shapes))
        summary = finished_summary(validated.to_dict(), pool)
        if summary is not None:
            results[cell] = summary
        else:
            todo.append((cell, validated))
    report(f"{len(cells)} cells: {len(results)} already done, {len(todo)} to run, "
           + (f"as Ray tasks on {address}" if address else f"{jobs} at a time"))

    failed: list[tuple[Cell, str]] = []

    def finished(cell: Cell, summary: dict[str, Any]) -> None:
        results[cell] = summary
        report(f"  {cell.dataset} {cell.attack:<8} {cell.defense.label:<24} seed {cell.seed}: "
               f"CA {summary['clean_accuracy']:.3f} ASR {summary['attack_success_rate']:.3f} "
               f"({summary['seconds']:.0f} s)")

    def failed_cell(cell: Cell, reason: str) -> None:
        failed.append((cell, reason))
        report(f"  {cell.dataset} {cell.attack:<8} {cell.defense.label:<24} seed {cell.seed}: FAILED ({reason}); "
               "the other cells go on")

    if address:
        _run_on_ray(todo, folder, address, finished, failed_cell)
    elif jobs <= 1:  # in this process: no fork of a torch that already has threads
        for cell, validated in todo:
            try:
                summary = _run_cell(validated.to_dict(), str(folder))
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001 - any failure of one cell is that cell's, not the grid's
                failed_cell(cell, _reason(err))
            else:
                finished(cell, summary)
    else:
        # "spawn": fresh interpreters, since forking a process whose torch runs threads can hang.
        # Cells keep the threads their configs name (give --threads to share the cores out); idle
        # OpenMP threads sleep rather than spin, so cells sharing the CPU do not starve each other.
        import multiprocessing

        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_exit_with_grid, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_run_cell, validated.to_dict(), str(folder)): cell
                       for cell, validated in todo}
            for future, cell in futures.items():
                try:
                    summary = future.result()
                except Exception as err:  # noqa: BLE001 - as above; a crashed worker process lands here too
                    failed_cell(cell, _reason(err))
                else:
                    finished(cell, summary)
    if failures is not None:
        failures.extend(failed)
    elif failed:
        raise UserInputError(f"{len(failed)} of {len(cells)} cells failed: "
                             + "; ".join(f"{c.attack}, {c.defense.label}, seed {c.seed}: {why}" for c, why in failed)
                             + " (the others finished; run the grid again to retry these)", "matrix")
    return [(cell, results[cell]) for cell in cells if cell in results]


def _reason(err: BaseException) -> str:
    """One line for a failed cell: the error's own message (a traceback, when there is one, is in the run
    folder's error.txt)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _run_on_ray(todo: list[tuple[Cell, RunConfig]], folder: Path, address: str,
                finished: Callable[[Cell, dict[str, Any]], None], failed_cell: Callable[[Cell, str], None]) -> None:
    """Queue every cell as a Ray task (`jobs.submit_once` in the "ray" queue), then follow the run
    folders, which the tasks write, until each has ended. A cell that failed or was cancelled is reported
    with its recorded reason, as a failed cell is locally, and the others go on."""
    import time

    from .jobs import submit_once

    runs = [(cell, submit_once(validated, folder, start_worker=False, ray=address).run) for cell, validated in todo]
    for cell, run in runs:
        while (status := run.status()).get("state") not in ("done", "failed", "cancelled"):
            time.sleep(0.5)
        summary = run.summary() if status.get("state") == "done" else None
        if summary is None:
            failed_cell(cell, f"run {run.run_id} ended {status.get('state')} on the Ray cluster: "
                              f"{status.get('error') or 'no reason recorded'}")
        else:
            finished(cell, summary)


def median_range(values: list[float | None]) -> str:
    """`median [min–max]` over seeds: the middle run and the spread, which a mean ± std hides when
    one seed flips."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.median(values):.3f} [{min(values):.3f}–{max(values):.3f}]"


def _baseline_of(cell: Cell, results: list[tuple[Cell, dict[str, Any]]]) -> dict[str, Any] | None:
    """The summary of the grid's undefended cell on the same data (dataset, attack, rate, seed), if the
    grid has one: what the cell's verdict is judged against (else the baseline its run recorded)."""
    for other, summary in results:
        if (other.defense.name == UNDEFENDED and not other.defense.params and other.dataset == cell.dataset
                and other.attack == cell.attack and other.seed == cell.seed
                and abs(other.poison_rate - cell.poison_rate) < 1e-12):
            return summary
    return None


def tables(results: list[tuple[Cell, dict[str, Any]]]) -> tuple[list[dict[str, Any]], str]:
    """Per-run rows (for CSV) and a Markdown table with the median [min–max] over seeds per
    (dataset, attack, poison rate, defense)."""
    rows = [{"dataset": c.dataset, "attack": c.attack, "poison_rate": c.poison_rate, "defense": c.defense.label,
             "seed": c.seed, **{m: s.get(m) for m in METRICS}, "verdict": verdict(s, _baseline_of(c, results)),
             "run_dir": s.get("run_dir")} for c, s in results]
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["attack"], row["poison_rate"], row["defense"]), []).append(row)
    lines = ["| dataset | attack | rate | defense | seeds | CA | ASR | RA | poison AUROC | seconds | verdicts |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, attack, rate, defense), members in groups.items():
        cells = [median_range([m[k] for m in members]) for k in METRICS[:4]]
        seconds = statistics.median(m["seconds"] for m in members)
        counts = verdict_counts(m["verdict"] for m in members)
        lines.append(f"| {Path(dataset).stem} | {attack} | {rate:g} | {defense} | {len(members)} | "
                     + " | ".join(cells) + f" | {seconds:.0f} | {counts} |")
    return rows, "\n".join(lines)


def verdict_counts(values) -> str:
    """"3 removed, 2 made worse": how many seeds got each verdict (n/a, an undefended row's, left out)."""
    from collections import Counter

    counts = Counter(v for v in values if v and v != "n/a")
    return ", ".join(f"{n} {name}" for name, n in counts.most_common()) or "–"


def write_tables(results: list[tuple[Cell, dict[str, Any]]], folder: Path) -> tuple[Path, Path, str]:
    import csv

    rows, markdown = tables(results)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / "matrix.csv", folder / "matrix.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]) if rows else ["dataset"])
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(markdown + "\n")
    return csv_path, md_path, markdown
