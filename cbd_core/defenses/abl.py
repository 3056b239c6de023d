"""ABL, Anti-Backdoor Learning (Li et al., NeurIPS 2021).

Backdoored samples are learned much faster than clean ones: a network drives their loss towards
zero within a few epochs, long before it fits the real task. ABL turns that weakness into a
detector and then into a cure, in three phases on one model.

1. Isolation ("isolate"): train with *local gradient ascent* (LGA) on the batch's mean loss L:
       L_LGA = sign(L - gamma) * L
   While L is above gamma the model descends as usual; once it dips below, the sign flips and it
   climbs back, so the mean loss is held near gamma and the model cannot fit the clean samples
   much better than that. Poisoned samples, whose trigger is a shortcut, still go to near-zero
   loss. The per-sample losses of the isolation model (eval mode, no augmentation) are ranked and
   the lowest `isolation_ratio` of the training set is isolated as suspected poison.
2. Clean training ("train"): the same model keeps training with plain cross-entropy (augmented)
   on the other samples, with a cosine schedule from `lr` to zero.
3. Unlearning ("unlearn"): gradient *ascent* on the isolated samples, i.e. descent on -CE, at the
   small constant rate `unlearn_lr`, which breaks the link between trigger and target label that
   the model may still hold.

Opt-in variants of the unlearning (defaults keep the code's path: "isolated", "ce", 0):
- `unlearn_objective="joint"`: the paper's global-gradient-ascent objective
  L_GGA = E_{D^c}[CE] - E_{D^b}[CE] (as we recall its equation; only the abstract was at hand to
  re-check, which names the two gradient-ascent stages) with both terms in every unlearning step:
  each isolated batch is paired with an augmented batch of the non-isolated samples (one forward
  pass, shared batch statistics) whose cross-entropy is descended. The official code instead
  ascends on the isolated set alone after the clean phase (`backdoor_unlearning.py`,
  `quick_unlearning_demo.py`).
- `unlearn_loss="complement"` (beyond the paper): descend -log(1 - p_label) instead of ascending
  the cross-entropy. Both push the label's probability down, but the cross-entropy's gradient on
  the label's logit is 1 - p_label, which vanishes on samples fitted with a large margin (exactly
  the isolated ones), while the complement loss's is p_label: ~1 there, fading once unlearned.
- `reisolation_ratio` (beyond the paper; nothing like it in the paper or the code): after the
  clean phase, rank the per-sample losses again and add the lowest `reisolation_ratio` of the
  training set to the suspects that are unlearned. The clean phase fits the poison it kept far
  below the clean samples, so this second ranking finds it (recorded as `unlearned`,
  `reisolation_loss`, and `unlearned_count/precision/recall` in the summary).

Relation to the official code (bboylyg/ABL):
- The code trains isolation with the "flooding" loss |L - gamma| + gamma, which has the same
  gradient as LGA (sign(L - gamma) * grad L); this module writes the paper's form (`lga_loss`).
- As in the code, isolation uses a constant learning rate and no augmentation; the per-sample
  losses are taken in eval mode; clean training uses augmentation; unlearning sees the isolated
  images un-augmented, in train mode, at a constant rate (the code's 5e-4) with SGD + Nesterov
  momentum and a fresh optimizer (as in its quick-unlearning demo). Here isolation batches are
  shuffled (the code's isolation loader does not shuffle, which looks unintended).
- The code continues the isolation model through a step schedule (0.1, then 0.01 from epoch 40,
  0.001 from 60); here the clean phase uses the project's cosine schedule.

How the schedule was scaled. The paper uses 20 isolation / 60 clean / 20 unlearning epochs of 100
on CIFAR-10, the code 10 / 60 / 5 (of which 4 actually ascend), both at learning rate 0.1. The
project's undefended baseline makes 10 passes over a 28x28 set (mnist5k: 4,000 images, the small
CNN) and 40 over a 32x32 one; ABL's clean phase is shortened so that its time stays within a small
multiple of the undefended run's (unlearning passes over only the isolated 1% and costs next to nothing):
- 32x32: 10 isolation + 30 clean epochs, the code's isolation length;
- 28x28: 16 isolation + 6 clean epochs, so ABL makes 22 full passes where the baseline makes 10
  (the isolation's length is set by the thread-count measurement below, not by the time). The
  paper's proportion (a fifth, 2 epochs) is too short there: an mnist5k epoch is only 32 steps, and
  measured on mnist5k BadNets (seed 0) the isolation model has not yet learned the trigger after 2
  epochs (lowest-loss 1% all clean, AUROC of the isolation loss 0.75 at lr 0.05, 0.68 at lr 0.1).
  At lr 0.05 the LGA phase is less stable still, so `lr` defaults to the code's 0.1 for both
  isolation and clean training.

Which epoch the trigger is learned in depends on rounding. LGA at lr 0.1 shakes the model for the
first epochs (the training loss jumps between 0.5 and 6 before it settles near gamma), and the epoch
at which the poison drops to the bottom of the ranking moves with the thread count: on mnist5k BadNets
10% (seeds 0-4 x 1, 2 and 4 threads, 10 isolation epochs recorded) it was epoch 2 in some runs and 5
or 10 in others, and even once learned the lowest 1% can be clean for one epoch (seed 0, one thread:
precision 1.0, 0.1, 1.0 in epochs 2-4). With the old 4 epochs ranked on the last one, 3 of 15 runs
isolated little or no poison (precision 0.0, 0.0, 0.3); whether ABL worked depended on the thread count,
not the data. Hence a window: rank each sample over the epochs of the second half of isolation, so
one shaken epoch does not reorder the suspects, and enough epochs that late learners are caught. The
first window (8 epochs, the geometric mean of epochs 5-8, `isolation_score="window"`) held 14 of the 15
runs; in the 15th (seed 4, one thread) the model predicts the target on triggered test images from
epoch 4, yet the poisoned training images' loss (~1e-3) stays above that of the easiest clean images
until epoch 10. Recorded over 16 epochs (the same 15 runs, and Blend and Trojan 10%, seeds 0-2 at 1 and
2 threads), that run's precision read at 8-16 epochs was 0.00 0.00 0.10 0.45 0.60 0.62 0.97 1.00 0.93
with the geometric mean and 0.00 0.00 0.38 0.68 0.80 0.90 1.00 1.00 1.00 with the mean rank: a
geometric mean lets the one epoch whose losses span the most decades outvote the others, ranks weigh
every epoch alike. The default is therefore 16 epochs ranked by `isolation_score="ranks"` (epochs
9-16); at every length from 8 to 16 the mean rank isolated at least as precisely as the geometric mean
on all 27 runs. `isolation_score="last"` keeps the code's ranking. The measured grid is in
docs/defenses.md (`python bench/abl_isolation.py`). One Blend run (seed 2, two threads) isolates no
poison within 16 epochs with any ranking: LGA never fits that trigger below the clean images there.
- Unlearning: the code's 5 epochs at its 5e-4. On a small set the isolated 1% is a single batch
  (40 mnist5k images), so an unlearning epoch is one SGD step where the code, with 500 isolated
  CIFAR images in batches of 128, takes four.

Known limitation, measured on mnist5k BadNets (seed 0; CA/ASR of the delivered model):
- The defaults isolate 40 samples, all poisoned (precision 1.0, recall 0.1, AUROC 0.996), but the
  other 360 poisoned samples stay in the clean phase, which re-learns the trigger (ASR 100%), and
  unlearning cannot undo it: the isolated samples' loss is ~4e-5 in train mode (0 in float32 in
  eval mode), the trigger being fitted with a huge margin, so the gradient that unlearning climbs
  is nearly zero. Defaults: CA 0.959, ASR 1.0, RA 0.0 (with the 16-epoch isolation, 2026-12-08: CA 0.961, ASR 1.0).
- On that model no `unlearn_lr` in 5e-4 .. 5e-2 moved the ASR within 30 unlearning epochs (in
  train mode the BatchNorm statistics drift towards the isolated batch and CA slowly falls to
  ~0.89); from 0.1 up the ascent crawls, then explodes and takes CA to chance in the same steps
  that take ASR down. There was no window with low ASR and intact CA.
- `isolation_ratio=0.1` (in the range of the paper's ablation; it equals this run's poison rate,
  which a defender does not know) isolates 361 of the 400 (precision = recall 0.90); the 39 left
  are enough to re-learn the trigger (ASR 100%), and unlearning the 400 at 5e-4 for 5 or 20
  epochs (the latter the paper's 80 steps of 128) leaves ASR at 100% (CA 0.940 and 0.932).
- On small subsets (1,000-2,000 mnist5k images) the LGA phase is unstable from epoch to epoch
  (precision of the lowest 5% anywhere between 0 and 1), so isolation needs the full set.
`unlearn_lr` is exposed (up to 1.0) because of this sensitivity; `unlearn_epochs=0` turns
unlearning off for comparison.

The variants, measured on the same data (BadNets 10%, seed 0; undefended CA 0.973):
- The paper's joint objective does not help by itself: at the end of isolation the isolated
  samples' loss is already ~1e-6, so the ascent term has no gradient, whether it starts with the
  clean phase (a side experiment: the clean phase's trajectory was unchanged, CA 0.961, ASR 1.0)
  or runs in the unlearning epochs (`unlearn_objective=joint`: CA 0.964, ASR 1.0).
- Unlearning 1% with the complement loss does move: ASR reaches ~0 in 10-20 steps, but it takes
  the target class with it (class 0 accuracy 0.01 after 14 joint steps at 5e-4, CA 0.84; isolated
  only, frozen norms, 20 steps: CA 0.56): pushing the target label down on triggered digits
  lowers that label everywhere. With the joint objective at 5e-3 the clean batches restore CA
  (0.94-0.95 after 40-60 steps), but the 360 poisoned samples in them teach the trigger again
  (ASR 0.09-0.19). Bounding the ascent cannot help the cross-entropy, whose gradient is what is
  missing; the complement loss bounds itself (its gradient fades once p_label is small).
- The complement loss in the clean phase from its start (a side experiment, weight lam on the
  isolated term): lam 1: CA 0.889, ASR 0.048; lam 0.3: CA 0.931, ASR 0.59; lam 0.1: CA 0.949,
  ASR 0.68: unless the ascent dominates, the model learns the 40 as exceptions and the trigger
  from the other 360.
- Re-isolation works as a detector: after the clean phase the poisoned samples' loss is exactly
  0 in float32, the clean samples' lowest 2.4e-7, so the lowest 1%, 5% and 10% are all poison
  (AUROC 1.0) and the lowest 20% half poison.
- Together (`unlearn_objective=joint unlearn_loss=complement unlearn_lr=5e-3 unlearn_epochs=30`):
  attack   seed  reisolation  unlearned (precision)  CA     ASR
  BadNets  0     0.05         236 (1.0)              0.835  0.0
  BadNets  0     0.1          400 (1.0)              0.949  0.0
  BadNets  1     0.1          400 (1.0)              0.953  0.007
  BadNets  2     0.1          400 (0.998)            0.957  0.006
  Trojan   0     0.1          400 (0.985)            0.960  0.002
  Blend    0     0.1          400 (0.695)            0.836  0.007
  (the defaults, seed 0: BadNets CA 0.959-0.961, ASR 1.0; Trojan CA 0.959, ASR 0.996;
  Blend CA 0.736, ASR 0.609.)
  CA dips (to ~0.8) in the first unlearning epochs and recovers through the clean batches; where
  poison is left in them (ratio 0.05) the recovery is slower and the end point noisy (CA 0.835 in
  one run, 0.949 in another from the same clean-phase model). Over-isolating (ratio 0.2, 800
  suspects of which 400 clean) ended at CA 0.766, and on Blend the late ranking is less clean
  (122 clean samples unlearned, 122 poisoned left: CA 0.836). So the variants can remove BadNets here, but
  only when the second isolation covers about all of the poison, i.e. when the ratio is set near
  the poison rate, which a defender does not know; this is why they stay opt-in.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn as nn

from ..params import Param
from ..text import flagged_reason, number
from ..training import LossTally, Tensors, augment, batches, cosine_lr, set_lr, sgd, to_device
from .base import Defense, DefenseContext, DefenseResult, SampleView, train_epoch


def lga_loss(batch_mean_loss: torch.Tensor, gamma: float) -> torch.Tensor:
    """The local gradient ascent objective sign(L - gamma) * L on a batch's mean loss L: ordinary
    descent while L > gamma, ascent once L < gamma (zero gradient exactly at gamma), so the loss
    hovers around gamma. Its value is -L below gamma, hence negative."""
    return torch.sign(batch_mean_loss.detach() - gamma) * batch_mean_loss


def complement_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log(1 - p_y): descending it pushes the probability of the given label down, like
    ascending the cross-entropy, but its gradient on the label's logit is p_y, which stays near 1
    while the sample is confidently fitted (the cross-entropy's is 1 - p_y, there ~0) and fades once
    p_y is small, so it cannot run away. Computed from logits as logsumexp(all) - logsumexp(others),
    exact even where p_y rounds to 1 in float32."""
    others = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(others, 1)).mean()


def window_loss(epoch_losses: list[np.ndarray], score: str) -> np.ndarray:
    """The per-sample isolation score that is ranked, lowest first. "last": the loss after the last
    isolation epoch (the official code). "window": the geometric mean of the losses after each epoch of
    the second half of isolation (at least one epoch). "ranks": the mean, over the same epochs, of each
    sample's rank by loss within its epoch. Both windows keep a sample's place when LGA shakes the model
    for an epoch, so the isolated set does not flip with the thread count's rounding; ranks also weigh
    every epoch alike, where one epoch whose losses span more decades outvotes the others in a
    geometric mean (measured in this module's doc)."""
    if score == "last":
        return epoch_losses[-1]
    window = np.stack(epoch_losses[len(epoch_losses) // 2:]).astype(np.float64)
    if score == "ranks":
        # Ties (a trigger fitted to a loss of exactly 0 in float32) share their lowest rank.
        ranks = np.stack([np.searchsorted(np.sort(row), row, side="left") for row in window])
        return ranks.mean(axis=0).astype(np.float32)
    # A fitted trigger's loss can round to exactly 0 in float32; the floor keeps its log finite.
    floor = float(np.finfo(np.float32).tiny)
    return np.exp(np.log(np.maximum(window, floor)).mean(axis=0)).astype(np.float32)


def isolate_lowest(losses: np.ndarray, ratio: float) -> np.ndarray:
    """Boolean mask of the int(N * ratio) samples with the lowest loss (at least one), ties broken
    by index."""
    count = min(len(losses), max(1, int(len(losses) * ratio)))
    mask = np.zeros(len(losses), dtype=bool)
    mask[np.argsort(losses, kind="stable")[:count]] = True
    return mask


class ABL(Defense):
    name = "abl"
    title = "ABL"
    menu_order = 20
    description = ("anti-backdoor learning: isolate the lowest-loss 1% under local gradient ascent, "
                   "train on the rest, then unlearn the isolated samples by gradient ascent")
    key_params = ("isolation_epochs", "epochs", "unlearn_epochs", "unlearn_lr")
    phase_titles = {"isolate": "isolation", "train": "training", "unlearn": "unlearning"}
    suspicion_meaning = ("minus the sample's loss in ABL's isolation phase (poisoned samples are learned first, so "
                         "their loss is lowest)")
    sample_view = SampleView(
        "the samples it isolated as suspects", "isolation_loss", "isolation loss (as ranked)", "low",
        "ABL trains briefly and sets apart the samples it learned fastest, the lowest losses: for it to work, the "
        "red bars (poisoned) must sit at the far left.", log_scale=True, flagged="isolated", flagged_title="isolated",
        flagged_hint="ABL unlearns the isolated set: high precision means it mostly unlearns poison, not real images.")
    params = (
        Param("isolation_epochs", int, "epochs of local-gradient-ascent training before isolating", 1, 100),
        Param("gamma", float, "LGA loss threshold: the batch loss is held near it during isolation", 0.0, 5.0),
        Param("isolation_ratio", float, "share of the training set isolated (lowest isolation loss)", 0.001, 0.5),
        Param("isolation_score", str, "ranks: each sample's mean rank by loss over the second half of isolation "
              "(stable across thread counts); window: the geometric mean of its losses there; last: the loss "
              "after the last epoch (official code)", choices=("ranks", "window", "last")),
        Param("epochs", int, "epochs of plain training on the non-isolated samples", 1, 500),
        Param("unlearn_epochs", int, "epochs of gradient ascent on the isolated samples (0 = no unlearning)", 0, 200),
        Param("unlearn_lr", float, "constant learning rate of the unlearning (very sensitive)", 1e-6, 1.0),
        Param("unlearn_objective", str, "isolated: ascend on the isolated samples only (official code); joint: "
              "each step also descends on a batch of the other samples (the paper's L_GGA)",
              choices=("isolated", "joint")),
        Param("unlearn_loss", str, "ce: ascend the cross-entropy (paper, code); complement: descend "
              "-log(1 - p_label), which does not saturate (beyond the paper)", choices=("ce", "complement")),
        Param("reisolation_ratio", float, "0 = off; else, after clean training, also unlearn the lowest-loss "
              "share of the training set (beyond the paper)", 0.0, 0.5),
        Param("lr", float, "learning rate of isolation (constant) and peak of clean training (cosine)", 1e-5, 1.0),
        Param("batch_size", int, "batch size", 8, 4096),
        Param("weight_decay", float, "weight decay", 0.0, 0.1),
    )

    def diagnosis(self, summary):
        late = flagged_reason(summary, self.title, "unlearned", "unlearned", "unlearning it") \
            if number(summary.get("unlearned_recall")) is not None else None
        return late or flagged_reason(summary, self.title, "isolated", "isolated", "unlearning it") or \
            "The run does not record what ABL isolated, so it cannot tell why."

    def defaults(self, image_shape):
        small = image_shape[0] <= 28
        return {"isolation_epochs": 16 if small else 10, "gamma": 0.5, "isolation_ratio": 0.01,
                "isolation_score": "ranks",
                "epochs": 6 if small else 30, "unlearn_epochs": 5, "unlearn_lr": 5e-4,
                "unlearn_objective": "isolated", "unlearn_loss": "ce", "reisolation_ratio": 0.0, "lr": 0.1,
                "batch_size": 128, "weight_decay": 5e-4}

    def total_epochs(self, params):
        return params["isolation_epochs"] + params["epochs"] + params["unlearn_epochs"]

    def train(self, ctx: DefenseContext) -> DefenseResult:
        p = ctx.params
        generator = ctx.generator()
        model = ctx.build_model()
        n = len(ctx.train)

        # 1. Isolation: LGA at a constant rate, no augmentation.
        optimizer = sgd(model, p["lr"], p["weight_decay"])
        steps = -(-n // p["batch_size"])
        epoch_losses = []
        for epoch in range(1, p["isolation_epochs"] + 1):
            ce = train_epoch(ctx, model, optimizer, generator, lambda s: p["lr"], (epoch - 1) * steps,
                             "isolate", epoch, p["isolation_epochs"],
                             objective=lambda loss: lga_loss(loss, p["gamma"]), augmented=False)
            epoch_loss = ctx.per_sample_loss(model).cpu().numpy().astype(np.float32)
            epoch_losses.append(epoch_loss)
            ctx.end_epoch("isolate", epoch, p["isolation_epochs"], model, train_loss=round(ce, 5),
                          poison_detection_auroc=ctx.detection_auroc(-epoch_loss))
        losses = window_loss(epoch_losses, p["isolation_score"])
        isolated = isolate_lowest(losses, p["isolation_ratio"])
        report = ctx.flagged_report(isolated)  # shown, never used
        isolation_auroc = ctx.detection_auroc(-losses)
        keep = torch.from_numpy(np.flatnonzero(~isolated)).to(ctx.device)
        cut = torch.from_numpy(np.flatnonzero(isolated)).to(ctx.device)
        rest = Tensors(ctx.train.x[keep], ctx.train.y[keep])
        suspects = Tensors(ctx.train.x[cut], ctx.train.y[cut])

        # 2. Clean training of the same model on the rest, augmented, cosine from lr to zero.
        optimizer = sgd(model, p["lr"], p["weight_decay"])
        steps = -(-len(rest) // p["batch_size"])
        total = p["epochs"] * steps
        for epoch in range(1, p["epochs"] + 1):
            ce = train_epoch(ctx, model, optimizer, generator, lambda s: cosine_lr(s, total, p["lr"]),
                             (epoch - 1) * steps, "train", epoch, p["epochs"], data=rest)
            extra = {"isolated_count": report["flagged"], "isolated_precision": report["precision"],
                     "isolated_recall": report["recall"], "isolation_loss_auroc": isolation_auroc} \
                if epoch == 1 else {}
            ctx.end_epoch("train", epoch, p["epochs"], model, train_loss=round(ce, 5), **extra)

        # Optional second isolation (beyond the paper): the clean phase has fitted the poison left in
        # `rest` with a far lower loss than the clean samples, so the lowest losses now are poison too.
        summary_extra: dict = {}
        record_extra: dict = {}
        if p["reisolation_ratio"] > 0:
            late_losses = ctx.per_sample_loss(model).cpu().numpy().astype(np.float32)
            unlearned = isolated | isolate_lowest(late_losses, p["reisolation_ratio"])
            late = ctx.flagged_report(unlearned)
            summary_extra = {"unlearned_count": late["flagged"], "unlearned_precision": late["precision"],
                             "unlearned_recall": late["recall"],
                             "reisolation_loss_auroc": ctx.detection_auroc(-late_losses)}
            record_extra = {"reisolation_loss": late_losses, "unlearned": unlearned}
            keep = torch.from_numpy(np.flatnonzero(~unlearned)).to(ctx.device)
            cut = torch.from_numpy(np.flatnonzero(unlearned)).to(ctx.device)
            rest = Tensors(ctx.train.x[keep], ctx.train.y[keep])
            suspects = Tensors(ctx.train.x[cut], ctx.train.y[cut])

        # 3. Unlearning: push the suspects' labels down at a small constant rate, no augmentation.
        optimizer = sgd(model, p["unlearn_lr"], p["weight_decay"])
        for epoch in range(1, p["unlearn_epochs"] + 1):
            if p["unlearn_objective"] == "isolated" and p["unlearn_loss"] == "ce":
                steps = -(-len(suspects) // p["batch_size"])
                ce = train_epoch(ctx, model, optimizer, generator, lambda s: p["unlearn_lr"], (epoch - 1) * steps,
                                 "unlearn", epoch, p["unlearn_epochs"], data=suspects,
                                 objective=lambda loss: -loss, augmented=False)
                ctx.end_epoch("unlearn", epoch, p["unlearn_epochs"], model, isolated_loss=float(f"{ce:.4g}"))
            else:
                ce, clean_ce = unlearn_epoch(ctx, model, optimizer, generator, suspects, rest, epoch)
                extra = {"clean_loss": float(f"{clean_ce:.4g}")} if p["unlearn_objective"] == "joint" else {}
                ctx.end_epoch("unlearn", epoch, p["unlearn_epochs"], model, isolated_loss=float(f"{ce:.4g}"),
                              **extra)

        return DefenseResult(
            model=model, suspicion=-losses,
            sample_record={"isolation_loss": losses, "isolated": isolated,
                           "isolation_loss_epochs": np.stack(epoch_losses), **record_extra},
            summary={"isolated_precision": report["precision"], "isolated_recall": report["recall"],
                     "isolated_count": report["flagged"], "isolation_loss_auroc": isolation_auroc,
                     **summary_extra})


def unlearn_epoch(ctx: DefenseContext, model: nn.Module, optimizer: torch.optim.Optimizer,
                  generator: torch.Generator, suspects: Tensors, rest: Tensors, epoch: int) -> tuple[float, float]:
    """One pass over the suspects (un-augmented, train mode) lowering their label's probability with
    `unlearn_loss`; with the joint objective each step also descends the cross-entropy of an
    augmented batch drawn from `rest`, in the same forward pass (shared batch statistics). Returns
    the suspects' mean cross-entropy and the clean batches' (NaN without them)."""
    p = ctx.params
    joint = p["unlearn_objective"] == "joint"
    model.train()
    set_lr(optimizer, p["unlearn_lr"])
    steps = -(-len(suspects) // p["batch_size"])
    suspects_ce, clean_tally = LossTally(), LossTally()
    for i, idx in enumerate(batches(len(suspects), p["batch_size"], generator)):
        if len(idx) < 2 and not joint:
            continue  # a batch of one cannot be batch-normalised in train mode
        idx = to_device(idx, ctx.device)
        x, y = suspects.x[idx], suspects.y[idx]
        if joint:
            clean_idx = torch.randint(0, len(rest), (p["batch_size"],), generator=generator)
            clean_idx = to_device(clean_idx, ctx.device)
            x = torch.cat([augment(rest.x[clean_idx], generator, **ctx.augmentation), x])
        logits = model(x)
        suspect_logits = logits[len(logits) - len(idx):]
        suspect_ce = nn.functional.cross_entropy(suspect_logits, y)
        objective = -suspect_ce if p["unlearn_loss"] == "ce" else complement_loss(suspect_logits, y)
        if joint:
            clean_ce = nn.functional.cross_entropy(logits[:len(clean_idx)], rest.y[clean_idx])
            objective = objective + clean_ce
            clean_tally.add(clean_ce, len(clean_idx))
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        suspects_ce.add(suspect_ce, len(idx))
        ctx.step("unlearn", epoch, p["unlearn_epochs"], i + 1, steps)
    return suspects_ce.mean(), clean_tally.mean() if clean_tally.count else float("nan")
