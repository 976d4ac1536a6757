"""In-process inference speed of exported models: eager PyTorch vs TorchScript vs ONNX Runtime fp32 vs int8.

  python benchmarks/inference.py --artifacts artifacts/ [--checkpoint checkpoints/best.pt] [--seconds 3]
  python benchmarks/inference.py --artifacts artifacts/simplecnn artifacts/airbench --no-torchscript

Each runtime gets the same uint8 [N, 32, 32, 3] batches (N = 1 and 64) and is called repeatedly for
about --seconds; the table gives images/s and per-call latency p50/p99, and int8 / fp32 speed-ups per
network. Threads are set explicitly: torch.set_num_threads and ONNX Runtime's intra_op_num_threads both =
--threads (default: all CPUs). Without --checkpoint, "eager" is skipped (the artifacts alone need no
training code).
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

from contract.onnx_session import onnx_session  # noqa: E402
from export.graphs import load_torchscript  # noqa: E402
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
    p.add_argument("--artifacts", nargs="+", default=["artifacts"],
                   help="export folders (model.onnx, model.ts, and model.int8.onnx when exported); one per network")
    p.add_argument("--checkpoint", default=None, help="best.pt of the (single) --artifacts folder: adds eager rows")
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--no-torchscript", action="store_true", help="ONNX Runtime rows only")
    args = p.parse_args()

    import onnxruntime as ort

    folders = [Path(a) for a in args.artifacts]
    for art in folders:
        if not (art / "model.onnx").is_file():
            print(f"error: {art} has no model.onnx; run python -m export first", file=sys.stderr)
            return 2
    if args.checkpoint and len(folders) > 1:
        print("error: --checkpoint goes with a single --artifacts folder", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    providers = [pr for pr in ("CUDAExecutionProvider", "CPUExecutionProvider") if pr in ort.get_available_providers()]
    # (model, runtime label, device, call)
    runtimes: list[tuple[str, str, str, Callable[[np.ndarray], object]]] = []
    for art in folders:
        name = json.loads((art / "metadata.json").read_text())["model_name"]
        if args.checkpoint:
            ckpt = load_checkpoint(args.checkpoint)
            for device in devices:
                eager = classifier_from_checkpoint(ckpt, args.checkpoint).to(device)
                runtimes.append((name, "eager pytorch", device, _torch_call(eager, device)))
        if not args.no_torchscript and (art / "model.ts").is_file():
            for device in devices:
                runtimes.append((name, "torchscript", device, _torch_call(load_torchscript(art / "model.ts", device),
                                                                          device)))
        for provider in providers:
            session = onnx_session(str(art / "model.onnx"), args.threads, providers=[provider])
            label = "cuda" if provider.startswith("CUDA") else "cpu"
            runtimes.append((name, "onnxruntime", label, lambda x, s=session: s.run(None, {"image": x})))
        if (art / "model.int8.onnx").is_file():
            session = onnx_session(str(art / "model.int8.onnx"), args.threads)
            runtimes.append((name, "onnxruntime int8", "cpu", lambda x, s=session: s.run(None, {"image": x})))

    rows, figures = [], {}
    rng = np.random.default_rng(0)
    for batch in args.batch_sizes:
        x = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        for model, runtime, device, fn in runtimes:
            lat = np.array(measure(lambda fn=fn, x=x: fn(x), args.seconds)) * 1000
            ips = batch * len(lat) / (lat.sum() / 1000)
            rows.append((model, f"{runtime} ({device})", batch, ips, np.percentile(lat, 50), np.percentile(lat, 99)))
            key = f"{model}_{runtime.replace(' ', '_')}_{device}_b{batch}"
            figures[f"{key}_img_s"] = round(ips, 1)
            figures[f"{key}_p50_ms"] = round(float(np.percentile(lat, 50)), 4)
            figures[f"{key}_p99_ms"] = round(float(np.percentile(lat, 99)), 4)
    for model in dict.fromkeys(r[0] for r in rows):
        for batch in args.batch_sizes:
            fp32 = figures.get(f"{model}_onnxruntime_cpu_b{batch}_img_s")
            int8 = figures.get(f"{model}_onnxruntime_int8_cpu_b{batch}_img_s")
            if fp32 and int8:
                figures[f"{model}_int8_speedup_b{batch}"] = round(int8 / fp32, 3)
    print(f"threads: {args.threads} (torch and onnxruntime); torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"{'model':<20} | {'runtime':<24} | {'batch':>5} | {'images/s':>10} | {'p50 ms':>8} | {'p99 ms':>8}")
    print("-" * 90)
    for model, runtime, batch, ips, p50, p99 in rows:
        print(f"{model:<20} | {runtime:<24} | {batch:>5} | {ips:>10,.0f} | {p50:>8.3f} | {p99:>8.3f}")
    speedups = {k: v for k, v in figures.items() if "speedup" in k}
    for k, v in speedups.items():
        print(f"{k}: {v:.2f}x")
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
