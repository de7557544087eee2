"""Learning-rate and clip schedules of the PPO updates (per iteration)."""
from __future__ import annotations

import math


def warmup_cosine(iteration: int, base_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup over `warmup` iterations, then cosine from base_lr to min_lr at `total`."""
    if warmup > 0 and iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    if total <= warmup:
        return base_lr
    p = min(1.0, (iteration - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * p))


def clip_coefficients(ft_steps: int, clip: float, clip_base: float | None = None, rate: float = 3.0) -> list[float]:
    """PPO clip per policy denoising step k = 0 .. K'-1 (the last produces the action).

    DPPO's exponential schedule rises from `clip_base` at the first step to `clip` at the last:
    c_k = base + (clip - base) (e^{rate u} - 1) / (e^{rate} - 1), u = k / (K' - 1). With K' = 1
    there is no first-to-last range (the reference divides by K' - 1 = 0, a NaN that silently
    disables clipping): the single step gets `clip`. `clip_base` None: constant `clip`.
    """
    if ft_steps < 1:
        raise ValueError("ft_steps must be >= 1")
    if clip_base is None or ft_steps == 1:
        return [float(clip)] * ft_steps
    out = []
    for k in range(ft_steps):
        u = k / (ft_steps - 1)
        w = (math.exp(rate * u) - 1) / (math.exp(rate) - 1) if rate != 0 else u
        out.append(float(clip_base + (clip - clip_base) * w))
    return out
