"""A blown-up simulation ends only its own episode (truncated, diverged) and the rest go on."""
import functools
import logging

import numpy as np
import pytest

from sim.backends.mujoco_one_leg import OneLegMujocoEnv
from sim.config import EnvConfig
from sim.vector_env import SyncVectorEnv


def hold(obs):
    return obs["state"][:, -1, :10].copy()


@pytest.fixture()
def venv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its instability warnings to ./MUJOCO_LOG.TXT
    fns = [functools.partial(OneLegMujocoEnv, EnvConfig(randomness="low", max_episode_steps=50))] * 3
    with SyncVectorEnv(fns) as v:
        yield v


def _inject(venv, i, how):
    env = venv._runner.envs[i]
    leg = env.model.jnt_dofadr[env.model.joint("leg_free").id]
    if how == "nan":
        env.data.qpos[env.leg_qadr] = np.nan
    elif how == "explode":
        env.data.qvel[leg:leg + 3] = 1e6  # a contact impulse no real motion produces
    elif how == "mujoco_reset":  # MuJoCo's own bad-acceleration handling resets the data silently
        env.data.qacc_warmstart[:] = np.inf
        env.data.qfrc_applied[leg] = 1e30


@pytest.mark.parametrize("how", ["nan", "explode", "mujoco_reset"])
def test_one_env_blows_up_the_others_go_on(venv, how, caplog):
    obs, _ = venv.reset(seed=3)
    for _ in range(2):
        obs, *_ = venv.step(hold(obs))
    before = obs["parts"].copy()
    _inject(venv, 1, how)
    with caplog.at_level(logging.WARNING, logger="sim.vector_env"):
        obs, rewards, terminated, truncated, infos = venv.step(np.repeat(hold(obs)[:, None], 3, axis=1))
    np.testing.assert_array_equal(infos["diverged"], [False, True, False])
    np.testing.assert_array_equal(truncated, [False, True, False])
    np.testing.assert_array_equal(terminated, [False, False, False])
    np.testing.assert_array_equal(infos["executed"], [3, 1, 3])  # the rest of env 1's chunk is dropped
    assert any("env 1 diverged" in r.getMessage() for r in caplog.records)
    # the stand-in final observation is the last finite one; env 1 restarted with a fresh episode
    np.testing.assert_array_equal(infos["final_obs"]["parts"][1, -1], before[1, -1])
    assert np.isfinite(obs["state"]).all() and infos["next_episode_seed"][1] != infos["episode_seed"][1]
    obs, _, _, truncated, infos = venv.step(hold(obs))
    assert not infos["diverged"].any() and not truncated.any()


def test_a_calm_episode_never_counts_as_diverged(venv):
    obs, _ = venv.reset(seed=0)
    for _ in range(20):
        obs, _, _, _, infos = venv.step(np.repeat(hold(obs)[:, None], 2, axis=1))
        assert not infos["diverged"].any()
