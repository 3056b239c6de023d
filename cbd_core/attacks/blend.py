"""Blend (Chen et al., 2017): the whole image mixed with a fixed pattern, labels flipped.

x' = (1 - alpha) x + alpha p, with alpha = 0.2 as in the paper and BackdoorBench. The pattern is
fixed (the CBD code draws fresh noise per image, which is a different, weaker attack): by default
the noise image shipped in `assets/blend_pattern.png`, or any image the user gives, resized.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError
from .base import Attack, AttackPreset, Param, TriggerPreview, blend_images, grey_image, resize_pattern

# 32x32 RGB uniform noise, drawn once with numpy's default_rng(20170515).integers(0, 256).
DEFAULT_PATTERN = Path(__file__).resolve().parents[2] / "assets" / "blend_pattern.png"


@lru_cache(maxsize=8)
def load_pattern(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise UserInputError(f"blend.pattern_path: no such file: {path}", "blend.pattern_path") from None
    except Exception as err:
        raise UserInputError(f"blend.pattern_path: not a readable image ({err})", "blend.pattern_path") from None


class Blend(Attack):
    name = "blend"
    description = "the whole image blended with a fixed noise pattern (alpha 0.2); labels set to the target"
    title = "Blend"
    menu_order = 20
    preset = AttackPreset(
        "Blend: a faint noise overlay", 0.10,
        "The whole image is blended with one fixed noise pattern, faintly: the trigger touches every pixel. "
        "Look for: whether f_B fits the blended images before it fits the digits (step 2), and how far apart "
        "the poisoned and clean weights end (step 3).")
    params = (
        Param("alpha", float, "opacity of the pattern", 0.01, 1.0),
        Param("pattern_path", str, "an image file to blend instead of the shipped noise",
              upload=("png", "jpg", "jpeg", "bmp", "gif", "webp")),
    )

    def trigger_preview(self, params: dict[str, Any], image_shape: tuple[int, int, int]) -> TriggerPreview:
        pattern = resize_pattern(load_pattern(params["pattern_path"] or str(DEFAULT_PATTERN)), image_shape)
        pattern = np.clip(np.rint(pattern), 0, 255).astype(np.uint8)
        return TriggerPreview(
            [pattern, self.apply(grey_image(image_shape), params)[0]],
            ["the pattern", f"blended into grey at α = {params['alpha']:g}"],
            f"Blend has no patch: every pixel becomes {1 - params['alpha']:.0%} image and "
            f"{params['alpha']:.0%} of this pattern.")

    def defaults(self, image_shape):
        return {"alpha": 0.2, "pattern_path": None}  # None: the shipped noise pattern

    def check_fits(self, image_shape, params):
        load_pattern(params["pattern_path"] or str(DEFAULT_PATTERN))

    def apply(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        pattern = resize_pattern(load_pattern(params["pattern_path"] or str(DEFAULT_PATTERN)), x.shape[1:])
        return blend_images(x, pattern, params["alpha"])
