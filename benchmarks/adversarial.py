"""Adversarial robustness report (design report §12.3): how far a worst-case perturbation moves the answers.

    python benchmarks/adversarial.py checkpoints/best.pt                        # 1,000 test images, all attacks
    python benchmarks/adversarial.py checkpoints/best.pt --images 200 --no-autoattack

Attacks, from torchattacks (3.3.0; see docs/experiments.md for why that release), L-inf, on images in [0, 1] in
fp32, through the same normalization and test-time augmentation the exported graph applies (export/wrapper.py),
so what is attacked is what is served (before the uint8 rounding the upload contract adds):

    FGSM                  eps 1/255, 2/255, 4/255, 8/255 (one step)
    PGD                   the same eps, 10 steps of eps/4, random start
    AutoAttack standard   eps 8/255 (APGD-CE, APGD-T, FAB-T, Square; Croce & Hein 2020), as RobustBench reports

Robust accuracy is over the same seeded test images as the clean accuracy (an image already misclassified counts
as broken). The last line is one JSON object. A network trained without adversarial training is expected near 0%
at 8/255: this report shows where it breaks, it does not make it robust.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))

EPS = (1, 2, 4, 8)  # in 1/255


def served_logits(wrapper):
    """An nn.Module from float images [N, 3, H, W] in [0, 1] to the graph's logits: the export's normalization
    and test-time views on the unrounded pixels."""
    import torch

    class Served(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wrapper = wrapper

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.wrapper
            z = x * 255.0 * w.scale - w.shift  # the graph's normalization, from [0, 1] instead of uint8
            return w.combine(w.model(w.tta_batch(z)))

    return Served().eval()


def accuracy(model, images, labels, batch: int = 250) -> float:
    import torch

    with torch.no_grad():
        return float(sum(int((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
                         for i in range(0, len(images), batch)) / len(images))


def attacked(attack, model, images, labels, batch: int = 250) -> float:
    import torch

    correct = 0
    for i in range(0, len(images), batch):
        adv = attack(images[i:i + batch], labels[i:i + batch])
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == labels[i:i + batch]).sum())
    return correct / len(images)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a best.pt of the training stage")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10",
                   help="the dataset with the test split (default: the shared copy)")
    p.add_argument("--images", type=int, default=1000, help="seeded test images (default 1000)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    p.add_argument("--no-autoattack", action="store_true", help="FGSM and PGD only (AutoAttack is the slow part)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    args = p.parse_args()
    if not args.checkpoint.is_file():
        print(f"error: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    if args.images < 1 or args.steps < 1:
        print("error: --images and --steps must be at least 1", file=sys.stderr)
        return 2

    import torch
    import torchattacks

    from export.wrapper import classifier_from_checkpoint
    from training.checkpoint import CheckpointError, load_checkpoint
    from training.data import load_split

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = served_logits(classifier_from_checkpoint(ckpt, args.checkpoint))
    for param in model.parameters():
        param.requires_grad_(False)
    test = load_split(str(args.data), "test")
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[:args.images]
    # uint8 [N, H, W, 3] -> [N, 3, H, W] in [0, 1]; contiguous, since FAB views the input gradient's memory as is
    images = (test.images[pick].permute(0, 3, 1, 2).float() / 255.0).contiguous()
    labels = test.labels[pick]

    torch.manual_seed(args.seed)  # PGD's random start, Square's queries
    started = time.perf_counter()
    clean = accuracy(model, images, labels)
    rows: list[dict] = []
    for eps in EPS:
        for name, attack in (("FGSM", torchattacks.FGSM(model, eps=eps / 255)),
                             (f"PGD-{args.steps}", torchattacks.PGD(model, eps=eps / 255, alpha=eps / 255 / 4,
                                                                     steps=args.steps, random_start=True))):
            t = time.perf_counter()
            rows.append({"attack": name, "eps": f"{eps}/255", "robust_acc": attacked(attack, model, images, labels),
                         "seconds": round(time.perf_counter() - t, 1)})
    if not args.no_autoattack:
        t = time.perf_counter()
        attack = torchattacks.AutoAttack(model, norm="Linf", eps=8 / 255, version="standard",
                                         n_classes=len(ckpt.classes), seed=args.seed)
        robust = attacked(attack, model, images, labels)
        rows.append({"attack": "AutoAttack (standard)", "eps": "8/255", "robust_acc": robust,
                     "seconds": round(time.perf_counter() - t, 1)})
    seconds = time.perf_counter() - started

    recipe = ckpt.config.get("recipe")
    print(f"\n{args.checkpoint} ({ckpt.arch}, recipe {recipe}), {len(images):,} seeded test images (seed {args.seed}), "
          f"L-inf, fp32, torchattacks {torchattacks.__version__}, {seconds:.0f} s")
    print(f"{'attack':<24} | {'eps':>6} | {'robust acc':>10} | {'seconds':>7}")
    print("-" * 58)
    print(f"{'none (clean)':<24} | {'0':>6} | {100 * clean:9.1f}% |")
    for row in rows:
        print(f"{row['attack']:<24} | {row['eps']:>6} | {100 * row['robust_acc']:9.1f}% | {row['seconds']:7.1f}")
    print(json.dumps({
        "checkpoint": str(args.checkpoint), "architecture": ckpt.arch, "recipe": recipe, "images": len(images),
        "seed": args.seed, "norm": "Linf", "threat_model": "white box, fp32, served normalization and TTA",
        "torchattacks": torchattacks.__version__, "clean_acc": clean, "attacks": rows,
        "seconds": round(seconds, 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
