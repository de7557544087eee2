"""Generalised advantage estimation over action-chunk steps, with episode ends inside a rollout.

One step is one executed chunk; its reward is the sum over the executed actions. Episodes end
mid-rollout (the env auto-resets), so each end stops the recursion, and the two kinds of end
differ in what the target bootstraps from: a termination (success, a lost part) has no future
value; a truncation (time limit, a diverged simulation) bootstraps from the value of the true
final observation, not from the next episode's first one (the reference's defect).
"""
from __future__ import annotations

import torch


def next_values(values: torch.Tensor, last_value: torch.Tensor, final_values: torch.Tensor,
                done: torch.Tensor) -> torch.Tensor:
    """V of the state each step leads to, within its own episode: (T, N).

    values (T, N): V(obs_t); last_value (N,): V of the observation after the last step;
    final_values (T, N): V(true final obs) where an episode ended at t (read where truncated);
    done (T, N): an episode ended at step t (terminated or truncated).
    """
    nxt = torch.cat([values[1:], last_value[None]], dim=0)
    return torch.where(done, final_values, nxt)


def gae(rewards: torch.Tensor, values: torch.Tensor, next_value: torch.Tensor, terminated: torch.Tensor,
        done: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (T, N).

    delta_t = r_t + gamma * V'_t * (1 - terminated_t) - V_t;
    A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}, with V'_t from `next_values`.
    """
    if not (rewards.shape == values.shape == next_value.shape == terminated.shape == done.shape):
        raise ValueError("rewards, values, next_value, terminated and done must share a (T, N) shape")
    not_term = 1.0 - terminated.to(values.dtype)
    not_done = 1.0 - done.to(values.dtype)
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        delta = rewards[t] + gamma * next_value[t] * not_term[t] - values[t]
        last = delta + gamma * lam * not_done[t] * last
        adv[t] = last
    return adv, adv + values
