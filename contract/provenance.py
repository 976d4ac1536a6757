"""Where an artifact came from: the code's git commit and the checksum of the file it was made from."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Optional


def git_commit() -> Optional[str]:
    """HEAD of the checkout this package lives in, with "-dirty" appended (git describe's convention) when
    tracked files differ from it, so that a run from edited code never claims a commit it did not run;
    None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        # Exit 1: tracked files differ from HEAD (untracked files, such as checkpoints, do not count).
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], capture_output=True, timeout=30, cwd=here)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if diff.returncode == 1 else "")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def changed_files(folder: str | Path, recorded: dict[str, str]) -> list[str]:
    """The files of `recorded` (name -> sha256, as metadata.json "files" lists them) present in `folder` whose bytes
    no longer match: a graph edited, truncated or swapped after export. Missing files are left to whoever needs them."""
    folder = Path(folder)
    return [name for name, digest in sorted(recorded.items())
            if (folder / name).is_file() and sha256_file(folder / name) != digest]
