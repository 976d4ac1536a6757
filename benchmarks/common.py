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
