"""Roll the scripted one_leg expert in simulation; report the success rate and write videos.

    python tools/rollout_expert.py                       # 8 episodes, low randomness, 4 envs
    python tools/rollout_expert.py n_episodes=50 task.randomness=med env.n_envs=8

Episode k runs with seed `seed + k` (replayable alone: `env.reset(seed=seed + k)`).
"""
from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sim.experts.one_leg import ExpertConfig, ExpertPolicy
from sim.make import make_from_hydra
from sim.rollout import run_episodes
from sim.video import record_first_env

log = logging.getLogger("rollout_expert")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    n_episodes = int(cfg.n_episodes)
    n_envs = min(int(cfg.env.n_envs), n_episodes)
    v = cfg.video
    record = partial(record_first_env, directory=str(out_dir) if v.enabled else None, prefix="expert",
                     episodes=int(v.episodes), camera=v.camera, image_hw=tuple(v.image_hw), fps=int(v.fps))
    expert = ExpertPolicy(n_envs, ExpertConfig(**OmegaConf.to_container(cfg.expert)))
    seeds = range(int(cfg.seed), int(cfg.seed) + n_episodes)
    with make_from_hydra(cfg, n_envs=n_envs, wrap=record) as envs:
        result = run_episodes(envs, expert, seeds, per_episode_noise=False, progress=True, desc="expert episodes")
    summary = {
        "task": cfg.task.name, "randomness": cfg.task.randomness, "backend": cfg.sim.backend, "obs": cfg.obs.mode,
        "seed": int(cfg.seed), **result.summary(), "videos": sorted(str(p) for p in out_dir.glob("*.mp4")),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@hydra.main(config_path="../configs", config_name="rollout_expert", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = run(cfg, out_dir)
    print(f"\none_leg scripted expert ({summary['randomness']} randomness, {summary['backend']}, "
          f"obs={summary['obs']})")
    print(f"  success rate      {summary['success_rate']:.2f}  ({sum(e['success'] for e in summary['episodes'])}"
          f"/{summary['n_episodes']})")
    if summary["mean_success_length"]:
        print(f"  mean steps (succ) {summary['mean_success_length']:.0f}")
    print(f"  throughput        {summary['env_steps_per_s']:.0f} env-steps/s")
    for v in summary["videos"]:
        print(f"  video             {v}")
    print(f"  summary           {out_dir / 'summary.json'}")


if __name__ == "__main__":
    main()
