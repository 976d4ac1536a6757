"""What several benchmarks share (imported as `common`: a benchmark runs with benchmarks/ on sys.path)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


def cifar_test_image() -> Optional[Path]:
    """A CIFAR-10 test JPEG to POST: from $CIFAR10_DATA, else the shared copy beside the project; None if neither."""
    for data in (os.environ.get("CIFAR10_DATA"), ROOT.parent / "shared" / "datasets" / "cifar10"):
        if data:
            found = next(iter(sorted((Path(data) / "test" / "cat").glob("*.jpg"))), None)
            if found is not None:
                return found
    return None


def image_to_post(given: Optional[str]) -> Path:
    """The image a load benchmark POSTs: the one given (--image), else cifar_test_image(); exits 2 with one
    sentence when there is none."""
    image = Path(given) if given else cifar_test_image()
    if image is None or not image.is_file():
        print("error: no CIFAR-10 test image under $CIFAR10_DATA or ../shared/datasets/cifar10; pass --image FILE",
              file=sys.stderr)
        raise SystemExit(2)
    return image


def read_export(folder: Path):
    """An export folder's metadata (contract.schemas.ModelMetadata); exits 2 with one sentence when the folder is
    not an export this version reads (no model.onnx, no or a foreign metadata.json)."""
    from contract.schemas import ModelMetadata, SchemaError

    if not (folder / "metadata.json").is_file() or not (folder / "model.onnx").is_file():
        print(f"error: {folder} is not an export (metadata.json and model.onnx)", file=sys.stderr)
        raise SystemExit(2)
    try:
        return ModelMetadata.read(folder / "metadata.json")
    except SchemaError as exc:
        print(f"error: {folder} is not an export this version reads ({exc})", file=sys.stderr)
        raise SystemExit(2) from None
