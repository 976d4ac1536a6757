"""The same training run on every device here (CPU, and each CUDA setup present), side by side.

  python benchmarks/train_devices.py [--data DIR] [--epochs 2] [--recipe default] [--procs 1 2]

Each row is one real `python -m training` run (under torchrun when --procs asks for more than one
process), in a fresh process so that its peak memory is its own: wall time of the whole command,
seconds and images/s of the training loop (from history.json; validation excluded), peak resident
memory of the largest process, peak GPU memory (rank 0), best validation and test accuracy of best.pt.
Load averages before and after each row say how busy the machine was.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from training.config import RECIPES  # noqa: E402
from training.report import images_per_second  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


def setups(procs: list[int]) -> list[tuple[str, str, int]]:
    """(device, its name, processes) for every device present and every process count that fits it."""
    out = [("cpu", cpu_name(), p) for p in procs]
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        out += [("cuda", f"{torch.cuda.get_device_name(0)} x{min(p, gpus)}", p) for p in procs if p <= gpus]
    return out


def command(device: str, procs: int, args: argparse.Namespace, out: Path) -> list[str]:
    launcher = [sys.executable, "-m", "training"]
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                    "-m", "training"]
    flags = ["--data", args.data, "--epochs", str(args.epochs), "--recipe", args.recipe,
             "--checkpoint-dir", str(out), "--quiet"]
    if args.batch_size:
        flags += ["--batch-size", str(args.batch_size)]
    return launcher + flags + (["--no-cuda"] if device == "cpu" else [])


def run_one(cmd: list[str]) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak RSS MiB of the largest process, stderr) of one training command."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
        # wait4 reports this child's own peak (the largest of it and its reaped children, i.e. torchrun's
        # workers), where RUSAGE_CHILDREN would mix in earlier rows.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        err.seek(0)
        return proc.returncode, wall, usage.ru_maxrss / 1024, err.read()


class BenchError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = 2 if code == 2 else 1  # 2: bad input (the training command said so)


def measure(device: str, name: str, procs: int, args: argparse.Namespace, out: Path) -> dict:
    """One row: run the training command, then read what it wrote. BenchError if it failed."""
    cmd = command(device, procs, args, out)
    load_before = os.getloadavg()
    print(f"running: {' '.join(cmd)}", flush=True)
    rc, wall, rss, err = run_one(cmd)
    load_after = os.getloadavg()
    if rc != 0:
        said = [line.removeprefix("error: ") for line in err.splitlines() if line.startswith("error: ")]
        said = said or err.strip().splitlines()[-1:] or ["no message"]
        raise BenchError(rc, f"the {device} run with {procs} process(es) failed (exit {rc}): {said[0]}")
    try:
        best = load_checkpoint(out / "best.pt")
    except CheckpointError as exc:
        raise BenchError(1, str(exc)) from None
    history = json.loads((out / "history.json").read_text())
    summary, metrics = best.summary or {}, best.metrics
    train_s = sum(h["seconds"] for h in history)
    return {
        "device": device, "name": name, "processes": procs, "setup": summary.get("device"),
        "batch_per_process": summary.get("batch_size"), "precision": summary.get("precision"),
        "epochs": len(history), "wall_s": round(wall, 1), "train_s": round(train_s, 1),
        "img_s": round(images_per_second(history), 1), "peak_rss_mib": round(rss),
        "peak_gpu_mib": round(summary["peak_gpu_mib"]) if "peak_gpu_mib" in summary else None,
        "best_val_acc": round(metrics["val_acc"], 4), "test_acc": round(metrics["test_acc"], 4),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
    }


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\n{args.recipe} recipe, {args.epochs} epochs, data {args.data}")
    header = (f"{'device':<34} | {'procs':>5} | {'setup (rank 0)':<26} | {'batch':>5} | {'wall s':>7} | "
              f"{'train s':>7} | {'img/s':>6} | {'peak RSS MiB':>12} | {'peak GPU MiB':>12} | {'best val':>8} | "
              f"{'test':>6} | load 1m before/after")
    print(header)
    print("-" * len(header))
    for r in rows:
        gpu = f"{r['peak_gpu_mib']:,}" if r["peak_gpu_mib"] is not None else "-"
        print(f"{r['device'] + ': ' + r['name']:<34} | {r['processes']:>5} | {str(r['setup']):<26} | "
              f"{str(r['batch_per_process']):>5} | {r['wall_s']:>7.1f} | {r['train_s']:>7.1f} | "
              f"{r['img_s']:>6,.0f} | {r['peak_rss_mib']:>12,} | {gpu:>12} | {100 * r['best_val_acc']:>7.2f}% | "
              f"{100 * r['test_acc']:>5.2f}% | {r['loadavg_before'][0]:.2f} / {r['loadavg_after'][0]:.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("CIFAR10_DATA", "./data"),
                   help="dataset as for python -m training (default $CIFAR10_DATA or ./data)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    p.add_argument("--recipe", choices=list(RECIPES), default="default")
    p.add_argument("--batch-size", type=int, default=None, help="per process (default: the recipe's device default)")
    p.add_argument("--procs", type=int, nargs="+", default=[1],
                   help="process counts to run per device (more than 1: torchrun, DDP; default 1)")
    p.add_argument("--keep", metavar="DIR", default=None, help="keep each run's outputs under DIR")
    args = p.parse_args()
    if args.epochs < 1 or min(args.procs) < 1:
        print("error: --epochs and --procs must be positive", file=sys.stderr)
        return 2

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="train-devices-"))
    try:
        rows = [measure(device, name, procs, args, base / f"{device}-{procs}proc")
                for device, name, procs in setups(args.procs)]
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print_table(rows, args)
    print(json.dumps({"recipe": args.recipe, "epochs": args.epochs, "data": args.data, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
