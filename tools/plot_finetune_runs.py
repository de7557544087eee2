"""Compare fine-tuning runs: evaluation success against env steps and against wall time.

    python tools/plot_finetune_runs.py runs/finetune/one_leg_state_policy_starts=DPPO \
        runs/finetune/one_leg_gaussian_policy_starts="Gaussian PPO" --out docs/media/dppo_vs_gaussian.png

Each argument is a run directory (or its history.jsonl), optionally `=label`. Wall time is the
sum of the iterations' own time and the evaluations' (what the run cost, resumes included, not
the clock between them). The shaded band is the Wilson 95 % interval of each evaluation, so a
reader sees which differences are noise. Prints a table of the evaluations.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class EvalCurve:
    label: str
    iterations: list[int]
    env_steps: list[int]
    wall_s: list[float]
    success: list[float]
    episodes: list[int]
    train_env_steps: list[int]
    train_success: list[float]


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate p over n episodes."""
    if n == 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def load_history(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "history.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no fine-tuning history at {path} (a run directory holds history.jsonl)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eval_curve(history: list[dict], label: str) -> EvalCurve:
    """The evaluations of one run with the env steps and cumulative wall time at each; a resumed
    run's repeated rows (the same iteration written twice) keep the last."""
    rows: dict[int, dict] = {}
    for row in history:
        rows[int(row["iteration"])] = {**rows.get(int(row["iteration"]), {}), **row}
    curve = EvalCurve(label, [], [], [], [], [], [], [])
    wall = 0.0
    for it in sorted(rows):
        row = rows[it]
        wall += float(row.get("time", {}).get("total_s", 0.0))
        if "rollout" in row:
            curve.train_env_steps.append(int(row["env_steps"]))
            curve.train_success.append(float(row["rollout"]["success_rate"]))
        if "eval" in row:
            wall += float(row["eval"].get("eval_s", 0.0))
            curve.iterations.append(it)
            curve.env_steps.append(int(row["env_steps"]))
            curve.wall_s.append(wall)
            curve.success.append(float(row["eval"]["success_rate"]))
            curve.episodes.append(int(row["eval"]["n_episodes"]))
    return curve


def plot(curves: list[EvalCurve], out: Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
    for i, c in enumerate(curves):
        colour = f"C{i}"
        lo, hi = zip(*(wilson(p, n) for p, n in zip(c.success, c.episodes))) if c.success else ((), ())
        for a, x in ((ax[0], c.env_steps), (ax[1], [w / 3600 for w in c.wall_s])):
            a.plot(x, c.success, "o-", color=colour, label=c.label)
            a.fill_between(x, lo, hi, color=colour, alpha=0.15)
        if c.train_success:
            k = 5  # a running mean over 5 iterations: one iteration holds ~20 episodes
            smooth = [float(np.mean(c.train_success[max(0, j - k + 1):j + 1])) for j in range(len(c.train_success))]
            ax[2].plot(c.train_env_steps, smooth, color=colour, label=c.label)
    ax[0].set_xlabel("env steps")
    ax[1].set_xlabel("wall time (h, this machine)")
    for a in ax[:2]:
        a.set_ylabel("evaluation success (eta 0, fixed seeds)")
    ax[2].set_xlabel("env steps")
    ax[2].set_ylabel("training-episode success (5-it. mean)")
    for a in ax:
        a.set_ylim(-0.02, 1.02)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def table(curves: list[EvalCurve]) -> str:
    lines = ["| run | iteration | env steps | wall (h) | success | 95 % CI |", "|---|---:|---:|---:|---:|---|"]
    for c in curves:
        for it, s, w, p, n in zip(c.iterations, c.env_steps, c.wall_s, c.success, c.episodes):
            lo, hi = wilson(p, n)
            lines.append(f"| {c.label} | {it} | {s:,} | {w / 3600:.2f} | {p:.0%} ({round(p * n)}/{n}) "
                         f"| {lo:.2f}-{hi:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="RUN_DIR[=label] or HISTORY.jsonl[=label]")
    ap.add_argument("--out", default="finetune_runs.png")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    curves = []
    for spec in args.runs:
        path, _, label = spec.partition("=")
        curves.append(eval_curve(load_history(path), label or Path(path).name))
    print(table(curves))
    print(f"figure: {plot(curves, Path(args.out), args.title)}")


if __name__ == "__main__":
    main()
