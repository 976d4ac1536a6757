"""The design report's training loop as written ("the textbook loop"), for side-by-side comparisons.

  python benchmarks/reference_train.py --seed 0 --out runs/reference-s0 [--data DIR] [--epochs 20] [--threads N]

torchvision ImageFolder on the same folder, RandomHorizontalFlip + RandomCrop(32, padding=4) + ToTensor +
Normalize per image in DataLoader(batch_size=64, shuffle=True, num_workers=2) workers, the report's
SimpleCNN defined here layer for layer, fp32, Adam(lr=1e-3), StepLR(10, 0.1), cross-entropy, evaluation on
the test split after every epoch. Nothing from the project's training stage is used, so a difference
between this and `python -m training` is a difference of the project's path.

`--swap COMPONENT` (repeatable) replaces one component of this loop with the project's, to find which one
moves the result (docs/experiments.md):
  tensor-data    the project's decoded uint8 tensors (training.data) and its whole-batch flip + crop
                 (training.augment), in a randperm order from a generator seeded once; no DataLoader
  channels-last  the model and its input batches in channels_last memory order
  fused-adam     Adam(fused=True), the project's optimizer kernel
  epoch-seeds    with tensor-data: the seeding the project used until it seeded once (commit 7be34d9 and
                 before): every epoch torch.manual_seed(seed * 1_000_003 + epoch) (dropout) and a generator
                 seeded the same for the order and the augmentation
  epoch-seeds-split  the same, but dropout's stream seeded apart (+ 0x9E3779B9): the two streams no longer
                 hold the same numbers
  epoch-seeds-aug      only the order/augmentation generator restarted each epoch; dropout's stream runs on
  epoch-seeds-dropout  only dropout's stream restarted each epoch; the order/augmentation generator runs on
(at most one epoch-seeds* swap, and only with tensor-data)

Writes OUT/history.json with the fields `python -m training` writes (epoch, lr, train_loss, train_acc,
val_loss, val_acc, seconds, img_s, epoch_seconds, samples), prints one line per epoch, a summary table,
and as its last line one JSON object (best test accuracy and its epoch, final train loss/accuracy, images/s).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.247, 0.243, 0.261)
SWAPS = ("tensor-data", "channels-last", "fused-adam", "epoch-seeds", "epoch-seeds-split", "epoch-seeds-aug",
         "epoch-seeds-dropout")
# What each epoch-seeds* swap restarts every epoch: the global (dropout) stream, the data generator, both.
RESTARTS = {"epoch-seeds": "both", "epoch-seeds-split": "split", "epoch-seeds-aug": "aug",
            "epoch-seeds-dropout": "dropout"}


class SimpleCNN(nn.Module):
    """The report's model (section 5.1), written out as the report's train_cifar10.py would."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def loaders(data: Path, batch_size: int, workers: int):
    from torchvision import datasets, transforms

    train_tf = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, padding=4),
                                   transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    train = datasets.ImageFolder(str(data / "train"), transform=train_tf)
    test = datasets.ImageFolder(str(data / "test"), transform=test_tf)
    return (torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=workers),
            torch.utils.data.DataLoader(test, batch_size=1000, shuffle=False, num_workers=workers))


class TensorBatches:
    """The project's data path as an iterable of (x, y) batches: uint8 [N, 32, 32, 3] tensors decoded once,
    augmented a whole batch at a time; a fresh seeded order per pass when `generator` is given (training)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 generator: torch.Generator | None = None, epoch_seed: int | None = None, restart: str = "both"):
        self.images, self.labels, self.batch_size, self.generator = images, labels, batch_size, generator
        self.mean, self.std = torch.tensor(MEAN), torch.tensor(STD)
        self.epoch_seed, self.epoch, self.restart = epoch_seed, 0, restart

    def __iter__(self):
        from training.augment import augment, normalize

        if self.epoch_seed is not None:
            # The seeding `python -m training` used before it seeded once (until commit 7be34d9), or half of it.
            self.epoch += 1
            epoch_seed = self.epoch_seed * 1_000_003 + self.epoch
            if self.restart in ("both", "dropout"):
                torch.manual_seed(epoch_seed)
            elif self.restart == "split":  # dropout's stream apart from the data's
                torch.manual_seed((epoch_seed + 0x9E3779B9) % 2**32)
            if self.restart != "dropout":
                self.generator = torch.Generator().manual_seed(epoch_seed)
        n = self.labels.numel()
        order = torch.randperm(n, generator=self.generator) if self.generator is not None else torch.arange(n)
        for lo in range(0, n, self.batch_size):
            idx = order[lo:lo + self.batch_size]
            batch = self.images[idx]
            if self.generator is not None:
                batch = augment(batch, padding=4, flip=True, generator=self.generator)
            # normalize() returns channels_last strides; the textbook loop's batches are plain NCHW.
            yield normalize(batch, self.mean, self.std).contiguous(), self.labels[idx]


def tensor_loaders(data: Path, batch_size: int, seed: int, restart: str | None = None):
    from training.config import DATA_SEED_OFFSET
    from training.data import load_split

    train, test = load_split(data, "train"), load_split(data, "test")
    # Seeded as training/streams.py seeds the project's data generator (apart from the global stream).
    generator = torch.Generator().manual_seed(seed + DATA_SEED_OFFSET)
    return (TensorBatches(train.images, train.labels, batch_size, generator, None if restart is None else seed,
                          restart or "both"),
            train.classes, TensorBatches(test.images, test.labels, 1000))


def train_epoch(model, loader, optimizer, channels_last: bool = False) -> dict:
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / seen, "acc": correct / seen, "samples": seen, "seconds": seconds,
            "img_s": seen / seconds}


@torch.no_grad()
def eval_model(model, loader, channels_last: bool = False) -> dict:
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return {"loss": loss_sum / seen, "acc": correct / seen}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_DATA", "./data")),
                   help="ImageFolder root with train/ and test/ (default $CIFAR10_DATA or ./data)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed at the start (default 0)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2, as in the report)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--out", type=Path, default=Path("reference-run"), help="where history.json goes")
    p.add_argument("--swap", action="append", choices=SWAPS, default=[], metavar="COMPONENT",
                   help=f"use the project's component instead of the textbook's (repeatable): {', '.join(SWAPS)}")
    args = p.parse_args()
    if not (args.data / "train").is_dir() or not (args.data / "test").is_dir():
        print(f"error: {args.data} has no train/ and test/ ImageFolder splits", file=sys.stderr)
        return 2
    if args.epochs < 1 or args.batch_size < 1:
        print("error: --epochs and --batch-size must be positive", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    seeding = [name for name in args.swap if name.startswith("epoch-seeds")]
    if seeding and "tensor-data" not in args.swap:
        print(f"error: --swap {seeding[0]} seeds the project's data path: add --swap tensor-data", file=sys.stderr)
        return 2
    if len(set(seeding)) > 1:
        print(f"error: --swap {' and '.join(seeding)} are alternatives: pick one", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    if "tensor-data" in args.swap:
        train_loader, classes, test_loader = tensor_loaders(args.data, args.batch_size, args.seed,
                                                            RESTARTS[seeding[0]] if seeding else None)
    else:
        train_loader, test_loader = loaders(args.data, args.batch_size, args.workers)
        classes = train_loader.dataset.classes
    channels_last = "channels-last" in args.swap
    model = SimpleCNN(num_classes=len(classes))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused="fused-adam" in args.swap or None)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.1)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"textbook loop, seed {args.seed}, swapped in from the project: {', '.join(args.swap) or 'nothing'}",
          flush=True)
    history = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        stats = train_epoch(model, train_loader, optimizer, channels_last)
        val = eval_model(model, test_loader, channels_last)
        scheduler.step()
        history.append({"epoch": epoch, "lr": lr, "train_loss": stats["loss"], "train_acc": stats["acc"],
                        "val_loss": val["loss"], "val_acc": val["acc"], "seconds": stats["seconds"],
                        "img_s": stats["img_s"], "epoch_seconds": time.perf_counter() - start,
                        "samples": stats["samples"]})
        (args.out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        print(f"epoch {epoch:3d}/{args.epochs}  train loss {stats['loss']:.4f} acc {100 * stats['acc']:6.2f}%  "
              f"| test loss {val['loss']:.4f} acc {100 * val['acc']:6.2f}%  | lr {lr:.2e}  "
              f"{stats['seconds']:5.1f}s {stats['img_s']:,.0f} img/s", flush=True)
    best = max(history, key=lambda h: h["val_acc"])
    last = history[-1]
    img_s = sum(h["samples"] for h in history) / sum(h["seconds"] for h in history)
    print(f"\n{'seed':>4} | {'best test acc':>13} | {'epoch':>5} | {'final train acc':>15} | "
          f"{'final train loss':>16} | {'img/s':>6}")
    print(f"{args.seed:>4} | {100 * best['val_acc']:>12.2f}% | {best['epoch']:>5} | "
          f"{100 * last['train_acc']:>14.2f}% | {last['train_loss']:>16.4f} | {img_s:>6,.0f}")
    print(json.dumps({"seed": args.seed, "best_test_acc": best["val_acc"], "best_epoch": best["epoch"],
                      "final_train_acc": last["train_acc"], "final_train_loss": last["train_loss"],
                      "img_s": round(img_s, 1), "threads": torch.get_num_threads(),
                      "swap": sorted(args.swap)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
