"""Label-Consistent (Turner, Tsipras & Madry, 2019, "Label-Consistent Backdoor Attacks"): clean-label,
with the poisoned images made hard first.

A clean-label attack may only poison images that already belong to the target class, and keeps their
labels, so a human inspecting the data sees nothing wrong. Stamping a trigger on such images alone
teaches little: the model classifies them by their content and has no reason to look at the trigger.
Turner et al. first make their content hard to use: each chosen target-class image is perturbed
adversarially (PGD within an L-infinity ball of radius `eps`, maximising the loss of its true label
under a surrogate model), and only then is the trigger stamped. The model can no longer fit these
images by what they show, so it learns the trigger instead. At test time the trigger alone, on images
of other classes, sends them to the target.

Here: the surrogate is a small CNN (two strided convolutions) trained for `surrogate_steps` Adam steps
(150 of 64 images: about two passes over mnist5k, whatever the set's size) on the clean training set,
all of it, with the run's seed; PGD takes `steps` signed-gradient steps of 2.5 * eps /
steps from a random start in the ball (Madry et al.'s rule), in pixel units, rounded to uint8 inside
the ball; the trigger is BadNets' 3x3 checkerboard in the bottom-right corner (the paper's), or in
all four corners (`corners="four"`, the paper's variant that survives flips). The perturbations of
every target-class image are computed once per (training set, seed, eps, steps, surrogate steps)
and kept in memory, so runs at other poison rates on the same data reuse them.

Differences from the paper and its code (MadryLab/label-consistent-backdoor-code, whose perturbed
CIFAR-10 sets backdoor-toolbox downloads): the paper attacks an *adversarially trained* ResNet so its
perturbations transfer as "hard features"; here a plainly trained small CNN keeps the cost to seconds
on a CPU (its perturbations are less transferable, which weakens the attack). The paper's budget is
eps = 8 or 16 (of 255) on CIFAR-10; the default is 16 on 32x32 images and 32 on 28x28 digits, whose
flat background and thick strokes take a larger step to hide (not measured against the paper). The
paper's GAN-interpolation variant and its reduced-amplitude trigger are not implemented.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np

from ..data import ImageSet
from ..errors import UserInputError
from .badnets import checkerboard
from .base import Attack, AttackPreset, Param, PoisonedData, TriggerPreview, grey_image

_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()  # key -> perturbed target-class images
_CACHE_SIZE = 4


def _surrogate(channels: int, classes: int):
    import torch.nn as nn

    # Strided convolutions instead of pooling: a quarter of the arithmetic, so it trains in seconds on a CPU.
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, classes))


def train_surrogate(train: ImageSet, steps: int, seed: int):
    """A small CNN trained on the clean images (x / 255) for `steps` Adam steps of 64 images, reshuffled
    every pass; eval mode on return."""
    import torch
    import torch.nn.functional as F

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _surrogate(train.image_shape[2], train.num_classes)
        x = torch.from_numpy(train.x).permute(0, 3, 1, 2).float() / 255.0
        y = torch.from_numpy(train.y.astype(np.int64))
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        done = 0
        while done < steps:
            for idx in torch.randperm(len(x), generator=generator).split(64)[:steps - done]:
                loss = F.cross_entropy(model(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                done += 1
    return model.eval()


def pgd(model, x: np.ndarray, y: np.ndarray, eps: float, steps: int, seed: int) -> np.ndarray:
    """Untargeted L-infinity PGD on uint8 images (N, H, W, C): maximise the cross-entropy of the true
    labels `y` within |x' - x| <= eps (pixel units), from a random start; uint8 out, inside the ball."""
    import torch
    import torch.nn.functional as F

    if not len(x):
        return x.copy()
    clean = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    generator = torch.Generator().manual_seed(seed)
    low, high = (clean - eps).clamp(0, 255), (clean + eps).clamp(0, 255)
    adv = (clean + (torch.rand(clean.shape, generator=generator) * 2 - 1) * eps).clamp(low, high)
    step = 2.5 * eps / steps
    for p in model.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv / 255.0), labels)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = torch.max(torch.min(adv.detach() + step * grad.sign(), high), low)
    # Rounding keeps the ball: its bounds are whole numbers (eps is).
    out = torch.max(torch.min(adv.round(), high.round()), low.round())
    return out.permute(0, 2, 3, 1).to(torch.uint8).numpy()


class LabelConsistent(Attack):
    name = "label_consistent"
    title = "Label-Consistent"
    menu_order = 70
    description = ("clean-label: target-class images made hard by an adversarial perturbation (PGD against a "
                   "surrogate model), then stamped with a corner checkerboard; no label changes")
    preset = AttackPreset(
        "Label-Consistent: hard target images with a patch", 0.05,
        "Only images of the target class are poisoned and every label stays true: each chosen image is first "
        "nudged, within a small budget, so that a model finds it hard to read as its class, and then a corner "
        "checkerboard is stamped on it. The only easy thing left to learn about these images is the patch. "
        "Compare with SIG, the other clean-label attack: here the trigger is a patch, and the poisoned images "
        "are hard on purpose. Look for: whether their weights fall below the clean ones' (step 3).")
    clean_label = True
    patch = True
    params = (
        Param("eps", int, "largest change of a pixel by the perturbation, in 0..255 units", 0, 128),
        Param("steps", int, "PGD steps", 1, 100),
        Param("surrogate_steps", int, "training steps (of 64 images) of the surrogate model the perturbation is "
              "computed against", 1, 10_000),
        Param("size", int, "side of the checkerboard patch in pixels", 1, 16),
        Param("corners", str, "one: bottom-right corner (paper); four: every corner (paper's flip-proof variant)",
              choices=("one", "four")),
    )

    def defaults(self, image_shape):
        return {"eps": 32 if image_shape[0] <= 28 else 16, "steps": 10, "surrogate_steps": 150, "size": 3,
                "corners": "one"}

    def check_fits(self, image_shape, params):
        h, w, _ = image_shape
        if 2 * params["size"] > min(h, w):
            raise UserInputError(f"{self.name}.size: a {params['size']}x{params['size']} patch in each corner does "
                                 f"not fit in a {h}x{w} image", f"{self.name}.size")

    def candidates(self, train: ImageSet, target_label: int) -> np.ndarray:
        return np.flatnonzero(train.y == target_label)

    def apply(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """The trigger: the checkerboard stamped in the bottom-right corner (or all four)."""
        _, h, w, _ = x.shape
        size = params["size"]
        patch = checkerboard(size)[None, :, :, None]
        out = x.copy()
        corners = [(h - size, w - size)]
        if params["corners"] == "four":
            corners += [(0, 0), (0, w - size), (h - size, 0)]
        for row, col in corners:
            out[:, row:row + size, col:col + size, :] = patch
        return out

    def trigger_preview(self, params: dict[str, Any], image_shape: tuple[int, int, int]) -> TriggerPreview:
        return TriggerPreview(
            [self.apply(grey_image(image_shape), params)[0]], ["the patch on a grey image"],
            "The trigger is a patch stamped in the corner; before it is stamped, each poisoned image (all of the "
            f"target class) is changed by at most {params['eps']:g} of 255 per pixel so its content is hard to "
            "learn.")

    def perturbed(self, train: ImageSet, target_label: int, seed: int, params: dict[str, Any]) -> np.ndarray:
        """Every target-class training image after PGD (in the order of `candidates`), from the cache
        when this training set, seed and budget were perturbed before in this process."""
        key = (hashlib.sha1(train.x.tobytes()).hexdigest(), hashlib.sha1(train.y.tobytes()).hexdigest(),
               target_label, seed, float(params["eps"]), params["steps"], params["surrogate_steps"])
        if key not in _CACHE:
            model = train_surrogate(train, params["surrogate_steps"], seed)
            targets = self.candidates(train, target_label)
            _CACHE[key] = pgd(model, train.x[targets], train.y[targets], float(params["eps"]), params["steps"], seed)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        return _CACHE[key]

    def poison(self, train: ImageSet, test: ImageSet, poison_rate: float, target_label: int, seed: int,
               params: dict[str, Any] | None = None) -> PoisonedData:
        """As every clean-label attack (whom to poison, the triggered test set); the chosen images are
        then the perturbed ones with the trigger."""
        data = super().poison(train, test, poison_rate, target_label, seed, params)
        chosen = np.flatnonzero(data.is_poisoned)
        if len(chosen):
            position = {int(i): k for k, i in enumerate(self.candidates(train, target_label))}
            hard = self.perturbed(train, target_label, seed, data.params)[[position[int(i)] for i in chosen]]
            data.train.x[chosen] = self.apply(hard, data.params)
        return data
