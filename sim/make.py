"""Backend registry: one place that turns Hydra config into environments.

`sim.backend` selects the simulator; every backend produces the same observation/action
schema (data.schema), so policies, tools and tests never branch on the backend.
"""
from __future__ import annotations

import importlib.util
from functools import partial
from typing import Any, Callable, Mapping

import gymnasium as gym

from sim.assets import MissingDependencyError
from sim.config import EnvConfig, from_mapping


def _require(package: str, pip_name: str, why: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise MissingDependencyError(f"sim.backend needs package '{pip_name}' ({why}), which is not installed")


def _make_mujoco(cfg: EnvConfig) -> gym.Env:
    from sim.backends.mujoco_one_leg import OneLegMujocoEnv

    return OneLegMujocoEnv(cfg)


def _make_mujoco_warp(cfg: EnvConfig) -> gym.Env:
    _require("mujoco_warp", "mujoco-warp==3.11.0", "GPU-parallel MuJoCo; pip install -e .[gpu]")
    _require("warp", "warp-lang>=1.14", "NVIDIA Warp runtime for mujoco-warp")
    raise NotImplementedError(
        "sim.backend=mujoco_warp is reserved for the GPU-parallel backend (batched worlds on one GPU); "
        "it is not implemented yet. Use sim.backend=mujoco."
    )


def _make_isaacgym(cfg: EnvConfig) -> gym.Env:
    _require("isaacgym", "isaacgym (IsaacGym Preview 4, NVIDIA; Python <= 3.8, not on PyPI)",
             "furniture-bench's FurnitureSim")
    _require("furniture_bench", "furniture-bench", "FurnitureRLSimEnv")
    raise NotImplementedError(
        "sim.backend=isaacgym (furniture-bench FurnitureRLSimEnv) is not implemented yet. Use sim.backend=mujoco."
    )


BACKENDS: dict[str, Callable[[EnvConfig], gym.Env]] = {
    "mujoco": _make_mujoco,
    "mujoco_warp": _make_mujoco_warp,
    "isaacgym": _make_isaacgym,
}


def env_config_from_hydra(cfg: Mapping[str, Any]) -> EnvConfig:
    """Flatten the task / sim / env / obs groups of a Hydra config into an EnvConfig."""
    task, sim, env, obs = (dict(cfg[k]) for k in ("task", "sim", "env", "obs"))
    data: dict[str, Any] = {
        "task": task["name"],
        "randomness": task["randomness"],
        "max_episode_steps": task["max_episode_steps"],
        "reward": task["reward"],
        "terminate_on_success": task["terminate_on_success"],
        "success": dict(task["success"]),
        "thread": dict(task["thread"]),
        "control_hz": sim["control_hz"],
        "timestep": sim["timestep"],
        "interp_chunks": sim["interp_chunks"],
        "ik": dict(sim["ik"]),
        "visual_randomization": dict(sim["visual_randomization"]),
        "render": {**dict(sim["render"]), "cameras": list(obs["cameras"]), "image_hw": list(obs["image_hw"])},
        "obs_mode": obs["mode"],
    }
    for key in ("include_joints", "include_parts", "max_pos_step", "workspace_low", "workspace_high",
                "gripper_max_width"):
        data[key] = env[key]
    return from_mapping(EnvConfig, _plain(data))


def _plain(x):
    """OmegaConf containers -> plain python (dataclasses want lists/dicts)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(x, (DictConfig, ListConfig)):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def make_env(backend: str, cfg: EnvConfig) -> gym.Env:
    if backend not in BACKENDS:
        raise ValueError(f"unknown sim.backend '{backend}'; available: {sorted(BACKENDS)}")
    return BACKENDS[backend](cfg)


def env_fns(backend: str, cfg: EnvConfig, n_envs: int) -> list[Callable[[], gym.Env]]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown sim.backend '{backend}'; available: {sorted(BACKENDS)}")
    return [partial(make_env, backend, cfg) for _ in range(n_envs)]


def make_vector_env_from_hydra(cfg: Mapping[str, Any], n_envs: int | None = None, n_workers: int | None = None,
                               wrap: Callable[[int, gym.Env], gym.Env] | None = None):
    """Vector env for a Hydra config. `wrap(i, env)` can decorate env i inside its worker."""
    from sim.vector_env import make_vector_env

    env_cfg = env_config_from_hydra(cfg)
    backend = cfg["sim"]["backend"]
    n_envs = int(n_envs if n_envs is not None else cfg["env"]["n_envs"])
    n_workers = int(n_workers if n_workers is not None else cfg["env"]["n_workers"])
    fns = env_fns(backend, env_cfg, n_envs)
    if wrap is not None:
        fns = [partial(_wrapped, fn, wrap, i) for i, fn in enumerate(fns)]
    # fail early, in this process, with a clear message if the backend cannot be built
    if backend != "mujoco":
        make_env(backend, env_cfg)
    return make_vector_env(fns, n_workers)


def _wrapped(fn, wrap, i):
    return wrap(i, fn())
