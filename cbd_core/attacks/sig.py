"""SIG (Barni et al., 2019): a clean-label attack with a horizontal sinusoid.

x' = clip(x + delta * sin(2 pi j f / W)) for column j (delta 20, f 6 on 32x32; delta 80 on 28x28). Only training images that already belong to
the target class get the signal, and no label changes: the model learns "sinusoid => target" from
correctly labelled images. The poison rate counts against the whole training set, so it is capped
by the size of the target class; the real count is reported in the run's notes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data import ImageSet
from .base import Attack, AttackPreset, Param, TriggerPreview, grey_image


def sinusoid(width: int, delta: float, frequency: float) -> np.ndarray:
    """(W,) float: the signal added to every row, in uint8 units."""
    return delta * np.sin(2 * np.pi * np.arange(width) * frequency / width)


class SIG(Attack):
    name = "sig"
    description = "clean-label: a horizontal sinusoid added to target-class training images only"
    title = "SIG"
    menu_order = 40
    preset = AttackPreset(
        "SIG: clean-label stripes on part of the target class", 0.05,
        "SIG never changes a label: it adds a faint sinusoid to images that already show the target class, "
        "so a model can learn \"stripes mean the target\". This preset stripes only part of the target class, "
        "so plain and striped images of that class sit side by side. Look for: whether the striped images get "
        "smaller weights than the plain images of the same class (step 3).")
    clean_label = True
    params = (
        Param("delta", float, "amplitude of the sinusoid in 0..255 pixel units", 1, 255),
        Param("frequency", float, "number of periods across the image", 0.5, 32),
    )

    def trigger_preview(self, params: dict[str, Any], image_shape: tuple[int, int, int]) -> TriggerPreview:
        return TriggerPreview(
            [self.apply(grey_image(image_shape), params)[0]], ["the sinusoid added to a grey image"],
            "SIG has no patch: it adds faint vertical stripes (a sinusoid across the columns) to the whole image, "
            "and only to images already in the target class.")

    def defaults(self, image_shape):
        # The paper's delta = 20/255 suits 32x32 colour images trained for long; on 28x28 digits and
        # ten epochs it plants nothing (measured: delta 40 gives ASR 18%, 60 gives 66%, 80 gives 93%),
        # so MNIST-sized images take the weakest amplitude measured to work.
        return {"delta": 80.0 if image_shape[0] <= 28 else 20.0, "frequency": 6.0}

    def candidates(self, train: ImageSet, target_label: int) -> np.ndarray:
        return np.flatnonzero(train.y == target_label)

    def apply(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        signal = sinusoid(x.shape[2], params["delta"], params["frequency"])
        out = x.astype(np.float32) + signal[None, None, :, None]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
