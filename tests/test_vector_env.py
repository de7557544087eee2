"""Vector envs: chunked stepping with same-step auto-reset, seeding/determinism across worker
counts, pixels through shared memory, divergence and worker failures. MuJoCo episodes are cut to
a few steps to stay fast."""
from __future__ import annotations

import functools
import gc
import os
import signal
from multiprocessing.shared_memory import SharedMemory

import gymnasium as gym
import numpy as np
import pytest

from sim.backends.mujoco_one_leg import OneLegMujocoEnv
from sim.config import EnvConfig
from sim.vector_env import SharedMemoryVectorEnv, SyncVectorEnv, VectorEnvError, make_vector_env

SEED = 7
N_ENVS = 2


def one_leg_fns(n: int = N_ENVS, **cfg) -> list:
    return [functools.partial(OneLegMujocoEnv, EnvConfig(randomness="low", **cfg)) for _ in range(n)]


def hold(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Command the current EE pose and gripper width: the state layout is the action layout."""
    return obs["state"][:, -1, :10].copy()


def rollout(venv, n_steps: int, seed: int = SEED) -> list[tuple]:
    obs, _ = venv.reset(seed=seed)
    trace = [(obs, None, None, None, None)]
    for _ in range(n_steps):
        obs, reward, terminated, truncated, infos = venv.step(hold(obs))
        trace.append((obs, reward, terminated, truncated, infos["final_obs"]))
    return trace


def assert_traces_equal(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for t, (step_a, step_b) in enumerate(zip(a, b)):
        for x, y in zip(step_a, step_b):
            if isinstance(x, dict):
                assert x.keys() == y.keys()
                for key in x:
                    np.testing.assert_array_equal(x[key], y[key], err_msg=f"step {t}, key {key}")
            else:
                np.testing.assert_array_equal(x, y, err_msg=f"step {t}")


@pytest.fixture(scope="module")
def state_venvs():
    fns = one_leg_fns(max_episode_steps=3)
    with SharedMemoryVectorEnv(fns, n_workers=2) as shm2, SharedMemoryVectorEnv(fns, n_workers=1) as shm1, \
            SyncVectorEnv(fns) as sync:
        yield {"shm2": shm2, "shm1": shm1, "sync": sync}


# --- (a) same-step auto-reset -----------------------------------------------------------------
def reference_run(env: gym.Env, seed: int, n_steps: int) -> list[dict]:
    """One env driven like the vector env drives it: reset(seed), hold the pose, reset() when done."""
    obs, _ = env.reset(seed=seed)
    out = [{"obs": obs}]
    for _ in range(n_steps):
        obs, _, terminated, truncated, _ = env.step(obs["state"][:10].copy())
        record = {"final_obs": None}
        if terminated or truncated:
            record["final_obs"] = obs
            obs, _ = env.reset()
        record["obs"] = obs
        out.append(record)
    return out


def test_same_step_autoreset_matches_a_single_env(state_venvs):
    venv = state_venvs["shm2"]
    ref_env = OneLegMujocoEnv(EnvConfig(randomness="low", max_episode_steps=3))
    refs = [reference_run(ref_env, SEED + i, n_steps=4) for i in range(N_ENVS)]
    ref_env.close()

    obs, infos = venv.reset(seed=SEED)
    np.testing.assert_array_equal(infos["steps"], [0, 0])
    np.testing.assert_array_equal(infos["episode_seed"], [SEED, SEED + 1])
    for i in range(N_ENVS):
        for key in obs:
            assert obs[key].shape[1] == 1  # (N, To=1, ...) histories
            np.testing.assert_array_equal(obs[key][i, 0], refs[i][0]["obs"][key])

    returned = []
    for t in range(1, 5):
        obs, rewards, terminated, truncated, infos = venv.step(hold(obs))
        returned.append(obs)
        expected_done = t == 3
        np.testing.assert_array_equal(truncated, [expected_done] * N_ENVS)
        np.testing.assert_array_equal(terminated, [False] * N_ENVS)  # a time limit is not a termination
        np.testing.assert_array_equal(infos["done"], [expected_done] * N_ENVS)
        np.testing.assert_array_equal(rewards, np.zeros(N_ENVS, np.float32))
        np.testing.assert_array_equal(infos["executed"], [1, 1])
        # infos describe the step taken: for a finished env its final step
        np.testing.assert_array_equal(infos["steps"], [t if t <= 3 else 1] * N_ENVS)
        for i in range(N_ENVS):
            for key in obs:
                np.testing.assert_array_equal(obs[key][i, -1], refs[i][t]["obs"][key], err_msg=f"step {t} env {i}")
        if expected_done:
            np.testing.assert_array_equal(infos["episode_length"], [3, 3])
            np.testing.assert_array_equal(infos["episode_return"], [0.0, 0.0])
            np.testing.assert_array_equal(infos["success"], [False, False])
            np.testing.assert_array_equal(infos["episode_seed"], [SEED, SEED + 1])
            assert (infos["next_episode_seed"] != infos["episode_seed"]).all()
            assert infos["milestones/leg_lifted"].dtype == bool and not infos["milestones/leg_lifted"].any()
            for i in range(N_ENVS):
                for key in obs:
                    np.testing.assert_array_equal(infos["final_obs"][key][i, -1], refs[i][t]["final_obs"][key])
                # the returned obs is the new episode's (parts re-sampled), not the finished one's
                assert not np.allclose(obs["parts"][i], infos["final_obs"]["parts"][i])
        else:
            np.testing.assert_array_equal(infos["episode_length"], [0, 0])
            assert all(not v.any() for v in infos["final_obs"].values())  # rows of unfinished envs are zero
    # returned obs are copies, not views that later steps overwrite
    for t, obs in enumerate(returned, start=1):
        for i in range(N_ENVS):
            np.testing.assert_array_equal(obs["parts"][i, -1], refs[i][t]["obs"]["parts"], err_msg=f"step {t} env {i}")


# --- (b) determinism across worker counts -------------------------------------------------------
def test_runs_are_identical_for_any_worker_count(state_venvs):
    traces = {name: rollout(venv, n_steps=5) for name, venv in state_venvs.items()}
    assert_traces_equal(traces["shm2"], traces["shm1"])
    assert_traces_equal(traces["shm2"], traces["sync"])
    assert_traces_equal(traces["shm2"], rollout(state_venvs["shm2"], n_steps=5))  # reset(seed) reproduces

    first_obs = traces["shm2"][0][0]
    # returned obs are copies: the auto-reset at step 3 must not have overwritten the first obs
    assert not np.allclose(first_obs["parts"], traces["shm2"][3][0]["parts"])
    assert not np.allclose(first_obs["parts"][0], first_obs["parts"][1])  # env i is seeded with seed + i
    explicit, _ = state_venvs["sync"].reset(seeds=[SEED + 1, SEED])  # explicit per-env seeds
    np.testing.assert_array_equal(explicit["parts"][::-1], first_obs["parts"])
    other_seed, _ = state_venvs["sync"].reset(seed=SEED + 100)
    assert not np.allclose(other_seed["parts"], first_obs["parts"])
    done = [t for t, step in enumerate(traces["shm2"]) if step[3] is not None and step[3].any()]
    assert done == [3], "the run should cross exactly one auto-reset"


def test_call_gathers_attributes_and_method_results(state_venvs):
    venv = state_venvs["shm2"]
    rollout(venv, n_steps=2)
    timings = venv.call("timings")
    assert len(timings) == N_ENVS and all(t["physics"] > 0 for t in timings)
    errors = venv.call("assembly_error")
    rollout(state_venvs["sync"], n_steps=2)
    sync_errors = state_venvs["sync"].call("assembly_error")
    assert len(errors) == N_ENVS and len(errors[0]) == 3
    np.testing.assert_allclose(np.array(errors, dtype=float), np.array(sync_errors, dtype=float))
    assert venv.num_envs == N_ENVS and venv.single_action_space.shape == (10,)
    assert venv.single_observation_space["state"].shape == (10,)


# --- (c) pixels through shared memory ------------------------------------------------------------
def test_pixel_observations_come_back_through_shared_memory():
    fns = one_leg_fns(obs_mode="pixel", max_episode_steps=2)
    with SharedMemoryVectorEnv(fns, n_workers=2) as shm, SyncVectorEnv(fns) as sync:
        trace = rollout(shm, n_steps=3)
        assert_traces_equal(trace, rollout(sync, n_steps=3))
    for camera in ("rgb/front", "rgb/wrist"):
        for images in (trace[0][0][camera][:, -1], trace[2][4][camera][:, -1]):  # a reset obs and a final obs
            assert images.dtype == np.uint8 and images.shape == (N_ENVS, 96, 96, 3)
            assert images.reshape(N_ENVS, -1).std(axis=1).min() > 5.0  # real renders, not blank buffers
    front = trace[0][0]["rgb/front"][:, -1]
    assert not np.array_equal(front[0], front[1])  # each env renders its own scene (own seed)


# --- (d) failures ----------------------------------------------------------------------------------
def test_worker_errors_and_deaths_surface_in_the_parent():
    venv = SharedMemoryVectorEnv(one_leg_fns(max_episode_steps=5), n_workers=2)
    shm_names = [spec.shm_name for spec in venv._specs.values()]
    try:
        obs, _ = venv.reset(seed=SEED)
        actions = hold(obs)
        actions[1, 0] = np.nan  # the env rejects NaN actions with ValueError
        with pytest.raises(RuntimeError, match="ValueError") as err:
            venv.step(actions)
        assert err.value.env_index == 1 and "env 1" in str(err.value) and "Traceback" in str(err.value)
        with pytest.raises(RuntimeError, match="reset"):  # envs are out of sync until reset
            venv.step(hold(obs))
        obs, _ = venv.reset(seed=SEED)  # the worker survived the env's exception
        _, _, _, _, infos = venv.step(hold(obs))
        np.testing.assert_array_equal(infos["steps"], [1, 1])

        os.kill(venv.worker_pids[0], signal.SIGKILL)
        with pytest.raises(VectorEnvError, match="worker 0 .* died"):
            venv.step(hold(obs))
        with pytest.raises(RuntimeError, match="died"):  # and stays unusable, without hanging
            venv.reset(seed=SEED)
    finally:
        venv.close()
    venv.close()  # idempotent
    for name in shm_names:
        with pytest.raises(FileNotFoundError):
            SharedMemory(name=name)
    with pytest.raises(RuntimeError, match="closed"):
        venv.reset()


# --- the shared episode logic on a tiny env (fast; runs through both implementations) -------------
class CountdownEnv(gym.Env):
    """Reward 1 per step; succeeds (terminates) at step `succeed_at`, time limit at step 3.
    obs["state"] = [steps, reset seed or -1] so tests can see which seed each reset got."""

    metadata = {"render_modes": []}

    def __init__(self, succeed_at: int):
        self.succeed_at, self.steps, self.seed = succeed_at, 0, -1
        self.observation_space = gym.spaces.Dict({
            "state": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "img": gym.spaces.Box(0, 255, (2, 2, 3), np.uint8),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"state": np.array([self.steps, self.seed], np.float32),
                "img": np.full((2, 2, 3), 10 * self.steps + 1, np.uint8)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps, self.seed = 0, -1 if seed is None else seed
        return self._obs(), {"success": False, "steps": 0}

    def step(self, action):
        self.steps += 1
        success = self.steps == self.succeed_at
        truncated = self.steps >= 3 and not success
        info = {"success": success, "steps": self.steps, "gap": 0.5 * self.steps, "label": f"s{self.steps}"}
        return self._obs(), 1.0, success, truncated, info


@pytest.mark.parametrize("n_workers", [0, 2])
def test_terminated_and_truncated_stay_separate(n_workers):
    fns = [functools.partial(CountdownEnv, succeed_at=2), functools.partial(CountdownEnv, succeed_at=99)]
    with make_vector_env(fns, n_workers) as venv:
        assert isinstance(venv, SyncVectorEnv if n_workers == 0 else SharedMemoryVectorEnv)
        obs, infos = venv.reset(seed=10)
        np.testing.assert_array_equal(obs["state"][:, -1], [[0, 10], [0, 11]])  # env i gets seed + i
        actions = np.zeros((2, 1), np.float32)

        venv.step(actions)
        obs, rewards, terminated, truncated, infos = venv.step(actions)  # env 0 succeeds at its step 2
        np.testing.assert_array_equal(terminated, [True, False])
        np.testing.assert_array_equal(truncated, [False, False])
        np.testing.assert_array_equal(rewards, [1.0, 1.0])
        assert rewards.dtype == np.float32 and terminated.dtype == bool
        np.testing.assert_array_equal(obs["state"][:, -1], [[0, -1], [2, 11]])  # auto-reset continues the env's RNG
        np.testing.assert_array_equal(infos["final_obs"]["state"][:, -1], [[2, 10], [0, 0]])
        np.testing.assert_array_equal(infos["final_obs"]["img"][0, -1], np.full((2, 2, 3), 21, np.uint8))
        np.testing.assert_array_equal(infos["success"], [True, False])
        np.testing.assert_array_equal(infos["episode_return"], [2.0, 0.0])
        np.testing.assert_array_equal(infos["episode_length"], [2, 0])
        # numeric infos stack into arrays; strings are not carried
        assert infos["success"].dtype == bool and infos["steps"].dtype == np.int64
        np.testing.assert_array_equal(infos["steps"], [2, 2])
        np.testing.assert_array_equal(infos["gap"], [1.0, 1.0])
        assert "label" not in infos

        obs, rewards, terminated, truncated, infos = venv.step(actions)  # env 1 hits the time limit
        np.testing.assert_array_equal(terminated, [False, False])
        np.testing.assert_array_equal(truncated, [False, True])
        np.testing.assert_array_equal(infos["final_obs"]["state"][:, -1], [[0, 0], [3, 11]])
        np.testing.assert_array_equal(infos["episode_return"], [0.0, 3.0])
        np.testing.assert_array_equal(infos["episode_seed"], [-1, 11])

        with pytest.raises(ValueError, match="shape"):
            venv.step(np.zeros((3, 1), np.float32))


@pytest.mark.parametrize("n_workers", [0, 2])
def test_a_chunk_stops_each_env_at_its_episode_end(n_workers):
    """(N, Ta, A) chunks: rewards summed over the executed sub-steps, an env whose episode ends
    executes nothing more of its chunk, histories pad a new episode and keep the finished one."""
    fns = [functools.partial(CountdownEnv, succeed_at=2), functools.partial(CountdownEnv, succeed_at=99),
           functools.partial(CountdownEnv, succeed_at=99)]
    with make_vector_env(fns, n_workers, obs_history=2) as venv:
        obs, _ = venv.reset(seeds=[5, 6, 7])
        assert obs["state"].shape == (3, 2, 2)
        np.testing.assert_array_equal(obs["state"][:, :, 0], [[0, 0]] * 3)  # first obs repeated
        chunk = np.zeros((3, 4, 1), np.float32)
        # env 2 sits this chunk out; env 0 succeeds at sub-step 2, env 1 is truncated at 3
        obs, rewards, terminated, truncated, infos = venv.step(chunk, active=[True, True, False],
                                                               reset_seeds=[50, -1, -1])
        np.testing.assert_array_equal(infos["executed"], [2, 3, 0])
        np.testing.assert_array_equal(rewards, [2.0, 3.0, 0.0])
        np.testing.assert_array_equal(terminated, [True, False, False])
        np.testing.assert_array_equal(truncated, [False, True, False])
        # env 0 restarted with the given seed, env 1 from its own stream; env 2 untouched
        np.testing.assert_array_equal(obs["state"][:, -1], [[0, 50], [0, -1], [0, 7]])
        np.testing.assert_array_equal(obs["state"][:, :, 0], [[0, 0], [0, 0], [0, 0]])
        np.testing.assert_array_equal(infos["final_obs"]["state"][:2, :, 0], [[1, 2], [2, 3]])
        np.testing.assert_array_equal(infos["next_episode_seed"], [50, -1, 7])
        np.testing.assert_array_equal(infos["episode_seed"], [5, 6, 7])
        obs, rewards, *_ = venv.step(chunk[:, :1])
        np.testing.assert_array_equal(obs["state"][:, :, 0], [[0, 1], [0, 1], [0, 1]])  # history shifts
        with pytest.raises(ValueError, match="active"):
            venv.step(chunk, active=[True, False])


class DivergingEnv(CountdownEnv):
    """Raises FloatingPointError (a blown-up simulation) at step `blow_up_at`."""

    def __init__(self, blow_up_at: int):
        super().__init__(succeed_at=99)
        self.blow_up_at = blow_up_at

    def step(self, action):
        if self.steps + 1 == self.blow_up_at:
            raise FloatingPointError("qpos is NaN")
        return super().step(action)


@pytest.mark.parametrize("n_workers", [0, 2])
def test_a_diverged_env_is_truncated_and_the_others_go_on(n_workers, caplog):
    fns = [functools.partial(CountdownEnv, succeed_at=99), functools.partial(DivergingEnv, blow_up_at=2)]
    with make_vector_env(fns, n_workers) as venv:
        venv.reset(seed=0)
        with caplog.at_level("WARNING"):
            obs, rewards, terminated, truncated, infos = venv.step(np.zeros((2, 3, 1), np.float32))
        np.testing.assert_array_equal(truncated, [True, True])  # env 0: time limit at 3; env 1: diverged
        np.testing.assert_array_equal(terminated, [False, False])
        np.testing.assert_array_equal(infos["diverged"], [False, True])
        np.testing.assert_array_equal(infos["executed"], [3, 2])
        np.testing.assert_array_equal(rewards, [3.0, 1.0])
        # the last finite observation stands in as the final one; the env starts afresh
        np.testing.assert_array_equal(infos["final_obs"]["state"][1, -1], [1, 1])
        np.testing.assert_array_equal(obs["state"][1, -1, 0], 0)
        if n_workers == 0:
            assert any("env 1 diverged" in r.getMessage() for r in caplog.records)
        obs, rewards, *_ = venv.step(np.zeros((2, 1), np.float32))  # and both keep running
        np.testing.assert_array_equal(rewards, [1.0, 1.0])


def test_garbage_collection_stops_workers_and_frees_shared_memory():
    venv = SharedMemoryVectorEnv([functools.partial(CountdownEnv, succeed_at=2)] * 2, n_workers=2)
    venv.reset(seed=0)
    procs = list(venv._procs)
    shm_names = [spec.shm_name for spec in venv._specs.values()]
    assert all(p.is_alive() for p in procs) and len(shm_names) == 4  # history + final history, 2 keys each
    del venv
    gc.collect()
    assert not any(p.is_alive() for p in procs)
    for name in shm_names:
        with pytest.raises(FileNotFoundError):
            SharedMemory(name=name)
