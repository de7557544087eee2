import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sim.backends.mujoco_one_leg import OneLegMujocoEnv  # noqa: E402
from sim.config import EnvConfig  # noqa: E402


@pytest.fixture(scope="module")
def env():
    """One state-only env per test module (building the model takes ~1.5 s)."""
    e = OneLegMujocoEnv(EnvConfig(randomness="none"))
    yield e
    e.close()


def hold_action(obs) -> np.ndarray:
    """Action that keeps the EE where it is (state[:10] is laid out like an action)."""
    return np.asarray(obs["state"][:10], dtype=np.float32).copy()
