"""Checkpoints: plain dicts written atomically, read back with weights_only=True."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, TrainConfig
from .io import atomic_torch_save
from .model import SimpleCNN

ARCH = "SimpleCNN"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or not of this project's model; one sentence for the user."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    atomic_torch_save({"format_version": FORMAT_VERSION, "arch": ARCH, **payload}, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types on a torn or foreign file
        if "Weights only load failed" in str(exc):
            why = "it holds Python objects beyond tensors and plain containers, refused by weights_only=True"
        else:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            why = f"truncated or not a torch file ({detail})"
        raise CheckpointError(f"{path} is not a readable checkpoint: {why}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not a cifar10-service checkpoint (no model weights and config)")
    if ckpt.get("arch") != ARCH:
        raise CheckpointError(f"{path} holds a {ckpt.get('arch')!r} model, not {ARCH}")
    return ckpt


def config_of(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> TrainConfig:
    try:
        return TrainConfig.from_dict(dict(ckpt["config"]))
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path} has an invalid training config: {exc}") from None


def build_model(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> SimpleCNN:
    """A SimpleCNN with the checkpoint's weights, rebuilt from what the checkpoint stores."""
    args = dict(ckpt.get("model_args") or {})
    model = SimpleCNN(num_classes=int(args.get("num_classes", len(ckpt.get("classes", [])) or 10)),
                      dropout=float(args.get("dropout", 0.5)))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        detail = str(exc).splitlines()[0]
        raise CheckpointError(f"{path} does not fit SimpleCNN with {args.get('num_classes')} classes ({detail})") from None
    return model
