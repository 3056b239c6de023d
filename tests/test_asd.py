"""ASD: the three splits, the symmetric cross-entropy they rank by, and a real tiny run whose polluted pool
gathers the poison, recorded epoch by epoch and shown by the Sample weights page."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbd_core.defenses import DEFENSES
from cbd_core.defenses.asd import class_aware_split, lowest_share, sce_loss, stage_of
from conftest import app_at_page, small_subset, train_runs


def test_registered_with_its_view():
    asd = DEFENSES["asd"]
    assert asd.sample_view.flagged == "polluted" and asd.sample_view.suspicious == "high"
    assert set(asd.phase_titles) == {"warmup", "split", "meta"}


def test_sce_is_ce_plus_a_bounded_reverse_term():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    labels = torch.tensor([0, 0])
    p_label = torch.softmax(logits, 1)[torch.arange(2), labels]
    expected = 0.1 * torch.nn.functional.cross_entropy(logits, labels, reduction="none") \
        - np.log(1e-4) * (1 - p_label)
    torch.testing.assert_close(sce_loss(logits, labels, 0.1, 1.0), expected, rtol=1e-4, atol=1e-4)
    assert sce_loss(logits, labels, 0.1, 1.0)[1] > sce_loss(logits, labels, 0.1, 1.0)[0]  # wrong label: higher


def test_class_aware_split_takes_the_seeds_and_the_lowest_of_every_class():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    losses = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.7, 0.05, 0.3])
    clean = class_aware_split(losses, labels, seeds=np.array([0, 4]), per_class=1)
    assert np.flatnonzero(clean).tolist() == [0, 1, 4, 6]  # seeds 0 and 4, then class 0's 1 and class 1's 6
    assert class_aware_split(losses, labels, np.array([0, 4]), 0).sum() == 2


def test_lowest_share_and_the_stage_boundaries():
    assert np.flatnonzero(lowest_share(np.array([3.0, 1.0, 2.0, 0.0]), 0.5)).tolist() == [1, 3]
    stages = [stage_of(e, 12, 0.5, 0.75) for e in range(1, 13)]
    assert stages == ["warmup"] * 6 + ["split"] * 3 + ["meta"] * 3  # the code's 60 / 90 / 120


@pytest.fixture(scope="module")
def asd_run(tmp_path_factory, mnist5k):
    from cbd_core.config import RunConfig

    root = tmp_path_factory.mktemp("asd_runs")
    config = RunConfig(dataset="mnist5k", attack="badnets", poison_rate=0.1, defense="asd", seed=0, device="cpu",
                       embedding_samples=100, defense_params={"epochs": 4, "growth": 10})
    ids = train_runs(root, {"asd": config}, small_subset(*mnist5k, 800, 200))
    from cbd_core.runs import RunDir

    return root, RunDir(root / ids["asd"])


@pytest.mark.slow
def test_the_polluted_pool_gathers_the_poison(asd_run):
    _, run = asd_run
    record = run.arrays("sample_weights")
    poisoned = record["is_poisoned"].astype(bool)
    polluted = record["polluted"]
    assert polluted.shape == record["split_score"].shape == (4, 800)  # one row per epoch
    # every epoch the polluted pool holds a higher share of poison than the data does; once half the set
    # is split by loss (stage 2), well above it
    shares = [poisoned[row].mean() for row in polluted.astype(bool)]
    assert min(shares) > poisoned.mean() and shares[2] > 1.5 * poisoned.mean(), shares
    # stages 2-4: half the set is clean pool; stage 1: the seeds plus `growth` per class (epoch 1: seeds only)
    assert (~polluted[0].astype(bool)).sum() == 10 * 10 and (~polluted[-1].astype(bool)).sum() == 400
    summary = run.summary()
    last = polluted[-1].astype(bool)  # the summary describes the last pool (from the mask, outside the defense)
    assert summary["polluted_precision"] == pytest.approx(poisoned[last].mean())
    assert summary["polluted_recall"] == pytest.approx(last[poisoned].mean())
    assert summary["clean_pool_poison_share"] == pytest.approx(poisoned[~last].mean())
    phases = [line["phase"] for line in run.metrics()]
    assert phases == ["warmup", "warmup", "split", "meta"]


@pytest.mark.slow
@pytest.mark.usefixtures("no_worker")
def test_the_sample_weights_page_moves_through_the_pools(asd_run, monkeypatch):
    root, run = asd_run
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    at = app_at_page("sample_weights", run.run_id).run()
    assert not at.exception and not at.error
    assert (at.slider[0].min, at.slider[0].max) == (1, 4)
    polluted = run.arrays("sample_weights")["polluted"].astype(bool)
    assert at.metric[0].label == "Polluted samples" and at.metric[0].value == f"{int(polluted[-1].sum()):,}"
    at.slider[0].set_value(1).run()
    assert at.metric[0].value == f"{int(polluted[0].sum()):,}"
