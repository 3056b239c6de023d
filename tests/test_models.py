"""Shapes and the features/classify split of every model in `cbd_core.models`, plus the registry."""

import pytest
import torch
from torch import nn

from cbd_core.errors import UserInputError
from cbd_core.models import (
    MODELS,
    PreActResNet18,
    SmallCNN,
    WideResNet,
    build_model,
    default_model_for,
    for_inference,
)

# (name, input shape (C, H, W), expected feature_dim)
CASES = [
    ("cnn", (1, 28, 28), 128),
    ("preact-resnet18", (3, 32, 32), 512),
    ("wrn-16-1", (3, 32, 32), 64),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_names():
    assert set(MODELS) == {name for name, _, _ in CASES}


@pytest.mark.parametrize("name, chw, feature_dim", CASES)
def test_shapes_and_split(name, chw, feature_dim):
    model = build_model(name, in_channels=chw[0], num_classes=7).eval()
    x = torch.randn(2, *chw)
    with torch.no_grad():
        z = model.features(x)
        logits = model(x)
        via_split = model.classify(z)
    assert model.feature_dim == feature_dim
    assert z.shape == (2, feature_dim)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, via_split)


@pytest.mark.parametrize(
    "model, chw, feature_dim",
    [
        (SmallCNN(), (1, 28, 28), 128),
        (SmallCNN(in_channels=3, width=16), (3, 32, 32), 64),
        (SmallCNN(pool_size=1), (1, 28, 28), 128),
        (PreActResNet18(), (3, 32, 32), 512),
        (WideResNet(), (3, 32, 32), 64),
        (WideResNet(depth=10, widen_factor=2, in_channels=1), (1, 28, 28), 128),
    ],
)
def test_constructors(model, chw, feature_dim):
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, *chw))
    assert logits.shape == (2, 10)
    assert model.feature_dim == feature_dim


@pytest.mark.parametrize("hw", [4, 8, 17, 64])
def test_small_cnn_any_size(hw):
    model = SmallCNN().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, hw, hw)).shape == (2, 10)


def test_small_cnn_state_dict_round_trip():
    source, target = SmallCNN().eval(), SmallCNN().eval()
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_small_cnn_trains_in_train_mode():
    model = SmallCNN().train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_wide_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=15)


def test_build_model_unknown_name():
    with pytest.raises(UserInputError) as info:
        build_model("vgg", in_channels=3, num_classes=10)
    assert info.value.field == "model"
    assert str(info.value).startswith("model: unknown 'vgg' (choose from ")
    for name in MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((28, 28, 1), "cnn"),
        ((16, 16, 3), "cnn"),
        ((28, 32, 1), "preact-resnet18"),
        ((32, 32, 3), "preact-resnet18"),
        ((64, 64, 3), "preact-resnet18"),
    ],
)
def test_default_model_for(shape, expected):
    assert default_model_for(shape) == expected


def test_for_inference_folds_each_conv_bn_pair_and_computes_the_same_function():
    model = build_model("cnn", 1, 10)
    with torch.no_grad():  # batch norms with real statistics and non-trivial scales and shifts
        for _ in range(3):
            model(torch.rand(32, 1, 28, 28) * 2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-2, 2)
                m.bias.uniform_(-1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(16, 1, 28, 28)
    folded = for_inference(model)
    assert model.training  # the model itself is left as it was, mode included
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(folded.features(x), model.features(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["preact-resnet18", "wrn-16-1"])
def test_for_inference_leaves_pre_activation_networks_as_they_are(name):
    """Their batch norms come before the convolutions: nothing to fold, the outputs are the model's own."""
    model = build_model(name, 3, 10).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(for_inference(model)(x), model(x))
