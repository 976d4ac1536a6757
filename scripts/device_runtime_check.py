"""The service's TorchScript runtime on CUDA against the CPU, on the whole test split (part of
scripts/device_check.sh): top-1 agreement, largest |Δprobability|, accuracy, and images/s per batch size.

  python scripts/device_runtime_check.py EXPORT_DIR DATA_DIR [--device cuda] [--images N] [--seconds S]

Exit 0 when the device answered and agrees with the CPU on at least 99.9% of the top-1 answers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.backends import load_backend  # noqa: E402
from training.data import DataError, load_split  # noqa: E402


def outputs(backend, images: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities [N, C], ood_score [N] or None for an export made before the score)."""
    parts = [backend(images[i:i + batch]) for i in range(0, len(images), batch)]
    scores = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
    return np.concatenate([p[0] for p in parts]), scores


def images_per_second(backend, images: np.ndarray, batch: int, seconds: float) -> float:
    chunk = images[:batch]
    backend(chunk)  # warm-up: kernels picked, memory allocated
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        backend(chunk)  # returns host numpy: every call ends with the copy back, so it is synchronous
        done += len(chunk)
    return done / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", type=Path, help="a folder written by python -m export (model.ts)")
    p.add_argument("data", help="the dataset (its test split is compared)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="the device compared with the CPU")
    p.add_argument("--images", type=int, default=0, help="compare the first N test images (default: all)")
    p.add_argument("--seconds", type=float, default=2.0, help="timing per batch size and device (default 2)")
    args = p.parse_args()
    model_dir = args.export_dir
    if not (model_dir / "model.ts").is_file():
        p.error(f"{model_dir} has no model.ts; give a folder written by python -m export")
    try:
        test = load_split(args.data, "test")
    except DataError as exc:
        p.error(str(exc))
    n = args.images or len(test)
    images, labels = test.images[:n].numpy(), test.labels[:n].numpy()  # [N, 32, 32, 3] uint8, [N]
    # torch's thread count is per process and each backend sets it: the CPU one last, so it keeps its 8.
    gpu = load_backend(model_dir, "torchscript", args.device, 1)
    cpu = load_backend(model_dir, "torchscript", "cpu", 8)
    (p_cpu, ood_cpu), (p_gpu, ood_gpu) = outputs(cpu, images, 500), outputs(gpu, images, 500)
    figures = {
        "images": len(images), "device": gpu.device,
        "top1_agreement": float((p_cpu.argmax(1) == p_gpu.argmax(1)).mean()),
        "max_abs_dprob": float(np.abs(p_cpu - p_gpu).max()),
        "accuracy_cpu": float((p_cpu.argmax(1) == labels).mean()),
        "accuracy_device": float((p_gpu.argmax(1) == labels).mean()),
        # The out-of-distribution score, relative to its size (export/parity.py's measure).
        "max_rel_dood": None if ood_cpu is None else
        float((np.abs(ood_cpu - ood_gpu) / np.maximum(1.0, np.abs(ood_cpu))).max()),
        "device_img_s": {b: round(images_per_second(gpu, images, b, args.seconds)) for b in (1, 16, 256)},
        "cpu_img_s": {b: round(images_per_second(cpu, images, b, args.seconds)) for b in (1, 16, 256)},
    }
    print(f"| batch | cpu img/s (8 threads) | {args.device} img/s |\n|---|---|---|")
    for b in (1, 16, 256):
        print(f"| {b} | {figures['cpu_img_s'][b]} | {figures['device_img_s'][b]} |")
    print(json.dumps(figures))
    return 0 if figures["device"] == args.device and figures["top1_agreement"] >= 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
