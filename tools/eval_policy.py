"""Evaluate a policy checkpoint in the embedded simulator.

    python tools/eval_policy.py checkpoint=runs/pretrain/one_leg_state_mlp/last.pt episodes=50

Prints the success rate and the milestone rates (how far episodes got), writes summary.json,
videos and the trial report (trials.jsonl, report.md, report.html: success with a Wilson 95 %
interval, phases reached; `tools/trial_report.py`, the format hardware evaluations write too)
to the Hydra run directory. The observation setup comes from the checkpoint, so a pixel
policy is rolled out with its cameras and image size without further flags. Episode k runs on
seed `seed + k` with its own denoising noise: the figures do not depend on env.n_envs.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import policy as policy_pkg
from sim.evaluate import env_config_for, evaluate, make_evaluator
from sim.rollout import RolloutResult
from tools.trial_report import Trial, furthest_phase, write_report

log = logging.getLogger("eval_policy")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    pi = policy_pkg.load(cfg.checkpoint, use_ema=bool(cfg.use_ema), device=policy_pkg.resolve_device(str(cfg.device)))
    cfg = env_config_for(pi, cfg)
    episodes = int(cfg.episodes)
    with make_evaluator(pi, cfg, n_envs=min(int(cfg.env.n_envs), episodes), n_workers=int(cfg.env.n_workers)) as ev:
        res = evaluate(ev, pi, episodes, seed=int(cfg.seed), ddim_steps=int(cfg.ddim_steps),
                       video_dir=out_dir if cfg.video.enabled else None, video_episodes=int(cfg.video.episodes),
                       progress=True)
    summary = {"checkpoint": str(cfg.checkpoint), "task": cfg.task.name, "randomness": cfg.task.randomness,
               "obs": cfg.obs.mode, "seed": int(cfg.seed), "ddim_steps": int(cfg.ddim_steps), **res.summary(),
               "videos": sorted(str(p) for p in out_dir.glob("*.mp4"))}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.report:
        trials = sim_trials(res, str(cfg.checkpoint), float(cfg.sim.control_hz))
        phases = list(res.episodes[0].milestones) if res.episodes else []
        write_report(trials, out_dir, title=f"{cfg.task.name} ({cfg.task.randomness}, obs={cfg.obs.mode}): simulation",
                     phase_order=["none", *phases],
                     notes=f"seeds {int(cfg.seed)}-{int(cfg.seed) + episodes - 1}, DDIM {int(cfg.ddim_steps)}, eta 0")
    return summary


def sim_trials(res: RolloutResult, checkpoint: str, control_hz: float) -> list[Trial]:
    """One trial record per simulated episode: its furthest milestone, simulated duration."""
    out = []
    for i, e in enumerate(res.episodes):
        out.append(Trial(checkpoint=checkpoint, index=i, outcome="success" if e.success else "failure", source="sim",
                         phase=furthest_phase(e.milestones), seed=e.seed, steps=e.length,
                         duration_s=e.length / control_hz, extra={"diverged": e.diverged} if e.diverged else {}))
    return out


@hydra.main(config_path="../configs", config_name="eval_policy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    s = run(cfg, out_dir)
    n = s["n_episodes"]
    print(f"\n{s['checkpoint']} on {s['task']} ({s['randomness']}, obs={s['obs']}, DDIM {s['ddim_steps']})")
    print(f"  {'success':<16}{s['success_rate']:.2f}  ({round(s['success_rate'] * n)}/{n})")
    for name, rate in s["milestone_rates"].items():
        if name != "success":
            print(f"  {name:<16}{rate:.2f}")
    if s["mean_success_length"]:
        print(f"  {'steps (success)':<16}{s['mean_success_length']:.0f}")
    print(f"  {'env-steps/s':<16}{s['env_steps_per_s']:.0f}")
    print(f"  summary         {out_dir / 'summary.json'}")


if __name__ == "__main__":
    main()
