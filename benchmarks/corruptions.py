"""Accuracy of an exported model under CIFAR-10-C's corruptions (benchmarks/cifar10c.py), severities 1-5.

    python benchmarks/corruptions.py artifacts                       # 2,000 seeded test images
    python benchmarks/corruptions.py artifacts --images 10000        # the whole test split
    python benchmarks/corruptions.py artifacts --only gaussian_noise fog --severities 3

Runs the exported ONNX graph (as the service does) on the clean images and on each corruption at each severity,
and prints a table: accuracy per corruption and severity, the mean over severities, the mean per family, and the
relative drop (1 - mean corrupted accuracy / clean accuracy) over all corruptions and over the two halves: the
families of the training augmentation `--corrupt-prob` (noise and blur) and the families it never sees (weather,
digital). The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10c import CORRUPTIONS, SEEN_IN_TRAINING  # noqa: E402
from common import ROOT, read_export  # noqa: E402

sys.path.insert(0, str(ROOT))
from contract.folders import list_image_folder  # noqa: E402
from contract.images import decode  # noqa: E402
from contract.onnx_session import onnx_session  # noqa: E402


def load_test_images(data: Path, classes: list[str], count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded subset of the test split, decoded by the service's contract: uint8 [N, 32, 32, 3], labels [N]."""
    names, samples = list_image_folder(data)
    if names != classes:
        raise SystemExit(f"error: {data} has classes {names}; the model's are {classes}")
    pick = np.random.default_rng(seed).permutation(len(samples))[:count]
    images = np.stack([decode(samples[i][0].read_bytes()) for i in pick])
    return images, np.array([samples[i][1] for i in pick])


def accuracy(session, images: np.ndarray, labels: np.ndarray, batch: int = 100) -> float:
    correct = 0
    for lo in range(0, len(images), batch):
        probs = session.run(["probabilities"], {"image": images[lo:lo + batch]})[0]  # [B, C]
        correct += int((probs.argmax(1) == labels[lo:lo + batch]).sum())
    return correct / len(images)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="the export's output folder (metadata.json, model.onnx)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10" / "test",
                   help="the test split (default: the shared copy's)")
    p.add_argument("--images", type=int, default=2000, help="seeded test images (default 2000; 10000: all)")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5], choices=[1, 2, 3, 4, 5])
    names = [n for family in CORRUPTIONS.values() for n in family]
    p.add_argument("--only", nargs="+", choices=names, help="only these corruptions")
    p.add_argument("--seed", type=int, default=0, help="the image subset's and the corruptions' seed")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--save", action="store_true",
                   help="also write the figures to MODEL/corruptions.json (benchmarks/model_card.py reads it while the "
                   "graph is the one measured)")
    args = p.parse_args()
    meta = read_export(args.model)
    if not args.data.is_dir():
        print(f"error: {args.data} is not the test split; pass --data", file=sys.stderr)
        return 2
    if args.images < 1:
        print("error: --images must be at least 1", file=sys.stderr)
        return 2
    session = onnx_session(str(args.model / "model.onnx"), args.threads)
    images, labels = load_test_images(args.data, list(meta.classes), args.images, args.seed)
    started = time.perf_counter()
    clean = accuracy(session, images, labels)
    results: dict[str, dict[int, float]] = {}
    for index, members in enumerate(CORRUPTIONS.values()):
        for offset, (name, corrupt) in enumerate(members.items()):
            if args.only and name not in args.only:
                continue
            results[name] = {}
            for severity in args.severities:
                rng = np.random.default_rng([args.seed, index, offset, severity])
                results[name][severity] = accuracy(session, corrupt(images, severity, rng), labels)
    seconds = time.perf_counter() - started

    family_of = {n: f for f, members in CORRUPTIONS.items() for n in members}
    mean = {n: float(np.mean(list(r.values()))) for n, r in results.items()}

    def average(which) -> float | None:
        values = [m for n, m in mean.items() if which(family_of[n])]
        return float(np.mean(values)) if values else None

    def drop(value: float | None) -> float | None:
        return None if value is None else 1 - value / clean

    overall = average(lambda f: True)
    seen, unseen = average(lambda f: f in SEEN_IN_TRAINING), average(lambda f: f not in SEEN_IN_TRAINING)
    print(f"\n{args.model} ({meta.architecture}, trained with recipe {meta.training_config.get('recipe')}), "
          f"{len(images):,} test images (seed {args.seed}), {seconds:.0f} s")
    print(f"{'corruption':<18} | {'family':<8} | " + " | ".join(f"  s{s}  " for s in args.severities) + " |  mean")
    print("-" * (32 + 9 * len(args.severities) + 8))
    print(f"{'clean':<18} | {'':<8} | " + " | ".join(f"{100 * clean:5.1f}%" for _ in args.severities)
          + f" | {100 * clean:5.1f}%")
    for name, by_severity in results.items():
        print(f"{name:<18} | {family_of[name]:<8} | " + " | ".join(f"{100 * by_severity[s]:5.1f}%"
                                                                  for s in args.severities)
              + f" | {100 * mean[name]:5.1f}%")
    print()
    for family in CORRUPTIONS:
        value = average(lambda f, family=family: f == family)
        if value is not None:
            print(f"mean {family:<8} {100 * value:5.1f}%  (relative drop {100 * drop(value):5.1f}%)")
    for label, value in (("all", overall), ("seen in training (noise, blur)", seen),
                         ("never seen (weather, digital)", unseen)):
        if value is not None:
            print(f"mean corrupted, {label}: {100 * value:.1f}%, relative drop {100 * drop(value):.1f}%")
    figures = {
        "model": str(args.model), "architecture": meta.architecture, "images": len(images), "seed": args.seed,
        "model_onnx_sha256": meta.files.get("model.onnx"),
        "clean_acc": clean, "mean_corrupted_acc": overall, "relative_drop": drop(overall),
        "seen_mean_acc": seen, "seen_relative_drop": drop(seen),
        "unseen_mean_acc": unseen, "unseen_relative_drop": drop(unseen),
        "per_corruption": {n: {str(s): a for s, a in r.items()} for n, r in results.items()},
        "seconds": round(seconds, 1),
    }
    if args.save:
        (args.model / "corruptions.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
