"""Trial records and the evaluation report shared by simulated and hardware evaluations.

A trial is one attempt of one checkpoint: its outcome (success, failure, or abort: an
interruption that says nothing about the policy and is left out of the rates), the furthest
task phase it reached, how long it took, and where its video and records lie. Simulated trials
(`tools/eval_policy.py`) and hardware trials (the operator marks them) are written in the same
form, `trials.jsonl`, so one report can hold both side by side.

The report (`report.md` and a self-contained `report.html` with its plots embedded) gives per
checkpoint: success with a Wilson 95 % interval (the interval that stays honest at 20 trials,
where the normal approximation runs past 0 and 1), the phases reached, and timing statistics,
with a comparison table across checkpoints.

    python tools/trial_report.py OUT_DIR runs/a/trials.jsonl runs/b/trials.jsonl   # merge and report
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

OUTCOMES = ("success", "failure", "abort")


@dataclass
class Trial:
    checkpoint: str  # what was evaluated (a path or a label)
    index: int  # trial number within this checkpoint's series
    outcome: str  # success | failure | abort
    source: str = "sim"  # sim | real
    phase: str | None = None  # furthest task phase reached (a milestone name), None: none
    seed: int | None = None  # sim: the episode seed; real: the target initial condition's id
    steps: int | None = None  # control steps
    duration_s: float | None = None  # wall time (real) or simulated time (sim)
    video: str | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"trial outcome must be one of {OUTCOMES}, got '{self.outcome}'")


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (95 % for the default z); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class CheckpointSummary:
    checkpoint: str
    sources: list[str]
    trials: int  # successes + failures (aborts excluded)
    successes: int
    aborts: int
    rate: float
    ci95: tuple[float, float]
    phases: dict[str, int]  # furthest phase reached -> trials (aborts excluded)
    mean_steps_success: float | None
    mean_duration_s: float | None
    median_duration_s: float | None


def summarise(trials: Iterable[Trial], phase_order: Sequence[str] = ()) -> list[CheckpointSummary]:
    """Per-checkpoint figures, in the order checkpoints first appear."""
    by_ckpt: dict[str, list[Trial]] = {}
    for t in trials:
        by_ckpt.setdefault(t.checkpoint, []).append(t)
    out = []
    for ckpt, ts in by_ckpt.items():
        counted = [t for t in ts if t.outcome != "abort"]
        k = sum(t.outcome == "success" for t in counted)
        n = len(counted)
        phases: dict[str, int] = {p: 0 for p in phase_order}
        for t in counted:
            key = t.phase or "none"
            phases[key] = phases.get(key, 0) + 1
        succ_steps = [t.steps for t in counted if t.outcome == "success" and t.steps is not None]
        durations = sorted(t.duration_s for t in counted if t.duration_s is not None)
        out.append(CheckpointSummary(
            checkpoint=ckpt, sources=sorted({t.source for t in ts}), trials=n, successes=k,
            aborts=len(ts) - n, rate=k / n if n else float("nan"), ci95=wilson_interval(k, n), phases=phases,
            mean_steps_success=sum(succ_steps) / len(succ_steps) if succ_steps else None,
            mean_duration_s=sum(durations) / len(durations) if durations else None,
            median_duration_s=_median(durations)))
    return out


def _median(xs: list[float]) -> float | None:
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def furthest_phase(milestones: Mapping[str, bool]) -> str | None:
    """The last milestone reached, in the task's order (the milestones dict's), None: none."""
    reached = [m for m, hit in milestones.items() if hit]
    return reached[-1] if reached else None


def save_trials(trials: Iterable[Trial], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(t)) + "\n" for t in trials))
    return path


def append_trial(path: str | Path, trial: Trial) -> None:
    """One finished trial, on disk before the next begins (flushed and synced)."""
    with open(path, "a") as f:
        f.write(json.dumps(asdict(trial)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def load_trials(path: str | Path) -> list[Trial]:
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if line.strip():
            try:
                out.append(Trial(**json.loads(line)))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{i + 1}: not a trial record ({e})") from e
    return out


def _figures(summaries: list[CheckpointSummary]) -> dict[str, bytes]:
    """PNG plots: success with its interval per checkpoint, and the phases reached."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [_short(s.checkpoint) for s in summaries]
    figs = {}
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(summaries), 3.2))
    rates = [s.rate for s in summaries]
    lo = [s.rate - s.ci95[0] for s in summaries]
    hi = [s.ci95[1] - s.rate for s in summaries]
    ax.bar(names, rates, yerr=[lo, hi], capsize=6, color="#4c72b0")
    for x, s in enumerate(summaries):
        ax.text(x, min(1.02, s.ci95[1] + 0.03), f"{s.successes}/{s.trials}", ha="center", fontsize=9)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("success (Wilson 95 %)")
    fig.tight_layout()
    figs["success.png"] = _png(fig)
    plt.close(fig)
    phases = list(dict.fromkeys(p for s in summaries for p in s.phases))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(phases)), 3.2))
    width = 0.8 / max(1, len(summaries))
    for j, s in enumerate(summaries):
        ax.bar([i + j * width for i in range(len(phases))], [s.phases.get(p, 0) for p in phases], width,
               label=_short(s.checkpoint))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(phases))], phases, rotation=20, fontsize=8)
    ax.set_ylabel("trials (furthest phase)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs["phases.png"] = _png(fig)
    plt.close(fig)
    return figs


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _short(path: str) -> str:
    return Path(path).stem if "/" in path or path.endswith(".pt") else path


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _table(summaries: list[CheckpointSummary]) -> tuple[list[str], list[list[str]]]:
    head = ["checkpoint", "source", "success", "rate", "Wilson 95 %", "aborts", "steps (successes)",
            "duration mean / median (s)"]
    rows = [[_short(s.checkpoint), "+".join(s.sources), f"{s.successes}/{s.trials}", _fmt(s.rate, ".2f"),
             f"{s.ci95[0]:.2f}-{s.ci95[1]:.2f}", str(s.aborts), _fmt(s.mean_steps_success, ".0f"),
             f"{_fmt(s.mean_duration_s)} / {_fmt(s.median_duration_s)}"] for s in summaries]
    return head, rows


def write_report(trials: Sequence[Trial], out_dir: str | Path, title: str = "Evaluation",
                 phase_order: Sequence[str] = (), notes: str = "") -> dict[str, Path]:
    """trials.jsonl, report.md (plots beside it as PNG) and a self-contained report.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarise(trials, phase_order)
    figs = _figures(summaries)
    for name, data in figs.items():
        (out / name).write_bytes(data)
    head, rows = _table(summaries)
    md = [f"# {title}", ""] + ([notes, ""] if notes else [])
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "Aborted trials are left out of the rates. Phases: the furthest each trial reached.", "",
           "![success](success.png)", "", "![phases](phases.png)", ""]
    md += ["| checkpoint | " + " | ".join(dict.fromkeys(p for s in summaries for p in s.phases)) + " |"]
    phases = list(dict.fromkeys(p for s in summaries for p in s.phases))
    md += ["|" + "---|" * (len(phases) + 1)]
    md += [f"| {_short(s.checkpoint)} | " + " | ".join(str(s.phases.get(p, 0)) for p in phases) + " |"
           for s in summaries]
    (out / "report.md").write_text("\n".join(md) + "\n")
    cells = lambda r, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in r)  # noqa: E731
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(notes)}</p>" if notes else "",
            "<table>", f"<tr>{cells(head, 'th')}</tr>", *[f"<tr>{cells(r, 'td')}</tr>" for r in rows], "</table>",
            "<p>Aborted trials are left out of the rates. Phases: the furthest each trial reached.</p>"]
    body += [f'<img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}">' for n, d in figs.items()]
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #999;" \
            "padding:4px 8px;text-align:right}th{background:#eee}img{display:block;margin:1em 0}"
    (out / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                                     f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    save_trials(trials, out / "trials.jsonl")
    return {"md": out / "report.md", "html": out / "report.html", "trials": out / "trials.jsonl"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("trials", type=Path, nargs="+", help="trials.jsonl files (sim and hardware mix)")
    ap.add_argument("--title", default="Evaluation")
    args = ap.parse_args()
    trials = [t for p in args.trials for t in load_trials(p)]
    paths = write_report(trials, args.out_dir, args.title)
    head, rows = _table(summarise(trials))
    print(" | ".join(head))
    for r in rows:
        print(" | ".join(r))
    print(f"wrote {paths['md']} and {paths['html']}")


if __name__ == "__main__":
    main()
