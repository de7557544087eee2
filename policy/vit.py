"""Small ViT image encoder (DPPO/IBRL style) that works at any image size.

Why not a fixed 96x96 ViT: the public DPPO code hard-coded the token grid, so a camera at
another resolution needed new weights. Here a conv stem patchifies any H x W, the learned 2D
position embedding is stored for a base grid and bilinearly resized to the actual grid, and the
token set is pooled by attention with a learned query, so the output size never depends on the
number of tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ViTConfig:
    patch_size: int = 8
    dim: int = 128
    depth: int = 1
    heads: int = 4
    mlp_ratio: float = 2.0
    base_grid: int = 12  # position-embedding grid stored for 96x96 / 8
    out_dim: int = 128
    dropout: float = 0.0


class ConvStem(nn.Module):
    """Conv stem -> tokens, total stride = patch_size (better optimisation than one linear patchify)."""

    def __init__(self, dim: int, patch_size: int):
        super().__init__()
        if patch_size not in (4, 8, 16):
            raise ValueError(f"patch_size must be 4, 8 or 16, got {patch_size}")
        layers, ch, stride = [], 3, 1
        widths = [dim // 4, dim // 2, dim]
        while stride < patch_size:
            out = widths[min(len(layers) // 2, len(widths) - 1)]
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.GroupNorm(8 if out % 8 == 0 else 1, out),
                       nn.GELU()]
            ch, stride = out, stride * 2
        layers.append(nn.Conv2d(ch, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """(B, 3, H, W) float in [0, 1] -> (B, out_dim)."""

    def __init__(self, cfg: ViTConfig = ViTConfig()):
        super().__init__()
        self.cfg = cfg
        self.stem = ConvStem(cfg.dim, cfg.patch_size)
        self.pos = nn.Parameter(torch.zeros(1, cfg.dim, cfg.base_grid, cfg.base_grid))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.query = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.pool = nn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
        self.proj = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, cfg.out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} must be a multiple of the patch size {p}")
        x = (x - 0.5) / 0.25
        feat = self.stem(x)  # (B, D, h/p, w/p)
        pos = self.pos
        if pos.shape[-2:] != feat.shape[-2:]:
            pos = F.interpolate(pos, size=feat.shape[-2:], mode="bilinear", align_corners=False)
        tokens = (feat + pos).flatten(2).transpose(1, 2)  # (B, N, D)
        for blk in self.blocks:
            tokens = blk(tokens)
        tokens = self.norm(tokens)
        q = self.query.expand(tokens.shape[0], -1, -1)
        pooled = self.pool(q, tokens, tokens, need_weights=False)[0][:, 0]
        return self.proj(pooled)


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ-style random shift: replicate-pad by `pad` px, crop back at a random offset per image."""
    if pad <= 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), device=images.device, generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b,), device=images.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None]).clamp_(0, h + 2 * pad - 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None]).clamp_(0, w + 2 * pad - 1)
    idx_b = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def shift_pad_for(image_hw: tuple[int, int], base_pad: int = 4, base_size: int = 96) -> int:
    """+-4 px at 96x96 (DPPO/DrQ), scaled with the image size."""
    return max(1, round(base_pad * min(image_hw) / base_size))
