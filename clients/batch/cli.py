"""`python -m clients.batch` (or `cifar10-batch`): score a large image set with the exported model on Ray Data.

    python -m clients.batch ../shared/datasets/cifar10/test --model artifacts --out scores.parquet
    python -m clients.batch photos/ --model artifacts --out s3-mount/scores --address ray://head:10001
    python -m clients.batch images.parquet --image-column jpeg --label-column class --out scores --overwrite

The input is an ImageFolder split (<dir>/<class>/*: accuracy is reported), a flat folder of images, or a Parquet
table (a file, or a folder of them) with image paths and/or encoded image bytes. The output is a folder of Parquet
files, one row per input row: path, true_label, label, index, confidence, top_k, error, error_message; and its
summary.json. A file that is not a usable image is a row with the service's error code, never a failed job.

Exit codes: 0 done (failed rows are counted in the summary); 2 a bad argument, input, model or output path.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from contract.images import DEFAULT_RESIZE, RESIZE_POLICIES
from contract.schemas import ModelMetadata
from contract.stages import run_stage

from .inputs import InputError, open_source
from .score import GRAPHS


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.batch", description="Score an image folder or a Parquet "
                                "table with the exported model on Ray Data (local, or a cluster with --address).")
    p.add_argument("input", type=Path, help="an ImageFolder split, a folder of images, or a .parquet table "
                   "(a file or a folder of files)")
    p.add_argument("--out", type=Path, required=True, help="the output folder (Parquet files and summary.json)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--model", type=Path, default=Path("artifacts"),
                   help="the export's output folder (metadata.json and model.onnx; default ./artifacts)")
    p.add_argument("--runtime", choices=sorted(GRAPHS), default="onnx", help="the graph to run (default onnx)")
    p.add_argument("--address", default=None, help="a Ray cluster to run on: auto (the one this machine joined) "
                   "or ray://HOST:10001; default: a local Ray on this machine for the job")
    p.add_argument("--workers", type=int, default=0, help="scoring workers, one ONNX Runtime session each "
                   "(default: the cluster's CPUs divided by --threads)")
    p.add_argument("--threads", type=int, default=1, help="CPUs per worker, its session's threads (default 1)")
    p.add_argument("--batch-size", type=int, default=256, help="images per inference call (default 256)")
    p.add_argument("--top-k", type=int, default=3, help="classes per row in top_k (default 3, as the service)")
    p.add_argument("--max-pixels", type=int, default=0,
                   help="refuse images above this many pixels, image_too_large (default: the service's, 40 MP)")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default=DEFAULT_RESIZE,
                   help=f"how a non-square image is framed, as the service's CIFAR10_RESIZE (default {DEFAULT_RESIZE})")
    p.add_argument("--path-column", default="path", help="Parquet input: the column of image paths (default path)")
    p.add_argument("--image-column", default="image", help="Parquet input: the column of encoded image bytes "
                   "(default image; used instead of the path where both are present)")
    p.add_argument("--label-column", default="true_label",
                   help="Parquet input: the column of true class names, for accuracy (default true_label)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or engine logs")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    return p


class UsageError(Exception):
    """A bad argument, input, model or output path (one sentence, exit code 2)."""


def check(args: argparse.Namespace) -> ModelMetadata:
    for name, least in (("workers", 0), ("threads", 1), ("batch_size", 1), ("top_k", 1), ("max_pixels", 0)):
        if getattr(args, name) < least:
            raise UsageError(f"--{name.replace('_', '-')} must be {least} or more, got {getattr(args, name)}")
    if not (args.model / "metadata.json").is_file():
        raise UsageError(f"{args.model} is not an exported model folder (no metadata.json); export one with "
                         "python -m export --out DIR, or pass --model DIR")
    try:
        meta = ModelMetadata.read(args.model / "metadata.json")
    except Exception as exc:  # noqa: BLE001 - any unreadable metadata is the same user error
        raise UsageError(f"{args.model / 'metadata.json'} is not a readable export ({exc})") from None
    if not (args.model / GRAPHS[args.runtime]).is_file():
        raise UsageError(f"{args.model} has no {GRAPHS[args.runtime]} for --runtime {args.runtime}")
    if not 1 <= args.top_k <= len(meta.classes):
        raise UsageError(f"--top-k must be from 1 to {len(meta.classes)}, got {args.top_k}")
    if (args.out.exists() or args.out.is_symlink()) and not args.overwrite:
        raise UsageError(f"{args.out} exists; pass --overwrite to replace it")
    if args.out.resolve() == args.input.resolve() or args.input.resolve() in args.out.resolve().parents:
        raise UsageError("--out must not be the input or inside it")
    return meta


def main(args: argparse.Namespace) -> int:
    from .job import JobOptions, run

    # Absolute paths: a cluster's workers do not share this process's working directory.
    args.model, args.out, args.input = (Path(os.path.abspath(p)) for p in (args.model, args.out, args.input))
    try:
        meta = check(args)
        source = open_source(args.input, list(meta.classes), args.path_column, args.image_column, args.label_column)
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except (UsageError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or args.out.parent}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    options = JobOptions(args.model, args.out, args.runtime, args.address, args.workers, args.threads,
                         args.batch_size, args.top_k, args.max_pixels, args.overwrite, args.quiet, args.resize)
    summary = run(source, options, list(meta.classes))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    from ..http_eval import format_report

    lines = [f"{summary['images']:,} images from {summary['input']} ({summary['format']}) in {summary['seconds']} s: "
             f"{summary['images_per_s']:,} images/s on {summary['workers']} worker(s) x "
             f"{summary['threads_per_worker']} thread(s), {summary['engine']} ({summary['address']})",
             f"scored {summary['scored']:,}, failed {summary['failed']:,}"
             + (f" ({', '.join(f'{k}: {v}' for k, v in summary['errors'].items())})" if summary["errors"] else "")]
    if summary.get("out_of_distribution") is not None and summary["scored"]:
        lines.append(f"probably not one of the classes (in_distribution false): {summary['out_of_distribution']:,} "
                     f"({100 * summary['out_of_distribution'] / summary['scored']:.1f}% of the scored images)")
    if summary.get("accuracy") is not None:
        lines += [f"accuracy {100 * summary['accuracy']:.2f}% ({summary['correct']:,} of {summary['labelled']:,} "
                  "labelled images)", "", format_report(summary)]
    lines += ["", f"wrote {summary['output']} (Parquet, one row per image) and its summary.json"]
    return "\n".join(lines)


def command_line() -> None:
    def load():
        import onnxruntime  # noqa: F401 - the extra's packages, named in one sentence when missing
        import pyarrow  # noqa: F401
        import ray  # noqa: F401

        return lambda: sys.exit(main(get_args_parser().parse_args()))

    run_stage("python -m clients.batch", "batch", ("ray", "pyarrow", "onnxruntime"), load)
