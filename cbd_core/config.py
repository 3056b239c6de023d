"""The typed configuration of a run, validated once at the edge (CLI flags, dashboard widgets).

`RunConfig.validated()` checks every field and resolves the attack's and the defense's parameters
against the dataset's image shape, so a bad value is one `UserInputError` naming the field, before
anything is trained. The resolved config is what `config.json` holds: enough to rerun the run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import DATASETS
from .errors import UserInputError


@dataclass
class RunConfig:
    dataset: str = "mnist5k"
    attack: str = "badnets"
    poison_rate: float = 0.1
    target_label: int = 0
    defense: str = "cbd"
    seed: int = 0
    attack_params: dict[str, Any] = field(default_factory=dict)
    defense_params: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # None: the default for the image size
    device: str = "auto"
    data_root: str | None = None
    download: bool = False
    npz_path: str | None = None  # dataset "npz": the user's own file
    embedding_samples: int = 5000  # features of f_B / f_C kept for this many training samples
    # Arithmetic settings: they change a run's numbers, so they are part of what a run *is*. torch's
    # CPU kernels split their reductions by thread, and CBD sits close enough to a knife-edge that
    # one thread instead of two was seen to decide whether a backdoor got through. None resolves to
    # `default_threads()` when validated, and config.json records the number used.
    threads: int | None = None
    deterministic: bool = True  # deterministic kernels (cuDNN, cuBLAS, scatter ops): same numbers every time

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserInputError(f"config: unknown field(s) {', '.join(unknown)}", unknown[0])
        return cls(**values)

    def with_epochs(self, epochs: int | None) -> "RunConfig":
        """A copy whose defense trains `epochs` epochs (the main model's epochs), if given."""
        if epochs is None:
            return self
        return dataclasses.replace(self, defense_params={**self.defense_params, "epochs": epochs})

    def validated(self, image_shape: tuple[int, int, int] | None = None, num_classes: int | None = None
                  ) -> "RunConfig":
        """Check every field; returns a copy with the attack and defense parameters fully resolved.

        `image_shape` / `num_classes` default to the named dataset's; give them for an npz."""
        from .attacks import get_attack
        from .defenses import get_defense
        from .models import MODELS

        if self.dataset == "npz":
            if not self.npz_path:
                raise UserInputError("npz_path: a dataset file is required when the dataset is 'npz'", "npz_path")
        elif self.dataset not in DATASETS:
            raise UserInputError(f"dataset: unknown '{self.dataset}' (choose from {', '.join(DATASETS)}, npz)",
                                 "dataset")
        else:
            info = DATASETS[self.dataset]
            image_shape = image_shape or info.image_shape
            num_classes = num_classes or info.num_classes
        attack = get_attack(self.attack)
        defense = get_defense(self.defense)
        if not isinstance(self.poison_rate, (int, float)) or not 0.0 <= float(self.poison_rate) <= 0.5:
            raise UserInputError(f"poison_rate: {self.poison_rate!r} is outside [0, 0.5]", "poison_rate")
        if not isinstance(self.target_label, int) or isinstance(self.target_label, bool):
            raise UserInputError(f"target_label: expected a whole number, got {self.target_label!r}", "target_label")
        if num_classes is not None and not 0 <= self.target_label < num_classes:
            raise UserInputError(f"target_label: {self.target_label} is outside [0, {num_classes - 1}]",
                                 "target_label")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**31:
            raise UserInputError(f"seed: {self.seed!r} must be a whole number in [0, 2^31)", "seed")
        if self.model is not None and self.model not in MODELS:
            raise UserInputError(f"model: unknown '{self.model}' (choose from {', '.join(MODELS)})", "model")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not str(self.device).startswith("cuda:"):
            raise UserInputError(f"device: unknown '{self.device}' (choose from auto, cpu, cuda, mps)", "device")
        if not isinstance(self.embedding_samples, int) or not 0 <= self.embedding_samples <= 50_000:
            raise UserInputError("embedding_samples: must be a whole number in [0, 50000]", "embedding_samples")
        threads = default_threads() if self.threads is None else self.threads
        if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 256:
            raise UserInputError(f"threads: {threads!r} must be a whole number in [1, 256]", "threads")
        if not isinstance(self.deterministic, bool):
            raise UserInputError(f"deterministic: expected true or false, got {self.deterministic!r}",
                                 "deterministic")
        if "epochs" in self.defense_params:
            epochs = self.defense_params["epochs"]
            if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
                raise UserInputError(f"epochs: {epochs!r} must be a positive whole number", "epochs")
        attack_params = self.attack_params
        defense_params = self.defense_params
        if image_shape is not None:
            attack_params = attack.resolve(image_shape, self.attack_params)
            defense_params = defense.resolve(image_shape, self.defense_params)
        return dataclasses.replace(self, poison_rate=float(self.poison_rate), attack_params=attack_params,
                                   defense_params=defense_params, threads=threads)


# Above this share the poison is no longer a small minority, which every defense here (and the CBD paper,
# which trains at 10 %) takes for granted; the Train page warns. The config still accepts up to 50 %.
HIGH_POISON_RATE = 0.2


def poison_rate_in_words(rate: float, train_size: int | None = None) -> str:
    """A poison rate (a fraction) said three ways that cannot be misread: "0.5 % of the training set =
    1 image in 200 = 20 of 4,000 training images" (the count when the training set's size is known;
    rounded as the attacks round it)."""
    rate = float(rate)
    if rate <= 0:
        return "0 %: no training image is poisoned, so there is no backdoor to defend against"
    every = 1 / rate
    one_in = f"{every:,.0f}" if every >= 10 else f"{every:.1f}".removesuffix(".0")
    text = f"{rate * 100:g} % of the training set = 1 image in {one_in}"
    if train_size:
        text += f" = {int(round(rate * train_size)):,} of {train_size:,} training images"
    return text


def poison_rate_warnings(rate: float, clean_label: bool = False, num_classes: int | None = None) -> list[str]:
    """What goes wrong at this rate, in sentences (empty when nothing does): above HIGH_POISON_RATE the
    poison is a large share of the data; a clean-label attack can only poison the target class's images."""
    rate = float(rate)
    notes = []
    if rate > HIGH_POISON_RATE:
        notes.append(
            f"At {rate * 100:g} % the poison is no longer a small minority, which the defenses here assume "
            "(the CBD paper trains at 10 %): CBD down-weights what its deliberately backdoored f_B fits easily, "
            "and when that is a large share of the data f_C loses much of its training signal; ABL isolates only "
            "1 % of the set by default; NONE looks for neurons firing far above their usual range, and the "
            "trigger becomes the usual. Expect clean accuracy to fall and the backdoor to persist more often: "
            "such a run shows where a defense breaks, not its typical result.")
    if clean_label and num_classes and rate > 1 / num_classes:
        notes.append(
            f"This attack is clean-label: it only poisons images of the target class, about 1 in {num_classes} "
            f"of the set, so above about {100 / num_classes:.0f} % it poisons all of them and no more (the run "
            "notes how many).")
    return notes


MAX_DEFAULT_THREADS = 8  # small convolutions gain little beyond this, and a shared machine keeps cores


def default_threads() -> int:
    """CPU threads a run uses unless its config says otherwise: the machine's cores, at most 8.

    Decided here, once, for the CLI, `matrix` and the worker alike, and written into config.json, so
    how a run was started never changes its numbers (the same config gives the same threads)."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cores))


def quick_demo_config() -> RunConfig:
    """The Overview's Quick demo: CBD against BadNets at 10% on the embedded mnist5k, target 0, with
    CBD's defaults (bench/speed.py times it). For the browser tests only,
    $BACKDOOR_LAB_TINY_DEMO=1 shrinks it to 64 steps of f_B, two one-epoch probes, two epochs of f_C and
    1,000 embedded samples (f_C is far from done, but every page has something real to draw)."""
    import os

    config = RunConfig(dataset="mnist5k", attack="badnets", poison_rate=0.1, target_label=0, defense="cbd", seed=0)
    if os.environ.get("BACKDOOR_LAB_TINY_DEMO") == "1":
        config = dataclasses.replace(config, defense_params={"backdoor_steps": 64, "epochs": 2, "probe_epochs": 1},
                                     embedding_samples=1000)
    return config


def load_config(path: str | Path) -> RunConfig:
    return RunConfig.from_dict(json.loads(Path(path).read_text()))
