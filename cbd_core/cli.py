"""`python -m cbd_core`: the same runs as the dashboard, without a browser.

    python -m cbd_core run --dataset mnist5k --attack badnets --poison-rate 0.1 --target-label 0 \\
        --defense cbd --seed 0 [--epochs N] [--device cpu|cuda|mps] [--out DIR] [--json]
    python -m cbd_core matrix --datasets mnist5k --attacks all --defenses all --seeds 0 1 2 \\
        [--poison-rates 0.01 0.05 0.1] [--jobs 2]
    python -m cbd_core submit <the same flags as run> [--out ROOT] [--json] [--no-worker]
    python -m cbd_core list [--json]
    python -m cbd_core report RUN_ID --out run.html [--root ROOT]     one run as a self-contained HTML page
    python -m cbd_core worker --device cpu     (the dashboard starts this itself; see cbd_core/jobs/)

`run` trains with a progress bar on stderr and prints a short table at the end; with `--json` the
last line of stdout is one JSON object (dataset, attack, poison_rate, target_label, defense, seed,
clean_accuracy, attack_success_rate, robust_accuracy, poison_detection_auroc, seconds, device,
run_dir, ...). Attack and defense parameters: `--attack-param size=4 --defense-param mi_weight=0`.
Bad input exits with status 2 and one line naming the field; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .text import rate_percent
from .errors import UserInputError
from .runs import RunGone


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m cbd_core", description="Backdoor Lab: poison a dataset, train a defense.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train one defense on one poisoned dataset")
    add_run_arguments(run)
    run.add_argument("--out", help="runs root to write the run folder under (default $BACKDOOR_LAB_RUNS or ./runs)")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON line last")

    submit = sub.add_parser("submit", help="queue one run for the dashboard's background worker and exit")
    add_run_arguments(submit)
    submit.add_argument("--out", help="runs root the worker serves (default $BACKDOOR_LAB_RUNS or ./runs)")
    submit.add_argument("--json", action="store_true",
                        help="print {run_id, run_dir, queue, reused, state} as one JSON line")
    submit.add_argument("--ray", metavar="ADDRESS", help="train it as a task on this Ray cluster instead of the "
                        "local worker (default $BACKDOOR_LAB_RAY_ADDRESS; the runs root must be shared by every node)")
    submit.add_argument("--no-worker", action="store_true",
                        help="only queue: do not start a worker (the dashboard's starts when the app runs)")

    grid = sub.add_parser("matrix", help="the attack x defense grid over seeds (resumable), as CSV + Markdown")
    grid.add_argument("--datasets", nargs="+", default=["mnist5k"])
    grid.add_argument("--attacks", nargs="+", default=["all"], help="names, or all")
    grid.add_argument("--defenses", nargs="+", default=["all"],
                      help="names, or all; a defense may carry parameters: cbd:mi_weight=0,weighting=paper")
    grid.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    grid.add_argument("--poison-rates", "--poison-rate", nargs="+", type=float, default=[0.1], dest="poison_rates",
                      help="one or more fractions of the training set, e.g. 0.005 0.01 0.02 0.05 0.1 0.2 0.5")
    grid.add_argument("--epochs", type=int, help="epochs of every defense's main model (default: their own)")
    grid.add_argument("--device", default="auto")
    grid.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    grid.add_argument("--threads", type=int, help="CPU threads of every cell (part of each config; default: "
                      "the machine's cores, at most 8)")
    grid.add_argument("--out", help="runs root (default $BACKDOOR_LAB_RUNS or ./runs); tables go in its matrix/")
    grid.add_argument("--ray", metavar="ADDRESS", help="train every cell as a task on this Ray cluster (default "
                      "$BACKDOOR_LAB_RAY_ADDRESS; the runs root must be on a filesystem every node shares)")

    worker = sub.add_parser("worker", help="the dashboard's background worker: trains queued runs of one device")
    worker.add_argument("--root", help="runs root (default $BACKDOOR_LAB_RUNS or ./runs)")
    worker.add_argument("--device", default="cpu", help="the queue it serves: cpu, cuda, cuda:1, mps")
    worker.add_argument("--slot", type=int, default=0, help="which of the device's worker slots")
    worker.add_argument("--parent-pid", type=int, help="exit when idle once this process is gone")
    worker.add_argument("--exit-when-idle", action="store_true", help="return once the queue is empty")
    worker.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)  # the slot's lock, taken by the spawner

    report = sub.add_parser("report", help="write one run as a self-contained HTML report (figures inline)")
    report.add_argument("run_id", help="the run's id (its folder name under the runs root)")
    report.add_argument("--out", required=True, help="the HTML file to write")
    report.add_argument("--root", help="runs root (default $BACKDOOR_LAB_RUNS or ./runs)")

    lst = sub.add_parser("list", help="attacks, defenses and datasets with their parameters")
    lst.add_argument("--json", action="store_true")
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that describe one run: shared by `run` and `submit`, so both build the same config."""
    parser.add_argument("--dataset", default="mnist5k", help="mnist5k (offline), mnist, fashion-mnist, cifar10, gtsrb, npz")
    parser.add_argument("--npz", dest="npz_path", help="your own .npz (x, y[, is_poisoned]); implies --dataset npz")
    parser.add_argument("--data-root", help="where torchvision datasets live (default ~/.cache/backdoor-lab)")
    parser.add_argument("--download", action="store_true", help="download a torchvision dataset if missing")
    parser.add_argument("--attack", default="badnets")
    parser.add_argument("--poison-rate", type=float, default=0.1, help="fraction of the training set, in [0, 0.5]")
    parser.add_argument("--target-label", type=int, default=0)
    parser.add_argument("--defense", default="cbd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="epochs of the defense's main model (default: its own)")
    parser.add_argument("--model", help="cnn, preact-resnet18 or wrn-16-1 (default: by image size)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--attack-param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--defense-param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--threads", type=int, help="CPU threads for training (part of the config: it changes "
                        "the arithmetic; default: the machine's cores, at most 8)")
    parser.add_argument("--preset", help="a named run with a clear lesson (see `list`): it sets the dataset, "
                        "attack, poison rate, target label and defense; the other flags still apply")


def parse_assignments(items: list[str], flag: str) -> dict[str, Any]:
    """NAME=VALUE pairs; values are parsed as JSON when they can be (numbers, true, null), else text."""
    values: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise UserInputError(f"{flag}: expected NAME=VALUE, got {item!r}", flag)
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


def describe_registries() -> dict[str, Any]:
    from .attacks import ATTACKS
    from .data import DATASETS
    from .defenses import DEFENSES

    def params(owner, shape):
        defaults = owner.defaults(shape)
        return [{"name": p.name, "type": p.kind.__name__, "default": defaults.get(p.name), "help": p.help,
                 **({"range": [p.low, p.high]} if p.low is not None else {}),
                 **({"choices": list(p.choices)} if p.choices else {})} for p in owner.params]

    from .presets import PRESETS

    shape = (28, 28, 1)
    return {
        "presets": [{"name": p.name, "title": p.title, "look_for": p.look_for} for p in PRESETS.values()],
        "datasets": [{"name": d.name, "description": d.description, "image_shape": list(d.image_shape),
                      "classes": d.num_classes, "offline": d.offline} for d in DATASETS.values()],
        "attacks": [{"name": a.name, "description": a.description, "clean_label": a.clean_label,
                     "parameters (28x28 defaults)": params(a, shape)} for a in ATTACKS.values()],
        "defenses": [{"name": d.name, "description": d.description,
                      "parameters (28x28 defaults)": params(d, shape)} for d in DEFENSES.values()],
    }


def print_listing(listing: dict[str, Any]) -> None:
    print("Datasets")
    for d in listing["datasets"]:
        print(f"  {d['name']:<14} {d['description']}")
    print("\nPresets (--preset NAME)")
    for p in listing["presets"]:
        print(f"  {p['name']:<14} {p['title']}")
    for kind in ("attacks", "defenses"):
        print(f"\n{kind.capitalize()} (defaults shown for 28x28 images)")
        for item in listing[kind]:
            print(f"  {item['name']:<14} {item['description']}")
            for p in item["parameters (28x28 defaults)"]:
                extra = f" in {p['range']}" if "range" in p else (f" one of {p['choices']}" if "choices" in p else "")
                print(f"      {p['name']:<16} = {p['default']!s:<8} {p['type']}{extra}: {p['help']}")


class ProgressBar:
    """One line on stderr, redrawn in place: phase, epoch, a bar, and the last epoch's CA / ASR."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.last_metrics = ""
        self.interactive = self.stream.isatty()

    def __call__(self, event) -> None:
        if event.metrics is not None:
            m = event.metrics
            self.last_metrics = f"CA {m['clean_accuracy']:.3f} ASR {m['attack_success_rate']:.3f}"
        width = 24
        filled = int(round(event.fraction * width))
        line = (f"{event.phase:<5} epoch {max(event.epoch, 1)}/{event.epochs} "
                f"[{'#' * filled}{'.' * (width - filled)}] {self.last_metrics}")
        if self.interactive:
            self.stream.write("\r" + line.ljust(78))
        elif event.metrics is not None:  # in a log file: one line per finished epoch
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def format_table(summary: dict[str, Any]) -> str:
    rows = [("clean accuracy (CA)", summary["clean_accuracy"]),
            ("attack success rate (ASR)", summary["attack_success_rate"]),
            ("robust accuracy (RA)", summary["robust_accuracy"])]
    if summary.get("poison_detection_auroc") is not None:
        rows.append(("poison detection AUROC", summary["poison_detection_auroc"]))
    lines = [f"{summary['defense']} vs {summary['attack']} at {rate_percent(summary['poison_rate'])} on {summary['dataset']} "
             f"(seed {summary['seed']}, {summary['poisoned_samples']} poisoned of {summary['train_samples']})"]
    lines += [f"  {name:<27} {value:6.3f}" for name, value in rows]
    lines.append(f"  {'seconds':<27} {summary['seconds']:6.1f}  on {summary['device']}")
    lines.append(f"  run folder: {summary['run_dir']}")
    lines += [f"  note: {note}" for note in summary.get("notes", [])]
    return "\n".join(lines)


def config_from_args(args: argparse.Namespace):
    """The RunConfig that `run` and `submit` flags describe (not yet validated)."""
    import dataclasses

    from .config import RunConfig
    from .presets import preset_config

    config = RunConfig(
        dataset="npz" if args.npz_path else args.dataset, attack=args.attack, poison_rate=args.poison_rate,
        target_label=args.target_label, defense=args.defense, seed=args.seed, model=args.model,
        device=args.device, data_root=args.data_root, download=args.download, npz_path=args.npz_path,
        attack_params=parse_assignments(args.attack_param, "--attack-param"),
        defense_params=parse_assignments(args.defense_param, "--defense-param"), threads=args.threads,
    )
    if args.preset:
        preset = preset_config(args.preset)
        config = dataclasses.replace(
            config, dataset=preset.dataset, npz_path=None, attack=preset.attack, poison_rate=preset.poison_rate,
            target_label=preset.target_label, defense=preset.defense,
            attack_params={**preset.attack_params, **config.attack_params})
    return config.with_epochs(args.epochs)


def command_submit(args: argparse.Namespace) -> int:
    """Validate exactly as `run` does, queue the run under the runs root, print its id, exit. Unless
    --no-worker, a worker is started for its device if none serves it (it trains the queue, then
    stops by itself once idle, since this process is gone). Like the dashboard's Start, a config that
    is already queued, running or done is not queued again: its run's id is printed, and stderr says so."""
    from .jobs import submit_once
    from .runs import check_writable_root, to_json

    check_writable_root(args.out)  # before any data is loaded
    run, reused, state = submit_once(config_from_args(args), args.out, start_worker=not args.no_worker, ray=args.ray)
    if reused:
        print(f"an identical run (same settings and seed) is already {state}: {run.run_id}; nothing new was "
              "queued (change the seed, or use `run`, to train it again)", file=sys.stderr)
    if args.json:
        print(to_json({"run_id": run.run_id, "run_dir": str(run.path), "queue": run.status().get("queue"),
                       "reused": reused, "state": state}))
    else:
        print(run.run_id)
    return 0


def command_run(args: argparse.Namespace) -> int:
    from .pipeline import train_run
    from .progress import Cancelled
    from .runs import check_writable_root, to_json

    check_writable_root(args.out)  # a file or a read-only folder is found before any data is loaded
    bar = ProgressBar()
    started: list = []
    try:  # the dashboard's Cancel works on a CLI run too: train_run watches the same cancel file a worker does
        run, summary = train_run(config_from_args(args), args.out, progress=bar, on_start=started.append)
    except Cancelled:
        bar.close()
        print(f"cancelled; partial run kept in {started[0].path}", file=sys.stderr)
        return 130
    finally:
        bar.close()
    from .verdicts import summary_fields

    # Judged now, against the baseline that exists now (summary.json holds only the figures).
    summary = {**summary, **summary_fields(summary, run.config(), run.path.parent)}
    print(format_table(summary), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(to_json(summary))
    return 0


def command_report(args: argparse.Namespace) -> int:
    """Write the run's HTML report to --out (a run that has not finished gets one too, saying so)."""
    from pathlib import Path

    from .report import html_report
    from .runs import RunDir, runs_root

    run = RunDir.open(runs_root(args.root), args.run_id)
    out = Path(args.out)
    if out.is_dir():
        raise UserInputError(f"out: {out} is a folder; give the HTML file's name", "out")
    try:
        out.write_text(html_report(run), encoding="utf-8")
    except OSError as err:
        raise UserInputError(f"out: cannot write {out} ({err.strerror or err})", "out") from None
    state = run.status().get("state")
    print(f"wrote {out} (run {run.run_id}, {state})", file=sys.stderr)
    return 0


def command_matrix(args: argparse.Namespace) -> int:
    from .attacks import ATTACKS
    from .defenses import DEFENSES
    from .matrix import Cell, DefenseSpec, run_matrix, write_tables
    from .runs import check_writable_root, runs_root
    from .verdicts import UNDEFENDED

    check_writable_root(args.out)
    attacks = list(ATTACKS) if args.attacks == ["all"] else args.attacks
    specs = [DefenseSpec(d) for d in DEFENSES] if args.defenses == ["all"] else \
        [DefenseSpec.parse(d) for d in args.defenses]
    if args.jobs < 1:
        raise UserInputError(f"jobs: {args.jobs} must be at least 1", "jobs")
    # The undefended cell of each (data, rate, seed) runs before the defenses on it, so their summaries
    # record it as their baseline when they finish.
    specs.sort(key=lambda spec: spec.name != UNDEFENDED)
    cells = [Cell(dataset, attack, spec, seed, rate)
             for dataset in args.datasets for attack in attacks for rate in args.poison_rates
             for seed in args.seeds for spec in specs]
    failures: list = []  # a failed cell does not stop the grid: the tables hold the others, the exit code says so
    results = run_matrix(cells, args.out, jobs=args.jobs, epochs=args.epochs, device=args.device, threads=args.threads,
                         report=lambda line: print(line, file=sys.stderr, flush=True), ray=args.ray, failures=failures)
    csv_path, md_path, markdown = write_tables(results, runs_root(args.out) / "matrix")
    print(markdown)
    print(f"\nwritten: {csv_path} and {md_path}", file=sys.stderr)
    if failures:
        print(f"error: {len(failures)} of {len(cells)} cells failed (the tables hold the other "
              f"{len(results)}; run the same command again to retry them):", file=sys.stderr)
        for cell, reason in failures:
            print(f"  {cell.dataset} {cell.attack} {cell.defense.label} seed {cell.seed}: {reason}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        if args.command == "list":
            listing = describe_registries()
            print(json.dumps(listing)) if args.json else print_listing(listing)
            return 0
        if args.command == "matrix":
            return command_matrix(args)
        if args.command == "submit":
            return command_submit(args)
        if args.command == "report":
            return command_report(args)
        if args.command == "worker":
            from .jobs import worker_main

            return worker_main(args.root, args.device, args.slot, args.parent_pid, args.exit_when_idle, args.lock_fd)
        return command_run(args)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunGone as err:
        print(f"error: {err} (deleted while it trained); nothing more was written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: one line here, the traceback in the run folder
        print(f"error: internal error ({type(err).__name__}: {err}); if a run folder was created, its "
              f"error.txt has the traceback", file=sys.stderr)
        return 1
