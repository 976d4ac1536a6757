"""What travels with the artifacts: everything a server needs, and where the model came from."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Optional

from contract.schemas import Checkpoint, ModelMetadata


def model_name(arch: str) -> str:
    """The BentoML store name of an exported network: cifar10-simplecnn, cifar10-airbench."""
    return f"cifar10-{arch}"


def build_metadata(ckpt: Checkpoint, checkpoint_path: Path, checkpoint_sha256: str, versions: dict[str, str],
                   export_commit: Optional[str] = None) -> ModelMetadata:
    """metadata.json for the graphs exported from ckpt (its `files` checksums are filled in once written)."""
    norm = ckpt.normalization
    metrics = ckpt.metrics or {}
    size = norm.input_size
    return ModelMetadata(
        model_name=model_name(ckpt.arch),
        architecture=type_name(ckpt.arch),
        classes=list(ckpt.classes),
        input={
            "name": "image", "dtype": "uint8", "shape": [-1, size, size, 3], "layout": "NHWC", "color": "RGB",
            "preprocessing": "decode, apply EXIF orientation, convert to RGB, frame a non-square image by the "
                             "deployment's resize policy (CIFAR10_RESIZE: center-crop by default, squash or pad; "
                             f"/model_info serving.resize), resize to {size}x{size} with PIL bilinear when the size "
                             "differs; normalization happens inside the graph",
        },
        outputs={"logits": "float32 [N, C]",
                 "probabilities": "float32 [N, C], softmax of logits / calibration.temperature (1 without)",
                 "ood_score": "float32 [N], higher is less like the training images; in distribution when <= "
                              "ood.threshold"},
        normalization={"mean": list(norm.mean), "std": list(norm.std)},
        tta_flip=bool(ckpt.config.get("tta_flip", False)),
        tta_translate=int(ckpt.config.get("tta_translate", 0)),
        training_config=dict(ckpt.config),
        metrics={
            "best_val_acc": metrics.get("val_acc"), "best_epoch": metrics.get("epoch", ckpt.epoch),
            "test_acc": metrics.get("test_acc"), "test_images": metrics.get("test_images"),
        },
        dataset=ckpt.provenance.get("dataset"),
        source_checkpoint={"path": str(checkpoint_path), "sha256": checkpoint_sha256},
        git_commit=ckpt.provenance.get("git_commit"),
        export_git_commit=export_commit,
        versions=dict(versions),
        exported_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        files={},
    )


def type_name(arch: str) -> str:
    """The network's class name as metadata and /model_info show it ("simplecnn" -> "SimpleCNN")."""
    from training.models import MODELS

    return MODELS[arch].__name__ if arch in MODELS else arch


def onnx_metadata_props(meta: ModelMetadata) -> dict[str, str]:
    """ONNX metadata_props are string to string: nested values are JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.to_dict().items() if v is not None}


