"""Observation history: the last `n` observations of each of N envs, as (N, n, ...) arrays.

The policy conditions on a short history (diffusion_policy's `n_obs_steps`); the simulator's
vector envs, the rehearsal/real controller and dataset windows all need the same stacking and
the same rule for a fresh episode (its first observation repeated `n` times). It lives in
data/ so sim/, real/ and policy/ share it without importing each other.

The arrays are updated in place with indexing only, so the same code runs on numpy arrays
(CPU backends, shared memory rows) and on torch tensors (GPU backends).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

Array = Any  # np.ndarray or torch.Tensor


def _every_row(mask: Array | None) -> bool:
    return mask is None or bool(mask.all())


def push(history: Array, obs: Array, mask: Array | None = None) -> None:
    """Shift env rows `mask` of `history` (N, T, ...) one step and append `obs` (N, ...)."""
    if _every_row(mask):  # plain slices: no boolean-index copies (images are most of the bytes)
        if history.shape[1] > 1:
            shifted = history[:, 1:]
            history[:, :-1] = shifted.copy() if isinstance(shifted, np.ndarray) else shifted.clone()
        history[:, -1] = obs
        return
    if history.shape[1] > 1:
        history[mask, :-1] = history[mask, 1:]  # a boolean index copies the right-hand side
    history[mask, -1] = obs[mask]


def fill(history: Array, obs: Array, mask: Array | None = None) -> None:
    """Start rows `mask` afresh: every history slot holds `obs` (a new episode's first obs)."""
    if _every_row(mask):
        history[:] = obs[:, None]
        return
    history[mask] = obs[mask][:, None]


class ObsHistory:
    """Stacked histories for a dict of observation keys, in buffers it owns or is given.

    `buffers` (optional) maps each key to a preallocated (N, n, ...) array, e.g. rows of a
    shared-memory block; otherwise they are allocated at the first `reset`.
    """

    def __init__(self, n: int, keys: list[str] | tuple[str, ...], buffers: Mapping[str, Array] | None = None):
        if n < 1:
            raise ValueError(f"history length must be >= 1, got {n}")
        self.n, self.keys = int(n), tuple(keys)
        self.buffers: dict[str, Array] | None = dict(buffers) if buffers is not None else None

    def _ensure(self, obs: Mapping[str, Array]) -> None:
        if self.buffers is None:
            self.buffers = {}
            for k in self.keys:
                v = obs[k]
                shape = (v.shape[0], self.n, *v.shape[1:])
                if isinstance(v, np.ndarray):
                    self.buffers[k] = np.zeros(shape, dtype=v.dtype)
                else:  # a torch tensor
                    self.buffers[k] = v.new_zeros(shape)

    def reset(self, obs: Mapping[str, Array], mask: Array | None = None) -> dict[str, Array]:
        """Fill rows `mask` (default: all) with `obs`; returns the buffers (not copies)."""
        self._ensure(obs)
        for k in self.keys:
            fill(self.buffers[k], obs[k], mask)
        return self.buffers

    def add(self, obs: Mapping[str, Array], mask: Array | None = None) -> dict[str, Array]:
        """Append the newest observation of rows `mask` (default: all)."""
        if self.buffers is None:
            return self.reset(obs, mask)
        for k in self.keys:
            push(self.buffers[k], obs[k], mask)
        return self.buffers

    def stacked(self) -> dict[str, Array]:
        """Copies of the (N, n, ...) histories."""
        if self.buffers is None:
            raise RuntimeError("ObsHistory.stacked() before reset()")
        return {k: v.copy() if isinstance(v, np.ndarray) else v.clone() for k, v in self.buffers.items()}
