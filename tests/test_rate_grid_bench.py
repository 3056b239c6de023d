"""bench/rate_grid.py's README block: one row per attack and rate, from finished runs, between markers."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from cbd_core.rate_grid import GridPoint

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("rate_grid_bench", ROOT / "bench" / "rate_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point(defense, seed, asr, ca, verdict, rate=0.01, attack="blend"):
    return GridPoint("mnist5k", attack, defense, rate, seed, ca, asr, verdict, f"{defense}-{seed}-{rate}",
                     defense_name="cbd" if defense == "CBD" else "undefended")


def test_compact_table_counts_held_and_made_worse_against_the_same_seeds_baseline():
    bench = _bench()
    points = [_point("Undefended", s, 0.98, 0.97, "") for s in range(3)]
    points.append(_point("Undefended", 3, 0.10, 0.97, ""))  # a seed no defense has: not in the row's baseline
    points += [_point("CBD", 0, 0.01, 0.965, "removed"),  # held: ASR <= 2 %, CA 0.5 points below
               _point("CBD", 1, 0.01, 0.94, "removed"),  # ASR low but CA 3 points below: not held
               _point("CBD", 2, 0.99, 0.97, "made worse")]
    points.append(_point("CBD", 0, 0.5, 0.97, "reduced", attack="badnets"))  # no undefended twin
    table = bench.compact_tables(points, ["mnist5k"], ["badnets", "blend"], [0.01])
    rows = [line for line in table.splitlines() if line.startswith("| blend")]
    assert rows == ["| blend | 1 % | 3 | 98.0 [98.0–98.0] | 1.0 [1.0–99.0] | 1/3 | 1 |"]
    assert "| badnets | 1 % | 1 | – | 50.0 | n/a | 0 |" in table


def test_readme_block_is_replaced_between_its_markers_only(tmp_path):
    bench = _bench()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.README_START}\nold table\n{bench.README_END}\noutro\n")
    bench.replace_between_markers(readme, "new table\n")
    assert readme.read_text() == f"intro\n{bench.README_START}\nnew table\n{bench.README_END}\noutro\n"
    readme.write_text("no block here\n")
    with pytest.raises(SystemExit):
        bench.replace_between_markers(readme, "x")


def test_the_readme_holds_a_generated_rate_grid():
    """README's rate grid is the script's output with its date and command, not a hand-typed table."""
    bench = _bench()
    text = (ROOT / "README.md").read_text()
    block = text[text.index(bench.README_START) + len(bench.README_START):text.index(bench.README_END)]
    assert re.match(r"\nGenerated \d{4}-\d{2}-\d{2} by `python bench/rate_grid\.py [^`]*--readme README\.md[^`]*`\.",
                    block)
    assert re.search(r"^\| attack \| rate \| (\S+ )?seeds \| (\S+ )?undefended ASR \|", block, re.M)


def test_evaluation_sets_train_from_their_files_and_are_the_same_whichever_are_built(tmp_path):
    """`--datasets mnist2k` trains on bench/eval_datasets.py's file (grouped by its stem), and building one
    set alone draws it exactly as building them all does."""
    import numpy as np

    bench = _bench()
    sources = bench.dataset_sources(["mnist5k", "mnist2k"], tmp_path / "alone")
    assert sources["mnist5k"] == "mnist5k"
    alone = Path(sources["mnist2k"])
    assert alone.stem == "mnist2k" and alone.parent == tmp_path / "alone" / "datasets"
    every = bench.eval_datasets.build(tmp_path / "every")
    assert set(every) == set(bench.eval_datasets.NAMES)
    with np.load(alone) as a, np.load(every["mnist2k"]) as b:
        assert np.bincount(a["y"]).tolist() == [200] * 10
        for key in ("x", "y", "x_test", "y_test"):
            assert np.array_equal(a[key], b[key])


def test_compact_table_puts_the_datasets_side_by_side_row_by_row():
    """The rate x size grid in one table: each (attack, rate) row holds every dataset's group, and a rate
    one dataset lacks is shown empty there rather than dropped."""
    bench = _bench()

    def on(dataset, defense, seed, asr, rate=0.01):
        point = _point(defense, seed, asr, 0.97, "removed" if defense == "CBD" else "", rate=rate)
        return dataclasses.replace(point, dataset=dataset)

    points = [on("mnist5k", "Undefended", 0, 0.98), on("mnist5k", "CBD", 0, 0.01),
              on("mnist2k", "Undefended", 0, 0.90), on("mnist2k", "CBD", 0, 0.30),
              on("mnist5k", "Undefended", 0, 1.0, rate=0.5), on("mnist5k", "CBD", 0, 0.02, rate=0.5)]
    table = bench.compact_tables(points, ["mnist5k", "mnist2k"], ["blend"], [0.01, 0.5])
    assert ("| attack | rate | mnist5k seeds | mnist5k undefended ASR | mnist5k CBD ASR | held | worse "
            "| mnist2k seeds | mnist2k undefended ASR | mnist2k CBD ASR | held | worse |") in table
    assert "| blend | 1 % | 1 | 98.0 | 1.0 | 1/1 | 0 | 1 | 90.0 | 30.0 | 0/1 | 0 |" in table
    assert "| blend | 50 % | 1 | 100.0 | 2.0 | 1/1 | 0 | 0 | – | – | – | – |" in table


def test_the_tables_hold_only_the_defenses_asked_for():
    """Other experiments' runs in the same root (a variant nobody asked to tabulate) stay out of the tables."""
    bench = _bench()
    points = [_point("Undefended", 0, 0.98, 0.97, ""), _point("CBD", 0, 0.01, 0.97, "removed"),
              _point("CBD (max_weight=1.0)", 0, 0.5, 0.97, "persists"),
              _point("CBD (shortcut_cut=3.0)", 0, 0.02, 0.97, "removed")]
    assert [p.defense for p in bench.asked_for(points, ["cbd"])] == ["Undefended", "CBD"]
    assert [p.defense for p in bench.asked_for(points, ["cbd:shortcut_cut=3"])] == ["Undefended",
                                                                                  "CBD (shortcut_cut=3.0)"]
