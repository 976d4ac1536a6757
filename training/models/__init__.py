"""The networks `python -m training --model NAME` can train. Each model file imports only torch and its
forward(x) takes normalized float [N, 3, 32, 32] and returns logits [N, num_classes]."""
from __future__ import annotations

from torch import nn

from .simplecnn import SimpleCNN

# name -> class; a checkpoint records the name ("arch") and the keyword arguments ("model_args").
MODELS: dict[str, type[nn.Module]] = {"simplecnn": SimpleCNN}


def create(arch: str, **model_args) -> nn.Module:
    if arch not in MODELS:
        raise KeyError(f"unknown network {arch!r}; choose from {', '.join(MODELS)}")
    return MODELS[arch](**model_args)
