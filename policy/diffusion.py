"""DDPM noise schedule, training loss, and DDPM / DDIM samplers with configurable eta.

DPPO fine-tunes the *sampling chain* as a policy: every denoising step is a Gaussian whose
log-probability it needs, so the sampler exposes single steps (`ddim_step` returning the mean
and std) rather than hiding them in a loop. Cosine schedule (Nichol & Dhariwal), x0-clipping
to the normalised action range [-1, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class DiffusionConfig:
    train_steps: int = 100  # DDPM steps (DPPO pretraining: 100)
    schedule: str = "cosine"
    predict: str = "epsilon"  # epsilon | sample
    clip_sample: float = 1.0  # clip predicted x0 to +-this (normalised actions)
    ddim_steps: int = 5
    ddim_eta: float = 0.0


def cosine_alphas_cumprod(steps: int, s: float = 0.008) -> torch.Tensor:
    t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    ac = f / f[0]
    betas = (1 - ac[1:] / ac[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


def linear_alphas_cumprod(steps: int) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


class NoiseSchedule(torch.nn.Module):
    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.schedule == "cosine":
            ac = cosine_alphas_cumprod(cfg.train_steps)
        elif cfg.schedule == "linear":
            ac = linear_alphas_cumprod(cfg.train_steps)
        else:
            raise ValueError(f"unknown schedule '{cfg.schedule}' (cosine | linear)")
        self.register_buffer("alphas_cumprod", ac, persistent=False)
        self._ddim_cache: dict[int, list[int]] = {}

    @property
    def steps(self) -> int:
        return self.cfg.train_steps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ac = self.alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1)))
        return ac.sqrt() * x0 + (1 - ac).sqrt() * noise

    def x0_and_eps(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Predicted clean sample (clipped) and the noise consistent with it."""
        ac = self.alphas_cumprod[t].view(-1, *([1] * (x_t.dim() - 1)))
        if self.cfg.predict == "epsilon":
            x0 = (x_t - (1 - ac).sqrt() * model_out) / ac.sqrt()
        elif self.cfg.predict == "sample":
            x0 = model_out
        else:
            raise ValueError(f"unknown prediction type '{self.cfg.predict}' (epsilon | sample)")
        if self.cfg.clip_sample > 0:
            x0 = x0.clamp(-self.cfg.clip_sample, self.cfg.clip_sample)
        eps = (x_t - ac.sqrt() * x0) / (1 - ac).sqrt()
        return x0, eps

    def ddim_timesteps(self, n: int) -> list[int]:
        """n descending timesteps spread over the training chain (ends at t=0)."""
        if not 1 <= n <= self.steps:
            raise ValueError(f"DDIM steps must be in 1..{self.steps}, got {n}")
        # cached as plain ints: graph capture (torch.export, policy/export.py) cannot read a
        # tensor's values, and the sampler asks for the same few chains again and again
        if n not in self._ddim_cache:
            self._ddim_cache[n] = [int(round(x)) for x in torch.linspace(self.steps - 1, 0, n).tolist()]
        return list(self._ddim_cache[n])

    def ddim_step(self, model_out, x_t, t, t_prev, eta: float):
        """One DDIM step t -> t_prev (t_prev = -1 means the final clean sample).

        `t` and `t_prev` are ints or (B,) long tensors, one timestep per sample (DPPO's update
        recomputes steps of different chains in one batch). Returns (mean, sigma), each shaped
        like x_t: the Gaussian of x_{t_prev} | x_t; eta = 0 is deterministic, 1 DDPM-like.
        """
        b = x_t.shape[0]
        tt = self._per_sample(t, b, x_t.device)
        tp = self._per_sample(t_prev, b, x_t.device)
        x0, eps = self.x0_and_eps(model_out, x_t, tt)
        view = (-1, *([1] * (x_t.dim() - 1)))
        a_t = self.alphas_cumprod[tt].view(view)
        a_prev = torch.where(tp >= 0, self.alphas_cumprod[tp.clamp(min=0)], torch.ones_like(tp, dtype=a_t.dtype))
        a_prev = a_prev.view(view)
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        return mean, sigma.expand_as(mean)

    @staticmethod
    def _per_sample(t, b: int, device) -> torch.Tensor:
        if torch.is_tensor(t):
            return t.to(device=device, dtype=torch.long).expand(b) if t.dim() == 0 else t.to(device, torch.long)
        return torch.full((b,), int(t), device=device, dtype=torch.long)

    def ddpm_step(self, model_out, x_t, t: int):
        """Ancestral DDPM step t -> t-1: (mean, std) of the posterior."""
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0, _ = self.x0_and_eps(model_out, x_t, tt)
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t - 1] if t > 0 else torch.ones((), device=x_t.device)
        beta_t = 1 - a_t / a_prev
        mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + ((1 - beta_t).sqrt() * (1 - a_prev) / (1 - a_t)) * x_t
        var = beta_t * (1 - a_prev) / (1 - a_t) if t > 0 else torch.zeros((), device=x_t.device)
        return mean, var.clamp(min=0).sqrt().expand_as(mean)
