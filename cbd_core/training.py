"""The training loop every defense shares, in the airbench style: data lives on the device as one
float tensor, batches are index slices, augmentation runs batched on the device.

- `choose_device` picks cuda, then mps, then cpu (or what the user forces);
- `Tensors` is a data set on the device; `augment` shifts (and, for natural images, flips) a batch;
- `batches` yields shuffled index batches from a seeded generator;
- `predict` / `per_sample_loss` run a model over a whole set without gradients;
- `EvalSets.evaluate` gives CA, ASR and RA for a model;
- `cosine_lr` is the schedule: linear warm-up for the first steps, then cosine to zero.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import ImageSet, to_tensor
from .errors import UserInputError
from .metrics import accuracy, attack_success_rate
from .models import for_inference


def choose_device(requested: str | None = None) -> torch.device:
    """`requested` if given and available; otherwise cuda, then mps, then cpu."""
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested not in ("cpu", "cuda", "mps") and not requested.startswith("cuda:"):
        raise UserInputError(f"device: unknown '{requested}' (choose from auto, cpu, cuda, mps)", "device")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError("device: cuda was asked for but no CUDA GPU is available", "device")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserInputError("device: mps was asked for but Apple's Metal backend is not available", "device")
    return torch.device(requested)


@contextlib.contextmanager
def arithmetic(threads: int, deterministic: bool) -> Iterator[None]:
    """Run the body with a run's arithmetic settings (its config's `threads` and `deterministic`),
    restoring the process's own afterwards: the worker trains many runs, tests train in-process.

    Every way of starting a run (CLI, `matrix`, the dashboard's worker) trains inside this, so they
    give the same numbers for the same config on the same machine."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if deterministic:
        # cuBLAS reads this when it creates its handle; harmless on machines without CUDA.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    # warn_only: an op without a deterministic kernel warns instead of failing the run.
    _set_deterministic(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        _set_deterministic(saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def _set_deterministic(mode: bool) -> None:
    """torch.use_deterministic_algorithms(mode, warn_only=True) without its side trip: it also sets
    torch._inductor's config, and importing torch._inductor costs a fresh process 1.2 s. Nothing here
    compiles, so eager torch's own switch is all that matters; once inductor is loaded anyway
    (someone compiles), the public call keeps the two in step."""
    import sys

    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=True)


@dataclass
class Tensors:
    """Images as float (N, C, H, W) in [0, 1] and labels as long (N,), both on one device."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def from_images(cls, images: ImageSet, device: torch.device) -> "Tensors":
        return cls(to_tensor(images.x, device), torch.from_numpy(images.y).to(device))

    def __len__(self) -> int:
        return len(self.y)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Random translation by up to `pad` pixels (zero fill, like RandomCrop(padding=pad)) and, when
    `flip`, random horizontal flips; batched, on x's device."""
    n, c, h, w = x.shape
    if flip:
        flips = to_device(torch.rand(n, generator=generator, device="cpu"), x.device) < 0.5
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
    if pad <= 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = to_device(torch.randint(0, 2 * pad + 1, (n,), generator=generator), x.device)
    dx = to_device(torch.randint(0, 2 * pad + 1, (n,), generator=generator), x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (a batch's indices, its random shifts) on `device`. To a GPU it goes from
    pinned memory without blocking: a plain `.to("cuda")` waits for the GPU to finish its queue, a
    host sync at every batch. Same values either way."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class LossTally:
    """Batch losses weighted by batch size, kept as device tensors: adding one costs no host sync
    (`loss.item()` at every batch makes the CPU wait for the GPU); `mean()` reads them all at once.
    It adds `float(loss) * n` up in Python, in order, as the loops did: the same number to the bit."""

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._counts: list[int] = []

    def add(self, loss: torch.Tensor, n: int) -> None:
        self._losses.append(loss.detach())
        self._counts.append(n)

    @property
    def count(self) -> int:
        return sum(self._counts)

    def mean(self) -> float:
        """The weighted mean; 0.0 when nothing was added."""
        total = 0.0
        for value, n in zip(torch.stack(self._losses).tolist() if self._losses else [], self._counts):
            total += value * n
        return total / max(1, sum(self._counts))


def default_augmentation(image_shape: tuple[int, int, int]) -> dict:
    """Shifts of 1/8 of the side (4 px at 32, 2 px at 28, the CBD code's RandomCrop); flips only for
    colour images (a flipped digit or sign is another symbol; CIFAR-10 classes are flip-invariant)."""
    h, _, c = image_shape
    return {"pad": max(1, h // 14) if h <= 28 else h // 8, "flip": c == 3 and h == 32}


def batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Shuffled index batches over range(n) (CPU tensors), reproducible from `generator`."""
    order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last and n > batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


# Forward-only passes run in batches of this size: on CPU a batch of 256 ran the same passes in about
# half the time of 1,000 (cache-sized activations), and the results are bit-identical (each image's
# output does not depend on its batch), so no run's numbers moved.
EVAL_BATCH = 256


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Logits for every row of x, in eval mode (the model itself is not changed)."""
    return batched_logits(for_inference(model), x, batch_size)


@torch.no_grad()
def batched_logits(inference: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Logits of an inference copy (`models.for_inference`) for every row of x, in batches: for callers
    that fold a model once and ask it more than once."""
    if not len(x):
        return torch.empty(0)
    return torch.cat([inference(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def features_and_logits(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features z and logits for every row of x, in eval mode (the model is not changed)."""
    inference = for_inference(model)
    zs, logits = [], []
    for i in range(0, len(x), batch_size):
        z = inference.features(x[i:i + batch_size])
        zs.append(z)
        logits.append(inference.classify(z))
    return torch.cat(zs), torch.cat(logits)


def per_sample_loss(model: nn.Module, data: Tensors, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Cross-entropy of each sample (no augmentation, eval mode)."""
    return F.cross_entropy(predict(model, data.x, batch_size), data.y, reduction="none")


class PassMemo:
    """What a forward-only pass over fixed data gave, remembered per model together with a copy of the
    model's exact state (parameters and buffers): asked again while the model is unchanged, it
    answers without a second pass, so the answer is the same to the bit. A run asks twice in a few
    places: the last epoch's test scores are the final ones, f_B's last checkpoint is its frozen loss
    and its test ASR, the last full-set pass of each model gives the run's embeddings."""

    def __init__(self, size: int = 2):
        self.size = size
        self._entries: list[tuple[nn.Module, list[torch.Tensor], object]] = []

    def get(self, model: nn.Module):
        for owner, state, value in self._entries:
            if owner is model and _same_state(model, state):
                return value
        return None

    def put(self, model: nn.Module, value) -> None:
        state = [t.detach().clone() for t in model.state_dict().values()]
        kept = [e for e in self._entries if e[0] is not model][-(self.size - 1):] if self.size > 1 else []
        self._entries = kept + [(model, state, value)]


def _same_state(model: nn.Module, state: list[torch.Tensor]) -> bool:
    now = list(model.state_dict().values())
    return len(now) == len(state) and all(torch.equal(a, b) for a, b in zip(now, state))


@dataclass
class EvalSets:
    """The clean test set and the triggered one (non-target images with the trigger)."""

    clean: Tensors
    triggered: Tensors  # labels are the target
    triggered_true_labels: np.ndarray
    target_label: int
    _memo: PassMemo = field(default_factory=PassMemo, repr=False, compare=False)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """CA, ASR and RA of `model`; a model unchanged since it was last scored is not scored again."""
        remembered = self._memo.get(model)
        if remembered is not None:
            return dict(remembered)
        inference = for_inference(model)  # folded once for both sets
        clean_pred = batched_logits(inference, self.clean.x).argmax(1).cpu().numpy()
        trig_pred = batched_logits(inference, self.triggered.x).argmax(1).cpu().numpy()
        scores = {
            "clean_accuracy": accuracy(clean_pred, self.clean.y.cpu().numpy()),
            "attack_success_rate": attack_success_rate(trig_pred, self.target_label),
            "robust_accuracy": accuracy(trig_pred, self.triggered_true_labels),
        }
        self._memo.put(model, scores)
        return dict(scores)


class SGD:
    """Nesterov SGD with per-group weight decay: torch.optim.SGD's arithmetic, op for op (its
    single-tensor path, the one it takes on CPU), written out. torch.optim's first use imports
    torch._dynamo (0.8 s of every fresh process); this does not, and it has no per-step machinery
    (hooks, profiler records). tests/test_training.py checks it against torch.optim bit for bit.

    Duck-types what the training loops use: `param_groups` (each with "params", "lr",
    "weight_decay"), `zero_grad(set_to_none=True)` and `step()`."""

    def __init__(self, groups: list[dict], lr: float, momentum: float = 0.9, nesterov: bool = True):
        self.momentum, self.nesterov = momentum, nesterov
        self.param_groups = [{"lr": lr, "weight_decay": 0.0, **g, "params": list(g["params"])} for g in groups]
        self.momentum_buffers: dict[int, torch.Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if weight_decay != 0:
                    grad = grad.add(p, alpha=weight_decay)
                if self.momentum != 0:
                    buf = self.momentum_buffers.get(id(p))
                    if buf is None:
                        buf = self.momentum_buffers[id(p)] = grad.detach().clone()
                    else:
                        buf.mul_(self.momentum).add_(grad, alpha=1)  # no dampening
                    grad = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
                p.add_(grad, alpha=-lr)


class Adam:
    """torch.optim.Adam (no weight decay, no amsgrad) written out like `SGD` above, op for op as
    torch's single-tensor path: the same numbers without importing torch._dynamo."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [{"params": list(params), "lr": lr}]
        self.beta1, self.beta2, self.eps = betas[0], betas[1], eps
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    zero_grad = SGD.zero_grad

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.beta1, self.beta2
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if id(p) not in self.state:  # torch keeps the step count as a float32 tensor
                    self.state[id(p)] = (torch.tensor(0.0), torch.zeros_like(p, memory_format=torch.preserve_format),
                                         torch.zeros_like(p, memory_format=torch.preserve_format))
                step_t, exp_avg, exp_avg_sq = self.state[id(p)]
                grad = p.grad
                step_t += 1
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = step_t.item()  # a CPU tensor, as in torch: no device sync
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                step_size = lr / bias_correction1
                denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(self.eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)


def sgd(model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9) -> SGD:
    """Nesterov SGD, as in the CBD and ABL code; no weight decay on biases and norm layers."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
               lr=lr, momentum=momentum, nesterov=True)


def cosine_lr(step: int, total_steps: int, peak: float, warmup_steps: int = 0) -> float:
    """Linear warm-up to `peak`, then cosine decay to zero at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: SGD | torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
