"""Learning rate x batch size sweep: `python -m training.sweep --lr 1e-3 5e-4 --batch-size 64 128 [training flags]`.

Every cell of the grid is one ordinary training run, called in this process one after another,
with its own checkpoint folder OUT/lr=<lr>_bs=<batch>/. A cell is finished when its result.json
exists; re-running the same command skips finished cells and resumes an interrupted one from its
last.pt. After each cell OUT/sweep.csv, OUT/sweep.json and OUT/sweep.png describe all finished cells.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from . import distributed, report
from .checkpoint import CheckpointError, load_checkpoint
from .cli import config_from_args
from .cli import get_args_parser as training_args_parser
from .cli import main as train_main
from .config import PLACEMENT_FIELDS, ConfigError
from .io import atomic_write_json, atomic_write_text

# Set by the sweep for each cell, so not accepted among the passed-through training flags.
OWN_FLAGS = {"checkpoint_dir": "--checkpoint-dir", "resume": "--resume", "eval_only": "--eval-only"}
CSV_FIELDS = ["cell", "lr", "batch_size", "recipe", "epochs", "best_val_acc", "best_epoch", "test_acc",
              "final_train_loss", "train_seconds", "wall_seconds", "img_s", "resumed"]


class SweepError(Exception):
    """A bad grid or flag; one sentence for the user, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one sentence instead of argparse's usage dump
        raise SweepError(message)


def get_args_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m training.sweep", allow_abbrev=False,
                description="Train one model per (learning rate, batch size) and compare them. Any other flag "
                "is passed to every run (see python -m training --help), e.g. --epochs, --recipe, --data, "
                "--limit-train, --quiet, --track (one tracked run per cell).")
    p.add_argument("--lr", type=float, nargs="+", required=True, metavar="LR", help="learning rates to try")
    p.add_argument("--batch-size", type=int, nargs="+", required=True, metavar="N",
                   help="batch sizes to try (per process, as in training)")
    p.add_argument("--out", metavar="DIR", default="sweep", help="where cells and the summary go (default ./sweep)")
    return p


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Sweep flags, with the remaining ones kept as args.training_flags."""
    args, rest = get_args_parser().parse_known_args(argv)
    args.training_flags = rest
    return args


def cell_name(lr: float, batch_size: int) -> str:
    return f"lr={lr!r}_bs={batch_size}"  # repr: distinct floats never share a folder


def _training_parser() -> argparse.ArgumentParser:
    p = training_args_parser()
    p.allow_abbrev = False

    def error(message: str):
        raise SweepError(f"{message} (flags after the grid are passed to training)")

    p.error = error  # type: ignore[method-assign]
    return p


def _check_grid(args: argparse.Namespace) -> None:
    for flag, values in (("--lr", args.lr), ("--batch-size", args.batch_size)):
        bad = [v for v in values if not v > 0]
        if bad:
            raise SweepError(f"{flag} values must be positive, got {bad[0]}")
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise SweepError(f"{flag} lists {dupes[0]:g} more than once")


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every cell's training argv, config and state, or SweepError before anything runs."""
    _check_grid(args)
    try:
        under_torchrun = distributed.from_env().enabled
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    if under_torchrun:
        raise SweepError("run the sweep as one process (python -m training.sweep), not under torchrun")
    parser = _training_parser()
    base = parser.parse_args(args.training_flags)
    for dest, flag in OWN_FLAGS.items():
        if getattr(base, dest, None) is not None:
            raise SweepError(f"{flag} is set by the sweep for each cell; use --out to choose where cells go")
    out = Path(args.out)
    cells = []
    for lr in args.lr:
        for bs in args.batch_size:
            folder = out / cell_name(lr, bs)
            argv = [*args.training_flags, "--lr", repr(lr), "--batch-size", str(bs), "--checkpoint-dir", str(folder)]
            try:
                cfg = config_from_args(parser.parse_args(argv))
            except ConfigError as exc:
                raise SweepError(str(exc)) from None
            cell = {"lr": lr, "batch_size": bs, "folder": folder, "argv": argv, "config": cfg}
            cell["state"] = _state(cell)
            cells.append(cell)
    return cells


def _state(cell: dict[str, Any]) -> str:
    """'finished', 'partial' (resume from last.pt) or 'new'; SweepError if the folder holds another run."""
    folder, cfg = cell["folder"], cell["config"]
    result, last = folder / "result.json", folder / "last.pt"
    if result.is_file():
        stored = json.loads(result.read_text())["config"]
    elif last.is_file():
        try:
            stored = load_checkpoint(last).config
        except CheckpointError as exc:
            raise SweepError(f"{exc}; delete {folder} to run the cell again") from None
    else:
        return "new"
    wanted = cfg.to_dict()
    differ = sorted(k for k in wanted if k not in PLACEMENT_FIELDS and stored.get(k) != wanted[k])
    if differ:
        raise SweepError(f"{folder} holds a run with other settings ({', '.join(differ)}); use another --out "
                         "or the same flags")
    return "finished" if result.is_file() else "partial"


def _result(cell: dict[str, Any], wall_seconds: float, resumed: bool) -> dict[str, Any]:
    folder = cell["folder"]
    best = load_checkpoint(folder / "best.pt")
    history = json.loads((folder / "history.json").read_text())
    metrics, summary = best.metrics, best.summary or {}
    cfg = cell["config"]
    return {
        "cell": folder.name, "lr": cell["lr"], "batch_size": cell["batch_size"], "recipe": cfg.recipe,
        "epochs": cfg.epochs, "best_val_acc": metrics["val_acc"], "best_epoch": metrics["epoch"],
        "test_acc": metrics["test_acc"], "final_train_loss": history[-1]["train_loss"],
        "train_seconds": summary.get("train_seconds"), "wall_seconds": wall_seconds,
        "img_s": report.images_per_second(history),
        "resumed": resumed, "val_acc_curve": [h["val_acc"] for h in history], "config": cfg.to_dict(),
    }


def write_summary(out: Path, args: argparse.Namespace, cells: list[dict[str, Any]]) -> None:
    done = [json.loads((c["folder"] / "result.json").read_text()) for c in cells
            if (c["folder"] / "result.json").is_file()]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(done)
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    atomic_write_json(out / "sweep.json", {
        "grid": {"lr": args.lr, "batch_size": args.batch_size}, "training_flags": args.training_flags,
        "cells_total": len(cells), "cells_finished": len(done),
        "best": max(done, key=lambda r: r["best_val_acc"])["cell"] if done else None,
        "cells": done,
    })
    report.plot_sweep(out / "sweep.png", args.lr, args.batch_size, done)


def main(args: argparse.Namespace) -> int:
    try:
        cells = plan(args)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = len(cells)
    for i, cell in enumerate(cells, 1):
        where = f"cell {i}/{total}: lr={cell['lr']:g} bs={cell['batch_size']}"
        if cell["state"] == "finished":
            print(f"{where} skipped (finished: {cell['folder'] / 'result.json'})", flush=True)
            continue
        argv = list(cell["argv"])
        resumed = cell["state"] == "partial"
        if resumed:
            argv += ["--resume", str(cell["folder"] / "last.pt")]
        print(f"{where}" + (f" resuming from {cell['folder'] / 'last.pt'}" if resumed else ""), flush=True)
        start = time.perf_counter()
        rc = train_main(training_args_parser().parse_args(argv))
        if rc != 0:
            if rc == 130:
                print("sweep interrupted; run the same command again to continue", file=sys.stderr)
            return rc
        result = _result(cell, time.perf_counter() - start, resumed)
        atomic_write_json(cell["folder"] / "result.json", result)
        write_summary(out, args, cells)
        print(f"{where} done: best val {100 * result['best_val_acc']:.2f}% (epoch {result['best_epoch']}), "
              f"test {100 * result['test_acc']:.2f}%, {result['wall_seconds']:.1f}s, {result['img_s']:,.0f} img/s",
              flush=True)
    write_summary(out, args, cells)
    print(f"sweep done: {out / 'sweep.csv'}, {out / 'sweep.json'}, {out / 'sweep.png'}")
    return 0


def cli(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse(argv)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return main(args)


if __name__ == "__main__":
    sys.exit(cli())
