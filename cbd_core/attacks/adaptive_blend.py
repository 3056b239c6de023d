"""Adap-Blend (Qi et al., ICLR 2023, "Revisiting the Assumption of Latent Separability for Backdoor
Defenses"): a blend trigger built to leave no separate cluster in the model's latent space.

Defenses such as CBD's maps, spectral signatures or activation clustering assume that poisoned images
form their own island in the features. Adap-Blend weakens that in two ways:

- Pieces. The pattern is cut into a k x k grid of `pieces` (16: 4 x 4). Each poisoned training image
  gets only a random half of them (`mask_rate` 0.5 masks the other half), at a low opacity (`alpha`
  0.15), so no single fixed pattern is repeated across the poison.
- Conservatism ("cover" or regularisation samples). As many other training images as there are
  poisoned ones (`cover_ratio` 1) carry the same kind of partial trigger but keep their true label:
  the model must not map every trace of the pattern to the target, which keeps the poisoned images'
  features near their true classes instead of in an island of their own.

At test time the whole pattern is blended at a higher opacity (`test_alpha` 0.2), which still fires the
backdoor. Labels of poisoned images are set to the target; cover images keep theirs and are not marked
as poisoned (as in the official code, whose poison indices exclude them, and like WaNet's noise samples
here); the run's notes count them.

Relation to the official code (vtu81/backdoor-toolbox, poison_tool_box/adaptive_blend.py, README
commands): same pieces (16), mask rate (0.5), train/test opacities (0.15 / 0.2), cover samples drawn
from the non-poisoned images and the per-image random choice of masked pieces. Differences: the
pattern is the project's shipped noise image (Blend's) instead of "hellokitty_32.png", resized to the
image; the poison and cover counts follow the run's poison rate (the README's CIFAR-10 example uses
0.3% each; `cover_ratio` 1 keeps them equal); randomness comes from the run's seed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..data import ImageSet
from ..errors import UserInputError
from .base import Attack, AttackPreset, Param, PoisonedData, TriggerPreview, blend_images, grey_image, resize_pattern
from .blend import DEFAULT_PATTERN, load_pattern


def piece_masks(count: int, image_shape: tuple[int, int, int], pieces: int, masked: int,
                rng: np.random.Generator) -> np.ndarray:
    """(count, H, W, 1) float masks: 1 on the pieces that carry the trigger, 0 on `masked` pieces of a
    sqrt(pieces) x sqrt(pieces) grid chosen at random for each image."""
    side = math.isqrt(pieces)
    h, w, _ = image_shape
    keep = np.ones((count, pieces), np.float32)
    if masked:
        order = np.argsort(rng.random((count, pieces)), axis=1)[:, :masked]  # a random subset per image
        np.put_along_axis(keep, order, 0.0, axis=1)
    grid = keep.reshape(count, side, side)
    return np.repeat(np.repeat(grid, h // side, axis=1), w // side, axis=2)[..., None]


class AdaptiveBlend(Attack):
    name = "adaptive_blend"
    title = "Adap-Blend"
    menu_order = 60
    description = ("a noise pattern cut into 16 pieces, half of them blended into each poisoned image (alpha 0.15), "
                   "plus as many clean-labelled 'cover' images with the same partial trigger; the whole pattern at "
                   "alpha 0.2 triggers it")
    preset = AttackPreset(
        "Adap-Blend: a trigger built not to stand apart", 0.05,
        "Adap-Blend blends half of a noise pattern's pieces into each poisoned digit, faintly, and puts the same "
        "kind of partial pattern on as many correctly labelled digits. It was designed against defenses that "
        "expect the poison to form its own island in the model's features. Look for: whether the crosses still "
        "gather apart from their true classes in the maps (step 4), and whether f_B still fits them first "
        "(step 3).")
    params = (
        Param("alpha", float, "opacity of the pattern on training images", 0.01, 1.0),
        Param("test_alpha", float, "opacity of the whole pattern at test time", 0.01, 1.0),
        Param("pieces", int, "pieces of the pattern (a square number whose side divides the image)", 1, 64),
        Param("mask_rate", float, "share of the pieces left out of each poisoned or cover image", 0.0, 0.95),
        Param("cover_ratio", float, "cover images (trigger, true label) per poisoned image (0 = none)", 0.0, 4.0),
        Param("pattern_path", str, "an image file to blend instead of the shipped noise",
              upload=("png", "jpg", "jpeg", "bmp", "gif", "webp")),
    )

    def defaults(self, image_shape):
        return {"alpha": 0.15, "test_alpha": 0.2, "pieces": 16, "mask_rate": 0.5, "cover_ratio": 1.0,
                "pattern_path": None}

    def check_fits(self, image_shape, params):
        h, w, _ = image_shape
        side = math.isqrt(params["pieces"])
        if side * side != params["pieces"] or h % side or w % side:
            raise UserInputError(f"{self.name}.pieces: {params['pieces']} is not a square grid whose side divides "
                                 f"a {h}x{w} image (e.g. 4, 16 or 64 pieces where the side divides both)",
                                 f"{self.name}.pieces")
        load_pattern(params["pattern_path"] or str(DEFAULT_PATTERN))

    def _pattern(self, params: dict[str, Any], image_shape: tuple[int, int, int]) -> np.ndarray:
        return resize_pattern(load_pattern(params["pattern_path"] or str(DEFAULT_PATTERN)), image_shape)

    def apply(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """The test-time trigger: the whole pattern at `test_alpha`."""
        return blend_images(x, self._pattern(params, x.shape[1:]), params["test_alpha"])

    def apply_pieces(self, x: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """The training-time trigger: a random part of the pieces at `alpha`, drawn per image."""
        if not len(x):
            return x.copy()
        masked = int(round(params["mask_rate"] * params["pieces"]))
        masks = piece_masks(len(x), x.shape[1:], params["pieces"], masked, rng)
        return blend_images(x, self._pattern(params, x.shape[1:]), params["alpha"] * masks)

    def trigger_preview(self, params: dict[str, Any], image_shape: tuple[int, int, int]) -> TriggerPreview:
        pattern = np.clip(np.rint(self._pattern(params, image_shape)), 0, 255).astype(np.uint8)
        grey = grey_image(image_shape)
        partial = self.apply_pieces(grey, params, np.random.default_rng(0))[0]
        return TriggerPreview(
            [pattern, partial, self.apply(grey, params)[0]],
            ["the pattern", f"a training image's pieces (α = {params['alpha']:g})",
             f"the whole pattern at test time (α = {params['test_alpha']:g})"],
            f"Adap-Blend has no patch: each poisoned training image gets a random {1 - params['mask_rate']:.0%} of "
            f"the pattern's {params['pieces']} pieces, faintly; the test trigger is the whole pattern.")

    def poison(self, train: ImageSet, test: ImageSet, poison_rate: float, target_label: int, seed: int,
               params: dict[str, Any] | None = None) -> PoisonedData:
        """As every attack (whom to poison, the triggered test set), then the training images redone with
        partial triggers, and the cover images added."""
        data = super().poison(train, test, poison_rate, target_label, seed, params)
        params = data.params
        rng = np.random.default_rng([seed, 2023])  # its own stream: the poisoned choice stays the base one's
        chosen = np.flatnonzero(data.is_poisoned)
        data.train.x[chosen] = self.apply_pieces(train.x[chosen], params, rng)
        others = np.flatnonzero(~data.is_poisoned)
        wanted = int(round(params["cover_ratio"] * len(chosen)))
        cover = np.sort(rng.choice(others, size=min(wanted, len(others)), replace=False))
        data.train.x[cover] = self.apply_pieces(train.x[cover], params, rng)
        data.also_changed[cover] = True
        data.notes.append(f"{len(cover)} cover images carry a partial trigger with their true label "
                          "(not counted as poisoned)")
        return data
