"""Helper process for the Ctrl-C test: real/deploy.py's `run` against franky-sim, signalled.

    python tests/sigint_deploy.py OUT_DIR HOST

Prints `RUNNING` once the arm follows streamed chunks, then runs a 60 s episode that the test
interrupts with SIGINT; afterwards prints one JSON line: the episode's end, the arm's speed
over the half second after `run` returned (stopped: ~0), and the episodes in the dataset.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.episodes import EpisodeDataset  # noqa: E402
from real.deploy import load_config, run  # noqa: E402
from real.franky_sim import FrankySim  # noqa: E402
from real.robot import FrankaRobot  # noqa: E402


class SweepPolicy:
    """8 targets 4 mm apart along +y from the newest EE pose (0.04 m/s): the arm keeps moving
    until something stops it."""

    obs_keys, obs_history, act_steps = ("state",), 1, 4

    def __init__(self):
        self.calls = 0

    def act(self, obs, **kw):
        self.calls += 1
        if self.calls == 3:
            print("RUNNING", flush=True)
        s = obs["state"][0, -1].astype(np.float64)
        out = np.repeat(s[None], 8, 0)
        out[:, 1] = s[1] + 0.004 * np.arange(1, 9)
        return out[None]


if __name__ == "__main__":
    out, host = Path(sys.argv[1]), sys.argv[2]
    cfg = load_config(None, [f"out_dir={out}", "episodes=3", "controller.max_steps=600", "home_before_episode=false",
                             "wait_for_operator=false", "video=false",
                             "safety.workspace_low=[0.2,-0.5,0.2]", "safety.workspace_high=[0.9,0.5,0.8]"])
    with FrankySim(host) as sim:
        cfg.robot.host = sim.host
        with FrankaRobot(cfg.robot) as robot:
            summaries = run(cfg, SweepPolicy(), robot)
            t0 = time.monotonic()
            p0 = robot.latest_state().ee_pos.copy()
            time.sleep(0.5)
            speed = float(np.linalg.norm(robot.latest_state().ee_pos - p0) / (time.monotonic() - t0))
    ds = EpisodeDataset(out / "rollouts.zarr")
    print(json.dumps({"summaries": [{k: s[k] for k in ("reason", "steps")} for s in summaries], "speed_after_m_s": speed,
                      "recorded_steps": [len(ds.episode(i)["state"]) for i in range(len(ds))]}), flush=True)
