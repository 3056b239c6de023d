"""The runs on a GPU: the Quick demo and a CIFAR-sized CBD run, timed with device events.

    python bench/gpu.py                          # cuda: Quick demo + PreAct-ResNet18 CBD, 50,000 images
    python bench/gpu.py --epochs 40              # the ResNet run with CBD's full 32x32 schedule
    python bench/gpu.py --device cpu --tiny      # a smoke test of this script (seconds, no GPU)

The CIFAR-sized set is synthetic (no download): 32x32 colour images whose class is a colour and a
stripe frequency under noise, saved as an .npz and trained through the normal code path (dataset
"npz", BadNets 10%, CBD, PreAct-ResNet18), so everything a real CIFAR-10 run does happens here: the
data lives on the device as one tensor, batches are index slices, augmentation runs batched there,
and the training loops read nothing back per batch (losses are tallied on the device).

For each run it prints the wall seconds, the device seconds between CUDA events recorded at the
start and the end, the seconds per epoch of each phase, and the share of one main-phase epoch in
which the GPU is busy (sum of its kernels' times over the epoch's wall time, from torch.profiler).
On the CPU the device columns are empty.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_cifar(path: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A CIFAR-sized .npz (x, y, x_test, y_test; uint8 32x32x3, 10 classes) that a CNN can learn:
    class c has its own colour and its own stripe frequency and angle, under pixel noise."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(10, 3))
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        rng.shuffle(y)
        angle = y[:, None, None] * (np.pi / 10) + rng.normal(0, 0.15, (n, 1, 1))
        freq = (1 + y[:, None, None] % 5) * (2 * np.pi / 32)
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        stripes = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)  # (n, 32, 32)
        x = colours[y][:, None, None, :] + 50 * stripes[..., None] + rng.normal(0, 25, (n, 32, 32, 3))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), y.astype(np.int64)

    x, y = make(n_train)
    x_test, y_test = make(n_test)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def timed(config, label: str, profile_epoch: tuple[str, int] | None) -> dict:
    """Run `config` through the pipeline; wall and device seconds, per-phase epoch seconds, GPU busy share."""
    import torch

    from cbd_core.pipeline import train_run

    cuda = str(config.device).startswith("cuda")
    profiler = {"active": None, "busy": None}

    def on_progress(event) -> None:
        # Profile one epoch of the main phase: start when the epoch before it ends, stop when it ends.
        if not (cuda and profile_epoch and event.metrics is not None):
            return
        phase, epoch = profile_epoch
        if event.phase == phase and event.epoch == epoch - 1 and profiler["active"] is None:
            from torch.profiler import ProfilerActivity, profile

            profiler["active"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            profiler["active"].__enter__()
            profiler["started"] = time.perf_counter()
        elif event.phase == phase and event.epoch == epoch and profiler["active"] is not None:
            torch.cuda.synchronize()
            wall = time.perf_counter() - profiler["started"]
            profiler["active"].__exit__(None, None, None)
            kernels = [e for e in profiler["active"].events() if e.device_type == torch.autograd.DeviceType.CUDA]
            busy_us = sum(e.time_range.elapsed_us() for e in kernels)
            profiler["busy"] = busy_us / 1e6 / wall if wall > 0 else None
            profiler["active"] = None

    clocks: dict = {}

    def on_start(run) -> None:
        # The clocks start once the data is loaded and poisoned and the run folder exists (as before
        # `train_run` took over the sequence): what is timed is the training and the writing.
        if cuda:
            torch.cuda.synchronize()
            clocks["start"], clocks["end"] = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            clocks["start"].record()
        clocks["began"] = time.perf_counter()

    run, summary = train_run(config, tempfile.mkdtemp(prefix="backdoor-lab-gpu-"), progress=on_progress,
                             on_start=on_start)
    began, device_s = clocks["began"], None
    if cuda:
        start, end = clocks["start"], clocks["end"]
        end.record()
        torch.cuda.synchronize()
        device_s = start.elapsed_time(end) / 1000
    wall = time.perf_counter() - began
    per_phase: dict[str, list[float]] = {}
    for line in run.metrics():
        per_phase.setdefault(line["phase"], []).append(line["epoch_seconds"])
    return {"label": label, "wall": wall, "device": device_s, "busy": profiler["busy"],
            "epochs": {k: (len(v), statistics.median(v)) for k, v in per_phase.items()},
            "ca": summary["clean_accuracy"], "asr": summary["attack_success_rate"]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a few steps on a few images: a smoke test")
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=5, help="f_C epochs of the ResNet run (CBD's default at 32x32: 40)")
    args = parser.parse_args(argv)
    import torch

    from cbd_core.config import RunConfig, quick_demo_config

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --device cpu --tiny for a smoke test")
    demo = dataclasses.replace(quick_demo_config(), device=args.device)
    n_train, n_test = (64, 32) if args.tiny else (args.n_train, args.n_test)
    resnet_params = {"epochs": args.epochs}
    if args.tiny:
        demo = dataclasses.replace(demo, embedding_samples=100,
                                   defense_params={"backdoor_steps": 8, "backdoor_checkpoints": 2, "epochs": 1})
        resnet_params = {"epochs": 1, "backdoor_steps": 2, "backdoor_checkpoints": 1, "batch_size": 32}
    npz = synthetic_cifar(Path(tempfile.mkdtemp(prefix="backdoor-lab-gpu-")) / "synthetic-cifar.npz", n_train, n_test)
    resnet = RunConfig(dataset="npz", npz_path=str(npz), attack="badnets", poison_rate=0.1, target_label=0,
                       defense="cbd", model="preact-resnet18", seed=0, device=args.device,
                       embedding_samples=100 if args.tiny else 5000, defense_params=resnet_params)
    rows = [timed(demo, "Quick demo (mnist5k, SmallCNN)", ("f_C", 2) if not args.tiny else None),
            timed(resnet, f"CBD PreAct-ResNet18, synthetic 32x32 ({n_train:,} images)",
                  ("f_C", 2) if resnet_params["epochs"] >= 2 else None)]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}; torch {torch.__version__}\n")
    print("| run | wall s | device s (CUDA events) | GPU busy (one f_C epoch) | s per epoch (phase: epochs x median) | CA | ASR |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        epochs = ", ".join(f"{k}: {n} x {s:.2f}" for k, (n, s) in r["epochs"].items())
        device = f"{r['device']:.1f}" if r["device"] is not None else ""
        busy = f"{r['busy']:.0%}" if r["busy"] is not None else ""
        print(f"| {r['label']} | {r['wall']:.1f} | {device} | {busy} | {epochs} | {r['ca']:.3f} | {r['asr']:.3f} |")
    return rows


if __name__ == "__main__":
    main()
