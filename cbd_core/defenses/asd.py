"""ASD, Adaptive Splitting Defense (Gao et al., CVPR 2023, "Backdoor Defense via Adaptive Splitting").

ABL's insight was that a model's loss separates poisoned from clean samples; ASD keeps splitting the
training set by loss *while it trains*, and trains so that the split improves. The set is cut into a
clean pool, used with its labels, and a polluted pool, used without them: the model learns
semi-supervised (MixMatch), so whatever label the attacker gave a polluted sample never reaches it,
and a model that never learned the trigger keeps a high loss on the poisoned samples, which keeps them
in the polluted pool. The pools are rebuilt at the start of every epoch, in three stages:

1. Class-aware loss-guided split ("warmup", the first half of the epochs): the clean pool is a few
   seed samples per class plus, in every class (by its given label), the samples of lowest loss, a
   number that grows as training goes on. Taking the same number from every class keeps the target
   class, whose poisoned samples a plain model would fit first, from filling the pool.
2. Class-agnostic loss-guided split ("split", up to three quarters): the lowest-loss `epsilon` (half)
   of the whole set.
3. Meta-split ("meta", the last quarter): a copy of the model (the "virtual model") takes one epoch of
   plain supervised training on the whole poisoned set at a high rate; samples whose loss *falls* most
   under that update are the ones a model learns at once, i.e. the poisoned and the hard-to-forget
   ones, so the clean pool is the `epsilon` with the smallest loss drop. This catches what stage 2
   cannot: poisoned samples the semi-supervised model has started to fit.

The loss that ranks samples is the symmetric cross-entropy (SCE = 0.1 CE + 1 RCE, RCE = -sum p log of
the one-hot label clamped at 1e-4), computed without augmentation in eval mode. Every epoch's split is
recorded: `split_score` (epochs, N), higher = put in the polluted pool (the loss in stages 1-2, the
loss drop in stage 3), and `polluted` (epochs, N); the pages show both epoch by epoch. The summary
holds the last polluted pool's share of poison (precision) and of the poison it holds (recall),
computed outside the defense from the true mask (shown, never used).

What differs from the official code (KuofengGao/ASD: ASD.py, config/baseline_asd.yaml,
utils/trainer/semi.py), and why:
- Seeds. The code draws its 10 seed samples per class at random *among the samples it knows are
  clean* (the paper assumes the defender holds a few clean samples). Here the defense never sees the
  poison mask and has no clean data of its own, so the seeds are drawn at random from each class as
  labelled: at a 10% poison rate on mnist5k about half of the target class is poisoned, and so are
  about half its seeds. Stage 1 then rests on the class-wise lowest losses alone; the seeds are few.
- Scale. The code trains 120 epochs of 1,024 MixMatch steps of 64 labelled and 64 unlabelled images
  (a ResNet-18 on CIFAR-10, a GPU day). Here: 12 epochs on 28x28 sets (40 on 32x32) of N / 256 steps
  each (16 on mnist5k), to keep an mnist5k run near a CBD run's cost on 2 cores (measured below). The
  stage boundaries keep the code's proportions (60/90/120 -> 6/9/12). The code adds 10 per class to the clean pool
  every 5 epochs (reaching 120 of 5,000 per class, 2.4%); here 5 per class every epoch (reaching 35
  of about 400, 9%), so the pool grows over 6 epochs instead of 60.
- Meta-split. The code's virtual model trains its last two ResNet stages and the linear layer: most of
  a ResNet-18's weights (layer3 and layer4 hold about 90% of them). The project's models have no common
  names for those, so `meta_share` says which share of the copy's parameter tensors trains, counted
  from the last; the default trains all of them (Adam, the code's 0.015, one epoch, augmented batches
  of 128 as the code's training loader). Measured: with the later half of the tensors only (on the
  small CNN, the two dense layers and a batch-norm shift), the update could not learn the trigger in
  one epoch, the loss drop did not single out the poison and stage 3 let a quarter of it back into the
  clean pool (below).
- MixMatch. The code interleaves labelled and unlabelled parts across batches so batch norm sees a
  mix; here the mixed labelled and unlabelled images go through the model in one batch, which gives
  every batch-norm layer the same mix directly. The unlabelled guesses are made in train mode, as in
  the code. Augmentation is the project's (shifts, flips on 32x32), not the code's crop-and-flip.
- The code keeps the best-accuracy checkpoint by *test* accuracy; here the last model is delivered
  (a defender has no test labels to choose with).

Measured on mnist5k, BadNets 10%, seed 0, 2 threads, one run each (CPU seconds, because the machine was
shared and wall times varied threefold; CA / ASR of the delivered model; metrics.jsonl per epoch):
- defaults (16 steps per epoch, meta_share 1): CPU 186 s; the polluted pool held 99% of the poison in
  stage 1 and all of it from stage 2 on (its precision 0.20, twice the data's share); CA 0.872, ASR
  1.2%.
- 32 steps per epoch and meta_share 0.5: CPU 276 s. Stage 1 let the trigger in (ASR up to 60%): the
  clean pool's 4 poisoned samples were target-class seeds drawn at random (see Seeds). Stage 2 took it
  out (polluted recall 1.0, CA 0.933, ASR 1.0%); stage 3 with half the tensors put back a quarter of
  the poison (recall 0.73) and ended at CA 0.926, ASR 60%.
- CBD with its defaults on the same data: CA 0.967, ASR 0.4%. Its CPU time was not measured in the
  same conditions; wall times on the shared machine were 124-298 s for CBD against 333-811 s for the
  32-step ASD, so the 16-step default is meant to be about one CBD run, not yet confirmed.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..params import Param
from ..text import number, pct
from ..training import Adam, LossTally, augment, batches, to_device
from .base import Defense, DefenseContext, DefenseResult, SampleView, train_epoch

RCE_CLAMP = 1e-4  # the one-hot label's zeros are clamped to this inside RCE's log (the code's value)


def sce_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Per-sample symmetric cross-entropy alpha * CE + beta * RCE, RCE = -sum_k p_k log(max(onehot_k,
    1e-4)) = -log(1e-4) * (1 - p_label), with p clamped to [1e-7, 1] as in the code."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    p = F.softmax(logits, dim=1).clamp(1e-7, 1.0)
    one_hot = F.one_hot(labels, logits.shape[1]).float().clamp(RCE_CLAMP, 1.0)
    rce = -(p * one_hot.log()).sum(1)
    return alpha * ce + beta * rce


def class_aware_split(losses: np.ndarray, labels: np.ndarray, seeds: np.ndarray, per_class: int) -> np.ndarray:
    """Stage 1: the clean pool (bool mask) is the seeds plus, in every class, the `per_class` samples
    of lowest loss among the non-seeds (ties broken by index)."""
    clean = np.zeros(len(losses), bool)
    clean[seeds] = True
    if per_class > 0:
        for c in np.unique(labels):
            members = np.flatnonzero((labels == c) & ~clean)
            clean[members[np.argsort(losses[members], kind="stable")[:per_class]]] = True
    return clean


def lowest_share(scores: np.ndarray, share: float) -> np.ndarray:
    """Stages 2 and 3: the clean pool is the int(N * share) samples of lowest score."""
    clean = np.zeros(len(scores), bool)
    clean[np.argsort(scores, kind="stable")[:int(len(scores) * share)]] = True
    return clean


def stage_of(epoch: int, epochs: int, warmup_share: float, split_share: float) -> str:
    """"warmup", "split" or "meta" for 1-based `epoch` of `epochs` (the code's 60/90/120 boundaries as
    shares of the run)."""
    if epoch <= round(warmup_share * epochs):
        return "warmup"
    if epoch <= round(split_share * epochs):
        return "split"
    return "meta"


class ASD(Defense):
    name = "asd"
    title = "ASD"
    menu_order = 40
    description = ("adaptive splitting: a clean pool (labelled) and a polluted pool (unlabelled) rebuilt every epoch "
                   "from the loss, with semi-supervised MixMatch training on both")
    key_params = ("epochs", "epsilon", "seeds_per_class", "lambda_u")
    phase_titles = {"warmup": "stage 1: class-aware split", "split": "stage 2: class-agnostic split",
                    "meta": "stage 3: meta-split"}
    suspicion_meaning = ("the sample's split score at the end (its loss drop under the meta-split's virtual update): "
                         "the higher, the surer it belongs in the polluted pool")
    sample_view = SampleView(
        "the clean and polluted pools, epoch by epoch", "split_score", "split score", "high",
        "ASD puts the samples of highest loss (in stage 3: of largest loss drop under a virtual update) in the "
        "polluted pool, where their labels are ignored: for it to work, the red bars (poisoned) must sit at the "
        "right, beyond the clean ones.",
        first_row=1, row_caption=lambda row: "", flagged="polluted", flagged_title="polluted",
        gallery_hint="If the split works, the highest row (most surely polluted) is mostly poisoned images and the "
                     "lowest row clean images trained with their labels.")
    params = (
        Param("epochs", int, "epochs of semi-supervised training (the pools are rebuilt before each)", 3, 500),
        Param("warmup_share", float, "share of the epochs in stage 1 (class-aware split); code: 60 of 120", 0.05, 0.9),
        Param("split_share", float, "share of the epochs up to the end of stage 2 (class-agnostic); code: 90 of 120",
              0.1, 1.0),
        Param("seeds_per_class", int, "samples per class drawn at random into the first clean pool", 1, 1000),
        Param("growth", int, "samples per class added to stage 1's clean pool each epoch after the first", 0, 1000),
        Param("epsilon", float, "share of the training set in the clean pool in stages 2 and 3", 0.05, 0.95),
        Param("steps_per_epoch", int, "MixMatch steps per epoch (0 = N / (4 x batch_size): half a pass of the "
              "labelled and unlabelled batches together)", 0, 100_000),
        Param("batch_size", int, "labelled and unlabelled images per MixMatch step (each)", 8, 1024),
        Param("lr", float, "Adam learning rate of the model (code: 0.002)", 1e-6, 1.0),
        Param("lambda_u", float, "weight of the unlabelled loss, ramped up linearly over the run", 0.0, 1000.0),
        Param("temperature", float, "sharpening temperature of the unlabelled guesses", 0.01, 1.0),
        Param("mix_alpha", float, "Beta(alpha, alpha) of MixMatch's mixup", 0.01, 10.0),
        Param("meta_lr", float, "Adam learning rate of the meta-split's virtual model (code: 0.015)", 1e-6, 1.0),
        Param("meta_share", float, "share of the virtual model's parameter tensors, from the last, that the "
              "meta-split trains (code: ResNet-18's last two stages and classifier, most of its weights)", 0.01, 1.0),
        Param("sce_alpha", float, "weight of CE in the split loss (SCE)", 0.0, 10.0),
        Param("sce_beta", float, "weight of reverse CE in the split loss (SCE)", 0.0, 10.0),
    )

    def defaults(self, image_shape):
        small = image_shape[0] <= 28
        return {"epochs": 12 if small else 40, "warmup_share": 0.5, "split_share": 0.75, "seeds_per_class": 10,
                "growth": 5, "epsilon": 0.5, "steps_per_epoch": 0, "batch_size": 64, "lr": 0.002, "lambda_u": 15.0,
                "temperature": 0.5, "mix_alpha": 0.75, "meta_lr": 0.015, "meta_share": 1.0, "sce_alpha": 0.1,
                "sce_beta": 1.0}

    def resolve(self, image_shape, overrides):
        params = super().resolve(image_shape, overrides)
        if params["split_share"] < params["warmup_share"]:
            from ..errors import UserInputError

            raise UserInputError(f"{self.name}.split_share must be at least warmup_share", f"{self.name}.split_share")
        return params

    def diagnosis(self, summary):
        share = number(summary.get("clean_pool_poison_share"))
        recall = number(summary.get("polluted_recall"))
        if share is None or recall is None:
            return "The run does not record ASD's pools, so it cannot tell why."
        if recall < 0.999:
            return (f"ASD's last clean pool still held {pct(1 - recall)} of the poison, trained with its labels "
                    f"({pct(share)} of that pool was poisoned): the trigger was learned from it.")
        return ("ASD kept all the poison in the polluted pool, whose labels it never used, yet the model learned the "
                "trigger: MixMatch's guesses on the unlabelled, triggered images taught it back.")

    def success_note(self, summary):
        recall = number(summary.get("polluted_recall"))
        return None if recall is None else f"Its last polluted pool held {pct(recall)} of the poison."

    def train(self, ctx: DefenseContext) -> DefenseResult:
        p = ctx.params
        n = len(ctx.train)
        labels = ctx.train.y.cpu().numpy()
        generator = ctx.generator()
        rng = np.random.default_rng(ctx.seed)
        seeds = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=min(p["seeds_per_class"],
                                                                                 int((labels == c).sum())),
                                           replace=False) for c in np.unique(labels)]).astype(np.int64)
        model = ctx.build_model()
        classes = ctx.training_pass(model)[1].shape[1]  # the first split's pass, remembered
        optimizer = Adam(model.parameters(), lr=p["lr"])
        steps = p["steps_per_epoch"] or max(1, -(-n // (4 * p["batch_size"])))
        stage_epochs = {s: sum(stage_of(e, p["epochs"], p["warmup_share"], p["split_share"]) == s
                               for e in range(1, p["epochs"] + 1)) for s in ("warmup", "split", "meta")}
        scores, polluted_rows = [], []
        per_class, within = 0, {"warmup": 0, "split": 0, "meta": 0}
        for epoch in range(1, p["epochs"] + 1):
            stage = stage_of(epoch, p["epochs"], p["warmup_share"], p["split_share"])
            within[stage] += 1
            loss = self._split_loss(ctx, model)
            if stage == "warmup":
                per_class += p["growth"] if epoch > 1 else 0
                clean, score = class_aware_split(loss, labels, seeds, per_class), loss
            elif stage == "split":
                clean, score = lowest_share(loss, p["epsilon"]), loss
            else:
                virtual = self._virtual_update(ctx, model, generator, epoch)
                score = loss - self._split_loss(ctx, virtual)
                clean = lowest_share(score, p["epsilon"])
            scores.append(score.astype(np.float32))
            polluted_rows.append(~clean)
            report = ctx.flagged_report(~clean)  # shown, never used
            tally = self._mixmatch_epoch(ctx, model, optimizer, generator, np.flatnonzero(clean),
                                         np.flatnonzero(~clean), classes, epoch, steps, stage, within[stage],
                                         stage_epochs[stage])
            ctx.end_epoch(stage, within[stage], stage_epochs[stage], model, train_loss=round(tally, 5),
                          clean_pool=int(clean.sum()), polluted_precision=report["precision"],
                          polluted_recall=report["recall"],
                          poison_detection_auroc=ctx.detection_auroc(score))
        report = ctx.flagged_report(polluted_rows[-1])
        clean_pool = ~polluted_rows[-1]
        # The share of the last clean pool that is poisoned, from the polluted pool's figures (the defense
        # never sees the mask): poison in the clean pool = poison * (1 - recall), poison = hits / recall.
        hits = report["precision"] * report["flagged"] if report["flagged"] else 0.0
        total_poison = hits / report["recall"] if report["recall"] and np.isfinite(report["recall"]) else float("nan")
        in_clean = total_poison - hits if np.isfinite(total_poison) else float("nan")
        return DefenseResult(
            model=model, suspicion=scores[-1],
            sample_record={"split_score": np.stack(scores), "polluted": np.stack(polluted_rows)},
            summary={"polluted_count": report["flagged"], "polluted_precision": report["precision"],
                     "polluted_recall": report["recall"], "clean_pool_size": int(clean_pool.sum()),
                     "clean_pool_poison_share": in_clean / max(1, int(clean_pool.sum()))
                     if np.isfinite(in_clean) else None})

    def _split_loss(self, ctx: DefenseContext, model: nn.Module) -> np.ndarray:
        """Every training sample's SCE under `model` (eval mode, no augmentation)."""
        logits = ctx.training_pass(model)[1]
        return sce_loss(logits, ctx.train.y, ctx.params["sce_alpha"], ctx.params["sce_beta"]).cpu().numpy()

    def _virtual_update(self, ctx: DefenseContext, model: nn.Module, generator: torch.Generator,
                        epoch: int) -> nn.Module:
        """Stage 3's virtual model: a copy of `model` whose last `meta_share` of parameter tensors (in
        the order the model registers them: the last blocks and the classifier) took one epoch of plain
        supervised training on the whole poisoned set (Adam at meta_lr, augmented batches of 128)."""
        p = ctx.params
        virtual = copy.deepcopy(model)
        tensors = list(virtual.parameters())
        first_trained = len(tensors) - max(1, round(p["meta_share"] * len(tensors)))
        for frozen in tensors[:first_trained]:
            frozen.requires_grad_(False)
        meta_optimizer = Adam(tensors[first_trained:], lr=p["meta_lr"])
        saved, ctx.params = ctx.params, {**p, "batch_size": 128}
        try:
            train_epoch(ctx, virtual, meta_optimizer, generator, lambda s: p["meta_lr"], 0, "meta", epoch,
                        p["epochs"])
        finally:
            ctx.params = saved
        return virtual

    def _mixmatch_epoch(self, ctx: DefenseContext, model: nn.Module, optimizer: Adam, generator: torch.Generator,
                        clean: np.ndarray, polluted: np.ndarray, classes: int, epoch: int, steps: int,
                        phase: str, phase_epoch: int, phase_epochs: int) -> float:
        """`steps` MixMatch steps: a labelled batch from the clean pool, an unlabelled one from the polluted
        pool (two augmented views, their averaged prediction sharpened as the target), everything mixed up
        with a shuffled copy, Lx + lambda_u * ramp * Lu minimised. Returns the mean Lx."""
        p = ctx.params
        model.train()
        labelled = _cycle(torch.from_numpy(clean), p["batch_size"], generator)
        unlabelled = _cycle(torch.from_numpy(polluted), p["batch_size"], generator)
        mix = np.random.default_rng([ctx.seed, epoch])
        tally = LossTally()
        for step in range(steps):
            xi = to_device(next(labelled), ctx.device)
            x = augment(ctx.train.x[xi], generator, **ctx.augmentation)
            targets = [F.one_hot(ctx.train.y[xi], classes).float()]
            inputs = [x]
            if len(polluted):
                ui = to_device(next(unlabelled), ctx.device)
                u1 = augment(ctx.train.x[ui], generator, **ctx.augmentation)
                u2 = augment(ctx.train.x[ui], generator, **ctx.augmentation)
                with torch.no_grad():
                    guess = (F.softmax(model(u1), 1) + F.softmax(model(u2), 1)) / 2
                    sharp = guess ** (1 / p["temperature"])
                    sharp = sharp / sharp.sum(1, keepdim=True)
                inputs += [u1, u2]
                targets += [sharp, sharp]
            all_x, all_t = torch.cat(inputs), torch.cat(targets)
            lam = float(mix.beta(p["mix_alpha"], p["mix_alpha"]))
            lam = max(lam, 1 - lam)
            order = to_device(torch.randperm(len(all_x), generator=generator), ctx.device)
            mixed_x = lam * all_x + (1 - lam) * all_x[order]
            mixed_t = lam * all_t + (1 - lam) * all_t[order]
            logits = model(mixed_x)
            b = len(x)
            lx = -(F.log_softmax(logits[:b], 1) * mixed_t[:b]).sum(1).mean()
            lu = ((F.softmax(logits[b:], 1) - mixed_t[b:]) ** 2).mean() if len(logits) > b else lx * 0
            ramp = min(1.0, (epoch - 1 + step / steps) / p["epochs"])  # the code ramps over all its epochs
            loss = lx + p["lambda_u"] * ramp * lu
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tally.add(lx, b)
            ctx.step(phase, phase_epoch, phase_epochs, step + 1, steps)
        return tally.mean()


def _cycle(pool: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless shuffled batches of `pool`'s entries (full batches while the pool allows), reshuffled at
    each pass, like the code's loaders with drop_last."""
    while True:
        for idx in batches(len(pool), batch_size, generator, drop_last=True):
            yield pool[idx]
