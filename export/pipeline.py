"""The export, step by step: checkpoint -> calibrated graphs (model.ts, model.onnx, model.int8.onnx, explain.ts,
explain.onnx), checked against the checkpoint on real test images, then published as one folder.

    inputs = load(options)          the checkpoint, its classifier, the test split (each split read once)
    calibration = calibrate(...)    the temperature the graphs carry (export/calibration.py says on which images)
    write_graphs(...)               into a staging folder beside the output folder
    check_parity(...)               eager vs TorchScript vs ONNX Runtime
    check_explanation(...)          explain.onnx against torch autograd
    check_int8(...)                 quantize and measure against fp32
    publish(staging, out, swap)     the staging folder takes the output folder's place in one rename

Every check runs before anything in the output folder changes; a failed one leaves it as it was.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from contract.atomic import exchange
from contract.provenance import git_commit, sha256_file
from contract.schemas import Checkpoint, ModelMetadata
from training.checkpoint import load_checkpoint
from training.data import Split, holdout, load_split, split_order

from . import ood
from .calibration import Calibration, calibrate_on, halves, reliability_plot
from .calibration import calibrate as calibrate_halves
from .ensemble import EnsembleClassifier, EnsembleExplainWrapper, check_members, members_digest, reference_heat
from .explain import LAYERS, METHODS, ExplainWrapper, activation_of, at_kink, autograd_cam, cam_for
from .graphs import export_onnx, export_torchscript, load_torchscript
from .metadata import build_metadata, type_name
from .parity import Runner, compare, explain_report, failures, onnx_runner, run_explain, torch_runner
from .quantize import count_ops, quantize
from .wrapper import classifier_from_checkpoint, images_per_call

ARTIFACTS = ("model.ts", "model.onnx", "model.int8.onnx", "explain.ts", "explain.onnx", "metadata.json",
             "export_report.json", "reliability.png")
Say = Callable[..., None]


class ExportError(Exception):
    """A user-caused problem (bad path, bad checkpoint, unwritable folder): one sentence, exit 2."""


@dataclass(frozen=True)
class ExportOptions:
    """The command line's choices (export/cli.py), checked there."""

    # One checkpoint, or several: an ensemble exported as one graph (export/ensemble.py).
    checkpoint: tuple[str, ...]
    out: str = "artifacts"
    data: Optional[str] = None
    parity_images: int = 2000
    tolerance: float = 1e-4
    opset: int = 18
    calibration: bool = True
    calibration_images: Optional[int] = None
    int8: bool = True
    int8_max_drop: float = 0.5
    int8_calibration_images: int = 1000
    bentoml: bool = False
    quiet: bool = False


@dataclass
class Inputs:
    """What every step reads: the checkpoint and its classifier, the dataset's splits (each loaded once)."""

    checkpoint: Path
    ckpt: Checkpoint
    # export.wrapper.ImageClassifier: uint8 [N, H, W, 3] -> (logits, probabilities); once the OOD score is fitted,
    # export.ood.ScoredClassifier: -> (logits, probabilities, ood_score)
    wrapper: torch.nn.Module
    data: str
    test: Split

    @cached_property
    def train(self) -> Split:
        return load_split(self.data, "train")

    @cached_property
    def sha256(self) -> str:
        """The checkpoint file's checksum, read once (duplicate check, metadata, an ensemble's members)."""
        return sha256_file(self.checkpoint)


def load(checkpoint_path: str, data: Optional[str], test: Optional[Split] = None) -> Inputs:
    """One checkpoint and its classifier; the test split read here unless `test` (already read) is given."""
    checkpoint = Path(checkpoint_path)
    ckpt = load_checkpoint(checkpoint)
    data = data or os.environ.get("CIFAR10_DATA") or ckpt.config["data"]
    wrapper = classifier_from_checkpoint(ckpt, checkpoint)
    test = test if test is not None else load_split(data, "test")
    if test.classes != list(ckpt.classes):
        raise ExportError(f"the test split of {data} has classes {test.classes}, the checkpoint {ckpt.classes}")
    return Inputs(checkpoint, ckpt, wrapper, data, test)


def seeded_pick(n: int, count: int, seed: int) -> torch.Tensor:
    """`count` of n indices, a seeded draw, in ascending order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def eager_logits(wrapper: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    batch = images_per_call(wrapper)
    with torch.no_grad():
        return torch.cat([wrapper(images[i:i + batch])[0] for i in range(0, len(images), batch)])


@dataclass
class CalibrationImages:
    """The test images the calibration and int8 figures use, and the classifier's logits on them (before T)."""

    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor


def calibration_images(inputs: Inputs, count: Optional[int]) -> CalibrationImages:
    test = inputs.test
    chosen = seeded_pick(len(test), min(count or len(test), len(test)), seed=1)
    images, labels = test.images[chosen], test.labels[chosen]
    return CalibrationImages(images, labels, eager_logits(inputs.wrapper, images))


def calibrate(inputs: Inputs, cal: CalibrationImages) -> Calibration:
    """Temperature scaling on the run's --val-split hold-out when it has one (all test images report), else on
    a seeded half of the test images (the other half reports). See export/calibration.py."""
    ckpt = inputs.ckpt
    val = held_out(inputs)
    if val is None:
        return calibrate_halves(cal.logits, cal.labels)
    held = int(ckpt.config["val_split"])
    return calibrate_on(eager_logits(inputs.wrapper, val.images), val.labels, cal.logits, cal.labels,
                        torch.arange(len(cal.labels)), "held-out training images",
                        f"the {held} training images the run held out (--val-split {held}, seed "
                        f"{ckpt.config['seed']}) fit T; the test images report")


def held_out(inputs: Inputs) -> Optional[Split]:
    """The training images the run held out (--val-split), rebuilt; None for a run without a hold-out."""
    ckpt = inputs.ckpt
    count = int(ckpt.config.get("val_split") or 0)
    if not count:
        return None
    train = inputs.train
    ran = ckpt.provenance.get("dataset") or {}
    if not ckpt.config.get("limit_train") and {"train_images", "val_images"} <= ran.keys():
        # The hold-out is a seeded draw over the whole training split: another copy of the data would give
        # other images, some of which the run trained on.
        if len(train) != ran["train_images"] + ran["val_images"]:
            raise ExportError(f"the training split of {inputs.data} has {len(train)} images, the run's had "
                              f"{ran['train_images'] + ran['val_images']}: its --val-split hold-out cannot be "
                              "rebuilt from it; give --data the dataset the run trained on")
    return holdout(train, int(ckpt.config["seed"]), count)


def fit_ood(inputs: Inputs) -> ood.Fitted:
    """The OOD score (export/ood.py): class statistics from a seeded sample of the images the run trained on;
    standardization and threshold on its --val-split hold-out, else on a seeded half of the test split (the other
    half reports the false rejections)."""
    ckpt, train, test = inputs.ckpt, inputs.train, inputs.test
    held = int(ckpt.config.get("val_split") or 0)
    trained = split_order(len(train), int(ckpt.config.get("seed", 0)))[held:]
    if ckpt.config.get("limit_train"):
        trained = trained[:int(ckpt.config["limit_train"])]
    pick = trained[seeded_pick(len(trained), min(ood.FIT_IMAGES, len(trained)), seed=2)]
    val = held_out(inputs)
    if val is not None:
        threshold_images, report_images = val.images, test.images
        source = f"the {held} training images the run held out (--val-split {held})"
    else:
        fit_half, report_half = halves(len(test), seed=0)
        threshold_images, report_images = test.images[fit_half], test.images[report_half]
        source = "test images (a seeded half; the other half reports)"
    try:
        return ood.fit(ckpt.arch, inputs.wrapper, train.images[pick], train.labels[pick], threshold_images,
                       report_images, source, len(ckpt.classes))
    except ValueError as exc:
        raise ExportError(str(exc)) from None


def write_graphs(inputs: Inputs, explainer: torch.nn.Module, staging: Path, opset: int, meta: ModelMetadata,
                 method: str) -> None:
    wrapper = inputs.wrapper
    example = torch.zeros(2, wrapper.image_size, wrapper.image_size, 3, dtype=torch.uint8)
    export_torchscript(wrapper, staging / "model.ts", meta)
    export_onnx(wrapper, staging / "model.onnx", opset, meta, {"image": example},
                ["logits", "probabilities", "ood_score"],
                f"{meta.model_name}: uint8 [N,32,32,3] RGB -> logits, probabilities, ood_score")
    export_torchscript(explainer, staging / "explain.ts", meta)
    export_onnx(explainer, staging / "explain.onnx", opset, meta,
                {"image": example, "target": torch.full((2,), -1, dtype=torch.int64)},
                ["heatmap", "probabilities", "ood_score"],
                f"{meta.model_name} {method}: uint8 [N,32,32,3] RGB, target int64 [N] "
                "(-1: top class) -> heatmap [N,32,32] in [0,1], probabilities, ood_score")


def check_parity(inputs: Inputs, staging: Path, onnx: Runner, images: np.ndarray, labels: np.ndarray,
                 tolerance: float, say: Say) -> tuple[dict, list[str]]:
    """(report, failures) of eager vs TorchScript vs ONNX Runtime (`onnx`: model.onnx) on the parity images."""
    runners = {
        "eager": torch_runner(inputs.wrapper, images_per_call(inputs.wrapper)),
        "torchscript": torch_runner(load_torchscript(staging / "model.ts"), images_per_call(inputs.wrapper)),
        "onnxruntime": onnx,
    }
    report = compare(images, labels, runners)
    report.update({"tolerance": tolerance, "data": str(inputs.data), "checkpoint": str(inputs.checkpoint)})
    for name, entry in report["artifacts"].items():
        line = f"  {name:<12} accuracy {100 * entry['accuracy']:6.2f}%"
        if "max_abs_logit_diff" in entry:
            line += (f"  max|Δlogit| {entry['max_abs_logit_diff']:.2e}  max|Δprob| {entry['max_abs_prob_diff']:.2e}"
                     f"  top-1 agreement {100 * entry['top1_agreement']:.2f}%")
            if "max_rel_ood_diff" in entry:
                line += f"  ood_score rel. {entry['max_rel_ood_diff']:.1e}"
        say(line)
    return report, failures(report, tolerance)


def explained_by(members: list[Inputs]) -> tuple[str, str]:
    """(method, layer) as metadata.json and the report name them: one network's, or each member's for an ensemble."""
    if len(members) == 1:
        arch = members[0].ckpt.arch
        return METHODS[arch], LAYERS[arch]
    return ("mean of the members' maps: " + ", ".join(METHODS[m.ckpt.arch] for m in members),
            "; ".join(f"member {i + 1}: {LAYERS[m.ckpt.arch]}" for i, m in enumerate(members)))


def check_explanation(members: list[Inputs], staging: Path, onnx: Runner, images: np.ndarray, tolerance: float,
                      say: Say) -> tuple[dict, list[str], list]:
    """explain.onnx (as the CPU image serves it) against the torch autograd reference, and its probabilities
    against the classifier's (`onnx`: model.onnx): (report entry, failures, the explained activation's grid, one
    per member for an ensemble). The reference of an ensemble is its members' autograd maps, averaged and rescaled
    (export/ensemble.py)."""
    classifier_probs = onnx(images)[1]
    targets = torch.from_numpy(classifier_probs.argmax(1))
    # The explanation graph holds the classifier and the map's own layers: half the classifier's batch.
    batch = max(1, min(images_per_call(m.wrapper) for m in members) // 2)
    heat, probs = run_explain(str(staging / "explain.onnx"), images, batch_size=batch)
    maps, kinks, grids = [], torch.zeros(len(images), dtype=torch.bool), []
    for member in members:
        arch, wrapper = member.ckpt.arch, member.wrapper
        x = wrapper.normalize(torch.from_numpy(images))  # [N, 3, H, W]
        with torch.no_grad():
            explained = activation_of(arch, wrapper.model, x)  # [N, K, h, w]: the layer the heatmap comes from
        maps.append(autograd_cam(arch, wrapper.model, x, targets, wrapper.image_size, explained))
        kinks |= at_kink(arch, wrapper.model, explained)
        grids.append(list(explained.shape[2:]))
    reference = reference_heat(maps).numpy()
    method, layer = explained_by(members)
    entry = explain_report(heat, reference, probs, classifier_probs, layer, method, kinks.numpy())
    say(f"  explain.onnx max|Δheatmap| {entry['max_abs_heatmap_diff']:.2e} against autograd "
        f"{method} ({len(images) - int(kinks.sum())} images; "
        f"{int(kinks.sum())} at a ReLU kink left out: {entry['max_abs_heatmap_diff_all']:.2e} with them)")
    bad = []
    # `not x <= tol`, so that a NaN difference fails too.
    if not entry["max_abs_heatmap_diff"] <= tolerance:
        bad.append(f"explain.onnx: max |Δheatmap| {entry['max_abs_heatmap_diff']:.2e} > {tolerance:.0e}")
    if not entry["max_abs_prob_diff"] <= tolerance:
        bad.append(f"explain.onnx: probabilities differ from model.onnx by {entry['max_abs_prob_diff']:.2e}")
    return entry, bad, grids[0] if len(members) == 1 else grids


def check_int8(inputs: Inputs, staging: Path, onnx: Runner, images: np.ndarray, labels: np.ndarray,
               cal: CalibrationImages, calibration_images: int, threshold: float, say: Say) -> dict:
    """Quantize model.onnx and measure it: on the parity images and on the calibration test images (all of them
    unless --calibration-images says fewer), against fp32 (`onnx`: model.onnx)."""
    train = inputs.train
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:calibration_images]
    record = quantize(staging / "model.onnx", staging / "model.int8.onnx", train.images[pick].numpy())
    int8 = onnx_runner(str(staging / "model.int8.onnx"), batch=images_per_call(inputs.wrapper))
    int8_logits, int8_probs, _ = int8(cal.images.numpy())
    fp32_probs = torch.softmax(cal.logits / inputs.wrapper.temperature, dim=1).numpy()
    # The OOD score on the parity images, both graphs in ONNX Runtime (a pass of the eager airbench graph over the
    # whole test split would cost minutes for a figure the parity images give).
    int8_parity = int8(images)
    fp32_ood, int8_ood = onnx(images)[2], int8_parity[2]
    truth = cal.labels.numpy()
    fp32_acc = float((fp32_probs.argmax(1) == truth).mean())
    int8_acc = float((int8_logits.argmax(1) == truth).mean())
    parity_logits = int8_parity[0]
    record.update({
        "parity_images": int(len(images)), "parity_accuracy": float((parity_logits.argmax(1) == labels).mean()),
        "test_images": int(len(truth)), "test_accuracy": int8_acc, "fp32_test_accuracy": fp32_acc,
        "drop_points": round(100 * (fp32_acc - int8_acc), 4),
        "top1_agreement": float((int8_logits.argmax(1) == fp32_probs.argmax(1)).mean()),
        "max_abs_prob_diff": float(np.abs(int8_probs - fp32_probs).max()),
        # The threshold was fitted on fp32 scores: how often int8 lands on the other side of it (parity images).
        "in_distribution_agreement": float(((int8_ood <= threshold) == (fp32_ood <= threshold)).mean()),
        "int8_false_rejection_rate": float((int8_ood > threshold).mean()),
        "ops": count_ops(staging / "model.int8.onnx"),
    })
    say(f"  int8         accuracy {100 * int8_acc:6.2f}% on the {len(truth)} test images (fp32 {100 * fp32_acc:.2f}%, "
        f"top-1 agreement {100 * record['top1_agreement']:.2f}%, max|Δprob| {record['max_abs_prob_diff']:.2e})")
    return record


@dataclass
class Result:
    passed: bool
    failures: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    meta: Optional[ModelMetadata] = None
    parity_images: int = 0


@dataclass
class Prepared:
    """A graph ready to export: its classifier calibrated and scored (inputs.wrapper), and what fitted them."""

    inputs: Inputs
    cal: Optional[CalibrationImages]
    calibration: Optional[Calibration]
    ood: dict


def fit_member(inputs: Inputs, options: ExportOptions, say: Say) -> Prepared:
    """Calibrate the network's probabilities, then fit its OOD score (which reads them); inputs.wrapper becomes the
    scored classifier."""
    cal = calibration_images(inputs, options.calibration_images) if options.calibration or options.int8 else None
    calibration = None
    if options.calibration:
        calibration = calibrate(inputs, cal)
        inputs.wrapper.temperature.fill_(calibration.temperature)
        say_calibration(calibration.record, say)
    # After the temperature: the score's confidence term reads the served (calibrated) probabilities.
    fitted = fit_ood(inputs)
    inputs.wrapper = fitted.classifier
    say_ood(fitted.record, say)
    return Prepared(inputs, cal, calibration, fitted.record)


def say_calibration(record: dict, say: Say) -> None:
    say(f"  calibration  T = {record['temperature']:.4f}: ECE {100 * record['before']['ece']:.2f}% -> "
        f"{100 * record['after']['ece']:.2f}%, NLL {record['before']['nll']:.4f} -> {record['after']['nll']:.4f} "
        f"(fit on {record['fit_images']} {record['fit_source']}, reported on {record['report_images']} test images)")


def say_ood(record: dict, say: Say) -> None:
    say(f"  ood score    threshold {record['threshold']:.3f} ({100 * ood.TPR:.0f}% of {record['threshold_images']} "
        f"held-out images below it); false rejections {100 * record['false_rejection_rate']:.2f}% of "
        f"{record['report_images']} test images")


def load_members(options: ExportOptions) -> list[Inputs]:
    """The checkpoints, each read once, sharing one test split; several must be distinct and averageable."""
    paths = [Path(p) for p in options.checkpoint]
    seen: dict[Path, str] = {}
    for p in paths:
        if p.resolve() in seen:
            raise ExportError(f"checkpoint {p} is listed twice; an ensemble's members must differ")
        seen[p.resolve()] = str(p)
    members: list[Inputs] = []
    for p in paths:
        members.append(load(str(p), options.data, members[0].test if members else None))
    if len(members) > 1:
        digests = [m.sha256 for m in members]
        twins = [(a, b) for i, a in enumerate(paths) for j, b in enumerate(paths) if i < j and digests[i] == digests[j]]
        if twins:
            raise ExportError(f"checkpoints {twins[0][0]} and {twins[0][1]} are the same file's bytes; an ensemble's "
                              "members must differ")
        try:
            check_members([m.ckpt for m in members])
        except ValueError as exc:
            raise ExportError(str(exc)) from None
    return members


def ensemble_of(fitted: list[Prepared], options: ExportOptions, meta: ModelMetadata,
                say: Say) -> tuple[Prepared, EnsembleClassifier]:
    """The members averaged in one graph, its own temperature fitted on their mean probability and its OOD threshold
    on the mean score (a seeded half of the calibration test images fits both, the other half reports)."""
    ensemble = EnsembleClassifier([f.inputs.wrapper for f in fitted]).eval()
    first = fitted[0]
    cal = first.cal if first.cal is not None else calibration_images(first.inputs, options.calibration_images)
    # The graph itself, not the members' logits from fit_member recombined here: the members' OOD scores on these
    # images were never computed, and what is fitted below is then what ships.
    with torch.no_grad():
        batch = images_per_call(ensemble)
        parts = [ensemble.mean_probs(cal.images[i:i + batch]) for i in range(0, len(cal.images), batch)]
    probs, scores = torch.cat([p for p, _ in parts]), torch.cat([s for _, s in parts])
    logits = torch.log(probs.clamp_min(1e-30))
    cal = CalibrationImages(cal.images, cal.labels, logits)
    calibration = None
    if options.calibration:
        calibration = calibrate_halves(logits, cal.labels)
        ensemble.temperature.fill_(calibration.temperature)
        say_calibration(calibration.record, say)
    fit_half, report_half = halves(len(cal.labels), seed=0)
    threshold = float(torch.quantile(scores[fit_half].double(), ood.TPR))
    record = {
        "score": "mean of the members' ood_score (each standardized on its own held-out images; export/ood.py)",
        "higher_means": "less like the training images", "threshold": threshold, "true_positive_rate": ood.TPR,
        "threshold_images": int(len(fit_half)),
        "threshold_source": "test images (a seeded half; the other half reports)",
        "report_images": int(len(report_half)),
        "false_rejection_rate": float((scores[report_half] > threshold).double().mean()),
        "members": [f.ood for f in fitted],
        "method": "export/ensemble.py; benchmarks/ood.py measures AUROC and FPR at 95% TPR",
    }
    say_ood(record, say)
    accuracy = float((logits.argmax(1) == cal.labels).double().mean())
    say(f"  ensemble     {len(fitted)} members: test accuracy {100 * accuracy:.2f}% on {len(cal.labels)} test images "
        f"(members: {', '.join(f'{100 * member_accuracy(f, cal.labels):.2f}%' for f in fitted)})")
    members = []
    for f in fitted:
        ck = f.inputs.ckpt
        members.append({
            "architecture": type_name(ck.arch), "arch": ck.arch, "recipe": ck.config.get("recipe"),
            "seed": ck.config.get("seed"), "source_checkpoint": {"path": str(f.inputs.checkpoint.resolve()),
                                                                 "sha256": f.inputs.sha256},
            "training_test_acc": (ck.metrics or {}).get("test_acc"),
            "test_acc": member_accuracy(f, cal.labels), "test_images": int(len(cal.labels)),
            "temperature": float(f.inputs.wrapper.temperature), "tta_flip": bool(ck.config.get("tta_flip", False)),
            "tta_translate": int(ck.config.get("tta_translate", 0)),
            "normalization": {"mean": list(ck.normalization.mean), "std": list(ck.normalization.std)},
            "git_commit": ck.provenance.get("git_commit"),
        })
    meta.model_name = "cifar10-ensemble"
    meta.architecture = f"Ensemble({', '.join(m['architecture'] for m in members)})"
    meta.members = members
    meta.source_checkpoint = {"path": f"{len(members)} members (see members)",
                              "sha256": members_digest([m["source_checkpoint"]["sha256"] for m in members])}
    meta.training_config = {"ensemble": [dict(f.inputs.ckpt.config) for f in fitted]}
    meta.tta_flip = any(m["tta_flip"] for m in members)
    meta.tta_translate = max(m["tta_translate"] for m in members)
    meta.metrics = {"test_acc": accuracy, "test_images": int(len(cal.labels)), "best_val_acc": None,
                    "best_epoch": None, "members_test_acc": [m["test_acc"] for m in members]}
    if any(m["normalization"] != members[0]["normalization"] for m in members):
        meta.normalization = {"per_member": [m["normalization"] for m in members]}
    # A shallow copy keeps what the first member already read (the decoded training split, the checksum).
    inputs = copy.copy(first.inputs)
    inputs.wrapper = ensemble
    return Prepared(inputs, cal, calibration, record), ensemble


def member_accuracy(fitted: Prepared, labels: torch.Tensor) -> float:
    """A member's accuracy (its own TTA) on the calibration test images, from the logits it was calibrated with."""
    cal = fitted.cal
    return float((cal.logits.argmax(1) == labels).double().mean()) if cal is not None else float("nan")


def run(options: ExportOptions, say: Say = print) -> Result:
    """The whole export; the output folder changes only when every check passed."""
    out = Path(options.out)
    check_writable(out)  # before the data is decoded, as a user would want to hear it
    members = load_members(options)
    inputs = members[0]
    n = min(options.parity_images, len(inputs.test))
    pick = seeded_pick(len(inputs.test), n, seed=0)
    images, labels = inputs.test.images[pick].numpy(), inputs.test.labels[pick].numpy()

    import onnx
    import onnxruntime

    versions = {"torch": str(torch.__version__), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    meta = build_metadata(inputs.ckpt, inputs.checkpoint.resolve(), inputs.sha256, versions,
                          export_commit=git_commit())

    # Calibration first, then the OOD score: the graphs carry both.
    fitted = []
    for i, member in enumerate(members):
        if len(members) > 1:
            say(f"  member {i + 1}/{len(members)}: {member.checkpoint} ({type_name(member.ckpt.arch)})")
        fitted.append(fit_member(member, options, say))
    if len(fitted) == 1:
        result = fitted[0]
        explainer = ExplainWrapper(inputs.wrapper, cam_for(inputs.ckpt.arch, inputs.wrapper.model,
                                                            inputs.wrapper.image_size)).eval()
    else:
        result, ensemble = ensemble_of(fitted, options, meta, say)
        explainer = EnsembleExplainWrapper(ensemble, [
            cam_for(m.ckpt.arch, m.wrapper.model, m.wrapper.image_size) for m in members]).eval()
    inputs, cal, calibration = result.inputs, result.cal, result.calibration
    # Before the graphs are written, so that their own metadata (ONNX metadata_props, model.ts's extra file)
    # carries the temperature and threshold baked into them.
    meta.calibration = calibration.record if calibration is not None else None
    meta.ood = result.ood
    method, layer = explained_by(members)

    swap = swappable(out)
    staging = staging_folder(out, swap)
    try:
        write_graphs(inputs, explainer, staging, options.opset, meta, method)
        onnx = onnx_runner(str(staging / "model.onnx"), batch=images_per_call(inputs.wrapper))  # one for every check
        report, bad = check_parity(inputs, staging, onnx, images, labels, options.tolerance, say)
        report["explanation"], explain_bad, grid = check_explanation(members, staging, onnx, images,
                                                                      options.tolerance, say)
        bad += explain_bad
        if options.int8 and not bad:
            report["int8"] = check_int8(inputs, staging, onnx, images, labels, cal, options.int8_calibration_images,
                                        meta.ood["threshold"], say)
            if not report["int8"]["drop_points"] <= options.int8_max_drop:
                bad.append(f"model.int8.onnx: accuracy {100 * report['int8']['test_accuracy']:.2f}% on the test split "
                           f"is {report['int8']['drop_points']:.2f} points below fp32 "
                           f"({100 * report['int8']['fp32_test_accuracy']:.2f}%), more than --int8-max-drop "
                           f"{options.int8_max_drop:g}")
            meta.int8 = report["int8"]
        report["passed"] = not bad
        if bad:
            return Result(False, bad)
        if calibration is not None:
            held = calibration.held
            reliability_plot(staging / "reliability.png", cal.logits[held], cal.labels[held],
                             calibration.temperature, f"{meta.model_name}, {len(held)} test images "
                             f"(T fit on {calibration.record['fit_images']} {calibration.record['fit_source']})")
            report["calibration"] = calibration.record
        # The explained activation's grid, which the heatmap is upsampled from.
        meta.explanation = {"method": method, "layer": layer, "grid": grid,
                            "onnx": "explain.onnx", "torchscript": "explain.ts",
                            "output": "heatmap [N, H, W] in [0, 1] on the input grid"}
        (staging / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
        written = [name for name in ARTIFACTS if (staging / name).exists() or name == "metadata.json"]
        meta.files = {name: sha256_file(staging / name) for name in written if name != "metadata.json"}
        meta.write(staging / "metadata.json")
        publish(staging, out, swap)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Result(True, [], written, meta, n)


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as exc:
        raise ExportError(f"cannot write to output folder {out} ({exc.strerror or exc})") from None


def swappable(out: Path) -> bool:
    """Whether the output folder can be replaced as a whole by a sibling folder: a real folder (not a symlink,
    whose target the swap would not follow), on the same filesystem as its parent (not a mount point), whose
    parent takes new entries, holding files only (a folder inside would have to be carried along), and not this
    process's working directory or above it."""
    try:
        if out.is_symlink() or not out.is_dir() or out.stat().st_dev != out.parent.stat().st_dev:
            return False
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".probe-"):
            pass
        cwd, target = Path.cwd().resolve(), out.resolve()
    except OSError:
        return False
    if cwd == target or target in cwd.parents:
        return False
    return not any(p.is_dir() for p in out.iterdir())


def staging_folder(out: Path, swap: bool) -> Path:
    """Where the export is written and checked: beside the output folder when it will be swapped in (with the
    output folder's permissions, which the swap hands on), else inside it."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent if swap else out))
    if swap:
        os.chmod(staging, stat.S_IMODE(out.stat().st_mode))
    return staging


def publish(staging: Path, out: Path, swap: bool) -> None:
    """Make the checked export the output folder's content. A reader sees the earlier export or this one, never a
    mix. With `swap` (see swappable()) the staging folder takes the output folder's place in one rename, after the
    files that are not an export's (notes.txt, say) are linked into it. Otherwise (staging inside the output
    folder) the files are moved in one by one, metadata.json last, after an earlier export's files this one did
    not write are removed."""
    if swap:
        for p in out.iterdir():
            if p.name not in ARTIFACTS and not (staging / p.name).exists():
                try:
                    os.link(p, staging / p.name, follow_symlinks=False)
                except OSError:
                    shutil.copy2(p, staging / p.name, follow_symlinks=False)
        if exchange(staging, out):
            return  # `staging` now names the earlier export, which the caller removes
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
        os.rename(out, old / "old")
        try:
            os.rename(staging, out)
        except OSError:
            os.rename(old / "old", out)  # put the earlier export back rather than leave no folder
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    written = [p.name for p in staging.iterdir() if p.name in ARTIFACTS]
    for name in set(ARTIFACTS) - set(written):
        (out / name).unlink(missing_ok=True)
    for name in written:
        if name != "metadata.json":
            os.replace(staging / name, out / name)
    os.replace(staging / "metadata.json", out / "metadata.json")


def save_to_bentoml(out: Path, meta: ModelMetadata, files: list[str]) -> str:
    try:
        import bentoml
    except ImportError:
        raise ExportError("--bentoml needs the bentoml package (pip install 'cifar10-service[serve]')") from None
    with bentoml.models.create(
        meta.model_name,
        # Label values allow letters, digits, '-', '_' and '.': an ensemble's "Ensemble(A, B)" is listed in its
        # metadata instead.
        labels={"framework": "onnx+torchscript", "dataset": "cifar10",
                "architecture": "ensemble" if meta.members else meta.architecture},
        metadata={"accuracy": meta.metrics["test_acc"], "classes": meta.classes, "input": meta.input,
                  "tta_flip": meta.tta_flip, "source_sha256": meta.source_checkpoint["sha256"]},
    ) as model_ref:
        for name in files:
            shutil.copy2(out / name, Path(model_ref.path) / name)
    return str(model_ref.tag)
