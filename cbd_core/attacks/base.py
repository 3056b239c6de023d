"""What every attack shares: parameters, choosing whom to poison, and the poisoned result.

An attack is a trigger function on uint8 images plus a rule for which training samples carry it.
`Attack.poison` turns a clean train/test pair into a `PoisonedData`:

- the poisoned training set (triggered images, relabelled to the target unless the attack is
  clean-label) and its `is_poisoned` mask;
- the triggered test set: every test image whose true label is not the target, with the trigger,
  labelled with the target (the attack success rate is accuracy on it), plus their true labels (the
  robust accuracy is accuracy on those).

The same seed gives the same poisoned set: every random choice is drawn from one generator seeded
by the run's seed, and trigger patterns are fixed per attack (derived from a constant, not the run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..data import ImageSet
from ..errors import UserInputError
from ..params import Param, resolve_params


@dataclass
class PoisonedData:
    """A poisoned training set and the test sets that measure the attack."""

    train: ImageSet
    is_poisoned: np.ndarray  # (N_train,) bool: carries the trigger (whatever its label)
    clean_train_labels: np.ndarray  # labels before the attack relabelled anything
    test: ImageSet  # clean test set, untouched
    test_triggered: ImageSet  # non-target test images with the trigger, labelled target
    test_triggered_true_labels: np.ndarray
    test_triggered_index: np.ndarray  # their indices in `test`
    attack: str
    params: dict[str, Any]
    target_label: int
    trigger_region: np.ndarray  # (H, W) bool: the pixels the trigger changes, for attributions
    notes: list[str] = field(default_factory=list)
    # (N_train,) bool: samples outside the poison whose image the attack also changed, keeping their
    # label (WaNet's noise samples, Adap-Blend's cover images); None: none.
    also_changed: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.also_changed is None:
            self.also_changed = np.zeros(len(self.is_poisoned), bool)

    @property
    def n_poisoned(self) -> int:
        return int(self.is_poisoned.sum())


@dataclass(frozen=True)
class TriggerPreview:
    """Pictures of a trigger alone, a caption under each, and one sentence saying what they show."""

    images: list[np.ndarray]
    captions: list[str]
    sentence: str


@dataclass(frozen=True)
class AttackPreset:
    """The attack's named run for a class (`presets.PRESETS`): CBD with its defaults on the embedded
    mnist5k, target label 0, at this poison rate. `label` names the attack and its trigger (the title adds
    the rate); `look_for` says what the preset is and what the class should look for, never its outcome
    (no digits: figures come from the runs and from bench/results/presets.json)."""

    label: str
    poison_rate: float
    look_for: str
    attack_params: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class: subclasses set `name`, `title`, `description`, `preset`, `params`, and implement
    `apply`.

    `title`, `description`, `patch`, `preset` and `trigger_preview` are the attack's display metadata:
    the pages read them and never branch on an attack's name, so adding an attack touches its own module
    and the registry."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    preset: ClassVar[AttackPreset]
    menu_order: ClassVar[int] = 100  # its place in the registry and in every menu (then by name)
    clean_label: ClassVar[bool] = False
    # The trigger is a patch over fixed pixels, so pages can outline where it is; blends, signals and
    # warps touch the whole image and get no box.
    patch: ClassVar[bool] = False
    params: ClassVar[tuple[Param, ...]] = ()

    # -- parameters --------------------------------------------------------------------------
    def defaults(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        """Default parameters for images of `image_shape` (H, W, C)."""
        return {}

    def resolve(self, image_shape: tuple[int, int, int], overrides: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults for this image shape, updated by `overrides`, each checked against its range."""
        values = resolve_params(self.name, self.params, self.defaults(image_shape), overrides)
        self.check_fits(image_shape, values)
        return values

    def check_fits(self, image_shape: tuple[int, int, int], params: dict[str, Any]) -> None:
        """Raise `UserInputError` when the parameters do not fit the image (e.g. a patch outside it)."""

    # -- the trigger ---------------------------------------------------------------------------
    def apply(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """Add the trigger to uint8 images (N, H, W, C); return new uint8 images, clipped."""
        raise NotImplementedError

    def trigger_region(self, image_shape: tuple[int, int, int], params: dict[str, Any]) -> np.ndarray:
        """(H, W) bool: the pixels the trigger changes (on random probe images), for attributions.

        Random probes rather than flat ones, because a warp leaves a flat image unchanged."""
        h, w, c = image_shape
        probe = np.random.default_rng(0).integers(0, 256, size=(4, h, w, c), dtype=np.uint8)
        return (self.apply(probe, params) != probe).any(axis=(0, 3))

    def trigger_preview(self, params: dict[str, Any], image_shape: tuple[int, int, int]) -> TriggerPreview:
        """The trigger shown on its own, in the view that is honest for this attack (overridden by
        attacks whose trigger a grey image would hide)."""
        stamped = self.apply(grey_image(image_shape), params)[0]
        if self.patch:
            return TriggerPreview([stamped], ["the patch on a grey image"],
                                  "The trigger is a patch stamped over the same pixels of every poisoned image.")
        return TriggerPreview([stamped], ["the trigger on a grey image"], "The trigger applied to a plain grey image.")

    # -- poisoning -----------------------------------------------------------------------------
    def candidates(self, train: ImageSet, target_label: int) -> np.ndarray:
        """Indices that may be poisoned: dirty-label attacks take samples outside the target class,
        so every poisoned sample really has its label changed."""
        return np.flatnonzero(train.y != target_label)

    def extra_poisoning(self, train_x: np.ndarray, train_y: np.ndarray, chosen: np.ndarray,
                        params: dict[str, Any], rng: np.random.Generator) -> None:
        """Hook for attacks that also alter other samples in place (WaNet's noise samples)."""

    def poison(self, train: ImageSet, test: ImageSet, poison_rate: float, target_label: int, seed: int,
               params: dict[str, Any] | None = None) -> PoisonedData:
        """Poison `poison_rate` of `train` (a fraction of the whole set) and trigger the test set."""
        if not 0.0 <= poison_rate <= 0.5:
            raise UserInputError(f"poison_rate: {poison_rate} is outside [0, 0.5]", "poison_rate")
        if not 0 <= target_label < train.num_classes:
            raise UserInputError(f"target_label: {target_label} is outside [0, {train.num_classes - 1}]",
                                 "target_label")
        params = self.resolve(train.image_shape, params)
        rng = np.random.default_rng(seed)
        notes: list[str] = []

        wanted = int(round(poison_rate * len(train)))
        pool = self.candidates(train, target_label)
        if wanted > len(pool):
            notes.append(f"asked for {wanted} poisoned samples ({poison_rate:.1%}) but only {len(pool)} "
                         f"are eligible; poisoned {len(pool)} ({len(pool) / len(train):.1%})")
        chosen = np.sort(rng.choice(pool, size=min(wanted, len(pool)), replace=False))

        x, y = train.x.copy(), train.y.copy()
        if len(chosen):
            x[chosen] = self.apply(x[chosen], params)
            if not self.clean_label:
                y[chosen] = target_label
        self.extra_poisoning(x, y, chosen, params, rng)
        is_poisoned = np.zeros(len(train), bool)
        is_poisoned[chosen] = True
        also_changed = (x != train.x).any(axis=(1, 2, 3)) & ~is_poisoned

        keep = np.flatnonzero(test.y != target_label)
        triggered = ImageSet(self.apply(test.x[keep], params), np.full(len(keep), target_label),
                             test.num_classes, list(test.class_names))
        return PoisonedData(
            train=ImageSet(x, y, train.num_classes, list(train.class_names)),
            is_poisoned=is_poisoned, clean_train_labels=train.y.copy(), test=test,
            test_triggered=triggered, test_triggered_true_labels=test.y[keep].copy(),
            test_triggered_index=keep, attack=self.name, params=params, target_label=target_label,
            trigger_region=self.trigger_region(train.image_shape, params), notes=notes, also_changed=also_changed)


def blend_images(x: np.ndarray, pattern: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """(1 - alpha) * x + alpha * pattern, rounded and clipped to uint8; pattern (H, W, C) float."""
    out = (1.0 - alpha) * x.astype(np.float32) + alpha * pattern[None].astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_pattern(pattern: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
    """A uint8 (h, w, c) pattern resized (bilinear) to (H, W) and matched to C channels, as float."""
    from PIL import Image

    h, w, c = image_shape
    if pattern.ndim == 2:
        pattern = pattern[..., None]
    mode_pattern = pattern[..., 0] if pattern.shape[-1] == 1 else pattern[..., :3]
    img = Image.fromarray(mode_pattern.astype(np.uint8))
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    out = np.asarray(img, dtype=np.float32)
    return out[..., None] if c == 1 else out


def grey_image(image_shape: tuple[int, int, int]) -> np.ndarray:
    """One mid-grey uint8 image (1, H, W, C): a trigger on it shows alone."""
    return np.full((1, *image_shape), 128, np.uint8)


def amplified_difference(clean: np.ndarray, poisoned: np.ndarray) -> tuple[np.ndarray, float]:
    """|poisoned - clean| of images (N, H, W, C), the largest over channels, scaled so the largest
    change in the batch is white; returns (N, H, W) uint8 and the gain used."""
    diff = np.abs(poisoned.astype(np.int16) - clean.astype(np.int16)).max(axis=-1)
    gain = 255.0 / max(1, int(diff.max())) if diff.size else 1.0
    return np.clip(np.rint(diff * gain), 0, 255).astype(np.uint8), gain
