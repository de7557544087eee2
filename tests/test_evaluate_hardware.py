"""tools/evaluate_hardware.py: the trial plan (interleaved, seeded, blind), the operator's marks,
and a whole evaluation through the deploy loop in rehearsal (franky-sim + the simulator),
interrupted and continued without losing or repeating a trial."""
import json

import pytest

from tools.evaluate_hardware import PHASES, TrialPlan, ask_outcome, main, open_plan


def test_the_plan_interleaves_every_trial_once_and_blinds_the_labels(tmp_path):
    plan = TrialPlan.draw(["a.pt", "b.pt", "c.pt"], 4, seed=3, blind=True)
    assert sorted(plan.order) == sorted((c, k) for c in range(3) for k in range(4))
    assert plan.order != sorted(plan.order, key=lambda o: (o[1], o[0]))  # shuffled
    assert sorted(plan.labels) == ["A", "B", "C"]
    assert TrialPlan.draw(["a.pt", "b.pt", "c.pt"], 4, seed=3, blind=True) == plan
    assert TrialPlan.draw(["a.pt", "b.pt"], 2, seed=0, blind=False, randomise=False).order == [(0, 0), (1, 0),
                                                                                              (0, 1), (1, 1)]
    saved = open_plan(tmp_path, ["a.pt", "b.pt"], 2, 0, False, True)
    assert open_plan(tmp_path, ["a.pt", "b.pt"], 2, 0, False, True) == saved
    with pytest.raises(SystemExit, match="continue it with the same arguments"):
        open_plan(tmp_path, ["a.pt"], 2, 0, False, True)


def test_the_operator_marks_outcome_phase_and_note():
    answers = iter(["x", "F", "4", "leg slipped"])
    assert ask_outcome(lambda _: next(answers), "A") == ("failure", PHASES[3], "leg slipped")
    answers = iter(["s", "", ""])
    assert ask_outcome(lambda _: next(answers), "B") == ("success", "success", "")
    answers = iter(["a", "cable caught"])
    assert ask_outcome(lambda _: next(answers), "B") == ("abort", None, "cable caught")


franky = pytest.importorskip("franky", reason="franky-control is not installed", exc_type=ImportError)
pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed", exc_type=ImportError)


def test_a_rehearsed_evaluation_is_interrupted_and_continued(tmp_path):
    from real.franky_sim import franky_sim_executable

    if franky_sim_executable() is None:
        pytest.skip("franky-sim is not installed")
    prompts = []

    def operator(msg):
        prompts.append(msg)
        return ""

    args = ["--ckpt", "checkpoints/one_leg_state_bc.pt", "--ckpt", "checkpoints/one_leg_state_dppo.pt",
            "--trials", "2", "--out", str(tmp_path), "--blind", "--rehearse", "--max-steps", "6",
            "rehearsal.host=127.0.0.31"]
    assert main(args + ["--max-trials", "3"], operator) == 0
    first = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert len(first) == 3
    assert main(args, operator) == 0  # the same command continues: one trial left
    trials = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert trials[:3] == first and len(trials) == 4
    assert sorted((t["checkpoint"], t["index"]) for t in trials) == sorted(
        (c, k) for c in ("checkpoints/one_leg_state_bc.pt", "checkpoints/one_leg_state_dppo.pt") for k in range(2))
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [(t["checkpoint"], t["index"]) for t in trials] == [(plan["checkpoints"][c], k) for c, k in plan["order"]]
    for t in trials:  # 6 control steps each, judged by the simulator, the same initial condition per index
        assert t["steps"] == 6 and t["outcome"] == "failure" and t["seed"] == 100000 + t["index"]
        assert t["extra"]["end_reason"] == "max_steps"
    assert not any("one_leg_state" in p for p in prompts)  # blind: letters only
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| one_leg_state_bc | sim-rehearsal | 0/2 |" in md and "| one_leg_state_dppo | sim-rehearsal | 0/2 |" in md
