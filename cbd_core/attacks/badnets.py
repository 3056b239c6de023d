"""BadNets (Gu et al., 2017): a small patch stamped on the image, labels flipped to the target.

The default follows BackdoorBench and the CBD code's grid trigger: a 3x3 checkerboard of white and
black pixels in the bottom-right corner. Size and position are parameters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UserInputError
from .base import Attack, AttackPreset, Param


def checkerboard(size: int) -> np.ndarray:
    """(size, size) uint8: 255 where row + col is even, 0 elsewhere."""
    rows, cols = np.indices((size, size))
    return np.where((rows + cols) % 2 == 0, 255, 0).astype(np.uint8)


class BadNets(Attack):
    name = "badnets"
    description = "a small checkerboard patch in a corner; poisoned labels set to the target"
    title = "BadNets"
    menu_order = 10
    preset = AttackPreset(
        "BadNets: a checkerboard patch in the corner", 0.10,
        "Every poisoned digit carries the same small checkerboard in its corner and is relabelled as the "
        "target. Look for: how soon f_B's attack success rate rises (step 2), whether the poisoned images' "
        "weights fall below the clean ones' (step 3), and whether f_C's map still gathers the poisoned images "
        "in an island (step 4).")
    patch = True
    params = (
        Param("size", int, "side of the square patch in pixels", 1, 64),
        Param("row", int, "top row of the patch (default: touching the bottom edge)", 0, 1024),
        Param("col", int, "left column of the patch (default: touching the right edge)", 0, 1024),
        Param("pattern", str, "checkerboard, or white for a solid square", choices=("checkerboard", "white")),
    )

    def defaults(self, image_shape):
        h, w, _ = image_shape
        return {"size": 3, "row": None, "col": None, "pattern": "checkerboard"}

    @staticmethod
    def _box(image_shape, params) -> tuple[int, int, int]:
        h, w, _ = image_shape
        size = params["size"]
        row = h - size if params["row"] is None else params["row"]
        col = w - size if params["col"] is None else params["col"]
        return row, col, size

    def check_fits(self, image_shape, params):
        h, w, _ = image_shape
        row, col, size = self._box(image_shape, params)
        if size > min(h, w) or row < 0 or col < 0 or row + size > h or col + size > w:
            raise UserInputError(f"badnets: a {size}x{size} patch at row {row}, column {col} does not fit "
                                 f"in a {h}x{w} image", "badnets.size")

    def apply(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        row, col, size = self._box(x.shape[1:], params)
        patch = checkerboard(size) if params["pattern"] == "checkerboard" else np.full((size, size), 255, np.uint8)
        out = x.copy()
        out[:, row:row + size, col:col + size, :] = patch[None, :, :, None]
        return out
