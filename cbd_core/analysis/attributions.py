"""Where a model looks: attribution maps (Captum) over uint8 images, the share of that attention that
falls on the trigger, and the trigger edits the Attributions page offers (move, resize, fade).

A backdoored model classifies a triggered image by the few trigger pixels, so most of its
attribution mass sits inside the trigger's region; a model the defense kept clean looks at the digit.

    >>> attr = attribution_map(model, image, target=None, method="saliency")   # (H, W), >= 0
    >>> trigger_mass_share(attr, region)                                        # 0.0 .. 1.0

Every method returns a non-negative (H, W) map (|attribution| summed over colour channels), so maps
of different models can share one colour scale. Maps are for the model's predicted class unless a
target is given. All of it runs on the CPU: one 28x28 image takes milliseconds with the small CNN.
"""

from __future__ import annotations

import threading
import weakref
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data import to_tensor
from ..errors import UserInputError
from ..models import for_inference
from ..training import batched_logits

__all__ = [
    "METHODS",
    "METHOD_DESCRIPTIONS",
    "apply_run_trigger",
    "attribution_map",
    "attribution_maps",
    "choose_example",
    "choose_training_example",
    "example_test_image",
    "trigger_is_patch",
    "edit_trigger",
    "last_conv_layer",
    "mean_trigger_share",
    "occlusion_grid",
    "predict_proba",
    "region_bbox",
    "triggered_test_images",
    "trigger_is_local",
    "trigger_mass_share",
    "training_example",
]

#: Attribution methods by name, with the title the dashboard shows.
METHODS: dict[str, str] = {
    "integrated_gradients": "Integrated gradients",
    "saliency": "Saliency",
    "grad_cam": "Grad-CAM",
    "occlusion": "Occlusion",
}

#: One line per method saying what its map measures, for a reader who has not met it.
METHOD_DESCRIPTIONS: dict[str, str] = {
    "integrated_gradients": "how much each pixel adds to the class score on the way from a black image to this one",
    "saliency": "how strongly the class score reacts to a small change of each pixel (gradient size)",
    "grad_cam": "which regions of the last convolutional layer's feature maps support the class (coarse)",
    "occlusion": "how much the class score changes when a small black square covers each spot",
}

# Integrated gradients from a black image in this many steps (Captum's Gauss-Legendre rule, which
# needs fewer steps than a Riemann sum): 20 keeps one 28x28 image with the small CNN at a few tens of
# milliseconds on a CPU, and its maps differ from those with Captum's default of 50 steps by about
# 1.6% (L1; correlation > 0.999 on the small CNN's BadNets runs).
IG_STEPS = 20
# How many images (times IG steps or occlusion windows) go through the model in one forward pass:
# 128-256 measured fastest for the small CNN on a 2-core CPU (512 and up were about twice as slow).
EVAL_BATCH = 256
# A trigger whose bounding box covers more than this fraction of the image is "whole-image"
# (blend, SIG, WaNet): moving or resizing it means nothing, only fading it does.
LOCAL_TRIGGER_MAX_AREA = 0.5

# Captum's Grad-CAM hooks the shared model's layer for the duration of a call; the dashboard shares
# one model object between sessions, so two concurrent calls must not see each other's hooks.
_model_lock = threading.Lock()


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise UserInputError(f"method: unknown '{method}' (choose from {', '.join(METHODS)})", "method")


def _as_batch(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) from (H, W, C), (H, W) or (N, H, W, C) input."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 2:
        images = images[..., None]
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C) or (H, W, C), got shape {images.shape}")
    return images


def last_conv_layer(model: nn.Module) -> nn.Conv2d:
    """The model's last `nn.Conv2d` in registration order: SmallCNN's second conv, and the second conv
    of the last residual block of PreAct-ResNet18 / WRN-16-1 (the coarsest, most semantic maps)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    return convs[-1]


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


# Folded copies (`models.for_inference`) of the models the pages ask about, made once per model and
# remade only if its parameters or buffers change: a page's models are loaded once and only read, and
# copying and folding a PreAct-ResNet18 on every prediction would cost more than the prediction.
_folded: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], nn.Module]]" = weakref.WeakKeyDictionary()


def _state_versions(model: nn.Module) -> tuple[int, ...]:
    return tuple(t._version for t in model.state_dict(keep_vars=True).values())


def _predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # The run's own inference path (batch norms folded), so a page's predictions are the run's; each
    # image's output does not depend on its batch, so the batch size changes no number.
    versions = _state_versions(model)
    entry = _folded.get(model)
    if entry is None or entry[0] != versions:
        entry = _folded[model] = (versions, for_inference(model))
    return batched_logits(entry[1], x, EVAL_BATCH)


def predict_proba(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """Class probabilities (classes,) for one uint8 image (H, W, C); (N, classes) for a batch."""
    single = np.asarray(image).ndim <= 3
    x = to_tensor(_as_batch(image), _model_device(model))
    with _model_lock:
        probs = torch.softmax(_predict_logits(model.eval(), x), dim=1).cpu().numpy()
    return probs[0] if single else probs


def occlusion_grid(h: int, w: int) -> tuple[int, int]:
    """(window, stride) of the occlusion squares for an h x w image.

    A window about 1/7 of the image (4 px on 28x28 and 32x32) is big enough to hide a 3x3 trigger
    whole and small enough to keep the map readable. The stride is the largest step up to the window
    that lands the last window on the image's edge, so the bottom-right corner, where patch triggers
    sit, is covered too (Captum leaves pixels past the last whole window at zero). On 28x28 and 32x32
    that is the window itself: 49 / 64 forward passes per image rather than ~170 with half steps."""
    window = max(2, min(h, w) // 7)
    stride = next(s for s in range(window, 0, -1) if (h - window) % s == 0 and (w - window) % s == 0)
    return window, stride


def _attribute(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
    """(N, H, W) non-negative attributions of `targets` for float inputs x (N, C, H, W)."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency

    n, c, h, w = x.shape
    x.requires_grad_(method in ("saliency", "integrated_gradients"))  # else Captum warns and sets it
    if method == "saliency":
        attr = Saliency(model).attribute(x, target=targets, abs=True)
    elif method == "integrated_gradients":
        attr = IntegratedGradients(model).attribute(
            x, baselines=torch.zeros_like(x), target=targets, n_steps=IG_STEPS,
            internal_batch_size=max(IG_STEPS, EVAL_BATCH))
    elif method == "grad_cam":
        cam = LayerGradCam(model, last_conv_layer(model)).attribute(x, target=targets, relu_attributions=True)
        # Bilinear upsampling of the coarse (e.g. 14x14 or 4x4) map to the image's size.
        attr = LayerAttribution.interpolate(cam, (h, w), interpolate_mode="bilinear").clamp_min(0)
    elif method == "occlusion":
        window, stride = occlusion_grid(h, w)
        attr = Occlusion(model).attribute(
            x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride), target=targets,
            baselines=0.0, perturbations_per_eval=max(1, EVAL_BATCH // n))
    else:  # pragma: no cover - checked by the caller
        raise AssertionError(method)
    return attr.detach().abs().sum(dim=1)


def attribution_maps(model: nn.Module, images: np.ndarray, targets: int | Sequence[int] | np.ndarray | None,
                     method: str, batch_size: int = 50) -> np.ndarray:
    """Attribution maps (N, H, W) float32, >= 0, for uint8 images (N, H, W, C).

    `targets`: the class to explain, one int for all images, one per image, or None for each image's
    predicted class. `method`: a key of `METHODS`. The model is used in eval mode and not changed."""
    _check_method(method)
    images = _as_batch(images)
    n = len(images)
    if n == 0:
        return np.zeros((0,) + images.shape[1:3], np.float32)
    device = _model_device(model)
    maps = []
    for start in range(0, n, batch_size):
        # Locked per batch, not per call: a long 100-image average lets other sessions' maps in between.
        with _model_lock:
            model.eval()
            x = to_tensor(images[start:start + batch_size], device)
            if targets is None:
                t = _predict_logits(model, x).argmax(1)
            elif np.ndim(targets) == 0:
                t = torch.full((len(x),), int(targets), dtype=torch.long, device=device)
            else:
                t = torch.as_tensor(np.asarray(targets)[start:start + batch_size], dtype=torch.long, device=device)
            maps.append(_attribute(model, x, t, method).cpu().numpy())
    out = np.concatenate(maps).astype(np.float32)
    # Guard the "finite, non-negative" promise against a NaN from a degenerate model.
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def attribution_map(model: nn.Module, image_uint8_hwc: np.ndarray, target: int | None, method: str) -> np.ndarray:
    """The attribution map (H, W) float32, >= 0, of one uint8 image (H, W, C) for class `target`
    (None: the model's predicted class) by `method` (a key of `METHODS`)."""
    return attribution_maps(model, _as_batch(image_uint8_hwc)[:1], target, method)[0]


def trigger_mass_share(attr: np.ndarray, region: np.ndarray) -> float:
    """Share (0..1) of the map's total attribution mass inside `region` ((H, W) bool); NaN for an
    all-zero map, which says nothing about where the model looks."""
    attr = np.asarray(attr, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if attr.shape != region.shape:
        raise ValueError(f"attribution map {attr.shape} and region {region.shape} differ in shape")
    total = attr.sum()
    if not np.isfinite(total) or total <= 0:
        return float("nan")
    return float(attr[region].sum() / total)


def apply_run_trigger(images: np.ndarray, config: dict) -> np.ndarray:
    """The run's trigger on uint8 images (N, H, W, C) or one image (H, W, C), as the attack built it
    (config: the run's config.json with `attack` and `attack_params`)."""
    from ..attacks import get_attack

    batch = _as_batch(images)
    attack = get_attack(str(config.get("attack")))
    params = attack.resolve(tuple(batch.shape[1:]), config.get("attack_params") or {})
    out = attack.apply(batch, params)
    return out[0] if np.asarray(images).ndim <= 3 else out


def triggered_test_images(test_x: np.ndarray, test_y: np.ndarray, config: dict, limit: int = 100
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` test images whose true label is not the attack's target, with the run's trigger
    re-applied (config: the run's config.json with `attack`, `attack_params`, `target_label`);
    returns (triggered uint8 images, their true labels). When there are more, they are taken evenly
    spaced, because a run keeps its test images sorted by class and the first 100 would be 3 digits."""
    keep = np.flatnonzero(np.asarray(test_y) != int(config.get("target_label", 0)))
    if len(keep) > limit:
        keep = keep[np.unique(np.linspace(0, len(keep) - 1, limit).round().astype(int))]
    x = np.asarray(test_x)[keep]
    return (apply_run_trigger(x, config) if len(x) else x), np.asarray(test_y)[keep]


def mean_trigger_share(model: nn.Module, triggered_images: np.ndarray, region: np.ndarray, method: str,
                       target: int | None = None, limit: int = 100) -> float:
    """The trigger region's share of attribution mass, averaged over (up to `limit`) triggered images;
    maps explain `target` (None: each image's predicted class). All-zero maps are left out."""
    images = _as_batch(triggered_images)[:limit]
    if len(images) == 0:
        return float("nan")
    maps = attribution_maps(model, images, target, method)
    region = np.asarray(region, dtype=bool)
    totals = maps.reshape(len(maps), -1).sum(1)
    inside = maps[:, region].sum(1)
    shares = np.where(totals > 0, inside / np.where(totals > 0, totals, 1.0), np.nan)
    return float(np.nanmean(shares)) if np.isfinite(shares).any() else float("nan")


# -- the example image a page opens on ------------------------------------------------------------


def choose_example(test_y: np.ndarray, target_label: int, clean_predictions: dict[str, np.ndarray],
                   triggered_predictions: dict[str, np.ndarray], backdoored: str | None = None) -> int:
    """The index of the test image that shows the backdoor at work, from each model's predictions
    ({model name: (N,) classes}) on the clean and the triggered test images.

    Wanted: an image outside the target class that every model classifies right when clean (so a
    wrong answer with the trigger is the trigger's doing, not a hard digit) and that the backdoored
    model (`backdoored`: the defense's `backdoored_model`, else the first model) sends to the target when triggered. When no image
    meets all of it, the conditions are dropped from the last: every model right when clean, then
    any image outside the target class, then image 0. Within a tier the first index wins, so the
    choice is stable for a run."""
    test_y = np.asarray(test_y)
    n = len(test_y)
    if n == 0:
        return 0
    outside = test_y != int(target_label)
    right = np.ones(n, bool)
    for predictions in clean_predictions.values():
        right &= np.asarray(predictions) == test_y
    name = backdoored if backdoored in triggered_predictions else next(iter(triggered_predictions), None)
    fooled = (np.asarray(triggered_predictions[name]) == int(target_label)) if name is not None else np.ones(n, bool)
    for tier in (outside & right & fooled, outside & right, outside):
        if tier.any():
            return int(np.argmax(tier))
    return 0


def example_test_image(models: dict[str, nn.Module], test_x: np.ndarray, test_y: np.ndarray, config: dict) -> int:
    """`choose_example` over a run's kept test images (uint8 (N, H, W, C)) with its models and
    trigger (config: the run's config.json)."""
    test_x = _as_batch(test_x)
    if len(test_x) == 0:
        return 0
    triggered = apply_run_trigger(test_x, config)
    clean = {name: predict_proba(model, test_x).argmax(1) for name, model in models.items()}
    fooled = {name: predict_proba(model, triggered).argmax(1) for name, model in models.items()}
    from ..defenses import defense_or_none

    backdoored = getattr(defense_or_none(config.get("defense")), "backdoored_model", None)
    return choose_example(test_y, int(config.get("target_label", 0)), clean, fooled, backdoored)


def choose_training_example(index: np.ndarray, is_poisoned: np.ndarray, target_label: int,
                            true_labels: np.ndarray | None = None, predictions: np.ndarray | None = None
                            ) -> int | None:
    """The training-set index of the poisoned training image that shows the backdoor at work, among
    `index` (the training indices a run kept features and pixels of; (n,)), from `is_poisoned` and
    `true_labels` (each (N,), over the whole training set) and the backdoored model's `predictions` on
    the kept images ((n,), aligned to `index`). None when none of them is poisoned.

    Wanted, as for `choose_example`: an image that really shows another class than the target (so its
    label is the attacker's) and that the backdoored model sends to the target; the conditions are
    dropped from the last when none meets them. Within a tier the first in `index` wins, so the choice
    is stable for a run."""
    index = np.asarray(index, dtype=np.int64)
    poisoned = np.asarray(is_poisoned, dtype=bool)
    if not len(index) or index.min() < 0 or index.max() >= len(poisoned):
        return None
    kept = poisoned[index]
    outside = np.asarray(true_labels)[index] != int(target_label) if true_labels is not None \
        and len(true_labels) == len(poisoned) else np.ones(len(index), bool)
    fooled = np.asarray(predictions) == int(target_label) if predictions is not None \
        and len(predictions) == len(index) else np.ones(len(index), bool)
    for tier in (kept & outside & fooled, kept & outside, kept):
        if tier.any():
            return int(index[np.argmax(tier)])
    return None


def training_example(embeddings: dict[str, np.ndarray], weights: dict[str, np.ndarray],
                     images: dict[str, np.ndarray], target_label: int, backdoored: str | None = None) -> int | None:
    """`choose_training_example` over a run's files: its embeddings.npz (the kept subset, whose maps
    the worker draws, and each model's predictions on it), sample_weights.npz (poisoned flags, true
    labels) and images.npz (the kept images' pixels). Only images present in both subsets count. None
    when a file lacks what it needs or the subset holds no poisoned image."""
    if "index" not in embeddings or "is_poisoned" not in weights or "train_index" not in images:
        return None
    index = np.asarray(embeddings["index"], dtype=np.int64)
    has_pixels = np.isin(index, np.asarray(images["train_index"], dtype=np.int64))
    predictions = embeddings.get(f"prediction_{backdoored}") if backdoored else None
    return choose_training_example(index[has_pixels], weights["is_poisoned"], target_label,
                                   weights.get("original_label"),
                                   np.asarray(predictions)[has_pixels] if predictions is not None
                                   and len(predictions) == len(index) else None)


def trigger_is_patch(config: dict, region: np.ndarray) -> bool:
    """Whether the run's trigger is a patch (drawn as a box, movable): the attack registry says so;
    an attack it does not know is judged by the region's shape (`trigger_is_local`)."""
    from ..attacks import ATTACKS

    attack = ATTACKS.get(str(config.get("attack")))
    return attack.patch if attack is not None else trigger_is_local(region)


# -- stored per run: computed once by the background worker ---------------------------------------

SHARES_FILE = "attribution_shares.json"  # {method: {model name: share}} over up to 100 triggered images
SHARE_IMAGES = 100


def compute_trigger_shares(run, methods: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Every model's mean share of attribution on the trigger, per method, over up to SHARE_IMAGES
    triggered test images of the run; written to the run's SHARES_FILE (the worker calls this once
    a run is done, so the page never recomputes it). Returns what it wrote."""
    from . import load_models

    images = run.arrays("images")
    if images is None or "test_x" not in images:
        raise UserInputError(f"run {run.run_id} has no test images to explain", "run")
    triggered, _ = triggered_test_images(images["test_x"], images["test_y"], run.config(), SHARE_IMAGES)
    region = images["trigger_region"].astype(bool)
    models = load_models(run)
    shares = {method: {name: mean_trigger_share(model, triggered, region, method) for name, model in models.items()}
              for method in (methods or METHODS)}
    run.write_json_file(SHARES_FILE, shares)
    return shares


def stored_trigger_shares(run) -> dict[str, dict[str, float]] | None:
    """The shares the worker stored for this run, or None (older runs, or not computed yet)."""
    shares = run.read_json_file(SHARES_FILE)
    if not all(isinstance(v, dict) for v in (shares or {}).values()):
        return None
    return shares


# -- editing the trigger -------------------------------------------------------------------------


def region_bbox(region: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the region's bounding box, bottom/right exclusive; None if empty."""
    rows, cols = np.nonzero(np.asarray(region, dtype=bool))
    if len(rows) == 0:
        return None
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def trigger_is_local(region: np.ndarray) -> bool:
    """True for a patch-like trigger (BadNets, Trojan) that can be moved and resized; False for a
    whole-image one (blend, SIG, WaNet), whose bounding box covers most of the image."""
    region = np.asarray(region, dtype=bool)
    box = region_bbox(region)
    if box is None:
        return False
    top, left, bottom, right = box
    return (bottom - top) * (right - left) <= LOCAL_TRIGGER_MAX_AREA * region.size


def edit_trigger(clean: np.ndarray, triggered: np.ndarray, region: np.ndarray, dx: int = 0, dy: int = 0,
                 scale: float = 1.0, opacity: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The clean image with the trigger moved, resized and faded; returns (image uint8, new region).

    The stamp is the triggered image's pixels in the region (within its bounding box). It is resized
    by `scale` with nearest neighbours about the box's centre, shifted `dx` pixels right and `dy`
    down, and alpha-blended onto `clean` with `opacity` (0: the clean image, 1: the trigger's pixels
    as they are). Whatever falls outside the image is cut off; the new region is what stays inside.
    """
    clean = np.asarray(clean)
    triggered = np.asarray(triggered)
    region = np.asarray(region, dtype=bool)
    if clean.shape != triggered.shape or clean.shape[:2] != region.shape:
        raise ValueError(f"clean {clean.shape}, triggered {triggered.shape} and region {region.shape} do not match")
    if not scale > 0:
        raise UserInputError(f"scale: must be above 0, got {scale}", "scale")
    if not 0.0 <= opacity <= 1.0:
        raise UserInputError(f"opacity: {opacity} is outside [0, 1]", "opacity")
    h, w = region.shape
    box = region_bbox(region)
    if box is None:
        return clean.copy(), region.copy()
    top, left, bottom, right = box
    stamp = triggered[top:bottom, left:right].astype(np.float32)
    mask = region[top:bottom, left:right]
    sh, sw = mask.shape

    # Nearest-neighbour resize: output pixel i reads source pixel floor(i * old / new).
    nh, nw = max(1, int(round(sh * scale))), max(1, int(round(sw * scale)))
    rows = np.minimum((np.arange(nh) * sh) // nh, sh - 1)
    cols = np.minimum((np.arange(nw) * sw) // nw, sw - 1)
    stamp, mask = stamp[rows][:, cols], mask[rows][:, cols]

    # Place it: resized about the old box's centre, then shifted; clip to the image.
    new_top = top + (sh - nh) // 2 + int(dy)
    new_left = left + (sw - nw) // 2 + int(dx)
    r0, c0 = max(new_top, 0), max(new_left, 0)
    r1, c1 = min(new_top + nh, h), min(new_left + nw, w)
    image = clean.copy()
    new_region = np.zeros_like(region)
    if r0 >= r1 or c0 >= c1:
        return image, new_region  # moved entirely off the image
    sub_stamp = stamp[r0 - new_top:r1 - new_top, c0 - new_left:c1 - new_left]
    sub_mask = mask[r0 - new_top:r1 - new_top, c0 - new_left:c1 - new_left]
    base = clean[r0:r1, c0:c1].astype(np.float32)
    blended = (1.0 - opacity) * base + opacity * sub_stamp
    patch = np.where(sub_mask[..., None] if clean.ndim == 3 else sub_mask, blended, base)
    image[r0:r1, c0:c1] = np.clip(np.rint(patch), 0, 255).astype(clean.dtype)
    new_region[r0:r1, c0:c1] = sub_mask
    return image, new_region


# -- the Attributions page's views, computed by the worker -----------------------------------------

VIEWS_FILE = "attribution_views"  # <run>/attribution_views.npz, written by compute_attribution_views
VIEW_MODES = ("clean", "triggered")  # every kept test image, as it is and with the trigger
TRAIN_MODE = "train"  # the one poisoned training image of `run_training_example`


def view_key(kind: str, mode: str, name: str, method: str | None = None) -> str:
    """The array name in VIEWS_FILE: "probs__triggered__f_B", "map__clean__saliency__f_C"."""
    return "__".join([kind, mode, *([method] if method else []), name])


def compute_attribution_views(run) -> dict[str, np.ndarray]:
    """What the Attributions page shows for each of the run's kept test images, clean and with the run's
    trigger where it is (the page's sliders at rest): every model's class probabilities and its map by
    each method, plus the image the page opens on (`example`); and the same for the one poisoned
    training image the Lesson explains and marks on its maps (`train_example`, its training-set index;
    mode TRAIN_MODE, arrays of length 1), when the run kept one (`run_training_example`). Written to
    `<run>/VIEWS_FILE.npz` once by the worker, so a class opening the page makes the app server read a
    file instead of loading the models and running Captum in its own process, one session after another."""
    from . import load_models

    images = run.arrays("images")
    if images is None or "test_x" not in images:
        raise UserInputError(f"run {run.run_id} has no test images to explain", "run")
    config = run.config()
    test_x, region = _as_batch(images["test_x"]), images["trigger_region"].astype(bool)
    triggered = apply_run_trigger(test_x, config)
    # Exactly the image the page builds when its trigger sliders are at rest.
    shown = {"clean": test_x, "triggered": np.stack([edit_trigger(c, t, region)[0] for c, t in zip(test_x, triggered)])}
    models = load_models(run)
    arrays = {"example": np.asarray(example_test_image(models, test_x, images["test_y"], config))}
    sample = run_training_example(run, images)
    if sample is not None:  # the Lesson's poisoned training image, the one marked on its maps
        arrays["train_example"] = np.asarray(sample)
        shown[TRAIN_MODE] = _as_batch(images["train_x"])[np.flatnonzero(images["train_index"] == sample)[:1]]
    for mode in shown:
        for name, model in models.items():
            arrays[view_key("probs", mode, name)] = predict_proba(model, shown[mode]).astype(np.float32)
            for method in METHODS:
                arrays[view_key("map", mode, name, method)] = attribution_maps(model, shown[mode], None, method)
    run.save_arrays(VIEWS_FILE, **arrays)
    return arrays


def run_training_example(run, images: dict[str, np.ndarray] | None = None) -> int | None:
    """`training_example` of a run, read from its files (`images`: its images.npz when already read);
    None when a file is missing or cannot be read."""
    from ..defenses import defense_or_none

    try:
        embeddings, weights = run.arrays("embeddings"), run.arrays("sample_weights")
        images = images if images is not None else run.arrays("images")
        config = run.config()
    except UserInputError:
        return None
    if embeddings is None or weights is None or images is None:
        return None
    backdoored = getattr(defense_or_none(config.get("defense")), "backdoored_model", None)
    return training_example(embeddings, weights, images, int(config.get("target_label", 0)), backdoored)
