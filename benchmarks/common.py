"""What several benchmarks share (imported as `common`: a benchmark runs with benchmarks/ on sys.path)."""
from __future__ import annotations

import os
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
