"""What CBD's opt-in `contradicted` rule left out in each run of a grid, beside the run's outcome.

    python bench/left_out.py --out /tmp/rg
    python bench/left_out.py --out /tmp/rg --datasets mnist2k --rates 0.005 0.01 --write bench/results/left_out.md

Reads the finished runs under --out (trained by bench/rate_grid.py with `--defenses
cbd:contradicted=leave_out cbd:contradicted=probes`); trains nothing. One row per run: the rule
("leave_out": out of every epoch; "probes": out of the probes only; ", by label" with
`contradicted_read=label`; ", scale kept" with `contradicted_scale=with`), the f_B step it read (the
first checkpoint where f_B fitted a typical image; by label, the range of the steps where each label was
read), how many training images it marked and how many of those
were poisoned (the true mask is only used to score, from the run's `contradicted_report`), the poisoned
images in the set, the run's ASR beside the undefended run's of the same seed and the default CBD run's
(when there is one), and its CA beside the undefended run's. Rows are sorted by dataset, attack, rate,
seed and rule.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its neighbour rate_grid

import rate_grid as rate_grid_bench  # noqa: E402

from cbd_core import rate_grid  # noqa: E402
from cbd_core.runs import RunDir  # noqa: E402

PREFIX = "CBD (contradicted="  # the rule's grid lines (`rate_grid.defense_label`): "CBD (contradicted=probes)"


def asr_text(point) -> str:
    return "–" if point is None else f"{100 * point.attack_success_rate:.1f}"


def ca_text(point) -> str:
    return "–" if point is None else f"{100 * point.clean_accuracy:.1f}"


def rule_text(guard: dict) -> str:
    """"leave_out" / "probes", with ", by label" where each label was read where f_B knew its digit and
    ", scale kept" where the samples left out kept their place in their class's mean weight."""
    return (f"{guard.get('contradicted')}" + (", by label" if guard.get("contradicted_read") == "label" else "")
            + (", scale kept" if guard.get("contradicted_scale") == "with" else ""))


def step_text(guard: dict) -> str:
    """The f_B step read; by label, the range of the labels' steps after it ("64 (labels 64-112)")."""
    first = guard.get("contradicted_at_step", "–")
    steps = [s for s in (guard.get("contradicted_label_steps") or {}).values() if s is not None]
    return f"{first} (labels {min(steps)}–{max(steps)})" if steps else f"{first}"


def rows(root: Path, datasets: list[str] | None, rates: list[float] | None) -> list[str]:
    points = rate_grid.grid_points(root)
    by_line = {(p.dataset, p.attack, p.poison_rate, p.seed, p.line): p for p in points}
    out = []
    ours = [p for p in points if p.line.startswith(PREFIX)]
    for p in sorted(ours, key=lambda p: (p.dataset, p.attack, p.poison_rate, p.seed, p.line)):
        wanted_rate = not rates or any(abs(p.poison_rate - r) < 1e-12 for r in rates)
        if datasets and p.dataset not in datasets or not wanted_rate:
            continue
        summary = RunDir(root / p.run_id).summary()
        guard = summary.get("weight_guard") or {}
        report = guard.get("contradicted_report") or {}
        poisoned = int(summary.get("poisoned_samples") or 0)
        caught = round((report.get("recall") or 0) * poisoned)
        key = (p.dataset, p.attack, p.poison_rate, p.seed)
        undefended = by_line.get((*key, rate_grid.UNDEFENDED_LABEL))
        out.append(f"| {p.dataset} | {p.attack} | {100 * p.poison_rate:g} % | {p.seed} "
                   f"| {rule_text(guard)} | {step_text(guard)} "
                   f"| {report.get('samples', '–')} | {caught} / {poisoned} "
                   f"| {asr_text(undefended)} | {asr_text(by_line.get((*key, 'CBD')))} | {asr_text(p)} "
                   f"| {ca_text(undefended)} | {ca_text(p)} | {p.verdict} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="runs root of the grid")
    parser.add_argument("--datasets", nargs="+", help="only these datasets (default: all)")
    parser.add_argument("--rates", nargs="+", type=float, help="only these poison rates (default: all)")
    parser.add_argument("--write", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    header = ("| dataset | attack | rate | seed | rule | f_B step read | marked | poisoned among them "
              "| ASR undefended | ASR CBD (default) | ASR with the rule | CA undefended | CA with the rule | verdict |")
    table = "\n".join([header, "|---" * header.count(" | ") + "|---|", *rows(args.out, args.datasets, args.rates)])
    print(table)
    if args.write:
        rate_grid_bench.write_generated(args.write, "bench/left_out.py", "\n" + table)


if __name__ == "__main__":
    main()
