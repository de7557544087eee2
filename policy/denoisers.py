"""Conditional denoisers over an action chunk: residual MLP (DPPO's DiffusionMLP) or 1-D conv
UNet (diffusion_policy's ConditionalUnet1D). Both map (noisy chunk, timestep, condition) to a
chunk of the same shape."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


@dataclass
class MLPDenoiserConfig:
    hidden: int = 1024
    blocks: int = 3  # residual blocks of two layers (DPPO furniture: 7 layers x 1024)
    time_dim: int = 32
    layer_norm: bool = False


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, layer_norm: bool):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim) if layer_norm else nn.Identity(), nn.Linear(dim, dim), nn.Mish(),
                                 nn.Linear(dim, dim), nn.Mish())

    def forward(self, x):
        return x + self.net(x)


class MLPDenoiser(nn.Module):
    def __init__(self, action_dim: int, horizon: int, cond_dim: int, cfg: MLPDenoiserConfig = MLPDenoiserConfig()):
        super().__init__()
        self.horizon, self.action_dim, self.cfg = horizon, action_dim, cfg
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, cfg.time_dim * 2), nn.Mish(),
                                      nn.Linear(cfg.time_dim * 2, cfg.time_dim))
        self.inp = nn.Sequential(nn.Linear(horizon * action_dim + cfg.time_dim + cond_dim, cfg.hidden), nn.Mish())
        self.blocks = nn.Sequential(*[ResidualBlock(cfg.hidden, cfg.layer_norm) for _ in range(cfg.blocks)])
        self.out = nn.Linear(cfg.hidden, horizon * action_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        temb = self.time_mlp(timestep_embedding(t, self.cfg.time_dim))
        h = self.inp(torch.cat([x.reshape(b, -1), temb, cond], dim=-1))
        return self.out(self.blocks(h)).view(b, self.horizon, self.action_dim)


@dataclass
class UNetDenoiserConfig:
    dims: list[int] = field(default_factory=lambda: [64, 128, 256])  # DPPO: dim 64, mults 1,2,4
    kernel: int = 5
    groups: int = 8
    time_dim: int = 64


class FiLMConvBlock(nn.Module):
    def __init__(self, cin, cout, cond_dim, kernel, groups):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout), nn.Mish())
        self.c2 = nn.Sequential(nn.Conv1d(cout, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout), nn.Mish())
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, cond):
        h = self.c1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.c2(h * (1 + scale) + bias)
        return h + self.skip(x)


class UNetDenoiser(nn.Module):
    """Temporal U-Net over the horizon axis with FiLM conditioning; horizon must be divisible by
    2 ** (len(dims) - 1)."""

    def __init__(self, action_dim: int, horizon: int, cond_dim: int, cfg: UNetDenoiserConfig = UNetDenoiserConfig()):
        super().__init__()
        levels = len(cfg.dims) - 1
        if horizon % (2**levels):
            raise ValueError(f"UNet with {len(cfg.dims)} levels needs horizon divisible by {2**levels}, got {horizon}")
        self.cfg = cfg
        cdim = cond_dim + cfg.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, cfg.time_dim * 4), nn.Mish(),
                                      nn.Linear(cfg.time_dim * 4, cfg.time_dim))
        chans = [action_dim] + list(cfg.dims)
        self.down = nn.ModuleList()
        for i in range(len(cfg.dims)):
            self.down.append(nn.ModuleList([
                FiLMConvBlock(chans[i], chans[i + 1], cdim, cfg.kernel, cfg.groups),
                FiLMConvBlock(chans[i + 1], chans[i + 1], cdim, cfg.kernel, cfg.groups),
                nn.Conv1d(chans[i + 1], chans[i + 1], 3, stride=2, padding=1) if i < levels else nn.Identity()]))
        mid = cfg.dims[-1]
        self.mid = nn.ModuleList([FiLMConvBlock(mid, mid, cdim, cfg.kernel, cfg.groups) for _ in range(2)])
        self.up = nn.ModuleList()  # level i+1 (skip concatenated) -> level i
        for i in reversed(range(levels)):
            self.up.append(nn.ModuleList([
                FiLMConvBlock(cfg.dims[i + 1] * 2, cfg.dims[i], cdim, cfg.kernel, cfg.groups),
                FiLMConvBlock(cfg.dims[i], cfg.dims[i], cdim, cfg.kernel, cfg.groups),
                nn.ConvTranspose1d(cfg.dims[i], cfg.dims[i], 4, stride=2, padding=1)]))
        self.final = nn.Sequential(nn.Conv1d(cfg.dims[0], cfg.dims[0], cfg.kernel, padding=cfg.kernel // 2),
                                   nn.GroupNorm(cfg.groups, cfg.dims[0]), nn.Mish(), nn.Conv1d(cfg.dims[0], action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = torch.cat([self.time_mlp(timestep_embedding(t, self.cfg.time_dim)), cond], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for b1, b2, down in self.down:
            h = b2(b1(h, c), c)
            skips.append(h)
            h = down(h)
        for blk in self.mid:
            h = blk(h, c)
        for b1, b2, up in self.up:
            h = b2(b1(torch.cat([h, skips.pop()], dim=1), c), c)
            h = up(h)
        return self.final(h).transpose(1, 2)
