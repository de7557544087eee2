"""The shared trial record and report (tools/trial_report.py): Wilson intervals, per-checkpoint
figures, the files a report writes, and the simulated trials tools/eval_policy.py records."""
import json

import pytest

from tools.trial_report import Trial, load_trials, save_trials, summarise, wilson_interval, write_report


@pytest.mark.parametrize("k, n, lo, hi", [
    (16, 20, 0.5840, 0.9193),  # the paper's hardware DPPO result, 16/20
    (0, 20, 0.0, 0.1611),  # its Gaussian baseline, 0/20: a zero rate keeps an upper bound
    (20, 20, 0.8389, 1.0),
    (62, 100, 0.5221, 0.7091),
])
def test_wilson_interval_matches_the_closed_form(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _trials():
    out = [Trial("dppo.pt", i, "success" if i < 16 else "failure", source="real", phase="success" if i < 16 else
                 "thread_engaged", steps=500 + i, duration_s=60.0 + i) for i in range(20)]
    out += [Trial("dppo.pt", 20, "abort", source="real", notes="e-stop: cable caught")]
    out += [Trial("bc.pt", i, "failure", source="real", phase="leg_lifted" if i % 2 else None, steps=700,
                  duration_s=70.0) for i in range(20)]
    return out


def test_summaries_leave_aborts_out_and_count_phases():
    dppo, bc = summarise(_trials(), phase_order=["none", "leg_lifted", "thread_engaged", "success"])
    assert (dppo.checkpoint, dppo.trials, dppo.successes, dppo.aborts) == ("dppo.pt", 20, 16, 1)
    assert dppo.rate == 0.8 and dppo.ci95 == pytest.approx(wilson_interval(16, 20))
    assert dppo.phases == {"none": 0, "leg_lifted": 0, "thread_engaged": 4, "success": 16}
    assert dppo.mean_steps_success == pytest.approx(507.5)
    assert dppo.median_duration_s == pytest.approx(69.5)
    assert (bc.successes, bc.trials, bc.phases["none"], bc.phases["leg_lifted"]) == (0, 20, 10, 10)
    with pytest.raises(ValueError, match="outcome"):
        Trial("x", 0, "maybe")


def test_report_files_hold_the_table_and_the_plots(tmp_path):
    paths = write_report(_trials(), tmp_path / "r", title="BC vs DPPO on the arm",
                         phase_order=["none", "leg_lifted", "thread_engaged", "success"])
    md = paths["md"].read_text()
    assert "| dppo | real | 16/20 | 0.80 | 0.58-0.92 | 1 |" in md
    assert "| bc | real | 0/20 | 0.00 | 0.00-0.16 | 0 |" in md
    assert (tmp_path / "r" / "success.png").stat().st_size > 5000  # a drawn figure, not an empty canvas
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "<td>16/20</td>" in page
    again = load_trials(paths["trials"])
    assert again == _trials()


def test_trials_round_trip_and_a_bad_line_names_its_place(tmp_path):
    path = save_trials(_trials()[:2], tmp_path / "t.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps({"checkpoint": "x", "index": 0, "outcome": "won"}) + "\n")
    with pytest.raises(ValueError, match="t.jsonl:3"):
        load_trials(path)


def test_eval_policy_records_one_trial_per_simulated_episode(tmp_path):
    """tools/eval_policy.py writes the same report from simulated episodes: outcome, furthest
    milestone, seed, steps and simulated seconds per episode."""
    from tests.conftest import compose_config
    from tools.eval_policy import run

    cfg = compose_config("eval_policy", ["checkpoint=checkpoints/one_leg_state_bc.pt", "episodes=2", "env.n_envs=2",
                                         "env.n_workers=0", "task.max_episode_steps=30", "video.enabled=false"])
    summary = run(cfg, tmp_path)
    trials = load_trials(tmp_path / "trials.jsonl")
    assert [t.seed for t in trials] == [e["seed"] for e in summary["episodes"]] == [100000, 100001]
    for t, e in zip(trials, summary["episodes"]):
        assert t.outcome == ("success" if e["success"] else "failure") and t.steps == e["length"] == 30
        assert t.duration_s == pytest.approx(3.0)  # 30 control steps at 10 Hz
        reached = [m for m, hit in e["milestones"].items() if hit]
        assert t.phase == (reached[-1] if reached else None)
    assert "| one_leg_state_bc | sim | 0/2 |" in (tmp_path / "report.md").read_text()
