"""Roll a policy out in simulation: success rate, episode lengths, videos.

Chunked execution as on the robot: the policy predicts `horizon` actions from an observation
history and `act_steps` of them are executed before it is queried again; an env that finishes
an episode mid-chunk drops the rest of its chunk and starts the next episode with a fresh history.
"""
from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger(__name__)


def env_config_for(policy_cfg, cfg: Mapping[str, Any]):
    """A copy of the Hydra config `cfg` whose observation group is what the policy was trained
    on: its cameras and image size (or state only, so nothing is rendered for a state policy),
    and the privileged part poses when it reads them."""
    import copy

    from omegaconf import DictConfig, OmegaConf, open_dict

    cfg = copy.deepcopy(cfg) if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    with open_dict(cfg):
        if policy_cfg.obs.cameras:
            cfg.obs.mode = "pixel"
            cfg.obs.cameras = list(policy_cfg.obs.cameras)
            cfg.obs.image_hw = list(policy_cfg.obs.image_hw)
        else:
            cfg.obs.mode = "state"
        if "parts" in policy_cfg.obs.lowdim_keys:
            cfg.env.include_parts = True
    return cfg


def evaluate_policy(policy, cfg: Mapping[str, Any], episodes: int = 8, n_envs: int = 4, n_workers: int = 2,
                    ddim_steps: int | None = None, seed: int = 100_000, video_dir: str | Path | None = None,
                    video_episodes: int = 1, progress: bool = False) -> dict[str, Any]:
    """`cfg` is a Hydra config with task/sim/env/obs groups (the env the policy runs in; its obs
    group is set from the policy by `env_config_for`)."""
    import torch

    from policy.diffusion_policy import ObsHistory
    from sim.make import make_vector_env_from_hydra
    from sim.video import record_first_env

    n_envs = min(n_envs, episodes)
    record = partial(record_first_env, directory=str(video_dir) if video_dir else None, prefix="policy",
                     episodes=video_episodes, camera="both", image_hw=(120, 160))
    envs = make_vector_env_from_hydra(env_config_for(policy.cfg, cfg), n_envs=n_envs, n_workers=n_workers, wrap=record)
    keys = list(policy.cfg.obs.lowdim_keys) + [f"rgb/{c}" for c in policy.cfg.obs.cameras]
    history = ObsHistory(policy.cfg.obs.obs_history, keys)
    queues: list[list[np.ndarray]] = [[] for _ in range(n_envs)]
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    device = next(policy.parameters()).device
    noise = torch.Generator(device=device).manual_seed(seed)  # denoising noise: reproducible evaluations
    try:
        obs, _ = envs.reset(seed=seed)
        history.reset(obs)
        stacked = history.stacked()
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc="eval", unit="ep", disable=not progress, leave=False)
        while len(results) < episodes:
            need = [i for i in range(n_envs) if not queues[i]]
            if need:
                chunk = policy.act({k: v[need] for k, v in stacked.items()}, steps=ddim_steps, generator=noise)
                for j, i in enumerate(need):
                    queues[i] = list(chunk[j, : policy.cfg.act_steps])
            actions = np.stack([q.pop(0) for q in queues])
            obs, _, terminated, truncated, infos = envs.step(actions)
            done = terminated | truncated
            stacked = history.add(obs)
            if done.any():
                idx = np.flatnonzero(done)
                for i in idx:
                    final = infos["final_info"][i]
                    if len(results) < episodes:
                        results.append({"env": int(i), "success": bool(final["success"]), "length": int(final["steps"]),
                                        "milestones": dict(final.get("milestones", {}))})
                        bar.update(1)
                    queues[i] = []
                history.reset(obs, envs=idx)  # the new episodes start with a fresh history
                stacked = history.stacked()
        bar.close()
    finally:
        envs.close()
    succ = [r["success"] for r in results]
    names = list(results[0]["milestones"]) if results else []
    milestone_rates = {m: float(np.mean([r["milestones"][m] for r in results])) for m in names}
    return {"success_rate": float(np.mean(succ)), "milestone_rates": milestone_rates, "episodes": results,
            "mean_length": float(np.mean([r["length"] for r in results])), "wall_s": time.perf_counter() - t0}

