"""What each preset shows, measured: CBD with its defaults against the undefended model, per seed.

    python bench/presets.py --out /tmp/cbd-targets                  # seeds 0-4 (~1 h on 2 cores)
    python bench/presets.py --out /tmp/cbd-targets --seeds 0 1 2 --extra "sig 0.1" "sig 0.025"

Every preset of cbd_core/presets.py is trained undefended and with CBD through `matrix` (cells
already under --out are reused: point it at bench/cbd_targets.py's root to share the runs). `--extra`
adds rows for other attack/rate pairs (SIG at 10% and 2.5% show why the preset uses 5%). Prints a
Markdown table: ASR in % and CA as median [min–max] over seeds, the verdicts, and on how many seeds
f_B's loss singled out the poison (cbd_core.capture). The presets' rows are also written, with the date
and this command, to cbd_core.presets.MEASURED_FILE (bench/results/presets.json, or --results): the
only place the Lesson takes figures across seeds from.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbd_targets import spread  # noqa: E402

from cbd_core.matrix import Cell, DefenseSpec, run_matrix  # noqa: E402
from cbd_core.capture import read_f_b  # noqa: E402
from cbd_core.presets import MEASURED_FILE, PRESETS  # noqa: E402
from cbd_core.runs import write_json  # noqa: E402
from cbd_core.verdicts import verdict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="runs root (reused: finished cells are kept)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--extra", nargs="*", default=[], metavar="'ATTACK RATE'")
    parser.add_argument("--results", type=Path, default=MEASURED_FILE, help="where the presets' rows are written")
    args = parser.parse_args()

    rows = [(p.name, p.attack, p.poison_rate) for p in PRESETS.values()]
    rows += [("-", attack, float(rate)) for attack, rate in (item.split() for item in args.extra)]
    undefended, cbd = DefenseSpec("undefended"), DefenseSpec("cbd")
    for name, *_ in rows:
        if name != "-" and PRESETS[name].attack_params:
            raise SystemExit(f"preset {name} has attack parameters, which matrix cells cannot carry yet")
    cells = [Cell("mnist5k", attack, spec, seed, rate)
             for _, attack, rate in rows for seed in args.seeds for spec in (undefended, cbd)]
    results = dict(run_matrix(cells, args.out, report=lambda line: print(line, file=sys.stderr, flush=True)))

    print(f"\nPresets on mnist5k, target label 0, seeds {' '.join(map(str, args.seeds))}: CBD with its defaults "
          "against the undefended model (ASR in %, median [min–max])")
    print("| preset | attack | rate | undefended ASR | CBD ASR | undefended CA | CBD CA | CBD verdicts "
          "| f_B's loss singled out the poison |")
    print("|---|---|---|---|---|---|---|---|---|")
    written = []
    for name, attack, rate in rows:
        base = [results[Cell("mnist5k", attack, undefended, s, rate)] for s in args.seeds]
        ours = [results[Cell("mnist5k", attack, cbd, s, rate)] for s in args.seeds]
        verdicts = Counter(verdict(o) for o in ours)
        captured = sum(bool(read_f_b(o).singled_out) for o in ours)
        if name != "-":
            written.append({"preset": name, "attack": attack, "rate": rate,
                            "undefended_asr": [b["attack_success_rate"] for b in base],
                            "cbd_asr": [o["attack_success_rate"] for o in ours],
                            "undefended_ca": [b["clean_accuracy"] for b in base],
                            "cbd_ca": [o["clean_accuracy"] for o in ours],
                            "cbd_verdicts": dict(verdicts.most_common()), "singled_out": captured})
        print(f"| {name} | {attack} | {rate:.1%} | {spread([b['attack_success_rate'] for b in base], True)} "
              f"| {spread([o['attack_success_rate'] for o in ours], True)} "
              f"| {spread([b['clean_accuracy'] for b in base])} | {spread([o['clean_accuracy'] for o in ours])} "
              f"| {', '.join(f'{v} {n}' for v, n in verdicts.most_common())} | {captured}/{len(ours)} |")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.results, {"written": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "seeds": args.seeds,
                              "command": "python " + shlex.join(["bench/presets.py"] + sys.argv[1:]), "rows": written})
    print(f"\nwrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
