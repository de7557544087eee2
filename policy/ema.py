"""Exponential moving average of weights with diffusion_policy's warm-up schedule."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999, inv_gamma: float = 1.0):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_decay, self.inv_gamma = power, max_decay, inv_gamma
        self.step = 0

    def decay(self) -> float:
        value = 1 - (1 + self.step / self.inv_gamma) ** -self.power
        return 0.0 if self.step == 0 else min(max(value, 0.0), self.max_decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay()
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.mul_(d).add_(p.detach(), alpha=1 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)
        self.step += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd["model"])
        self.step = int(sd["step"])
