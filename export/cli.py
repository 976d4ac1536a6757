"""`python -m export` / `cifar10-export`: checkpoint -> model.ts, model.onnx, metadata, parity report."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from contract.provenance import git_commit, sha256_file
from contract.schemas import ModelMetadata
from training.checkpoint import CheckpointError, load_checkpoint
from training.data import DataError, load_split

from .metadata import MODEL_NAME, build_metadata, onnx_metadata_props
from .parity import compare, failures, onnx_runner, torch_runner
from .wrapper import classifier_from_checkpoint

ARTIFACTS = ("model.ts", "model.onnx", "metadata.json", "export_report.json")


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
                   "(default: the checkpoint's, else $CIFAR10_DATA)")
    p.add_argument("--parity-images", type=int, default=2000,
                   help="test images compared across eager, TorchScript and ONNX Runtime (default 2000, minimum 1000)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |Δlogit| (default 1e-4)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--bentoml", action="store_true", help=f"also save into the BentoML model store as {MODEL_NAME}")
    p.add_argument("--quiet", action="store_true", help="print only the result line")
    return p


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as exc:
        raise ExportError(f"cannot write to output folder {out} ({exc.strerror or exc})") from None


def _export_onnx(wrapper: torch.nn.Module, path: Path, opset: int, meta: ModelMetadata) -> None:
    import onnx

    example = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    # The exporter narrates each pass on stdout; the user gets our summary instead.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(path), input_names=["image"],
                          output_names=["logits", "probabilities"], dynamic_shapes={"image": {0: batch}},
                          dynamo=True, external_data=False, opset_version=opset, verbose=False)
    model = onnx.load(str(path))
    model.doc_string = f"{MODEL_NAME}: uint8 [N,32,32,3] RGB -> logits, probabilities"
    for key, value in onnx_metadata_props(meta).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _export_torchscript(wrapper: torch.nn.Module, path: Path, meta: ModelMetadata) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice; it is still what LibTorch loads
        scripted = torch.jit.script(wrapper)
        torch.jit.save(scripted, str(path), _extra_files={"metadata.json": json.dumps(meta.to_dict())})


def load_torchscript(path: Path, map_location: str = "cpu") -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        return torch.jit.load(str(path), map_location=map_location)


def _save_to_bentoml(out: Path, meta: ModelMetadata) -> str:
    try:
        import bentoml
    except ImportError:
        raise ExportError("--bentoml needs the bentoml package (pip install 'cifar10-service[serve]')") from None
    with bentoml.models.create(
        MODEL_NAME,
        labels={"framework": "onnx+torchscript", "dataset": "cifar10", "architecture": meta.architecture},
        metadata={"accuracy": meta.metrics["test_acc"], "classes": meta.classes, "input": meta.input,
                  "tta_flip": meta.tta_flip, "source_sha256": meta.source_checkpoint["sha256"]},
    ) as model_ref:
        for name in ARTIFACTS:
            shutil.copy2(out / name, Path(model_ref.path) / name)
    return str(model_ref.tag)


def run(args: argparse.Namespace) -> int:
    say = (lambda *a: None) if args.quiet else print
    if args.parity_images < 1000:
        raise ExportError("--parity-images must be at least 1000")
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

    # Everything is written and verified in a staging folder first; only a passing export replaces
    # the artifacts in `out`, one atomic rename per file.
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        _export_torchscript(wrapper, staging / "model.ts", meta)
        _export_onnx(wrapper, staging / "model.onnx", args.opset, meta)
        runners = {
            "eager": torch_runner(wrapper),
            "torchscript": torch_runner(load_torchscript(staging / "model.ts")),
            "onnxruntime": onnx_runner(str(staging / "model.onnx")),
        }
        report = compare(images, labels, runners)
        report.update({"tolerance": args.tolerance, "data": str(data), "checkpoint": str(checkpoint)})
        bad = failures(report, args.tolerance)
        report["passed"] = not bad
        for name, entry in report["artifacts"].items():
            line = f"  {name:<12} accuracy {100 * entry['accuracy']:6.2f}%"
            if "max_abs_logit_diff" in entry:
                line += (f"  max|Δlogit| {entry['max_abs_logit_diff']:.2e}  max|Δprob| {entry['max_abs_prob_diff']:.2e}"
                         f"  top-1 agreement {100 * entry['top1_agreement']:.2f}%")
            say(line)
        if bad:
            print(f"error: export rejected, artifacts in {out} left unchanged: {'; '.join(bad)}", file=sys.stderr)
            return 1
        (staging / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
        meta.files = {name: sha256_file(staging / name) for name in ARTIFACTS if name != "metadata.json"}
        meta.write(staging / "metadata.json")
        for name in ARTIFACTS:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"exported {out / 'model.ts'} and {out / 'model.onnx'}: parity on {n} test images passed "
          f"(tolerance {args.tolerance:.0e}); metadata.json, export_report.json beside them")
    if args.bentoml:
        print(f"saved to the BentoML model store as {_save_to_bentoml(out, meta)}")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except (ExportError, CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cli() -> None:
    sys.exit(main(get_args_parser().parse_args()))
