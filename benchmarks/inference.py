"""In-process inference speed of the exported model: eager PyTorch vs TorchScript vs ONNX Runtime.

  python benchmarks/inference.py --artifacts artifacts/ [--checkpoint checkpoints/best.pt] [--seconds 3]

Each runtime gets the same uint8 [N, 32, 32, 3] batches (N = 1 and 64) and is called repeatedly for
about --seconds; the table gives images/s and per-call latency p50/p99. Threads are set explicitly:
torch.set_num_threads and ONNX Runtime's intra_op_num_threads both = --threads (default: all CPUs).
Without --checkpoint, "eager" is skipped (the artifacts alone need no training code).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.cli import load_torchscript  # noqa: E402
from export.wrapper import classifier_from_checkpoint  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402


def measure(call: Callable[[], object], seconds: float) -> list[float]:
    for _ in range(5):
        call()
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(latencies) < 20:
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return latencies


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default="artifacts", help="folder with model.ts and model.onnx")
    p.add_argument("--checkpoint", default=None, help="best.pt, for the eager PyTorch row")
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    args = p.parse_args()

    import onnxruntime as ort

    art = Path(args.artifacts)
    if not (art / "model.onnx").is_file() or not (art / "model.ts").is_file():
        print(f"error: {art} has no model.onnx and model.ts; run python -m export first", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint else None
    runtimes: dict[str, Callable[[np.ndarray], object]] = {}
    for device in devices:
        if ckpt is not None:
            eager = classifier_from_checkpoint(ckpt, args.checkpoint).to(device)
            runtimes[f"eager pytorch ({device})"] = _torch_call(eager, device)
        runtimes[f"torchscript ({device})"] = _torch_call(load_torchscript(art / "model.ts", device), device)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    providers = [pr for pr in ("CUDAExecutionProvider", "CPUExecutionProvider") if pr in ort.get_available_providers()]
    for provider in providers:
        session = ort.InferenceSession(str(art / "model.onnx"), opts, providers=[provider])
        label = "cuda" if provider.startswith("CUDA") else "cpu"
        runtimes[f"onnxruntime ({label})"] = lambda x, s=session: s.run(None, {"image": x})

    rows, figures = [], {}
    rng = np.random.default_rng(0)
    for batch in args.batch_sizes:
        x = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        for name, fn in runtimes.items():
            lat = np.array(measure(lambda fn=fn, x=x: fn(x), args.seconds)) * 1000
            row = (name, batch, batch * len(lat) / (lat.sum() / 1000), np.percentile(lat, 50), np.percentile(lat, 99))
            rows.append(row)
            key = name.split(" (")[0].replace(" ", "_") + "_" + name.split("(")[1].rstrip(")") + f"_b{batch}"
            figures[f"{key}_img_s"] = round(row[2], 1)
            figures[f"{key}_p50_ms"] = round(row[3], 4)
            figures[f"{key}_p99_ms"] = round(row[4], 4)
    print(f"threads: {args.threads} (torch and onnxruntime); torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"{'runtime':<24} | {'batch':>5} | {'images/s':>10} | {'p50 ms':>8} | {'p99 ms':>8}")
    print("-" * 68)
    for name, batch, ips, p50, p99 in rows:
        print(f"{name:<24} | {batch:>5} | {ips:>10,.0f} | {p50:>8.3f} | {p99:>8.3f}")
    figures["threads"] = args.threads
    print(json.dumps(figures))
    return 0


def _torch_call(module, device: str):
    @torch.no_grad()
    def call(x: np.ndarray):
        out = module(torch.from_numpy(x).to(device))
        if device == "cuda":
            torch.cuda.synchronize()
        return out
    return call


if __name__ == "__main__":
    sys.exit(main())
