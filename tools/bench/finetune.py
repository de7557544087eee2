"""One DPPO iteration's cost, split: rollout sim / rollout policy / log-prob recomputation /
PPO update, and the rollout buffer's memory beside the reference's float64 layout.

For state and pixel policies at each env count, the real `sim/finetune.py` loop runs
`--iterations` short iterations (`--steps` chunk steps per env); times are per 1,000 env
steps of the last iteration, the first (warm-up) dropped. Buffer memory is computed for the
default iteration length (`--buffer-steps`, 175 chunk steps = one 700-step episode per env)
from the shapes the run allocated, and compared with what the reference's layout (every array
float64, images included) holds for the same rollout.

    python tools/bench/finetune.py                        # state + pixel, 8 and 32 envs
    python tools/bench/finetune.py --modes state --envs 8 16
    python tools/bench/finetune.py --modes pixel-frozen   # train.freeze_image_encoders=true
    python tools/bench/finetune.py --sim mujoco_warp --device cuda --envs 1000 --steps 88   # the paper's scale, a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def run_one(mode: str, n_envs: int, steps: int, iterations: int, buffer_steps: int, workers: int,
            sim: str = "mujoco", device: str = "cpu") -> dict:
    import torch

    from policy.rl.buffer import RolloutBuffer, reference_float64_nbytes
    from sim.finetune import Finetuner
    from tests.conftest import compose_config

    with tempfile.TemporaryDirectory() as out:
        obs, frozen = mode.removesuffix("-frozen"), mode.endswith("-frozen")
        cfg = compose_config("finetune", [f"obs={obs}", f"train.freeze_image_encoders={frozen}", f"out_dir={out}", f"env.n_envs={n_envs}",
                                          f"env.n_workers={workers}", f"train.n_steps={steps}",
                                          f"train.iterations={iterations}", "eval.every=0", "ppo.critic_warmup=0",
                                          "ppo.actor_warmup=0", "train.save_every=1000", f"device={device}",
                                          f"sim={sim}"])
        ft = Finetuner(cfg)
        ft.train()
        rows = [h for h in ft.history if "time" in h]
        last = rows[-1]
        specs = ft.buffer_specs
        shape = ft.agent.sample_shape
        ours = RolloutBuffer.nbytes_for(buffer_steps, n_envs, specs, shape, ft.agent.n_log_probs)
        ref = reference_float64_nbytes(buffer_steps, n_envs, ft.env_obs_specs, shape)  # images, whatever we store
    env_steps = last["rollout"]["env_steps"]
    per_k = {k: 1000 * v / env_steps for k, v in last["time"].items()}
    return {"mode": mode, "n_envs": n_envs, "chunk_steps": steps, "env_steps": env_steps,
            "s_per_1k_env_steps": per_k, "env_steps_per_s": last["env_steps_per_s"],
            "buffer_MB": ours / 2**20, "reference_float64_MB": ref / 2**20, "ratio": ours / ref,
            "buffer_chunk_steps": buffer_steps, "torch_threads": torch.get_num_threads(), "sim": sim, "device": device}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["state", "pixel", "pixel-frozen"],
                    choices=["state", "pixel", "pixel-frozen"])
    ap.add_argument("--envs", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--steps", type=int, default=25, help="chunk steps per env in each timed iteration")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--buffer-steps", type=int, default=175)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sim", default="mujoco", choices=["mujoco", "mujoco_warp"], help="simulator backend")
    ap.add_argument("--device", default="cpu", help="policy device: cpu | cuda | auto")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "finetune.json"))
    args = ap.parse_args()
    os.chdir(ROOT)
    rows = []
    for mode in args.modes:
        for n in args.envs:
            t0 = time.perf_counter()
            rows.append(run_one(mode, n, args.steps, args.iterations, args.buffer_steps, args.workers, args.sim,
                                args.device))
            print(f"  {mode} {n} envs done in {time.perf_counter() - t0:.0f} s", flush=True)
    head = (f"{'mode':12} {'envs':>4} | {'sim':>6} {'policy':>6} {'logprob':>7} {'update':>6} {'total':>6} "
            f"(s / 1k env steps) | {'steps/s':>7} | {'buffer MB':>9} {'ref f64 MB':>10} {'ratio':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        t = r["s_per_1k_env_steps"]
        print(f"{r['mode']:12} {r['n_envs']:>4} | {t['rollout_sim_s']:6.2f} {t['rollout_policy_s']:6.2f} "
              f"{t['logprob_s']:7.2f} {t['update_s']:6.2f} {t['total_s']:6.2f}                    | "
              f"{r['env_steps_per_s']:7.0f} | {r['buffer_MB']:9.1f} {r['reference_float64_MB']:10.1f} "
              f"{r['ratio']:5.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                      "python": platform.python_version()},
                                          "date": time.strftime("%Y-%m-%d"), "args": vars(args), "rows": rows},
                                         indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
