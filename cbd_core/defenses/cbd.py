"""CBD, Causality-inspired Backdoor Defense (Zhang et al., CVPR 2023).

The attack is a confounder: it links the image X and the label Y through the trigger. CBD trains
two models on the same poisoned data.

1. f_B, the *confounding* model, is trained briefly with plain cross-entropy. Backdoors are learned
   much faster than the real task, so after an epoch or two f_B has the trigger and only part of
   the task: its loss CE_B is tiny on poisoned samples and larger on clean ones.
2. f_C, the *deconfounded* model, is trained on every sample with the weight
       w = CE_B / (CE_B + CE_C)           (normalised to mean 1 in each batch)
   so a sample that f_B fits far better than f_C (a trigger shortcut) hardly counts, plus a
   mutual-information penalty between f_C's features z_C and f_B's features z_B, so f_C does not
   encode what f_B encodes. The MI is estimated WGAN-style: a discriminator T scores (z_B, z_C)
   pairs; MI ~ E[T(z_B, z_C)] - E[T(z_B, z_C')] with z_C' shuffled within the batch; T maximises it
   under a Lipschitz constraint (spectral normalisation), f_C minimises `mi_weight` times it.

f_B's length and its loss. f_B trains for a number of optimiser steps (`backdoor_steps`), not
epochs, so it sees the same amount of training on 1,000 images as on 50,000. Its loss CE_B, the
weights' numerator, is not read off the last step but averaged (geometrically) over
`backdoor_checkpoints` evenly spaced points of f_B's training: a sample's CE_B says how early *and how
steadily* f_B fitted it. That is the paper's premise (backdoors are learned faster than the task)
measured along the way instead of at one instant. Measured on mnist5k (f_B alone, seeds 0-4,
`python bench/fb_capture.py`): f_B's loss at one fixed step swings from run to run, since plain SGD
at a constant rate passes through phases where it predicts the target for nearly everything and then
unlearns it. What decides f_C's fate is the share of the target class's weight left on poisoned
samples when f_C starts: at 64 steps (the former 2 epochs) it ranged over 0-24% for BadNets and 0-14%
for Blend across seeds, and Blend's seed 0 (14%) ended at ASR 86%; reading f_B at 128 or 256 steps
instead helps BadNets but not Blend (0-21%). Averaged over the trajectory it is at most 0.1% for
BadNets and 1.7-3.6% for Blend on every seed. `backdoor_loss="final"` restores the
paper's loss of the frozen f_B. Fewer points or steps were measured worse (bench/cbd_targets.py, 5
seeds): 8 checkpoints instead of 16 met the targets on mnist2k BadNets on 3 seeds instead of 5, and
128 steps instead of 256 let Blend through on mnist5k (ASR up to 17%).

`f_b_capture` in the run's summary records whether f_B had the trigger when f_C started: the AUROC of
-CE_B against the true poison mask and the two groups' median CE_B (reporting only: the defense never
sees the mask), and f_B's ASR on the triggered test set.

What differs from the official code (zaixizhang/CBD), and why. Each change has a switch that
restores the paper's behaviour, and bench/defense_quality.py --cbd-variants measures both.

- Weighting (`weighting="stable"`; "paper" is the official rule). Two faults of the live rule show
  on small data, and both come from w depending on f_C's own loss:
  1. The backdoor comes back. With w ~ CE_B / CE_C when CE_C >> CE_B, the weighted gradient
     w * grad(CE_C) equals CE_B * grad(log CE_C), which, unlike plain cross-entropy, does not fade
     as f_C starts to fit a sample: f_C slowly memorises the poisoned samples despite their small
     weights, their CE_C falls, their weights rise, and the backdoor returns (measured on mnist5k,
     BadNets 10%: ASR 0.8% at epoch 3, 99% by epoch 9 with the paper's rule). "stable" keeps each
     sample's lowest epoch-end weight once f_C has caught up with f_B (median CE_C <= median CE_B):
     evidence that a sample is explained by the confounder is not forgotten.
  2. Whole classes starve. A class that f_B learned early gets small weights everywhere, f_C learns
     it slowly, its CE_C stays high and its weights stay small (clean accuracy plateaued at 0.87).
     "stable" divides weights by their class mean, so re-weighting moves weight between samples of
     a label but never between labels (the label marginal P(Y) is left as the data has it), capped
     at 3x the class mean for SGD's sake.
  "stable" computes the weights once per epoch, without augmentation, in eval mode: the weights the
  dashboard shows are exactly the ones f_C trained on.
  3. At low poisoning rates the trigger gets in before the weights know anything (`probe_epochs`,
     `probe_rounds`, `drop_below`). Before f_C has trained, CE_C is about log K for every sample, so w
     is CE_B's ranking alone; with only 40 poisoned images (mnist5k, 1%) f_B fits them *later* than
     the clean images of their label (in-class AUROC of -CE_B 0.21-0.44), so f_C's first two epochs
     gave them 2x a clean sample's weight (13-21% of the target class's weight for 9% of its samples).
     f_C took part of the trigger in then (ASR up to 72% at epoch 2), and nothing in clean data
     unlearns it: the weights ranked the poison right from epoch 4 on (in-class AUROC 0.99-1.00) yet
     Blend and Trojan ended at 1.4-3.8% ASR, and Blend's seed 1 at 99.9%. Leaving out the samples
     with the lowest weights only late (once kept) did not help (Blend seed 0: 3.6% against 3.8%).
     So a first f_C, the probe, trains `probe_epochs` (4) epochs only to learn the weights; a second
     probe starts afresh from them (`probe_rounds` = 2: one probe left 7-9 of the 40 poisoned Blend
     images above the cut, enough for 2.3-2.4% ASR); the kept f_C starts afresh from the last probe's
     weights (in units of the class mean), keeps them until it catches up with f_B and then each
     sample's lowest, and never trains on a sample below `drop_below` (a quarter) of its class's mean
     weight. It reads only the training data, and it is the default: on mnist5k (1% and 10%, BadNets,
     Blend, Trojan, seeds 0-4) every cell held on >= 4/5 seeds and no run was made worse, where the former
     rule (`probe_epochs=0, drop_below=0`, still there bit for bit) held Blend 1% on 0/5 and
     made BadNets 1% seed 4 stronger (97.8% ASR against 5.1% undefended). Its costs: 8 more f_C epochs (18 instead
     of 10), and on mnist2k at 10% a probe leaves out 4-13% of the clean samples with the poison (CA up
     to 3.3 points below undefended). docs/benchmarks.md ("Across poison rates") has the grid.
  4. When f_B misses the trigger, the weights favour the poison; an opt-in guard (`shortcut_cut`, off by
     default: at 1% it made one run worse). At 0.5% (20 poisoned images of 4,000) f_B can learn the
     digits before the trigger: a poisoned image's target label then contradicts what f_B learned, its
     CE_B is among its class's highest, and w gives it up to the cap (Trojan 0.5%, seed 0: f_B's test
     ASR 42%, the poison's median CE_B 0.60 against 0.020 for clean images; it carried 12% of its class's
     weight for 5% of its samples, and f_C ended at ASR 98% where the undefended model ended at 80%).
     f_C and f_B are the same network on the same images, so a clean image hard for one is hard for the
     other: an image that f_C fits with ease while f_B keeps it among its hardest is one f_C fits by
     something f_B did not learn. With `shortcut_cut` > 0, after each of f_C's epochs (probes included) a
     sample whose log(CE_C / CE_B) lies more than that many robust standard deviations below its class's
     median, and whose CE_B is above the other classes' median, gets no weight from then on
     (`shortcut_samples`). The second condition came after the first alone broke CBD at 20% (8 of 9 runs
     at 87-100% ASR: the poison is two thirds of the target class there, the class's median ratio is the
     poison's and its real images were left out); with it, ASR stays at or below 1.2% on every run at
     2-50% and no run at 0.5% is made worse, but at 1% BadNets seed 2 (an attack that did not take hold
     undefended, 1.1%) ends at 22%. Its catch rarely holds poison (its report's recall): where it helps it
     mostly does so by leaving out a hundred hard clean images, not the poison. Capping every weight at
     the class mean instead (`max_weight=1`) did not help at 0.5% (Trojan seed 0: 85.4%; Blend seed 0:
     90.3%). docs/benchmarks.md ("Across poison rates") has the grid.
  5. The weights' spread comes from f_B's loss *level* (`loss_scale`, opt-in). On 2,000 images f_B's 256
     steps are 16 epochs, clean CE_B is ~0.01 while an untrained f_C's CE_C is log K, so w is tiny for
     every image f_B fitted and the first probe trains on the few f_B did not fit, the poison it missed
     among them. "typical" divides each model's loss by its loss on a typical image (the median over
     labels of each label's median, one number per model) before the formula, so w compares how hard a
     sample is for each model rather than how far each has trained; "class_median" divides by the
     sample's own label's median, which is the poison's where the poison is most of its label (it broke
     at 20%). Measured on mnist2k and mnist5k (docs/benchmarks.md, "Weights that do not depend on f_B's
     loss level"); not the default until the whole rate x size grid has run with it.
  6. A poison f_B missed can sit far below the chance loss (`unfitted="relative"`, opt-in). On mnist2k at 0.5%
     the poison's median CE_B is 0.28, so the unfitted guard (CE_B above log K) never sees it, yet it is
     harder for f_B than nine in ten of the other classes' images; "relative" holds such samples at their
     class's lower quartile of weight. Measured (docs/benchmarks.md, "A poison f_B missed, measured against
     the other classes"): mnist2k 0.5% Trojan median ASR 8% against the default's 82%, but mnist5k BadNets 1%
     seed 2 made worse (59% against 1.1% undefended) with the poison's share of its class's weight at its
     natural 9%: at 1% and below the outcome moves with more than the weights.
  7. What the cut is a fraction of (`cut_scale`, opt-in "typical"). `drop_below` is a quarter of the class's
     mean weight; on 2,000 images the weights are heavy-tailed (f_B fits nearly every clean image, so w is
     tiny for most and large for a few) and that quarter leaves out about half the training set. "typical"
     takes the quarter of a typical image's weight instead (`cut_level`): on mnist2k at 0.5% it left out
     16-22% instead of 46-54% yet changed little on its own; with `unfitted="relative"` it is the first rule
     here that made no mnist2k 0.5% Trojan or Blend run worse, but at 1% on mnist5k it still made BadNets
     seed 2 worse and lost two Blend seeds (docs/benchmarks.md, "The cut read from a typical image").
  8. What f_B contradicted once it knew the digits (`contradicted`, opt-in: "probes" or "leave_out"). Every rule
     above reads f_B's loss averaged along its training, where a poison f_B learned late looks merely hard.
     Read at one point instead, the first checkpoint at which f_B fits a typical image (`contradicted_samples`:
     step 48-128 of 256), a poison it has not learned yet is confidently wrong, its label rated below a uniform
     guess, as few clean images are: at 0.5-1 % that point marked half the poison or more on 27 of 40 runs,
     with 1.5-12.4 % of the clean images (median 3.7 %); at 10-50 % at most 3 poisoned images
     (`bench/left_out.py`).
     "leave_out" gives those samples no weight at all, "probes" only in the probes, after which the last
     probe's loss weighs them like any other sample (a poison it never learned gets little weight and is cut,
     a clean image it learned anyway trains again). Measured (docs/benchmarks.md, "What f_B contradicted once
     it knew the digits"): mnist5k 1 %, both rules remove BadNets, Blend and Trojan on every seed (Blend seed 1:
     0.7 % against the default's 99.8 %); "leave_out" costs 2.0 points of CA (median, up to 4.9), also at 10 %
     where it leaves out no poison, "probes" 0.9 (up to 3.8, at 20 %). None of their 136 runs was made worse
     (mnist2k at 0.5 %: the default 5 of 10), but "probes" let Blend 2 % seed 1 through on mnist5k (29 %; the
     default holds 2 %). Not the default until the whole rate x size grid has run with it.
     Two variants, opt-in and measured on 50 and 28 runs (docs/benchmarks.md, "Two ways to mark less or move
     less"): `contradicted_read="label"` reads each label where f_B knows its digit (`contradicted_by_label`):
     it marks half as many clean images but misses the poison where the target label is learned late, and
     with "probes" made two mnist2k 0.5 % runs worse. `contradicted_scale="with"` (leave_out only) keeps the
     marked samples in their class's mean weight: taking the hardest images out of that mean lowers the cut
     below a poison f_B fitted (why mnist5k Blend 2 % seed 1 failed), keeping them there holds it but the cut
     then leaves out more, and CA pays 2.9 points (median).
- The official estimator divides each layer by the *square root* of its spectral norm, which does
  not bound the Lipschitz constant; here it is torch's spectral normalisation (divide by sigma).
- f_B's features in the MI term (`backdoor_features="cached"`; "per_batch" is the official code's). f_B is
  frozen when f_C starts, so its features of each training image are taken once, from the pass that
  gives its loss, instead of running f_B on every augmented batch: the critic pairs f_C's features of
  the augmented view with f_B's of the image (the views differ by a shift of 2 px on MNIST, which f_B
  was trained to ignore). f_B's forward pass was a third of what an f_C step costs beyond a plain one.
- The official code ships the MI term switched off; here it has a strength (`mi_weight`, 0 = off)
  and the default was chosen by measurement (docs/defenses.md, "The MI term").
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from .. import capture
from ..models import for_inference
from ..params import Param
from ..text import GOOD_DETECTION_AUROC, number
from ..training import Adam, LossTally, augment, batches, cosine_lr, set_lr, sgd, to_device
from .base import Defense, DefenseContext, DefenseResult, ModelView, SampleView, train_steps


def cbd_weights(ce_backdoor: torch.Tensor, ce_clean: torch.Tensor) -> torch.Tensor:
    """The paper's per-sample weight CE_B / (CE_B + CE_C), in [0, 1] (1e-8 keeps 0/0 out)."""
    return ce_backdoor / (ce_backdoor + ce_clean + 1e-8)


INF = float("inf")  # class_balanced without a cap
F_B_STAGES = 4  # f_B's training is reported (test CA / ASR, progress) in this many equal parts
LOSS_FLOOR = 1e-6  # losses below this count as this in the geometric mean (log 0 is -inf)


def checkpoint_steps(total_steps: int, count: int) -> list[int]:
    """`count` evenly spaced steps in 1..total_steps, the last one being total_steps."""
    count = max(1, min(count, total_steps))
    return sorted({round(total_steps * (i + 1) / count) for i in range(count)})


def per_class_median(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each sample's value divided by the median of its class's values: how hard a sample is for a model
    relative to the other images of its label, whatever the model's overall loss level."""
    medians = torch.ones(int(labels.max()) + 1, device=values.device)
    for c in torch.unique(labels).tolist():
        medians[c] = values[labels == c].median().clamp_min(LOSS_FLOOR)
    return values.clamp_min(LOSS_FLOOR) / medians[labels]


def typical_class_median(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The median, over labels, of each label's median value: a model's loss level on a typical image. Unlike
    the whole set's median it stays a clean image's where the poison is most of one class (at 50 % poisoning
    half of the training set carries the target label), since only one label's median is the poison's."""
    medians = [values[labels == c].median() for c in torch.unique(labels).tolist()]
    return torch.stack(medians).median().clamp_min(LOSS_FLOOR)


def class_balanced(weights: torch.Tensor, labels: torch.Tensor, max_weight: float) -> torch.Tensor:
    """Weights divided by their class's mean, so every class keeps its total weight (its count):
    re-weighting then moves weight between samples of a label, never between labels. No sample gets
    more than `max_weight` (in units of its class's mean; a class with capped samples then keeps a
    little less than its count)."""
    num_classes = int(labels.max()) + 1
    sums = torch.zeros(num_classes, device=weights.device).index_add_(0, labels, weights)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1)
    balanced = weights / (sums / counts).clamp_min(1e-12)[labels]
    return balanced.clamp_max(max_weight)


def cut_level(balanced: torch.Tensor, labels: torch.Tensor, drop_below: float, scale: str) -> torch.Tensor | float:
    """The weight under which a sample is left out, for class-balanced weights (each class's mean is 1):
    `drop_below` times the class's mean ("class_mean"), or times a typical image's weight ("typical": the
    median over labels of each label's median weight). The mean moves with a few large weights: where f_B
    fits nearly every clean image (2,000 images: 16 epochs of f_B) the weights are heavy-tailed, the mean sits
    far above most images' weight and a quarter of it leaves out half the training set. A typical image's
    weight is the bulk's, and a label made mostly of poison (20-50 %) cannot move it."""
    return drop_below * typical_class_median(balanced, labels) if scale == "typical" else drop_below


def guard_unfitted(weights: torch.Tensor, ce_backdoor: torch.Tensor, labels: torch.Tensor,
                   chance_loss: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(guarded weights, which samples were guarded). A sample f_B never fitted, whose CE_B is above
    the loss of a uniform guess (`chance_loss`, log of the number of classes), gets at most its class's
    median weight. CBD's premise is that f_B fits the confounded samples *faster* than the rest; a
    sample it did not fit at all is no evidence of anything, yet w = CE_B / (CE_B + CE_C) gives it the
    largest weight there is. When f_B misses the trigger (low poisoning rates), those are exactly the
    poisoned samples: f_B learned their digits, so their target label looks wrong to it, and without
    this guard f_C trained on them with up to 3x a clean sample's weight and learned a trigger that
    plain training does not (docs/benchmarks.md, "Unfitted samples"). Reads only training data."""
    unfitted = ce_backdoor > chance_loss
    if not bool(unfitted.any()):
        return weights, unfitted
    medians = torch.zeros(int(labels.max()) + 1, device=weights.device)
    for c in torch.unique(labels[unfitted]).tolist():
        medians[c] = weights[labels == c].median()
    return torch.where(unfitted, torch.minimum(weights, medians[labels]), weights), unfitted


HARD_QUANTILE = 0.9  # "relative": harder for f_B than this share of the other classes' images
HARD_WEIGHT_QUANTILE = 0.25  # ... gets at most this quantile of its own class's weights


def guard_hardest(weights: torch.Tensor, ce_backdoor: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(guarded weights, which samples were guarded). A sample f_B finds harder than nine in ten images of
    the other classes gets at most the lower quartile of its class's weights. The unfitted guard's
    threshold, a uniform guess's loss, is absolute: on small data f_B fits nearly everything well below it,
    the poison it missed included (mnist2k 0.5 %: its median CE_B 0.28 against log 10), and w then gives
    that poison the largest weights there are. The other classes' images set the level instead (the poison
    carries the target's label, so at any rate they are clean). Applied to the formula's weights, before
    class balancing and the cut of `drop_below`; applied after them instead (to the kept weights), it held
    mnist5k 1 % better and lost mnist2k 0.5 % (docs/benchmarks.md). Reads only training data."""
    hard = torch.zeros_like(labels, dtype=torch.bool)
    caps = torch.zeros(int(labels.max()) + 1, device=weights.device)
    for c in torch.unique(labels).tolist():
        in_class = labels == c
        others = ce_backdoor[~in_class] if bool((~in_class).any()) else ce_backdoor
        hard[in_class] = ce_backdoor[in_class] > torch.quantile(others.float(), HARD_QUANTILE)
        caps[c] = torch.quantile(weights[in_class].float(), HARD_WEIGHT_QUANTILE)
    return torch.where(hard, torch.minimum(weights, caps[labels]), weights), hard


TYPICAL_FITTED = 0.1  # a typical image counts as fitted once f_B gives its label 90 % (-log 0.9 = 0.105)


def contradicted_samples(checkpoint_losses: list[torch.Tensor], labels: torch.Tensor,
                         chance_loss: float) -> tuple[torch.Tensor, int | None]:
    """(which samples, the index of the checkpoint read, None when f_B never got there). The samples whose
    label f_B contradicted, a loss above a uniform guess's (`chance_loss`), at the first of its checkpoints
    where it fitted a typical image (the median over labels of each label's median loss below
    `TYPICAL_FITTED`): f_B has learned the digits by then, and an image whose label it still rates below a
    guess looks mislabelled to it. Where f_B learns the digits before the trigger (low poisoning rates) the
    poison is exactly that: its target label contradicts the digit it shows. Read later, along the
    trajectory, f_B has fitted the poison (by the trigger or by heart) and its CE_B no longer tells it apart,
    while w = CE_B / (CE_B + CE_C) still gives it more weight than the clean images of its label. Where f_B
    learns the trigger first (a few percent and up) the poison is fitted by then and nothing of it is read
    here (what it marked in each run of the grid: `python bench/left_out.py`). A typical image rather than
    the whole set's median, because at 50 % half of the training set is poison that f_B fits at once. Reads
    only training data."""
    for index, loss in enumerate(checkpoint_losses):
        if float(typical_class_median(loss, labels)) < TYPICAL_FITTED:
            return loss > chance_loss, index
    return torch.zeros_like(labels, dtype=torch.bool), None


def contradicted_by_label(checkpoint_losses: list[torch.Tensor], labels: torch.Tensor,
                          chance_loss: float) -> tuple[torch.Tensor, int | None, dict[int, int | None]]:
    """`contradicted_samples` read label by label: each label's samples at the first checkpoint, from the one
    where f_B fits a typical image on, at which f_B also fits that label's median image (a label it never
    fits marks nothing). At the typical image's checkpoint some digits are not learned yet (mnist5k Trojan 20 %
    seed 0: 154 of the 337 images marked there were 2s), and an image of a digit f_B has not learned is not
    contradicted, only unknown; read where its digit is known, f_B's verdict on it is the one
    `contradicted_samples` means. The cost, measured: the poison carries the target label, and where f_B learns
    that label late it has fitted the poison by the label's reading point and marks none of it (mnist2k Blend
    0.5 % seed 3: 0 of 10, against 10 of 10 read at the typical image's point). Returns (which samples, the
    typical image's checkpoint index, each label's checkpoint index)."""
    marked, start = contradicted_samples(checkpoint_losses, labels, chance_loss)
    if start is None:
        return marked, None, {}
    marked = torch.zeros_like(marked)
    read_at: dict[int, int | None] = {}
    for c in torch.unique(labels).tolist():
        in_label = labels == c
        read_at[c] = next((i for i in range(start, len(checkpoint_losses))
                           if float(checkpoint_losses[i][in_label].median()) < TYPICAL_FITTED), None)
        if read_at[c] is not None:
            marked |= in_label & (checkpoint_losses[read_at[c]] > chance_loss)
    return marked, start, read_at


def shortcut_samples(ce_backdoor: torch.Tensor, ce_clean: torch.Tensor, labels: torch.Tensor,
                     cut: float) -> torch.Tensor:
    """Which samples f_C fits far better than f_B: the log-ratio log(CE_C / CE_B) is a low outlier of its
    class, more than `cut` robust standard deviations (1.4826 median absolute deviations) below the
    class's median, and f_B finds the sample harder than it finds the median image of the other classes.
    f_B and f_C are the same network trained on the same images, so a clean image's difficulty for one
    predicts it for the other; an image that f_C fits with ease while f_B keeps it among its hardest is
    one that f_C fits by something f_B did not learn. When f_B caught the trigger the poison sits at the
    other end (CE_B small), so this only speaks when f_B missed it: at low poisoning rates f_B learns the
    digits first, a poisoned image's target label contradicts them (CE_B among its class's highest),
    w = CE_B / (CE_B + CE_C) gives it the largest weight there is, and f_C learned the trigger from it.
    Reads only training data.

    The second test is what lets the guard run at every rate. Where the poison is most of its class (20 %
    poisoning: two thirds of the target class; 50 %: five sixths) the class's median ratio is the
    poison's and its real images are the outliers, yet f_B fits them as well as any clean image; the
    other classes' median is a clean one at any rate (the poison carries the target's label, and the
    whole training set's median is the poison's at 50 %). Both measured: docs/benchmarks.md."""
    ratio = ce_clean.clamp_min(LOSS_FLOOR).log() - ce_backdoor.clamp_min(LOSS_FLOOR).log()
    flagged = torch.zeros_like(labels, dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        in_class = labels == c
        values = ratio[in_class]
        median = values.median()
        spread = 1.4826 * (values - median).abs().median()
        if float(spread) > 0:
            others = ce_backdoor[~in_class] if bool((~in_class).any()) else ce_backdoor
            flagged[in_class] = (values < median - cut * spread) & (ce_backdoor[in_class] > others.median())
    return flagged


def normalise_batch(weights: torch.Tensor) -> torch.Tensor:
    """Scale weights to mean 1 over the batch, so the loss scale does not depend on them."""
    return weights * (len(weights) / weights.sum().clamp_min(1e-12))


def shortcut_sentence(summary) -> str | None:
    """What the shortcut guard did about a poison f_B missed, from the run's summary (None when the run
    had no guard or it left nothing out)."""
    guard = summary.get("weight_guard")
    report = guard.get("shortcut_report") if isinstance(guard, dict) else None
    if not isinstance(report, dict) or not number(report.get("samples")):
        return None
    samples, recall = int(report["samples"]), number(report.get("recall"))
    share = "" if recall is None else f", {recall:.0%} of the poisoned images among them"
    return (f"CBD's shortcut guard left out {samples} samples that f_C fitted far better than f_B{share}; the "
            "poisoned images it missed, or caught only after f_C had learned from them, were enough for the trigger.")


class MIDiscriminator(nn.Module):
    """T(z_B, z_C): a two-layer MLP on the concatenated features, spectrally normalised (1-Lipschitz
    per layer, as a WGAN critic must be), with dropout as in the official estimator."""

    def __init__(self, dim_b: int, dim_c: int, hidden: int | None = None, dropout: float = 0.2):
        super().__init__()
        hidden = hidden or dim_c
        self.net = nn.Sequential(
            nn.Dropout(dropout), spectral_norm(nn.Linear(dim_b + dim_c, hidden), n_power_iterations=5), nn.LeakyReLU(0.2),
            nn.Dropout(dropout), spectral_norm(nn.Linear(hidden, 1), n_power_iterations=5))

    def forward(self, z_b: torch.Tensor, z_c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat((z_b, z_c), dim=1)).squeeze(1)

    def mi_estimate(self, z_b: torch.Tensor, z_c: torch.Tensor) -> torch.Tensor:
        """E[T(z_B, z_C)] - E[T(z_B, z_C shuffled)]: joint pairs against pairs from the product of
        marginals. The shuffle is a roll by one, a permutation with no fixed point. Both halves go
        through T in one call: the spectral norms' power iterations (which run on every call in train
        mode) are made once, not twice, and the layers see one batch of 2n rows."""
        n = len(z_b)
        scores = self(torch.cat((z_b, z_b)), torch.cat((z_c, z_c.roll(1, dims=0))))
        return scores[:n].mean() - scores[n:].mean()


class CBD(Defense):
    name = "cbd"
    title = "CBD"
    menu_order = 10
    description = "causality-inspired: a deliberately backdoored f_B, and f_C trained with CBD weights + MI penalty"
    model_names = ("f_B", "f_C")  # shown in this order: the backdoored model on the left
    delivered_model = "f_C"
    backdoored_model = "f_B"
    key_params = ("backdoor_steps", "epochs", "mi_weight", "weighting")
    phase_titles = {"f_B": "backdoored f_B", "probe": "probe f_C (learns the weights only)",
                    "f_C": "deconfounded f_C"}
    suspicion_meaning = ("1 − the weight CBD gave the sample at the end (a sample f_B fits far better than f_C gets "
                         "a small weight)")
    sample_view = SampleView(
        "each sample's weight as f_C trains", "weights", "weight", "low",
        "For CBD to work, the red bars (poisoned samples) must pile up near 0, far left of the blue ones: the "
        "samples CBD stops trusting, so f_C hardly learns from them.",
        epoch_phase="f_C", first_row=0, score_short="w", is_weight=True,
        kept_from="weights_kept_from_epoch", kept_label="lowest weight kept",
        row_caption=lambda row: "f_B done, f_C not trained yet" if row == 0 else f"f_C's epoch {row}",
        gallery_hint="If CBD singled out the poison, the lowest row is mostly poisoned images (look for the trigger) "
                     "and the highest row clean images f_C learns most from.")
    curves_hint = "f_B's ASR climbs on purpose while f_C's should stay near 0."
    model_views = {
        "f_B": ModelView(
            "backdoored model f_B",
            "Crosses (poisoned images) gathered in one tight island, apart from their true classes, mean f_B "
            "learned the trigger as a shortcut: that is what lets CBD spot them.",
            "Bright pixels on the trigger mean f_B decides by the trigger, as CBD means it to."),
        "f_C": ModelView(
            "deconfounded model f_C",
            "Crosses scattered among the dots of their own colour mean f_C sees the image's content, not the "
            "trigger; crosses in an island of their own mean the backdoor got into f_C.",
            "If f_B's bright area sits on the trigger and f_C's on the content, CBD has kept the trigger out of f_C."),
    }
    params = (
        Param("backdoor_steps", int, "optimiser steps of plain training for the confounding model f_B", 1, 100_000),
        Param("backdoor_checkpoints", int, "points of f_B's training at which every sample's loss is taken", 1, 256),
        Param("backdoor_loss", str, "trajectory: f_B's loss averaged over its checkpoints; final: at its last step",
              choices=("trajectory", "final")),
        Param("backdoor_lr", float, "constant learning rate of f_B", 1e-5, 1.0),
        Param("epochs", int, "epochs of the deconfounded model f_C", 1, 500),
        Param("lr", float, "peak learning rate of f_C (cosine schedule)", 1e-5, 1.0),
        Param("batch_size", int, "batch size", 8, 4096),
        Param("weight_decay", float, "weight decay of both models", 0.0, 0.1),
        Param("mi_weight", float, "strength of the MI penalty between z_C and z_B (0 = off)", 0.0, 100.0),
        Param("disc_lr", float, "Adam learning rate of the MI discriminator", 1e-6, 1.0),
        Param("backdoor_features", str, "f_B's features for the MI term: cached: of each training image, taken "
              "once when f_C starts (f_B is frozen by then); per_batch: f_B run on every augmented batch, as the "
              "official code", choices=("cached", "per_batch")),
        Param("weighting", str, "stable: per-epoch, class-balanced, lowest weight kept; paper: live per batch",
              choices=("stable", "paper")),
        Param("max_weight", float, "stable: the most weight a sample may get, in units of its class's mean "
              "weight", 1.0, 100.0),
        Param("unfitted", str, "stable: a sample f_B never fitted (CE_B above a uniform guess's loss) gets at "
              "most its class's median weight (guard), or the weight the formula gives it (off); relative: the guard, "
              "and a sample harder for f_B than nine in ten of the other classes' images gets at most its class's "
              "lower quartile of weight (opt-in: measured at 0.5-2 %, not yet the default)",
              choices=("guard", "relative", "off"), before="off"),
        Param("keep_lowest_from", str, "stable: each sample keeps its lowest weight once f_C has caught up "
              "with f_B (caught_up: median CE_C <= median CE_B) or from f_C's first epoch (start)",
              choices=("caught_up", "start")),
        Param("probe_epochs", int, "stable: epochs of a first f_C trained only to learn the weights, which the kept "
              "f_C then starts from afresh (0: f_C starts from f_B's view alone, the former rule)", 0, 50, before=0),
        Param("probe_rounds", int, "stable: probes in a row, each starting afresh from the last one's weights", 1, 5),
        Param("drop_below", float, "stable: a sample whose weight is below this fraction of its class's mean, once "
              "the weights carry f_C's evidence (after the probe, or once kept), is left out (0 = never)", 0.0, 1.0,
              before=0.0),
        Param("cut_scale", str, "stable: what drop_below is a fraction of: class_mean, the mean weight of the "
              "sample's class; typical: a typical image's weight (the median over labels of each label's median "
              "weight), which a few large weights cannot raise (opt-in: measured at 0.5-1 %, not the default)",
              choices=("class_mean", "typical"), before="class_mean"),
        Param("shortcut_cut", float, "stable: a sample whose log(CE_C / CE_B) falls this many robust standard "
              "deviations below its class's median (f_C fits it far better than f_B does) while f_B finds it "
              "harder than the other classes' median image gets no weight from then on (0 = never, the default: "
              "at 3 it made no 0.5% run and no 20-50% run worse, but one at 1%)",
              0.0, 20.0, before=0.0),

        Param("contradicted", str, "stable: leave_out: a sample whose label f_B rated below a uniform guess at the "
              "first point of its training where it fitted a typical image (it looks mislabelled once the digits are "
              "learned, as the poison does when f_B learns the digits before the trigger) gets no weight; keep: the "
              "default; probes: left out of the probes only (of every epoch where there are none), then weighed by the "
              "last probe's loss like any sample (opt-in: measured at 0.5-50 %, not yet the default)",
              choices=("keep", "leave_out", "probes"), before="keep"),
        Param("contradicted_read", str, "stable, with contradicted: typical: every sample read where f_B first "
              "fits a typical image (measured at 0.5-50 %); label: each label's samples read from there on, where "
              "f_B first fits that label's median image, so an image of a digit it has not learned yet is not "
              "taken for mislabelled (opt-in: marks half as many clean images, but misses the poison where the "
              "target label is learned late)", choices=("typical", "label"), before="typical"),
        Param("contradicted_scale", str, "stable, with contradicted=leave_out: without: the samples left out also "
              "leave their class's mean weight, which balances the class and sets the cut (measured at 0.5-50 %); "
              "with: they keep their weight there and only their training is removed, so the others' weights and "
              "the cut are the default's (opt-in: it holds mnist5k Blend 2 % seed 1, which every other rule lost, "
              "but the cut then leaves out more and CA pays 2.9 points, median of 28 runs)",
              choices=("without", "with"), before="without"),
        Param("loss_scale", str, "stable: raw: w = CE_B / (CE_B + CE_C) from the losses as they are (the paper); "
              "typical: each model's loss divided by its level on a typical image (the median over labels of each "
              "label's median) first, so w compares how hard a sample is for each model, not f_B's and f_C's "
              "overall loss levels; class_median: divided by its own label's median (breaks where the poison is "
              "most of its label)", choices=("raw", "typical", "class_median"), before="raw"),
        Param("sharpness", float, "stable: w = CE_B^k / (CE_B^k + CE_C^k), a sigmoid of k times log(CE_B / CE_C): "
              "above 1 a sample's weight moves further from the middle for the same ratio (1 = the paper's formula)",
              0.25, 8.0, before=1.0),
    )

    def diagnosis(self, summary):
        auroc = number(summary.get("poison_detection_auroc"))
        f_b = capture.read_f_b(summary)  # the one definition of "f_B's loss singled out the poison"
        if f_b.singled_out is False:
            return " ".join(s for s in (capture.singled_out_sentence(f_b), capture.why_they_differ(f_b),
                                        shortcut_sentence(summary)
                                        or "f_C learned from the poisoned images as from any others.") if s)
        if auroc is not None and auroc >= GOOD_DETECTION_AUROC:
            return (f"The weights did find the poison (detection AUROC {auroc:.3f}), but f_C learned the trigger "
                    "anyway.")
        if auroc is not None:
            return (f"The weights did not separate poisoned from clean samples (detection AUROC {auroc:.3f}; 0.5 "
                    "is chance), so f_C trained on the poison with nearly full weight.")
        return "The run does not record how well CBD's weights picked out the poison, so it cannot tell why."

    def made_worse_reason(self, summary):
        auroc = number(summary.get("poison_detection_auroc"))
        if auroc is None or auroc >= 0.5:
            return None
        # The weights ranked the poison as the *least* suspicious: it got more weight than clean images.
        return (f"CBD's weights favoured the poisoned samples (detection AUROC {auroc:.3f}, below the 0.5 of "
                "chance: the poison got more weight than clean images), because f_B fitted them worse than "
                "clean ones, so f_C learned the trigger that the attack alone did not plant.")

    def success_note(self, summary):
        auroc = number(summary.get("poison_detection_auroc"))
        return None if auroc is None else f"Its weights picked out the poisoned samples (detection AUROC {auroc:.3f})."

    def sample_note(self, summary, params, offset):
        """From which epoch the weights only fall ("stable" keeps each sample's lowest), or why never."""
        if params.get("weighting") == "paper":
            return ("This run used the paper's live weighting: f_C trained on weights recomputed in every batch; the "
                    "ones shown were taken at each epoch's end.")
        kept = summary.get("weights_kept_from_epoch")
        if kept is None:
            return ("The weights were never frozen in this run: each sample keeps its lowest weight only once f_C's "
                    "median loss falls below f_B's, which did not happen, so every epoch's weights are fresh.")
        return (f"From epoch {offset + int(kept)} (f_C's epoch {int(kept)}) on, each sample keeps its lowest weight "
                "so far: weights can only fall from then on, so the histogram changes little after it.")

    def resolve(self, image_shape, overrides):
        params = super().resolve(image_shape, overrides)
        if params["contradicted"] == "probes" and params["contradicted_scale"] == "with":
            from ..errors import UserInputError

            # measured: readmitted by the probe that kept their scale, the marked poison trains as under the
            # default, and 5 of 10 mnist2k 0.5 % runs were made worse (docs/benchmarks.md)
            raise UserInputError("cbd: contradicted_scale=with works with contradicted=leave_out only; with probes "
                                 "it made runs at 0.5 % poisoning worse than no defense (docs/benchmarks.md, "
                                 "\"Two ways to mark less or move less\")", "contradicted_scale")
        return params

    def defaults(self, image_shape):
        small = image_shape[0] <= 28
        return {"backdoor_steps": 256, "backdoor_checkpoints": 16, "backdoor_loss": "trajectory",
                "backdoor_lr": 0.05, "epochs": 10 if small else 40, "lr": 0.05, "batch_size": 128,
                "weight_decay": 5e-4, "mi_weight": 0.1, "disc_lr": 1e-3, "backdoor_features": "cached",
                "weighting": "stable", "max_weight": 3.0, "unfitted": "guard", "keep_lowest_from": "caught_up",
                "probe_epochs": 4, "probe_rounds": 2, "drop_below": 0.25, "cut_scale": "class_mean",
                "shortcut_cut": 0.0, "contradicted": "keep", "contradicted_read": "typical",
                "contradicted_scale": "without", "loss_scale": "raw", "sharpness": 1.0}

    def total_epochs(self, params):
        return F_B_STAGES + params["epochs"]

    def progress_stages(self, params):
        """f_B's stages, the probes' epochs (which write no metrics line) and f_C's."""
        probes = params.get("probe_epochs", 0) * params.get("probe_rounds", 1) \
            if params.get("weighting", "stable") == "stable" else 0
        return self.total_epochs(params) + probes

    def train(self, ctx: DefenseContext) -> DefenseResult:
        p = ctx.params
        generator = ctx.generator()

        # 1. The confounding model: plain cross-entropy at a constant learning rate, for a fixed number
        # of steps; every sample's loss is taken at evenly spaced checkpoints along the way.
        f_b = ctx.build_model()
        opt_b = sgd(f_b, p["backdoor_lr"], p["weight_decay"])
        steps_per_epoch = -(-len(ctx.train) // p["batch_size"])
        checkpoints = checkpoint_steps(p["backdoor_steps"], p["backdoor_checkpoints"])
        stage_ends = checkpoint_steps(p["backdoor_steps"], F_B_STAGES)
        log_losses = []

        def at_step(step: int, loss: Callable[[], float]) -> None:
            if step not in checkpoints and step not in stage_ends:
                return
            log_loss = ctx.per_sample_loss(f_b).clamp_min(LOSS_FLOOR).log()
            if step in checkpoints:
                log_losses.append(log_loss)
            if step in stage_ends:
                ctx.end_epoch("f_B", stage_ends.index(step) + 1, F_B_STAGES, f_b, train_loss=round(loss(), 5),
                              step=step, poison_detection_auroc=ctx.detection_auroc(-log_loss.cpu().numpy()))

        train_steps(ctx, f_b, opt_b, generator, p["backdoor_steps"], lambda s: p["backdoor_lr"], "f_B",
                    F_B_STAGES, at_step)
        f_b.eval()
        for param in f_b.parameters():
            param.requires_grad_(False)
        # f_B is frozen from here. "cached": its features (and logits) of every training image, from the
        # pass just made for its loss; "per_batch": it runs on each augmented batch, batch norms folded.
        cached = p["backdoor_features"] == "cached"
        if cached:
            f_b_features, f_b_logits = ctx.training_pass(f_b)
        else:
            f_b_inference = for_inference(f_b)
        if p["backdoor_loss"] == "trajectory":
            ce_b_full = torch.stack(log_losses).mean(0).exp()  # geometric mean over the checkpoints
        else:
            ce_b_full = ctx.per_sample_loss(f_b)
        capture = ctx.capture_report(ce_b_full.cpu().numpy(), f_b)
        capture["steps"] = p["backdoor_steps"]

        # 2. The deconfounded model. With a probe ("stable", `probe_epochs` > 0) a first f_C trains that
        # many epochs only to learn the weights; the f_C that is kept then starts afresh from them.
        stable = p["weighting"] == "stable"
        guard = stable and p["unfitted"] in ("guard", "relative")
        chance_loss = float(np.log(f_b.fc.out_features))
        need_b = not stable or p["mi_weight"] > 0  # f_B's view of each batch: for the MI term or live weights
        probed = stable and p["probe_epochs"] > 0

        # "shortcut" guard: a sample f_C ever fitted far better than f_B (`shortcut_samples`, once f_C has
        # trained an epoch) gets no weight from then on, in the probes and in the kept f_C alike.
        shortcut = torch.zeros_like(ctx.train.y, dtype=torch.bool)
        shortcut_counts = []
        hardest = torch.zeros_like(ctx.train.y, dtype=torch.bool)
        # The samples f_B contradicted once it knew a typical image get no weight from the start: in every epoch
        # ("leave_out") or in the probes only ("probes": the kept f_C then weighs them as any other sample).
        contradicted, contradicted_at = torch.zeros_like(ctx.train.y, dtype=torch.bool), None
        label_read_at: dict[int, int | None] = {}
        if stable and p["contradicted"] != "keep":
            fb_losses = [log.exp() for log in log_losses]
            if p["contradicted_read"] == "label":
                contradicted, contradicted_at, label_read_at = contradicted_by_label(fb_losses, ctx.train.y,
                                                                                     chance_loss)
            else:
                contradicted, contradicted_at = contradicted_samples(fb_losses, ctx.train.y, chance_loss)
        # "without": what gets no weight now, besides the shortcut guard's (its class's mean and cut move with it);
        # "with": the weights keep them, and only the epochs' training weights leave them out (`not_trained`)
        keep_scale = p["contradicted_scale"] == "with"
        left_out = torch.zeros_like(contradicted) if keep_scale else contradicted.clone()
        not_trained = contradicted.clone() if keep_scale else torch.zeros_like(contradicted)

        def trained_only(weights: torch.Tensor) -> torch.Tensor:
            return torch.where(not_trained, torch.zeros_like(weights), weights)

        def weights_from(ce_c: torch.Tensor, trained: bool = True) -> torch.Tensor:
            nonlocal shortcut
            loss_b, loss_c = ce_b_full, ce_c
            if p["loss_scale"] == "class_median":
                loss_b, loss_c = per_class_median(loss_b, ctx.train.y), per_class_median(loss_c, ctx.train.y)
            elif p["loss_scale"] == "typical":
                loss_b = loss_b.clamp_min(LOSS_FLOOR) / typical_class_median(loss_b, ctx.train.y)
                loss_c = loss_c.clamp_min(LOSS_FLOOR) / typical_class_median(loss_c, ctx.train.y)
            # sharpness k: w = CE_B^k / (CE_B^k + CE_C^k), a sigmoid of k times the log-ratio (1: the paper's)
            fresh = cbd_weights(loss_b ** p["sharpness"], loss_c ** p["sharpness"])
            fresh = guard_unfitted(fresh, ce_b_full, ctx.train.y, chance_loss)[0] if guard else fresh
            if stable and p["unfitted"] == "relative":
                fresh, hardest[:] = guard_hardest(fresh, ce_b_full, ctx.train.y)
            if stable and trained and p["shortcut_cut"] > 0:
                shortcut = shortcut | shortcut_samples(ce_b_full, ce_c, ctx.train.y, p["shortcut_cut"])
                shortcut_counts.append(int(shortcut.sum()))
            return torch.where(shortcut | left_out, torch.zeros_like(fresh), fresh)

        def balanced(weights_now: torch.Tensor, dropping: bool) -> torch.Tensor:
            """The weights an epoch trains on: balanced per class, capped, and (once the weights carry f_C's
            evidence) none for a sample below `cut_level` (by default `drop_below` times its class's mean)."""
            out = class_balanced(weights_now, ctx.train.y, p["max_weight"])
            if dropping and p["drop_below"] > 0:
                out = torch.where(out < cut_level(out, ctx.train.y, p["drop_below"], p["cut_scale"]),
                                  torch.zeros_like(out), out)
            return out

        def train_f_c(f_c: nn.Module, epochs: int, weights_now: torch.Tensor, probe: bool, informed: bool):
            """Trains f_C for `epochs` from `weights_now`. Returns the last weights, the recorded weights after
            each epoch (none for a probe), the epoch from which each sample kept its lowest weight, and the
            shares of samples capped and left out in each epoch, and f_C's per-sample loss after its last epoch."""
            opt_c = sgd(f_c, p["lr"], p["weight_decay"])
            disc = MIDiscriminator(f_b.feature_dim, f_c.feature_dim).to(ctx.device)
            opt_d = Adam(disc.parameters(), lr=p["disc_lr"], betas=(0.5, 0.999))
            total_steps = epochs * steps_per_epoch
            # After a probe the weights are class-normalised and already carry f_C's evidence: they are
            # kept until f_C catches up, and samples far below their class's mean are left out at once.
            rows, capped, dropped = [], [], []
            memory_from = None  # "stable": the epoch from which each sample's lowest weight is kept
            step = 0
            for epoch in range(1, epochs + 1):
                f_c.train()
                disc.train()
                # "stable" trains the epoch on the weights just recorded, balanced per class.
                epoch_weights = None
                if stable:
                    dropping = informed or memory_from is not None
                    epoch_weights = trained_only(balanced(weights_now, dropping))
                    capped.append(round(float((epoch_weights >= p["max_weight"] - 1e-6).float().mean()), 4))
                    if dropping and p["drop_below"] > 0:
                        dropped.append(round(float((epoch_weights == 0).float().mean()), 4))
                tally_loss, tally_mi = LossTally(), LossTally()
                for i, idx in enumerate(batches(len(ctx.train), p["batch_size"], generator)):
                    set_lr(opt_c, cosine_lr(step, total_steps, p["lr"], warmup_steps=steps_per_epoch // 2))
                    idx_d = to_device(idx, ctx.device)
                    x = augment(ctx.train.x[idx_d], generator, **ctx.augmentation)
                    y = ctx.train.y[idx_d]
                    z_c = f_c.features(x)
                    ce_c = F.cross_entropy(f_c.classify(z_c), y, reduction="none")
                    if need_b and cached:
                        z_b = f_b_features[idx_d]
                    elif need_b:
                        with torch.no_grad():
                            z_b = f_b_inference.features(x)
                    if stable:
                        weights = epoch_weights[idx_d]
                    else:  # the paper and official code: live weights, normalised per batch
                        logits_b = f_b_logits[idx_d] if cached else f_b_inference.classify(z_b)
                        ce_b = F.cross_entropy(logits_b, y, reduction="none")
                        weights = normalise_batch(cbd_weights(ce_b, ce_c.detach()))
                    loss = (weights * ce_c).mean()

                    if p["mi_weight"] > 0:
                        # The critic climbs the MI estimate on detached features, then f_C descends it.
                        disc.requires_grad_(True)
                        critic_loss = -disc.mi_estimate(z_b, z_c.detach())
                        opt_d.zero_grad(set_to_none=True)
                        critic_loss.backward()
                        opt_d.step()
                        # f_C's step needs the gradient through T, not T's own (the critic has stepped):
                        # the same numbers, a smaller backward pass.
                        disc.requires_grad_(False)
                        mi = disc.mi_estimate(z_b, z_c)
                        loss = loss + p["mi_weight"] * mi
                        tally_mi.add(mi, len(idx))

                    opt_c.zero_grad(set_to_none=True)
                    loss.backward()
                    opt_c.step()
                    tally_loss.add(loss, len(idx))
                    step += 1
                    ctx.step("probe" if probe else "f_C", epoch, epochs, i + 1, steps_per_epoch)

                ce_c_full = ctx.per_sample_loss(f_c)
                fresh = weights_from(ce_c_full)
                if stable:
                    # Evidence counts once f_C has caught up with f_B on the data as a whole (median
                    # loss): before that, a low weight may only mean that f_C is still learning.
                    # "start" keeps the lowest weight from f_C's first epoch on (measured in
                    # docs/benchmarks.md as an alternative: the median rule rarely fires when CE_B is f_B's
                    # trajectory loss). A probe's weights are always its last epoch's.
                    if memory_from is None and not probe and (p["keep_lowest_from"] == "start"
                                                              or ce_c_full.median() <= ce_b_full.median()):
                        memory_from = epoch
                    if informed:  # class-normalised; the probe's weights hold until f_C catches up
                        if memory_from is not None or (probe and epoch == epochs):
                            weights_now = torch.minimum(weights_now, class_balanced(fresh, ctx.train.y, INF))
                    else:
                        weights_now = torch.minimum(weights_now, fresh) if memory_from is not None else fresh
                else:
                    weights_now = fresh
                weights_now = torch.where(shortcut | left_out, torch.zeros_like(weights_now), weights_now)
                if probe:
                    ctx.end_unreported_epoch("probe", epoch, epochs)
                    continue
                # After a probe the run records the weights exactly as f_C trains on them (in units of
                # max_weight, so in [0, 1]); otherwise the formula's weights, which "stable" balances.
                w = trained_only(balanced(weights_now, True) / p["max_weight"] if informed else weights_now)
                w = w.cpu().numpy()
                rows.append(w)
                ctx.end_epoch("f_C", epoch, p["epochs"], f_c, train_loss=round(tally_loss.mean(), 5),
                              mi_estimate=round(tally_mi.mean(), 6) if p["mi_weight"] > 0 else None,
                              poison_detection_auroc=ctx.detection_auroc(1.0 - w),
                              mean_weight=float(w.mean()), memory_from=memory_from)
            return weights_now, rows, memory_from, capped, dropped, ce_c_full

        f_c = ctx.build_model()
        weights_now = weights_from(ctx.per_sample_loss(f_c), trained=False)  # before f_C trains
        if probed:
            weights_now, *_, probe_loss = train_f_c(f_c, p["probe_epochs"], weights_now, probe=True, informed=False)
            weights_now = class_balanced(weights_now, ctx.train.y, INF)
            for _ in range(p["probe_rounds"] - 1):  # each further probe starts afresh from the last one's weights
                weights_now, *_, probe_loss = train_f_c(ctx.build_model(), p["probe_epochs"], weights_now, probe=True,
                                                        informed=True)
            if p["contradicted"] == "probes" and bool(contradicted.any()):
                # The last probe learned without them; its loss now gives them the formula's weight (in units
                # of their class's mean, as the others'): small for a poison it never learned, so the cut
                # leaves it out, and a clean image it learned anyway gets its say back.
                left_out[:] = False
                readmitted = class_balanced(weights_from(probe_loss, trained=False), ctx.train.y, INF)
                weights_now = torch.where(contradicted, readmitted, weights_now)
            f_c = ctx.build_model()
        history = [trained_only(balanced(weights_now, True) / p["max_weight"] if probed else weights_now).cpu().numpy()]
        weights_now, rows, memory_from, capped_shares, dropped_shares, _ = train_f_c(f_c, p["epochs"], weights_now,
                                                                                     probe=False, informed=probed)
        history += rows

        weights = np.stack(history).astype(np.float32)
        return DefenseResult(
            model=f_c, other_models={"f_B": f_b}, suspicion=1.0 - weights[-1],
            sample_record={"weights": weights, "loss_backdoor": ce_b_full.cpu().numpy().astype(np.float32),
                           **({"contradicted": contradicted.cpu().numpy()} if p["contradicted"] != "keep" else {})},
            summary={"weights_kept_from_epoch": memory_from, "f_b_capture": capture,
                     "weight_guard": {
                         "max_weight": p["max_weight"], "capped_share_per_epoch": capped_shares,
                         "unfitted": p["unfitted"], "chance_loss": round(chance_loss, 4),
                         "unfitted_samples": int((ce_b_full > chance_loss).sum()),
                         "probe_epochs": p["probe_epochs"], "probe_rounds": p["probe_rounds"],
                         "drop_below": p["drop_below"], "cut_scale": p["cut_scale"],
                         "loss_scale": p["loss_scale"], "sharpness": p["sharpness"],
                         # "typical": the loss level f_B's CE_B was divided by (f_C's changes every epoch)
                         "typical_loss_backdoor": round(float(typical_class_median(ce_b_full, ctx.train.y)), 6)
                         if p["loss_scale"] == "typical" else None,
                         "dropped_share_per_epoch": dropped_shares,
                         # "relative": the samples harder for f_B than nine in ten of the other classes' images,
                         # held at their class's lower quartile of weight (the set depends on CE_B alone)
                         "hardest_report": ctx.flagged_report(hardest.cpu().numpy())
                         if p["unfitted"] == "relative" else None,
                         "shortcut_cut": p["shortcut_cut"], "shortcut_samples_per_epoch": shortcut_counts,
                         # reporting only (the mask is never used): how much of the poison the guard left out
                         "shortcut_report": {"samples": int(shortcut.sum()),
                                             **ctx.flagged_report(shortcut.cpu().numpy())}
                         if p["shortcut_cut"] > 0 else None,
                         "contradicted": p["contradicted"],
                         # "leave_out" / "probes": the f_B step read and what it marked (the report is reporting only)
                         "contradicted_at_step": None if contradicted_at is None else checkpoints[contradicted_at],
                         "contradicted_read": p["contradicted_read"], "contradicted_scale": p["contradicted_scale"],
                         # "label": the f_B step each label was read at (None: f_B never fitted its median image)
                         "contradicted_label_steps": {str(c): None if i is None else checkpoints[i]
                                                      for c, i in label_read_at.items()}
                         if p["contradicted_read"] == "label" and p["contradicted"] != "keep" else None,
                         "contradicted_report": {"samples": int(contradicted.sum()),
                                                 **ctx.flagged_report(contradicted.cpu().numpy())}
                         if p["contradicted"] != "keep" else None,
                     } if stable else None})
