"""Aggregate env-steps/s of the embedded one_leg sim, state and pixel, N = 1, 2, 4, 8 envs.

Actions come from the scripted expert (so contacts, grasps and the thread are exercised,
not an idle arm); only time inside `envs.step` counts. robosuite's Lift (Panda, two 96x96
cameras when pixel) is measured in the same run as a yardstick.

    python tools/bench/sim_throughput.py                  # full table, writes JSON + markdown rows
    python tools/bench/sim_throughput.py --steps 50 --envs 1 2 --modes state
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from sim.config import EnvConfig  # noqa: E402
from sim.experts.one_leg import ExpertPool  # noqa: E402
from sim.make import make_env  # noqa: E402
from sim.vector_env import make_vector_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def bench_one_leg(mode: str, n_envs: int, n_workers: int, steps: int, warmup: int = 10) -> dict:
    cfg = EnvConfig(obs_mode=mode, randomness="low")
    fns = [partial(make_env, "mujoco", cfg) for _ in range(n_envs)]
    envs = make_vector_env(fns, n_workers)
    try:
        experts = ExpertPool(n_envs, seed=0)
        obs, _ = envs.reset(seed=0)
        for _ in range(warmup):
            obs, _, term, trunc, _ = envs.step(experts.act(obs))
            for i in np.flatnonzero(term | trunc):
                experts.reset(int(i))
        before = envs.call("timings")
        t_step = 0.0
        for _ in range(steps):
            actions = experts.act(obs)
            t0 = time.perf_counter()
            obs, _, term, trunc, _ = envs.step(actions)
            t_step += time.perf_counter() - t0
            for i in np.flatnonzero(term | trunc):
                experts.reset(int(i))
        after = envs.call("timings")
    finally:
        envs.close()
    env_steps = steps * n_envs
    parts = {k: sum(a[k] - b[k] for a, b in zip(after, before)) / env_steps * 1e3 for k in after[0]}
    workers = max(1, min(n_workers, n_envs)) if n_workers else 1
    per_step_budget = t_step * workers / env_steps * 1e3  # ms of worker time per env-step
    parts["other (obs, IPC, sync)"] = max(0.0, per_step_budget - sum(parts.values()))
    return {"sim": "one_leg (ours)", "mode": mode, "n_envs": n_envs, "n_workers": workers,
            "env_steps_per_s": env_steps / t_step, "ms_per_env_step": parts}


def bench_robosuite_lift(mode: str, steps: int) -> dict:
    from sim.tasks.one_leg.scene import quiet_robosuite

    with quiet_robosuite():
        import robosuite
        from robosuite.controllers import load_composite_controller_config

    pixel = mode == "pixel"
    with quiet_robosuite():
        env = _make_lift(robosuite, load_composite_controller_config, pixel)
    rng = np.random.default_rng(0)
    with quiet_robosuite():
        env.reset()
    low, high = env.action_spec
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(low, high) * 0.3)
    dt = time.perf_counter() - t0
    env.close()
    return {"sim": "robosuite Lift (yardstick)", "mode": mode, "n_envs": 1, "n_workers": 1,
            "env_steps_per_s": steps / dt, "ms_per_env_step": {}}


def _make_lift(robosuite, load_composite_controller_config, pixel: bool):
    return robosuite.make(
        "Lift", robots="Panda", controller_configs=load_composite_controller_config(controller="BASIC", robot="Panda"),
        has_renderer=False, has_offscreen_renderer=pixel, use_camera_obs=pixel,
        camera_names=["frontview", "robot0_eye_in_hand"], camera_heights=96, camera_widths=96,
        control_freq=10, horizon=10_000, ignore_done=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--modes", nargs="+", default=["state", "pixel"])
    ap.add_argument("--steps", type=int, default=150, help="control steps per configuration")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-robosuite", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "sim_throughput.json")
    args = ap.parse_args()

    rows = []
    for mode in args.modes:
        for n in args.envs:
            rows.append(bench_one_leg(mode, n, min(args.workers, n), args.steps))
            _print_row(rows[-1])
        if not args.no_robosuite:
            rows.append(bench_robosuite_lift(mode, max(20, args.steps // 3)))
            _print_row(rows[-1])
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "processor": platform.processor() or platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "steps": args.steps, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


def _print_row(r: dict) -> None:
    if not hasattr(_print_row, "header"):
        _print_row.header = True
        print(f"{'sim':28s} {'obs':6s} {'envs':>4s} {'workers':>7s} {'steps/s':>9s}   ms per env-step (worker time)")
    parts = "  ".join(f"{k} {v:.2f}" for k, v in r["ms_per_env_step"].items())
    print(f"{r['sim']:28s} {r['mode']:6s} {r['n_envs']:4d} {r['n_workers']:7d} {r['env_steps_per_s']:9.1f}   {parts}",
          flush=True)


if __name__ == "__main__":
    main()
