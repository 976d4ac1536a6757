"""The networks `python -m training --model NAME` can train. Each model file imports only torch and its
forward(x) takes normalized float [N, 3, 32, 32] and returns logits [N, num_classes]; embed(x) returns the
penultimate features [N, D] that forward maps to logits."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .airbench import AirbenchNet
from .residual import DEFAULT_WIDTHS, ResidualNet
from .simplecnn import SimpleCNN

# name -> class; a checkpoint records the name ("arch") and the keyword arguments ("model_args").
MODELS: dict[str, type[nn.Module]] = {"simplecnn": SimpleCNN, "airbench": AirbenchNet, "residual": ResidualNet}


def create(arch: str, **model_args: Any) -> nn.Module:
    if arch not in MODELS:
        raise KeyError(f"unknown network {arch!r}; choose from {', '.join(MODELS)}")
    return MODELS[arch](**model_args)


def model_args(arch: str, num_classes: int, dropout: float, drop_path: float = 0.0, dropblock: float = 0.0,
               dropblock_size: int = 3, width: float = 1.0) -> dict[str, Any]:
    """The keyword arguments a run builds its network with (and stores in its checkpoints)."""
    if arch == "simplecnn":
        return {"num_classes": num_classes, "dropout": dropout}
    if arch == "residual":
        args: dict[str, Any] = {"num_classes": num_classes, "drop_path": drop_path, "dropblock": dropblock,
                                "dropblock_size": dropblock_size}
        if width != 1.0:  # checkpoints of the default width keep the arguments they always had
            args["widths"] = [max(8, int(round(w * width / 8)) * 8) for w in DEFAULT_WIDTHS]
        return args
    return {"num_classes": num_classes}


def prepare(model: nn.Module, images: torch.Tensor) -> None:
    """Data-dependent initialization before the first step (airbench's whitening stem); images are the
    normalized float [N, 3, H, W] training images it may look at (a few thousand)."""
    if hasattr(model, "init_whitening"):
        model.init_whitening(images)


def frozen_parameters(model: nn.Module, epoch: int, whiten_bias_epochs: int) -> list[nn.Parameter]:
    """Parameters that must not move in this (1-based) epoch: the whitening bias after its first epochs."""
    if hasattr(model, "whitening_bias") and epoch > whiten_bias_epochs:
        return [model.whitening_bias()]
    return []
