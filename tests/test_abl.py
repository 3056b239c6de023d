"""ABL: the local-gradient-ascent loss, the isolation of low-loss samples, and a run end to end on
small stratified subsets of mnist5k (see `patch_dataset` in conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbd_core.config import RunConfig
from cbd_core.defenses import DEFENSES, DefenseContext, get_defense
from cbd_core.defenses.abl import ABL, complement_loss, isolate_lowest, lga_loss, unlearn_epoch, window_loss
from cbd_core.errors import UserInputError
from cbd_core.metrics import auroc
from cbd_core.models import build_model
from cbd_core.pipeline import execute, prepare
from cbd_core.runs import RunDir
from cbd_core.training import EvalSets, Tensors, arithmetic


def _config(**overrides) -> RunConfig:
    values = dict(dataset="mnist5k", attack="badnets", poison_rate=0.1, target_label=0, defense="abl",
                  seed=0, device="cpu", embedding_samples=100)
    values.update(overrides)
    return RunConfig(**values)


# -- the loss and the isolation rule ---------------------------------------------------------------

@pytest.mark.parametrize("value, sign", [(0.8, 1.0), (2.0, 1.0), (0.3, -1.0), (0.01, -1.0)])
def test_lga_loss_flips_sign_at_gamma(value, sign):
    loss = torch.tensor(value, requires_grad=True)
    out = lga_loss(loss, 0.5)
    out.backward()
    assert out.item() == pytest.approx(sign * value)
    assert loss.grad.item() == pytest.approx(sign)  # descent above gamma, ascent below


def test_lga_loss_gradient_through_a_model():
    # Above gamma a step along -grad lowers the cross-entropy; below gamma it raises it.
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    model = torch.nn.Linear(4, 3)
    ce = torch.nn.functional.cross_entropy(model(x), y)
    for gamma, expect_lower in ((ce.item() - 0.5, True), (ce.item() + 0.5, False)):
        model.zero_grad()
        lga_loss(torch.nn.functional.cross_entropy(model(x), y), gamma).backward()
        with torch.no_grad():
            moved = torch.nn.Linear(4, 3)
            moved.weight.copy_(model.weight - 0.05 * model.weight.grad)
            moved.bias.copy_(model.bias - 0.05 * model.bias.grad)
            after = torch.nn.functional.cross_entropy(moved(x), y).item()
        assert (after < ce.item()) == expect_lower


def test_isolate_lowest():
    losses = np.array([0.5, 0.01, 3.0, 0.02, 0.02, 1.0, 0.9, 0.8, 0.7, 0.6], dtype=np.float32)
    np.testing.assert_array_equal(np.flatnonzero(isolate_lowest(losses, 0.3)), [1, 3, 4])
    assert isolate_lowest(losses, 0.001).sum() == 1  # at least one
    assert isolate_lowest(losses, 0.25).sum() == 2  # int(N * ratio), as the official code


def test_window_loss_is_the_geometric_mean_over_the_second_half():
    epochs = [np.array([9.0, 9.0]), np.array([1e-4, 1.0]), np.array([1e-2, 1.0]), np.array([1.0, 1e-6])]
    np.testing.assert_array_equal(window_loss(epochs, "last"), epochs[-1])
    # epochs 3 and 4: sample 0 sqrt(1e-2 * 1) = 0.1, sample 1 sqrt(1 * 1e-6) = 1e-3; epoch 2 is outside
    np.testing.assert_allclose(window_loss(epochs, "window"), [0.1, 1e-3], rtol=1e-6)
    assert window_loss(epochs, "window").dtype == np.float32
    # one shaken epoch does not reorder a sample that is low in the others, where "last" would
    # (sample 0 is at 1e-5 but shaken to 1e-1 in the last epoch; sample 1 sits at 1e-3, then 1e-2)
    pair = [np.array([1e-5, 1e-3]), np.array([1e-5, 1e-3]), np.array([1e-5, 1e-3]), np.array([1e-1, 1e-2])]
    assert np.argmin(window_loss(pair, "last")) == 1 and np.argmin(window_loss(pair, "window")) == 0
    # a loss that rounds to exactly 0 in float32 stays the lowest, with a finite score
    zeros = window_loss([np.array([0.0, 1e-3]), np.array([0.0, 1e-3])], "window")
    assert np.all(np.isfinite(zeros)) and zeros[0] < zeros[1]
    assert window_loss([np.array([0.3, 0.2])], "window") == pytest.approx([0.3, 0.2])  # one epoch: itself


def test_ranks_weigh_every_epoch_alike():
    # Sample 0 is lowest in epoch 3 by thirty decades and highest in epoch 4; sample 1 is low in both.
    # The geometric mean lets the one extreme epoch decide (sample 0); the mean rank does not (sample 1).
    epochs = [np.array([5.0, 5.0, 5.0]), np.array([5.0, 5.0, 5.0]),
              np.array([1e-30, 1e-3, 1e-2]), np.array([1.0, 1e-3, 1e-2])]
    np.testing.assert_allclose(window_loss(epochs, "ranks"), [1.0, 0.5, 1.5])
    assert np.argmin(window_loss(epochs, "window")) == 0 and np.argmin(window_loss(epochs, "ranks")) == 1
    assert window_loss(epochs, "ranks").dtype == np.float32
    # losses that round to the same value (a trigger fitted to exactly 0) share the lowest rank
    tied = window_loss([np.array([0.0, 0.0, 1e-3]), np.array([0.0, 0.0, 1e-3])], "ranks")
    np.testing.assert_array_equal(tied, [0.0, 0.0, 2.0])


def test_complement_loss_is_minus_log_one_minus_p():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    p = torch.softmax(logits, 1)[[0, 1], labels]
    out = complement_loss(logits, labels)
    assert out.item() == pytest.approx(-torch.log1p(-p).mean().item(), rel=1e-5)
    out.backward()
    # d/dz_y of -log(1 - p_y) is p_y: the label's logit is pushed down, halved by the mean
    np.testing.assert_allclose(logits.grad[[0, 1], labels].numpy(), (p / 2).detach().numpy(), rtol=1e-5)


def test_complement_loss_keeps_its_gradient_when_the_fit_saturates():
    # A margin of 40: p_y rounds to 1 in float32, the cross-entropy and its gradient vanish, the
    # complement loss is still exact (about the margin) with a gradient of about 1 on the label.
    logits = torch.tensor([[40.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    ce.backward()
    assert ce.item() < 1e-12 and logits.grad.abs().max().item() < 1e-12
    logits.grad = None
    out = complement_loss(logits, labels)
    out.backward()
    assert out.item() == pytest.approx(40 - np.log(2), rel=1e-4)
    assert logits.grad[0, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_registered_with_params():
    abl = get_defense("abl")
    assert isinstance(abl, ABL) and DEFENSES["abl"] is abl and abl.title == "ABL"
    p = abl.resolve((28, 28, 1), None)
    assert p["gamma"] == 0.5 and p["isolation_ratio"] == 0.01 and p["unlearn_lr"] == 5e-4
    assert abl.total_epochs(p) == p["isolation_epochs"] + p["epochs"] + p["unlearn_epochs"]
    assert abl.resolve((28, 28, 1), {"unlearn_epochs": 0})["unlearn_epochs"] == 0
    # the faithful path is the default; the variants are opt-in
    assert (p["unlearn_objective"], p["unlearn_loss"], p["reisolation_ratio"]) == ("isolated", "ce", 0.0)
    with pytest.raises(UserInputError, match="abl.unlearn_loss"):
        abl.resolve((28, 28, 1), {"unlearn_loss": "hinge"})
    with pytest.raises(UserInputError, match="abl.isolation_ratio"):
        abl.resolve((28, 28, 1), {"isolation_ratio": 0.9})
    assert _config(defense_params={"epochs": 3}).validated((28, 28, 1), 10).defense_params["epochs"] == 3


# -- isolation on a set where the poison is obvious ------------------------------------------------

def _toy_context(n: int = 600, planted: int = 60, seed: int = 0, **params):
    """Noise images with random labels (nothing to learn but memorisation) and `planted` of them
    carrying a white 4x4 corner patch and label 0: only the planted ones can reach a low loss."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.5
    y = torch.randint(0, 10, (n,), generator=g)
    mask = np.zeros(n, dtype=bool)
    mask[torch.randperm(n, generator=g)[:planted].numpy()] = True
    x[torch.from_numpy(mask), :, -4:, -4:] = 1.0
    y[torch.from_numpy(mask)] = 0
    test_x = torch.rand(50, 1, 28, 28, generator=g) * 0.5
    test_y = torch.randint(0, 10, (50,), generator=g)
    triggered = test_x.clone()
    triggered[:, :, -4:, -4:] = 1.0
    eval_sets = EvalSets(Tensors(test_x, test_y), Tensors(triggered, torch.zeros(50, dtype=torch.long)),
                         test_y.numpy(), 0)
    lines: list[dict] = []
    builds = iter(range(100))

    def build():
        torch.manual_seed(seed * 7919 + next(builds))
        return build_model("cnn", 1, 10)

    defaults = ABL().resolve((28, 28, 1), None)
    ctx = DefenseContext(train=Tensors(x, y), build_model=build, params={**defaults, **params},
                         augmentation={"pad": 2, "flip": False}, seed=seed, device=torch.device("cpu"),
                         progress=lambda event: None, _eval_sets=eval_sets, _poison_mask=mask, _log=lines.append)
    return ctx, mask, lines


def test_isolates_planted_low_loss_samples():
    ctx, mask, lines = _toy_context(isolation_epochs=3, isolation_ratio=0.05, epochs=1, unlearn_epochs=1,
                                    batch_size=32, lr=0.05)
    result = ABL().train(ctx)
    isolated = result.sample_record["isolated"]
    assert isolated.sum() == 30  # 5% of 600
    assert result.summary["isolated_count"] == 30
    assert result.summary["isolated_precision"] >= 0.9
    assert result.summary["isolated_precision"] == pytest.approx((isolated & mask).sum() / 30)
    assert result.summary["isolated_recall"] == pytest.approx((isolated & mask).sum() / 60)
    assert result.summary["isolation_loss_auroc"] > 0.9
    np.testing.assert_array_equal(result.suspicion, -result.sample_record["isolation_loss"])
    assert [line["phase"] for line in lines] == ["isolate"] * 3 + ["train", "unlearn"]
    assert lines[3]["isolated_precision"] == result.summary["isolated_precision"]


@pytest.mark.slow
@pytest.mark.parametrize("score", ["ranks", "window", "last"])
def test_isolates_the_same_set_at_one_and_two_threads(score):
    # The same run at 1 and 2 threads rounds differently; where the poison is learned first, the
    # isolated set (its size the planted count) must be the planted set both times.
    isolated = {}
    for threads in (1, 2):
        ctx, mask, _ = _toy_context(isolation_epochs=4, isolation_ratio=0.1, epochs=1, unlearn_epochs=0,
                                    batch_size=32, lr=0.05, isolation_score=score)
        with arithmetic(threads, deterministic=False):
            isolated[threads] = ABL().train(ctx).sample_record["isolated"]
    np.testing.assert_array_equal(isolated[1], mask)
    np.testing.assert_array_equal(isolated[2], isolated[1])


@pytest.mark.slow
def test_isolation_on_mnist5k_holds_at_one_and_two_threads(tmp_path, mnist5k):
    # The real case that flipped: BadNets 10 %, 4,000 images, ABL's defaults, 1 and 2 threads. Seed 4
    # at one thread isolated no poison at all with the two former defaults (4 epochs ranked on the
    # last; 8 epochs ranked on the geometric mean of epochs 5-8) while 2 threads isolated only poison
    # (bench/abl_isolation.py); with the defaults both thread counts isolate only poison. Which 40 of
    # the 400 poisoned images are lowest is a tie broken by rounding, so the isolated sets are
    # compared by what matters: the same count, all poisoned, both times.
    outcomes = {}
    for threads in (1, 2):
        config = _config(seed=4, threads=threads, defense_params={"epochs": 1, "unlearn_epochs": 0})
        prepared = prepare(config)
        run = RunDir.create(tmp_path, prepared.config.to_dict())
        summary = execute(prepared, run)
        record = run.arrays("sample_weights")
        assert record["isolation_loss_epochs"].shape[0] == ABL().defaults((28, 28, 1))["isolation_epochs"]
        outcomes[threads] = (int(record["isolated"].sum()), int((record["isolated"] & record["is_poisoned"]).sum()),
                             summary["isolated_precision"])
    assert outcomes[1] == outcomes[2] == (40, 40, 1.0)


# -- unlearning variants ---------------------------------------------------------------------------

def _saturated_linear() -> torch.nn.Module:
    """A linear model that predicts class 0 with a logit margin of 30 for every input."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].bias[0] = 30.0
    return model


def _suspects_and_rest(ctx, mask):
    planted = torch.from_numpy(mask)
    return Tensors(ctx.train.x[planted], ctx.train.y[planted]), Tensors(ctx.train.x[~planted], ctx.train.y[~planted])


@pytest.mark.parametrize("loss, unlearned", [("ce", False), ("complement", True)])
def test_unlearning_loss_on_a_saturated_fit(loss, unlearned):
    # The planted samples (label 0) are fitted with a margin of 30: ascending the cross-entropy has
    # no gradient and leaves them at ~0 loss; the complement loss drives their label's probability down.
    ctx, mask, _ = _toy_context(unlearn_loss=loss, unlearn_objective="isolated", unlearn_lr=0.5, batch_size=32)
    suspects, rest = _suspects_and_rest(ctx, mask)
    model = _saturated_linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for epoch in range(1, 6):
        unlearn_epoch(ctx, model, optimizer, ctx.generator(epoch), suspects, rest, epoch)
    after = torch.nn.functional.cross_entropy(model(suspects.x), suspects.y).item()
    assert (after > 1.0) == unlearned
    if not unlearned:
        assert after < 1e-6


@pytest.mark.parametrize("objective, clean_seen", [("isolated", False), ("joint", True)])
def test_joint_unlearning_also_descends_on_the_rest(objective, clean_seen):
    # With a saturated fit the cross-entropy ascent has no gradient, so anything that moves the model
    # comes from the joint objective's clean batches: their loss (chance level here) goes down.
    ctx, mask, _ = _toy_context(unlearn_loss="ce", unlearn_objective=objective, unlearn_lr=0.05, batch_size=32)
    suspects, rest = _suspects_and_rest(ctx, mask)
    model = _saturated_linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = torch.nn.functional.cross_entropy(model(rest.x), rest.y).item()
    suspect_ce, clean_ce = unlearn_epoch(ctx, model, optimizer, ctx.generator(), suspects, rest, 1)
    after = torch.nn.functional.cross_entropy(model(rest.x), rest.y).item()
    assert suspect_ce < 1e-6
    assert (after < before - 1.0) == clean_seen
    assert np.isnan(clean_ce) != clean_seen


def test_reisolation_adds_the_late_lowest_losses():
    ctx, mask, lines = _toy_context(isolation_epochs=3, isolation_ratio=0.05, epochs=2, unlearn_epochs=2,
                                    batch_size=32, lr=0.05, reisolation_ratio=0.08, unlearn_objective="joint",
                                    unlearn_loss="complement", unlearn_lr=5e-3)
    result = ABL().train(ctx)
    record, summary = result.sample_record, result.summary
    isolated, unlearned, late = record["isolated"], record["unlearned"], record["reisolation_loss"]
    assert isolated.sum() == 30 and not (isolated & ~unlearned).any()  # the first suspects stay suspects
    assert unlearned.sum() == summary["unlearned_count"] <= 30 + 48  # 8% of 600, union with the first 30
    assert (unlearned & ~isolated).sum() > 0
    late_only = isolate_lowest(late, 0.08)
    np.testing.assert_array_equal(unlearned, isolated | late_only)
    assert summary["unlearned_precision"] == pytest.approx((unlearned & mask).sum() / unlearned.sum())
    assert summary["unlearned_recall"] == pytest.approx((unlearned & mask).sum() / mask.sum())
    assert [line["phase"] for line in lines] == ["isolate"] * 3 + ["train"] * 2 + ["unlearn"] * 2
    assert all("clean_loss" in line for line in lines[-2:])


# -- end to end ------------------------------------------------------------------------------------

def test_abl_run(tmp_path, patch_dataset):
    patch_dataset(600, 200)
    prepared = prepare(_config(defense_params={"isolation_epochs": 1, "epochs": 1, "unlearn_epochs": 1}))
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    summary = execute(prepared, run)
    assert run.status()["state"] == "done"
    assert run.model_names() == ["model"]
    model = build_model("cnn", 1, 10)
    model.load_state_dict(torch.load(run.path / "models" / "model.pt", map_location="cpu", weights_only=True))

    sw = run.arrays("sample_weights")
    assert {"isolation_loss", "isolated", "suspicion", "is_poisoned"} <= set(sw)
    assert sw["isolation_loss"].shape == (600,) and sw["isolation_loss"].dtype == np.float32
    assert sw["isolated"].dtype == bool and sw["isolated"].sum() == 6  # 1% of 600
    assert np.all(sw["isolation_loss"] >= 0)
    # the isolated samples are exactly the lowest-loss ones; suspicion is minus the loss
    assert sw["isolation_loss"][sw["isolated"]].max() <= sw["isolation_loss"][~sw["isolated"]].min()
    np.testing.assert_allclose(sw["suspicion"], -sw["isolation_loss"])

    hits = int((sw["isolated"] & sw["is_poisoned"]).sum())
    assert summary["isolated_count"] == 6
    assert summary["isolated_precision"] == pytest.approx(hits / 6)
    assert summary["isolated_recall"] == pytest.approx(hits / sw["is_poisoned"].sum())
    assert summary["isolation_loss_auroc"] == pytest.approx(auroc(sw["suspicion"], sw["is_poisoned"]))
    assert summary["poison_detection_auroc"] == pytest.approx(summary["isolation_loss_auroc"])

    lines = run.metrics()
    assert [(line["phase"], line["epoch"], line["epochs"]) for line in lines] == \
        [("isolate", 1, 1), ("train", 1, 1), ("unlearn", 1, 1)]
    assert all({"clean_accuracy", "attack_success_rate", "robust_accuracy"} <= set(line) for line in lines)
    assert lines[1]["isolated_count"] == 6
    assert lines[1]["isolated_precision"] == pytest.approx(summary["isolated_precision"])
    assert lines[-1]["clean_accuracy"] == pytest.approx(summary["clean_accuracy"])
