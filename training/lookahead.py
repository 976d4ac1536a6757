"""Lookahead weight averaging as airbench trains with it (and its state, for checkpoints and resume).

Every `every` optimizer steps the weights (and BatchNorm statistics) are pulled toward a running average
of themselves and then replaced by it: avg <- avg + (1 - rho) * (w - avg); w <- avg, with
rho = decay ** every * (step / total_steps) ** power, so early on the weights move freely and the average
tightens toward the end. Only epochs the run marks active do this; at the end of such an epoch the weights
are set to the average once more, so validation and checkpoints see it.
"""
from __future__ import annotations

from typing import Any, Optional

import torch


class Lookahead:
    def __init__(self, every: int, decay: float, power: float, total_steps: int):
        self.every, self.decay, self.power, self.total_steps = every, decay, power, total_steps
        self.steps = 0  # optimizer steps taken by the run, counted in every epoch, active or not
        self.average: Optional[dict[str, torch.Tensor]] = None

    @staticmethod
    def _tracked(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        # Floating-point entries only: num_batches_tracked (an integer) keeps counting on its own.
        return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, active: bool) -> None:
        self.steps += 1
        if not active or self.steps % self.every:
            return
        current = self._tracked(model)
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in current.items()}
            return
        rho = self.decay ** self.every * (self.steps / self.total_steps) ** self.power
        for k, avg in self.average.items():
            avg.lerp_(current[k], 1 - rho)
            current[k].copy_(avg)

    @torch.no_grad()
    def sync(self, model: torch.nn.Module) -> None:
        """Set the weights to the average (end of an active epoch)."""
        if self.average is not None:
            current = self._tracked(model)
            for k, avg in self.average.items():
                current[k].copy_(avg)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "average": self.average}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.steps = int(state["steps"])
        average = state["average"]
        self.average = None if average is None else {k: v.to(device) for k, v in average.items()}
