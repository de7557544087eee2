"""Preallocated rollout storage for chunk-level PPO: (T, N, ...) torch tensors filled in place.

Chains are float32 and images stay uint8 (the reference keeps float64 numpy arrays grown by
`np.vstack`: ~4x the memory for chains, 8x for images). Rewards are the raw sums over each
chunk's executed actions; scaling and GAE happen after the rollout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch


@dataclass
class ObsSpec:
    shape: tuple[int, ...]  # per env, with the history: (To, ...)
    dtype: torch.dtype


def obs_specs(obs: Mapping[str, Any], keys) -> dict[str, ObsSpec]:
    """Specs of the keys of a vector env's (N, To, ...) observation."""
    out = {}
    for k in keys:
        a = obs[k]
        if not isinstance(a, torch.Tensor):  # a batched backend's are tensors, maybe on a GPU
            a = torch.as_tensor(np.asarray(a))
        out[k] = ObsSpec(tuple(a.shape[1:]), torch.uint8 if a.dtype == torch.uint8 else torch.float32)
    return out


class RolloutBuffer:
    def __init__(self, n_steps: int, n_envs: int, specs: Mapping[str, ObsSpec], chain_shape: tuple[int, ...],
                 device: torch.device | str = "cpu", n_log_probs: int | None = None):
        """chain_shape: what the agent stores per env step (DPPO: the chain (K'+1, H, A));
        n_log_probs: log-probabilities per env step (DPPO: K', default chain_shape[0] - 1)."""
        self.n_steps, self.n_envs, self.device = int(n_steps), int(n_envs), torch.device(device)
        t, n = self.n_steps, self.n_envs
        self.obs = {k: torch.zeros((t, n, *s.shape), dtype=s.dtype, device=self.device) for k, s in specs.items()}
        self.chains = torch.zeros((t, n, *chain_shape), dtype=torch.float32, device=self.device)
        k = chain_shape[0] - 1 if n_log_probs is None else int(n_log_probs)
        self.sample_log_probs = torch.zeros((t, n, k), dtype=torch.float32, device=self.device)
        self.rewards = torch.zeros((t, n), dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros((t, n), dtype=torch.bool, device=self.device)
        self.truncated = torch.zeros((t, n), dtype=torch.bool, device=self.device)
        self.final_values = torch.zeros((t, n), dtype=torch.float32, device=self.device)

    @property
    def done(self) -> torch.Tensor:
        return self.terminated | self.truncated

    def put_obs(self, t: int, obs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Copy step t's observations in; returns views of the stored tensors (policy input)."""
        out = {}
        for k, dst in self.obs.items():
            v = obs[k]
            dst[t].copy_(v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)))
            out[k] = dst[t]
        return out

    @staticmethod
    def nbytes_for(n_steps: int, n_envs: int, specs: Mapping[str, ObsSpec], chain_shape: tuple[int, ...],
                   n_log_probs: int) -> int:
        """What a buffer of these sizes allocates (without allocating it)."""
        per = sum(int(np.prod(s.shape)) * (1 if s.dtype == torch.uint8 else 4) for s in specs.values())
        per += 4 * int(np.prod(chain_shape)) + 4 * n_log_probs + 4 + 1 + 1 + 4  # rewards, flags, final values
        return int(n_steps * n_envs * per)

    def nbytes(self) -> int:
        tensors = [*self.obs.values(), self.chains, self.sample_log_probs, self.rewards, self.terminated,
                   self.truncated, self.final_values]
        return int(sum(x.numel() * x.element_size() for x in tensors))

    def flat_obs(self) -> dict[str, torch.Tensor]:
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.obs.items()}


def reference_float64_nbytes(n_steps: int, n_envs: int, specs: Mapping[str, ObsSpec],
                             chain_shape: tuple[int, ...]) -> int:
    """What the reference's layout holds for the same rollout: every array float64 (images
    included), chains, rewards, dones, values and log-probs (T, N, ...)."""
    per = sum(int(np.prod(s.shape)) for s in specs.values()) + int(np.prod(chain_shape))
    per += 4 + (chain_shape[0] - 1)  # reward, terminated, value, firsts; log-probs
    return 8 * n_steps * n_envs * per
