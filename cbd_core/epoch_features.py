"""Features of a fixed set of training images at the end of every epoch, so the dashboard can show how
each model's map forms while it trains (CBD: the poisoned images gathering in f_B, never in f_C).

The pipeline makes one `EpochRecorder` per run and hands its `record` to the defense's context;
`DefenseContext.end_epoch` calls it after every epoch's line is logged, and the pipeline saves
`recorder.arrays()` as the run's epoch_features.npz (layout in `cbd_core/runs.py`).

Recording changes nothing in training: features are taken in eval mode under no_grad
(`training.features_and_logits`, the same path the test-set evaluation already takes every epoch),
which uses no random numbers and leaves batch-norm statistics and the model's mode as they were;
tests/test_epoch_features.py checks that a run's weights, CA and ASR are bit-identical with and
without it.

Which images: every poisoned image of the run's embedding subset up to half of `MAX_POINTS`, the
rest clean images drawn class by class from that subset (so images.npz holds a thumbnail of each).
Poisoned images are over-represented on purpose (all 400 of mnist5k's 10% instead of a tenth of a
sample): the cluster they form is the thing to watch. Which epochs: every one, up to `MAX_FRAMES`;
longer runs keep every k-th epoch and the last epoch of each phase.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .training import features_and_logits

EPOCH_FEATURES_FILE = "epoch_features"
MAX_POINTS = 1500  # images followed through training: ~7 s to lay out 14 epochs on 2 cores (docs/benchmarks.md)
MAX_FRAMES = 30  # epochs recorded at most (plus each phase's last): bounds the file and the layout time
FLOAT16_MAX = 65504.0


def epoch_subset(candidates: np.ndarray, is_poisoned: np.ndarray, labels: np.ndarray, seed: int,
                 max_points: int = MAX_POINTS) -> np.ndarray:
    """Up to `max_points` training indices out of `candidates` (sorted): every poisoned one up to half
    of `max_points`, then clean ones in proportion to their classes. `is_poisoned` and `labels` are
    indexed by training index."""
    candidates = np.asarray(candidates, dtype=np.int64)
    rng = np.random.default_rng(seed)
    poisoned = candidates[is_poisoned[candidates]]
    clean = candidates[~is_poisoned[candidates]]
    if len(poisoned) > max_points // 2:
        poisoned = rng.choice(poisoned, size=max_points // 2, replace=False)
    room = max_points - len(poisoned)
    if len(clean) > room:
        chosen = []
        for c in np.unique(labels[clean]):
            members = clean[labels[clean] == c]
            take = max(1, int(round(room * len(members) / len(clean))))
            chosen.append(rng.choice(members, size=min(take, len(members)), replace=False))
        clean = np.sort(np.concatenate(chosen))[:room]
    return np.sort(np.concatenate([poisoned, clean]))


def recorded_stride(total_epochs: int, max_frames: int = MAX_FRAMES) -> int:
    """Record every k-th epoch so that about `max_frames` are kept."""
    return max(1, -(-int(total_epochs) // max_frames))


class EpochRecorder:
    """Collects (epoch number, phase, model name, features, predictions) for the images `index`.

    `model_names`: the defense's (`Defense.model_names`); a phase named after one of them (CBD's
    "f_B" and "f_C") records that model, any other phase (train, isolate, unlearn, ...) the
    `delivered` one (`Defense.delivered`; default the first)."""

    def __init__(self, x: torch.Tensor, index: np.ndarray, model_names: tuple[str, ...], total_epochs: int,
                 delivered: str | None = None):
        self.index = np.asarray(index, dtype=np.int64)
        self.x = x[torch.from_numpy(self.index).to(x.device)] if len(self.index) else x[:0]
        self.model_names, self.delivered = model_names, delivered or model_names[0]
        self.stride = recorded_stride(total_epochs)
        self.frames: list[dict[str, Any]] = []
        self._remembered: Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor] | None] = lambda model: None
        self._positions: torch.Tensor | None = None

    def reuse(self, remembered: Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor] | None],
              embedding_index: np.ndarray) -> None:
        """Take a frame from `remembered(model)` (features and logits of the `embedding_index` images from
        the model's last full pass, or None once the model has changed: `DefenseContext.
        remembered_embedding`) instead of a pass of its own. CBD scores every training sample at the end
        of each epoch, so its frames cost nothing; the numbers are the same to the bit (each image's
        output does not depend on its batch). The recorded images must be among `embedding_index`."""
        embedding_index = np.asarray(embedding_index, dtype=np.int64)
        positions = np.searchsorted(embedding_index, self.index)
        if len(self.index) and not np.array_equal(embedding_index[np.minimum(positions, len(embedding_index) - 1)],
                                                  self.index):
            raise ValueError("the recorded images must be among the embedding subset")
        self._remembered = remembered
        self._positions = torch.from_numpy(positions).to(self.x.device)

    def record(self, number: int, line: dict[str, Any], model: nn.Module) -> None:
        """Called by `DefenseContext.end_epoch` with the run's epoch number (1-based, the line's position
        in metrics.jsonl) and the epoch's metrics line."""
        phase, epoch, epochs = str(line.get("phase")), int(line.get("epoch", 0)), int(line.get("epochs", 0))
        if not len(self.index) or (number % self.stride and epoch != epochs):
            return
        remembered = self._remembered(model)
        if remembered is not None:
            z, logits = remembered[0][self._positions], remembered[1][self._positions]
        else:
            z, logits = features_and_logits(model, self.x)
        features = np.clip(z.float().cpu().numpy(), -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
        self.frames.append({"epoch": number, "phase": phase, "phase_epoch": epoch,
                            "model": phase if phase in self.model_names else self.delivered,
                            "features": features, "prediction": logits.argmax(1).cpu().numpy().astype(np.int16)})

    def arrays(self) -> dict[str, np.ndarray] | None:
        """The epoch_features.npz arrays, or None when nothing was recorded."""
        if not self.frames:
            return None
        return {"index": self.index,
                "epoch": np.array([f["epoch"] for f in self.frames], dtype=np.int32),
                "phase": np.array([f["phase"] for f in self.frames], dtype=str),
                "phase_epoch": np.array([f["phase_epoch"] for f in self.frames], dtype=np.int32),
                "model": np.array([f["model"] for f in self.frames], dtype=str),
                "features": np.stack([f["features"] for f in self.frames]),
                "prediction": np.stack([f["prediction"] for f in self.frames])}
