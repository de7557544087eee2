"""Record a start-state set: the scripted expert's (or a policy's) sim states at a task milestone.

    python tools/record_start_states.py milestone=leg_upright n=64     # -> start_states/one_leg_low_leg_upright.npz
    python tools/record_start_states.py milestone=thread_engaged n=32 seed=60000
    python tools/record_start_states.py milestone=leg_upright n=64 checkpoint=checkpoints/one_leg_state_bc.pt \
        out=start_states/one_leg_low_leg_upright_bc.npz   # the pretrained policy's own states

Episode k runs with seed `seed + k`; each contributes its state at the first control step where
`milestones/<milestone>` holds (`offset_steps` later). Fine-tuning then starts episodes from them
with `task.start_states=<out>` (see sim/start_states.py, docs/rollout.md).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sim.experts.one_leg import ExpertConfig
from sim.make import env_config_from_hydra
from sim.start_states import record_start_states

log = logging.getLogger("record_start_states")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    out = Path(cfg.out)
    policy, env_cfg = None, cfg
    if cfg.checkpoint is not None:  # the policy drives; the envs observe what it reads
        from policy.checkpoint import load_policy
        from sim.evaluate import env_config_for

        policy = load_policy(str(cfg.checkpoint), device="cpu", use_ema=bool(cfg.use_ema))
        env_cfg = env_config_for(policy, cfg)
    states = record_start_states(
        env_config_from_hydra(env_cfg), str(cfg.milestone), int(cfg.n), out, seed=int(cfg.seed),
        n_envs=int(cfg.env.n_envs), n_workers=int(cfg.env.n_workers), offset_steps=int(cfg.offset_steps),
        max_episodes=None if cfg.max_episodes is None else int(cfg.max_episodes),
        expert_cfg=ExpertConfig(**OmegaConf.to_container(cfg.expert)), policy=policy,
        policy_name=None if cfg.checkpoint is None else str(cfg.checkpoint),
        act_kwargs=None if policy is None else {"eta": float(cfg.eta)})
    meta = states.meta
    summary = {"out": str(out), "bytes": out.stat().st_size, "n": len(states),
               **{k: meta[k] for k in ("milestone", "randomness", "mean_capture_step", "episodes_finished",
                                       "episodes_skipped")}}
    (out_dir / "summary.json").write_text(json.dumps({**summary, "meta": meta}, indent=2))
    return summary


@hydra.main(config_path="../configs", config_name="record_start_states", version_base="1.3")
def main(cfg: DictConfig) -> None:
    s = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    print(f"\n{s['n']} start states at '{s['milestone']}' ({s['randomness']} randomness) -> {s['out']} "
          f"({s['bytes'] / 1024:.0f} KiB)")
    print(f"  mean step at capture  {s['mean_capture_step']:.0f}")
    print(f"  finished episodes     {s['episodes_finished']} ({s['episodes_skipped']} never reached it)")


if __name__ == "__main__":
    main()
