"""Atomic writes of torch objects, text and JSON (contract.atomic does the renaming)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from contract.atomic import atomic_write


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
