"""The training loop's own optimisers and the SmallCNN's block order give torch's numbers to the bit."""

import sys

import pytest
import torch
import torch.nn.functional as F

from cbd_core.models import build_model
from cbd_core.training import SGD, Adam, sgd


def _train(model, optimizer, steps=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    for i in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 0.05 * (i + 1) / steps  # a schedule, as the loops set it
        loss = F.cross_entropy(model(x[i * 8:i * 8 + 32]), y[i * 8:i * 8 + 32])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.state_dict()


def _pair(seed=0):
    torch.manual_seed(seed)
    a = build_model("cnn", 1, 10)
    b = build_model("cnn", 1, 10)
    b.load_state_dict(a.state_dict())
    return a, b


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_sgd_matches_torch_optim_bit_for_bit():
    ours, theirs = _pair()
    decay = [p for p in theirs.parameters() if p.ndim > 1]
    no_decay = [p for p in theirs.parameters() if p.ndim <= 1]
    reference = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=0.05, momentum=0.9, nesterov=True)
    optimizer = sgd(ours, 0.05, 5e-4)
    assert isinstance(optimizer, SGD)
    assert _same(_train(ours, optimizer), _train(theirs, reference))


def test_adam_matches_torch_optim_bit_for_bit():
    ours, theirs = _pair(1)
    mine = _train(ours, Adam(ours.parameters(), lr=1e-3, betas=(0.5, 0.999)))
    reference = _train(theirs, torch.optim.Adam(theirs.parameters(), lr=1e-3, betas=(0.5, 0.999)))
    assert _same(mine, reference)


@pytest.mark.slow
def test_training_never_imports_dynamo():
    """torch.optim's first step imports torch._dynamo (0.8 s); ours must not (checked in a fresh process)."""
    import subprocess

    code = ("import sys, torch\nfrom cbd_core.models import build_model\nfrom cbd_core.training import sgd, Adam, "
            "arithmetic\nm = build_model('cnn', 1, 10)\nwith arithmetic(1, True):\n  o = sgd(m, 0.1, 5e-4); "
            "m(torch.rand(4, 1, 28, 28)).sum().backward(); o.step()\n  a = Adam(m.parameters(), 1e-3); a.step()\n"
            "print('torch._dynamo' in sys.modules, 'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_pool_before_relu_is_the_same_function():
    """SmallCNN pools before its ReLU: the same outputs as ReLU then pool, to the bit."""
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10).eval()
    x = torch.rand(16, 1, 28, 28)
    body = model.body
    reference = x.contiguous(memory_format=torch.channels_last)
    for conv, bn in ((body[0], body[1]), (body[4], body[5])):
        reference = F.max_pool2d(F.relu(bn(conv(reference))), 2)
    reference = model.penultimate(body[9](body[8](reference)))
    with torch.no_grad():
        assert torch.equal(model.features(x), reference.detach())


def test_a_pass_is_reused_only_while_the_model_is_unchanged():
    import numpy as np

    from cbd_core.training import EvalSets, Tensors

    torch.manual_seed(0)
    model = build_model("cnn", 1, 10)
    x = torch.rand(40, 1, 28, 28)
    sets = EvalSets(Tensors(x, torch.randint(0, 10, (40,))), Tensors(x[:20], torch.zeros(20, dtype=torch.long)),
                    np.ones(20, dtype=np.int64), 0)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    first = sets.evaluate(model)
    n = len(calls)
    assert sets.evaluate(model) == first and len(calls) == n  # unchanged: no second pass
    with torch.no_grad():
        model.fc.bias[0] += 1.0  # any change to a parameter (or a buffer) invalidates it
    sets.evaluate(model)
    assert len(calls) > n
    other = build_model("cnn", 1, 10)
    other.load_state_dict(model.state_dict())
    other.register_forward_hook(lambda *args: calls.append(1))
    m = len(calls)
    sets.evaluate(other)  # the same weights in another model object: its own pass
    assert len(calls) > m


def test_loss_tally_adds_up_like_the_python_loop():
    from cbd_core.training import LossTally

    g = torch.Generator().manual_seed(0)
    losses = [torch.rand((), generator=g) * 3 for _ in range(50)]
    tally, total, count = LossTally(), 0.0, 0
    for i, loss in enumerate(losses):
        n = 32 if i < 49 else 17
        tally.add(loss, n)
        total += loss.item() * n
        count += n
    assert tally.mean() == total / count and tally.count == count
    assert LossTally().mean() == 0.0


def test_training_reads_nothing_back_per_batch(patch_dataset, monkeypatch, tmp_path):
    """On a GPU, reading a tensor back (`.item()`, `.tolist()`, `.cpu()`) makes the CPU wait for the
    device. CBD's and the undefended loops read back per epoch, never per batch: halving the batch
    size (twice the batches) must not change how often they do. (Adam's step count is a CPU tensor
    by design; its `.item()` never waits for a device and is not counted.)"""
    from cbd_core.pipeline import execute, prepare
    from cbd_core.runs import RunDir
    from conftest import fast_config

    patch_dataset(256, 64)
    counts = {}
    for name in ("item", "tolist", "cpu"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_name != "step":  # Adam.step's CPU step counter
                counts[_name] = counts.get(_name, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def reads(defense, batch_size, **params):
        counts.clear()
        config = fast_config(defense=defense, embedding_samples=0,
                             defense_params={"batch_size": batch_size, **params})
        prepared = prepare(config)
        execute(prepared, RunDir.create(tmp_path, prepared.config.to_dict()))
        return dict(counts)

    assert reads("undefended", 64, epochs=2) == reads("undefended", 32, epochs=2)
    assert reads("cbd", 64, epochs=2, backdoor_steps=8, backdoor_checkpoints=2) == \
        reads("cbd", 32, epochs=2, backdoor_steps=8, backdoor_checkpoints=2)
