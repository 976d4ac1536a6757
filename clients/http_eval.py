"""Accuracy through the service: classify an ImageFolder split over HTTP and score it."""
from __future__ import annotations

import json
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Optional

from contract.confusion import per_class_accuracy, plot_confusion
from contract.folders import FolderError, list_image_folder

from .client import Client, ServiceError


class EvalError(Exception):
    """A problem with what the user asked to evaluate (one sentence, exit code 2)."""


def find_samples(root: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """(split folder, [(image, true class name)]) from <root>/<class>/* or, for a dataset root, <root>/test/<class>/*
    (contract/folders.py: every class folder must hold images)."""
    if not root.is_dir():
        raise EvalError(f"{root} is not a folder; --eval takes an ImageFolder split such as "
                        "cifar10/test (one sub-folder of images per class)")
    first = None
    for folder in (root, root / "test") if (root / "test").is_dir() else (root,):
        try:
            classes, samples = list_image_folder(folder)
        except FolderError as exc:
            first = first or exc
            continue
        return folder, [(path, classes[index]) for path, index in samples]
    raise EvalError(f"{first}; --eval takes an ImageFolder split (<dir>/<class>/*.jpg) or a dataset root with "
                    "test/<class>/*.jpg")


def evaluate_over_http(client: Client, samples: list[tuple[Path, str]], classes: list[str], concurrency: int = 8,
             on_done: Optional[Callable[[], None]] = None) -> dict[str, Any]:
    """Classify every sample concurrently; a file the service refuses is a failure, not an abort."""
    unknown = sorted({c for _, c in samples} - set(classes))
    if unknown:
        raise EvalError(f"folder classes {unknown} are not among the model's classes {classes}")
    index = {c: i for i, c in enumerate(classes)}
    confusion = [[0] * len(classes) for _ in classes]  # rows: true class, columns: predicted
    failures: list[dict[str, str]] = []
    lock = threading.Lock()

    def one(sample: tuple[Path, str]) -> None:
        path, true = sample
        try:
            predicted = client.classify(path, top_k=1).index
            with lock:
                confusion[index[true]][predicted] += 1
        except ServiceError as exc:
            with lock:
                failures.append({"file": str(path), "error": str(exc)})
        if on_done:
            on_done()

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        done, _ = wait([pool.submit(one, s) for s in samples], return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:  # the service went away: stop, don't fail 10,000 times
                pool.shutdown(wait=True, cancel_futures=True)
                raise future.exception()
    n = sum(map(sum, confusion))
    correct = sum(confusion[i][i] for i in range(len(classes)))
    per_class = per_class_accuracy(confusion, classes)
    return {"accuracy": correct / n if n else 0.0, "n": n, "correct": correct, "failed": len(failures),
            "per_class_accuracy": per_class, "classes": classes, "confusion": confusion, "failures": failures}


def write_report(out_dir: Path, result: dict[str, Any], title: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        plot_confusion(out_dir / "confusion_matrix.png", result["confusion"], result["classes"], title,
                       xlabel="predicted (by the service)", ylabel="true (folder)")
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":
            raise
        return [out_dir / "eval.json"]  # the light client install: the figure needs the [eval] extra
    return [out_dir / "eval.json", out_dir / "confusion_matrix.png"]


def format_report(result: dict[str, Any]) -> str:
    classes = result["classes"]
    width = max(8, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  {'n':>6}  accuracy"]
    for i, c in enumerate(classes):
        acc = result["per_class_accuracy"][c]
        lines.append(f"{c:<{width}}  {sum(result['confusion'][i]):>6}  "
                     + (f"{100 * acc:6.2f}%" if acc is not None else "     -"))
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * (width + 2) + " ".join(f"{c[:5]:>5}" for c in classes)]
    for c, row in zip(classes, result["confusion"], strict=True):
        lines.append(f"{c:<{width}}  " + " ".join(f"{v:>5}" for v in row))
    return "\n".join(lines)
