"""Where an artifact came from: the code's git commit and the checksum of the file it was made from."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Optional


def git_commit() -> Optional[str]:
    """HEAD of the checkout this package lives in, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
