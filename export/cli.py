"""`python -m export` / `cifar10-export`: the command line of the export (export/pipeline.py does the work)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from training.checkpoint import CheckpointError
from training.data import DataError

from .pipeline import ExportError, ExportOptions, run, save_to_bentoml


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cifar10-export", description=(
        "Export a training checkpoint to TorchScript and ONNX graphs that take uint8 [N, 32, 32, 3] RGB images "
        "and return logits and probabilities, verified against the checkpoint on real test images."))
    p.add_argument("--checkpoint", required=True, action="append",
                   help="a best.pt (or last.pt) written by the training stage; give it several times to export an "
                   "ensemble as one graph (the members' calibrated probabilities averaged; docs/export.md)")
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
                   "cifar10-airbench, cifar10-residual; an ensemble: cifar10-ensemble)")
    p.add_argument("--quiet", action="store_true", help="print only the result line")
    return p


def check(options: ExportOptions) -> None:
    if options.parity_images < 1000:
        raise ExportError("--parity-images must be at least 1000")
    if options.int8_calibration_images < 1000:
        raise ExportError("--int8-calibration-images must be at least 1000")
    if options.calibration_images is not None and options.calibration_images < 1000:
        raise ExportError("--calibration-images must be at least 1000")
    if options.int8_max_drop < 0:
        raise ExportError(f"--int8-max-drop must not be negative, got {options.int8_max_drop}")


def main(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExportOptions)}
    options = ExportOptions(**{**values, "checkpoint": tuple(values["checkpoint"])})
    say = (lambda *a: None) if options.quiet else print
    out = Path(options.out)
    try:
        check(options)
        result = run(options, say)
        if not result.passed:
            print(f"error: export rejected, artifacts in {out} left unchanged: {'; '.join(result.failures)}",
                  file=sys.stderr)
            return 1
        print(f"exported {out / 'model.ts'}, {out / 'model.onnx'} and the explanation graphs: parity on "
              f"{result.parity_images} test images passed (tolerance {options.tolerance:.0e}); metadata.json, "
              "export_report.json beside them")
        if options.bentoml:
            print(f"saved to the BentoML model store as {save_to_bentoml(out, result.meta, result.files)}")
    except (ExportError, CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    sys.exit(main(get_args_parser().parse_args()))
