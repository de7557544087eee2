"""Backend registry: one place that turns config into vector environments.

`sim.backend` selects the simulator; every backend builds a *vector* env (`sim.api.VectorEnv`:
N envs stepped by action chunks in one call, the level at which a GPU backend steps all its
worlds) with the same observation/action schema (data.schema), so policies, tools and tests
never branch on the backend.
"""
from __future__ import annotations

import importlib.util
from functools import partial
from typing import Any, Callable, Mapping

import gymnasium as gym

from sim.api import VectorEnv
from sim.assets import MissingDependencyError
from sim.config import EnvConfig, from_mapping


def _require(package: str, pip_name: str, why: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise MissingDependencyError(f"sim.backend needs package '{pip_name}' ({why}), which is not installed")


def _one_leg_env(cfg: EnvConfig) -> gym.Env:
    from sim.backends.mujoco_one_leg import OneLegMujocoEnv

    return OneLegMujocoEnv(cfg)


def _vector_mujoco(cfg: EnvConfig, n_envs: int, n_workers: int | None, obs_history: int,
                   wrap: Callable[[int, gym.Env], gym.Env] | None) -> VectorEnv:
    from sim.vector_env import make_vector_env

    fns = [partial(_one_leg_env, cfg) for _ in range(n_envs)]
    if wrap is not None:
        fns = [partial(_wrapped, fn, wrap, i) for i, fn in enumerate(fns)]
    return make_vector_env(fns, n_workers, obs_history=obs_history)


def _vector_mujoco_warp(cfg: EnvConfig, n_envs: int, n_workers: int | None, obs_history: int,
                        wrap: Callable[[int, gym.Env], gym.Env] | None) -> VectorEnv:
    _require("mujoco_warp", "mujoco-warp==4.0.0", "GPU-parallel MuJoCo; pip install -e .[gpu]")
    _require("warp", "warp-lang", "NVIDIA Warp runtime for mujoco-warp")
    if wrap is not None:
        raise NotImplementedError("per-env wrappers (video recording) need single envs: sim.backend=mujoco")
    from sim.backends.mujoco_warp_one_leg import OneLegWarpVectorEnv

    return OneLegWarpVectorEnv(cfg, n_envs, obs_history=obs_history)


def _vector_isaacgym(cfg: EnvConfig, n_envs: int, n_workers: int | None, obs_history: int,
                     wrap: Callable[[int, gym.Env], gym.Env] | None) -> VectorEnv:
    _require("isaacgym", "isaacgym (IsaacGym Preview 4, NVIDIA; Python <= 3.8, not on PyPI)",
             "furniture-bench's FurnitureSim")
    _require("furniture_bench.envs.furniture_rl_sim_env",
             "furniture-bench's DPPO fork (github.com/ankile/furniture-bench; docs/isaacgym.md)", "FurnitureRLSimEnv")
    if wrap is not None:
        raise NotImplementedError("per-env wrappers (video recording) need single envs: sim.backend=mujoco")
    from sim.backends.isaacgym_one_leg import IsaacGymOneLegVectorEnv

    return IsaacGymOneLegVectorEnv(cfg, n_envs, obs_history=obs_history)


VectorFactory = Callable[[EnvConfig, int, "int | None", int, "Callable[[int, gym.Env], gym.Env] | None"], VectorEnv]
BACKENDS: dict[str, VectorFactory] = {
    "mujoco": _vector_mujoco,
    "mujoco_warp": _vector_mujoco_warp,
    "isaacgym": _vector_isaacgym,
}


def resolve_backend(backend: str) -> str:
    """`auto`: mujoco_warp when a CUDA device and mujoco-warp are both there, else mujoco."""
    if backend != "auto":
        return backend
    if importlib.util.find_spec("mujoco_warp") is None or importlib.util.find_spec("warp") is None:
        return "mujoco"
    import torch

    return "mujoco_warp" if torch.cuda.is_available() else "mujoco"


def make(cfg: EnvConfig, n_envs: int, *, backend: str = "mujoco", n_workers: int | None = None,
         obs_history: int = 1, wrap: Callable[[int, gym.Env], gym.Env] | None = None) -> VectorEnv:
    """The vector env of `backend` for `cfg`: N envs stepped by chunks, histories of
    `obs_history` observations (see sim.api.VectorEnv). `wrap(i, env)` decorates env i of a
    CPU backend inside its worker (e.g. video recording); `n_workers` is the CPU backend's
    process count (0: all envs in this process, None: one per core); `backend="auto"` picks one
    (`resolve_backend`)."""
    backend = resolve_backend(backend)
    if backend not in BACKENDS:
        raise ValueError(f"unknown sim.backend '{backend}'; available: {sorted(BACKENDS)}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    return BACKENDS[backend](cfg, int(n_envs), n_workers, int(obs_history), wrap)


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
        "physics_randomization": dict(sim.get("physics_randomization") or {}),
        "warp": dict(sim.get("warp") or {}),
        "isaacgym": dict(sim.get("isaacgym") or {}),
        "render": {**dict(sim["render"]), "cameras": list(obs["cameras"]), "image_hw": list(obs["image_hw"])},
        "obs_mode": obs["mode"],
        # optional: configs saved before start states existed lack the keys
        "start_states": _absolute(task.get("start_states")),
        "start_state_prob": task.get("start_state_prob", 1.0),
        "start_state_max_steps": task.get("start_state_max_steps"),
    }
    for key in ("include_joints", "include_parts", "max_pos_step", "workspace_low", "workspace_high",
                "gripper_max_width", "max_joint_velocity"):
        data[key] = env[key]
    return from_mapping(EnvConfig, _plain(data))


def _absolute(path: str | None) -> str | None:
    """A relative path against the directory the program was started in (Hydra's original
    working directory when it changed into its output directory, else the current one)."""
    if path is None:
        return None
    import os

    try:
        from hydra.utils import to_absolute_path

        return to_absolute_path(os.path.expanduser(str(path)))
    except ImportError:  # pragma: no cover
        return os.path.abspath(os.path.expanduser(str(path)))


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
    """One gymnasium env (teleoperation, tests, debugging); only the CPU backend has single envs."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sim.backend '{backend}'; available: {sorted(BACKENDS)}")
    if backend != "mujoco":
        BACKENDS[backend](cfg, 1, 0, 1, None)  # names what is missing
        raise ValueError(f"sim.backend={backend} is batched only; use sim.make(...)")  # pragma: no cover
    return _one_leg_env(cfg)


def make_from_hydra(cfg: Mapping[str, Any], n_envs: int | None = None, n_workers: int | None = None,
                    obs_history: int = 1, wrap: Callable[[int, gym.Env], gym.Env] | None = None) -> VectorEnv:
    """`make` for a Hydra config with task/sim/env/obs groups (env.n_envs, env.n_workers by default)."""
    n_envs = int(n_envs if n_envs is not None else cfg["env"]["n_envs"])
    n_workers = int(n_workers if n_workers is not None else cfg["env"]["n_workers"])
    return make(env_config_from_hydra(cfg), n_envs, backend=str(cfg["sim"]["backend"]), n_workers=n_workers,
                obs_history=obs_history, wrap=wrap)


def _wrapped(fn, wrap, i):
    return wrap(i, fn())
