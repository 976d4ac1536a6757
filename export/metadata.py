"""What travels with the artifacts: everything a server needs, and where the model came from."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

MODEL_NAME = "cifar10-simplecnn"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_metadata(ckpt: dict[str, Any], checkpoint_path: Path, versions: dict[str, str]) -> dict[str, Any]:
    norm = ckpt["normalization"]
    metrics = ckpt.get("metrics", {})
    provenance = ckpt.get("provenance", {})
    return {
        "model_name": MODEL_NAME,
        "architecture": ckpt.get("arch", "SimpleCNN"),
        "classes": list(ckpt["classes"]),
        "input": {
            "name": "image", "dtype": "uint8", "shape": [-1, norm["input_size"], norm["input_size"], 3],
            "layout": "NHWC", "color": "RGB",
            "preprocessing": "decode, apply EXIF orientation, convert to RGB, resize to "
                             f"{norm['input_size']}x{norm['input_size']} with PIL bilinear when the size differs; "
                             "normalization happens inside the graph",
        },
        "outputs": {"logits": "float32 [N, C]", "probabilities": "float32 [N, C], softmax of logits"},
        "normalization": {"mean": list(norm["mean"]), "std": list(norm["std"])},
        "tta_flip": bool(ckpt["config"].get("tta_flip", False)),
        "training_config": dict(ckpt["config"]),
        "metrics": {
            "best_val_acc": metrics.get("val_acc"), "best_epoch": metrics.get("epoch", ckpt.get("epoch")),
            "test_acc": metrics.get("test_acc"), "test_images": metrics.get("test_images"),
        },
        "dataset": provenance.get("dataset"),
        "source_checkpoint": {"path": str(checkpoint_path), "sha256": sha256_file(checkpoint_path)},
        "git_commit": provenance.get("git_commit"),
        "export_git_commit": versions.pop("git_commit", None),
        "versions": versions,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def onnx_metadata_props(meta: dict[str, Any]) -> dict[str, str]:
    """ONNX metadata_props are string to string: nested values are JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items() if v is not None}
