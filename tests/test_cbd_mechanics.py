"""CBD's building blocks on hand-made tensors: the sample weights, their normalisations, the guard for
samples f_B never fitted, and the MI critic."""

from __future__ import annotations

import math

import pytest
import torch

from cbd_core.defenses.cbd import (INF, MIDiscriminator, cbd_weights, class_balanced, contradicted_by_label,
                                  contradicted_samples, cut_level,
                                   guard_hardest, guard_unfitted, normalise_batch, per_class_median, shortcut_samples,
                                   typical_class_median)


def test_cbd_weights_formula():
    ce_b = torch.tensor([0.01, 1.0, 2.0, 0.0, 5.0])
    ce_c = torch.tensor([2.0, 1.0, 0.01, 3.0, 0.0])
    w = cbd_weights(ce_b, ce_c)
    assert w.shape == (5,)
    assert w[0].item() == pytest.approx(0.01 / 2.01, rel=1e-5)  # ~0.005: f_B explains it far better
    assert w[0].item() == pytest.approx(0.005, abs=1e-4)
    assert w[1].item() == pytest.approx(0.5, abs=1e-6)  # equal losses
    assert w[2].item() == pytest.approx(2.0 / 2.01, rel=1e-5)
    assert w[3].item() == pytest.approx(0.0, abs=1e-7)
    assert w[4].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all((w >= 0) & (w <= 1))


def test_cbd_weights_zero_over_zero_is_finite():
    w = cbd_weights(torch.zeros(3), torch.zeros(3))
    assert torch.all(torch.isfinite(w)) and torch.all(w == 0)


def test_cbd_weights_monotone():
    ce_c = torch.full((50,), 1.0)
    ce_b = torch.linspace(0.0, 5.0, 50)
    w = cbd_weights(ce_b, ce_c)
    assert torch.all(w[1:] > w[:-1])  # more confounded (smaller CE_B) -> smaller weight


def test_normalise_batch_mean_one():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 7, 128):
        w = torch.rand(n, generator=gen) * 0.3 + 1e-3
        out = normalise_batch(w)
        assert out.mean().item() == pytest.approx(1.0, rel=1e-5)
        torch.testing.assert_close(out / out.sum(), w / w.sum())  # proportions kept
    out = normalise_batch(torch.tensor([0.01, 0.01, 0.98]))
    torch.testing.assert_close(out, torch.tensor([0.03, 0.03, 2.94]))
    assert torch.all(torch.isfinite(normalise_batch(torch.zeros(4))))


def test_class_balanced_mean_one_per_class():
    gen = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 4])  # class 3 empty
    scale = torch.tensor([0.01, 0.01, 0.01, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.2])
    weights = scale * (0.8 + 0.4 * torch.rand(10, generator=gen))  # within a class: within 1.5x of each other
    out = class_balanced(weights, labels, max_weight=3.0)
    assert out.shape == weights.shape
    for c in (0, 1, 2, 4):
        members = labels == c
        assert out[members].mean().item() == pytest.approx(1.0, rel=1e-5)
        # within a class the proportions are kept
        torch.testing.assert_close(out[members] / out[members].sum(), weights[members] / weights[members].sum())


def test_class_balanced_caps_outliers():
    labels = torch.zeros(10, dtype=torch.long)
    weights = torch.tensor([1.0] + [1e-3] * 9)  # one sample ~10x the class mean
    out = class_balanced(weights, labels, max_weight=3.0)
    assert torch.all(torch.isfinite(out))
    assert out.max().item() <= 3.0 + 1e-6 and out[0].item() == pytest.approx(3.0)


def test_class_median_weights_do_not_depend_on_either_models_loss_level():
    # Two classes; f_B has fitted class 0 a hundred times better than class 1, and f_C is at another level
    # again. Relative to its class, sample 2 is hard for f_B and ordinary for f_C, sample 5 the reverse.
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    ce_b = torch.tensor([0.01, 0.01, 0.2, 1.0, 1.0, 0.05])
    ce_c = torch.tensor([0.3, 0.3, 0.3, 0.3, 0.3, 6.0])
    rel_b, rel_c = per_class_median(ce_b, labels), per_class_median(ce_c, labels)
    torch.testing.assert_close(rel_b, torch.tensor([1.0, 1.0, 20.0, 1.0, 1.0, 0.05]))
    w = cbd_weights(rel_b, rel_c)
    torch.testing.assert_close(w[[0, 1, 3, 4]], torch.full((4,), 0.5))  # as hard for both: neutral
    assert w[2] > 0.9 and w[5] < 0.01  # harder for f_B than for f_C: up; fitted by f_B far better: down
    # Scaling either model's losses, overall or per class, changes nothing; the raw formula moves.
    scale = torch.tensor([10.0, 10.0, 10.0, 0.1, 0.1, 0.1])
    torch.testing.assert_close(cbd_weights(per_class_median(ce_b * scale, labels), rel_c), w)
    torch.testing.assert_close(cbd_weights(rel_b, per_class_median(ce_c * 7.0, labels)), w)
    assert not torch.allclose(cbd_weights(ce_b * scale, ce_c), cbd_weights(ce_b, ce_c))
    # Sharpness k (CE^k in both places) is a sigmoid of k times the log-ratio: the middle stays, the rest spreads.
    sharp = cbd_weights(rel_b ** 2, rel_c ** 2)
    torch.testing.assert_close(sharp, torch.sigmoid(2 * (rel_b.log() - rel_c.log())))
    torch.testing.assert_close(sharp[[0, 1, 3, 4]], w[[0, 1, 3, 4]])
    assert sharp[2] > w[2] and sharp[5] < w[5]
    # A zero loss counts as LOSS_FLOOR, so the ratios stay finite.
    assert torch.all(torch.isfinite(per_class_median(torch.zeros(3), torch.zeros(3, dtype=torch.long))))


def test_typical_loss_level_stays_a_clean_images_where_the_poison_is_most_of_its_label():
    # Ten labels of 10 images; label 0 holds 45 more, poisoned ones that f_B fits a hundred times better,
    # so they are most of the training set's label 0 and nearly half of the whole set (50 % poisoning).
    labels = torch.cat((torch.arange(10).repeat_interleave(10), torch.zeros(45, dtype=torch.long)))
    loss = torch.cat((torch.full((100,), 0.02), torch.full((45,), 0.0002)))
    loss[:100] *= torch.linspace(0.5, 1.5, 100)  # the clean images' spread
    assert loss[labels == 0].median() < 0.001  # label 0's own median is the poison's
    assert 0.01 < float(typical_class_median(loss, labels)) < 0.03  # the typical label's is a clean image's
    # One number per model: dividing by it keeps every ratio between samples.
    scaled = loss / typical_class_median(loss, labels)
    torch.testing.assert_close(scaled[1:] / scaled[:-1], loss[1:] / loss[:-1])
    assert float(typical_class_median(torch.zeros(4), torch.tensor([0, 0, 1, 1]))) > 0  # never divides by 0


def test_unfitted_samples_get_at_most_their_class_median():
    # Class 0: eight clean samples f_B fits (small CE_B, small weights) and two it never fitted
    # (CE_B above log 10), whose formula weight is far above the rest: they are held at the median.
    labels = torch.tensor([0] * 10 + [1] * 4)
    ce_b = torch.tensor([0.02] * 8 + [4.0, 5.0] + [0.1, 0.2, 3.0, 0.3])
    weights = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.9, 0.95] + [0.2, 0.3, 0.1, 0.4])
    guarded, unfitted = guard_unfitted(weights, ce_b, labels, math.log(10))
    assert unfitted.tolist() == [False] * 8 + [True, True] + [False, False, True, False]
    median0 = weights[:10].median()
    assert torch.all(guarded[8:10] == median0)
    assert torch.equal(guarded[:8], weights[:8])  # fitted samples keep the formula's weight
    assert guarded[12] == weights[12]  # an unfitted sample below its class median keeps its weight
    # The guard never raises a weight, so it can only take weight away from the set f_B did not fit.
    assert torch.all(guarded <= weights)
    same, none = guard_unfitted(weights, torch.zeros(14), labels, math.log(10))
    assert torch.equal(same, weights) and not none.any()


def test_a_poison_f_b_missed_gets_no_more_than_its_class_lower_quartile_even_below_chance_loss():
    """Small data: f_B fits every clean image to ~0.01 and the poison it missed only to ~0.3, far below a
    uniform guess's loss (log 10), so the unfitted guard cannot see it while w gives it the largest weights.
    Measured against the other classes' images it is among the hardest, and is held at its class's lower
    quartile; the clean images keep the formula's weight but for the hardest tenth."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(100)
    ce_b = (0.01 * torch.exp(0.5 * torch.randn(1000, generator=gen)))
    poison = torch.zeros(1000, dtype=torch.bool)
    poison[:10] = True  # ten of label 0's images
    ce_b[poison] = 0.3
    weights = cbd_weights(ce_b, torch.full((1000,), 0.05))
    assert float(ce_b.max()) < math.log(10)
    assert not guard_unfitted(weights, ce_b, labels, math.log(10))[1].any()
    guarded, hard = guard_hardest(weights, ce_b, labels)
    assert hard[poison].all()
    assert 0.05 <= float(hard[~poison].float().mean()) <= 0.15  # about a tenth of the clean images
    quartile = torch.quantile(weights[labels == 0], 0.25)
    assert torch.all(guarded[poison] <= quartile + 1e-7)
    assert torch.all(guarded <= weights)  # it never raises a weight
    assert torch.equal(guarded[~hard], weights[~hard])


def test_a_cut_read_from_a_typical_image_leaves_the_bulk_in_where_a_few_weights_are_large():
    """Heavy-tailed weights (small data: f_B fits nearly every clean image, so w is tiny for most and large for
    a few): a quarter of the class's mean lies above nine in ten of its images and would leave them out, but a
    quarter of a typical image's weight does not; a poison at a hundredth of the bulk's weight is left out
    either way, and the default (`class_mean`) is the plain fraction of the balanced weights' mean, 1."""
    labels = torch.arange(10).repeat_interleave(100)
    raw = torch.full((1000,), 0.02)
    raw[torch.arange(1000) % 100 >= 90] = 1.0  # a tenth of each class with a large weight
    raw[:5] = 2e-4  # five poisoned images of label 0
    balanced = class_balanced(raw, labels, INF)
    assert cut_level(balanced, labels, 0.25, "class_mean") == 0.25
    bulk = (raw == 0.02)
    assert float((balanced[bulk] < 0.25).float().mean()) == 1.0  # the mean's quarter: all of the bulk out
    level = cut_level(balanced, labels, 0.25, "typical")
    assert torch.all(balanced[bulk] >= level) and torch.all(balanced[:5] < level)


def test_a_cut_read_from_a_typical_image_still_leaves_out_a_poison_that_is_most_of_its_label():
    """At 50 % poisoning label 0 is nine tenths poison with near-zero weight: its own median is the poison's, but
    the median over labels is a clean label's, so the poison stays below the cut."""
    labels = torch.cat((torch.arange(10).repeat_interleave(100), torch.zeros(900, dtype=torch.long)))
    gen = torch.Generator().manual_seed(0)
    raw = 0.5 + torch.rand(1900, generator=gen)
    raw[1000:] = 1e-3
    balanced = class_balanced(raw, labels, INF)
    assert torch.all(balanced[1000:] < cut_level(balanced, labels, 0.25, "typical"))
    assert torch.all(balanced[100:1000] >= cut_level(balanced, labels, 0.25, "typical"))


def test_hardest_guard_spares_a_class_whose_poison_is_its_majority():
    """At 50 % poisoning f_B caught the trigger: the poison, most of label 0, has a tiny CE_B. The real zeros
    are as hard for f_B as the other classes' images, so only the usual tenth of them is guarded, not the
    class's majority (a threshold from label 0's own images would be the poison's)."""
    gen = torch.Generator().manual_seed(2)
    labels = torch.cat((torch.arange(10).repeat_interleave(100), torch.zeros(900, dtype=torch.long)))
    ce_b = 0.05 * torch.exp(0.5 * torch.randn(1900, generator=gen))
    ce_b[1000:] = 1e-4  # the poison
    _, hard = guard_hardest(cbd_weights(ce_b, torch.full((1900,), 0.05)), ce_b, labels)
    assert not hard[1000:].any()
    assert int(hard[:100].sum()) <= 25  # label 0's real images


CHANCE = math.log(10)


def test_contradicted_samples_are_read_where_f_b_first_fits_a_typical_image():
    """The first checkpoint at which a typical image is fitted is the one read: before it every image is
    above chance (nothing learned), after it f_B has fitted the poison too (by heart or by the trigger), so
    only that point sees the samples whose label contradicts what f_B learned."""
    labels = torch.arange(10).repeat_interleave(10)
    poison = torch.zeros(100, dtype=torch.bool)
    poison[[3, 17, 55]] = True
    unlearned = torch.full((100,), 2.5)
    digits_learned = torch.where(poison, torch.tensor(4.0), torch.tensor(0.02))
    digits_learned[40] = 3.0  # a clean image f_B still gets wrong: it is marked too (the rule's cost)
    all_fitted = torch.full((100,), 0.01)
    flagged, index = contradicted_samples([unlearned, digits_learned, all_fitted], labels, CHANCE)
    assert index == 1
    assert flagged.nonzero().flatten().tolist() == [3, 17, 40, 55]


def test_contradicted_samples_ignore_a_label_made_mostly_of_fitted_poison():
    """At 50 % poisoning f_B fits the poison (half the set, one label) at once while the other labels are
    still unlearned: the whole set's median is then low, a typical image's is not, so the rule waits for the
    digits and marks nothing of the unlearned classes at that early point."""
    labels = torch.cat([torch.zeros(60, dtype=torch.long), torch.arange(1, 10).repeat_interleave(5)])
    early = torch.cat([torch.full((60,), 0.001), torch.full((45,), 3.0)])
    assert float(early.median()) < 0.1
    later = torch.cat([torch.full((60,), 0.001), torch.full((45,), 0.05)])
    flagged, index = contradicted_samples([early, later], labels, CHANCE)
    assert index == 1 and not bool(flagged.any())


def test_contradicted_samples_mark_nothing_when_f_b_never_fits_a_typical_image():
    labels = torch.arange(10).repeat_interleave(5)
    flagged, index = contradicted_samples([torch.full((50,), 2.5), torch.full((50,), 0.5)], labels, CHANCE)
    assert index is None and not bool(flagged.any())


def test_contradicted_by_label_reads_each_label_where_f_b_knows_its_digit():
    """At the typical image's checkpoint label 2 is not learned yet (its median image above 0.1): read there,
    its unlearned images would be marked as if mislabelled. Read label by label, label 2 waits for the
    checkpoint where f_B fits its median image and only its image still wrong there is marked; the poison
    (label 0, learned with the others) is read at the first point, as before; a label never fitted marks
    nothing."""
    labels = torch.arange(10).repeat_interleave(10)
    poison = torch.zeros(100, dtype=torch.bool)
    poison[[3, 7]] = True
    typical = torch.where(poison, torch.tensor(4.0), torch.tensor(0.02))
    typical[20:30] = 3.0  # label 2: nothing learned yet
    typical[90:100] = 3.0  # label 9: never learned
    later = torch.full((100,), 0.01)
    later[[3, 7]] = 0.01  # by now the poison is fitted (by heart or by its trigger)
    later[25] = 2.9  # a 2 that f_B still gets wrong once it knows 2s
    later[90:100] = 3.0
    typical_read, _ = contradicted_samples([typical, later], labels, CHANCE)
    assert typical_read.sum() == 2 + 10 + 10
    flagged, start, read_at = contradicted_by_label([torch.full((100,), 2.5), typical, later], labels, CHANCE)
    assert start == 1 and read_at[0] == 1 and read_at[2] == 2 and read_at[9] is None
    assert flagged.nonzero().flatten().tolist() == [3, 7, 25]


def test_keeping_the_scale_is_refused_with_probes_where_it_made_runs_worse():
    """`contradicted_scale=with` is for `leave_out`; with `probes` it made 5 of 10 mnist2k 0.5 % runs worse, so
    asking for it is a clear input error, not a run."""
    from cbd_core.defenses import DEFENSES
    from cbd_core.errors import UserInputError

    cbd = DEFENSES["cbd"]
    assert cbd.resolve((28, 28, 1), {"contradicted": "leave_out", "contradicted_scale": "with"})["contradicted_scale"] \
        == "with"
    with pytest.raises(UserInputError, match="leave_out only") as refused:
        cbd.resolve((28, 28, 1), {"contradicted": "probes", "contradicted_scale": "with"})
    assert refused.value.field == "contradicted_scale"


def test_shortcut_samples_are_those_f_c_fits_far_better_than_f_b_within_their_class():
    gen = torch.Generator().manual_seed(0)
    # Two classes of 200: a clean sample's difficulty is shared by both models (log CE_C follows log CE_B
    # with noise); in class 1 five samples are among f_B's hardest yet f_C fits them with ease (an uncaught
    # trigger), and in class 0 five are f_B's easiest and f_C's hardest (a caught one: not a shortcut).
    labels = torch.cat((torch.zeros(200, dtype=torch.long), torch.ones(200, dtype=torch.long)))
    log_b = torch.randn(400, generator=gen) - 3.0
    log_c = log_b + 0.3 * torch.randn(400, generator=gen)
    log_b[200:205], log_c[200:205] = -0.5, -5.0
    log_b[:5], log_c[:5] = -9.0, 0.5
    flagged = shortcut_samples(log_b.exp(), log_c.exp(), labels, cut=3.5)
    assert flagged[200:205].all()
    assert not flagged[:5].any()  # what f_B fits far better is the weights' business, not this guard's
    assert int(flagged.sum()) <= 5 + 2  # at most a clean straggler or two
    # The cut is per class: in a class whose every ratio is as low, those five are ordinary.
    shifted = log_c.clone()
    shifted[205:400] = log_b[205:400] - 4.5 + 0.3 * torch.randn(195, generator=gen)  # ratio about -4.5, as theirs
    assert not shortcut_samples(log_b.exp(), shifted.exp(), labels, cut=3.5)[200:205].any()
    # A class whose ratios are all equal has no spread and no outlier.
    assert not shortcut_samples(torch.ones(4), torch.ones(4), torch.zeros(4, dtype=torch.long), 3.5).any()


def test_a_failed_run_says_what_the_shortcut_guard_left_out():
    """Where f_B missed the poison the diagnosis names the guard's catch, read from the summary, and
    falls back to the former sentence for a run without the guard (or one where it left nothing out)."""
    from cbd_core.defenses.cbd import CBD

    missed = {"f_b_capture": {"detection_auroc": 0.13, "captured": False}}
    guarded = {**missed, "weight_guard": {"shortcut_report": {"samples": 51, "precision": 0.2, "recall": 0.65}}}
    said = CBD().diagnosis(guarded)
    assert "shortcut guard left out 51 samples" in said and "65% of the poisoned images" in said
    assert "as from any others" not in said
    for summary in (missed, {**missed, "weight_guard": {"shortcut_report": None}},
                    {**missed, "weight_guard": {"shortcut_report": {"samples": 0, "recall": 0.0}}}):
        assert "f_C learned from the poisoned images as from any others." in CBD().diagnosis(summary)


def _critic_estimate(dependent: bool, seed: int, steps: int = 200, dim: int = 8):
    """Train a fresh critic to climb the MI estimate, then score a large fresh sample in eval mode."""
    torch.manual_seed(seed)
    critic = MIDiscriminator(dim, dim)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.999))  # CBD's disc_lr and betas
    gen = torch.Generator().manual_seed(seed + 100)

    def sample(n):
        z_b = torch.randn(n, dim, generator=gen)
        z_c = z_b + 0.1 * torch.randn(n, dim, generator=gen) if dependent else torch.randn(n, dim, generator=gen)
        return z_b, z_c

    critic.train()
    for _ in range(steps):
        z_b, z_c = sample(256)
        loss = -critic.mi_estimate(z_b, z_c)
        opt.zero_grad()
        loss.backward()
        opt.step()
    critic.eval()
    with torch.no_grad():
        estimate = critic.mi_estimate(*sample(4096)).item()
    return critic, estimate


def _linear_norms(critic):
    return [torch.linalg.matrix_norm(m.weight.detach(), ord=2).item()
            for m in critic.modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("seed", [0, 1])
def test_mi_estimate_separates_dependent_from_independent(seed):
    _, dependent = _critic_estimate(True, seed)
    _, independent = _critic_estimate(False, seed)
    assert dependent > 0.25
    assert abs(independent) < 0.05
    assert dependent - independent > 0.2


def test_mi_estimate_uses_a_fixed_point_free_shuffle():
    critic = MIDiscriminator(3, 2).eval()
    z_b = torch.randn(5, 3)
    z_c = torch.randn(5, 2)
    expected = critic(z_b, z_c).mean() - critic(z_b, z_c.roll(1, dims=0)).mean()
    torch.testing.assert_close(critic.mi_estimate(z_b, z_c), expected)
    # identical rows: joint and shuffled pairs are the same, the estimate is exactly zero
    same = torch.ones(4, 2)
    assert critic.mi_estimate(torch.ones(4, 3), same).item() == pytest.approx(0.0, abs=1e-6)
    assert critic(z_b, z_c).shape == (5,)


def test_spectral_norm_bounds_each_layer():
    torch.manual_seed(0)
    critic = MIDiscriminator(8, 8, hidden=16).eval()
    norms = _linear_norms(critic)
    assert len(norms) == 2
    assert all(n <= 1.0 + 1e-3 for n in norms), norms  # fresh: 15 power iterations at creation
    # The raw weights themselves are not normalised: the parametrization does it.
    raw = [m.parametrizations.weight.original for m in critic.modules() if isinstance(m, torch.nn.Linear)]
    assert any(torch.linalg.matrix_norm(w.detach(), ord=2).item() > 1.05 for w in raw)


def test_spectral_norm_after_training():
    critic, _ = _critic_estimate(True, seed=1)
    # One power iteration per training step only tracks sigma approximately when the top singular
    # values are close (they are here): a few percent above 1 is expected, more is not.
    norms = _linear_norms(critic)
    assert all(n <= 1.1 for n in norms), norms
    # More power iterations (train-mode forwards) converge to the bound.
    z = torch.randn(64, 8)
    critic.train()
    with torch.no_grad():
        for _ in range(100):
            critic(z, z)
    critic.eval()
    norms = _linear_norms(critic)
    assert all(n <= 1.0 + 2e-3 for n in norms), norms
    assert max(norms) >= 0.95  # and the bound is tight: the layers are not shrunk below 1


# -- f_B: a fixed number of steps, its loss along the way, and a record of whether it caught the trigger

def test_checkpoint_steps_are_even_and_end_at_the_last_step():
    from cbd_core.defenses.cbd import checkpoint_steps

    assert checkpoint_steps(256, 16) == list(range(16, 257, 16))
    assert checkpoint_steps(10, 4) == [2, 5, 8, 10]
    assert checkpoint_steps(3, 16) == [1, 2, 3]  # never more checkpoints than steps


@pytest.mark.parametrize("n_train", [500, 1000])
def test_f_b_trains_the_same_number_of_steps_on_any_size(tmp_path, patch_dataset, n_train):
    from cbd_core.config import RunConfig
    from cbd_core.pipeline import execute, prepare
    from cbd_core.runs import RunDir

    patch_dataset(n_train, 100)
    prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0,
                                 defense_params={"backdoor_steps": 12, "epochs": 1, "batch_size": 64}))
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    summary = execute(prepared, run)
    f_b = [m for m in run.metrics() if m["phase"] == "f_B"]
    assert [m["step"] for m in f_b] == [3, 6, 9, 12]  # 12 steps whatever the size: 4 stages of 3
    assert summary["f_b_capture"]["steps"] == 12


def test_f_b_catches_badnets_and_the_run_records_it(tmp_path, patch_dataset):
    """With its default length, f_B has the trigger when f_C starts: the record says so, and it is
    right (f_B's own ASR on the triggered test set is high)."""
    from cbd_core.config import RunConfig
    from cbd_core.pipeline import execute, prepare
    from cbd_core.runs import RunDir

    patch_dataset(1000, 200)
    prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0, defense_params={"epochs": 1}))
    assert prepared.config.defense_params["backdoor_steps"] == 256
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    capture = execute(prepared, run)["f_b_capture"]
    assert capture["captured"] is True and capture["detection_auroc"] >= 0.95
    assert capture["loss_poisoned_median"] < 0.1 * capture["loss_clean_median"]
    assert capture["test_attack_success_rate"] >= 0.9


def test_capture_record_says_no_when_f_b_has_not_learned(tmp_path, patch_dataset):
    """One step of f_B learns nothing: the record must not claim a capture."""
    from cbd_core.config import RunConfig
    from cbd_core.pipeline import execute, prepare
    from cbd_core.runs import RunDir

    patch_dataset(500, 100)
    prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0,
                                 defense_params={"backdoor_steps": 1, "epochs": 1, "backdoor_lr": 1e-5}))
    capture = execute(prepared, RunDir.create(tmp_path, prepared.config.to_dict()))["f_b_capture"]
    assert capture["captured"] is False and capture["detection_auroc"] < 0.9


def test_f_b_with_fewer_checkpoints_than_stages(tmp_path, patch_dataset):
    """One checkpoint (the last step) still reports all four stages, and the trajectory is that one loss."""
    from cbd_core.config import RunConfig
    from cbd_core.pipeline import execute, prepare
    from cbd_core.runs import RunDir

    patch_dataset(300, 100)
    prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0,
                                 defense_params={"backdoor_steps": 8, "backdoor_checkpoints": 1, "epochs": 1,
                                                 "batch_size": 64}))
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    execute(prepared, run)
    assert [m["step"] for m in run.metrics() if m["phase"] == "f_B"] == [2, 4, 6, 8]


def test_cached_f_b_features_change_only_f_cs_phase(tmp_path, patch_dataset):
    """`backdoor_features`: f_B trains the same either way (same CE_B, same capture); only f_C's MI term
    reads f_B's features differently (cached from the image, or f_B run on the augmented batch)."""
    import numpy as np

    from cbd_core.config import RunConfig
    from cbd_core.pipeline import execute, prepare
    from cbd_core.runs import RunDir

    patch_dataset(300, 100)
    records = {}
    for mode in ("cached", "per_batch"):
        prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0, threads=1,
                                     defense_params={"backdoor_steps": 8, "backdoor_checkpoints": 2, "epochs": 2,
                                                     "batch_size": 64, "backdoor_features": mode,
                                                     "probe_epochs": 0}))  # row 0: f_B's view alone
        run = RunDir.create(tmp_path / mode, prepared.config.to_dict())
        execute(prepared, run)
        records[mode] = (run.arrays("sample_weights"), [m for m in run.metrics() if m["phase"] == "f_C"])
    (cached, cached_f_c), (per_batch, per_batch_f_c) = records["cached"], records["per_batch"]
    assert np.array_equal(cached["loss_backdoor"], per_batch["loss_backdoor"])
    assert np.array_equal(cached["weights"][0], per_batch["weights"][0])  # before f_C trains
    assert [m["mi_estimate"] for m in cached_f_c] != [m["mi_estimate"] for m in per_batch_f_c]
    assert all(np.isfinite(m["mi_estimate"]) for m in cached_f_c + per_batch_f_c)


# -- f_C's start: a probe learns the weights, the kept f_C starts afresh from them

def test_kept_f_c_starts_from_the_probes_weights_with_the_poison_left_out(tmp_path, patch_dataset):
    """With the defaults (`probe_epochs=4, probe_rounds=2, drop_below=0.25`) two f_C in a row (the
    probes) train only to learn the weights, and the kept f_C starts from theirs: from its first step the
    poisoned samples, which f_B fits and the probes do not, carry no weight. With `probe_epochs=0,
    drop_below=0` (the former rule) f_C's first epoch trains on f_B's view alone, where no sample is
    left out. The run records what the probe decided."""
    import numpy as np

    from cbd_core.config import RunConfig
    from cbd_core.pipeline import execute, prepare
    from cbd_core.runs import RunDir

    patch_dataset(600, 100)
    start = {}
    for former in (False, True):
        # f_B's default 256 steps: it catches BadNets here. The opt-in shortcut guard rides along with the
        # probes, to check what it records.
        params = {"epochs": 1, "batch_size": 64, "shortcut_cut": 3.0}
        if former:
            params.update(probe_epochs=0, drop_below=0.0, shortcut_cut=0.0)
        prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0, threads=1,
                                     defense_params=params))
        run = RunDir.create(tmp_path / str(former), prepared.config.to_dict())
        shares = []
        summary = execute(prepared, run, progress=lambda event: shares.append(event.run_fraction))
        # The probes write no line but count in the run's progress: it only moves on, and ends whole.
        assert shares == sorted(shares) and shares[-1] == 1.0
        assert [m["stage"] for m in run.metrics()] == [1, 2, 3, 4, 5 if former else 13]
        record = run.arrays("sample_weights")
        poisoned = record["is_poisoned"].astype(bool)
        weights = record["weights"]
        assert weights.shape == (2, 600) and np.all((weights >= 0) & (weights <= 1))
        assert [m["epoch"] for m in run.metrics() if m["phase"] == "f_C"] == [1]  # the probe is not reported
        start[former] = (weights[0], poisoned, summary["weight_guard"])

    weights, poisoned, guard = start[False]
    assert guard["probe_epochs"] == 4 and guard["probe_rounds"] == 2 and guard["drop_below"] == 0.25
    assert np.mean(weights[poisoned] == 0) >= 0.9  # the poison is left out of f_C's first epoch
    # ... and far fewer clean samples (here about 0.4 after a probe of 40 steps; 0.05-0.13 on mnist5k)
    assert np.mean(weights[~poisoned] == 0) <= 0.5
    assert guard["dropped_share_per_epoch"][0] == pytest.approx(np.mean(weights == 0), abs=1e-4)
    # The shortcut guard looked after each of the probes' 8 epochs and f_C's one; its set only grows. f_B
    # caught BadNets here, so the poison is what f_B fits far better, not what f_C does: it flags few.
    counts = guard["shortcut_samples_per_epoch"]
    assert guard["shortcut_cut"] == 3.0 and len(counts) == 9 and counts == sorted(counts)
    assert counts[-1] <= 0.1 * len(weights)
    assert guard["shortcut_report"]["samples"] == counts[-1]  # with its precision and recall (reporting only)

    weights, poisoned, guard = start[True]
    assert guard["probe_epochs"] == 0 and guard["drop_below"] == 0.0 and guard["dropped_share_per_epoch"] == []
    assert guard["shortcut_cut"] == 0.0 and guard["shortcut_samples_per_epoch"] == []
    assert guard["shortcut_report"] is None
    assert not np.any(weights == 0)  # f_B's view alone: every sample counts


def test_shortcut_guard_spares_a_class_whose_poison_is_its_majority():
    """At high rates f_B catches the trigger: the poison, two thirds of the target class, has a tiny CE_B.
    The class's median ratio is then the poison's and its real images are the outliers; f_B fits them as
    well as the other classes' images, so they stay (the whole set's median CE_B would be the poison's
    once it is half the data)."""
    gen = torch.Generator().manual_seed(1)
    labels = torch.cat((torch.zeros(1200, dtype=torch.long), torch.ones(400, dtype=torch.long)))
    log_b = torch.randn(1600, generator=gen) - 3.0
    log_c = log_b + 0.3 * torch.randn(1600, generator=gen)
    log_b[:1000] = -9.0 + 0.2 * torch.randn(1000, generator=gen)  # 1,000 poisoned of class 0's 1,200: f_B's easiest
    log_c[:1000] = -4.0 + 0.3 * torch.randn(1000, generator=gen)
    flagged = shortcut_samples(log_b.exp(), log_c.exp(), labels, cut=3.0)
    assert int(flagged[1000:1200].sum()) <= 0.6 * 200  # most of class 0's 200 real images stay
    assert not flagged[:1000].any()


def test_typical_loss_scale_still_leaves_out_a_poison_f_b_caught_and_records_its_scale(tmp_path, patch_dataset):
    """`loss_scale="typical"` divides each model's loss by its level on a typical image before w: where f_B
    caught the trigger (BadNets here) the poison is still what f_B fits far better than f_C, so it is left out
    of the kept f_C's first epoch as with the paper's scale, and the summary says which scale the run used."""
    import numpy as np

    from cbd_core.config import RunConfig
    from cbd_core.pipeline import execute, prepare
    from cbd_core.runs import RunDir

    patch_dataset(600, 100)
    prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0, threads=1,
                                 defense_params={"epochs": 1, "batch_size": 64, "loss_scale": "typical"}))
    run = RunDir.create(tmp_path / "typical", prepared.config.to_dict())
    summary = execute(prepared, run)
    record = run.arrays("sample_weights")
    poisoned, weights = record["is_poisoned"].astype(bool), record["weights"]
    assert np.mean(weights[0][poisoned] == 0) >= 0.9
    assert np.mean(weights[0][~poisoned] == 0) <= 0.5
    guard = summary["weight_guard"]
    assert guard["loss_scale"] == "typical" and guard["sharpness"] == 1.0
    clean_median = float(np.median(record["loss_backdoor"][~poisoned]))
    assert 0.2 * clean_median < guard["typical_loss_backdoor"] < 5 * clean_median  # a clean image's level


def test_relative_guard_records_the_samples_it_held(tmp_path, patch_dataset):
    """`unfitted="relative"` on a real run: the summary says how many samples f_B found harder than nine in
    ten of the other classes' images (about a tenth of the set, by that definition) and, for reporting only,
    how many of them were poisoned; the default records nothing of the kind."""
    from cbd_core.config import RunConfig
    from cbd_core.pipeline import execute, prepare
    from cbd_core.runs import RunDir

    patch_dataset(600, 100)
    params = {"epochs": 1, "batch_size": 64, "backdoor_steps": 64, "probe_epochs": 1, "probe_rounds": 1}
    prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0, threads=1,
                                 defense_params={**params, "unfitted": "relative"}))
    summary = execute(prepared, RunDir.create(tmp_path / "relative", prepared.config.to_dict()))
    report = summary["weight_guard"]["hardest_report"]
    assert 0.05 * 600 <= report["flagged"] <= 0.2 * 600
    assert set(report) == {"flagged", "precision", "recall"}
    prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0, threads=1, defense_params=params))
    summary = execute(prepared, RunDir.create(tmp_path / "default", prepared.config.to_dict()))
    assert summary["weight_guard"]["hardest_report"] is None


def test_contradicted_samples_get_no_weight_in_a_run_and_the_summary_says_where_f_b_was_read(tmp_path,
                                                                                          patch_dataset):
    """`contradicted="leave_out"` on a real run: the summary names the f_B step read and how many samples it
    left out (with, for reporting only, how many were poisoned), the run records which, and they have no
    weight in any recorded epoch; "probes" marks the same samples and gives some of them weight back in the
    kept f_C; the default records nothing of the kind."""
    import numpy as np

    from cbd_core.config import RunConfig
    from cbd_core.defenses.cbd import checkpoint_steps
    from cbd_core.pipeline import execute, prepare
    from cbd_core.runs import RunDir

    patch_dataset(600, 100)
    # 192 steps: 20 epochs of 600 images, by which f_B fits a typical image
    params = {"epochs": 1, "batch_size": 64, "backdoor_steps": 192, "probe_epochs": 1, "probe_rounds": 1}
    prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0, threads=1,
                                 defense_params={**params, "contradicted": "leave_out"}))
    run = RunDir.create(tmp_path / "leave_out", prepared.config.to_dict())
    guard = execute(prepared, run)["weight_guard"]
    assert guard["contradicted"] == "leave_out"
    assert guard["contradicted_at_step"] in checkpoint_steps(192, 16)
    report = guard["contradicted_report"]
    assert set(report) == {"samples", "flagged", "precision", "recall"} and report["samples"] == report["flagged"]
    assert 0 < report["samples"] < 0.2 * 600
    record = run.arrays("sample_weights")
    contradicted = record["contradicted"].astype(bool)
    assert contradicted.sum() == report["samples"]
    assert (record["weights"][:, contradicted] == 0).all()  # in every recorded epoch
    without = record["weights"]
    # "probes": the same samples are left out of the probes only; the kept f_C weighs them by the last
    # probe's loss, so some of them (the clean images that probe learned anyway) train again
    prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0, threads=1,
                                 defense_params={**params, "contradicted": "probes"}))
    run = RunDir.create(tmp_path / "probes", prepared.config.to_dict())
    guard = execute(prepared, run)["weight_guard"]
    record = run.arrays("sample_weights")
    assert guard["contradicted"] == "probes" and guard["contradicted_report"]["samples"] == report["samples"]
    assert (record["contradicted"].astype(bool) == contradicted).all()  # f_B is the same in both runs
    assert (record["weights"][0][contradicted] > 0).any()

    def leave_out_run(name: str, **variant):
        prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0, threads=1,
                                     defense_params={**params, "contradicted": "leave_out", **variant}))
        run = RunDir.create(tmp_path / name, prepared.config.to_dict())
        return execute(prepared, run)["weight_guard"], run.arrays("sample_weights")

    # "with" the scale: the same samples leave training, yet keep their place in their class's mean weight, so
    # the others' weights (balanced by that mean, cut below a quarter of it) are not those of "without"
    with_scale, record = leave_out_run("with_scale", contradicted_scale="with")
    assert with_scale["contradicted_scale"] == "with"
    assert (record["contradicted"].astype(bool) == contradicted).all()
    assert (record["weights"][:, contradicted] == 0).all()
    assert not np.allclose(record["weights"][0][~contradicted], without[0][~contradicted])
    # read by label: each label at or after the typical image's step; a label read at that very step marks what
    # the typical reading marked of it (same f_B), and what is marked has no weight either
    by_label, record = leave_out_run("by_label", contradicted_read="label")
    assert by_label["contradicted_read"] == "label"
    assert by_label["contradicted_at_step"] == guard["contradicted_at_step"]
    steps = {int(c): s for c, s in by_label["contradicted_label_steps"].items()}
    assert set(steps) == set(range(10))
    assert all(s is None or s >= by_label["contradicted_at_step"] for s in steps.values())
    marked, labels = record["contradicted"].astype(bool), record["label"]
    assert marked.sum() == by_label["contradicted_report"]["samples"]
    assert (record["weights"][:, marked] == 0).all()
    same_step = np.isin(labels, [c for c, s in steps.items() if s == by_label["contradicted_at_step"]])
    assert same_step.any() and (marked[same_step] == contradicted[same_step]).all()
    assert not marked[np.isin(labels, [c for c, s in steps.items() if s is None])].any()
    prepared = prepare(RunConfig(defense="cbd", device="cpu", embedding_samples=0, threads=1, defense_params=params))
    run = RunDir.create(tmp_path / "default", prepared.config.to_dict())
    guard = execute(prepared, run)["weight_guard"]
    assert guard["contradicted"] == "keep" and guard["contradicted_report"] is None
    assert "contradicted" not in run.arrays("sample_weights")
