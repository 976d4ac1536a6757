"""Which resize policy (contract/images.py: squash, center-crop, pad) serves photos that are not 32x32 squares.

    python benchmarks/resize.py artifacts                 # 2,000 seeded test images, each re-framed as photos

Each test image is made into the photos a user would send: upsampled to 96 px (bicubic), placed off-centre on a
wider (4:3, 16:9) or taller (3:4) canvas whose background is another test image enlarged and blurred (a scene,
not a flat colour), the object filling 80-100% of the short side, saved as JPEG quality 90; plus the centred
square as a control. Every photo is decoded with each policy by the service's contract and classified by the
exported ONNX graph. The table gives accuracy per framing and policy; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, read_export  # noqa: E402
from corruptions import load_test_images  # noqa: E402

sys.path.insert(0, str(ROOT))
from contract.images import RESIZE_POLICIES, decode  # noqa: E402
from contract.onnx_session import onnx_session  # noqa: E402

OBJECT = 96  # pixels on a side of the upsampled test image
FRAMINGS = {"square, centred": (1, 1), "wide 4:3": (4, 3), "wide 16:9": (16, 9), "tall 3:4": (3, 4)}


def photo(image: np.ndarray, background: np.ndarray, aspect: tuple[int, int], rng: np.random.Generator) -> bytes:
    """One test image (uint8 [32, 32, 3]) framed as a JPEG photo of the given aspect ratio (width, height)."""
    obj = Image.fromarray(image).resize((OBJECT, OBJECT), Image.Resampling.BICUBIC)
    short = round(OBJECT / rng.uniform(0.8, 1.0))
    w, h = (round(short * aspect[0] / aspect[1]), short) if aspect[0] >= aspect[1] else \
        (short, round(short * aspect[1] / aspect[0]))
    canvas = Image.fromarray(background).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(4))
    if aspect == (1, 1):
        left, top = (w - OBJECT) // 2, (h - OBJECT) // 2
    else:  # anywhere along the long side: off-centre, as a snapshot frames it
        left, top = int(rng.integers(0, w - OBJECT + 1)), int(rng.integers(0, h - OBJECT + 1))
    canvas.paste(obj, (left, top))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="the export's output folder (metadata.json, model.onnx)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10" / "test",
                   help="the test split (default: the shared copy's)")
    p.add_argument("--images", type=int, default=2000, help="seeded test images (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores)")
    args = p.parse_args()
    meta = read_export(args.model)
    if not args.data.is_dir() or not 1 <= args.images <= 5000:
        print("error: --data must be the test split and --images from 1 to 5000", file=sys.stderr)
        return 2
    session = onnx_session(str(args.model / "model.onnx"), args.threads)
    images, labels = load_test_images(args.data, list(meta.classes), 2 * args.images, args.seed)
    images, backgrounds, labels = images[:args.images], images[args.images:], labels[:args.images]
    started = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    for index, (framing, aspect) in enumerate(FRAMINGS.items()):
        rng = np.random.default_rng([args.seed, index])
        photos = [photo(image, bg, aspect, rng) for image, bg in zip(images, backgrounds, strict=True)]
        results[framing] = {}
        for policy in RESIZE_POLICIES:
            pixels = np.stack([decode(data, meta.input_size, resize=policy) for data in photos])
            probs = np.concatenate([session.run(["probabilities"], {"image": pixels[i:i + 500]})[0]
                                    for i in range(0, len(pixels), 500)])
            results[framing][policy] = float((probs.argmax(1) == labels).mean())
    seconds = time.perf_counter() - started
    photos_only = [f for f in FRAMINGS if FRAMINGS[f] != (1, 1)]
    mean = {policy: float(np.mean([results[f][policy] for f in photos_only])) for policy in RESIZE_POLICIES}
    best = max(mean, key=mean.get)

    print(f"\n{args.model} ({meta.architecture}, recipe {meta.training_config.get('recipe')}), {args.images:,} test "
          f"images (seed {args.seed}) per framing, {seconds:.0f} s")
    print(f"{'framing':<18} | " + " | ".join(f"{policy:>11}" for policy in RESIZE_POLICIES))
    print("-" * (21 + 14 * len(RESIZE_POLICIES)))
    for framing, by_policy in results.items():
        print(f"{framing:<18} | " + " | ".join(f"{100 * by_policy[policy]:10.1f}%" for policy in RESIZE_POLICIES))
    print(f"{'mean, not square':<18} | " + " | ".join(f"{100 * mean[policy]:10.1f}%" for policy in RESIZE_POLICIES))
    print(f"best on the non-square photos: {best}")
    print(json.dumps({"model": str(args.model), "architecture": meta.architecture, "images": args.images,
                      "seed": args.seed, "accuracy": results, "mean_not_square": mean, "best": best,
                      "seconds": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
