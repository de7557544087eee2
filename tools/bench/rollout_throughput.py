"""Env-steps/s of the one rollout path with a policy in the loop (inference included).

Rows, all at the same env count on this machine:
  * `chunked`: `sim.rollout.run_episodes` - all envs query the policy at once, each chunk goes
    to the workers in one message and is executed there (the path evaluation, demo collection
    and fine-tuning use);
  * `per-step (yardstick)`: the loop evaluation had before the rollout API, measured in the
    same run on the same envs - one vector-env round trip per action, per-env chunk queues and
    the observation history kept in the main process;
  * `expert`: the scripted expert through the same path (one action per query).
Steady state: seeds never run out, so no env idles; the first chunks are warm-up.

    python tools/bench/rollout_throughput.py                      # 16 envs, state BC policy
    python tools/bench/rollout_throughput.py --envs 8 16 --chunks 20
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def chunked(envs, policy, chunks: int, warmup: int, per_episode_noise: bool = True) -> float:
    from sim.rollout import run_episodes

    state = {"n": 0, "t0": None, "steps": 0}

    def on_chunk(obs, chunk, step, active):
        state["n"] += 1
        if state["n"] == warmup:
            state["t0"], state["steps"] = time.perf_counter(), 0
        elif state["n"] > warmup:
            state["steps"] += int(step.infos["executed"].sum())
        return state["n"] >= warmup + chunks

    run_episodes(envs, policy, itertools.count(1_000_000), on_chunk=on_chunk, per_episode_noise=per_episode_noise,
                 act_kwargs={"eta": 0.0} if per_episode_noise else None)
    return state["steps"] / (time.perf_counter() - state["t0"])


def per_step(envs, policy, steps: int, warmup: int) -> float:
    """The pre-rollout-API evaluation loop: one action per vector-env call."""
    from data.history import ObsHistory

    n = envs.num_envs
    obs, _ = envs.reset(seeds=list(range(2_000_000, 2_000_000 + n)))
    history = ObsHistory(policy.obs_history, policy.obs_keys)
    history.reset({k: v[:, -1] for k, v in obs.items() if k in policy.obs_keys})
    queues: list[list[np.ndarray]] = [[] for _ in range(n)]
    t0, count = None, 0
    for t in range(warmup + steps):
        if t == warmup:
            t0, count = time.perf_counter(), 0
        need = [i for i in range(n) if not queues[i]]
        if need:
            stacked = history.stacked()
            chunk = policy.act({k: v[need] for k, v in stacked.items()}, eta=0.0)
            for j, i in enumerate(need):
                queues[i] = list(chunk[j, : policy.act_steps])
        step = envs.step(np.stack([q.pop(0) for q in queues]))
        count += n
        history.add({k: v[:, -1] for k, v in step.obs.items() if k in policy.obs_keys})
        done = step.infos["done"]
        if done.any():
            history.reset({k: v[:, -1] for k, v in step.obs.items() if k in policy.obs_keys}, mask=done)
            for i in np.flatnonzero(done):
                queues[i] = []
    return count / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", type=int, nargs="+", default=[16])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--chunks", type=int, default=25, help="timed chunks per row (after warm-up)")
    ap.add_argument("--ckpt", default=str(ROOT / "checkpoints" / "one_leg_state_bc.pt"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for inference")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "rollout_throughput.json")
    args = ap.parse_args()
    import mujoco
    import torch

    import policy as policy_pkg
    from sim.config import EnvConfig
    from sim.experts.one_leg import ExpertPolicy
    from sim.make import make

    torch.set_num_threads(args.threads)
    pi = policy_pkg.load(args.ckpt)
    rows = []
    print(f"{'path':24s} {'envs':>4s} {'workers':>7s} {'env-steps/s':>12s}")
    for n in args.envs:
        cfg = EnvConfig(obs_mode="state", randomness="low", include_parts=True)
        with make(cfg, n, n_workers=args.workers, obs_history=pi.obs_history) as envs:
            for name, fn in (("chunked", lambda: chunked(envs, pi, args.chunks, warmup=3)),
                             ("per-step (yardstick)", lambda: per_step(envs, pi, args.chunks * pi.act_steps,
                                                                       warmup=3 * pi.act_steps))):
                rows.append({"path": name, "policy": Path(args.ckpt).name, "n_envs": n, "n_workers": args.workers,
                             "env_steps_per_s": fn()})
                print(f"{name:24s} {n:4d} {args.workers:7d} {rows[-1]['env_steps_per_s']:12.0f}", flush=True)
        with make(cfg, n, n_workers=args.workers) as envs:
            rate = chunked(envs, ExpertPolicy(n), args.chunks * 8, warmup=10, per_episode_noise=False)
            rows.append({"path": "expert", "policy": "scripted", "n_envs": n, "n_workers": args.workers,
                         "env_steps_per_s": rate})
            print(f"{'expert':24s} {n:4d} {args.workers:7d} {rate:12.0f}", flush=True)
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "mujoco": mujoco.__version__, "torch": torch.__version__, "torch_threads": args.threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "chunks": args.chunks, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
