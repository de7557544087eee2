"""Evaluate a policy in simulation on fixed seeds: success rate, milestones, lengths, videos.

A thin layer over `sim.rollout`: it builds the env the policy was trained for (its cameras and
image size, or state only, so nothing is rendered for a state policy) and runs the policy
with DDIM at eta 0 on the seeds `seed, seed + 1, ...`. Episodes are named by their seeds, so a
run is reproducible for a given env count (see `sim.rollout` for why a learned policy's single
episodes can differ across env counts while its rates agree).
"""
from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Any, Mapping

from sim.api import ChunkPolicy
from sim.rollout import Evaluator, RolloutResult


def env_config_for(policy: ChunkPolicy, cfg: Mapping[str, Any]):
    """A copy of the Hydra config `cfg` whose observation group is what `policy` reads: its
    cameras and image size (or state only), and the privileged part poses when it reads them."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    cfg = copy.deepcopy(cfg) if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    cameras = [k[len("rgb/"):] for k in policy.obs_keys if k.startswith("rgb/")]
    with open_dict(cfg):
        if cameras:
            cfg.obs.mode = "pixel"
            cfg.obs.cameras = cameras
            cfg.obs.image_hw = list(policy.image_hw)
        else:
            cfg.obs.mode = "state"
        if "parts" in policy.obs_keys:
            cfg.env.include_parts = True
    return cfg


def make_evaluator(policy: ChunkPolicy, cfg: Mapping[str, Any], n_envs: int, n_workers: int,
                   video_camera: str = "both", video_hw: tuple[int, int] = (120, 160)) -> Evaluator:
    """An Evaluator whose envs (built on first use, then kept) observe what `policy` reads.

    Evaluation runs on MuJoCo C (`sim.backend=mujoco`) also when training uses the batched
    mujoco-warp worlds: the same model in float64, the reference the figures are compared on,
    and the backend with video. On IsaacGym it stays there, without video."""
    from omegaconf import open_dict

    from sim.make import make_from_hydra
    from sim.video import record_first_env

    env_cfg = env_config_for(policy, cfg)
    backend = str(env_cfg.sim.backend)
    if backend == "mujoco_warp":
        with open_dict(env_cfg):
            env_cfg.sim.backend = "mujoco"
        backend = "mujoco"
    record = partial(record_first_env, camera=video_camera, image_hw=video_hw) if backend == "mujoco" else None
    return Evaluator(lambda history: make_from_hydra(env_cfg, n_envs=n_envs, n_workers=n_workers,
                                                     obs_history=history, wrap=record))


def evaluate(evaluator: Evaluator, policy: ChunkPolicy, episodes: int, seed: int = 100_000,
             ddim_steps: int | None = None, video_dir: str | Path | None = None, video_episodes: int = 1,
             progress: bool = False) -> RolloutResult:
    """`episodes` episodes on seeds seed .. seed + episodes - 1, DDIM at eta 0."""
    kwargs = {"eta": 0.0} | ({"steps": int(ddim_steps)} if ddim_steps else {})
    return evaluator.run(policy, range(int(seed), int(seed) + int(episodes)), video_dir=video_dir,
                         video_episodes=video_episodes, progress=progress, act_kwargs=kwargs)


class SimEvaluation:
    """Pretraining's evaluation hook (`eval.evaluator`): one Evaluator, built at the first call
    for the policy it is given and kept for every later evaluation."""

    def __init__(self, cfg: Mapping[str, Any], n_envs: int = 4, n_workers: int = 2):
        self.cfg, self.n_envs, self.n_workers = cfg, int(n_envs), int(n_workers)
        self.evaluator: Evaluator | None = None

    def __call__(self, policy: ChunkPolicy, episodes: int = 8, ddim_steps: int | None = None, seed: int = 100_000,
                 video_dir: str | Path | None = None, video_episodes: int = 1) -> dict[str, Any]:
        if self.evaluator is None:
            self.evaluator = make_evaluator(policy, self.cfg, min(self.n_envs, int(episodes)), self.n_workers)
        return evaluate(self.evaluator, policy, episodes, seed, ddim_steps, video_dir, video_episodes).summary()

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
            self.evaluator = None
