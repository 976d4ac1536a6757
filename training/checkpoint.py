"""Checkpoint files: a contract.schemas.Checkpoint written atomically, read back with weights_only=True."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from contract.schemas import Checkpoint, SchemaError

from . import models
from .config import ConfigError, TrainConfig
from .io import atomic_torch_save


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or not of this project's model; one sentence for the user."""


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    atomic_torch_save(ckpt.to_dict(), path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types on a torn or foreign file
        if "Weights only load failed" in str(exc):
            why = "it holds Python objects beyond tensors and plain containers, refused by weights_only=True"
        else:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            why = f"truncated or not a torch file ({detail})"
        raise CheckpointError(f"{path} is not a readable checkpoint: {why}") from None
    try:
        return Checkpoint.from_dict(raw, str(path))
    except SchemaError as exc:
        raise CheckpointError(str(exc)) from None


def config_of(ckpt: Checkpoint, path: str | os.PathLike = "checkpoint") -> TrainConfig:
    try:
        return TrainConfig.from_dict(dict(ckpt.config))
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path} has an invalid training config: {exc}") from None


def build_model(ckpt: Checkpoint, path: str | os.PathLike = "checkpoint") -> nn.Module:
    """The checkpoint's network with its weights, rebuilt from what the checkpoint stores."""
    if ckpt.arch not in models.MODELS:
        raise CheckpointError(f"{path} holds a {ckpt.arch!r} network, which this version does not know "
                              f"(it knows {', '.join(models.MODELS)})")
    try:
        model = models.create(ckpt.arch, **ckpt.model_args)
        model.load_state_dict(ckpt.model)
    except (RuntimeError, TypeError) as exc:
        detail = str(exc).splitlines()[0]
        raise CheckpointError(f"{path} does not fit the {ckpt.arch} network it names ({detail})") from None
    return model
