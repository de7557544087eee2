"""The pre-issue-11 rollout path, kept as the yardstick the new one is compared against.

Runs against commit 2764672 (the last one before the rollout API), e.g. from a worktree:

    git worktree add /tmp/old 2764672 && cd /tmp/old
    PYTHONPATH=. python /path/to/docs/bench/legacy_rollout_eval.py --out old.json

It is that commit's `sim/evaluate.py::evaluate_policy` per-step loop (main-process observation
history, per-env action queues, one vector-env step per action) with one change that makes
episodes comparable across batchings: the DDIM start noise of an episode comes from a torch
generator seeded with that episode's seed (the new Evaluator's rule), instead of one generator
shared by all envs. The expert runs the same loop, its per-episode noise seeded by the episode
seed as `tools/collect_demos.py` did. Every episode is recorded with its seed, so the new path
can replay exactly the same episodes.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from omegaconf import OmegaConf


def hydra_cfg(n_envs: int, n_workers: int):
    from hydra import compose, initialize_config_dir
    import os

    with initialize_config_dir(config_dir=os.path.abspath("configs"), version_base="1.3"):
        cfg = compose("eval_policy", overrides=["checkpoint=x", f"env.n_envs={n_envs}", f"env.n_workers={n_workers}"])
    return cfg


def run_expert(episodes: int, n_envs: int, seed: int) -> dict:
    from sim.experts.one_leg import ExpertConfig, ExpertPool
    from sim.make import make_vector_env_from_hydra

    cfg = hydra_cfg(n_envs, 2)
    envs = make_vector_env_from_hydra(cfg, n_envs=n_envs)
    pool = ExpertPool(n_envs, ExpertConfig())
    out, steps, t0 = [], 0, time.perf_counter()
    try:
        obs, infos = envs.reset(seed=seed)
        seeds = np.asarray(infos["episode_seed"]).copy()
        for i in range(n_envs):
            pool.reset(i, seed=int(seeds[i]))
        while len(out) < episodes:
            obs, _, term, trunc, infos = envs.step(pool.act(obs))
            steps += n_envs
            for i in np.flatnonzero(term | trunc):
                f = infos["final_info"][i]
                out.append({"seed": int(seeds[i]), "success": bool(f["success"]), "length": int(f["steps"])})
                seeds[i] = int(infos["episode_seed"][i])
                pool.reset(int(i), seed=int(seeds[i]))
    finally:
        envs.close()
    wall = time.perf_counter() - t0
    return {"episodes": out[:episodes], "env_steps_per_s": steps / wall, "wall_s": wall}


def run_policy(ckpt: str, episodes: int, n_envs: int, seed: int) -> dict:
    import policy as policy_pkg
    from policy.diffusion_policy import ObsHistory
    from sim.evaluate import env_config_for
    from sim.make import make_vector_env_from_hydra

    torch.set_num_threads(2)
    pi = policy_pkg.load(ckpt)
    cfg = env_config_for(pi.cfg, hydra_cfg(n_envs, 2))
    envs = make_vector_env_from_hydra(cfg, n_envs=n_envs)
    keys = list(pi.cfg.obs.lowdim_keys) + [f"rgb/{c}" for c in pi.cfg.obs.cameras]
    history = ObsHistory(pi.cfg.obs.obs_history, keys)
    queues = [[] for _ in range(n_envs)]
    gens = [torch.Generator() for _ in range(n_envs)]
    shape = (pi.cfg.horizon, pi.cfg.action_dim)
    out, steps, t0 = [], 0, time.perf_counter()
    try:
        obs, infos = envs.reset(seed=seed)
        seeds = np.asarray(infos["episode_seed"]).copy()
        for i in range(n_envs):
            gens[i].manual_seed(int(seeds[i]))
        history.reset(obs)
        stacked = history.stacked()
        while len(out) < episodes:
            need = [i for i in range(n_envs) if not queues[i]]
            if need:
                noise = torch.stack([torch.randn(shape, generator=gens[i]) for i in need])
                chunk = pi.act({k: v[need] for k, v in stacked.items()}, noise=noise)
                for j, i in enumerate(need):
                    queues[i] = list(chunk[j, : pi.cfg.act_steps])
            obs, _, term, trunc, infos = envs.step(np.stack([q.pop(0) for q in queues]))
            steps += n_envs
            stacked = history.add(obs)
            done = term | trunc
            if done.any():
                idx = np.flatnonzero(done)
                for i in idx:
                    f = infos["final_info"][i]
                    out.append({"seed": int(seeds[i]), "success": bool(f["success"]), "length": int(f["steps"]),
                                "milestones": {k: bool(v) for k, v in f["milestones"].items()}})
                    seeds[i] = int(infos["episode_seed"][i])
                    gens[i].manual_seed(int(seeds[i]))
                    queues[i] = []
                history.reset(obs, envs=idx)
                stacked = history.stacked()
    finally:
        envs.close()
    wall = time.perf_counter() - t0
    return {"episodes": out[:episodes], "env_steps_per_s": steps / wall, "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", default="checkpoints/one_leg_state_bc.pt")
    p.add_argument("--expert-episodes", type=int, default=20)
    p.add_argument("--policy-episodes", type=int, default=100)
    p.add_argument("--n-envs", type=int, default=16)
    args = p.parse_args()
    import mujoco

    res = {"mujoco": mujoco.__version__, "n_envs": args.n_envs}
    res["expert"] = run_expert(args.expert_episodes, 4, seed=0)
    print("expert", np.mean([e["success"] for e in res["expert"]["episodes"]]), flush=True)
    res["policy"] = run_policy(args.ckpt, args.policy_episodes, args.n_envs, seed=100_000)
    print("policy", np.mean([e["success"] for e in res["policy"]["episodes"]]),
          f"{res['policy']['env_steps_per_s']:.0f} env-steps/s", flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
