"""train_one_epoch and evaluate: plain functions over on-device uint8 tensors, returning numbers."""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .augment import augment, normalize
from .distributed import all_sum
from .runtime import autocast


def batch_slices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch over n samples, keeping every sample.

    A trailing batch of one image is folded into the previous one: BatchNorm cannot train on it.
    """
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    amp: Optional[torch.dtype],
    generator: torch.Generator,
    crop_padding: int = 4,
    flip: bool = True,
    label_smoothing: float = 0.0,
    scaler: Optional[torch.amp.GradScaler] = None,
    step_scheduler_per_batch: bool = False,
    ema: Optional[torch.optim.swa_utils.AveragedModel] = None,
    on_step: Optional[Callable[[int, int, float, float], None]] = None,
    shard: tuple[int, int] = (0, 1),
    order_generator: Optional[torch.Generator] = None,
) -> dict[str, float]:
    """One pass over images (uint8 [N, H, W, C], on the training device) in a seeded random order.

    Returns the mean training loss, accuracy (on augmented images), sample count, seconds, images/s.
    on_step(step, samples_seen, running_loss, running_acc) is called every few steps for progress.
    With shard=(rank, world_size), world_size > 1, the order comes from order_generator (seeded the
    same on every rank), this rank trains on its slice of it, and the returned loss, accuracy, samples
    and images/s are those of all ranks together.
    """
    model.train()
    device = images.device
    n = images.shape[0]
    rank, world = shard
    order = torch.randperm(n, device=device, generator=order_generator if order_generator is not None else generator)
    if world > 1:
        # Every rank takes an equal contiguous slice, and the n % world left over are skipped this
        # epoch (different ones each epoch): DDP needs every rank in every step's gradient all-reduce.
        per_rank = n // world
        order = order[rank * per_rank:(rank + 1) * per_rank]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    start = time.perf_counter()
    for step, (lo, hi) in enumerate(batch_slices(order.numel(), batch_size)):
        idx = order[lo:hi]
        x = normalize(augment(images[idx], crop_padding, flip, generator), mean, std)
        y = labels[idx]
        with autocast(device, amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if step_scheduler_per_batch:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        loss_sum += loss.detach() * (hi - lo)
        correct += (logits.argmax(1) == y).sum()
        seen += hi - lo
        if on_step is not None and step % 20 == 0:
            on_step(step, seen, loss_sum.item() / seen, correct.item() / seen)
    if not step_scheduler_per_batch:
        scheduler.step()
    if world > 1:
        # Sums, not means, so that the global figures weigh every sample once (float64 keeps the
        # counts exact).
        totals = all_sum(torch.stack([loss_sum.double(), correct.double(),
                                      torch.tensor(float(seen), dtype=torch.float64, device=device)]))
        loss_total, correct_total, seen = totals[0].item(), totals[1].item(), int(totals[2].item())
    else:
        loss_total, correct_total = loss_sum.item(), correct.item()
    seconds = time.perf_counter() - start
    return {
        "loss": loss_total / seen,
        "acc": correct_total / seen,
        "samples": seen,
        "seconds": seconds,
        "img_s": seen / seconds,
    }


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    amp: Optional[torch.dtype] = None,
    tta_flip: bool = False,
    batch_size: int = 1000,
) -> torch.Tensor:
    """Logits [N, C] (float32) for uint8 images [N, H, W, C]; with tta_flip, the mean of the
    logits of each image and its mirror."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for lo in range(0, images.shape[0], batch_size):
        x = normalize(images[lo:lo + batch_size].to(device), mean, std)
        with autocast(device, amp):
            logits = model(x).float()
            if tta_flip:
                logits = (logits + model(x.flip(3)).float()) / 2
        out.append(logits)
    return torch.cat(out)


def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    amp: Optional[torch.dtype] = None,
    tta_flip: bool = False,
    num_classes: Optional[int] = None,
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """Cross-entropy loss, accuracy, and the confusion matrix (rows: true class, cols: predicted).

    With shard=(rank, world_size), world_size > 1, each rank evaluates its contiguous slice of the
    images and all ranks get the figures of the whole set (every rank needs at least one image).
    """
    rank, world = shard
    if world > 1:
        n = images.shape[0]
        lo, hi = n * rank // world, n * (rank + 1) // world
        images, labels = images[lo:hi], labels[lo:hi]
    logits = predict_logits(model, images, mean=mean, std=std, amp=amp, tta_flip=tta_flip)
    labels = labels.to(logits.device)
    pred = logits.argmax(1)
    c = num_classes or logits.shape[1]
    confusion = torch.bincount(labels * c + pred, minlength=c * c).view(c, c)  # [true, pred]
    if world > 1:
        confusion = all_sum(confusion)
        sums = all_sum(torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                                    (pred == labels).sum().double(),
                                    torch.tensor(float(labels.numel()), dtype=torch.float64, device=logits.device)]))
        return {"loss": sums[0].item() / sums[2].item(), "acc": sums[1].item() / sums[2].item(),
                "confusion": confusion.cpu()}
    confusion = confusion.cpu()
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "acc": (pred == labels).sum().item() / labels.numel(),  # exact ratio of counts, as the sharded path
        "confusion": confusion,
    }
