import numpy as np

from sim.backends.mujoco_one_leg import OneLegMujocoEnv
from sim.config import EnvConfig
from sim.experts.one_leg import OneLegExpert


def test_scripted_expert_success_rate_low_randomness():
    env = OneLegMujocoEnv(EnvConfig(randomness="low"))
    expert = OneLegExpert()
    results, lengths = [], []
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        expert.reset(seed)
        for _ in range(env.cfg.max_episode_steps):
            obs, reward, terminated, truncated, info = env.step(expert.act(obs))
            if terminated or truncated:
                break
        results.append(info["success"])
        lengths.append(info["steps"])
        if info["success"]:
            assert terminated and not truncated and reward == 1.0
    assert np.mean(results) >= 0.8, results
    assert max(lengths) <= 700
