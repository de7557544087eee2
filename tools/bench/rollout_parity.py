"""Replay the episodes of a legacy-path run (docs/bench/legacy_rollout_eval.py) through the
one rollout path and compare them episode by episode (same seeds, same per-episode noise).

    python tools/bench/rollout_parity.py --legacy old.json --out docs/bench/rollout_parity_<tag>.json

Prints success rates of both and the episodes whose outcome or length differ.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def compose(n_envs: int):
    from hydra import compose as hydra_compose, initialize_config_dir

    configs = str(Path(__file__).resolve().parents[2] / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        return hydra_compose("eval_policy", overrides=["checkpoint=x", f"env.n_envs={n_envs}", "env.n_workers=2"])


def replay_expert(seeds: list[int], n_envs: int) -> dict:
    from sim.experts.one_leg import ExpertConfig, ExpertPolicy
    from sim.make import make_from_hydra
    from sim.rollout import run_episodes

    with make_from_hydra(compose(n_envs), n_envs=n_envs) as envs:
        res = run_episodes(envs, ExpertPolicy(n_envs, ExpertConfig()), seeds, per_episode_noise=False)
    return res.summary()


def replay_policy(ckpt: str, seeds: list[int], n_envs: int) -> dict:
    import torch

    import policy as policy_pkg
    from sim.evaluate import make_evaluator

    torch.set_num_threads(2)
    pi = policy_pkg.load(ckpt)
    with make_evaluator(pi, compose(n_envs), n_envs=n_envs, n_workers=2) as ev:
        return ev.run(pi, seeds, act_kwargs={"eta": 0.0}).summary()


def compare(old: list[dict], new: list[dict]) -> dict:
    by_seed = {e["seed"]: e for e in new}
    same, differ = 0, []
    for e in old:
        n = by_seed[e["seed"]]
        if (n["success"], n["length"]) == (e["success"], e["length"]):
            same += 1
        else:
            differ.append({"seed": e["seed"], "old": [e["success"], e["length"]], "new": [n["success"], n["length"]]})
    return {"episodes": len(old), "identical": same, "differ": differ,
            "old_success": float(np.mean([e["success"] for e in old])),
            "new_success": float(np.mean([e["success"] for e in new]))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--legacy", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", default="checkpoints/one_leg_state_bc.pt")
    args = p.parse_args()
    import mujoco

    legacy = json.loads(Path(args.legacy).read_text())
    out = {"mujoco": mujoco.__version__, "legacy_mujoco": legacy["mujoco"], "machine": f"{os.cpu_count()} cores"}
    for name, fn in (("expert", replay_expert), ("policy", partial(replay_policy, args.ckpt))):
        seeds = [e["seed"] for e in legacy[name]["episodes"]]
        n_envs = 4 if name == "expert" else legacy["n_envs"]
        new = fn(seeds, n_envs)
        out[name] = {**compare(legacy[name]["episodes"], new["episodes"]),
                     "legacy_env_steps_per_s": legacy[name]["env_steps_per_s"],
                     "new_env_steps_per_s": new["env_steps_per_s"], "new_episodes": new["episodes"]}
        r = out[name]
        print(f"{name:7s} legacy {r['old_success']:.2f} ({legacy['mujoco']})  new {r['new_success']:.2f} "
              f"({mujoco.__version__})  identical {r['identical']}/{r['episodes']}  "
              f"env-steps/s legacy {r['legacy_env_steps_per_s']:.0f} new {r['new_env_steps_per_s']:.0f}", flush=True)
        for d in r["differ"][:10]:
            print(f"   seed {d['seed']}: legacy {d['old']} new {d['new']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
