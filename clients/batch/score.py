"""One worker's job: rows of image paths or bytes -> rows of answers, as the service would give them.

A Scorer holds one ONNX Runtime session (threads: the worker's CPUs) and is called on pyarrow tables; it imports
no engine, so tests run it alone and the engine (clients/batch/job.py) only schedules it. Images are decoded by the
service's contract (contract/images.py): the same pixels, the same error codes, plus `unreadable_file` for a path
that cannot be read (the service never sees one).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from contract.constants import DEFAULT_MAX_PIXELS
from contract.images import DEFAULT_RESIZE, ImageError, decode
from contract.onnx_session import onnx_session
from contract.schemas import ModelMetadata

# Runtime name -> the exported file it runs (the service's CIFAR10_RUNTIME names).
GRAPHS = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
GRAPH_BATCH = 64  # images per ONNX Runtime call (see Scorer.__call__)


def output_schema(top_k: int):
    """The answer table's columns (pyarrow), in the order they are written."""
    import pyarrow as pa

    score = pa.struct([("label", pa.string()), ("index", pa.int32()), ("probability", pa.float32())])
    return pa.schema([("path", pa.string()), ("true_label", pa.string()), ("label", pa.string()),
                      ("index", pa.int32()), ("confidence", pa.float32()), ("top_k", pa.list_(score, top_k)),
                      ("ood_score", pa.float32()), ("in_distribution", pa.bool_()),
                      ("error", pa.string()), ("error_message", pa.string())])


class Scorer:
    """Callable on a pyarrow table with a `path` (string) and/or an `image` (binary) column and an optional
    `true_label` column; returns the answer table of output_schema(top_k), one row per input row, in order."""

    def __init__(self, model_dir: str, runtime: str = "onnx", threads: int = 1, top_k: int = 3,
                 max_pixels: int = DEFAULT_MAX_PIXELS, resize: str = DEFAULT_RESIZE):
        meta = ModelMetadata.read(Path(model_dir) / "metadata.json")
        self.classes = list(meta.classes)
        self.size = meta.input_size
        self.top_k = min(top_k, len(self.classes))
        self.max_pixels = max_pixels
        self.resize = resize
        # One session per worker, sized to the CPUs the engine gave it: ONNX Runtime would otherwise start one
        # thread per core of the machine in every worker.
        self.session = onnx_session(str(Path(model_dir) / GRAPHS[runtime]), threads)
        # The out-of-distribution score and its threshold, as the service reads them (null for an older export).
        self.outputs = ["probabilities"] + [o.name for o in self.session.get_outputs() if o.name == "ood_score"]
        self.threshold = float(meta.ood["threshold"]) if meta.ood and len(self.outputs) > 1 else None

    def __call__(self, batch) -> Any:
        import pyarrow as pa

        n = batch.num_rows
        paths = batch.column("path").to_pylist() if "path" in batch.column_names else [None] * n
        data = batch.column("image").to_pylist() if "image" in batch.column_names else [None] * n
        truth = batch.column("true_label").to_pylist() if "true_label" in batch.column_names else [None] * n
        pixels, ok, errors = [], [], [(None, None)] * n
        for i in range(n):
            try:
                raw = data[i] if data[i] is not None else _read(paths[i])
                pixels.append(decode(raw, self.size, self.max_pixels, self.resize))
                ok.append(i)
            except ImageError as exc:
                errors[i] = (exc.code, str(exc))
        probs = np.zeros((n, len(self.classes)), np.float32)
        ood = np.zeros(n, np.float32)
        if ok:
            # [M, size, size, 3] uint8 -> [M, C] probabilities (normalization and softmax are in the graph), [M],
            # GRAPH_BATCH images a call: the graph runs its test-time views as one batch (6x for airbench), and
            # ONNX Runtime's arena keeps the largest call's memory for the worker's life.
            images = np.stack(pixels)
            parts = [self.session.run(self.outputs, {"image": images[i:i + GRAPH_BATCH]})
                     for i in range(0, len(images), GRAPH_BATCH)]
            probs[ok] = np.concatenate([p[0] for p in parts])
            if len(self.outputs) > 1:
                ood[ok] = np.concatenate([p[1] for p in parts])
        return pa.Table.from_pydict(self._answers(paths, truth, probs, ood, set(ok), errors),
                                    schema=output_schema(self.top_k))

    def _answers(self, paths: list, truth: list, probs: np.ndarray, ood: np.ndarray, ok: set[int],
                 errors: list[tuple[Optional[str], Optional[str]]]) -> dict[str, list]:
        order = np.argsort(-probs, axis=1, kind="stable")[:, :self.top_k]  # [N, k], as the service orders them
        cols: dict[str, list] = {name: [] for name in output_schema(self.top_k).names}
        for i in range(len(paths)):
            good = i in ok
            best = int(order[i, 0])
            cols["path"].append(paths[i])
            cols["true_label"].append(truth[i])
            cols["label"].append(self.classes[best] if good else None)
            cols["index"].append(best if good else None)
            cols["confidence"].append(float(probs[i, best]) if good else None)
            cols["top_k"].append([{"label": self.classes[j], "index": int(j), "probability": float(probs[i, j])}
                                  for j in order[i]] if good else None)
            scored = good and self.threshold is not None
            # Rounded as the service rounds it, so that a row and the service's answer agree to the digit.
            cols["ood_score"].append(round(float(ood[i]), 4) if scored else None)
            cols["in_distribution"].append(bool(ood[i] <= self.threshold) if scored else None)
            cols["error"].append(errors[i][0])
            cols["error_message"].append(errors[i][1])
        return cols


def _read(path: Optional[str]) -> bytes:
    if path is None:
        raise ImageError("missing_image", "the row has neither image bytes nor a path")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ImageError("unreadable_file", f"{path} could not be read ({exc.strerror or exc})") from None
