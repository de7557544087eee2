"""Trials of one or more checkpoints on the arm through the deploy loop, with a report to publish.

    python tools/evaluate_hardware.py --ckpt checkpoints/one_leg_state_bc.pt \\
        --ckpt checkpoints/one_leg_state_dppo.pt --trials 20 --out runs/hw_eval --blind
    python tools/evaluate_hardware.py ... --rehearse      # franky-sim + the simulator (no hardware)

Between trials the operator resets the scene and presses Enter; after each trial they mark it
(s: success, f: failure, a: abort, i.e. an interruption that says nothing about the policy and
is left out of the rates) and optionally the furthest phase reached. The trial order is drawn
once from `--seed` (all checkpoints interleaved) and, with `--blind`, the operator sees a letter
instead of the checkpoint. Everything is written as it happens into `--out`: plan.json (order,
labels) and trials.jsonl (one line per finished trial, flushed), so an interrupted evaluation
continues where it stopped with the same command, losing or repeating nothing. At the end (and
with `--report-only`) `tools/trial_report.py` writes report.md / report.html: success with a
Wilson 95 % interval, phases reached, timing, and the table across checkpoints.

In rehearsal the simulator judges each trial (success, furthest milestone) unless
`--operator-judges`; trial k of a checkpoint uses the simulator's reset of seed `--sim-seed + k`,
the same initial condition for every checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

if __package__ in (None, ""):  # `python tools/evaluate_hardware.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.tasks.one_leg.task import MILESTONES as PHASES  # noqa: E402
from tools.trial_report import Trial, append_trial, furthest_phase, load_trials, write_report  # noqa: E402

log = logging.getLogger("evaluate_hardware")


@dataclasses.dataclass
class TrialPlan:
    checkpoints: list[str]
    trials_per_checkpoint: int
    seed: int
    blind: bool
    order: list[tuple[int, int]]  # (checkpoint index, series index k), in execution order
    labels: list[str]  # what the operator sees per checkpoint

    @classmethod
    def draw(cls, checkpoints: Sequence[str], trials: int, seed: int, blind: bool, randomise: bool = True) -> "TrialPlan":
        order = [(c, k) for k in range(trials) for c in range(len(checkpoints))]
        rng = np.random.default_rng(seed)
        if randomise:
            order = [order[i] for i in rng.permutation(len(order))]
        letters = [chr(ord("A") + i) for i in rng.permutation(len(checkpoints))] if blind else list(checkpoints)
        return cls(list(checkpoints), int(trials), int(seed), bool(blind), [tuple(o) for o in order], letters)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "TrialPlan":
        d = json.loads(path.read_text())
        d["order"] = [tuple(o) for o in d["order"]]
        return cls(**d)


def open_plan(out: Path, checkpoints: Sequence[str], trials: int, seed: int, blind: bool,
              randomise: bool) -> TrialPlan:
    """The evaluation's plan: drawn and saved the first time, read back (and checked against the
    command) when continuing."""
    path = out / "plan.json"
    if path.exists():
        plan = TrialPlan.load(path)
        asked = (list(checkpoints), int(trials), int(seed), bool(blind))
        if (plan.checkpoints, plan.trials_per_checkpoint, plan.seed, plan.blind) != asked:
            raise SystemExit(f"{out} holds an evaluation of {plan.checkpoints} x {plan.trials_per_checkpoint} "
                             f"(seed {plan.seed}, blind {plan.blind}); continue it with the same arguments or "
                             f"choose another --out")
        return plan
    out.mkdir(parents=True, exist_ok=True)
    plan = TrialPlan.draw(checkpoints, trials, seed, blind, randomise)
    plan.save(path)
    return plan


def ask_outcome(operator: Callable[[str], str], label: str) -> tuple[str, str | None, str]:
    """The operator's mark: outcome (s/f/a), then the furthest phase (a number, Enter: none) and a note."""
    codes = {"s": "success", "f": "failure", "a": "abort"}
    while True:
        answer = operator(f"trial of policy {label}: [s]uccess, [f]ailure or [a]bort? ").strip().lower()
        if answer[:1] in codes:
            break
        print("answer s, f or a")
    outcome, phase = codes[answer[:1]], None
    if outcome != "abort":
        menu = ", ".join(f"{i} {p}" for i, p in enumerate(PHASES[:-1], start=1))
        pick = operator(f"furthest phase reached ({menu}; Enter: none): ").strip()
        if pick.isdigit() and 1 <= int(pick) <= len(PHASES) - 1:
            phase = PHASES[int(pick) - 1]
        if outcome == "success":
            phase = "success"
    note = operator("note (Enter: none): ").strip()
    return outcome, phase, note


def evaluate(args, operator: Callable[[str], str] = input) -> list[Trial]:
    import policy as policy_pkg
    from real.deploy import load_config

    out = Path(args.out)
    plan = open_plan(out, args.ckpt, args.trials, args.seed, args.blind, not args.sequential)
    trials_path = out / "trials.jsonl"
    done = load_trials(trials_path) if trials_path.exists() else []
    finished = {(t.checkpoint, t.index) for t in done}
    pending = [(c, k) for c, k in plan.order if (plan.checkpoints[c], k) not in finished]
    if args.max_trials is not None:
        pending = pending[:args.max_trials]
    log.info("%d of %d trials done, %d to run now", len(finished), len(plan.order), len(pending))
    if not pending or args.report_only:
        return done
    flags = ["episodes=1", "wait_for_operator=false", "video=true"]
    if args.max_steps is not None:
        flags.append(f"controller.max_steps={args.max_steps}")
    cfg = load_config(args.config, flags + list(args.overrides))
    policies: dict[str, Any] = {}

    def policy_for(ckpt: str):
        if ckpt not in policies:
            policies[ckpt] = policy_pkg.load(ckpt, use_ema=cfg.use_ema)
        return policies[ckpt]

    obs_setups = {tuple(policy_for(c).obs_keys) for c in plan.checkpoints}
    if len(obs_setups) > 1:
        raise SystemExit(f"the checkpoints read different observations {sorted(obs_setups)}: evaluate them separately")
    first = policy_for(plan.checkpoints[0])
    new: list[Trial] = []
    if args.rehearse:
        from real.deploy import policy_cameras, rehearsal_session, rehearse_episode

        rcfg = dataclasses.replace(cfg.rehearsal, seed=args.sim_seed)
        with rehearsal_session(cfg, rcfg, policy_cameras(first), getattr(first, "image_hw", (96, 96))) as (robot, reh):
            for c, k in pending:
                ckpt = plan.checkpoints[c]
                operator(f"trial {len(finished) + len(new) + 1}/{len(plan.order)}: policy {plan.labels[c]}, "
                         f"initial condition {k} (the simulator resets it): press Enter ")
                s = rehearse_episode(cfg, rcfg, policy_for(ckpt), robot, reh, k, str(out / "episodes" / f"ckpt{c}"))
                if args.operator_judges:
                    outcome, phase, note = ask_outcome(operator, plan.labels[c])
                else:
                    outcome = "success" if s["success"] else "failure"
                    phase, note = furthest_phase(s["milestones"]), ""
                new.append(_record(ckpt, k, outcome, phase, note, s, "sim-rehearsal", cfg))
                append_trial(trials_path, new[-1])
    else:
        from real.deploy import keys_without_a_sensor, open_cameras, run
        from real.robot import FrankaRobot

        unsensed = keys_without_a_sensor(first)
        if unsensed:
            raise SystemExit(f"the checkpoints read {unsensed}, which only the simulator provides for now (part poses "
                             f"from AprilTags are issue 16): evaluate pixel policies on the arm, or use --rehearse")
        cameras = open_cameras(cfg, first)
        if cameras is not None:
            cameras.start()
        try:
            with FrankaRobot(cfg.robot) as robot:
                for c, k in pending:
                    ckpt = plan.checkpoints[c]
                    operator(f"trial {len(finished) + len(new) + 1}/{len(plan.order)}: policy {plan.labels[c]}, "
                             f"initial condition {k}: reset the scene, then press Enter ")
                    one = dataclasses.replace(cfg, wait_for_operator=False, out_dir=str(out / "episodes" / f"ckpt{c}"))
                    s = run(one, policy_for(ckpt), robot, cameras, first_episode=k)[0]
                    outcome, phase, note = ask_outcome(operator, plan.labels[c])
                    new.append(_record(ckpt, k, outcome, phase, note, s, "real", cfg))
                    append_trial(trials_path, new[-1])
        finally:
            if cameras is not None:
                cameras.stop()
    return done + new


def _record(ckpt: str, k: int, outcome: str, phase: str | None, note: str, s: dict, source: str, cfg) -> Trial:
    return Trial(checkpoint=ckpt, index=int(k), outcome=outcome, source=source, phase=phase,
                 seed=s.get("seed", k), steps=int(s["steps"]), duration_s=int(s["steps"]) / cfg.controller.control_hz,
                 video=s.get("video"), notes=note,
                 extra={"end_reason": s.get("reason"), "safety": s.get("safety"), "dropped_actions":
                        s.get("dropped_actions"), "latency_ms_median": s.get("latency_ms_median")})


def main(argv: list[str] | None = None, operator: Callable[[str], str] = input) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="append", required=True, help="a checkpoint to evaluate (repeat for several)")
    ap.add_argument("--trials", type=int, default=20, help="trials per checkpoint")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0, help="draws the trial order and the blind labels")
    ap.add_argument("--blind", action="store_true", help="the operator sees letters, not checkpoints")
    ap.add_argument("--sequential", action="store_true", help="checkpoint after checkpoint instead of interleaved")
    ap.add_argument("--max-trials", type=int, default=None, help="stop after this many trials (continue later)")
    ap.add_argument("--max-steps", type=int, default=None, help="control steps per trial")
    ap.add_argument("--rehearse", action="store_true", help="franky-sim + the embedded simulator, no hardware")
    ap.add_argument("--sim-seed", type=int, default=100_000, help="--rehearse: initial condition k is this seed + k")
    ap.add_argument("--operator-judges", action="store_true", help="--rehearse: the operator marks trials too")
    ap.add_argument("--report-only", action="store_true", help="write the report from the trials so far")
    ap.add_argument("--config", default=None, help="YAML with real/deploy.py's DeployConfig keys")
    ap.add_argument("overrides", nargs="*", help="DeployConfig key=value overrides (robot.host=...)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        trials = evaluate(args, operator)
    except KeyboardInterrupt:
        print("\ninterrupted: the finished trials are in trials.jsonl; run the same command to continue",
              file=sys.stderr)
        return 130
    if trials:
        plan = TrialPlan.load(Path(args.out) / "plan.json")
        blind = f" (blind labels: {dict(zip(plan.labels, plan.checkpoints))})" if plan.blind else ""
        paths = write_report(trials, Path(args.out) / "report", title="one_leg: evaluation on the arm" if not
                             args.rehearse else "one_leg: rehearsal evaluation (franky-sim + simulator)",
                             phase_order=["none", *PHASES], notes=f"{len(trials)} of {len(plan.order)} planned "
                             f"trials, order seed {plan.seed}{blind}")
        print(f"report: {paths['md']} and {paths['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
