"""real/deploy.py end to end against franky-sim and software cameras: episodes recorded, errors clear."""
import json
import time

import numpy as np
import pytest

pytest.importorskip("franky", reason="franky-control is not installed", exc_type=ImportError)
pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed", exc_type=ImportError)

from data.episodes import EpisodeDataset  # noqa: E402
from real.cameras import CameraConfig, CameraSet, SoftwareCamera  # noqa: E402
from real.deploy import load_config, main, run  # noqa: E402
from real.franky_sim import FrankySim, franky_sim_executable  # noqa: E402
from real.robot import FrankaRobot  # noqa: E402

PIXEL = "checkpoints/one_leg_pixel_bc.pt"


def test_config_overrides_are_typed_and_checked():
    cfg = load_config(None, ["ckpt=x.pt", "robot.dynamics_factor=0.1", "cameras.0.serial=123", "episodes=3"])
    assert cfg.robot.dynamics_factor == 0.1 and cfg.cameras[0].serial == "123" and cfg.episodes == 3
    with pytest.raises(KeyError, match="dynamcs_factor"):
        load_config(None, ["robot.dynamcs_factor=0.1"])
    cfg = load_config(None, ["rehearsal.world_hz=100", "rehearsal.seed=7"])
    assert cfg.rehearsal.world_hz == 100.0 and cfg.rehearsal.seed == 7 and cfg.rehearsal.approach_retries == 1
    with pytest.raises(KeyError, match="rehearsal.wrld_hz"):
        load_config(None, ["rehearsal.wrld_hz=100"])


def test_cli_errors_are_clear(capsys):
    assert main(["--ckpt", "checkpoints/one_leg_state_bc.pt", "--robot-host", "127.0.0.34"]) == 2
    assert "reads ['parts']" in capsys.readouterr().err
    assert main(["--ckpt", PIXEL, "--robot-host", "127.0.0.35", "robot.connect_timeout_s=1.0",
                 "cameras.0.serial=123"]) == 1
    assert "serial 123 is not connected" in capsys.readouterr().err


@pytest.mark.skipif(franky_sim_executable() is None, reason="franky-sim is not installed")
def test_a_pixel_policy_episode_is_recorded(tmp_path):
    import policy as policy_pkg

    pi = policy_pkg.load(PIXEL)
    h, w = pi.image_hw
    rng = np.random.default_rng(0)
    frames = {name: rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for name in ("front", "wrist")}
    cams = CameraSet([SoftwareCamera(CameraConfig(name=n, width=160, height=120, fps=30, out_hw=[h, w]),
                                     source=lambda n=n: frames[n]) for n in ("front", "wrist")])
    cfg = load_config(None, [f"ckpt={PIXEL}", f"out_dir={tmp_path}", "episodes=1", "controller.max_steps=12",
                             "home_before_episode=false", "wait_for_operator=false",
                             "safety.workspace_low=[0.3,-0.3,0.3]", "safety.workspace_high=[0.8,0.3,0.7]"])
    with FrankySim("127.0.0.23") as sim:
        cfg.robot.host = sim.host
        with FrankaRobot(cfg.robot) as robot, cams:
            summaries = run(cfg, pi, robot, cams)
    s = summaries[0]
    assert s["reason"] == "max_steps" and s["steps"] == 12 and s["success"] is None
    ds = EpisodeDataset(tmp_path / "rollouts.zarr")
    ep = ds.episode(0)
    assert ep["rgb/front"].shape == (12, h, w, 3) and ep["state"].shape == (12, 10) and ep["action"].shape == (12, 10)
    assert np.all(np.diff(ep["timestamp"]) > 0.05) and np.isfinite(ep["latency"][-1])
    assert ds.episodes_meta[0]["outcome"] == "unjudged" and ds.episodes_meta[0]["source"] == "real"
    assert (tmp_path / "episode_000.mp4").stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text())[0]["steps"] == 12


@pytest.mark.skipif(franky_sim_executable() is None, reason="franky-sim is not installed")
def test_sigint_stops_the_arm_ends_the_run_and_keeps_the_recording(tmp_path):
    """A real SIGINT to a process running deploy's `run` mid-episode: the episode ends
    'stopped', no further episode starts, the arm stands still afterwards and the interrupted
    episode is in the dataset."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, str(root / "tests" / "sigint_deploy.py"), str(tmp_path), "127.0.0.36"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=root,
                            start_new_session=True)  # its own group: a failed test kills its franky-sim too
    try:
        for line in proc.stdout:
            if line.strip() == "RUNNING":
                break
        else:
            pytest.fail(f"the helper ended before its episode ran (exit {proc.wait()})")
        time.sleep(1.0)  # the arm is moving along +y
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    report = json.loads(out.strip().splitlines()[-1])
    (only,) = report["summaries"]  # episodes=3: the signal ended the run, not just the episode
    assert only["reason"] == "stopped" and 10 < only["steps"] < 600
    assert report["speed_after_m_s"] < 0.002  # moving at 0.04 m/s before the signal
    assert report["recorded_steps"] == [only["steps"]]
