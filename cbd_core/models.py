"""The classifiers a run can train: a small CNN for MNIST-sized images and two CIFAR-sized ResNets.

Every model splits into a feature extractor and a final linear layer, because the defenses and the
dashboard's plots need the penultimate features `z` (activation clustering, spectral signatures,
UMAP views) as much as they need the logits:

    z = model.features(x)        # (N, model.feature_dim)
    logits = model.classify(z)   # (N, num_classes), the same as model(x)

Models are built by name through `build_model`, so a run's config can name one as a plain string:

    >>> model = build_model("cnn", in_channels=1, num_classes=10)
    >>> model.feature_dim
    128
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .errors import UserInputError

__all__ = [
    "SmallCNN",
    "PreActResNet18",
    "WideResNet",
    "MODELS",
    "build_model",
    "default_model_for",
    "for_inference",
]


class _SplitModel(nn.Module):
    """Shared `forward = classify(features(x))` contract; subclasses define `features` and `fc`."""

    feature_dim: int
    fc: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Penultimate features `z` of a batch `x` (N, C, H, W), shaped (N, feature_dim)."""
        raise NotImplementedError

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from penultimate features `z`: the model's final linear layer alone."""
        return self.fc(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for a batch of images `x` (N, C, H, W)."""
        return self.classify(self.features(x))


def _init_weights(module: nn.Module) -> None:
    """He init for convs (they feed ReLUs) and unit/zero BN, applied to every submodule."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# Small CNN (MNIST-sized inputs)
# --------------------------------------------------------------------------------------------------


def _conv_bn_pool_relu(c_in: int, c_out: int) -> list[nn.Module]:
    # The conv has no bias: the BatchNorm right after it has its own shift.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.MaxPool2d(2),
            nn.ReLU(inplace=True)]


class SmallCNN(_SplitModel):
    """A two-block CNN sized to train an MNIST-sized epoch in a second or two on a laptop CPU.

    Block 1 (`width` channels) and block 2 (`2 * width`) are conv3x3-BN-ReLU-2x2 max-pool (computed as
    conv-BN-pool-ReLU, the same function).
    An adaptive average pool to a `pool_size` x `pool_size` grid makes the network independent of
    the input's size (any H, W >= 4), and a `Linear(2 * width * pool_size**2 -> 4 * width)` + ReLU
    gives the penultimate features `z` (`feature_dim = 4 * width`, 128 by default).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, pool_size: int = 3):
        super().__init__()
        # One conv per block rather than two: a second conv at 28x28 triples the CPU epoch time
        # (about 1.5 s -> 4.7 s for 4000 images on 2 cores).
        # A 3x3 grid rather than a global average pool: with two 3x3 convs each unit sees only
        # about 8x8 pixels, so averaging over the whole image loses where the strokes are; on
        # mnist5k the global pool reached about 60% test accuracy after 5 epochs, the 3x3 grid 95%,
        # at the same speed.
        # Each block pools before its ReLU: max and ReLU commute (both keep the order of values), so
        # the outputs and gradients are the same to the bit, and the ReLU touches a quarter of the
        # values (about 5% off a training step). The layer indices, hence the state dict, are unchanged.
        self.body = nn.Sequential(
            *_conv_bn_pool_relu(in_channels, width),
            *_conv_bn_pool_relu(width, 2 * width),
            nn.AdaptiveAvgPool2d(pool_size),
            nn.Flatten(),
        )
        self.penultimate = nn.Sequential(
            nn.Linear(2 * width * pool_size * pool_size, 4 * width), nn.ReLU(inplace=True)
        )
        self.feature_dim = 4 * width
        self.fc = nn.Linear(self.feature_dim, num_classes)
        _init_weights(self)
        # Channels-last weights (and inputs, below) let oneDNN skip its layout reorders: about a
        # third off a CPU epoch. `.to(device)` and `load_state_dict` keep this layout.
        self.to(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features `z` (N, 4 * width): the ReLU output of the hidden linear layer."""
        return self.penultimate(self.body(x.contiguous(memory_format=torch.channels_last)))


# --------------------------------------------------------------------------------------------------
# Pre-activation ResNet-18 (CIFAR-sized inputs)
# --------------------------------------------------------------------------------------------------


class _PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice plus identity; a 1x1 conv shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # In a pre-activation block the projection shortcut reads the normalised input, as in
        # He et al. 2016 ("Identity Mappings"), so both paths see the same activation.
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class PreActResNet18(_SplitModel):
    """Pre-activation ResNet-18 for 32x32 images; `z` is 512-d (final BN-ReLU, global avg pool)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        # CIFAR stem: a single 3x3 conv, no 7x7/stride-2 or max-pool, since 32x32 is already small.
        self.stem = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        c_in = 64
        for c_out, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [_PreActBlock(c_in, c_out, stride), _PreActBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        # Pre-activation blocks leave their output un-normalised, so a last BN-ReLU comes before
        # the pool.
        self.bn = nn.BatchNorm2d(512)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 512
        self.fc = nn.Linear(self.feature_dim, num_classes)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features `z` (N, 512)."""
        out = F.relu(self.bn(self.layers(self.stem(x))))
        return torch.flatten(self.pool(out), 1)


# --------------------------------------------------------------------------------------------------
# Wide ResNet (CIFAR-sized inputs)
# --------------------------------------------------------------------------------------------------


class WideResNet(_SplitModel):
    """WRN-`depth`-`widen_factor` (Zagoruyko & Komodakis 2016); the default is WRN-16-1.

    Three groups of (depth - 4) / 6 pre-activation blocks at 16k, 32k and 64k channels (k is
    `widen_factor`); `z` is the 64k-d output of the final BN-ReLU and global average pool.
    """

    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 1,
        in_channels: int = 3,
        num_classes: int = 10,
        dropout: float = 0.0,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for c_out, stride in zip(widths[1:], [1, 2, 2]):
            for i in range(n):
                blocks.append(_PreActBlock(c_in, c_out, stride if i == 0 else 1, dropout))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[3]
        self.fc = nn.Linear(self.feature_dim, num_classes)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features `z` (N, 64 * widen_factor)."""
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return torch.flatten(self.pool(out), 1)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

#: Model builders by the name a config uses; each takes `(in_channels, num_classes)`.
MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "cnn": lambda in_channels, num_classes: SmallCNN(in_channels=in_channels, num_classes=num_classes),
    "preact-resnet18": lambda in_channels, num_classes: PreActResNet18(
        in_channels=in_channels, num_classes=num_classes
    ),
    "wrn-16-1": lambda in_channels, num_classes: WideResNet(
        depth=16, widen_factor=1, in_channels=in_channels, num_classes=num_classes
    ),
}


def build_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """A freshly initialised model `name` (a key of `MODELS`) for the given channels and classes.

    Raises `UserInputError` (field "model") for a name that is not in `MODELS`.
    """
    try:
        builder = MODELS[name]
    except KeyError:
        choices = ", ".join(MODELS)
        raise UserInputError(f"model: unknown '{name}' (choose from {choices})", "model") from None
    return builder(in_channels, num_classes)


def default_model_for(image_shape: tuple[int, int, int]) -> str:
    """The model name to use when the user picks none, from the images' (H, W, C).

    MNIST-sized images (both sides at most 28) get the fast "cnn"; anything larger gets
    "preact-resnet18", the usual model in backdoor papers on CIFAR-10.
    """
    h, w = image_shape[0], image_shape[1]
    return "cnn" if h <= 28 and w <= 28 else "preact-resnet18"


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` for forward-only passes, with every batch norm that directly follows
    a convolution (in an `nn.Sequential`) folded into that convolution's weight and bias.

    In eval mode a batch norm is a fixed per-channel scale and shift, so conv-then-BN is one convolution;
    the BN's pass over the activations (the size of the first block's output: as long as the conv itself
    on 28x28 inputs) disappears. Measured on 2 cores: a pass of the small CNN over mnist5k's 4,000
    training images 0.175 s -> 0.147 s. Logits differ from the unfolded model's by rounding (about 1e-6);
    every forward-only pass of a run goes through here, so a run's numbers are the same however it is
    started. Pre-activation ResNets (BN before conv) have nothing to fold and are only copied."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats \
                    and norm.running_mean is not None:
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = nn.Identity()
    for param in folded.parameters():
        param.requires_grad_(False)
    return folded
