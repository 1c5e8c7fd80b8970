#!/usr/bin/env python3
"""The PyTorch seed reproduction's NoProp-DT training step and inference, timed like noprop_bench.

Imports the model from a checkout of eoghanf/NoPropLLM (commit e4bed9b) and runs the body of
its trainer's `_train_epoch_diffusion` loop (per block: zero_grad, compute_loss, backward,
clip_grad_norm_, step, loss.item()) on MNIST batches of 128, then `forward_inference` on
test batches. Prints one JSON object. Run by bench/compare-seed.sh; nothing is written.

usage: seed_step.py SEED_CHECKOUT MNIST_DIR [--threads N] [--steps N] [--warmup N]
                    [--inference-batches N] [--inference-batch N] [--batch N]
"""
import argparse
import gzip
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(directory, stem):
    for name in (stem + ".gz", stem):
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    sys.exit(f"seed_step.py: no {stem}[.gz] in {directory}")


def load(directory, split):
    images = read_idx(find(directory, f"{split}-images-idx3-ubyte"))
    labels = read_idx(find(directory, f"{split}-labels-idx1-ubyte"))
    # torchvision's ToTensor + Normalize((0.1307,), (0.3081,)), as the seed's data loader does.
    x = (torch.from_numpy(images.astype(np.float32) / 255.0) - 0.1307) / 0.3081
    return x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("seed_checkout")
    ap.add_argument("mnist_dir")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--inference-batches", type=int, default=5)
    ap.add_argument("--inference-batch", type=int, default=1000)
    a = ap.parse_args()

    sys.path.insert(0, a.seed_checkout)
    from src.models import NoPropNetwork  # the seed's own model code

    torch.set_num_threads(a.threads)
    torch.manual_seed(42)
    train_x, train_y = load(a.mnist_dir, "train")
    test_x, _ = load(a.mnist_dir, "t10k")
    # experiment_configs/mnistdiffusion.yaml: T = 10, cosine schedule, AdamW(1e-3, wd 1e-3), clip 1.0.
    model = NoPropNetwork(num_layers=10, image_channels=1, image_size=28, label_dim=10,
                          noise_schedule_type="cosine", noise_schedule_min=0.001, noise_schedule_max=0.999)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-3) for m in model.denoising_modules]
    model.train()
    order = torch.randperm(train_x.shape[0])
    times = []
    for k in range(a.warmup + a.steps):
        idx = order[k * a.batch:(k + 1) * a.batch]
        data, target = train_x[idx], train_y[idx]
        t0 = time.perf_counter()
        for layer, opt in enumerate(optimizers):
            opt.zero_grad()
            loss = model.compute_loss(data, target, layer)
            if torch.isnan(loss):
                continue
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.denoising_modules[layer].parameters(), max_norm=1.0)
            opt.step()
            loss.item()
        if k >= a.warmup:
            times.append(time.perf_counter() - t0)
        print(f"seed step {k + 1}/{a.warmup + a.steps}: {time.perf_counter() - t0:.4f} s", file=sys.stderr)

    model.eval()
    inference = []
    with torch.no_grad():
        x = test_x[:a.inference_batch]
        for k in range(a.inference_batches + 1):
            t0 = time.perf_counter()
            model.forward_inference(x)
            if k > 0:
                inference.append(time.perf_counter() - t0)
    med = statistics.median(times)
    inf = statistics.median(inference)
    print(json.dumps({
        "implementation": "seed (PyTorch " + torch.__version__ + ")",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": a.batch,
        "seconds_per_batch": med,
        "seconds_per_batch_min": min(times),
        "samples_per_second": a.batch / med,
        "inference_batch_size": int(x.shape[0]),
        "inference_seconds_per_batch": inf,
        "inference_images_per_second": x.shape[0] / inf,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }, indent=2))


if __name__ == "__main__":
    main()
