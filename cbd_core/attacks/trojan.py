"""Trojan (Liu et al., 2018), as a fixed watermark: a square logo stamped at full opacity.

TrojanNN optimises its trigger against a trained model; BackdoorBench and the CBD code use a fixed
square pattern instead, which is what this is: concentric white and black square rings, a quarter
of the image wide, one pixel in from the bottom-right corner. Labels are flipped to the target.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UserInputError
from .base import Attack, AttackPreset, Param


def watermark(size: int) -> np.ndarray:
    """(size, size) uint8: concentric rings, white on the outside, alternating inwards."""
    rows, cols = np.indices((size, size))
    ring = np.minimum(np.minimum(rows, cols), np.minimum(size - 1 - rows, size - 1 - cols))
    return np.where(ring % 2 == 0, 255, 0).astype(np.uint8)


class Trojan(Attack):
    name = "trojan"
    description = "a fixed square watermark (concentric rings) at full opacity; labels set to the target"
    title = "Trojan"
    menu_order = 30
    preset = AttackPreset(
        "Trojan: a ring watermark", 0.10,
        "A large, high-contrast ring watermark stamped on the poisoned digits, which are relabelled as the "
        "target. Look for: how early f_B catches it (step 2) and where each model looks on a triggered "
        "digit (step 5).")
    patch = True
    params = (
        Param("size", int, "side of the watermark in pixels (default: a quarter of the image)", 2, 64),
        Param("margin", int, "gap between the watermark and the bottom-right corner", 0, 32),
    )

    def defaults(self, image_shape):
        h, w, _ = image_shape
        return {"size": max(3, round(min(h, w) / 4)), "margin": 1}

    def check_fits(self, image_shape, params):
        h, w, _ = image_shape
        if params["size"] + params["margin"] > min(h, w):
            raise UserInputError(f"trojan: a {params['size']}px watermark with margin {params['margin']} does "
                                 f"not fit in a {h}x{w} image", "trojan.size")

    def apply(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        _, h, w, _ = x.shape
        size, margin = params["size"], params["margin"]
        top, left = h - margin - size, w - margin - size
        out = x.copy()
        out[:, top:top + size, left:left + size, :] = watermark(size)[None, :, :, None]
        return out
