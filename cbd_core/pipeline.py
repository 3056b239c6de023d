"""One run from config to finished run folder: the only code path that trains, used by the CLI, the
background worker and the benchmarks alike.

    config = RunConfig(dataset="mnist5k", attack="badnets", defense="cbd")
    run, summary = train_run(config, runs_root(), progress=print)   # validate, create running, train

`train_run` is prepare (load + validate: fails fast on bad input) + create (or start a queued run) +
execute (train and fill the folder); the CLI, `matrix`, the worker and the benchmarks all call it.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .attacks import PoisonedData, get_attack
from .config import RunConfig, default_threads
from .data import ImageSet, load_dataset, load_npz
from .defenses import DefenseContext, get_defense
from .epoch_features import EPOCH_FEATURES_FILE, EpochRecorder, epoch_subset
from .errors import UserInputError
from .metrics import auroc
from .models import build_model, default_model_for
from .progress import Cancelled, ProgressCallback, ignore_progress
from .runs import IllegalTransition, RunDir, RunGone, RunState, describe_error, owner_record, runs_root
from .training import EvalSets, Tensors, arithmetic, choose_device, default_augmentation, features_and_logits

# How many clean test images a run keeps for the attribution page (triggers are re-applied live).
TEST_IMAGES_KEPT = 200


@dataclass
class Prepared:
    """A validated config and the data it needs, ready to train."""

    config: RunConfig
    poisoned: PoisonedData


def prepare(config: RunConfig) -> Prepared:
    """Load the data, validate every field against it, poison it. Raises UserInputError."""
    config.validated()  # cheap checks first: names, ranges, before any data is read
    choose_device(config.device)  # a missing GPU is a bad input too: say so before creating a run
    if config.dataset == "npz":
        train, test, premade_mask = load_npz(config.npz_path)
    else:
        train, test = load_dataset(config.dataset, config.data_root, config.download)
        premade_mask = None
    config = config.validated(train.image_shape, train.num_classes)
    attack = get_attack(config.attack)
    if premade_mask is not None:
        poisoned = already_poisoned(train, test, premade_mask, config)
    else:
        poisoned = attack.poison(train, test, config.poison_rate, config.target_label, config.seed,
                                 config.attack_params)
    return Prepared(config, poisoned)


def already_poisoned(train: ImageSet, test: ImageSet, mask: np.ndarray, config: RunConfig) -> PoisonedData:
    """An npz that comes poisoned: its mask is the truth; the named attack only builds the triggered
    test set (so ASR measures that attack's trigger)."""
    attack = get_attack(config.attack)
    probe = attack.poison(train, test, 0.0, config.target_label, config.seed, config.attack_params)
    probe.train, probe.is_poisoned = train, mask.copy()
    probe.notes.append("the dataset came poisoned: its own is_poisoned mask is used")
    return probe


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Up to `size` indices with every class in proportion (sorted)."""
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = max(1, int(round(size * len(members) / len(labels))))
        chosen.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))[:size]


def train_run(source: RunConfig | RunDir, root: str | Path | None = None, *, owner: dict[str, Any] | None = None,
              progress: ProgressCallback = ignore_progress, should_stop: Callable[[], bool] = lambda: False,
              on_start: Callable[[RunDir], None] = lambda run: None) -> tuple[RunDir, dict[str, Any]]:
    """Train one run from start to finish: the one sequence the CLI's `run`, `matrix`, the worker (and
    a Ray task) and the benchmarks share. Returns (run, summary).

    `source` is a RunConfig: it is validated and its data poisoned (a bad value raises UserInputError
    before anything is written), then its folder is created under `root` already running, owned by
    `owner`. Or it is a queued RunDir (what the dashboard and `submit` leave): it is started with
    `owner` first, so a page shows it running while its data loads, then prepared from its config.json;
    a config that no longer validates fails the run with the reason. `owner` defaults to this process
    as a CLI run. `on_start(run)` is called once the run is running (the CLI prints where it is).

    Training stops at the next batch when the run's cancel file appears (the dashboard's Cancel works on
    any run) or `should_stop()` says so, raising `progress.Cancelled`; a folder deleted meanwhile
    raises RunGone and nothing is written again. How the run ended is recorded in its status by
    `execute` (or here, for a queued run that fails before it)."""
    owner = owner or owner_record("cli")
    if isinstance(source, RunDir):
        run = source
        run.start(owner)
        on_start(run)
        try:
            prepared = prepare(RunConfig.from_dict(run.config()))
        except Exception as err:
            _record_end(run, "failed", error=str(err) if isinstance(err, UserInputError) else describe_error(err))
            raise
    else:
        prepared = prepare(source)
        run = RunDir.create(runs_root(root), prepared.config.to_dict(), state=RunState.RUNNING, owner=owner)
        on_start(run)

    def is_cancelled() -> bool:
        if not run.exists():  # deleted under us: stop now, write nothing, re-create nothing
            raise RunGone(f"run {run.run_id}: its folder is gone")
        return should_stop() or run.cancel_requested()

    return run, execute(prepared, run, progress=progress, is_cancelled=is_cancelled, owner=owner)


def execute(prepared: Prepared, run: RunDir, progress: ProgressCallback = ignore_progress,
            is_cancelled: Callable[[], bool] = lambda: False, owner: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """Train the configured defense and fill the run folder; returns the summary. Callers other than
    tests use `train_run`, which creates or starts the run and watches its cancel file.

    A run still queued is started here with `owner` (`runs.owner_record`; by default this process, as
    a CLI run): the run store records it, so that recovery never marks a run failed while its process
    lives. The run's status ends as done (with no error), cancelled (what was written stays) or failed
    (with the error: a write error says which, e.g. "no space left on device"); a UserInputError or a
    bug is re-raised after it is recorded. A run whose folder was deleted meanwhile raises `RunGone`
    and writes nothing more."""
    config, data = prepared.config, prepared.poisoned
    started = time.perf_counter()
    try:
        device = choose_device(config.device)
        if run.status().get("state") == RunState.QUEUED:
            run.start(owner or owner_record("cli"))
        run.update_status(device=str(device), error=None)
        with arithmetic(config.threads or default_threads(), config.deterministic):
            summary = _train_and_record(config, data, run, device, progress, is_cancelled, started)
    except RunGone:
        raise
    except (Cancelled, KeyboardInterrupt):
        _record_end(run, "cancelled", seconds=round(time.perf_counter() - started, 2))
        raise
    except UserInputError as err:
        _record_end(run, "failed", error=str(err))
        raise
    except BaseException as err:
        trace = traceback.format_exc()
        try:
            run.write_error(trace)
        except (OSError, RunGone):
            pass  # a full disk may refuse the traceback too; status.json below says what happened
        _record_end(run, "failed", error=describe_error(err))
        raise
    run.finish("done", seconds=summary["seconds"], error=None)
    return summary


def _record_end(run: RunDir, state: str, **fields: Any) -> None:
    """Record how the run ended, unless its folder is gone, the disk refuses even that, or it has ended
    already (recovery failed it meanwhile): the original error is what the caller raises."""
    try:
        run.finish(state, **fields)
    except (OSError, RunGone, IllegalTransition):
        pass


def _train_and_record(config: RunConfig, data: PoisonedData, run: RunDir, device: torch.device,
                      progress: ProgressCallback, is_cancelled: Callable[[], bool], started: float
                      ) -> dict[str, Any]:
    defense = get_defense(config.defense)
    train = data.train
    h, w, channels = train.image_shape
    model_name = config.model or default_model_for(train.image_shape)
    torch.manual_seed(config.seed)
    builds = iter(range(1_000_000))

    def new_model() -> torch.nn.Module:
        # Each model gets its own seed derived from the run's: f_B and f_C start differently.
        torch.manual_seed(config.seed * 7919 + next(builds))
        return build_model(model_name, channels, train.num_classes).to(device)

    eval_sets = EvalSets(Tensors.from_images(data.test, device), Tensors.from_images(data.test_triggered, device),
                         data.test_triggered_true_labels, data.target_label)
    train_tensors = Tensors.from_images(train, device)
    # The embedding subset is fixed by the labels and the seed, so it can be chosen before training; the
    # images followed epoch by epoch are drawn from it (images.npz keeps their thumbnails).
    subset = stratified_subset(train.y, config.embedding_samples, config.seed)
    recorder = EpochRecorder(train_tensors.x, epoch_subset(subset, data.is_poisoned, train.y, config.seed),
                             defense.model_names, defense.total_epochs(config.defense_params),
                             delivered=defense.delivered)
    ctx = DefenseContext(train=train_tensors, build_model=new_model, params=config.defense_params,
                         augmentation=default_augmentation(train.image_shape), seed=config.seed, device=device,
                         progress=progress, _eval_sets=eval_sets, _poison_mask=data.is_poisoned,
                         _log=run.append_metrics, _is_cancelled=is_cancelled, _on_epoch=recorder.record,
                         _total_epochs=defense.progress_stages(config.defense_params),
                         _embedding_index=torch.from_numpy(subset).to(device) if len(subset) else None)
    if len(subset):
        recorder.reuse(ctx.remembered_embedding, subset)
    result = defense.train(ctx)

    final = eval_sets.evaluate(result.model)  # the last epoch's scores when the model has not changed since
    models = {defense.delivered: result.model, **result.other_models}
    for name, model in models.items():
        run.save_model(name, model.state_dict())

    # Per-sample record: the same keys for every defense, plus the defense's own arrays.
    suspicion = result.suspicion if result.suspicion is not None else np.full(len(train), np.nan, np.float32)
    run.save_arrays("sample_weights", index=np.arange(len(train)), is_poisoned=data.is_poisoned,
                    label=train.y, original_label=data.clean_train_labels,
                    suspicion=suspicion.astype(np.float32), **result.sample_record)

    embed: dict[str, np.ndarray] = {"index": subset}
    for name, model in (models.items() if len(subset) else ()):
        # From the model's last pass over the training set when it has not changed since (each image's
        # output does not depend on the batch it is in), else a pass over the subset.
        z, logits = ctx.remembered_embedding(model) or \
            features_and_logits(model, train_tensors.x[torch.from_numpy(subset).to(device)])
        embed[f"features_{name}"] = z.cpu().numpy().astype(np.float32)
        embed[f"prediction_{name}"] = logits.argmax(1).cpu().numpy()
    run.save_arrays("embeddings", **embed)
    epoch_features = recorder.arrays()
    if epoch_features is not None:
        run.save_arrays(EPOCH_FEATURES_FILE, **epoch_features)
    keep = stratified_subset(data.test.y, TEST_IMAGES_KEPT, config.seed)
    run.save_arrays("images", train_x=train.x[subset], train_index=subset, test_x=data.test.x[keep],
                    test_y=data.test.y[keep], trigger_region=data.trigger_region)

    summary = {
        "dataset": config.dataset, "attack": config.attack, "poison_rate": config.poison_rate,
        "target_label": config.target_label, "defense": config.defense, "seed": config.seed,
        "model": model_name, "image_shape": list(train.image_shape), "num_classes": train.num_classes,
        "class_names": list(train.class_names), **final,
        "poison_detection_auroc": auroc(result.suspicion, data.is_poisoned) if result.suspicion is not None
        else None,
        "poisoned_samples": data.n_poisoned, "train_samples": len(train),
        "seconds": round(time.perf_counter() - started, 2), "device": str(device),
        "run_dir": str(run.path), "run_id": run.run_id, "notes": data.notes, **result.summary,
    }
    # No verdict here: it is judged when the run is read, against whatever baseline exists then
    # (`verdicts.summary_fields`), so training never depends on the pages' concepts.
    run.write_summary(summary)
    return summary
