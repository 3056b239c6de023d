"""What a defense gets and what it gives back.

A defense gets the poisoned training set as tensors, a builder for fresh models, and its own
parameters. The context also holds the poison mask and the test sets, in private fields that only its
reporting methods read: a defense may *report* how good its per-sample suspicion is
(`ctx.detection_auroc`, `ctx.flagged_report`) and how the model scores on the test sets
(`ctx.end_epoch`), but those methods return numbers to log, and nothing a defense decides may depend on
them (its code never reads the private fields).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..capture import loss_singled_out
from ..params import Param, resolve_params
from ..progress import Cancelled, ProgressCallback, ProgressEvent
from ..training import (EvalSets, LossTally, PassMemo, Tensors, augment, batches, features_and_logits, set_lr,
                        to_device)




@dataclass
class DefenseContext:
    train: Tensors  # the poisoned training set, on the device
    build_model: Callable[[], nn.Module]  # a fresh, seeded model on the device
    params: dict[str, Any]  # this defense's resolved parameters
    augmentation: dict[str, Any]  # {"pad": int, "flip": bool}
    seed: int
    device: torch.device
    progress: ProgressCallback
    # Reporting only: these close over the poison mask and the test sets, which the defense never holds.
    _eval_sets: EvalSets
    _poison_mask: np.ndarray
    _log: Callable[[dict[str, Any]], None]
    _is_cancelled: Callable[[], bool] = lambda: False
    # Reporting only: called after each epoch's line with the run's epoch number (1-based, the line's
    # position in metrics.jsonl), the line and the model; the pipeline records features through it.
    _on_epoch: Callable[[int, dict[str, Any], nn.Module], None] = lambda number, line, model: None
    _started: float = field(default_factory=time.perf_counter)
    # Progress of the whole run: every phase's epochs, reported or not (Defense.progress_stages), and
    # how many have ended: those with a metrics line, and those without one (CBD's probes).
    _total_epochs: int = 0
    _epochs_done: int = 0
    _unreported_done: int = 0
    _epoch_started: float = field(default_factory=time.perf_counter)
    # Training samples whose features the run keeps for its embeddings (None: none kept here).
    _embedding_index: torch.Tensor | None = None
    _full_pass: PassMemo = field(default_factory=PassMemo)

    def per_sample_loss(self, model: nn.Module) -> torch.Tensor:
        """Cross-entropy of every training sample under `model` (eval mode, no augmentation).

        The pass is remembered with the model's exact state (`PassMemo`): asked again for an unchanged
        model it is not made twice, and the run's embeddings take their features from it."""
        return F.cross_entropy(self.training_pass(model)[1], self.train.y, reduction="none")

    def training_pass(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features (N, feature_dim) and logits (N, classes) of every training sample under
        `model` (eval mode, no augmentation): the same remembered pass as `per_sample_loss`."""
        remembered = self._full_pass.get(model)
        if remembered is None:
            remembered = features_and_logits(model, self.train.x)
            self._full_pass.put(model, remembered)
        return remembered

    def remembered_embedding(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(features, logits) of the embedding samples from the last full pass over `model`, if the
        model has not changed since; None otherwise."""
        remembered = self._full_pass.get(model)
        if remembered is None or self._embedding_index is None:
            return None
        return remembered[0][self._embedding_index], remembered[1][self._embedding_index]

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator for shuffling and augmentation, derived from the run's seed."""
        return torch.Generator().manual_seed(self.seed * 1000 + offset)

    def step(self, phase: str, epoch: int, epochs: int, step: int, steps: int) -> None:
        """Report a finished batch; raises `Cancelled` when the user cancelled the run."""
        if self._is_cancelled():
            raise Cancelled()
        self.progress(ProgressEvent(phase, epoch, epochs, step, steps, **self._run_progress(step / max(1, steps))))

    def _run_progress(self, within_epoch: float) -> dict[str, float | None]:
        done = self._epochs_done + self._unreported_done
        fraction = min(1.0, (done + within_epoch) / self._total_epochs) if self._total_epochs > 0 \
            else None
        return {"run_fraction": fraction, "elapsed_seconds": round(time.perf_counter() - self._started, 3)}

    def detection_auroc(self, suspicion: np.ndarray) -> float:
        """AUROC of a per-sample suspicion score against the true poison mask (shown, never used)."""
        from ..metrics import auroc

        return auroc(suspicion, self._poison_mask)

    def flagged_report(self, flagged: np.ndarray) -> dict[str, float]:
        """Precision and recall of a set of samples flagged as poisoned, against the true mask
        (shown, never used): precision = share of flagged that are poisoned, recall = share of
        poisoned that are flagged; NaN where undefined."""
        flagged = np.asarray(flagged, dtype=bool)
        hits = int((flagged & self._poison_mask).sum())
        return {"flagged": int(flagged.sum()),
                "precision": hits / flagged.sum() if flagged.any() else float("nan"),
                "recall": hits / self._poison_mask.sum() if self._poison_mask.any() else float("nan")}

    def end_unreported_epoch(self, phase: str, epoch: int, epochs: int) -> None:
        """An epoch that writes no metrics line (CBD's probes, which train only to learn the weights):
        counted in the run's progress, so the bar and its estimate move on through it."""
        self._unreported_done += 1
        self._epoch_started = time.perf_counter()
        self.progress(ProgressEvent(phase, epoch, epochs, **self._run_progress(0.0)))
        if self._is_cancelled():
            raise Cancelled()

    def capture_report(self, loss: np.ndarray, model: nn.Module) -> dict[str, Any]:
        """Did a deliberately backdoored model (CBD's f_B) have the trigger? From its per-sample
        training loss against the true poison mask and its ASR on the triggered test set (shown,
        never used): `captured` when its loss singles out the poison (cbd_core.capture, the one definition
        every page reads)."""
        loss = np.asarray(loss, dtype=np.float64)
        separation = self.detection_auroc(-loss)
        mask = self._poison_mask
        return {"captured": bool(loss_singled_out(separation)),
                "detection_auroc": separation,
                "loss_poisoned_median": float(np.median(loss[mask])) if mask.any() else None,
                "loss_clean_median": float(np.median(loss[~mask])) if (~mask).any() else None,
                "test_attack_success_rate": self._eval_sets.evaluate(model)["attack_success_rate"]}

    def end_epoch(self, phase: str, epoch: int, epochs: int, model: nn.Module, **extra: Any) -> dict[str, Any]:
        """Score `model` on the test sets, log the epoch's line, report it; returns the line."""
        line = {"phase": phase, "epoch": epoch, "epochs": epochs, **self._eval_sets.evaluate(model), **extra}
        now = time.perf_counter()
        # elapsed: since training started; epoch_seconds: this epoch alone, its scoring included; stage: the
        # run's epochs ended with this one, unreported ones included (timing reads its pace from it).
        line.update(elapsed_seconds=round(now - self._started, 3), epoch_seconds=round(now - self._epoch_started, 3),
                    stage=self._epochs_done + self._unreported_done + 1)
        self._epoch_started = now
        self._epochs_done += 1
        self._log(line)
        self._on_epoch(self._epochs_done, line, model)
        self.progress(ProgressEvent(phase, epoch, epochs, metrics=line, **self._run_progress(0.0)))
        if self._is_cancelled():
            raise Cancelled()
        return line


@dataclass
class DefenseResult:
    model: nn.Module  # the model the defense delivers (CBD: f_C)
    other_models: dict[str, nn.Module] = field(default_factory=dict)  # e.g. {"f_B": ...}
    # Per training sample, higher = more suspected of being poisoned; None if the defense has no opinion.
    suspicion: np.ndarray | None = None
    # Arrays saved to the run's per-sample file, e.g. {"weights": (epochs + 1, N)}.
    sample_record: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelView:
    """How the pages present one of a defense's models: its title, and what to look for on its
    embedding map and in its attribution maps."""

    title: str
    map_hint: str
    attribution_hint: str


@dataclass(frozen=True)
class SampleView:
    """How the pages and the report draw a defense's per-sample record (sample_weights.npz): which of
    its arrays scores the samples, which end of that score is suspicious, and what to say about it.

    `score` is (N,) or, one row per epoch or round, (rows, N); `flagged` (optional) the samples the
    defense set apart, of the same shape. With rows of epochs (`rows="epoch"`) the page moves through
    them with a slider and plots how well the score ranks the poison at each; with rounds it shows the
    last round's histogram and a table of what each round set apart."""

    heading: str  # after the defense's title: "CBD: each sample's weight as f_C trains"
    score: str  # the array's name in the record
    score_title: str  # the histogram's axis, e.g. "weight in f_C's loss"
    suspicious: str  # "low" or "high": where the samples it suspects sit on that axis
    hint: str  # what to look for on the histogram
    log_scale: bool = False  # draw log10 of the score (losses that span many decades)
    rows: str = "epoch"  # a 2-D score's rows: "epoch" or "round"
    # Rows of epochs: they follow this phase's epochs (None: the run's), row 0 being the phase's
    # epoch `first_row` (CBD: 0, the weights before f_C's first epoch).
    epoch_phase: str | None = None
    first_row: int = 1
    row_caption: Callable[[int], str] = lambda row: ""  # what a row is, e.g. "f_C's epoch 2"
    score_short: str = ""  # the score in an image's caption ("w"); default its title
    is_weight: bool = False  # a training weight in [0, 1] (maps colour by it on a log scale), not a score
    # A summary field holding the row from which each sample keeps its lowest score (CBD's stable
    # weighting), shaded on the AUROC curve with this label.
    kept_from: str | None = None
    kept_label: str = ""
    flagged: str | None = None
    flagged_title: str = "flagged"  # "isolated", "filtered out", ...
    flagged_hint: str = ""
    gallery_hint: str = ""  # what the most and least suspected images should show

    def suspicion(self, score):
        """The score turned so that higher = more suspected (for AUROC and ranking)."""
        return -score if self.suspicious == "low" else score

    def first_epoch(self, metrics: list[dict[str, Any]]) -> int:
        """The Train page's epoch number of row 0 (`runs.epoch_number`: CBD's f_B stages 1-4, then
        f_C's epochs, so the weights f_C starts with are at 4): the one numbering of a score's rows
        that the Sample weights page and the Lesson both use."""
        from ..runs import epoch_number

        if self.epoch_phase is None:
            return self.first_row
        first = epoch_number(metrics, self.epoch_phase, 1)
        return (first - 1 if first else 0) + self.first_row


PLAIN_MODEL = ModelView(
    "trained model",
    "Crosses (poisoned images) in an island of their own mean the model learned the trigger; crosses among "
    "their true class mean it did not.",
    "A bright area on the trigger means the model decides by the trigger, not the image's content: the backdoor "
    "is alive.")


class Defense:
    """Base class: subclasses set `name`, `description`, `params` and implement `defaults`, `train`.

    The class attributes below the parameters are the defense's display metadata: the pages read them
    and never branch on a defense's name, so adding a defense touches its own module and the registry."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    menu_order: ClassVar[int] = 100  # its place in the registry and in every menu (then by name)
    # How its models are saved, in the order every page and map shows them (one place decides it).
    model_names: ClassVar[tuple[str, ...]] = ("model",)
    delivered_model: ClassVar[str | None] = None  # the model it delivers (None: the first of model_names)
    backdoored_model: ClassVar[str | None] = None  # a model backdoored on purpose (CBD's f_B), if any
    key_params: ClassVar[tuple[str, ...]] = ("epochs",)  # the settings the Train form shows first
    phase_titles: ClassVar[dict[str, str]] = {"train": "training"}  # metrics' phase names, as pages say them
    # What a high per-sample suspicion means, in a phrase; None: the defense has no per-sample opinion.
    suspicion_meaning: ClassVar[str | None] = None
    sample_view: ClassVar[SampleView | None] = None  # how pages draw its per-sample record; None: nothing
    curves_hint: ClassVar[str] = ""  # what to look for in its CA / ASR curves, beyond the obvious
    model_views: ClassVar[dict[str, ModelView]] = {"model": PLAIN_MODEL}

    @property
    def sentence_name(self) -> str:
        """How sentences name it ("CBD removed the backdoor")."""
        return self.title

    @property
    def delivered(self) -> str:
        return self.delivered_model or self.model_names[0]

    def model_order(self, names) -> list[str]:
        """`names` (saved models of one of its runs) in its declared order, unknown ones after by name."""
        rank = {n: i for i, n in enumerate(self.model_names)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))

    def diagnosis(self, summary: dict[str, Any]) -> str | None:
        """Why a run of this defense failed (weakened / persists), from its summary; None: no idea."""
        return None

    def made_worse_reason(self, summary: dict[str, Any]) -> str | None:
        """Why a run of this defense left the attack stronger than without a defense ("made worse");
        None: its `diagnosis` says it."""
        return None

    def success_note(self, summary: dict[str, Any]) -> str | None:
        """A sentence for a run that removed the backdoor, beyond the ASR (e.g. how well it found the
        poison); None: nothing more."""
        return None

    def sample_note(self, summary: dict[str, Any], params: dict[str, Any], offset: int) -> str | None:
        """A caption beside its per-sample view (`offset`: the epoch number, as the Train page counts,
        of the record's row 0); None: none."""
        return None

    def phase_title(self, phase: str | None) -> str:
        """How the pages name one of its training phases (the phase itself when it has no title)."""
        return self.phase_titles.get(phase or "", phase or "")

    def model_view(self, model: str) -> ModelView:
        return self.model_views.get(model, PLAIN_MODEL)

    def defaults(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        return {}

    def resolve(self, image_shape: tuple[int, int, int], overrides: dict[str, Any] | None) -> dict[str, Any]:
        return resolve_params(self.name, self.params, self.defaults(image_shape), overrides)

    def total_epochs(self, params: dict[str, Any]) -> int:
        """Epochs (metric lines) a run with these parameters writes, every phase's."""
        return int(params.get("epochs", 0))

    def progress_stages(self, params: dict[str, Any]) -> int:
        """Epochs a run with these parameters trains, with a line or not: what its progress counts."""
        return self.total_epochs(params)

    def train(self, ctx: DefenseContext) -> DefenseResult:
        raise NotImplementedError


def train_epoch(ctx: DefenseContext, model: nn.Module, optimizer: torch.optim.Optimizer,
                generator: torch.Generator, lr_at: Callable[[int], float], first_step: int,
                phase: str, epoch: int, epochs: int, data: Tensors | None = None,
                objective: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
                augmented: bool = True, frozen_norms: bool = False) -> float:
    """One pass over `data` (default: the whole training set) minimising `objective(mean batch
    cross-entropy)` (ABL: its local gradient ascent, or -loss to unlearn); returns the mean
    cross-entropy seen. With `frozen_norms` the batch norms stay in eval mode (statistics fixed)."""
    data = ctx.train if data is None else data
    model.train()
    if frozen_norms:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    batch_size = ctx.params["batch_size"]
    n_steps = -(-len(data) // batch_size)
    tally = LossTally()
    for i, idx in enumerate(batches(len(data), batch_size, generator)):
        if len(idx) < 2 and model.training and not frozen_norms:
            continue  # a batch of one cannot be batch-normalised in train mode
        set_lr(optimizer, lr_at(first_step + i))
        idx = to_device(idx, ctx.device)
        x = augment(data.x[idx], generator, **ctx.augmentation) if augmented else data.x[idx]
        loss = nn.functional.cross_entropy(model(x), data.y[idx])
        optimizer.zero_grad(set_to_none=True)
        objective(loss).backward()
        optimizer.step()
        tally.add(loss, len(idx))
        ctx.step(phase, epoch, epochs, i + 1, n_steps)
    return tally.mean()


def train_steps(ctx: DefenseContext, model: nn.Module, optimizer: torch.optim.Optimizer,
                generator: torch.Generator, total_steps: int, lr_at: Callable[[int], float], phase: str,
                stages: int, after_step: Callable[[int, Callable[[], float]], None] = lambda step, loss: None
                ) -> None:
    """`total_steps` optimiser steps of plain cross-entropy on augmented batches of the training set,
    reshuffled every pass, whatever the data's size. `after_step(step, loss)` runs after each step
    (1-based; `loss()` = the mean cross-entropy so far in the current stage, read only when called:
    reading it waits for the device); progress is reported as `stages` equal parts."""
    data = ctx.train
    if len(data) < 2:  # every batch would be skipped, and the loop would never end
        from ..errors import UserInputError

        raise UserInputError(f"{phase} needs at least two training images, got {len(data)}", "dataset")
    stage_len = -(-total_steps // stages)
    step, tally = 0, LossTally()
    model.train()
    while step < total_steps:
        for idx in batches(len(data), ctx.params["batch_size"], generator):
            if len(idx) < 2:
                continue  # a batch of one cannot be batch-normalised in train mode
            set_lr(optimizer, lr_at(step))
            idx = to_device(idx, ctx.device)
            loss = nn.functional.cross_entropy(model(augment(data.x[idx], generator, **ctx.augmentation)),
                                               data.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            tally.add(loss, len(idx))
            stage = min(stages, (step - 1) // stage_len + 1)
            first = (stage - 1) * stage_len
            ctx.step(phase, stage, stages, step - first, min(stage_len, total_steps - first))
            after_step(step, tally.mean)
            model.train()  # after_step may have evaluated the model
            if step % stage_len == 0:
                tally = LossTally()
            if step >= total_steps:
                return
