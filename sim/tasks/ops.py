"""The few array operations the task maths needs, for numpy arrays and torch tensors alike.

Task formulas (reset sampling, success, milestones, reward) are written once against these, so
the CPU backend (numpy, one env or many) and a GPU backend (torch, thousands of worlds) share
them. Only `@` (matmul) is used for products: on numpy it gives bit-identical results for one
env and for a batch, which keeps per-episode results independent of batching.
"""
from __future__ import annotations

from typing import Any

import numpy as np

Array = Any


def is_torch(x: Array) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _t():
    import torch

    return torch


def const(value, like: Array) -> Array:
    """A constant array on `like`'s side (numpy, or a torch tensor of its dtype and device)."""
    if is_torch(like):
        return _t().as_tensor(np.asarray(value), dtype=like.dtype, device=like.device)
    return np.asarray(value, dtype=like.dtype if np.issubdtype(like.dtype, np.floating) else None)


def norm(x: Array) -> Array:
    """Euclidean norm over the last axis."""
    return _t().linalg.norm(x, dim=-1) if is_torch(x) else np.linalg.norm(x, axis=-1)


def clip(x: Array, lo, hi) -> Array:
    return _t().clamp(x, lo, hi) if is_torch(x) else np.clip(x, lo, hi)


def exp(x: Array) -> Array:
    return _t().exp(x) if is_torch(x) else np.exp(x)


def arccos(x: Array) -> Array:
    return _t().arccos(x) if is_torch(x) else np.arccos(x)


def cos(x: Array) -> Array:
    return _t().cos(x) if is_torch(x) else np.cos(x)


def sin(x: Array) -> Array:
    return _t().sin(x) if is_torch(x) else np.sin(x)


def argmin(x: Array) -> Array:
    """Index of the minimum over the last axis."""
    return _t().argmin(x, dim=-1) if is_torch(x) else np.argmin(x, axis=-1)


def take_last(x: Array, idx: Array) -> Array:
    """x[..., idx] per row: (N, K), (N,) -> (N,)."""
    if is_torch(x):
        return _t().gather(x, -1, idx[..., None])[..., 0]
    return np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]


def transpose(m: Array) -> Array:
    """Swap the last two axes (batched matrix transpose)."""
    return m.transpose(-1, -2) if is_torch(m) else np.swapaxes(m, -1, -2)


def trace(m: Array) -> Array:
    return m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]


def stack(xs, axis: int) -> Array:
    return _t().stack(xs, dim=axis) if is_torch(xs[0]) else np.stack(xs, axis=axis)


def rot_z(yaw: Array) -> Array:
    """(N,) angles -> (N, 3, 3) rotations about z."""
    c, s = cos(yaw), sin(yaw)
    zero = c - c  # +0.0 of the right type and device
    one = zero + 1
    return stack([stack([c, -s, zero], -1), stack([s, c, zero], -1), stack([zero, zero, one], -1)], -2)


def where(cond: Array, a: Array, b: Array) -> Array:
    return _t().where(cond, a, b) if is_torch(cond) else np.where(cond, a, b)
