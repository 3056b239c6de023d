"""Has CBD's f_B caught the trigger when f_C starts? Its loss at one step against its loss averaged
over its training, per seed: the measurement behind CBD's `backdoor_loss="trajectory"`.

    python bench/fb_capture.py                                  # badnets and blend, seeds 0-4 (~4 min)
    python bench/fb_capture.py --attacks wanet sig --poison-rate 0.05

Trains f_B exactly as CBD's first phase does (same seeds, batches, augmentation, constant learning
rate 0.05) for 256 steps on mnist5k, taking every training sample's loss every 16 steps, and prints
for several readings of CE_B:
- AUROC: how well -CE_B ranks poisoned above clean samples (1 = perfectly; 0.5 = not at all);
- in-class AUROC: the same inside the target class, the only comparison CBD's class-balanced weights
  make (clean zeros against poisoned "zeros");
- poison share: the share of the target class's weight that poisoned samples keep when f_C starts
  (w = CE_B / (CE_B + ln 10), f_C's loss before training), i.e. how much of the backdoor f_C is fed.
"Step 64" is what f_B was before (2 epochs of 32 steps); "trajectory" is the geometric mean of the 16
readings, the default now.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbd_core.config import RunConfig  # noqa: E402
from cbd_core.metrics import auroc  # noqa: E402
from cbd_core.models import build_model, default_model_for  # noqa: E402
from cbd_core.pipeline import prepare  # noqa: E402
from cbd_core.training import Tensors, arithmetic, augment, batches, default_augmentation, per_sample_loss, sgd  # noqa: E402

STEPS, EVERY = 256, 16


def readings(attack: str, seed: int, rate: float) -> dict[str, np.ndarray]:
    prepared = prepare(RunConfig(attack=attack, poison_rate=rate, seed=seed, defense="cbd", device="cpu"))
    config, data = prepared.config, prepared.poisoned
    p = config.defense_params
    train = Tensors.from_images(data.train, torch.device("cpu"))
    torch.manual_seed(seed * 7919)  # the pipeline's seed for the first model a run builds (f_B)
    model = build_model(default_model_for(data.train.image_shape), data.train.image_shape[2], data.train.num_classes)
    opt = sgd(model, p["backdoor_lr"], p["weight_decay"])
    generator = torch.Generator().manual_seed(seed * 1000)  # DefenseContext.generator()
    aug = default_augmentation(data.train.image_shape)
    losses, step = {}, 0
    while step < STEPS:
        for idx in batches(len(train), p["batch_size"], generator):
            model.train()
            loss = F.cross_entropy(model(augment(train.x[idx], generator, **aug)), train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % EVERY == 0:
                losses[step] = per_sample_loss(model, train).numpy()
            if step >= STEPS:
                break
    found = {f"step {s}": losses[s] for s in (64, 128, 256)}
    found["trajectory"] = np.exp(np.mean([np.log(np.maximum(v, 1e-6)) for v in losses.values()], axis=0))
    return found | {"_mask": data.is_poisoned, "_target": data.train.y == data.target_label}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=["badnets", "blend"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--poison-rate", type=float, default=0.1)
    args = parser.parse_args()
    print(f"f_B on mnist5k, poison rate {args.poison_rate:.1%}; per seed {' / '.join(map(str, args.seeds))}")
    print("| attack | CE_B read at | AUROC | in-class AUROC | poison share of the target class (%) |")
    print("|---|---|---|---|---|")
    with arithmetic(RunConfig().validated().threads, True):
        for attack in args.attacks:
            per_seed = [readings(attack, seed, args.poison_rate) for seed in args.seeds]
            for key in ("step 64", "step 128", "step 256", "trajectory"):
                a, inner, share = [], [], []
                for r in per_seed:
                    ce, mask, target = r[key], r["_mask"], r["_target"]
                    w = ce / (ce + np.log(10))
                    a.append(f"{auroc(-ce, mask):.2f}")
                    inner.append(f"{auroc(-ce[target], mask[target]):.2f}")
                    share.append(f"{100 * w[mask].sum() / w[target].sum():.1f}")
                med = statistics.median(float(s) for s in share)
                print(f"| {attack} | {key} | {' / '.join(a)} | {' / '.join(inner)} | {' / '.join(share)} (median {med:.1f}) |")


if __name__ == "__main__":
    main()
