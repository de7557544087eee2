"""Aggregate env-steps/s of the embedded one_leg sim, state and pixel, N = 1, 2, 4, 8 envs.

Actions come from the scripted expert (so contacts, grasps and the thread are exercised,
not an idle arm); only time inside `envs.step` counts. robosuite's Lift (Panda, two 96x96
cameras when pixel) is measured in the same run as a yardstick, in its own interpreter with
MuJoCo 3.9 (robosuite's own envs break on 4.0; `bash tools/bench/setup_lift_venv.sh`).

    python tools/bench/sim_throughput.py                  # full table, writes JSON + markdown rows
    python tools/bench/sim_throughput.py --steps 50 --envs 1 2 --modes state
    python tools/bench/sim_throughput.py --backends mujoco mujoco_warp --warp-worlds 256 1024 4096 --modes state

`--backends mujoco_warp` adds the batched backend (one device, N worlds) beside the CPU rows of
the same run; on a machine without CUDA it runs on CPU (correctness speed only, small N).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from sim.api import to_numpy  # noqa: E402
from sim.config import EnvConfig  # noqa: E402
from sim.experts.one_leg import ExpertPolicy  # noqa: E402
from sim.make import make  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def bench_one_leg(mode: str, n_envs: int, n_workers: int, steps: int, warmup: int = 10,
                  backend: str = "mujoco") -> dict:
    cfg = EnvConfig(obs_mode=mode, randomness="low")
    envs = make(cfg, n_envs, n_workers=n_workers, backend=backend)
    expert = ExpertPolicy(n_envs)

    def run(n: int, obs):
        t = 0.0
        for _ in range(n):
            actions = expert.act({k: to_numpy(v) for k, v in obs.items()})
            t0 = time.perf_counter()
            step = envs.step(actions)
            t += time.perf_counter() - t0
            expert.begin_episodes(to_numpy(step.infos["done"]), to_numpy(step.infos["next_episode_seed"]))
            obs = step.obs
        return obs, t

    try:
        obs, infos = envs.reset(seed=0)
        expert.begin_episodes(np.ones(n_envs, bool), to_numpy(infos["episode_seed"]))
        obs, _ = run(warmup, obs)
        before = envs.call("timings")
        obs, t_step = run(steps, obs)
        after = envs.call("timings")
        device = str(envs.device)
    finally:
        envs.close()
    env_steps = steps * n_envs
    if backend == "mujoco_warp":  # one clock for all worlds: per-world shares of it
        after, before = after[:1], before[:1]
        n_workers = 1
    parts = {k: sum(a[k] - b[k] for a, b in zip(after, before)) / env_steps * 1e3 for k in after[0]}
    workers = max(1, min(n_workers, n_envs)) if n_workers else 1
    per_step_budget = t_step * workers / env_steps * 1e3  # ms of worker time per env-step
    parts["other (obs, IPC, sync)"] = max(0.0, per_step_budget - sum(parts.values()))
    name = "one_leg (ours)" if backend == "mujoco" else f"one_leg {backend} ({device})"
    return {"sim": name, "backend": backend, "device": device, "mode": mode, "n_envs": n_envs, "n_workers": workers,
            "env_steps_per_s": env_steps / t_step, "ms_per_env_step": parts}


def bench_robosuite_lift(mode: str, steps: int, python: Path | None) -> dict | None:
    """robosuite's Lift in its own interpreter: its environments break on MuJoCo 4 (which this
    project pins), so the yardstick runs in a small venv with mujoco 3.9 + robosuite 1.5.2
    (tools/bench/setup_lift_venv.sh). Returns None, with the reason printed, when there is none."""
    if python is None or not Path(python).exists():
        print(f"robosuite Lift yardstick skipped: no interpreter at {python} (robosuite's own envs break on "
              "MuJoCo 4.0; create one with `bash tools/bench/setup_lift_venv.sh`)", flush=True)
        return None
    out = subprocess.run([str(python), str(ROOT / "tools" / "bench" / "robosuite_lift.py"), mode, str(steps)],
                         capture_output=True, text=True, env={**os.environ, "MUJOCO_GL": os.environ["MUJOCO_GL"]})
    if out.returncode != 0:
        print(f"robosuite Lift yardstick failed:\n{out.stderr[-2000:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--modes", nargs="+", default=["state", "pixel"])
    ap.add_argument("--steps", type=int, default=150, help="control steps per configuration")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-robosuite", action="store_true")
    ap.add_argument("--backends", nargs="+", default=["mujoco"], choices=["mujoco", "mujoco_warp"])
    ap.add_argument("--warp-worlds", type=int, nargs="+", default=[256, 1024, 4096],
                    help="worlds of the mujoco_warp rows (use small numbers on CPU)")
    ap.add_argument("--lift-python", type=Path, default=ROOT / ".venv-lift" / "bin" / "python",
                    help="interpreter with mujoco 3.9 + robosuite 1.5.2 for the Lift yardstick")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "sim_throughput.json")
    args = ap.parse_args()

    rows = []
    for mode in args.modes:
        if "mujoco" in args.backends:
            for n in args.envs:
                rows.append(bench_one_leg(mode, n, min(args.workers, n), args.steps))
                _print_row(rows[-1])
        if "mujoco_warp" in args.backends:
            for n in args.warp_worlds:
                rows.append(bench_one_leg(mode, n, 0, args.steps, warmup=3, backend="mujoco_warp"))
                _print_row(rows[-1])
        if not args.no_robosuite:
            lift = bench_robosuite_lift(mode, max(20, args.steps // 3), args.lift_python)
            if lift is not None:
                rows.append(lift)
                _print_row(rows[-1])
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "processor": platform.processor() or platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import mujoco

    machine["mujoco"] = mujoco.__version__
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
