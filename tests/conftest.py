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


def compose_config(config_name: str, overrides=()):
    """A Hydra config from configs/ with overrides, as the entry points would see it."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def hold_action(obs) -> np.ndarray:
    """Action that keeps the EE where it is (state[:10] is laid out like an action)."""
    return np.asarray(obs["state"][:10], dtype=np.float32).copy()
