"""The training stage's command line: `python -m training` / `cifar10-train`.

get_args_parser() builds the flags, main(args) turns them into a TrainConfig (or a resumed one) and runs
training/train.py; user errors end as one `error: ...` line and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import distributed, report
from .checkpoint import CheckpointError, build_model, config_of, load_checkpoint
from .config import MODELS, PLACEMENT_FIELDS, RECIPE_NAMES, RECIPES, ConfigError, TrainConfig
from .data import LAYOUTS, DataError, load_split
from .distributed import DistInfo, PeerFailed
from .engine import Inference, evaluate
from .runtime import cuda_kernels, describe_device, pick_device
from .train import RunOptions, train

# Options that may differ from the stored config when resuming: where things are, how (the device, its kernels),
# and (for the step schedule, which does not depend on the run length) how many epochs to run in all.
RESUME_OVERRIDABLE = PLACEMENT_FIELDS | {"epochs"}
# Flags about how to run, not what to train: never part of the TrainConfig.
RUN_FLAGS = {"download", "resume", "eval_only", "cache_dir", "quiet", "threads", "dist_timeout", "track", "track_uri"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cifar10-train",
        description="Train a network on CIFAR-10 (or any ImageFolder tree) and keep the best checkpoint. "
        "Without flags: the design report's SimpleCNN and recipe.",
        argument_default=argparse.SUPPRESS,  # only flags the user gave override the recipe
    )
    p.add_argument("--data", metavar="DIR", help=f"dataset: {LAYOUTS} (default: $CIFAR10_DATA or ./data)")
    p.add_argument("--download", action="store_true", default=False,
                   help="download CIFAR-10 into --data when it is not there")
    p.add_argument("--model", choices=list(MODELS),
                   help="the network: simplecnn (the design report's, default), airbench (airbench94's "
                   "whitened conv net, about 10x the compute) or residual (airbench96's residual conv groups, "
                   "about 1.4x airbench); alone, it trains with that network's own recipe")
    recipes = "; ".join(f"{m}: {', '.join(r)}" for m, r in RECIPES.items())
    p.add_argument("--recipe", choices=list(RECIPE_NAMES), help=f"a recipe of the chosen network ({recipes}). "
                   "simplecnn default: the design report's; fast: SGD-nesterov + OneCycle + label smoothing + "
                   "light augmentation, no dropout + flip TTA; distill: fast plus a teacher's soft labels "
                   "(needs --teacher); robust: fast plus Cutout and noise/blur on a quarter of the images "
                   "(docs/experiments.md). airbench default: its tuned 10-epoch recipe (see docs/training.md); "
                   "robust: 16 epochs with noise/blur on a fifth of the images")
    p.add_argument("--teacher", metavar="CHECKPOINT",
                   help="distillation: a best.pt of any network with the same classes, run frozen on every batch")
    p.add_argument("--distill-weight", type=float, metavar="W",
                   help="weight of the teacher's soft labels in the loss (distill recipe: 0.9)")
    p.add_argument("--distill-temperature", type=float, metavar="T", help="softmax temperature of both (4)")
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
    a = p.add_argument_group("regularizing augmentations (all off unless given; docs/training.md)")
    a.add_argument("--cutout", type=int, metavar="PX", help="Cutout: one PX x PX square per image set to the mean")
    a.add_argument("--mixup", dest="mixup_alpha", type=float, metavar="ALPHA",
                   help="MixUp with lam ~ Beta(ALPHA, ALPHA) (e.g. 0.2-1.0)")
    a.add_argument("--cutmix", dest="cutmix_alpha", type=float, metavar="ALPHA",
                   help="CutMix with lam ~ Beta(ALPHA, ALPHA) (e.g. 1.0); with --mixup, each mixed batch is one of "
                   "the two at even odds")
    a.add_argument("--mix-prob", type=float, metavar="P", help="share of batches MixUp/CutMix mixes (default 1)")
    a.add_argument("--corrupt-prob", type=float, metavar="P",
                   help="corruption-style augmentation: Gaussian noise or blur on each image with probability P")
    a.add_argument("--drop-path", type=float, metavar="P",
                   help="residual network: stochastic depth, each image skips the last group's residual branch with "
                   "probability P (earlier groups linearly less)")
    a.add_argument("--dropblock", type=float, metavar="P",
                   help="residual network: DropBlock, about P of the first two groups' positions dropped in blocks")
    a.add_argument("--dropblock-size", type=int, metavar="PX", help="DropBlock's block side (default 3)")
    a.add_argument("--width", type=float, metavar="W",
                   help="residual network: each group's channels (64/256/256) times W, rounded to a multiple of 8 "
                   "(default 1; the time grows with W squared)")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction,
                   help="evaluate on each image and its mirror (averaged logits)")
    p.add_argument("--tta-translate", type=int, metavar="PX",
                   help="with --tta-flip, also average the views shifted PX pixels up-left and down-right "
                   "(airbench's 6-view TTA; 0 = off)")
    p.add_argument("--no-cuda", dest="use_cuda", action="store_false", help="train on the CPU even if CUDA is present")
    p.add_argument("--cuda", dest="use_cuda", action="store_true",
                   help="use CUDA when present (the default; with --resume, continues a --no-cuda run on the GPU)")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                   help="CUDA: deterministic cuDNN/cuBLAS kernels, so the same flags (and a resume) give the same "
                   "result bit for bit, as on the CPU, where runs always are; slower (default: cuDNN picks the "
                   "fastest kernels, and CUDA runs differ in the last bits)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto (the default): bf16 autocast on CPUs with native bf16 and on CUDA GPUs that support "
                   "it, fp16 on other GPUs, else fp32; fp32 for the report's exact numerics")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="where outputs go (default ./checkpoints)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--keep", choices=["best", "last"],
                   help="which weights best.pt ships: best (highest validation accuracy, the report's rule; "
                   "default for simplecnn) or last (the final epoch's: no selection; airbench's)")
    p.add_argument("--val-every", type=int, metavar="N",
                   help="validate every N epochs and after the last (default 1; airbench 5)")
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
    p.add_argument("--track", choices=["tensorboard", "mlflow"], default=None,
                   help="also log the config, per-epoch metrics and best.pt's provenance to TensorBoard or MLflow "
                   "(the [track] extra; docs/training.md)")
    p.add_argument("--track-uri", metavar="URI", default=None,
                   help="tensorboard: the log folder (default CHECKPOINT_DIR/tensorboard); mlflow: the tracking URI "
                   "(default $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
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
    return {k: v for k, v in vars(args).items() if k not in RUN_FLAGS}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = _overrides(args)
    return TrainConfig.for_recipe(overrides.pop("recipe", "default"), overrides.pop("model", "simplecnn"),
                                  **overrides)


def resume_config(args: argparse.Namespace, stored: TrainConfig, path: str) -> TrainConfig:
    """The stored config with the flags a resumed run may change; any other differing flag is an error."""
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


def run_eval_only(path: str, args: argparse.Namespace) -> int:
    """--eval-only: the checkpoint's fp32 accuracy (with its TTA) on the test split, per class too."""
    ckpt = load_checkpoint(path)
    cfg = config_of(ckpt, path)
    model = build_model(ckpt, path)
    data = getattr(args, "data", cfg.data)
    device = pick_device(TrainConfig.from_dict({**cfg.to_dict(), "use_cuda": getattr(args, "use_cuda", True)}))
    test = load_split(data, "test", cache_dir=args.cache_dir)
    if test.classes != list(ckpt.classes):
        raise DataError(f"the test split of {data} has classes {test.classes}, the checkpoint {ckpt.classes}")
    # The memory format training evaluated in: on CUDA another layout picks other kernels.
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    mean = torch.tensor(ckpt.normalization.mean, device=device)
    std = torch.tensor(ckpt.normalization.std, device=device)
    with cuda_kernels(device, deterministic=True):  # the same figure on every call
        result = evaluate(model, test.images.to(device), test.labels,
                          Inference(mean, std, tta_flip=cfg.tta_flip, tta_translate=cfg.tta_translate))
    tta = ", flip + translate TTA" if cfg.tta_translate else ", flip TTA" if cfg.tta_flip else ""
    print(f"{path}: test accuracy {100 * result['acc']:.2f}%  loss {result['loss']:.4f}  "
          f"({len(test)} images, {ckpt.arch}, fp32{tta}, {describe_device(device)})")
    for name, acc in report.per_class_accuracy(result["confusion"], test.classes).items():
        print(f"  {name:>12s}  {100 * acc:5.1f}%")
    return 0


def run_options(args: argparse.Namespace) -> RunOptions:
    """Flags about how to run, with the checkpoint to resume from loaded (onto the CPU: each rank moves it)."""
    if not 0 < args.dist_timeout < 10**6:  # also refuses nan and inf, which timedelta cannot hold
        raise ConfigError(f"--dist-timeout must be a positive number of seconds below 1,000,000, "
                          f"got {args.dist_timeout}")
    if args.track_uri and not args.track:
        raise ConfigError("--track-uri says where --track logs: give --track tensorboard or --track mlflow too")
    opts = RunOptions(download=args.download, cache_dir=args.cache_dir, quiet=args.quiet, threads=args.threads,
                      dist_timeout=args.dist_timeout, resume_path=args.resume, track=args.track,
                      track_uri=args.track_uri)
    if args.resume:
        opts.resume = load_checkpoint(args.resume)
        if opts.resume.resume is None:
            raise CheckpointError(f"{args.resume} has no optimizer state; resume from a last.pt")
    return opts


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
        try:
            opts = run_options(args)
            cfg = (resume_config(args, config_of(opts.resume, args.resume), args.resume) if opts.resume
                   else config_from_args(args))
        except (ConfigError, CheckpointError):
            if info.local_rank:
                raise PeerFailed() from None  # same command line and files as local rank 0, which reports it
            raise
        return train(cfg, opts, info)
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


def cli() -> None:
    sys.exit(main(get_args_parser().parse_args()))
