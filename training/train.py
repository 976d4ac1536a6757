"""One training run, top to bottom: config -> data -> model -> epochs -> best.pt, results.md and plots.

The command line is training/cli.py; the step is training/engine.py. A run is the same code in one
process or in each rank under torchrun (training/distributed.py); only rank 0 prints and writes.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from contract.constants import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SIZE
from contract.provenance import git_commit, sha256_file
from contract.schemas import Checkpoint, Normalization, ResumeState

from . import distributed, models, report, streams, tracking
from .augment import normalize
from .checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .data import Split, prepare_data
from .distributed import DistInfo, PeerFailed
from .engine import Augmentation, Inference, Objective, TrainStep, batch_slices, evaluate, train_one_epoch
from .lookahead import Lookahead
from .optim import build_optimizer
from .runtime import amp_dtype, cuda_kernels, describe_device, peak_memory, pick_device, precision_name


@dataclass
class RunOptions:
    """How to run (not what to train): never stored in checkpoints, free to change on resume."""

    download: bool = False
    cache_dir: Optional[str] = None
    quiet: bool = False
    threads: Optional[int] = None
    dist_timeout: float = 600.0
    resume: Optional[Checkpoint] = None  # the last.pt to continue from
    resume_path: Optional[str] = None
    track: Optional[str] = None  # "tensorboard" or "mlflow" (training/tracking.py)
    track_uri: Optional[str] = None


@dataclass
class Run:
    """Everything one run carries from epoch to epoch."""

    cfg: TrainConfig
    opts: RunOptions
    info: DistInfo
    device: torch.device
    amp: Optional[torch.dtype]
    out_dir: Path
    say: Callable[..., None]
    train_set: Split
    val_set: Split
    test_set: Split
    val_source: str
    batch_size: int
    model: torch.nn.Module  # the plain network: what checkpoints hold
    trained: torch.nn.Module  # what the step calls: the model, or DDP around it
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    ema: Optional[torch.optim.swa_utils.AveragedModel]
    lookahead: Optional[Lookahead]
    teacher: Optional[torch.nn.Module]  # distillation: frozen, in eval mode
    mean: torch.Tensor  # [3], on the device
    std: torch.Tensor
    header: dict[str, Any]  # the Checkpoint fields every file of this run shares
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0})
    best_state: Optional[dict[str, Any]] = None
    start_epoch: int = 1
    train_seconds: float = 0.0
    rng: Optional[streams.Streams] = None  # order, augmentation (and, globally, dropout) randomness
    tracker: Optional[tracking.Tracker] = None  # rank 0 with --track only

    @property
    def evaluated(self) -> torch.nn.Module:
        """What validation sees and best.pt holds: the weight average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def per_rank(self) -> int:
        return len(self.train_set) // self.info.world_size

    @property
    def steps_per_epoch(self) -> int:
        return len(batch_slices(self.per_rank, self.batch_size))


def train(cfg: TrainConfig, opts: RunOptions, info: DistInfo = DistInfo()) -> int:
    """Train to the end (0), or to an interrupt (130, resumable from last.pt)."""
    try:
        device = pick_device(cfg)
        amp = amp_dtype(cfg.precision, device)
        if cfg.sync_bn and info.enabled and device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on the CPU")
        if opts.resume is not None:
            # The shards, the global batch and (for OneCycle) the step count all follow from the process count.
            trained_by = int(opts.resume.provenance.get("processes", 1))
            if trained_by != info.world_size:
                raise ConfigError(f"{opts.resume_path} was trained by {trained_by} process(es); resume it with the "
                                  f"same number (this run has {info.world_size})")
        distributed.set_threads(info, opts.threads)
    except (ConfigError, CheckpointError):
        if info.local_rank:
            raise PeerFailed() from None  # same command line and files as local rank 0, which reports it
        raise
    device = distributed.rank_device(device, info)
    with cuda_kernels(device, cfg.deterministic), distributed.process_group(info, device, opts.dist_timeout):
        run = start_run(cfg, opts, info, device, amp)
        status = "FAILED"
        try:
            if opts.track and info.is_main:
                run.tracker = tracking.open_tracker(opts.track, opts.track_uri, run.out_dir, run.header,
                                                    run.start_epoch)
            if not run_epochs(run):
                status = "KILLED"
                return 130
            code = finish(run)
            status = "FINISHED"
            return code
        finally:
            if run.tracker is not None:
                run.tracker.close(status)


def _load_data(cfg: TrainConfig, opts: RunOptions, info: DistInfo) -> tuple[Split, Split, Split, str]:
    train_set, val_set, test_set, val_source = prepare_data(cfg, opts.download, opts.cache_dir)
    if not info.enabled and len(train_set) < 2:
        raise ConfigError("training needs at least 2 images")
    if info.enabled and len(train_set) < 2 * info.world_size:
        raise ConfigError(f"training needs at least 2 images per process ({len(train_set)} for {info.world_size})")
    if info.enabled and min(len(val_set), len(test_set)) < info.world_size:
        raise ConfigError(f"validation and test need at least one image per process ({info.world_size})")
    return train_set, val_set, test_set, val_source


def load_teacher(cfg: TrainConfig, train_set: Split,
                 device: torch.device) -> tuple[Optional[torch.nn.Module], Optional[dict[str, Any]]]:
    """(teacher network, its provenance) for distillation, or (None, None). CheckpointError when the teacher
    cannot teach this student: another class list or input size, or another normalization."""
    if not cfg.teacher:
        return None, None
    ckpt = load_checkpoint(cfg.teacher)
    if list(ckpt.classes) != list(train_set.classes):
        raise CheckpointError(f"teacher {cfg.teacher} predicts {len(ckpt.classes)} classes {ckpt.classes}; the "
                              f"student learns {len(train_set.classes)}: {train_set.classes}")
    norm = ckpt.normalization
    if norm.input_size != IMAGE_SIZE or tuple(norm.mean) != CIFAR10_MEAN or tuple(norm.std) != CIFAR10_STD:
        raise CheckpointError(f"teacher {cfg.teacher} takes {norm.input_size}x{norm.input_size} images normalized "
                              f"with mean {norm.mean} and std {norm.std}; the student "
                              f"{IMAGE_SIZE}x{IMAGE_SIZE} with {CIFAR10_MEAN} and {CIFAR10_STD}")
    teacher = build_model(ckpt, cfg.teacher).to(device, memory_format=torch.channels_last).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    metrics = ckpt.metrics or {}
    return teacher, {"path": str(Path(cfg.teacher).resolve()), "sha256": sha256_file(cfg.teacher),
                     "arch": ckpt.arch, "test_acc": metrics.get("test_acc"), "recipe": ckpt.config.get("recipe")}


def start_run(cfg: TrainConfig, opts: RunOptions, info: DistInfo, device: torch.device,
              amp: Optional[torch.dtype]) -> Run:
    """Data, model, optimizer and (when resuming) the state of the last finished epoch."""
    out_dir = Path(cfg.checkpoint_dir)
    if info.is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create --checkpoint-dir {out_dir}: {exc.strerror or exc}") from None
    train_set, val_set, test_set, val_source = distributed.local_main_first(
        info, device, lambda: _load_data(cfg, opts, info))
    batch_size = cfg.resolved_batch_size(device.type == "cuda")
    if opts.resume is not None and cfg.batch_size is None:
        # A recipe without a batch size takes the device's (64 on CPU, 128 on CUDA); a run resumed on the other
        # kind of device keeps the batch it started with.
        batch_size = int(opts.resume.provenance.get("batch_size", batch_size))

    teacher, teacher_info = load_teacher(cfg, train_set, device)
    torch.manual_seed(cfg.seed)
    args = models.model_args(cfg.model, len(train_set.classes), cfg.dropout, cfg.drop_path, cfg.dropblock,
                             cfg.dropblock_size, cfg.width)
    model = models.create(cfg.model, **args)
    mean, std = torch.tensor(CIFAR10_MEAN, device=device), torch.tensor(CIFAR10_STD, device=device)
    if opts.resume is None:
        # Seeded and from the same images on every rank, so all ranks start from the same weights.
        sample = train_set.images[torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))
                                  [:5000]]
        models.prepare(model, normalize(sample, mean.cpu(), std.cpu()))
    if cfg.sync_bn and info.enabled:
        # Same parameter and buffer names as BatchNorm2d, so checkpoints still load into the plain network.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    steps_per_epoch = len(batch_slices(len(train_set) // info.world_size, batch_size))
    optimizer, scheduler = build_optimizer(cfg, model, steps_per_epoch)
    ema = None
    if cfg.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    lookahead = None
    if cfg.lookahead_every:
        lookahead = Lookahead(cfg.lookahead_every, cfg.lookahead_decay, cfg.lookahead_power,
                              cfg.epochs * steps_per_epoch)

    provenance = {
        "git_commit": git_commit(), "torch": str(torch.__version__), "batch_size": batch_size,
        "dataset": {"path": str(Path(cfg.data).resolve()), "train_images": len(train_set),
                    "val_images": len(val_set), "test_images": len(test_set), "val_source": val_source},
    }
    if info.enabled:
        provenance["processes"] = info.world_size
        provenance["backend"] = torch.distributed.get_backend()
    if teacher_info:
        provenance["teacher"] = teacher_info
    header = {"arch": cfg.model, "model_args": args, "config": cfg.to_dict(),
              "classes": list(train_set.classes), "provenance": provenance,
              "normalization": Normalization(CIFAR10_MEAN, CIFAR10_STD, IMAGE_SIZE)}
    quiet = opts.quiet or not info.is_main
    run = Run(
        cfg=cfg, opts=opts, info=info, device=device, amp=amp, out_dir=out_dir,
        say=(lambda *a: None) if quiet else print,
        train_set=train_set, val_set=val_set, test_set=test_set, val_source=val_source, batch_size=batch_size,
        model=model, trained=model, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type) if amp == torch.float16 else None, ema=ema,
        lookahead=lookahead, teacher=teacher, mean=mean, std=std, header=header,
    )
    if opts.resume is not None:
        _restore(run, opts.resume.resume)
        run.say(f"resuming from {opts.resume_path} after epoch {run.start_epoch - 1}")
    else:
        run.rng = streams.start(cfg.seed, device, info)
    if info.enabled:
        # DDP wraps the model only to train; run.model stays the plain network that checkpoints hold.
        run.trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return run


def _restore(run: Run, state: ResumeState) -> None:
    run.model.load_state_dict(run.opts.resume.model)
    run.optimizer.load_state_dict(state.optimizer)
    run.scheduler.load_state_dict(state.scheduler)
    if run.scaler is not None and state.scaler:
        run.scaler.load_state_dict(state.scaler)
    if run.ema is not None:
        run.ema.load_state_dict(state.ema)
    if run.lookahead is not None:
        run.lookahead.load_state_dict(state.ema, run.device)  # last.pt keeps the lookahead state as its "ema"
    run.history = list(state.history)
    run.best = dict(state.best)
    run.best_state = state.best_model
    run.start_epoch = int(run.opts.resume.epoch) + 1
    run.train_seconds = float(state.train_seconds)
    run.rng, why = streams.restore(state.rng, run.cfg.seed, run.start_epoch - 1, run.device, run.info)
    if why:
        run.say(f"note: {why}")


def save_last(run: Run, epoch: int) -> None:
    """last.pt: this epoch's weights and everything a resumed run needs to continue exactly."""
    rng = streams.state(run.rng, run.device, run.info)  # a collective under DDP: before the rank check
    if not run.info.is_main:
        return
    state = ResumeState(
        optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(), history=run.history,
        best=run.best, best_model=run.best_state, train_seconds=run.train_seconds, rng=rng,
        scaler=run.scaler.state_dict() if run.scaler else None,
        ema=(run.ema.state_dict() if run.ema is not None
             else run.lookahead.state_dict() if run.lookahead is not None else None))
    save_checkpoint(run.out_dir / "last.pt", Checkpoint(**run.header, model=run.model.state_dict(), epoch=epoch,
                                                        resume=state))


def _describe(run: Run) -> str:
    batch = f"batch {run.batch_size}"
    if run.info.enabled:
        batch = (f"{run.info.world_size} processes ({run.header['provenance']['backend']}) x batch {run.batch_size} "
                 f"= global batch {run.info.world_size * run.batch_size}{', SyncBatchNorm' if run.cfg.sync_bn else ''}")
    params = sum(p.numel() for p in run.model.parameters())
    return (f"training {type(run.model).__name__} ({params:,} parameters) on {len(run.train_set):,} images, "
            f"{len(run.train_set.classes)} classes | {describe_device(run.device)}, {precision_name(run.amp)}, "
            f"{batch}, recipe {run.cfg.recipe} | validation: {run.val_source}")


class Progress:
    """A tqdm bar over one epoch's images (only on an interactive rank 0), fed by train_one_epoch's on_step."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)
        self.seen = 0
        self.started = time.perf_counter()

    def __call__(self, step: int, seen: int, loss: float, acc: float) -> None:
        if self.bar is None:
            return
        self.bar.update(seen - self.seen)
        self.seen = seen
        self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{100 * acc:.1f}%",
                             img_s=f"{seen / (time.perf_counter() - self.started):,.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_epochs(run: Run) -> bool:
    """Train from run.start_epoch to the last epoch; False when interrupted (last.pt holds the last one)."""
    cfg = run.cfg
    images, labels = run.train_set.images.to(run.device), run.train_set.labels.to(run.device)
    val_images, val_labels = run.val_set.images.to(run.device), run.val_set.labels.to(run.device)
    # Alternating flip: a seeded orientation per image, reversed in every other epoch.
    first_flip = (torch.rand(len(run.train_set), generator=torch.Generator().manual_seed(cfg.seed)) < 0.5
                  ).to(run.device) if cfg.alternate_flip else None
    step = TrainStep(run.trained, run.optimizer, run.scheduler, run.batch_size, run.mean, run.std, run.amp,
                     generator=run.rng.augment, order_generator=run.rng.order,
                     objective=Objective(cfg.label_smoothing, run.teacher, cfg.distill_weight, cfg.distill_temperature),
                     scaler=run.scaler, schedule_per_batch=cfg.schedule == "onecycle", ema=run.ema,
                     lookahead=run.lookahead, shard=run.info.shard)
    show_bars = not run.opts.quiet and run.info.is_main and sys.stderr.isatty()
    run.say(_describe(run))
    if run.opts.resume is None:
        save_last(run, 0)  # so that an interrupt during the first epoch still leaves a resumable last.pt
    try:
        for epoch in range(run.start_epoch, cfg.epochs + 1):
            epoch_start = time.perf_counter()
            lr = run.optimizer.param_groups[0]["lr"]
            progress = Progress(run.per_rank, f"epoch {epoch}/{cfg.epochs}", show_bars)
            mirrored = first_flip ^ bool(epoch % 2 == 0) if first_flip is not None else None
            aug = Augmentation(cfg.crop_padding, cfg.pad_mode, cfg.flip, mirrored, cfg.cutout, cfg.mixup_alpha,
                               cfg.cutmix_alpha, cfg.mix_prob, cfg.corrupt_prob)
            stats = train_one_epoch(
                step, images, labels, aug=aug, lookahead_active=epoch >= cfg.lookahead_start_epoch,
                frozen=models.frozen_parameters(run.model, epoch, cfg.whiten_bias_epochs), on_step=progress)
            progress.close()
            val = None
            if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
                distributed.broadcast_buffers(run.evaluated)
                # Selecting "best" weights must see what ships (the recipe's TTA); with keep="last" the figure
                # only draws the curves, and the final test of finish() measures the TTA.
                tta = cfg.keep == "best"
                val = evaluate(run.evaluated, val_images, val_labels,
                               Inference(run.mean, run.std, run.amp, tta_flip=cfg.tta_flip and tta,
                                         tta_translate=cfg.tta_translate if tta else 0),
                               num_classes=len(run.train_set.classes), shard=run.info.shard)
            _record_epoch(run, epoch, lr, stats, val, time.perf_counter() - epoch_start)
    except KeyboardInterrupt:
        if run.info.is_main:
            done = run.history[-1]["epoch"] if run.history else run.start_epoch - 1
            print(f"\ninterrupted: {run.out_dir / 'last.pt'} holds the state after epoch {done}; "
                  f"continue with --resume {run.out_dir / 'last.pt'}", file=sys.stderr)
        return False
    return True


def _record_epoch(run: Run, epoch: int, lr: float, stats: dict, val: Optional[dict], epoch_seconds: float) -> None:
    """History, best.pt when it changed, last.pt, history.json and the epoch's line (val None: not validated)."""
    run.train_seconds += epoch_seconds  # training + validation
    run.history.append({
        "epoch": epoch, "lr": lr, "train_loss": stats["loss"], "train_acc": stats["acc"],
        "val_loss": val["loss"] if val else None, "val_acc": val["acc"] if val else None,
        "seconds": stats["seconds"], "img_s": stats["img_s"], "epoch_seconds": epoch_seconds,
        "samples": stats["samples"],
    })
    # val["acc"] is a ratio of all-reduced integer counts, identical on every rank, so all ranks pick
    # the same best epoch (and keep the same best_state for last.pt and finish()).
    if run.cfg.keep == "best":
        chosen = val is not None and val["acc"] > run.best["val_acc"]
    else:
        chosen = epoch == run.cfg.epochs
    if chosen:
        run.best = {"val_acc": val["acc"], "val_loss": val["loss"], "epoch": epoch,
                    "train_acc": stats["acc"], "train_loss": stats["loss"]}
        run.best_state = copy.deepcopy(run.evaluated.state_dict())
        if run.info.is_main:
            save_checkpoint(run.out_dir / "best.pt", Checkpoint(**run.header, model=run.best_state, epoch=epoch,
                                                                metrics=run.best))
    save_last(run, epoch)
    if run.info.is_main:
        report.write_history(run.out_dir, run.history)
    if run.tracker is not None:
        run.tracker.epoch(run.history[-1])
    shown = f"val loss {val['loss']:.4f} acc {100 * val['acc']:6.2f}%" if val else "(not validated)"
    run.say(f"epoch {epoch:3d}/{run.cfg.epochs}  train loss {stats['loss']:.4f} acc {100 * stats['acc']:6.2f}%  "
            f"| {shown}  | lr {lr:.2e}  {stats['seconds']:5.1f}s {stats['img_s']:,.0f} img/s"
            + ("  *best" if run.best["epoch"] == epoch and run.cfg.keep == "best" else ""))


def finish(run: Run) -> int:
    """Test best.pt once in fp32 (what export will ship), then write the reports (rank 0)."""
    if run.best_state is None:
        raise CheckpointError("no epoch was trained, so there is no best model to evaluate")
    run.model.load_state_dict(run.best_state)
    classes = run.train_set.classes
    test = evaluate(run.model, run.test_set.images.to(run.device), run.test_set.labels,
                    Inference(run.mean, run.std, tta_flip=run.cfg.tta_flip, tta_translate=run.cfg.tta_translate),
                    num_classes=len(classes), shard=run.info.shard)
    if not run.info.is_main:
        return 0
    per_class = report.per_class_accuracy(test["confusion"], classes)
    best = run.best
    metrics = {**best, "test_acc": test["acc"], "test_loss": test["loss"], "test_images": len(run.test_set),
               "per_class_test_acc": per_class}
    last = run.history[-1]
    summary = {
        "device": describe_device(run.device), "precision": precision_name(run.amp), "batch_size": run.batch_size,
        "processes": run.info.world_size, "recipe": run.cfg.recipe, "epochs_run": last["epoch"],
        "train_seconds": run.train_seconds,
        **peak_memory(run.device), "final_train_acc": last["train_acc"], "final_val_acc": last["val_acc"],
        "best_val_acc": best["val_acc"], "best_epoch": best["epoch"], "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"], "test_acc": test["acc"], "test_images": len(run.test_set),
        "tta_flip": run.cfg.tta_flip, "tta_translate": run.cfg.tta_translate, "val_source": run.val_source,
        "model": run.cfg.model, "keep": run.cfg.keep,
    }
    save_checkpoint(run.out_dir / "best.pt", Checkpoint(**run.header, model=run.best_state, epoch=best["epoch"],
                                                        metrics=metrics, summary=summary))
    report.plot_curves(run.out_dir, run.history)
    report.plot_confusion(run.out_dir, test["confusion"], classes,
                          f"best.pt (epoch {best['epoch']}) on the test split: {100 * test['acc']:.2f}%")
    report.write_results(run.out_dir, summary, per_class)
    if run.tracker is not None:
        best_pt = run.out_dir / "best.pt"
        run.tracker.finish(metrics, summary, {"path": str(best_pt.resolve()), "sha256": sha256_file(best_pt),
                                              "epoch": best["epoch"], "arch": run.cfg.model,
                                              "provenance": run.header["provenance"]}, run.out_dir)
    chosen = (f"best validation accuracy {100 * best['val_acc']:.2f}% (epoch {best['epoch']})" if run.cfg.keep == "best"
              else f"final epoch {best['epoch']} kept (validation {100 * best['val_acc']:.2f}% without TTA)")
    print(f"done: {chosen}, test accuracy of best.pt {100 * test['acc']:.2f}%{report.tta_name(summary)} | "
          f"{run.train_seconds:.1f}s training, "
          f"peak RSS {summary['peak_rss_mib']:.0f} MiB | outputs in {run.out_dir}/")
    return 0
