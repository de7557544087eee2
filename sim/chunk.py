"""Chunk-level stepping: execute an (N, Ta, A) action chunk on a batch of envs.

This is the one place that knows how a policy's chunk meets an episode: every env executes
its Ta actions one by one, and an env whose episode ends inside the chunk stops there (the rest
of its chunk is dropped, as on the robot); rewards are summed over the sub-steps actually
executed; the observation history (N, To, ...) is pushed after every executed sub-step; where
an env finished, the finished episode's history goes to `final_obs` (for bootstrapping a
truncated episode) and the history restarts from the next episode's first observation.

It drives any *masked stepper* (`MaskedStepper`): the CPU vector env's workers run it over
their slice of envs, and a GPU backend runs it over all worlds at once with torch tensors, so
the code below uses only operations numpy arrays and torch tensors share (boolean indexing,
`|`, `&`, `~`, `.any()`).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Protocol

import numpy as np

from data.history import ObsHistory

Array = Any  # np.ndarray or torch.Tensor


class StepOut(NamedTuple):
    """One masked sub-step of N envs (same-step auto-reset).

    obs: the observation after the step; for envs that finished, the next episode's first one.
    final_obs: the finished episode's last observation (rows where terminated | truncated).
    infos: (N,) arrays, fresh every sub-step (see `VectorEnv` for the keys).
    """

    obs: dict[str, Array]
    reward: Array
    terminated: Array
    truncated: Array
    final_obs: dict[str, Array]
    infos: dict[str, Array]


class MaskedStepper(Protocol):
    num_envs: int

    def step_masked(self, actions: Array, active: Array, reset_seeds: Array) -> StepOut:
        """Step the envs where `active`; the others keep their state (reward 0, not done).
        An env that auto-resets uses `reset_seeds[i]` when >= 0, else its own seed stream."""


class ChunkStep(NamedTuple):
    """Result of one chunk; unpacks like gymnasium's step tuple.

    obs: (N, To, ...) histories after the chunk (a reset env: its new episode, padded).
    reward: (N,) float32, summed over the executed sub-steps.
    terminated / truncated: (N,) bool, the episode ended inside this chunk.
    infos: (N,) arrays: the last executed sub-step's infos per env (for a finished env: the
      finished episode's), `executed` (sub-steps run), `final_obs` (key -> (N, To, ...)).
    """

    obs: dict[str, Array]
    reward: Array
    terminated: Array
    truncated: Array
    infos: dict[str, Any]


def _zeros(like: Array, n: int, dtype: str) -> Array:
    if isinstance(like, np.ndarray):
        return np.zeros(n, dtype=dtype)
    import torch

    return torch.zeros(n, dtype=getattr(torch, dtype), device=like.device)


def _merge(into: dict[str, Array], infos: Mapping[str, Array], rows: Array) -> None:
    """Copy rows `rows` of each info array into the chunk-level infos; the first sub-step's
    arrays are taken over (a stepper returns fresh info arrays every sub-step)."""
    for key, value in infos.items():
        if key not in into:
            into[key] = value
        else:
            into[key][rows] = value[rows]


def execute_chunk(stepper: MaskedStepper, history: ObsHistory, final_history: ObsHistory, chunk: Array,
                  active: Array | None = None, reset_seeds: Array | None = None) -> tuple[Array, Array, Array,
                                                                                             dict[str, Array]]:
    """Run `chunk` (N, Ta, A) on `stepper`, updating `history` and `final_history` in place.

    Returns (reward, terminated, truncated, infos) as (N,) arrays; the observations are in
    the histories. Envs where `active` is False are not stepped at all.
    """
    n, horizon = chunk.shape[0], chunk.shape[1]
    if active is None:
        running = ~_zeros(chunk, n, "bool")
    else:
        running = active.copy() if isinstance(active, np.ndarray) else active.clone()
    if reset_seeds is None:
        reset_seeds = _zeros(chunk, n, "int64") - 1
    reward = _zeros(chunk, n, "float32")
    terminated = _zeros(chunk, n, "bool")
    truncated = _zeros(chunk, n, "bool")
    executed = _zeros(chunk, n, "int64")
    infos: dict[str, Array] = {}
    for k in range(horizon):
        if not running.any():
            break
        out = stepper.step_masked(chunk[:, k], running, reset_seeds)
        reward[running] += out.reward[running]
        executed[running] += 1
        done = running & (out.terminated | out.truncated)
        any_done = bool(done.any())  # once: on a GPU each .any() is a device sync
        # the observation this sub-step produced: the true last one where an episode ended
        produced = {key: out.obs[key] for key in history.keys}
        if any_done:
            for key in history.keys:
                produced[key] = produced[key].copy() if isinstance(produced[key], np.ndarray) \
                    else produced[key].clone()
                produced[key][done] = out.final_obs[key][done]
        history.add(produced, mask=running)
        if any_done:
            for key in history.keys:
                final_history.buffers[key][done] = history.buffers[key][done]
            history.reset(out.obs, mask=done)
        terminated |= done & out.terminated
        truncated |= done & out.truncated
        _merge(infos, out.infos, running)
        running = running & ~done
    infos["executed"] = executed
    return reward, terminated, truncated, infos


def package_tensor_chunk(history: ObsHistory, final_history: ObsHistory, reward, terminated, truncated,
                         infos: dict[str, Array]) -> ChunkStep:
    """A batched (torch) backend's chunk result from `execute_chunk`'s: `done`, the true final
    observations of the envs whose episode ended (zeros elsewhere) and copies of the histories."""
    import torch

    done = terminated | truncated
    final_obs = {}
    for key, buf in final_history.buffers.items():
        final_obs[key] = torch.zeros_like(buf)
        final_obs[key][done] = buf[done]
    infos["done"] = done
    infos["final_obs"] = final_obs
    obs = {k: v.clone() for k, v in history.buffers.items()}
    return ChunkStep(obs, reward, terminated, truncated, infos)
