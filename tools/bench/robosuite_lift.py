"""robosuite Lift (Panda) env-steps/s, run by sim_throughput.py in a venv with mujoco 3.9 +
robosuite 1.5.2 (robosuite's own environments break on MuJoCo 4.0). Prints one JSON row.

    .venv-lift/bin/python tools/bench/robosuite_lift.py state 50
"""
import json
import sys
import time

import numpy as np


def main(mode: str, steps: int) -> None:
    import robosuite
    from robosuite.controllers import load_composite_controller_config

    pixel = mode == "pixel"
    env = robosuite.make(
        "Lift", robots="Panda", controller_configs=load_composite_controller_config(controller="BASIC", robot="Panda"),
        has_renderer=False, has_offscreen_renderer=pixel, use_camera_obs=pixel,
        camera_names=["frontview", "robot0_eye_in_hand"], camera_heights=96, camera_widths=96,
        control_freq=10, horizon=10_000, ignore_done=True,
    )
    rng = np.random.default_rng(0)
    env.reset()
    low, high = env.action_spec
    for _ in range(10):  # warm-up: robosuite's numba kernels compile on first use
        env.step(rng.uniform(low, high) * 0.3)
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(low, high) * 0.3)
    dt = time.perf_counter() - t0
    env.close()
    import mujoco

    print(json.dumps({"sim": f"robosuite Lift (yardstick, mujoco {mujoco.__version__})", "mode": mode, "n_envs": 1,
                      "n_workers": 1, "env_steps_per_s": steps / dt, "ms_per_env_step": {}}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
