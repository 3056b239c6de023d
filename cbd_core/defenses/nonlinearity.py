"""NONE, NON-linearity based backdoor dEfense (Wang, Ding, Zhai & Ma, NeurIPS 2022, "Training with
More Confidence: Mitigating Injected and Natural Backdoors During Training").

The paper's observation: a backdoor, injected or natural, is a shortcut that makes the network behave
almost linearly on the trigger. A handful of neurons ("hyperplane neurons") respond to the trigger with
values far beyond anything they produce on ordinary inputs, and that response alone drives the
prediction to the target class. Such a neuron shows up in the statistics of the training set itself:
on inputs the model is sure belong to class k, its largest activation stands far above its usual range
on inputs the model is sure do *not* belong to k.

One round, after a phase of ordinary training:

1. Detect. Run the model (eval mode, no augmentation) over the training set. For each monitored layer,
   channel j and class k, with S_k = samples whose softmax for k exceeds `confidence_high` and
   W_k = samples whose softmax for k is below `confidence_low`:
       gap[j, k] = max_{S_k} a_j  -  (mean_{W_k} a_j + 3 std_{W_k} a_j)
   where a_j is the channel's activation (after the nonlinearity, maximum over spatial positions).
   A channel's score is its largest gap over the classes.
2. Reset. In each layer, the top `reset_fraction` of channels by score (rounded up; of those, only
   channels whose score is positive, i.e. whose maximum does stand above mean + 3 std) are reset: with
   `reset_mode="zero"` the channel is silenced (its filter, BN scale and shift set to zero) together
   with the next layer's input weights for it, which is what the official code does; with
   `reset_mode="reinit"` the same weights are drawn afresh from the model's initialisation (the
   paper's wording), and the batch-norm statistics are re-estimated.
3. Filter. Each training sample gets a "hyperplane activation": the sum over layers of its activation
   on the layer's single highest-scoring channel (`filter_channels="top1"`, as in the official code;
   "reset" sums over every reset channel). The values are split into two classes by natural breaks
   (Jenks with two classes, i.e. the exact optimal one-dimensional split that minimises the
   within-class sum of squares); the upper class is set aside for this round.
4. Fine-tune the reset model on the remaining samples for the round's epochs (a fresh optimiser).

More rounds (`rounds`) serve natural backdoors; one round is the paper's setting for injected ones.
The defense never sees the poison mask or the test sets: the filtered set's precision and recall and
the detection AUROC in the log lines are computed outside it, for reporting only.

Monitored layers, for any model (not only the paper's architectures): the model is traced with
torch.fx and every Conv2d / Linear / BatchNorm2d whose output feeds a ReLU (directly or through
pooling) is a layer of "neurons" (its channels). For conv-BN-(pool-)ReLU (SmallCNN) and the
BN-ReLU-conv of pre-activation ResNets that is the batch norm; for Linear-ReLU (SmallCNN's hidden
layer) the linear layer. The "next layer" of a channel is found by following the graph through
element-wise and pooling operations (and a flatten, where a channel then owns a block of a linear
layer's inputs) to the Conv2d / Linear layers that read it. A batch norm's "own filter" is the conv right before it, if the batch norm is that conv's only
reader (in a pre-activation block the first batch norm reads the residual stream, which also flows on
through the shortcut: there only the batch-norm channel is reset). If tracing fails, every BatchNorm2d
is monitored and only its own scale and shift are reset (enough to silence a channel).

Differences from the official code (RU-System-Software-and-Security/NONE), and why:
- The official code hooks the conv outputs before batch norm and activation; here the activation is
  read after the nonlinearity, as the paper describes neurons, and ReLU(max) = max(ReLU) per channel.
- The official filter keeps the lower class's largest value in the filtered set (`>= breaks[1]`);
  here exactly the upper class is filtered.
- A fresh optimiser (no momentum carried over) fine-tunes, so a zeroed weight is not pushed back off
  zero by an old momentum buffer; a silenced channel then stays silent (after the ReLU its gradients
  are exactly zero, in train and eval mode alike).
- Fine-tuning, by default, is the rest of an ordinary training run: batch norms in train mode and a
  warm-up + cosine schedule from `finetune_lr` = the training's peak rate, where the code freezes the
  batch-norm statistics and fine-tunes at a small constant rate (1e-4, 10x below its last training
  rate). `finetune_bn="frozen"` and `finetune_schedule="constant"` give the code's behaviour. Why,
  measured on mnist5k BadNets (seed 0, from one saved 5-epoch model; the filtered set had precision
  = recall = 1.0, so the fine-tuning data were clean): the reset alone took ASR from 100% to 2.8%
  (CA 0.954 -> 0.865), but fine-tuning at the code's rate scaled to this data (constant 0.005, so
  that lr x steps is about the code's 1e-4 x 7,800; frozen BN) brought the backdoor back (ASR 9-21%
  over the 5 epochs, CA 0.95; the same with reinit; the full run: CA 0.952, ASR 8.7%): small-rate
  fine-tuning re-amplifies what is left of the trigger's path in the channels that were not reset.
  Cosine from 0.02 with frozen BN kept ASR below 2% but CA at 0.92; cosine from 0.05 with frozen BN
  diverged; cosine from 0.05 with BN in train mode gave CA 0.970, ASR 2.8%, now the default (the
  full default run, with warm-up: CA 0.969, ASR 2.9%). These were compared once, by hand, on the
  test metrics; nothing in the defense looks at them.
- `finetune_from="scratch"` (beyond the paper and the code; default "reset"): after the filter, a
  freshly initialised model trains on the kept samples instead of fine-tuning the reset one. On Blend
  the filter catches about all the poison, but the reset model keeps the trigger on some seeds and
  thread counts (ASR 2-100%); from scratch it is gone wherever the filter's recall is 1.0, at a cost
  in clean accuracy (the filter drops many clean images too). Measured in docs/defenses.md.
- The per-round filter is taken against the whole training set each round (as in the code), not
  accumulated over rounds.
- Scores are accumulated batch by batch (max, sum, sum of squares per class), so memory does not grow
  with channels x samples.

Schedule, scaled from the paper and code: the code trains 200 epochs (step decay) and then fine-tunes
20 epochs per round on CIFAR-10. On mnist5k (4,000 images; undefended: 10 epochs, lr 0.05, cosine)
NONE trains `train_fraction` = 1/2 of `epochs` (5) with the usual warm-up + cosine schedule, which
brings the model to convergence and high confidence (train accuracy near 1, the code's premise for
the 0.9 / 0.1 softmax thresholds), then fine-tunes the other 5 epochs. For CIFAR-sized images the
default is 3/4 of 40 epochs, then 10 (closer to the code's 10:1, not measured here). `epochs` is the
total, so `--epochs` scales both phases. `reset_fraction` 0.05 is the code's default (it uses 0.03
for injected backdoors on ResNet-18, 0.2 for natural ones); on SmallCNN it resets 2 of 32, 4 of 64
and 7 of 128 channels.

Default reset mode: "zero" (the official code). Measured on mnist5k BadNets with the defaults above:
seed 0: zero CA 0.969 / ASR 2.9% / RA 0.948, reinit CA 0.970 / ASR 2.8% / RA 0.949; seed 1: both
CA 0.973 / ASR 1.6% (RA 0.957 vs 0.958). A tie within one test image; "zero" is kept because it is
the code's behaviour, needs no re-estimation of batch-norm statistics and removes the channel for
good, where a re-initialised one is free to learn the trigger again in a later round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserInputError
from ..params import Param
from ..text import flagged_reason
from ..training import Tensors, cosine_lr, sgd
from .base import Defense, DefenseContext, DefenseResult, SampleView, train_epoch

# --------------------------------------------------------------------------------------------------
# Natural breaks
# --------------------------------------------------------------------------------------------------


def natural_breaks_threshold(values: np.ndarray) -> float:
    """The exact two-class natural-breaks (Jenks) split of 1-D `values`: returns the largest value of
    the lower class, so `values > threshold` is the upper class. With two classes Jenks' criterion
    (least within-class sum of squared deviations) is solved exactly by trying every cut of the
    sorted values; cuts fall only between distinct values. +inf (no upper class) when all are equal."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = len(v)
    if n < 2 or v[0] == v[-1]:
        return math.inf
    v_centred = v - v.mean()  # less cancellation in the sums of squares
    s = np.cumsum(v_centred)
    s2 = np.cumsum(v_centred**2)
    k = np.arange(1, n)  # size of the lower class
    lower = s2[k - 1] - s[k - 1] ** 2 / k
    upper = (s2[-1] - s2[k - 1]) - (s[-1] - s[k - 1]) ** 2 / (n - k)
    within = lower + upper
    within[v[k - 1] == v[k]] = np.inf  # equal values stay in one class
    return float(v[int(np.argmin(within))])


def natural_breaks_upper(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the values in the upper class of the two-class natural-breaks split."""
    values = np.asarray(values, dtype=np.float64)
    return values > natural_breaks_threshold(values)


# --------------------------------------------------------------------------------------------------
# Which layers hold neurons, and how to reset one of their channels
# --------------------------------------------------------------------------------------------------


@dataclass
class NeuronLayer:
    """A layer whose output channels, after a ReLU, are the neurons NONE inspects."""

    name: str  # the module's qualified name in the model
    module: nn.Module  # Conv2d, Linear or BatchNorm2d; its output feeds the nonlinearity
    channels: int
    producer: nn.Conv2d | None = None  # for a batch norm: the conv it alone reads
    # Layers that read the channel, and how many of their input features each channel owns (1 for a
    # conv; the spatial positions of a flattened map for a linear layer).
    consumers: list[tuple[nn.Module, int]] = field(default_factory=list)


_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus)
_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.softplus}
_CHANNELWISE_MODULES = _ACTIVATION_MODULES + (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                                              nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity)
_CHANNELWISE_FUNCTIONS = _ACTIVATION_FUNCTIONS | {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                                                  F.adaptive_max_pool2d, F.dropout}
_CHANNELWISE_METHODS = {"relu", "contiguous", "clone"}


def _is_activation(node: Any, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _downstream(start: Any, modules: dict[str, nn.Module], through: tuple[str, ...]) -> Iterator[tuple[Any, str]]:
    """(node, kind) for every node that reads `start`'s output, directly or through nodes whose kind
    (see `_kind`) is in `through`."""
    stack, seen = list(start.users), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        kind = _kind(node, modules)
        yield node, kind
        if kind in through:
            stack.extend(node.users)


def _feeds_activation(node: Any, modules: dict[str, nn.Module]) -> bool:
    """Whether `node`'s output reaches an activation directly or through channel-wise operations
    (SmallCNN pools before its ReLU: ReLU(max) = max(ReLU), so its batch norms' channels are neurons
    as much as with the ReLU first)."""
    return any(_is_activation(user, modules) for user, _ in _downstream(node, modules, ("pass",)))


def _kind(node: Any, modules: dict[str, nn.Module]) -> str:
    """How a graph node treats a channel of its (first) input: 'weights' (a Conv2d / Linear reads
    it), 'pass' (channel-wise: the channel stays itself), 'flatten', or 'opaque' (mixed or unknown)."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return "weights"
        if isinstance(m, nn.Flatten):
            return "flatten" if m.start_dim == 1 else "opaque"
        return "pass" if isinstance(m, _CHANNELWISE_MODULES) else "opaque"
    if node.op == "call_function":
        if node.target is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return "flatten" if start == 1 else "opaque"
        return "pass" if node.target in _CHANNELWISE_FUNCTIONS else "opaque"
    if node.op == "call_method":
        return "pass" if node.target in _CHANNELWISE_METHODS else "opaque"
    return "opaque"


def _consumers(start: Any, channels: int, modules: dict[str, nn.Module]) -> list[tuple[nn.Module, int]]:
    """The Conv2d / Linear layers that read the channels of `start`'s output, through channel-wise
    operations (and at most a flatten), each with the number of input features a channel owns."""
    found: list[tuple[nn.Module, int]] = []
    for node, kind in _downstream(start, modules, ("pass", "flatten")):
        if kind == "weights":
            m = modules[node.target]
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels == channels:
                found.append((m, 1))
            elif isinstance(m, nn.Linear) and m.in_features % channels == 0:
                found.append((m, m.in_features // channels))
    return found


def neuron_layers(model: nn.Module) -> list[NeuronLayer]:
    """The model's layers of neurons, in forward order (see the module docstring)."""
    try:
        import torch.fx

        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # an untraceable model: batch norms alone, without neighbours
        return [NeuronLayer(name, m, m.num_features) for name, m in model.named_modules()
                if isinstance(m, nn.BatchNorm2d)]
    modules = dict(model.named_modules())
    layers = []
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        m = modules[node.target]
        if not isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            continue
        if not _feeds_activation(node, modules):
            continue
        channels = m.num_features if isinstance(m, nn.BatchNorm2d) else \
            m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        producer = None
        if isinstance(m, nn.BatchNorm2d) and node.args and getattr(node.args[0], "op", None) == "call_module":
            before = modules[node.args[0].target]
            if isinstance(before, nn.Conv2d) and before.out_channels == channels and len(node.args[0].users) == 1:
                producer = before
        layers.append(NeuronLayer(node.target, m, channels, producer, _consumers(node, channels, modules)))
    return layers


def _fresh(module: nn.Module, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Weights drawn as the models initialise them: He-normal (fan-out) for a conv, PyTorch's default
    uniform(+-1/sqrt(fan_in)) for a linear layer."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
        return torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_out)
    bound = 1.0 / math.sqrt(module.in_features)
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


@torch.no_grad()
def reset_channels(layer: NeuronLayer, channels: list[int], mode: str, generator: torch.Generator | None = None
                   ) -> None:
    """Reset `channels` of `layer` in place. "zero": the channel outputs exactly zero (its filter or
    BN scale and shift are zeroed) and the next layers' input weights for it are zeroed, so, after the
    ReLU, it neither acts nor learns again. "reinit": the same weights drawn afresh (BN scale 1,
    shift 0, running statistics 0 / 1 until re-estimated)."""
    if not channels:
        return
    generator = generator or torch.Generator().manual_seed(0)
    idx = torch.tensor(sorted(channels), dtype=torch.long)
    m = layer.module
    owners = [m] if not isinstance(m, nn.BatchNorm2d) else ([layer.producer] if layer.producer is not None else [])
    for owner in owners:  # the weights that compute the channel
        w = owner.weight
        if mode == "zero":
            w[idx] = 0
        else:
            w[idx] = _fresh(owner, (len(idx), *w.shape[1:]), generator).to(w.device, w.dtype)
        if owner.bias is not None:
            owner.bias[idx] = 0
    if isinstance(m, nn.BatchNorm2d):
        if m.weight is not None:
            m.weight[idx] = 0 if mode == "zero" else 1
            m.bias[idx] = 0
        if mode == "reinit" and m.running_mean is not None:
            m.running_mean[idx] = 0
            m.running_var[idx] = 1
    for consumer, width in layer.consumers:  # the weights that read it
        w = consumer.weight
        cols = (idx[:, None] * width + torch.arange(width)[None, :]).reshape(-1)
        if mode == "zero":
            w[:, cols] = 0
        else:
            w[:, cols] = _fresh(consumer, (w.shape[0], len(cols), *w.shape[2:]), generator).to(w.device, w.dtype)


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------


class _Tap:
    """Forward hooks that keep, per layer, each sample's activation per channel: ReLU of the layer's
    output, maximum over spatial positions (the ReLU is taken after the maximum: the same value)."""

    def __init__(self, layers: list[NeuronLayer]):
        self.values: dict[str, torch.Tensor] = {}
        self._handles = [layer.module.register_forward_hook(self._hook(layer.name)) for layer in layers]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            out = output.detach()
            if out.ndim > 2:
                out = out.flatten(2).amax(2)
            self.values[name] = out.float().clamp_min(0)
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _passes(model: nn.Module, layers: list[NeuronLayer], x: torch.Tensor, batch_size: int
            ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """(logits, {layer: activations}) batch by batch, in eval mode (the mode is restored after)."""
    was_training = model.training
    model.eval()
    tap = _Tap(layers)
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                logits = model(x[i:i + batch_size])
                yield logits, tap.values
    finally:
        tap.close()
        model.train(was_training)


def hyperplane_scores(model: nn.Module, layers: list[NeuronLayer], x: torch.Tensor, high: float = 0.9,
                      low: float = 0.1, batch_size: int = 500) -> dict[str, np.ndarray]:
    """Per layer, each channel's score max_k [max over S_k - (mean + 3 std over W_k)] (see the module
    docstring); -inf where no class has both a confident and a confidently-excluded sample."""
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for logits, acts in _passes(model, layers, x, batch_size):
        probs = logits.float().softmax(1)
        strong, weak = probs > high, (probs < low).double()  # (B, K)
        for name, a in acts.items():
            s = stats.setdefault(name, {
                "max": torch.full((probs.shape[1], a.shape[1]), -math.inf, device=a.device),
                "sum": torch.zeros(probs.shape[1], a.shape[1], dtype=torch.float64, device=a.device),
                "sq": torch.zeros(probs.shape[1], a.shape[1], dtype=torch.float64, device=a.device),
                "n": torch.zeros(probs.shape[1], dtype=torch.float64, device=a.device)})
            masked = torch.where(strong[:, :, None], a[:, None, :], torch.tensor(-math.inf, device=a.device))
            s["max"] = torch.maximum(s["max"], masked.amax(0))
            a64 = a.double()
            s["sum"] += weak.T @ a64
            s["sq"] += weak.T @ a64**2
            s["n"] += weak.sum(0)
    scores = {}
    for name, s in stats.items():
        n = s["n"].clamp_min(1)[:, None]
        mean = s["sum"] / n
        std = (s["sq"] / n - mean**2).clamp_min(0).sqrt()
        gap = s["max"].double() - (mean + 3 * std)
        gap[(s["n"] == 0)] = -math.inf
        scores[name] = gap.max(0).values.cpu().numpy()
    return scores


def select_channels(scores: np.ndarray, fraction: float, count: int | None = None) -> list[int]:
    """The top `fraction` of channels by score (rounded up), or the top `count` if given, among those
    with a positive score."""
    count = math.ceil(fraction * len(scores)) if count is None else count
    order = np.argsort(-scores, kind="stable")[:count]
    return [int(j) for j in order if np.isfinite(scores[j]) and scores[j] > 0]


def summed_activation(model: nn.Module, layers: list[NeuronLayer], x: torch.Tensor,
                      channels: dict[str, list[int]], batch_size: int = 500) -> np.ndarray:
    """Each sample's activation summed over the given channels of the given layers (float64)."""
    chosen = {name: torch.tensor(c, dtype=torch.long) for name, c in channels.items() if c}
    out = []
    for logits, acts in _passes(model, [l for l in layers if l.name in chosen], x, batch_size):
        total = torch.zeros(len(logits), dtype=torch.float64, device=logits.device)
        for name, idx in chosen.items():
            total += acts[name][:, idx.to(logits.device)].double().sum(1)
        out.append(total.cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> None:
    """Re-estimate every batch norm's running statistics from `x` (a cumulative average)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(x) < 2:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x), batch_size):
        if len(x[i:i + batch_size]) > 1:
            model(x[i:i + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


# --------------------------------------------------------------------------------------------------
# The defense
# --------------------------------------------------------------------------------------------------


def schedule(params: dict[str, Any]) -> tuple[int, list[int]]:
    """(plain training epochs, fine-tuning epochs of each round): `train_fraction` of `epochs` first
    (at least 1, leaving at least 1 per round), the rest shared out over the rounds."""
    epochs, rounds = params["epochs"], params["rounds"]
    plain = min(max(1, round(params["train_fraction"] * epochs)), epochs - rounds)
    rest = epochs - plain
    return plain, [rest // rounds + (1 if r < rest % rounds else 0) for r in range(rounds)]


class NONE(Defense):
    name = "nonlinearity"
    title = "NONE"
    menu_order = 30
    description = ("train, then reset the neurons that fire far above their usual range on confident "
                   "predictions, drop the samples that excite them, and fine-tune")
    key_params = ("epochs", "rounds", "reset_fraction", "reset_mode")
    # Its fine-tuning phases are named "round 1", "round 2", ...: shown as they are.
    suspicion_meaning = "the sample's activation on NONE's hyperplane neurons (a trigger drives them far above normal)"
    sample_view = SampleView(
        "the samples it filtered out", "hyperplane_activation", "activation of the suspected neurons", "high",
        "NONE looks for neurons that fire far above normal on a few samples; for it to work, the red bars "
        "(poisoned) must stand apart to the right, where it filters samples out.", rows="round",
        flagged="filtered", flagged_title="filtered",
        flagged_hint="Per round: how many training samples NONE filtered out, the share of them that were poisoned "
                     "(precision) and the share of the poisoned it caught (recall).")
    params = (
        Param("epochs", int, "total epochs: plain training, then the fine-tuning of every round", 2, 500),
        Param("train_fraction", float, "share of the epochs trained plainly before the first round", 0.05, 0.95),
        Param("lr", float, "peak learning rate of the plain training (cosine schedule)", 1e-5, 1.0),
        Param("finetune_lr", float, "peak learning rate of the fine-tuning after each reset", 1e-6, 1.0),
        Param("finetune_schedule", str, "cosine: warm-up then cosine decay over the round, like the plain "
              "training; constant: the official code's fixed rate", choices=("cosine", "constant")),
        Param("finetune_bn", str, "train: batch-norm statistics keep adapting during fine-tuning; frozen: "
              "kept fixed (official code)", choices=("train", "frozen")),
        Param("batch_size", int, "batch size", 8, 4096),
        Param("weight_decay", float, "weight decay", 0.0, 0.1),
        Param("finetune_from", str, "reset: fine-tune the reset model (paper, code); scratch: train a freshly "
              "initialised model on the samples that were not filtered out (beyond the paper)",
              choices=("reset", "scratch")),
        Param("rounds", int, "detect-reset-filter-fine-tune rounds (1 for injected backdoors)", 1, 20),
        Param("reset_fraction", float, "largest share of a layer's channels reset per round", 0.0, 0.5),
        Param("reset_mode", str, "zero: silence the channel and its outgoing weights (official code); "
              "reinit: draw them afresh (the paper)", choices=("zero", "reinit")),
        Param("confidence_high", float, "softmax above which a sample counts as confidently class k", 0.5, 0.999),
        Param("confidence_low", float, "softmax below which a sample counts as confidently not k", 0.001, 0.5),
        Param("filter_channels", str, "channels whose summed activation filters samples: top1 = each layer's "
              "most suspicious (official code), reset = every reset channel", choices=("top1", "reset")),
    )

    def defaults(self, image_shape):
        small = image_shape[0] <= 28
        return {"epochs": 10 if small else 40, "train_fraction": 0.5 if small else 0.75, "lr": 0.05,
                "finetune_lr": 0.05, "finetune_schedule": "cosine",
                "finetune_bn": "train", "finetune_from": "reset", "batch_size": 128, "weight_decay": 5e-4, "rounds": 1,
                "reset_fraction": 0.05, "reset_mode": "zero", "confidence_high": 0.9, "confidence_low": 0.1,
                "filter_channels": "top1"}

    def diagnosis(self, summary):
        resets = summary.get("reset_channels")
        if isinstance(resets, list) and resets and not any(resets):
            return ("NONE found no hyperplane neurons to reset (none fired far above normal), so it filtered "
                    "nothing that mattered and the trigger stayed learned.")
        return flagged_reason(summary, self.title, "filtered", "filtered out",
                              "resetting neurons and fine-tuning without it") or \
            "The run does not record what NONE filtered out, so it cannot tell why."

    def resolve(self, image_shape, overrides):
        params = super().resolve(image_shape, overrides)
        if params["epochs"] < params["rounds"] + 1:
            raise UserInputError(f"{self.name}.epochs: {params['epochs']} is too few for {params['rounds']} "
                                 f"round(s): at least rounds + 1 are needed", f"{self.name}.epochs")
        if params["confidence_low"] >= params["confidence_high"]:
            raise UserInputError(f"{self.name}.confidence_low must be below confidence_high",
                                 f"{self.name}.confidence_low")
        return params

    def train(self, ctx: DefenseContext) -> DefenseResult:
        p = ctx.params
        plain, finetune = schedule(p)
        generator = ctx.generator()
        reset_generator = ctx.generator(offset=1)
        model = ctx.build_model()
        layers = neuron_layers(model)

        # 1. Ordinary training.
        optimizer = sgd(model, p["lr"], p["weight_decay"])
        steps_per_epoch = -(-len(ctx.train) // p["batch_size"])
        total = plain * steps_per_epoch
        for epoch in range(1, plain + 1):
            loss = train_epoch(ctx, model, optimizer, generator,
                               lambda s: cosine_lr(s, total, p["lr"], warmup_steps=steps_per_epoch // 2),
                               (epoch - 1) * steps_per_epoch, "train", epoch, plain)
            ctx.end_epoch("train", epoch, plain, model, train_loss=round(loss, 5))

        # 2. Rounds of detect, reset, filter, fine-tune.
        filtered_rounds, activation_rounds, reset_rounds, reports = [], [], [], []
        for r, epochs in enumerate(finetune, start=1):
            phase = f"round {r}"
            scores = hyperplane_scores(model, layers, ctx.train.x, p["confidence_high"], p["confidence_low"])
            reset = {l.name: select_channels(scores[l.name], p["reset_fraction"]) for l in layers}
            if p["filter_channels"] == "top1":
                probe = {l.name: select_channels(scores[l.name], 0.0, count=1) for l in layers}
            else:
                probe = reset
            activation = summed_activation(model, layers, ctx.train.x, probe)
            filtered = natural_breaks_upper(activation) if len(activation) else np.zeros(len(ctx.train), bool)
            kept = torch.from_numpy(np.flatnonzero(~filtered)).to(ctx.device)
            kept_data = Tensors(ctx.train.x[kept], ctx.train.y[kept])
            if p["finetune_from"] == "scratch":
                # What the first phase learned (the trigger with it) is dropped, not reset neuron by neuron;
                # only the filter's verdict carries over (the channels it would reset are still recorded).
                model = ctx.build_model()
                layers = neuron_layers(model)
            else:
                for layer in layers:
                    reset_channels(layer, reset[layer.name], p["reset_mode"], reset_generator)
                if p["reset_mode"] == "reinit":
                    recalibrate_batch_norm(model, kept_data.x)

            report = ctx.flagged_report(filtered)
            reports.append(report)
            filtered_rounds.append(filtered)
            activation_rounds.append(activation.astype(np.float32))
            reset_rounds.append({name: sorted(c) for name, c in reset.items() if c})
            n_reset = sum(len(c) for c in reset.values())
            auroc = ctx.detection_auroc(activation)

            optimizer = sgd(model, p["finetune_lr"], p["weight_decay"])
            kept_steps = -(-len(kept) // p["batch_size"])
            if p["finetune_schedule"] == "cosine":
                round_total = epochs * kept_steps
                lr = lambda s, t=round_total, k=kept_steps: cosine_lr(s, t, p["finetune_lr"], warmup_steps=k // 2)
            else:
                lr = lambda s: p["finetune_lr"]
            for epoch in range(1, epochs + 1):
                loss = train_epoch(ctx, model, optimizer, generator, lr, (epoch - 1) * kept_steps, phase, epoch,
                                   epochs, data=kept_data, frozen_norms=p["finetune_bn"] == "frozen")
                ctx.end_epoch(phase, epoch, epochs, model, train_loss=round(loss, 5), reset_channels=n_reset,
                              filtered=report["flagged"], filtered_precision=report["precision"],
                              filtered_recall=report["recall"], poison_detection_auroc=auroc)

        last = reports[-1]
        return DefenseResult(
            model=model, suspicion=activation_rounds[-1],
            sample_record={"filtered": np.stack(filtered_rounds), "hyperplane_activation": np.stack(activation_rounds)},
            summary={"reset_channels": reset_rounds, "filtered_count": int(last["flagged"]),
                     "filtered_precision": float(last["precision"]), "filtered_recall": float(last["recall"]),
                     "filtered_per_round": [{k: (int(v) if k == "flagged" else float(v)) for k, v in rep.items()}
                                            for rep in reports] if len(reports) > 1 else None,
                     "plain_epochs": plain, "finetune_epochs": finetune})
