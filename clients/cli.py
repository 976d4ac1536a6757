"""`cifar10-classify`: classify files through the service, or measure its accuracy on a folder.

    cifar10-classify cat.jpg dog.png --url http://localhost:3000 [--top-k 3] [--json]
    cifar10-classify --eval ../shared/datasets/cifar10/test [--concurrency 8] [--out eval-results]
    cifar10-classify --explain overlays/ cat.jpg [--target ship]    # Grad-CAM overlays as PNG files

Exit codes: 0 all classified; 1 a file failed or the service could not be reached; 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from .client import DEFAULT_URL, Client, Prediction, ServiceError, ServiceUnreachable
from .http_eval import EvalError, evaluate_over_http, find_samples, format_report, write_report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cifar10-classify", description="Classify images with a running "
                                "cifar10-service (bentoml serve), or measure its accuracy on an ImageFolder split.")
    p.add_argument("files", nargs="*", metavar="FILE", help="images to classify")
    p.add_argument("--url", default=os.environ.get("CIFAR10_URL", DEFAULT_URL),
                   help=f"the service (default $CIFAR10_URL or {DEFAULT_URL})")
    p.add_argument("--api-key", default=None, help="the service's API key, when it sets CIFAR10_API_KEYS "
                   "(default: $CIFAR10_API_KEY; the variable keeps the key out of the process list)")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument("--eval", metavar="DIR", type=Path, help="classify every image of an ImageFolder split "
                   "(DIR/<class>/*) and report accuracy, per-class accuracy and a confusion matrix")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--out", type=Path, default=Path("eval-results"),
                   help="where --eval writes eval.json and confusion_matrix.png (default ./eval-results)")
    p.add_argument("--explain", metavar="OUT_DIR", type=Path,
                   help="also explain each file (Grad-CAM) and write the overlay to OUT_DIR/<file>.explain.png")
    p.add_argument("--target", default=None,
                   help="with --explain: the class to explain (a name or index; default the top class)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _row(name: str, pred: Optional[Prediction], error: Optional[str], width: int) -> str:
    if pred is None:
        return f"{name:<{width}}  error: {error}"
    top = " | ".join(f"{s.label} {100 * s.probability:.1f}%" for s in pred.top_k)
    flag = {True: "yes", False: "NO", None: "-"}[pred.in_distribution]
    row = f"{name:<{width}}  {pred.label:<10}  {100 * pred.confidence:6.1f}%  {flag:<5}  {top}"
    if pred.in_distribution is False:
        row += "  (probably not one of the classes)"
    return row


def classify_files(client: Client, files: list[str], top_k: int, as_json: bool, concurrency: int,
                   explain_dir: Optional[Path] = None, target: Optional[str] = None) -> int:
    overlays: dict[str, Path] = {}

    def one(path: str) -> tuple[Optional[Prediction], Optional[str]]:
        if not os.path.isfile(path):
            return None, "no such file"
        try:
            if explain_dir is None:
                return client.classify(path, top_k=top_k), None
            explanation = client.explain(path, target=target, top_k=top_k)
            overlays[path] = explanation.save_overlay(explain_dir / f"{Path(path).name}.explain.png")
            return explanation.prediction, None
        except ServiceError as exc:
            return None, str(exc)
        except ServiceUnreachable as exc:
            if exc.timed_out:  # this file took too long; the others may not
                return None, str(exc)
            raise  # the service is not there: one sentence for the whole run (cli())
        except OSError as exc:  # unreadable file, overlay not writable
            return None, f"{exc.strerror or exc}"

    if explain_dir is not None:
        explain_dir.mkdir(parents=True, exist_ok=True)

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(files)))) as pool:
        results = list(pool.map(one, files))  # in the order given
    width = max(4, *(len(f) for f in files))
    if not as_json:
        print(f"{'file':<{width}}  {'label':<10}  {'conf':>7}  {'in-d':<5}  top-{top_k}")
    for path, (pred, error) in zip(files, results, strict=True):
        if as_json:
            record: dict[str, Any] = {"file": path}
            if pred is None:
                record["error"] = error
            else:
                record.update(label=pred.label, index=pred.index, confidence=pred.confidence,
                              top_k=[s.__dict__ for s in pred.top_k], ood_score=pred.ood_score,
                              in_distribution=pred.in_distribution, model=pred.model)
                if path in overlays:
                    record["overlay"] = str(overlays[path])
            print(json.dumps(record))
        else:
            print(_row(path, pred, error, width) + (f"  -> {overlays[path]}" if path in overlays else ""))
    failed = sum(pred is None for pred, _ in results)
    if failed:
        print(f"{failed} of {len(files)} files failed", file=sys.stderr)
    return 1 if failed else 0


def run_eval(client: Client, args: argparse.Namespace) -> int:
    root, samples = find_samples(args.eval)
    info = client.model_info()
    from tqdm import tqdm

    bar = tqdm(total=len(samples), desc="classifying", unit="img", disable=args.quiet or None, file=sys.stderr)
    with bar:
        result = evaluate_over_http(client, samples, list(info["classes"]), args.concurrency, on_done=bar.update)
    # The service decodes the files, so its resize policy (CIFAR10_RESIZE) is the one the figures are for.
    result.update(url=client.url, folder=str(root), model=info.get("model"), model_tag=info.get("tag"),
                  offline_test_acc=(info.get("metrics") or {}).get("test_acc"),
                  resize=(info.get("serving") or {}).get("resize"))
    written = write_report(args.out, result, f"{info.get('tag')} via {client.url}: "
                           f"{100 * result['accuracy']:.2f}% of {result['n']}")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("confusion", "failures")}))
    else:
        print(format_report(result))
        for f in result["failures"][:10]:
            print(f"failed: {f['file']}: {f['error']}")
        offline = result["offline_test_acc"]
        print(f"\naccuracy through the service: {100 * result['accuracy']:.2f}% of {result['n']} images "
              f"({result['failed']} failed); model {info.get('tag')}"
              + (f", its own test accuracy at training time {100 * offline:.2f}%" if offline is not None else ""))
        print("wrote " + ", ".join(map(str, written))
              + ("" if len(written) > 1 else " (confusion_matrix.png needs matplotlib: pip install "
                 "'cifar10-service[eval]')"))
    return 1 if result["failed"] else 0


def main(args: argparse.Namespace) -> int:
    if not args.files and args.eval is None:
        raise EvalError("give image files to classify, or --eval DIR")
    if args.files and args.eval is not None:
        raise EvalError("give either image files or --eval DIR, not both")
    if args.explain is not None and args.eval is not None:
        raise EvalError("--explain writes overlays for the files given; it does not go with --eval")
    if args.target is not None and args.explain is None:
        raise EvalError("--target chooses the class --explain explains; give --explain OUT_DIR too")
    if args.concurrency < 1 or args.timeout <= 0:
        raise EvalError("--concurrency must be at least 1 and --timeout positive")
    with Client(args.url, timeout=args.timeout, api_key=args.api_key) as client:
        if args.eval is not None:
            return run_eval(client, args)
        return classify_files(client, args.files, args.top_k, args.json, args.concurrency, args.explain, args.target)


def cli() -> None:
    parser = get_args_parser()
    args = parser.parse_args()
    try:
        code = main(args)
    except EvalError as exc:
        parser.error(str(exc))  # exit 2 with the usage line
    except ServiceUnreachable as exc:
        print(f"cifar10-classify: {exc}", file=sys.stderr)
        code = 1
    except ServiceError as exc:  # e.g. top_k out of range: the same for every file
        print(f"cifar10-classify: the service refused the request: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    cli()
