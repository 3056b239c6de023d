"""WaNet (Nguyen & Tran, 2021): an almost invisible warp of the whole image.

A fixed random flow field: k x k control offsets drawn uniformly in [-1, 1], divided by their mean
absolute value, upsampled (bicubic) to the image size, scaled by s / H and added to the identity
sampling grid; images are resampled through it (bilinear) and labels flipped to the target. With
`cross_ratio` > 0, that many times the number of poisoned samples are "noise" samples: warped by
the field plus random jitter but keeping their labels, which teaches the model that only this exact
warp is the trigger (the paper's noise mode). The field is part of the attack, fixed by
`field_seed`, so the test-time trigger is the training one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Attack, AttackPreset, Param, TriggerPreview, amplified_difference


def flow_grid(height: int, width: int, k: int, strength: float, field_seed: int):
    """The (1, H, W, 2) sampling grid in [-1, 1] of the warp, as a torch tensor."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(field_seed)
    offsets = torch.rand(1, 2, k, k, generator=gen) * 2 - 1
    offsets = offsets / offsets.abs().mean()
    field = F.interpolate(offsets, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    identity = torch.stack((xs, ys), dim=-1)[None]
    return torch.clamp(identity + strength * field / height, -1, 1)


def warp(x: np.ndarray, grid) -> np.ndarray:
    """Resample uint8 images (N, H, W, C) through `grid` ((1 or N), H, W, 2); uint8 out."""
    import torch
    import torch.nn.functional as F

    if len(x) == 0:
        return x.copy()
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    out = F.grid_sample(t, grid.expand(len(x), -1, -1, -1), mode="bilinear", align_corners=True)
    return out.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()


class WaNet(Attack):
    name = "wanet"
    description = "a fixed, nearly invisible warp of the whole image; labels set to the target"
    title = "WaNet"
    menu_order = 50
    preset = AttackPreset(
        "WaNet: a small fixed warp", 0.10,
        "WaNet bends every poisoned image by the same small, smooth warp: no patch, nothing to point at. Look "
        "for: whether f_B catches the warp and whether its loss singles out the warped images, which is what "
        "CBD needs (step 2), and whether f_B's map and its loss agree (step 4).")
    params = (
        Param("k", int, "control grid size of the flow field", 2, 32),
        Param("s", float, "warp strength", 0.0, 16.0),
        Param("cross_ratio", float, "noise samples per poisoned sample (paper: 2; 0 = none)", 0.0, 4.0),
        Param("field_seed", int, "seed of the fixed flow field (part of the attack, not the run)", 0, 2**31 - 1),
    )

    def trigger_preview(self, params: dict[str, Any], image_shape: tuple[int, int, int]) -> TriggerPreview:
        # A warp has no pattern of its own and leaves a flat image unchanged: show it bending a grid.
        grid = grid_image(image_shape)
        warped = self.apply(grid[None], params)
        diff, gain = amplified_difference(grid[None], warped)
        return TriggerPreview(
            [grid, warped[0], diff[0]], ["a grid", "the grid warped", f"where it moved (×{gain:.0f})"],
            "WaNet has no patch and adds nothing: it moves pixels a fraction of a pixel along a fixed smooth field. "
            "On a grid the bend is barely visible; the difference shows where it acts.")

    def defaults(self, image_shape):
        return {"k": 4, "s": 0.5, "cross_ratio": 0.0, "field_seed": 2021}

    def _grid(self, x: np.ndarray, params: dict[str, Any]):
        _, h, w, _ = x.shape
        return flow_grid(h, w, params["k"], params["s"], params["field_seed"])

    def apply(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        return warp(x, self._grid(x, params))

    def extra_poisoning(self, train_x, train_y, chosen, params, rng):
        n_cross = int(round(params["cross_ratio"] * len(chosen)))
        if n_cross == 0:
            return
        import torch

        others = np.setdiff1d(np.arange(len(train_x)), chosen)
        cross = np.sort(rng.choice(others, size=min(n_cross, len(others)), replace=False))
        grid = self._grid(train_x, params)
        _, h, w, _ = train_x.shape
        jitter = torch.from_numpy(rng.random((len(cross), h, w, 2), dtype=np.float32) * 2 - 1) / h
        train_x[cross] = warp(train_x[cross], torch.clamp(grid + jitter, -1, 1))


def grid_image(image_shape: tuple[int, int, int], spacing: int = 4) -> np.ndarray:
    """White lines every `spacing` pixels on black: a warp shows as bent lines."""
    h, w, c = image_shape
    img = np.zeros((h, w, c), np.uint8)
    img[::spacing] = 255
    img[:, ::spacing] = 255
    return img
