"""NONE (`cbd_core.defenses.nonlinearity`): the natural-breaks split, the hyperplane-neuron detector on
a hand-made model, channel resets on the three models, and one short run end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from cbd_core.config import RunConfig
from cbd_core.defenses import DEFENSES, get_defense
from cbd_core.defenses.nonlinearity import (
    _Tap,
    hyperplane_scores,
    natural_breaks_threshold,
    natural_breaks_upper,
    neuron_layers,
    reset_channels,
    schedule,
    select_channels,
    summed_activation,
)
from cbd_core.errors import UserInputError
from cbd_core.models import build_model
from cbd_core.pipeline import execute, prepare
from cbd_core.runs import RunDir

# -- natural breaks ------------------------------------------------------------------------------


def test_natural_breaks_on_hand_made_data():
    values = np.array([11, 1, 12, 2, 10, 1], dtype=float)
    assert natural_breaks_threshold(values) == 2.0
    assert natural_breaks_upper(values).tolist() == [True, False, True, False, True, False]
    # A lone outlier is its own class; equal values never split; nothing to split -> nothing upper.
    assert natural_breaks_upper(np.array([0.0, 0.1, 0.2, 0.1, 50.0])).tolist() == [False] * 4 + [True]
    assert not natural_breaks_upper(np.full(7, 3.0)).any()
    assert not natural_breaks_upper(np.array([5.0])).any()
    assert natural_breaks_upper(np.array([1.0, 1.0, 1.0, 4.0, 4.0])).tolist() == [False] * 3 + [True] * 2


def test_natural_breaks_is_the_optimal_split():
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = np.concatenate([rng.normal(0, 1, rng.integers(3, 30)), rng.normal(rng.uniform(0, 6), 1, 10)])
        s = np.sort(v)
        sse = [((s[:k] - s[:k].mean()) ** 2).sum() + ((s[k:] - s[k:].mean()) ** 2).sum() for k in range(1, len(s))]
        assert natural_breaks_threshold(v) == s[int(np.argmin(sse))]


# -- the detector --------------------------------------------------------------------------------


class Planted(nn.Module):
    """conv(1->4)-BN-ReLU-global max-Linear(4->3). Channel 2 sums a 3x3 window and, after BN's shift
    of -5, fires only on a bright 3x3 patch; class 0's logit reads channel 2 alone."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            w = torch.randn(4, 1, 3, 3, generator=g) * 0.3
            w -= w.mean(dim=(1, 2, 3), keepdim=True)  # zero-mean: no answer to a flat patch
            w[2] = 1.0
            self.conv.weight.copy_(w)
            self.bn.bias.copy_(torch.tensor([0.5, 0.5, -5.0, 0.5]))
            self.fc.weight.zero_()
            self.fc.weight[0, 2] = 10.0
            self.fc.bias.copy_(torch.tensor([-3.0, 0.0, 0.0]))
        self.eval()

    def forward(self, x):
        return self.fc(self.flat(self.pool(torch.relu(self.bn(self.conv(x))))))


def _patched_images(n: int = 200, n_trigger: int = 20) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 12, 12, generator=g) * 0.3
    triggered = np.zeros(n, bool)
    triggered[np.random.default_rng(0).choice(n, n_trigger, replace=False)] = True
    x[torch.from_numpy(triggered), :, -4:-1, -4:-1] = 1.0
    return x, triggered


def test_detector_flags_the_planted_trigger_neuron():
    model = Planted()
    x, triggered = _patched_images()
    probs = model(x).softmax(1)[:, 0].detach().numpy()
    assert (probs[triggered] > 0.9).all() and (probs[~triggered] < 0.1).all()

    layers = neuron_layers(model)
    assert [l.name for l in layers] == ["bn"]
    assert layers[0].producer is model.conv and layers[0].consumers == [(model.fc, 1)]
    scores = hyperplane_scores(model, layers, x)["bn"]
    assert int(np.argmax(scores)) == 2 and scores[2] > 2.0 and np.sort(scores)[-2] < 1.0
    assert select_channels(scores, 0.25) == [2]
    activation = summed_activation(model, layers, x, {"bn": [2]})
    assert (natural_breaks_upper(activation) == triggered).all()

    reset_channels(layers[0], [2], "zero")
    assert (model(x).softmax(1)[:, 0] < 0.1).all()  # the trigger no longer works


# -- resets on the three models ------------------------------------------------------------------


def _activations(model, layers, x):
    tap = _Tap(layers)
    try:
        with torch.no_grad():
            out = model(x)
        return out, dict(tap.values)
    finally:
        tap.close()


@pytest.mark.slow
def test_reset_zero_silences_a_cnn_channel_for_good():
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10).eval()
    x = torch.rand(16, 1, 28, 28)
    layers = neuron_layers(model)
    assert [l.name for l in layers] == ["body.1", "body.5", "penultimate.0"]
    for layer in layers:
        # A channel that is already silent: resetting it leaves the output as it was.
        with torch.no_grad():
            if isinstance(layer.module, nn.BatchNorm2d):
                layer.module.bias[3] = -1e4
            else:
                layer.module.bias[3] = -1e4
        before, acts = _activations(model, layers, x)
        assert (acts[layer.name][:, 3] == 0).all()
        reset_channels(layer, [3], "zero")
        after, _ = _activations(model, layers, x)
        assert torch.allclose(before, after, atol=1e-5)
        # An active channel: resetting it changes the output and zeroes it and its outgoing weights.
        _, acts = _activations(model, layers, x)
        live = int(acts[layer.name].mean(0).argmax())
        assert acts[layer.name][:, live].max() > 0
        before = after
        reset_channels(layer, [live], "zero")
        after, acts = _activations(model, layers, x)
        assert not torch.allclose(before, after, atol=1e-4)
        assert (acts[layer.name][:, live] == 0).all()
        for consumer, width in layer.consumers:
            assert (consumer.weight[:, live * width:(live + 1) * width] == 0).all()
    # It stays silent through training (train-mode batch norm, weight decay, momentum).
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    _, acts = _activations(model, layers, x)
    assert (acts["body.1"][:, 3] == 0).all() and (acts["penultimate.0"][:, 3] == 0).all()


def test_reset_reinit_redraws_the_weights():
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10).eval()
    layer = neuron_layers(model)[0]
    conv = layer.producer
    old = conv.weight.detach().clone()
    with torch.no_grad():
        layer.module.weight[5] = 7.0
    reset_channels(layer, [5], "reinit", torch.Generator().manual_seed(3))
    assert not torch.equal(conv.weight[5], old[5]) and torch.equal(conv.weight[4], old[4])
    assert layer.module.weight[5] == 1.0 and layer.module.bias[5] == 0.0
    consumer, _ = layer.consumers[0]
    assert consumer.weight[:, 5].abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["preact-resnet18", "wrn-16-1"])
@pytest.mark.parametrize("mode", ["zero", "reinit"])
def test_reset_runs_on_resnets(name, mode):
    torch.manual_seed(0)
    model = build_model(name, 3, 10)
    x = torch.rand(4, 3, 16, 16)
    layers = neuron_layers(model)
    assert len(layers) >= 13 and all(isinstance(l.module, nn.BatchNorm2d) for l in layers)
    assert layers[-1].consumers == [(model.fc, 1)]
    scores = hyperplane_scores(model, layers, x, high=1e-6, low=0.999)
    assert set(scores) == {l.name for l in layers}
    g = torch.Generator().manual_seed(0)
    for layer in layers:
        reset_channels(layer, [0, 1], mode, g)
    model.train()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    if mode == "zero":
        model.eval()
        _, acts = _activations(model, layers, x)
        assert all((acts[l.name][:, :2] == 0).all() for l in layers)


# -- parameters and a run ------------------------------------------------------------------------


def test_registered_and_validated():
    defense = get_defense("nonlinearity")
    assert DEFENSES["nonlinearity"] is defense and defense.title == "NONE"
    params = defense.resolve((28, 28, 1), None)
    assert params["epochs"] == 10 and params["reset_mode"] == "zero" and defense.total_epochs(params) == 10
    assert schedule(params) == (5, [5])
    assert schedule({**params, "epochs": 7, "rounds": 2}) == (4, [2, 1])
    assert schedule({**params, "epochs": 2}) == (1, [1])
    with pytest.raises(UserInputError):
        defense.resolve((28, 28, 1), {"epochs": 3, "rounds": 3})
    with pytest.raises(UserInputError):
        defense.resolve((28, 28, 1), {"reset_mode": "prune"})


def test_run_end_to_end(tmp_path, patch_dataset):
    patch_dataset(600, 200)
    prepared = prepare(RunConfig(dataset="mnist5k", attack="badnets", poison_rate=0.1, defense="nonlinearity",
                                 device="cpu", embedding_samples=100,
                                 defense_params={"epochs": 4, "batch_size": 32}))
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    summary = execute(prepared, run)
    assert run.status()["state"] == "done"
    model = build_model("cnn", 1, 10)
    model.load_state_dict(torch.load(run.path / "models" / "model.pt", map_location="cpu", weights_only=True))
    sw = run.arrays("sample_weights")
    assert sw["filtered"].shape == (1, 600) and sw["filtered"].dtype == bool
    assert sw["hyperplane_activation"].shape == (1, 600) and sw["hyperplane_activation"].dtype == np.float32
    assert np.array_equal(sw["suspicion"], sw["hyperplane_activation"][-1])
    assert summary["filtered_count"] == int(sw["filtered"].sum())
    assert isinstance(summary["reset_channels"], list) and len(summary["reset_channels"]) == 1
    assert all(isinstance(c, int) for chans in summary["reset_channels"][0].values() for c in chans)
    assert [(m["phase"], m["epoch"]) for m in run.metrics()] == [("train", 1), ("train", 2), ("round 1", 1),
                                                                  ("round 1", 2)]
    assert "filtered_recall" in run.metrics()[-1]


def test_finetune_from_scratch_drops_the_first_model(tmp_path, patch_dataset):
    # With finetune_from=scratch the delivered model is a fresh one trained on what the filter kept: the
    # channels the round reset (silenced for good in the reset model) carry weights again, and where the
    # filter caught all the poison the fresh model never saw the trigger.
    patch_dataset(600, 200)
    prepared = prepare(RunConfig(dataset="mnist5k", attack="badnets", poison_rate=0.1, defense="nonlinearity",
                                 device="cpu", embedding_samples=100,
                                 defense_params={"epochs": 6, "batch_size": 32, "finetune_from": "scratch"}))
    run = RunDir.create(tmp_path, prepared.config.to_dict())
    summary = execute(prepared, run)
    state = torch.load(run.path / "models" / "model.pt", map_location="cpu", weights_only=True)
    reset = summary["reset_channels"][0]
    assert reset, "the round reset no channel, so the test shows nothing"
    for layer, channels in reset.items():
        assert state[f"{layer}.weight"][channels].abs().sum() > 0  # a reset model keeps them at exactly 0
    if summary["filtered_recall"] == 1.0:
        assert summary["attack_success_rate"] < 0.2
