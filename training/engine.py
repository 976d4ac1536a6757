"""train_one_epoch and evaluate: plain functions over on-device uint8 tensors, returning numbers."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .augment import augment, corrupt, cutout, mix, normalize, translate_views
from .distributed import all_sum
from .lookahead import Lookahead
from .runtime import autocast, full_fp32


def batch_slices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch over n samples, keeping every sample.

    A trailing batch of one image is folded into the previous one: BatchNorm cannot train on it.
    """
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


@dataclass(frozen=True)
class Augmentation:
    """How training batches are augmented (see training/augment.py)."""

    crop_padding: int = 4
    pad_mode: str = "zeros"
    flip: bool = True
    # Alternating flip: the orientation of every image of the split for this epoch (bool [N]); None: random.
    mirrored: Optional[torch.Tensor] = None
    # The regularizing augmentations (training/augment.py), all off by default.
    cutout: int = 0
    mixup_alpha: Optional[float] = None
    cutmix_alpha: Optional[float] = None
    mix_prob: float = 1.0
    corrupt_prob: float = 0.0

    def apply(self, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, mean: torch.Tensor,
              std: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
        """A training batch: uint8 [B, H, W, C] images -> (normalized float [B, C, H, W], partner labels, lam);
        the target is lam * labels + (1 - lam) * partner labels (lam 1 without MixUp or CutMix). Every draw comes
        from `generator`, and only for the augmentations that are on."""
        mirrored = self.mirrored[idx] if self.mirrored is not None else None
        batch = augment(images, self.crop_padding, self.flip, generator, self.pad_mode, mirrored)
        if self.corrupt_prob > 0:
            batch = corrupt(batch, self.corrupt_prob, generator)
        x = normalize(batch, mean, std)
        if self.cutout:
            x = cutout(x, self.cutout, generator)
        if self.mixup_alpha is None and self.cutmix_alpha is None:
            return x, labels, 1.0
        return mix(x, labels, self.mixup_alpha, self.cutmix_alpha, self.mix_prob, generator)


@dataclass(frozen=True)
class Objective:
    """What the step minimizes: cross-entropy (with label smoothing), mixed with a teacher's soft labels."""

    label_smoothing: float = 0.0
    teacher: Optional[torch.nn.Module] = None  # frozen, eval mode, on the same device
    distill_weight: float = 0.0
    temperature: float = 4.0

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The teacher on the student's (augmented, normalized) batch; call it under the step's autocast."""
        return None if self.teacher is None or self.distill_weight == 0 else self.teacher(x).float()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: Optional[torch.Tensor],
             partner: Optional[torch.Tensor] = None, lam: float = 1.0) -> torch.Tensor:
        """partner, lam: a mixed batch's soft target, lam * labels + (1 - lam) * partner (MixUp, CutMix); the
        cross-entropy with it is the same mix of the two cross-entropies."""
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        if partner is not None and lam < 1.0:
            ce = lam * ce + (1.0 - lam) * F.cross_entropy(logits.float(), partner, label_smoothing=self.label_smoothing)
        if teacher_logits is None:
            return ce
        target = F.softmax(teacher_logits / self.temperature, dim=1)
        soft = F.log_softmax(logits.float() / self.temperature, dim=1)
        # T^2 keeps the soft term's gradients on the scale of the hard one's (Hinton et al., 2015).
        kd = F.kl_div(soft, target, reduction="batchmean") * self.temperature ** 2
        return (1 - self.distill_weight) * ce + self.distill_weight * kd


@dataclass
class TrainStep:
    """What every optimizer step of a run does, the same in every epoch: the model (DDP-wrapped or not), its
    optimizer and schedule, the batch and its normalization, precision, the objective, and the extras a recipe
    turns on (a grad scaler for fp16, EMA weights, lookahead). shard=(rank, world_size) under torchrun."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batch_size: int
    mean: torch.Tensor
    std: torch.Tensor
    amp: Optional[torch.dtype]
    generator: torch.Generator  # augmentation draws (and the order, without order_generator)
    objective: Objective = Objective()
    scaler: Optional[torch.amp.GradScaler] = None
    schedule_per_batch: bool = False  # OneCycle steps per batch; the others per epoch
    ema: Optional[torch.optim.swa_utils.AveragedModel] = None
    lookahead: Optional[Lookahead] = None
    shard: tuple[int, int] = (0, 1)
    order_generator: Optional[torch.Generator] = None  # seeded the same on every rank


def train_one_epoch(
    step: TrainStep,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    aug: Augmentation = Augmentation(),
    lookahead_active: bool = False,
    frozen: Sequence[torch.Tensor] = (),
    on_step: Optional[Callable[[int, int, float, float], None]] = None,
) -> dict[str, float]:
    """One pass over images (uint8 [N, H, W, C], on the training device) in a seeded random order.

    Returns the mean training loss, accuracy (on augmented images), sample count, seconds, images/s.
    `frozen` parameters get no update this epoch (their gradients are dropped before the step; DDP-safe,
    unlike toggling requires_grad). step.lookahead counts every step and averages when `lookahead_active`.
    on_step(step, samples_seen, running_loss, running_acc) is called every few steps for progress.
    With step.shard=(rank, world_size), world_size > 1, the order comes from step.order_generator (seeded
    the same on every rank), this rank trains on its slice of it, and the returned loss, accuracy, samples
    and images/s are those of all ranks together.
    """
    model, optimizer, scheduler, objective = step.model, step.optimizer, step.scheduler, step.objective
    scaler, generator, ema, lookahead = step.scaler, step.generator, step.ema, step.lookahead
    model.train()
    device = images.device
    n = images.shape[0]
    rank, world = step.shard
    order_generator = step.order_generator if step.order_generator is not None else generator
    order = torch.randperm(n, device=device, generator=order_generator)
    if world > 1:
        # Every rank takes an equal contiguous slice, and the n % world left over are skipped this
        # epoch (different ones each epoch): DDP needs every rank in every step's gradient all-reduce.
        per_rank = n // world
        order = order[rank * per_rank:(rank + 1) * per_rank]
    unwrapped = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    start = time.perf_counter()
    for index, (lo, hi) in enumerate(batch_slices(order.numel(), step.batch_size)):
        idx = order[lo:hi]
        y = labels[idx]
        x, partner, lam = aug.apply(images[idx], y, idx, step.mean, step.std, generator)
        with autocast(device, step.amp):
            logits = model(x)
            teacher_logits = objective.teacher_logits(x)  # the teacher sees the same (mixed) batch
        loss = objective.loss(logits, y, teacher_logits, partner, lam)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        for p in frozen:
            p.grad = None  # the optimizer skips a parameter without a gradient
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if step.schedule_per_batch:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(unwrapped)
        if lookahead is not None:
            lookahead.after_step(unwrapped, lookahead_active)
        loss_sum += loss.detach() * (hi - lo)
        correct += (logits.argmax(1) == (y if lam >= 0.5 else partner)).sum()  # a mixed image's larger share
        seen += hi - lo
        if on_step is not None and index % 20 == 0:
            on_step(index, seen, loss_sum.item() / seen, correct.item() / seen)
    if not step.schedule_per_batch:
        scheduler.step()
    if lookahead is not None and lookahead_active:
        lookahead.sync(unwrapped)
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
def tta_logits(model: torch.nn.Module, x: torch.Tensor, tta_flip: bool = False, tta_translate: int = 0) -> torch.Tensor:
    """Logits of normalized [N, 3, H, W] with test-time augmentation: the mean of each image and its mirror
    (tta_flip), and with tta_translate half of that plus half the mean of the same for the views shifted
    tta_translate pixels up-left and down-right (airbench's level-2 TTA: 6 views)."""
    def mirror(v: torch.Tensor) -> torch.Tensor:
        logits = model(v).float()
        return (logits + model(v.flip(3)).float()) / 2 if tta_flip else logits

    logits = mirror(x)
    if tta_translate:
        up_left, down_right = translate_views(x, tta_translate)
        logits = 0.5 * logits + 0.25 * (mirror(up_left) + mirror(down_right))
    return logits


@dataclass(frozen=True)
class Inference:
    """How a model is evaluated: its input normalization, precision (None: IEEE fp32) and test-time augmentation."""

    mean: torch.Tensor
    std: torch.Tensor
    amp: Optional[torch.dtype] = None
    tta_flip: bool = False
    tta_translate: int = 0


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, how: Inference,
                   batch_size: int = 1000) -> torch.Tensor:
    """Logits [N, C] (float32) for uint8 images [N, H, W, C], with the test-time augmentation of tta_logits."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with full_fp32(device) if how.amp is None else contextlib.nullcontext():
        for lo in range(0, images.shape[0], batch_size):
            x = normalize(images[lo:lo + batch_size].to(device), how.mean, how.std)
            with autocast(device, how.amp):
                out.append(tta_logits(model, x, how.tta_flip, how.tta_translate))
    return torch.cat(out)


def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    how: Inference,
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
    logits = predict_logits(model, images, how)
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
