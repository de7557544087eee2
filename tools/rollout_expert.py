"""Roll the scripted one_leg expert in simulation; report the success rate and write videos.

    python tools/rollout_expert.py                       # 8 episodes, low randomness, 4 envs
    python tools/rollout_expert.py n_episodes=50 task.randomness=med env.n_envs=8
"""
from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sim.experts.one_leg import ExpertConfig, ExpertPool
from sim.make import make_vector_env_from_hydra
from sim.video import record_first_env

log = logging.getLogger("rollout_expert")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    n_envs = min(int(cfg.env.n_envs), int(cfg.n_episodes))
    v = cfg.video
    record = partial(record_first_env, directory=str(out_dir) if v.enabled else None, prefix="expert",
                     episodes=int(v.episodes), camera=v.camera, image_hw=tuple(v.image_hw), fps=int(v.fps))
    envs = make_vector_env_from_hydra(cfg, n_envs=n_envs, wrap=record)
    experts = ExpertPool(n_envs, ExpertConfig(**OmegaConf.to_container(cfg.expert)), seed=int(cfg.seed))
    episodes: list[dict] = []
    t0 = time.perf_counter()
    steps = 0
    try:
        obs, _ = envs.reset(seed=int(cfg.seed))
        with tqdm(total=int(cfg.n_episodes), desc="expert episodes", unit="ep") as bar:
            while len(episodes) < cfg.n_episodes:
                obs, _, terminated, truncated, infos = envs.step(experts.act(obs))
                steps += n_envs
                for i in np.flatnonzero(terminated | truncated):
                    final = infos["final_info"][i]
                    episodes.append({"env": int(i), "episode": int(experts.episode[i] - 1),
                                     "success": bool(final["success"]), "length": int(final["steps"])})
                    experts.reset(int(i))
                    bar.update(1)
                    bar.set_postfix(success=f"{np.mean([e['success'] for e in episodes]):.2f}")
    finally:
        envs.close()
    episodes = episodes[: int(cfg.n_episodes)]
    wall = time.perf_counter() - t0
    succ = [e["success"] for e in episodes]
    lengths = [e["length"] for e in episodes if e["success"]]
    summary = {
        "task": cfg.task.name, "randomness": cfg.task.randomness, "backend": cfg.sim.backend, "obs": cfg.obs.mode,
        "seed": int(cfg.seed), "n_episodes": len(episodes), "success_rate": float(np.mean(succ)),
        "mean_success_length": float(np.mean(lengths)) if lengths else None,
        "env_steps": steps, "wall_s": wall, "env_steps_per_s": steps / wall, "episodes": episodes,
        "videos": sorted(str(p) for p in out_dir.glob("*.mp4")),
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
