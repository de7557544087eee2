"""The two interfaces the simulator meets the rest of the project at.

`VectorEnv` is what every backend builds (`sim.make`): the CPU `mujoco` backend with numpy
arrays in worker processes, a GPU backend with torch tensors on its device. `ChunkPolicy` is
the small interface sim/ drives a policy by (a diffusion policy, a scripted expert, a fine-tuned
actor): sim/ never imports policy/.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from sim.chunk import ChunkStep


def to_numpy(x: Any):
    """A vector env's output as numpy: the CPU backend gives numpy arrays, the batched backend
    torch tensors on its device (copied to the host here)."""
    import numpy as np

    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def to_torch(x: Any, device: Any = None, dtype: Any = None):
    """A vector env's output as a torch tensor on `device`: the batched backend's tensors move
    device to device (no host round trip), the CPU backend's numpy arrays are wrapped."""
    import numpy as np
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device, dtype=dtype)


@runtime_checkable
class VectorEnv(Protocol):
    """N envs stepped in lockstep by action chunks, same-step auto-reset.

    reset(seed=s | seeds=[...]) -> (obs, infos): obs maps keys to (N, To, ...) histories.
    step(chunk (N, Ta, A) | (N, A), active=None, reset_seeds=None) -> ChunkStep: each env
      executes its chunk until its episode ends; rewards summed over the executed sub-steps;
      infos are (N,) arrays: `success`, `milestones/<name>`, `diverged`, `episode_return`,
      `episode_length`, `episode_seed`, `next_episode_seed`, `executed`, `done` and
      `final_obs` (the finished episodes' (N, To, ...) histories). A diverged simulation ends
      only that env's episode (truncated, `diverged` True).
    """

    num_envs: int
    obs_history: int
    device: Any
    single_observation_space: Any
    single_action_space: Any

    def reset(self, seed: int | None = None, options: dict | None = None,
              seeds: Sequence[int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]: ...

    def step(self, actions: Any, active: Any = None, reset_seeds: Any = None) -> ChunkStep: ...

    def call(self, name: str, *args: Any, **kwargs: Any) -> list[Any]: ...

    def close(self) -> None: ...


@runtime_checkable
class ChunkPolicy(Protocol):
    """What a rollout needs of a policy.

    obs_keys: the observation keys it reads; obs_history: how many past observations (To);
    act_steps: how many actions of a chunk are executed (Ta).
    act(obs, generator=None) -> (B, >= act_steps, A) actions; `obs` maps keys to (B, To, ...)
      arrays; `generator` is None, one torch.Generator, or one per row (per-episode noise).
    Optional: begin_episodes(mask, seeds), called when the envs in `mask` start episodes with
      `seeds` (stateful policies such as the scripted expert reset there).
    """

    obs_keys: tuple[str, ...]
    obs_history: int
    act_steps: int

    def act(self, obs: dict[str, Any], generator: Any = None) -> Any: ...
