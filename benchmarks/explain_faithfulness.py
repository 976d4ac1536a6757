"""Are the heatmaps (Grad-CAM, LayerCAM) faithful? Hide what they point at, and see the model lose confidence.

  python benchmarks/explain_faithfulness.py --artifacts artifacts [--data DIR] [--images 500] [--fraction 0.25]

On --images seeded test images: the explained class is the model's top class; its probability is p. Hiding
the --fraction of pixels with the highest heat (replaced by the dataset's mean colour) gives p_heat; hiding a
random --fraction of pixels gives p_random (the mean over --random-masks masks per image). The heatmap is
faithful when the first drop is clearly larger: ratio = mean(p - p_heat) / mean(p - p_random) (target 1.5).

Scattered random pixels are also salt-and-pepper noise, which some networks (airbench's) mind far more than
a hidden region of the same size, so a second baseline hides random REGIONS with the heatmap's own shape: a
random map on the explained layer's grid (metadata `explanation.grid`), upsampled as Grad-CAM's is, its
hottest --fraction hidden. Its ratio separates "the heatmap points at the evidence" from "hiding blobs is
gentler than hiding dots".
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
from contract.onnx_session import onnx_session  # noqa: E402


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


def hottest_mask(heat: np.ndarray, k: int) -> np.ndarray:
    """[N, H, W] scores -> [N, H, W] bool, True at each map's k highest (ties broken by position)."""
    n = heat.shape[0]
    mask = np.zeros((n, heat[0].size), bool)
    np.put_along_axis(mask, np.argsort(-heat.reshape(n, -1), axis=1, kind="stable")[:, :k], True, axis=1)
    return mask.reshape(heat.shape)


def upsample(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """[N, g, g'] -> [N, h, w], bilinear with half-pixel centres (align_corners=False), as the heatmaps are."""
    gy, gx = maps.shape[1:]
    ys = np.clip((np.arange(h) + 0.5) * gy / h - 0.5, 0, gy - 1)
    xs = np.clip((np.arange(w) + 0.5) * gx / w - 0.5, 0, gx - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, gy - 1), np.minimum(x0 + 1, gx - 1)
    fy, fx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top = maps[:, y0][:, :, x0] * (1 - fx) + maps[:, y0][:, :, x1] * fx
    bottom = maps[:, y1][:, :, x0] * (1 - fx) + maps[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bottom * fy


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
    if not (args.data / "test").is_dir() or not 0 < args.fraction < 1 or args.images < 1 or args.random_masks < 1:
        print("error: need --data with test/<class>/ images, 0 < --fraction < 1, --images >= 1 and "
              "--random-masks >= 1", file=sys.stderr)
        return 2

    meta = json.loads((args.artifacts / "metadata.json").read_text())
    explain = onnx_session(str(args.artifacts / "explain.onnx"))
    model = onnx_session(str(args.artifacts / "model.onnx"))
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
    p_heat = probs(hide(images, hottest_mask(heat, k), fill))[np.arange(n), target]
    rng = np.random.default_rng(args.seed + 1)
    grid = meta["explanation"].get("grid")  # absent in exports older than the field
    p_random, p_region = np.zeros(n), np.zeros(n)
    for _ in range(args.random_masks):
        p_random += probs(hide(images, hottest_mask(rng.random((n, h, w)), k), fill))[np.arange(n), target]
        if grid:
            p_region += probs(hide(images, hottest_mask(upsample(rng.random((n, *grid)), h, w), k),
                                   fill))[np.arange(n), target]
    p_random, p_region = p_random / args.random_masks, p_region / args.random_masks
    drop_heat, drop_random = float((p0 - p_heat).mean()), float((p0 - p_random).mean())
    ratio = drop_heat / drop_random if drop_random > 0 else float("inf")
    drop_region = float((p0 - p_region).mean()) if grid else None
    region_ratio = (drop_heat / drop_region if drop_region > 0 else float("inf")) if grid else None
    seconds = time.perf_counter() - start

    print(f"{meta['model_name']} ({meta['architecture']}), {n} test images, {args.fraction:.0%} of the pixels hidden "
          f"with the mean colour {fill.tolist()}, explained class = top class")
    method = meta["explanation"].get("method", "Grad-CAM")
    print(f"{method} at {meta['explanation']['layer']}")
    print(f"{'hidden pixels':<26} | {'mean p(target)':>14} | {'mean drop':>9}")
    print("-" * 56)
    print(f"{'none':<26} | {p0.mean():>14.4f} | {'':>9}")
    print(f"{'hottest by ' + method:<26} | {p_heat.mean():>14.4f} | {drop_heat:>9.4f}")
    print(f"{'random (' + str(args.random_masks) + ' masks)':<26} | {p_random.mean():>14.4f} | {drop_random:>9.4f}")
    if grid:
        print(f"{'random regions (' + 'x'.join(map(str, grid)) + ' grid)':<26} | {p_region.mean():>14.4f} | "
              f"{drop_region:>9.4f}")
    print(f"ratio against random pixels {ratio:.2f} (target >= 1.5): {'met' if ratio >= 1.5 else 'NOT met'}"
          + (f"; against random regions {region_ratio:.2f}" if grid else "") + f"; {seconds:.1f}s")
    print(json.dumps({"model": meta["model_name"], "architecture": meta["architecture"], "method": method,
                      "images": int(n),
                      "fraction": args.fraction, "mean_p": round(float(p0.mean()), 4),
                      "mean_p_heat_hidden": round(float(p_heat.mean()), 4),
                      "mean_p_random_hidden": round(float(p_random.mean()), 4), "drop_heat": round(drop_heat, 4),
                      "drop_random": round(drop_random, 4), "ratio": round(ratio, 3), "grid": grid,
                      "drop_region": None if drop_region is None else round(drop_region, 4),
                      "region_ratio": None if region_ratio is None else round(region_ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
