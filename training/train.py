"""The training stage's command line: `python -m training` / `cifar10-train`."""
from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from . import distributed, report
from .checkpoint import CheckpointError, build_model, config_of, load_checkpoint, save_checkpoint
from .config import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SIZE, RECIPES, ConfigError, TrainConfig
from .data import LAYOUTS, DataError, Split, load_split
from .distributed import DistInfo, PeerFailed
from .engine import batch_slices, evaluate, train_one_epoch
from .model import SimpleCNN
from .runtime import amp_dtype, describe_device, peak_memory, pick_device, precision_name

# Options that may differ from the stored config when resuming: where things are, and (for the
# step schedule, which does not depend on the run length) how many epochs to run in all.
RESUME_OVERRIDABLE = {"data", "checkpoint_dir", "use_cuda", "epochs"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cifar10-train",
        description="Train SimpleCNN on CIFAR-10 (or any ImageFolder tree) and keep the best checkpoint.",
        argument_default=argparse.SUPPRESS,  # only flags the user gave override the recipe
    )
    p.add_argument("--data", metavar="DIR", help=f"dataset: {LAYOUTS} (default: $CIFAR10_DATA or ./data)")
    p.add_argument("--download", action="store_true", default=False,
                   help="download CIFAR-10 into --data when it is not there")
    p.add_argument("--recipe", choices=list(RECIPES), help="default: the design report's recipe; "
                   "fast: SGD-nesterov + OneCycle + label smoothing + light augmentation, no dropout + flip TTA "
                   "(see README)")
    p.add_argument("--epochs", type=int, help="epochs to train (default 20)")
    p.add_argument("--batch-size", type=int, help="batch size per process (default 128 on CUDA, 64 on CPU); "
                   "under torchrun the global batch is this times the number of processes")
    p.add_argument("--lr", type=float, help="(peak) learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=["adam", "sgd"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--ema-decay", type=float, help="keep an exponential moving average of the weights "
                   "with this decay per step and validate/save it (0 = off)")
    p.add_argument("--dropout", type=float, metavar="P",
                   help="dropout probability before the last layer while training (default 0.5; "
                   "identity at inference, so the exported model is the same)")
    p.add_argument("--crop-padding", type=int, metavar="PX",
                   help="zero padding before the random 32x32 crop (default 4; the fast recipe uses less)")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction,
                   help="evaluate on each image and its mirror (averaged logits)")
    p.add_argument("--no-cuda", dest="use_cuda", action="store_false", help="train on the CPU even if CUDA is present")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on CPUs with native bf16 and on CUDA GPUs that support it, fp16 on "
                   "other GPUs, else fp32")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="where outputs go (default ./checkpoints)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--val-split", type=int, metavar="N",
                   help="hold out N training images for validation and test best.pt once at the end "
                   "(default 0: validate on the test split, as in the design report)")
    p.add_argument("--limit-train", type=int, metavar="N", help="train on a random subset of N images")
    p.add_argument("--resume", metavar="CHECKPOINT", default=None, help="continue from a last.pt")
    p.add_argument("--eval-only", metavar="CHECKPOINT", default=None,
                   help="evaluate a checkpoint on the test split and exit")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where decoded datasets are cached (default $CIFAR10_CACHE_DIR or ~/.cache/cifar10-service)")
    p.add_argument("--quiet", action="store_true", default=False, help="no progress bars or per-epoch lines")
    d = p.add_argument_group("multi-process training (start with torchrun, e.g. "
                             "torchrun --nproc_per_node=2 -m training)")
    d.add_argument("--sync-bn", action="store_true", help="synchronize BatchNorm statistics across processes "
                   "(CUDA only; no effect in a single process)")
    d.add_argument("--threads", type=int, metavar="N", default=None,
                   help="intra-op CPU threads per process (default: $OMP_NUM_THREADS when set, else the CPUs "
                   "divided among the processes on this node; torchrun sets OMP_NUM_THREADS=1 when it starts "
                   "several processes per node, so pass --threads to give each more)")
    d.add_argument("--dist-timeout", type=float, metavar="SECONDS", default=600.0,
                   help="how long a process waits for the others (to join, or in a collective) before the job "
                   "fails (default 600; the first decode of a large dataset on local rank 0 must fit in it)")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"download", "resume", "eval_only", "cache_dir", "quiet", "threads", "dist_timeout"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = _overrides(args)
    return TrainConfig.for_recipe(overrides.pop("recipe", "default"), **overrides)


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _subset(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.images[idx], split.labels[idx], split.classes)


def prepare_data(cfg: TrainConfig, download: bool, cache_dir: Optional[str]) -> tuple[Split, Split, Split, str]:
    """(train, val, test, description of val). Held-out and limited subsets are seeded."""
    train = load_split(cfg.data, "train", download=download, cache_dir=cache_dir)
    test = load_split(cfg.data, "test", download=False, cache_dir=cache_dir)
    if test.classes != train.classes:
        raise DataError(f"train and test splits of {cfg.data} have different class folders")
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train), generator=g)
    if cfg.val_split:
        if cfg.val_split >= len(train):
            raise ConfigError(f"--val-split {cfg.val_split} leaves no training images (the split has {len(train)})")
        val = _subset(train, order[:cfg.val_split])
        order = order[cfg.val_split:]
        val_source = f"{cfg.val_split} images held out of the training split"
    else:
        val = test
        val_source = "the test split (as in the design report)"
    if cfg.limit_train:
        order = order[:cfg.limit_train]
    if cfg.val_split or cfg.limit_train:
        train = _subset(train, order.sort().values)
    return train, val, test, val_source


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, steps_per_epoch: int):
    # Fused kernels update all parameters in one op: about 15% faster steps for this small CNN on CPU.
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, fused=True)
    if cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=cfg.warmup_frac,
            div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
            anneal_strategy="linear", cycle_momentum=False)
    return opt, sched


def _seed_epoch(seed: int, epoch: int, device: torch.device,
                info: DistInfo = DistInfo()) -> tuple[Optional[torch.Generator], torch.Generator]:
    """(generator of the sample order, or None to use the second; generator of the augmentation)."""
    # Every epoch's randomness (order, augmentation, dropout) derives from (seed, epoch) alone,
    # so a resumed run replays exactly what an uninterrupted one would have done.
    epoch_seed = seed * 1_000_003 + epoch
    if not info.enabled:
        torch.manual_seed(epoch_seed)
        return None, torch.Generator(device=device).manual_seed(epoch_seed)
    # Under DDP every rank draws the same order (and takes its slice of it), while augmentation and
    # dropout get a stream per rank so that ranks do not repeat each other's crops, flips and masks.
    rank_seed = int(torch.randint(2**62, (info.world_size,),
                                  generator=torch.Generator().manual_seed(epoch_seed))[info.rank])
    torch.manual_seed(rank_seed)
    return (torch.Generator(device=device).manual_seed(epoch_seed),
            torch.Generator(device=device).manual_seed(rank_seed))


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


def run_eval_only(path: str, args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(path)
    cfg = config_of(ckpt, path)
    model = build_model(ckpt, path)
    data = getattr(args, "data", cfg.data)
    device = pick_device(TrainConfig.from_dict({**cfg.to_dict(), "use_cuda": getattr(args, "use_cuda", True)}))
    test = load_split(data, "test", cache_dir=args.cache_dir)
    classes = list(ckpt.get("classes") or [])
    if classes and test.classes != classes:
        raise DataError(f"the test split of {data} has classes {test.classes}, the checkpoint {classes}")
    model.to(device)
    norm = ckpt.get("normalization") or {"mean": CIFAR10_MEAN, "std": CIFAR10_STD}
    mean = torch.tensor(norm["mean"], device=device)
    std = torch.tensor(norm["std"], device=device)
    result = evaluate(model, test.images.to(device), test.labels, mean=mean, std=std, tta_flip=cfg.tta_flip)
    print(f"{path}: test accuracy {100 * result['acc']:.2f}%  loss {result['loss']:.4f}  "
          f"({len(test)} images, fp32{', flip TTA' if cfg.tta_flip else ''}, {describe_device(device)})")
    for name, acc in report.per_class_accuracy(result["confusion"], test.classes).items():
        print(f"  {name:>12s}  {100 * acc:5.1f}%")
    return 0


def _resume_config(args: argparse.Namespace, ckpt: dict, path: str) -> TrainConfig:
    stored = config_of(ckpt, path)
    overrides = _overrides(args)
    merged = stored.to_dict()
    for key, value in overrides.items():
        if key in RESUME_OVERRIDABLE and not (key == "epochs" and stored.schedule != "step"):
            merged[key] = value
        elif value != merged.get(key):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} {value} differs from the checkpoint's {merged.get(key)}; a resumed run "
                              f"keeps its stored config (only {', '.join(sorted(RESUME_OVERRIDABLE))} may change)")
    if "checkpoint_dir" not in overrides:
        merged["checkpoint_dir"] = str(Path(path).parent)
    return TrainConfig.from_dict(merged)


def main(args: argparse.Namespace) -> int:
    info = DistInfo()
    try:
        info = distributed.from_env()
        if args.eval_only:
            if info.enabled:
                if info.local_rank:
                    raise PeerFailed()  # local rank 0 says why
                raise ConfigError("--eval-only runs in one process; start it with python -m training, not torchrun")
            return run_eval_only(args.eval_only, args)
        return train(args, info)
    except PeerFailed:
        # The rank that failed reports why and exits, and torchrun then stops this one; leaving
        # first could get that rank stopped before its message is out.
        time.sleep(distributed.PEER_REPORT_GRACE_S)
        return 2
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"error: {_who(info)}{exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if not distributed.lost_peers(exc):
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {_who(info)}another process of this job stopped answering, so this one stops too "
              f"({detail}); torchrun's report names the rank that failed first", file=sys.stderr)
        return 1


def _who(info: DistInfo) -> str:
    return f"rank {info.rank}: " if info.enabled else ""


def _run_config(args: argparse.Namespace, info: DistInfo) -> tuple[TrainConfig, Optional[dict]]:
    if args.dist_timeout <= 0:
        raise ConfigError(f"--dist-timeout must be positive, got {args.dist_timeout}")
    # Onto the CPU, never onto the GPU it was saved from: each rank then copies it to its own device.
    resume_ckpt = load_checkpoint(args.resume) if args.resume else None
    if resume_ckpt is None:
        return config_from_args(args), None
    if "optimizer" not in resume_ckpt:
        raise CheckpointError(f"{args.resume} has no optimizer state; resume from a last.pt")
    cfg = _resume_config(args, resume_ckpt, args.resume)
    # The shards, the global batch and (for OneCycle) the step count all follow from the process count.
    trained_by = int((resume_ckpt.get("provenance") or {}).get("processes", 1))
    if trained_by != info.world_size:
        raise ConfigError(f"{args.resume} was trained by {trained_by} process(es); resume it with the same number "
                          f"(this run has {info.world_size})")
    return cfg, resume_ckpt


def train(args: argparse.Namespace, info: DistInfo = DistInfo()) -> int:
    try:
        cfg, resume_ckpt = _run_config(args, info)
        device = pick_device(cfg)
        amp = amp_dtype(cfg.precision, device)
        if cfg.sync_bn and info.enabled and device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on the CPU")
        distributed.set_threads(info, args.threads)
    except (ConfigError, CheckpointError):
        if info.local_rank:
            raise PeerFailed() from None  # same command line and files as local rank 0, which reports it
        raise
    device = distributed.rank_device(device, info)
    with distributed.process_group(info, device, args.dist_timeout):
        return _train(args, info, cfg, resume_ckpt, device, amp)


def _load_data(cfg: TrainConfig, args: argparse.Namespace, info: DistInfo) -> tuple[Split, Split, Split, str]:
    train_set, val_set, test_set, val_source = prepare_data(cfg, args.download, args.cache_dir)
    if not info.enabled and len(train_set) < 2:
        raise ConfigError("training needs at least 2 images")
    if info.enabled and len(train_set) < 2 * info.world_size:
        raise ConfigError(f"training needs at least 2 images per process ({len(train_set)} for {info.world_size})")
    if info.enabled and min(len(val_set), len(test_set)) < info.world_size:
        raise ConfigError(f"validation and test need at least one image per process ({info.world_size})")
    return train_set, val_set, test_set, val_source


def _train(args: argparse.Namespace, info: DistInfo, cfg: TrainConfig, resume_ckpt: Optional[dict],
           device: torch.device, amp: Optional[torch.dtype]) -> int:
    main_rank = info.is_main  # the only rank that prints and writes files
    out_dir = Path(cfg.checkpoint_dir)
    if main_rank:
        out_dir.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if args.quiet or not main_rank else print
    show_bars = not args.quiet and main_rank and sys.stderr.isatty()

    train_set, val_set, test_set, val_source = distributed.local_main_first(
        info, device, lambda: _load_data(cfg, args, info))
    classes = train_set.classes
    batch_size = cfg.resolved_batch_size(device.type == "cuda")
    per_rank = len(train_set) // info.world_size

    torch.manual_seed(cfg.seed)
    model = SimpleCNN(num_classes=len(classes), dropout=cfg.dropout)
    model_args = {"num_classes": len(classes), "dropout": cfg.dropout}
    if cfg.sync_bn and info.enabled:
        # Same parameter and buffer names as BatchNorm2d, so checkpoints still load into a plain SimpleCNN.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    steps_per_epoch = len(batch_slices(per_rank, batch_size))
    optimizer, scheduler = build_optimizer(cfg, model, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    ema = None
    if cfg.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    evaluated = ema.module if ema is not None else model  # what validation sees and best.pt holds

    mean = torch.tensor(CIFAR10_MEAN, device=device)
    std = torch.tensor(CIFAR10_STD, device=device)
    images, labels = train_set.images.to(device), train_set.labels.to(device)
    val_images, val_labels = val_set.images.to(device), val_set.labels.to(device)

    history: list[dict[str, Any]] = []
    best = {"val_acc": -1.0, "epoch": 0}
    best_state = None
    start_epoch, train_seconds = 1, 0.0
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        if scaler is not None and resume_ckpt.get("scaler"):
            scaler.load_state_dict(resume_ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(resume_ckpt["ema"])
        history = list(resume_ckpt.get("history", []))
        best = dict(resume_ckpt.get("best", best))
        best_state = resume_ckpt.get("best_model")
        start_epoch = int(resume_ckpt["epoch"]) + 1
        train_seconds = float(resume_ckpt.get("train_seconds", 0.0))
        say(f"resuming from {args.resume} after epoch {start_epoch - 1}")
    # `model` stays the plain SimpleCNN: it is what checkpoints hold. DDP wraps it only to train.
    trained = model
    if info.enabled:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    provenance = {
        "git_commit": git_commit(), "torch": str(torch.__version__),
        "dataset": {"path": str(Path(cfg.data).resolve()), "train_images": len(train_set),
                    "val_images": len(val_set), "test_images": len(test_set), "val_source": val_source},
    }
    if info.enabled:
        provenance["processes"] = info.world_size
        provenance["backend"] = torch.distributed.get_backend()
    common = {"config": cfg.to_dict(), "classes": classes, "model_args": model_args,
              "normalization": {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD), "input_size": IMAGE_SIZE},
              "provenance": provenance}

    def save_last(epoch: int) -> None:
        if not main_rank:
            return
        save_checkpoint(out_dir / "last.pt", {
            **common, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "ema": ema.state_dict() if ema is not None else None,
            "epoch": epoch, "history": history, "best": best, "best_model": best_state,
            "train_seconds": train_seconds,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
        })

    batch_desc = f"batch {batch_size}"
    if info.enabled:
        batch_desc = (f"{info.world_size} processes ({provenance['backend']}) x batch {batch_size} = global batch "
                      f"{info.world_size * batch_size}{', SyncBatchNorm' if cfg.sync_bn else ''}")
    say(f"training SimpleCNN ({sum(p.numel() for p in model.parameters()):,} parameters) on {len(train_set):,} "
        f"images, {len(classes)} classes | {describe_device(device)}, {precision_name(amp)}, {batch_desc}, "
        f"recipe {cfg.recipe} | validation: {val_source}")
    if resume_ckpt is None:
        save_last(0)  # so that an interrupt during the first epoch still leaves a resumable last.pt
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            epoch_start = time.perf_counter()
            order_generator, generator = _seed_epoch(cfg.seed, epoch, device, info)
            lr = optimizer.param_groups[0]["lr"]
            bar = _progress(per_rank, f"epoch {epoch}/{cfg.epochs}", show_bars)
            last_seen = [0]

            def on_step(step, seen, loss, acc, _bar=bar, _t=time.perf_counter()):
                if _bar is not None:
                    _bar.update(seen - last_seen[0])
                    last_seen[0] = seen
                    _bar.set_postfix(loss=f"{loss:.3f}", acc=f"{100 * acc:.1f}%",
                                     img_s=f"{seen / (time.perf_counter() - _t):,.0f}")

            stats = train_one_epoch(
                trained, optimizer, scheduler, images, labels, batch_size=batch_size, mean=mean, std=std,
                amp=amp, generator=generator, crop_padding=cfg.crop_padding, flip=cfg.flip,
                label_smoothing=cfg.label_smoothing, scaler=scaler,
                step_scheduler_per_batch=cfg.schedule == "onecycle", ema=ema, on_step=on_step,
                shard=info.shard, order_generator=order_generator)
            if bar is not None:
                bar.close()
            distributed.broadcast_buffers(evaluated)
            val = evaluate(evaluated, val_images, val_labels, mean=mean, std=std, amp=amp, tta_flip=cfg.tta_flip,
                           num_classes=len(classes), shard=info.shard)
            epoch_seconds = time.perf_counter() - epoch_start  # training + validation
            train_seconds += epoch_seconds
            history.append({
                "epoch": epoch, "lr": lr, "train_loss": stats["loss"], "train_acc": stats["acc"],
                "val_loss": val["loss"], "val_acc": val["acc"], "seconds": stats["seconds"],
                "img_s": stats["img_s"], "epoch_seconds": epoch_seconds, "samples": stats["samples"],
            })
            # val["acc"] is a ratio of all-reduced integer counts, identical on every rank, so all
            # ranks pick the same best epoch (and keep the same best_state for last.pt and finish()).
            if val["acc"] > best["val_acc"]:
                best = {"val_acc": val["acc"], "val_loss": val["loss"], "epoch": epoch,
                        "train_acc": stats["acc"], "train_loss": stats["loss"]}
                best_state = copy.deepcopy(evaluated.state_dict())
                if main_rank:
                    save_checkpoint(out_dir / "best.pt", {**common, "model": best_state, "epoch": epoch,
                                                          "metrics": best})
            save_last(epoch)
            if main_rank:
                report.write_history(out_dir, history)
            say(f"epoch {epoch:3d}/{cfg.epochs}  train loss {stats['loss']:.4f} acc {100 * stats['acc']:6.2f}%  "
                f"| val loss {val['loss']:.4f} acc {100 * val['acc']:6.2f}%  | lr {lr:.2e}  "
                f"{stats['seconds']:5.1f}s {stats['img_s']:,.0f} img/s" + ("  *best" if best["epoch"] == epoch else ""))
    except KeyboardInterrupt:
        # last.pt is written after every epoch, so it already holds the last finished one.
        if main_rank:
            done = history[-1]["epoch"] if history else start_epoch - 1
            print(f"\ninterrupted: {out_dir / 'last.pt'} holds the state after epoch {done}; "
                  f"continue with --resume {out_dir / 'last.pt'}", file=sys.stderr)
        return 130

    if best_state is None:
        raise CheckpointError("no epoch was trained, so there is no best model to evaluate")
    return finish(model, best_state, best, history, common, cfg, out_dir, device, amp, batch_size,
                  train_seconds, test_set, val_source, classes, info)


def finish(model, best_state, best, history, common, cfg, out_dir, device, amp, batch_size, train_seconds,
           test_set, val_source, classes, info: DistInfo = DistInfo()) -> int:
    """Test best.pt once in fp32 (what export will ship), then write the reports (rank 0)."""
    model.load_state_dict(best_state)
    mean = torch.tensor(CIFAR10_MEAN, device=device)
    std = torch.tensor(CIFAR10_STD, device=device)
    test = evaluate(model, test_set.images.to(device), test_set.labels, mean=mean, std=std,
                    tta_flip=cfg.tta_flip, num_classes=len(classes), shard=info.shard)
    if not info.is_main:
        return 0
    per_class = report.per_class_accuracy(test["confusion"], classes)
    metrics = {**best, "test_acc": test["acc"], "test_loss": test["loss"], "test_images": len(test_set),
               "per_class_test_acc": per_class}
    last = history[-1]
    summary = {
        "device": describe_device(device), "precision": precision_name(amp), "batch_size": batch_size,
        "processes": info.world_size, "recipe": cfg.recipe, "epochs_run": last["epoch"],
        "train_seconds": train_seconds,
        **peak_memory(device), "final_train_acc": last["train_acc"], "final_val_acc": last["val_acc"],
        "best_val_acc": best["val_acc"], "best_epoch": best["epoch"], "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"], "test_acc": test["acc"], "test_images": len(test_set),
        "tta_flip": cfg.tta_flip, "val_source": val_source,
    }
    save_checkpoint(out_dir / "best.pt", {**common, "model": best_state, "epoch": best["epoch"], "metrics": metrics,
                                          "summary": summary})
    report.plot_curves(out_dir, history)
    report.plot_confusion(out_dir, test["confusion"], classes,
                          f"best.pt (epoch {best['epoch']}) on the test split: {100 * test['acc']:.2f}%")
    report.write_results(out_dir, summary, per_class)
    print(f"done: best validation accuracy {100 * best['val_acc']:.2f}% (epoch {best['epoch']}), "
          f"test accuracy of best.pt {100 * test['acc']:.2f}% | {train_seconds:.1f}s training, "
          f"peak RSS {summary['peak_rss_mib']:.0f} MiB | outputs in {out_dir}/")
    return 0


def cli() -> None:
    sys.exit(main(get_args_parser().parse_args()))
