"""Are the Grad-CAM heatmaps faithful? Hide what they point at, and see the model lose confidence.

  python benchmarks/explain_faithfulness.py --artifacts artifacts [--data DIR] [--images 500] [--fraction 0.25]

On --images seeded test images: the explained class is the model's top class; its probability is p. Hiding
the --fraction of pixels with the highest heat (replaced by the dataset's mean colour) gives p_heat; hiding a
random --fraction of pixels gives p_random (the mean over --random-masks masks per image). The heatmap is
faithful when the first drop is clearly larger: ratio = mean(p - p_heat) / mean(p - p_random) (target 1.5).
Runs the exported graphs (explain.onnx for the heatmaps, model.onnx for the probabilities) with ONNX
Runtime: what the service serves. Prints a table and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.constants import CIFAR10_MEAN  # noqa: E402
from contract.images import IMAGE_EXTENSIONS, decode  # noqa: E402


def test_images(data: Path, n: int, seed: int) -> np.ndarray:
    files = sorted(f for d in sorted((data / "test").iterdir()) if d.is_dir() for f in d.iterdir()
                   if f.suffix.lower() in IMAGE_EXTENSIONS)
    pick = np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False)
    return np.stack([decode(files[i].read_bytes()) for i in sorted(pick)])


def hide(images: np.ndarray, masks: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """images uint8 [N, H, W, 3], masks bool [N, H, W] -> images with the masked pixels set to fill [3]."""
    out = images.copy()
    out[masks] = fill
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="folder with explain.onnx, model.onnx")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_DATA", "../shared/datasets/cifar10")))
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--fraction", type=float, default=0.25, help="share of the pixels hidden (default 0.25)")
    p.add_argument("--random-masks", type=int, default=5, help="random masks per image (default 5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for name in ("explain.onnx", "model.onnx", "metadata.json"):
        if not (args.artifacts / name).is_file():
            print(f"error: {args.artifacts} has no {name}; run python -m export first", file=sys.stderr)
            return 2
    if not (args.data / "test").is_dir() or not 0 < args.fraction < 1 or args.images < 1:
        print("error: need --data with test/<class>/ images, 0 < --fraction < 1 and --images >= 1", file=sys.stderr)
        return 2

    import onnxruntime as ort

    meta = json.loads((args.artifacts / "metadata.json").read_text())
    explain = ort.InferenceSession(str(args.artifacts / "explain.onnx"), providers=["CPUExecutionProvider"])
    model = ort.InferenceSession(str(args.artifacts / "model.onnx"), providers=["CPUExecutionProvider"])
    images = test_images(args.data, args.images, args.seed)
    n, h, w, _ = images.shape
    k = int(round(args.fraction * h * w))
    fill = np.round(np.array(CIFAR10_MEAN) * 255).astype(np.uint8)
    start = time.perf_counter()

    def probs(x: np.ndarray) -> np.ndarray:
        return np.concatenate([model.run(["probabilities"], {"image": x[i:i + 250]})[0] for i in range(0, len(x), 250)])

    heat = np.concatenate([explain.run(["heatmap"], {"image": images[i:i + 250],
                                                     "target": np.full(len(images[i:i + 250]), -1, np.int64)})[0]
                           for i in range(0, n, 250)])  # [N, H, W]
    base = probs(images)
    target = base.argmax(1)
    p0 = base[np.arange(n), target]
    # The k hottest pixels of each heatmap (ties broken by position, as argsort does).
    hottest = np.argsort(-heat.reshape(n, -1), axis=1, kind="stable")[:, :k]
    heat_mask = np.zeros((n, h * w), bool)
    np.put_along_axis(heat_mask, hottest, True, axis=1)
    p_heat = probs(hide(images, heat_mask.reshape(n, h, w), fill))[np.arange(n), target]
    rng = np.random.default_rng(args.seed + 1)
    p_random = np.zeros(n)
    for _ in range(args.random_masks):
        random_mask = np.zeros((n, h * w), bool)
        np.put_along_axis(random_mask, np.argsort(rng.random((n, h * w)), axis=1)[:, :k], True, axis=1)
        p_random += probs(hide(images, random_mask.reshape(n, h, w), fill))[np.arange(n), target] / args.random_masks
    drop_heat, drop_random = float((p0 - p_heat).mean()), float((p0 - p_random).mean())
    ratio = drop_heat / drop_random if drop_random > 0 else float("inf")
    seconds = time.perf_counter() - start

    print(f"{meta['model_name']} ({meta['architecture']}), {n} test images, {args.fraction:.0%} of the pixels hidden "
          f"with the mean colour {fill.tolist()}, explained class = top class")
    print(f"Grad-CAM at {meta['explanation']['layer']}")
    print(f"{'hidden pixels':<26} | {'mean p(target)':>14} | {'mean drop':>9}")
    print("-" * 56)
    print(f"{'none':<26} | {p0.mean():>14.4f} | {'':>9}")
    print(f"{'hottest by Grad-CAM':<26} | {p_heat.mean():>14.4f} | {drop_heat:>9.4f}")
    print(f"{'random (' + str(args.random_masks) + ' masks)':<26} | {p_random.mean():>14.4f} | {drop_random:>9.4f}")
    print(f"ratio {ratio:.2f} (target >= 1.5): {'met' if ratio >= 1.5 else 'NOT met'}; {seconds:.1f}s")
    print(json.dumps({"model": meta["model_name"], "architecture": meta["architecture"], "images": int(n),
                      "fraction": args.fraction, "mean_p": round(float(p0.mean()), 4),
                      "mean_p_heat_hidden": round(float(p_heat.mean()), 4),
                      "mean_p_random_hidden": round(float(p_random.mean()), 4), "drop_heat": round(drop_heat, 4),
                      "drop_random": round(drop_random, 4), "ratio": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
