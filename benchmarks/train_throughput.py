"""Training images/s: the project's step vs the textbook loop vs the pure compute ceiling.

  python benchmarks/train_throughput.py [--data DIR] [--steps 100] [--repeats 3]

(a) project: training.engine.train_one_epoch over on-device uint8 data, batch augmentation and channels_last,
    in the default recipe's precision (auto: bf16 autocast where the CPU has it natively, else fp32;
    `--precision fp32` for fp32 everywhere), exactly as `python -m training` runs;
(b) reference: torchvision ImageFolder + per-image transforms + DataLoader (2 workers) + fp32 eager;
(c) ceiling: the project's forward/backward/step on random tensors already in memory.
Each is measured `--repeats` times, interleaved, and the median is reported.

`--profile`: also where (c)'s time goes at the first batch size, by torch.profiler over `--steps` steps: the
share of each kind of operator (convolution forward/backward, batch norm, the rest) in a second table and in
the JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.constants import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import CIFAR_BATCHES, DataError, detect_layout, load_split  # noqa: E402
from training.engine import TrainStep, train_one_epoch  # noqa: E402
from training.models import SimpleCNN  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.runtime import amp_dtype, autocast, describe_device, precision_name  # noqa: E402


def project_img_s(images, labels, batch, steps, amp, device) -> float:
    cfg = TrainConfig(batch_size=batch)
    model = SimpleCNN().to(device, memory_format=torch.channels_last)
    opt, sched = build_optimizer(cfg, model, steps)
    mean, std = torch.tensor(CIFAR10_MEAN, device=device), torch.tensor(CIFAR10_STD, device=device)
    n = batch * steps
    sub_x, sub_y = images[:n].to(device), labels[:n].to(device)
    g = torch.Generator(device=device).manual_seed(0)
    step = TrainStep(model, opt, sched, batch, mean, std, amp, generator=g)
    train_one_epoch(step, sub_x[:batch * 10], sub_y[:batch * 10])  # warm-up
    return train_one_epoch(step, sub_x, sub_y)["img_s"]


def ceiling_step(batch, steps, amp, device):
    """The project's forward/backward/optimizer step on one random batch, as a function to call, warmed up."""
    model = SimpleCNN().to(device, memory_format=torch.channels_last)
    opt, _ = build_optimizer(TrainConfig(batch_size=batch), model, steps)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with autocast(device, amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10):
        step()
    return step


def ceiling_img_s(batch, steps, amp, device) -> float:
    step = ceiling_step(batch, steps, amp, device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def op_kind(name: str) -> str:
    """The kind of operator a profiler event belongs to (autograd's backward nodes included)."""
    name = name.lower()
    if "conv" in name:
        return "convolution backward" if "backward" in name else "convolution forward"
    for kind, fragments in (("batch norm", ("batch_norm", "batchnorm")),
                            ("linear / matmul", ("addmm", "mm", "linear")),
                            ("optimizer", ("adam", "_foreach")),
                            ("relu / max-pool", ("relu", "threshold", "max_pool"))):
        if any(f in name for f in fragments):
            return kind
    return "other"


def profile_ceiling(batch, steps, amp, device) -> dict[str, float]:
    """Share of the step's self time per kind of operator (op_kind), by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    step = ceiling_step(batch, steps, amp, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    shares: dict[str, float] = {}
    for ev in prof.key_averages():
        kind = op_kind(ev.key)
        shares[kind] = shares.get(kind, 0.0) + getattr(ev, attr, 0.0)
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def reference_img_s(data: Path, batch, steps, device) -> float:
    """The textbook loop: per-image PIL transforms in DataLoader workers, fp32, NCHW."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, padding=4),
        transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    if detect_layout(data) == "cifar":
        ds = datasets.CIFAR10(str(data), train=True, transform=tf)
    else:
        ds = datasets.ImageFolder(str(data / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=2,
                                         pin_memory=device.type == "cuda", drop_last=True)
    model = SimpleCNN().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    warmup, seen, start = 10, 0, 0.0
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            seen += x.shape[0]
        if i == warmup + steps - 1:
            break
    _sync(device)
    return seen / (time.perf_counter() - start)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("CIFAR10_DATA", "./data"),
                   help=f"ImageFolder tree or folder with {CIFAR_BATCHES}/ (default $CIFAR10_DATA or ./data)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=3, help="measurements per figure (median reported)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--profile", action="store_true", help="also where the ceiling step's time goes (torch.profiler)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=TrainConfig().precision,
                   help="the project's and the ceiling's precision (default: the default recipe's, "
                   f"{TrainConfig().precision})")
    args = p.parse_args()
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be at least 1")

    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    amp = amp_dtype(args.precision, device)
    try:
        train = load_split(args.data, "train")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"device: {describe_device(device)}; project precision {precision_name(amp)} + channels_last; "
          f"{args.steps} steps per measurement, median of {args.repeats}")
    rows, figures = [], {}
    for batch in args.batch_sizes:
        runs = {"project": [], "reference": [], "ceiling": []}
        for _ in range(args.repeats):
            runs["project"].append(project_img_s(train.images, train.labels, batch, args.steps, amp, device))
            runs["ceiling"].append(ceiling_img_s(batch, args.steps, amp, device))
            runs["reference"].append(reference_img_s(Path(args.data), batch, args.steps, device))
        med = {k: statistics.median(v) for k, v in runs.items()}
        suffix = "" if batch == 64 else f"_{batch}"
        figures.update({
            f"project_img_s{suffix}": round(med["project"], 1),
            f"reference_img_s{suffix}": round(med["reference"], 1),
            f"ceiling_img_s{suffix}": round(med["ceiling"], 1),
            f"ratio{suffix}": round(med["project"] / med["reference"], 3),
            f"project_vs_ceiling{suffix}": round(med["project"] / med["ceiling"], 3),
        })
        rows.append((batch, med["project"], med["reference"], med["ceiling"]))
    print(f"\n{'batch':>5} | {'project img/s':>13} | {'textbook img/s':>14} | {'ratio':>6} | "
          f"{'ceiling img/s':>13} | {'project/ceiling':>15}")
    print("-" * 82)
    for batch, proj, ref, ceil in rows:
        print(f"{batch:>5} | {proj:>13,.0f} | {ref:>14,.0f} | {proj / ref:>5.2f}x | {ceil:>13,.0f} | "
              f"{100 * proj / ceil:>14.1f}%")
    if args.profile:
        shares = profile_ceiling(args.batch_sizes[0], args.steps, amp, device)
        print(f"\nwhere the ceiling step's time goes (batch {args.batch_sizes[0]}, {args.steps} steps, torch.profiler)")
        print(f"{'operators':>22} | {'share':>6}")
        for kind, share in shares.items():
            print(f"{kind:>22} | {100 * share:>5.1f}%")
        figures["profile_shares"] = {k: round(v, 3) for k, v in shares.items()}
    figures.update({"device": describe_device(device), "precision": precision_name(amp)})
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
