"""Evaluation datasets CBD was *not* tuned on: other sizes, image shapes and kinds of image.

    python bench/eval_datasets.py --out /tmp/eval-data      # writes the .npz files, prints a table

Every choice of CBD's defaults (f_B's steps, its trajectory loss) was made by looking at mnist5k
only; these sets exist to check that the defaults carry over, and nothing here feeds back into them.
Each file is a user's own `.npz` (`x`, `y`, `x_test`, `y_test`, uint8 images), the format
`python -m cbd_core run --npz` and `matrix --datasets FILE.npz` read:

- `mnist1k`:  1,000 training images of mnist5k (100 per class), its 1,000 test images: a quarter of
              the data, so a fixed number of f_B steps is four times as many epochs.
- `mnist2k`:  2,000 training images (200 per class).
- `mnist20`:  all of mnist5k shrunk to 20x20 (bilinear): another image shape, so every trigger is
              placed and scaled for 20x20 by the attacks' own rules.
- `shapes`:   synthetic colour images, 24x24x3, ten classes of drawn shapes (disc, ring, square,
              frame, cross, plus, bars of two orientations, triangle, diagonal) at random positions,
              sizes and colours on noisy backgrounds: 3,000 train / 1,000 test. Nothing like digits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbd_core.data import load_mnist5k  # noqa: E402

SEED = 12345  # fixed: the sets are data, not an experiment


def per_class_subset(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                                   for c in np.unique(y)]))


def resize(x: np.ndarray, side: int) -> np.ndarray:
    """(N, H, W, 1) uint8 to (N, side, side, 1), bilinear, with torch (already a dependency)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    small = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return small.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def draw_shape(kind: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """A (side, side) mask in [0, 1] of one shape of class `kind` at a random place and size."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    r = rng.uniform(0.22, 0.36) * side
    cy, cx = rng.uniform(r, side - r, size=2)
    dy, dx = yy - cy, xx - cx
    t = max(1.5, r * 0.3)  # stroke width
    if kind == 0:    # disc
        m = dx**2 + dy**2 <= r**2
    elif kind == 1:  # ring
        d = np.sqrt(dx**2 + dy**2)
        m = (d <= r) & (d >= r - t)
    elif kind == 2:  # filled square
        m = (abs(dx) <= r * 0.8) & (abs(dy) <= r * 0.8)
    elif kind == 3:  # square frame
        m = (np.maximum(abs(dx), abs(dy)) <= r * 0.85) & (np.maximum(abs(dx), abs(dy)) >= r * 0.85 - t)
    elif kind == 4:  # diagonal cross
        m = ((abs(dx - dy) <= t) | (abs(dx + dy) <= t)) & (np.maximum(abs(dx), abs(dy)) <= r)
    elif kind == 5:  # plus
        m = ((abs(dx) <= t / 2) | (abs(dy) <= t / 2)) & (np.maximum(abs(dx), abs(dy)) <= r)
    elif kind == 6:  # horizontal bar
        m = (abs(dy) <= t / 2 + 0.5) & (abs(dx) <= r)
    elif kind == 7:  # vertical bar
        m = (abs(dx) <= t / 2 + 0.5) & (abs(dy) <= r)
    elif kind == 8:  # triangle (pointing up)
        m = (dy <= r * 0.7) & (dy >= -r) & (abs(dx) <= (dy + r) * 0.6)
    else:            # one diagonal stroke
        m = (abs(dx - dy) <= t / 2 + 0.5) & (np.maximum(abs(dx), abs(dy)) <= r)
    return m.astype(np.float32)


def shapes(n: int, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % 10
    rng.shuffle(y)
    x = np.empty((n, side, side, 3), np.uint8)
    for i, kind in enumerate(y):
        background = rng.uniform(0, 90, size=3)
        colour = rng.uniform(120, 255, size=3)
        mask = draw_shape(int(kind), side, rng)[..., None]
        image = background * (1 - mask) + colour * mask + rng.normal(0, 12, size=(side, side, 3))
        x[i] = np.clip(image, 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


NAMES = ("mnist1k", "mnist2k", "mnist20", "shapes")


def build(out: Path, only: list[str] | None = None) -> dict[str, Path]:
    """Write the sets (all, or those named in `only`) as .npz files under `out`; their paths by name.
    Every set is drawn in the same order from one seed, so each is the same whichever are written."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    train, test = load_mnist5k()
    sets = {}
    for name, per_class in (("mnist1k", 100), ("mnist2k", 200)):
        keep = per_class_subset(train.y, per_class, rng)
        sets[name] = dict(x=train.x[keep], y=train.y[keep], x_test=test.x, y_test=test.y)
    sets["mnist20"] = dict(x=resize(train.x, 20), y=train.y, x_test=resize(test.x, 20), y_test=test.y)
    x, y = shapes(3000, 24, rng)
    x_test, y_test = shapes(1000, 24, rng)
    sets["shapes"] = dict(x=x, y=y, x_test=x_test, y_test=y_test)
    paths = {}
    for name, arrays in sets.items():
        if only is not None and name not in only:
            continue
        paths[name] = out / f"{name}.npz"
        np.savez_compressed(paths[name], **arrays)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the .npz files")
    args = parser.parse_args()
    print("| set | train | test | image |\n|---|---|---|---|")
    for name, path in build(args.out).items():
        with np.load(path) as f:
            print(f"| {name} | {len(f['y'])} | {len(f['y_test'])} | {'x'.join(map(str, f['x'].shape[1:]))} |")


if __name__ == "__main__":
    main()
