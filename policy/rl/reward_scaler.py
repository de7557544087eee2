"""Running reward scaling (DPPO's `reward_scale_running`): rewards divided by the running std
of a discounted return, so the critic sees targets of unit scale whatever the reward's."""
from __future__ import annotations

from typing import Any

import torch


class RunningMeanStd:
    """Parallel (Chan et al.) running mean/variance, float64 so long runs do not drift."""

    def __init__(self, epsilon: float = 1e-4):
        self.mean = torch.zeros((), dtype=torch.float64)
        self.var = torch.ones((), dtype=torch.float64)
        self.count = float(epsilon)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64).flatten()
        if x.numel() == 0:
            return
        b_mean, b_var, b_count = x.mean(), x.var(unbiased=False), x.numel()
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total


class RunningRewardScaler:
    """r / sqrt(var(G) + eps), G_t = gamma G_{t-1} + r_t per env, reset at episode ends; clipped."""

    def __init__(self, n_envs: int, gamma: float = 0.99, clip: float = 10.0, epsilon: float = 1e-8):
        self.gamma, self.clip, self.epsilon = float(gamma), float(clip), float(epsilon)
        self.ret = torch.zeros(n_envs, dtype=torch.float64)
        self.rms = RunningMeanStd()

    def __call__(self, rewards: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Scale a rollout's rewards (T, N); `done` (T, N) marks steps that ended an episode."""
        scaled = torch.empty_like(rewards, dtype=torch.float64)
        for t in range(rewards.shape[0]):  # step by step, each step scaled by the std so far (as DPPO)
            self.ret = self.ret * self.gamma + rewards[t].to(torch.float64)
            self.rms.update(self.ret)
            scaled[t] = rewards[t].to(torch.float64) / torch.sqrt(self.rms.var + self.epsilon)
            self.ret = torch.where(done[t].to(torch.bool), torch.zeros_like(self.ret), self.ret)
        return scaled.clamp(-self.clip, self.clip).to(rewards.dtype)

    def reset_returns(self) -> None:
        """All envs start new episodes (the trainer resets every iteration)."""
        self.ret.zero_()

    @property
    def std(self) -> float:
        return float(torch.sqrt(self.rms.var + self.epsilon))

    def state_dict(self) -> dict[str, Any]:
        return {"ret": self.ret.clone(), "mean": self.rms.mean.clone(), "var": self.rms.var.clone(),
                "count": self.rms.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ret = state["ret"].clone()
        self.rms.mean, self.rms.var, self.rms.count = state["mean"].clone(), state["var"].clone(), float(state["count"])
