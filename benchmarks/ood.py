"""How well an export's out-of-distribution score tells CIFAR-10 test images from images of no class.

    python benchmarks/ood.py artifacts                    # the shipped score, 2,000 images per set
    python benchmarks/ood.py artifacts --compare          # and pytorch-ood's detectors on the same images

In-distribution: a seeded sample of the test split, decoded by the service's contract. Out-of-distribution: the
sets of benchmarks/oodsets.py (four far sets, made by generators of their own, and one near set), as many images
each. For every set: AUROC (in against out; 1.0 separates perfectly, 0.5 is chance), the false-positive rate at
95% true-positive rate (the share of OOD images a threshold passing 95% of these test images would still
accept), and with the export's own threshold (metadata.json "ood") the share of OOD images flagged. The
in-distribution false-rejection rate at that threshold is printed once.

The shipped score runs in the exported ONNX graph (ood_score), as the service computes it. `--compare` also
scores the same images with pytorch-ood's detectors on the export's source checkpoint (max softmax, energy,
Mahalanobis, KNN and ViM on the penultimate features; fitted on the same 10,000 training images): the
measurement behind export/ood.py's choice. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oodsets  # noqa: E402
from common import ROOT, read_export  # noqa: E402
from corruptions import load_test_images  # noqa: E402

sys.path.insert(0, str(ROOT))
from contract.onnx_session import onnx_session  # noqa: E402
from contract.provenance import sha256_file  # noqa: E402
from contract.schemas import ModelMetadata  # noqa: E402


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def fpr_at_95(inside: np.ndarray, outside: np.ndarray) -> float:
    """The share of OOD scores at or below the in-distribution scores' 95th percentile."""
    return float((outside <= np.quantile(inside, 0.95)).mean())


def graph_scores(session, images: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([session.run(["ood_score"], {"image": images[i:i + batch]})[0]
                           for i in range(0, len(images), batch)])


def temperature_of(meta: ModelMetadata, checkpoint: Path) -> Optional[float]:
    """The temperature the export gave this network: an ensemble member's own (matched by checksum; None when the
    checkpoint is not a member), else the export's."""
    if meta.members:
        digest = sha256_file(checkpoint)
        return next((float(m["temperature"]) for m in meta.members if m["source_checkpoint"]["sha256"] == digest), None)
    return float((meta.calibration or {}).get("temperature", 1.0))


def compared(temperature: float, checkpoint: Path, sets: dict[str, np.ndarray], data: Path) -> dict[str, dict]:
    """pytorch-ood's detectors' scores ({detector: {set: scores}}) from the checkpoint's network."""
    import torch
    from pytorch_ood.detector import KNN, EnergyBased, Mahalanobis, MaxSoftmax, ViM

    from export.wrapper import classifier_from_checkpoint
    from training.checkpoint import load_checkpoint
    from training.data import load_split

    ckpt = load_checkpoint(checkpoint)
    wrapper = classifier_from_checkpoint(ckpt, checkpoint)
    wrapper.temperature.fill_(temperature)
    model = wrapper.model

    @torch.no_grad()
    def run(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, logits = [], []
        for i in range(0, len(images), 500):
            x = wrapper.normalize(images[i:i + 500])
            feats.append(model.embed(x))
            logits.append(wrapper(images[i:i + 500])[0])
        return torch.cat(feats), torch.cat(logits)

    train = load_split(str(data.parent), "train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(2))[:10000]
    fit_feats, _ = run(train.images[pick])
    labels = train.labels[pick]
    last = model.head if hasattr(model, "head") else model.classifier[-1]
    scale = float(getattr(model, "logit_scale", 1.0))
    weight = last.weight.detach() * scale
    bias = last.bias.detach() * scale if last.bias is not None else torch.zeros(len(weight))
    detectors = {
        "max softmax": ("logits", MaxSoftmax(None)), "energy": ("logits", EnergyBased(None)),
        "Mahalanobis (penultimate)": ("features", Mahalanobis(None).fit_features(fit_feats, labels)),
        "KNN k=50 (penultimate)": ("features", KNN(None, k=50).fit_features(fit_feats, labels)),
        "ViM (penultimate)": ("features", ViM(None, d=fit_feats.shape[1] // 4, w=weight, b=bias)
                              .fit_features(fit_feats, labels)),
    }
    out: dict[str, dict] = {name: {} for name in detectors}
    for set_name, images in sets.items():
        feats, logits = run(torch.from_numpy(images))
        for name, (kind, detector) in detectors.items():
            scores = detector.predict_logits(logits) if kind == "logits" else detector.predict_features(feats)
            out[name][set_name] = scores.double().numpy()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="the export's output folder (metadata.json, model.onnx)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10" / "test",
                   help="the test split (default: the shared copy's); --compare reads the train split beside it")
    p.add_argument("--images", type=int, default=2000, help="images per set (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true", help="also pytorch-ood's detectors (needs the checkpoint)")
    p.add_argument("--checkpoint", type=Path, help="with --compare: default, the export's source checkpoint")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores)")
    args = p.parse_args()
    meta = read_export(args.model)
    if not args.data.is_dir():
        print(f"error: {args.data} is not the test split; pass --data", file=sys.stderr)
        return 2
    if not 100 <= args.images <= 5000:
        print("error: --images must be from 100 to 5000 (in-distribution and near-OOD images both come from the "
              "10,000 test images)", file=sys.stderr)
        return 2
    session = onnx_session(str(args.model / "model.onnx"), args.threads)
    if meta.ood is None or "ood_score" not in [o.name for o in session.get_outputs()]:
        print(f"error: {args.model} was exported without an OOD score; export it again with this version",
              file=sys.stderr)
        return 2
    if args.compare and meta.members and args.checkpoint is None:
        print(f"error: {args.model} is an ensemble of {len(meta.members)} members and pytorch-ood's detectors read one "
              "network's features: pass --checkpoint with one member's checkpoint (metadata.json members)",
              file=sys.stderr)
        return 2
    checkpoint = args.checkpoint or Path(meta.source_checkpoint["path"])
    if args.compare and not checkpoint.is_file():
        print(f"error: --compare needs the checkpoint {checkpoint}; pass --checkpoint", file=sys.stderr)
        return 2
    temperature = temperature_of(meta, checkpoint) if args.compare else None
    if args.compare and temperature is None:
        print(f"error: {checkpoint} is not one of the ensemble's members (no member has its sha256)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    # The in-distribution images and, apart from them, the test images the near set rearranges.
    images, _ = load_test_images(args.data, list(meta.classes), 2 * args.images, args.seed)
    inside_images, spare = images[:args.images], images[args.images:]
    sets = {"in-distribution": inside_images}
    sets.update({name: oodsets.make(name, args.images, args.seed, spare) for name in oodsets.SETS})
    scores = {"shipped": {name: graph_scores(session, x).astype(np.float64) for name, x in sets.items()}}
    if args.compare:
        scores.update(compared(temperature, checkpoint, sets, args.data))
    seconds = time.perf_counter() - started

    threshold = float(meta.ood["threshold"])
    shipped_in = scores["shipped"]["in-distribution"]
    frr = float((shipped_in > threshold).mean())
    results: dict[str, dict[str, dict[str, float]]] = {}
    for detector, by_set in scores.items():
        results[detector] = {}
        for name in oodsets.SETS:
            entry = {"auroc": auroc(by_set["in-distribution"], by_set[name]),
                     "fpr_at_95_tpr": fpr_at_95(by_set["in-distribution"], by_set[name])}
            if detector == "shipped":
                entry["flagged_at_threshold"] = float((by_set[name] > threshold).mean())
            results[detector][name] = entry

    print(f"\n{args.model} ({meta.architecture}, recipe {meta.training_config.get('recipe')}), {args.images:,} images "
          f"per set (seed {args.seed}), {seconds:.0f} s")
    print(f"shipped score's threshold {threshold:.3f}: {100 * frr:.1f}% of these test images rejected "
          f"(export measured {100 * meta.ood['false_rejection_rate']:.1f}% on {meta.ood['report_images']:,})")
    kinds = {name: "far" for name in oodsets.FAR} | {name: "near" for name in oodsets.NEAR}
    print(f"{'detector':<28} | " + " | ".join(f"{f'{n} ({kinds[n]})':^20}" for n in oodsets.SETS))
    print(f"{'':<28} | " + " | ".join(f"{'AUROC  FPR@95TPR':^20}" for _ in oodsets.SETS))
    print("-" * (31 + 23 * len(oodsets.SETS)))
    for detector, by_set in results.items():
        print(f"{detector:<28} | " + " | ".join(f"{by_set[n]['auroc']:6.3f}  {100 * by_set[n]['fpr_at_95_tpr']:6.1f}%  "
                                               for n in oodsets.SETS))
    flagged = results["shipped"]
    print("flagged by the shipped threshold: " + ", ".join(f"{n} {100 * flagged[n]['flagged_at_threshold']:.1f}%"
                                                          for n in oodsets.SETS))
    far = [results["shipped"][n]["auroc"] for n in oodsets.FAR]
    print(f"shipped score, far-OOD AUROC: min {min(far):.3f}, mean {np.mean(far):.3f}")
    print(json.dumps({
        "model": str(args.model), "architecture": meta.architecture, "recipe": meta.training_config.get("recipe"),
        "images_per_set": args.images, "seed": args.seed, "threshold": threshold, "false_rejection_rate": frr,
        "far_sets": list(oodsets.FAR), "near_sets": list(oodsets.NEAR), "min_far_auroc": min(far),
        "results": results, "seconds": round(seconds, 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
