"""The Explorer in real headless Chromium over a small real grid of finished runs: tiny BadNets runs at
5 % and 10 % and WaNet at 10 %, each undefended and with CBD, trained on 1,000 / 200 images of mnist5k
(conftest's `train_runs`, the shared finished runs reused for BadNets 10 %), each with its maps as the
worker would make them. The test moves the rate slider and the attack control, first to cells not seen
yet and then twice round every cell again (answered from the page's caches), and checks that each switch
draws the run of the cell it went to, with its three charts and no exception. It times nothing:
`bench/explorer.py` plays the same switches and prints how long each took."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from cbd_core.analysis.embeddings import compute_umap, configure_numba_cache
from cbd_core.config import RunConfig
from cbd_core.runs import RunDir
from conftest import FINISHED_RUN_PARAMS, small_subset, train_runs
from streamlit_server import ROOT, running_app

sys.path.insert(0, str(ROOT / "bench"))
from explorer import CELLS, ROUND, play_switches  # noqa: E402  (the switches the benchmark times)

ARTIFACTS = ROOT / "test-artifacts" / "explorer"


@pytest.fixture(scope="module")
def grid_server(tmp_path_factory, finished_runs, mnist5k):
    configure_numba_cache()
    source, shared = finished_runs
    root = tmp_path_factory.mktemp("explorer_grid")
    ids = {("badnets", 0.1, d): shared[d] for d in ("cbd", "undefended")}
    for run_id in ids.values():
        shutil.copytree(source / run_id, root / run_id)
    configs = {(attack, rate, d): RunConfig(dataset="mnist5k", attack=attack, poison_rate=rate, defense=d, seed=0,
                                            device="cpu", embedding_samples=300, defense_params=FINISHED_RUN_PARAMS[d])
               for attack, rate in CELLS if (attack, rate) != ("badnets", 0.1) for d in ("cbd", "undefended")}
    ids.update(train_runs(root, configs, small_subset(*mnist5k, 1000, 200)))
    for run_id in ids.values():
        compute_umap(RunDir(root / run_id))
    with running_app(root) as url:
        yield url, ids


def test_every_switch_draws_the_run_of_its_cell(grid_server):
    url, ids = grid_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # play_switches waits at each switch until the cell's own run id is in the caption and its three charts
    # are drawn (60 s at most, else it raises), so a switch that showed another run's figures fails here
    records = play_switches(url, ids, screenshot=ARTIFACTS / "explorer.png")
    (ARTIFACTS / "switch_times.json").write_text(json.dumps(records, indent=1))
    assert [r for r in records if r["exception"]] == []
    assert {r["cell"] for r in records} == {f"{a}/{r}/cbd" for a, r in CELLS}
    assert sum(r["revisit"] for r in records[-2 * ROUND:]) == 2 * ROUND  # the last two rounds revisit seen cells
