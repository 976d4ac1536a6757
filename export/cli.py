"""`python -m export` / `cifar10-export`: checkpoint -> model.ts, model.onnx, metadata, parity report."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from contract.provenance import git_commit, sha256_file
from contract.schemas import ModelMetadata
from training.checkpoint import CheckpointError, load_checkpoint
from training.data import DataError, holdout, load_split

from .calibration import calibrate, calibrate_on, reliability_plot
from .explain import LAYERS, METHODS, Explainer, activation_of, at_kink, autograd_cam, cam_for
from .graphs import export_onnx, export_torchscript, load_torchscript
from .metadata import build_metadata
from .parity import compare, explain_report, failures, onnx_runner, run_explain, torch_runner
from .quantize import count_ops, quantize
from .wrapper import classifier_from_checkpoint

ARTIFACTS = ("model.ts", "model.onnx", "model.int8.onnx", "explain.ts", "explain.onnx", "metadata.json",
             "export_report.json", "reliability.png")


class ExportError(Exception):
    """A user-caused problem (bad path, bad checkpoint, unwritable folder): one sentence, exit 2."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cifar10-export", description=(
        "Export a training checkpoint to TorchScript and ONNX graphs that take uint8 [N, 32, 32, 3] RGB images "
        "and return logits and probabilities, verified against the checkpoint on real test images."))
    p.add_argument("--checkpoint", required=True, help="a best.pt (or last.pt) written by the training stage")
    p.add_argument("--out", default="artifacts", help="output folder (default ./artifacts)")
    p.add_argument("--data", default=None,
                   help="dataset with the test split for the parity check "
                   "(default: $CIFAR10_DATA, else the checkpoint's)")
    p.add_argument("--parity-images", type=int, default=2000,
                   help="test images compared across eager, TorchScript and ONNX Runtime (default 2000, minimum 1000)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |Δlogit| (default 1e-4)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--no-calibration", dest="calibration", action="store_false",
                   help="do not fit a temperature (probabilities = softmax(logits), as trained)")
    p.add_argument("--calibration-images", type=int, default=None, metavar="N",
                   help="test images the calibration figures use (default: the whole test split; minimum 1000). A "
                   "checkpoint trained with --val-split fits the temperature on its held-out training images and "
                   "reports on these; otherwise a seeded half of these fits it and the other half reports")
    p.add_argument("--no-int8", dest="int8", action="store_false",
                   help="do not write model.int8.onnx (ONNX Runtime static quantization, see docs/export.md)")
    p.add_argument("--int8-max-drop", type=float, default=0.5, metavar="POINTS",
                   help="refuse the export (exit 1) when int8 accuracy on the whole test split is more than this "
                   "many points below fp32 (default 0.5)")
    p.add_argument("--int8-calibration-images", type=int, default=1000, metavar="N",
                   help="seeded training images that calibrate the int8 ranges (default 1000, minimum 1000)")
    p.add_argument("--bentoml", action="store_true",
                   help="also save into the BentoML model store as cifar10-<network> (cifar10-simplecnn, "
                   "cifar10-airbench)")
    p.add_argument("--quiet", action="store_true", help="print only the result line")
    return p


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as exc:
        raise ExportError(f"cannot write to output folder {out} ({exc.strerror or exc})") from None


def _save_to_bentoml(out: Path, meta: ModelMetadata, files: list[str]) -> str:
    try:
        import bentoml
    except ImportError:
        raise ExportError("--bentoml needs the bentoml package (pip install 'cifar10-service[serve]')") from None
    with bentoml.models.create(
        meta.model_name,
        labels={"framework": "onnx+torchscript", "dataset": "cifar10", "architecture": meta.architecture},
        metadata={"accuracy": meta.metrics["test_acc"], "classes": meta.classes, "input": meta.input,
                  "tta_flip": meta.tta_flip, "source_sha256": meta.source_checkpoint["sha256"]},
    ) as model_ref:
        for name in files:
            shutil.copy2(out / name, Path(model_ref.path) / name)
    return str(model_ref.tag)


def _eager_logits(wrapper: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([wrapper(images[i:i + batch])[0] for i in range(0, len(images), batch)])


def _say_parity(say, report: dict) -> None:
    for name, entry in report["artifacts"].items():
        line = f"  {name:<12} accuracy {100 * entry['accuracy']:6.2f}%"
        if "max_abs_logit_diff" in entry:
            line += (f"  max|Δlogit| {entry['max_abs_logit_diff']:.2e}  max|Δprob| {entry['max_abs_prob_diff']:.2e}"
                     f"  top-1 agreement {100 * entry['top1_agreement']:.2f}%")
        say(line)


def run(args: argparse.Namespace) -> int:
    say = (lambda *a: None) if args.quiet else print
    if args.parity_images < 1000:
        raise ExportError("--parity-images must be at least 1000")
    if args.int8_calibration_images < 1000:
        raise ExportError("--int8-calibration-images must be at least 1000")
    if args.calibration_images is not None and args.calibration_images < 1000:
        raise ExportError("--calibration-images must be at least 1000")
    if args.int8_max_drop < 0:
        raise ExportError(f"--int8-max-drop must not be negative, got {args.int8_max_drop}")
    checkpoint = Path(args.checkpoint)
    ckpt = load_checkpoint(checkpoint)
    out = Path(args.out)
    _check_writable(out)

    wrapper = classifier_from_checkpoint(ckpt, checkpoint)
    data = args.data or os.environ.get("CIFAR10_DATA") or ckpt.config["data"]
    test = load_split(data, "test")
    if test.classes != list(ckpt.classes):
        raise ExportError(f"the test split of {data} has classes {test.classes}, the checkpoint {ckpt.classes}")
    n = min(args.parity_images, len(test))
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n].sort().values
    images, labels = test.images[pick].numpy(), test.labels[pick].numpy()

    import onnx
    import onnxruntime

    versions = {"torch": str(torch.__version__), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    meta = build_metadata(ckpt, checkpoint.resolve(), versions, export_commit=git_commit())

    # Calibration first: the graphs carry the temperature (export/calibration.py says which images).
    calibration = None
    if args.calibration or args.int8:
        count = min(args.calibration_images or len(test), len(test))
        chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:count].sort().values
        cal_images, cal_labels = test.images[chosen], test.labels[chosen]
        all_logits = _eager_logits(wrapper, cal_images)
    if args.calibration:
        calibration = _calibrate(ckpt, data, wrapper, all_logits, cal_labels)
        wrapper.temperature.fill_(calibration["temperature"])
        # Before the graphs are written, so that their own metadata (ONNX metadata_props, model.ts's extra file)
        # carries the temperature baked into them.
        meta.calibration = {k: v for k, v in calibration.items() if k != "_held"}
        before, after = calibration["before"], calibration["after"]
        say(f"  calibration  T = {calibration['temperature']:.4f}: ECE {100 * before['ece']:.2f}% -> "
            f"{100 * after['ece']:.2f}%, NLL {before['nll']:.4f} -> {after['nll']:.4f} "
            f"(fit on {calibration['fit_images']} {calibration['fit_source']}, "
            f"reported on {calibration['report_images']} test images)")
    explainer = Explainer(wrapper, cam_for(ckpt.arch, wrapper.model, wrapper.image_size)).eval()

    # Everything is written and verified in a staging folder first; only a passing export replaces
    # the artifacts in `out`, one atomic rename per file.
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        example = torch.zeros(2, wrapper.image_size, wrapper.image_size, 3, dtype=torch.uint8)
        export_torchscript(wrapper, staging / "model.ts", meta)
        export_onnx(wrapper, staging / "model.onnx", args.opset, meta, {"image": example},
                    ["logits", "probabilities"], f"{meta.model_name}: uint8 [N,32,32,3] RGB -> logits, probabilities")
        export_torchscript(explainer, staging / "explain.ts", meta)
        export_onnx(explainer, staging / "explain.onnx", args.opset, meta,
                    {"image": example, "target": torch.full((2,), -1, dtype=torch.int64)}, ["heatmap", "probabilities"],
                    f"{meta.model_name} {METHODS[ckpt.arch]}: uint8 [N,32,32,3] RGB, target int64 [N] "
                    "(-1: top class) -> heatmap [N,32,32] in [0,1], probabilities")
        runners = {
            "eager": torch_runner(wrapper),
            "torchscript": torch_runner(load_torchscript(staging / "model.ts")),
            "onnxruntime": onnx_runner(str(staging / "model.onnx")),
        }
        report = compare(images, labels, runners)
        report.update({"tolerance": args.tolerance, "data": str(data), "checkpoint": str(checkpoint)})
        bad = failures(report, args.tolerance)
        _say_parity(say, report)

        # The explanation graph (ONNX Runtime, as the CPU image serves it) against the torch autograd reference.
        classifier_probs = runners["onnxruntime"](images)[1]
        targets = classifier_probs.argmax(1)
        heat, probs = run_explain(str(staging / "explain.onnx"), images)
        x = _normalized(wrapper, images)
        with torch.no_grad():
            explained = activation_of(ckpt.arch, wrapper.model, x)  # [N, K, h, w]: the layer the heatmap comes from
        reference = autograd_cam(ckpt.arch, wrapper.model, x, torch.from_numpy(targets), wrapper.image_size,
                                 explained).numpy()
        kinks = at_kink(ckpt.arch, wrapper.model, explained).numpy()
        report["explanation"] = explain_report(heat, reference, probs, classifier_probs, LAYERS[ckpt.arch],
                                               METHODS[ckpt.arch], kinks)
        say(f"  explain.onnx max|Δheatmap| {report['explanation']['max_abs_heatmap_diff']:.2e} against autograd "
            f"{METHODS[ckpt.arch]} ({n - int(kinks.sum())} images, {LAYERS[ckpt.arch].split(' ')[0]}; "
            f"{int(kinks.sum())} at a ReLU kink left out: "
            f"{report['explanation']['max_abs_heatmap_diff_all']:.2e} with them)")
        # `not x <= tol`, so that a NaN difference fails too.
        if not report["explanation"]["max_abs_heatmap_diff"] <= args.tolerance:
            bad.append(f"explain.onnx: max |Δheatmap| {report['explanation']['max_abs_heatmap_diff']:.2e} > "
                       f"{args.tolerance:.0e}")
        if not report["explanation"]["max_abs_prob_diff"] <= args.tolerance:
            bad.append(f"explain.onnx: probabilities differ from model.onnx by "
                       f"{report['explanation']['max_abs_prob_diff']:.2e}")
        if args.int8 and not bad:
            report["int8"] = _int8(args, data, staging, images, labels, all_logits, wrapper, cal_images, cal_labels,
                                   say)
            if not report["int8"]["drop_points"] <= args.int8_max_drop:
                bad.append(f"model.int8.onnx: accuracy {100 * report['int8']['test_accuracy']:.2f}% on the test split "
                           f"is {report['int8']['drop_points']:.2f} points below fp32 "
                           f"({100 * report['int8']['fp32_test_accuracy']:.2f}%), more than --int8-max-drop "
                           f"{args.int8_max_drop:g}")
            meta.int8 = report["int8"]
        report["passed"] = not bad
        if bad:
            print(f"error: export rejected, artifacts in {out} left unchanged: {'; '.join(bad)}", file=sys.stderr)
            return 1
        if calibration is not None:
            held = calibration.pop("_held")
            reliability_plot(staging / "reliability.png", all_logits[held], cal_labels[held],
                             calibration["temperature"], f"{meta.model_name}, {len(held)} test images "
                             f"(T fit on {calibration['fit_images']} {calibration['fit_source']})")
            report["calibration"] = calibration
            meta.calibration = calibration
        # The explained activation's grid, which the heatmap is upsampled from.
        meta.explanation = {"method": METHODS[ckpt.arch], "layer": LAYERS[ckpt.arch],
                            "grid": list(explained.shape[2:]),
                            "onnx": "explain.onnx", "torchscript": "explain.ts",
                            "output": "heatmap [N, H, W] in [0, 1] on the input grid"}
        (staging / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
        written = [name for name in ARTIFACTS if (staging / name).exists() or name == "metadata.json"]
        meta.files = {name: sha256_file(staging / name) for name in written if name != "metadata.json"}
        meta.write(staging / "metadata.json")
        # metadata.json goes last: whoever reads the new one finds every file it lists (with those checksums)
        # and none of an earlier export's files that it does not list.
        for name in written:
            if name != "metadata.json":
                os.replace(staging / name, out / name)
        for name in set(ARTIFACTS) - set(written):
            # An earlier export's file this one did not write (e.g. model.int8.onnx after --no-int8) would
            # sit beside metadata.json that no longer lists it.
            (out / name).unlink(missing_ok=True)
        os.replace(staging / "metadata.json", out / "metadata.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"exported {out / 'model.ts'}, {out / 'model.onnx'} and the explanation graphs: parity on {n} test images "
          f"passed (tolerance {args.tolerance:.0e}); metadata.json, export_report.json beside them")
    if args.bentoml:
        print(f"saved to the BentoML model store as {_save_to_bentoml(out, meta, written)}")
    return 0


def _calibrate(ckpt, data: str, wrapper: torch.nn.Module, test_logits: torch.Tensor,
               test_labels: torch.Tensor) -> dict:
    """Temperature scaling on the run's --val-split hold-out when it has one (all test images report), else on
    a seeded half of the test images (the other half reports). See export/calibration.py."""
    held_out = int(ckpt.config.get("val_split") or 0)
    if not held_out:
        return calibrate(test_logits, test_labels)
    train = load_split(data, "train")
    ran = ckpt.provenance.get("dataset") or {}
    if not ckpt.config.get("limit_train") and {"train_images", "val_images"} <= ran.keys():
        # The hold-out is a seeded draw over the whole training split: another copy of the data would give
        # other images, some of which the run trained on.
        if len(train) != ran["train_images"] + ran["val_images"]:
            raise ExportError(f"the training split of {data} has {len(train)} images, the run's had "
                              f"{ran['train_images'] + ran['val_images']}: its --val-split hold-out cannot be "
                              "rebuilt from it; give --data the dataset the run trained on")
    val = holdout(train, int(ckpt.config["seed"]), held_out)
    return calibrate_on(_eager_logits(wrapper, val.images), val.labels, test_logits, test_labels,
                        torch.arange(len(test_labels)), "held-out training images",
                        f"the {held_out} training images the run held out (--val-split {held_out}, seed "
                        f"{ckpt.config['seed']}) fit T; the test images report")


def _int8(args: argparse.Namespace, data: str, staging: Path, images: np.ndarray, labels: np.ndarray,
          all_logits: torch.Tensor, wrapper: torch.nn.Module, test_images: torch.Tensor, test_labels: torch.Tensor,
          say) -> dict:
    """Quantize model.onnx and measure it: on the parity images and on the test images (all of them unless
    --calibration-images says fewer), against fp32."""
    train = load_split(data, "train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.int8_calibration_images]
    record = quantize(staging / "model.onnx", staging / "model.int8.onnx", train.images[pick].numpy())
    int8 = onnx_runner(str(staging / "model.int8.onnx"))
    test_images = test_images.numpy()
    int8_logits, int8_probs = (np.concatenate(parts) for parts in zip(
        *(int8(test_images[i:i + 500]) for i in range(0, len(test_images), 500)), strict=True))
    fp32_probs = torch.softmax(all_logits / wrapper.temperature, dim=1).numpy()
    truth = test_labels.numpy()
    fp32_acc = float((fp32_probs.argmax(1) == truth).mean())
    int8_acc = float((int8_logits.argmax(1) == truth).mean())
    parity_logits = int8(images)[0]
    record.update({
        "parity_images": int(len(images)), "parity_accuracy": float((parity_logits.argmax(1) == labels).mean()),
        "test_images": int(len(truth)), "test_accuracy": int8_acc, "fp32_test_accuracy": fp32_acc,
        "drop_points": round(100 * (fp32_acc - int8_acc), 4),
        "top1_agreement": float((int8_logits.argmax(1) == fp32_probs.argmax(1)).mean()),
        "max_abs_prob_diff": float(np.abs(int8_probs - fp32_probs).max()),
        "ops": count_ops(staging / "model.int8.onnx"),
    })
    say(f"  int8         accuracy {100 * int8_acc:6.2f}% on the {len(truth)} test images (fp32 {100 * fp32_acc:.2f}%, "
        f"top-1 agreement {100 * record['top1_agreement']:.2f}%, max|Δprob| {record['max_abs_prob_diff']:.2e})")
    return record


def _normalized(wrapper: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # [N, H, W, 3] -> [N, 3, H, W]
    return x * wrapper.scale - wrapper.shift


def main(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except (ExportError, CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cli() -> None:
    sys.exit(main(get_args_parser().parse_args()))
