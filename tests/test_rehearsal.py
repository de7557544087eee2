"""real/deploy.py --rehearse: franky-sim as the arm, the one_leg simulator as the world."""
import json

import numpy as np
import pytest

pytest.importorskip("franky", reason="franky-control is not installed", exc_type=ImportError)
pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed", exc_type=ImportError)

from data.episodes import EpisodeDataset  # noqa: E402
from real.deploy import RehearsalConfig, load_config, main, rehearse  # noqa: E402
from real.franky_sim import franky_sim_executable  # noqa: E402

pytestmark = pytest.mark.skipif(franky_sim_executable() is None, reason="franky-sim is not installed")
STATE = "checkpoints/one_leg_state_bc.pt"
PIXEL = "checkpoints/one_leg_pixel_bc.pt"


def _run(ckpt, tmp_path, steps, host, seed=100003):
    import policy as policy_pkg

    cfg = load_config(None, [f"ckpt={ckpt}", f"out_dir={tmp_path}", f"controller.max_steps={steps}"])
    return rehearse(cfg, RehearsalConfig(host=host, seed=seed), policy_pkg.load(ckpt))[0]


def test_state_policy_rehearsal_runs_the_whole_stack(tmp_path):
    """The start of an episode: the policy pushes the tabletop toward its corner through
    franky-sim, the world follows, part poses come from the world, the episode is recorded."""
    s = _run(STATE, tmp_path, 60, "127.0.0.24")
    assert s["reason"] == "max_steps" and s["steps"] == 60 and s["chunks"] == 15 and s["dropped_actions"] == 0
    assert s["success"] is False and s["sim_steps"] > 200  # the world steps at 50 Hz
    ds = EpisodeDataset(tmp_path / "rollouts.zarr")
    ep = ds.episode(0)
    assert ds.episodes_meta[0]["source"] == "policy" and ep["parts"].shape == (60, 18)
    top = ep["parts"][:, :3]
    assert np.linalg.norm(top[-1, :2] - top[0, :2]) > 0.01  # the arm moved the tabletop in the world
    assert np.abs(ep["state"][:, :3] - ep["action"][:, :3]).max() < 0.05  # the arm tracked what was sent
    saved = json.loads((tmp_path / "summary.json").read_text())[0]
    assert saved["seed"] == 100003 and saved["sim_steps"] == s["sim_steps"] and saved["part_lost"] is False
    assert saved["milestones"] == s["milestones"] and saved["milestones"]["success"] is False


def test_pixel_policy_rehearsal_renders_into_software_cameras(tmp_path):
    s = _run(PIXEL, tmp_path, 12, "127.0.0.25")
    assert s["reason"] == "max_steps" and s["steps"] == 12 and s["dropped_actions"] <= 1
    ep = EpisodeDataset(tmp_path / "rollouts.zarr").episode(0)
    front = ep["rgb/front"]
    assert front.shape == (12, 96, 96, 3) and front.std() > 10  # a rendered scene, not a blank frame
    assert (tmp_path / "episode_000.mp4").exists()


def test_missed_start_pose_is_retried_then_named(tmp_path, caplog):
    """An episode whose start pose franky-sim's arm misses is approached again (recover, slower)
    before the rehearsal gives up with an error naming the episode; the arm is left stopped."""
    import logging

    import policy as policy_pkg
    from real.robot import RobotError

    cfg = load_config(None, [f"ckpt={STATE}", f"out_dir={tmp_path}", "controller.max_steps=4"])
    rcfg = RehearsalConfig(host="127.0.0.26", start_tolerance_m=1e-7, approach_s=0.5, approach_retries=1)
    with caplog.at_level(logging.WARNING, logger="deploy"), pytest.raises(RobotError, match="episode 0's start pose .* after 2 approaches"):
        rehearse(cfg, rcfg, policy_pkg.load(STATE))
    retries = [r for r in caplog.records if "approaching again (1 s)" in r.getMessage()]
    assert len(retries) == 1


@pytest.mark.slow
def test_cli_rehearsal_full_episodes(tmp_path, capsys):
    """Whole episodes, success judged by the simulator (~70 s each)."""
    assert main(["--ckpt", STATE, "--rehearse", "--episodes", "2", f"out_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    ds = EpisodeDataset(tmp_path / "rollouts.zarr")
    outcomes = [m["outcome"] for m in ds.episodes_meta]
    assert len(ds) == 2 and set(outcomes) <= {"success", "failure"}  # judged, not "unjudged"
    assert f"rehearsal: {outcomes.count('success')}/2 successes (judged by the simulator)" in out
    assert all(m["end_reason"] in ("done", "max_steps") for m in ds.episodes_meta)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert [s["seed"] for s in saved] == [100_000, 100_001]
    assert [bool(s["success"]) for s in saved] == [o == "success" for o in outcomes]
    assert all(bool(s["milestones"]["success"]) == bool(s["success"]) for s in saved)
