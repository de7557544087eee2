"""Physics and interface randomisation (sim.physics_randomization, issue 15 item 5): per-episode
draws from the episode seed, nominal values restored, pushes, action noise, observation latency,
and the presets."""
import numpy as np
import pytest

from sim.backends.mujoco_one_leg import OneLegMujocoEnv
from sim.config import EnvConfig, PhysicsRandomization
from tests.conftest import hold_action


def _env(**pr) -> OneLegMujocoEnv:
    return OneLegMujocoEnv(EnvConfig(randomness="low", physics_randomization=PhysicsRandomization(**pr)),
                           render_mode=None)


def test_part_mass_and_friction_are_drawn_per_episode_from_its_seed():
    plain, env = _env(), _env(part_mass_scale=0.2, part_friction_scale=0.3)
    nominal_mass = plain.model.body_mass.copy()
    nominal_friction = plain.model.geom_friction.copy()
    draws = {}
    for seed in (1, 2, 1):
        env.reset(seed=seed)
        m = env.model
        ratio = m.body_mass[[env.top_id, env.leg_id]] / nominal_mass[[env.top_id, env.leg_id]]
        assert np.all(np.abs(ratio - 1) <= 0.2) and not np.allclose(ratio, 1)
        leg_geoms = np.flatnonzero(m.geom_bodyid == env.leg_id)
        f = m.geom_friction[leg_geoms, 0] / nominal_friction[leg_geoms, 0]
        assert np.allclose(f, f[0]) and abs(f[0] - 1) <= 0.3
        others = np.setdiff1d(np.arange(m.nbody), [env.top_id, env.leg_id])
        np.testing.assert_array_equal(m.body_mass[others], nominal_mass[others])  # the robot is untouched
        draws.setdefault(seed, []).append(ratio.copy())
    np.testing.assert_array_equal(draws[1][0], draws[1][1])  # the seed fixes the episode's draws
    assert not np.allclose(draws[1][0], draws[2][0])


def test_the_reset_push_moves_the_parts_and_off_draws_nothing():
    """The fork's reset pushes (tabletop 25x): the same seed settles elsewhere; with everything
    off an episode is the plain env's bit for bit."""
    plain, off, pushed = _env(), _env(top_push_scale=25.0), _env(reset_push_force=0.2, reset_push_torque=0.007)
    o_plain, _ = plain.reset(seed=4)
    o_off, _ = off.reset(seed=4)
    o_push, _ = pushed.reset(seed=4)
    np.testing.assert_array_equal(o_plain["parts"], o_off["parts"])
    moved = np.linalg.norm(o_push["parts"][:3] - o_plain["parts"][:3])
    assert moved > 1e-4  # the 5 N push on the 0.15 kg tabletop for one settle step
    assert np.all(pushed.data.xfrc_applied == 0)  # applied only while settling


def test_action_noise_perturbs_the_executed_targets_reproducibly():
    plain, noisy, again = _env(), _env(action_noise_pos=0.01), _env(action_noise_pos=0.01)
    obs = [e.reset(seed=3)[0] for e in (plain, noisy, again)]
    a = hold_action(obs[0])
    for _ in range(3):
        obs = [e.step(a)[0] for e in (plain, noisy, again)]
    d = np.linalg.norm(obs[1]["state"][:3] - obs[0]["state"][:3])
    assert 1e-3 < d < 0.05, d  # ~1 cm of noise per target, tracked by the arm
    np.testing.assert_array_equal(obs[1]["state"], obs[2]["state"])


def test_observation_latency_delivers_the_observation_of_k_steps_ago():
    plain, late = _env(), _env(obs_latency_steps=2)
    first, _ = plain.reset(seed=5)
    delayed, _ = late.reset(seed=5)
    np.testing.assert_array_equal(delayed["state"], first["state"])
    history, seen = [first], []
    for _ in range(5):
        a = hold_action(first)
        history.append(plain.step(a)[0])
        seen.append(late.step(a)[0])
    for t, obs in enumerate(seen, start=1):  # step t shows what step t - 2 saw (the first obs before that)
        np.testing.assert_array_equal(obs["state"], history[max(0, t - 2)]["state"])


def test_bad_values_and_unsupported_backends_are_errors():
    with pytest.raises(ValueError, match=">= 0"):
        PhysicsRandomization(action_noise_pos=-1.0)
    with pytest.raises(ValueError, match="< 1"):
        PhysicsRandomization(part_mass_scale=1.5)
    from sim.make import make

    with pytest.raises(NotImplementedError, match="action noise or observation latency"):
        make(EnvConfig(physics_randomization=PhysicsRandomization(obs_latency_steps=1)), 1, backend="mujoco_warp")


def test_the_sim2real_preset_sets_both_randomisations():
    from sim.make import env_config_from_hydra
    from tests.conftest import compose_config

    cfg = env_config_from_hydra(compose_config("finetune", ["randomization=sim2real"]))
    assert cfg.visual_randomization.lighting and cfg.visual_randomization.camera_jitter_deg == 2.0
    assert cfg.physics_randomization.reset_push_force == 0.2 and cfg.physics_randomization.obs_latency_steps == 1
    assert env_config_from_hydra(compose_config("finetune", [])).physics_randomization == PhysicsRandomization()


def test_part_poses_arrive_noisy_and_late_as_an_estimator_would_give_them():
    """parts_noise_* perturb only the parts observation (positions ~sigma, rotations still
    rotations); parts_latency_steps delays it while the robot state stays current."""
    from data.rotation import rot6d_to_matrix

    plain, noisy, late = _env(), _env(parts_noise_pos=0.003, parts_noise_rot_deg=2.0), _env(parts_latency_steps=1)
    obs = [e.reset(seed=6)[0] for e in (plain, noisy, late)]
    history = [obs[0]["parts"]]
    offsets = []
    for _ in range(6):
        a = hold_action(obs[0])
        obs = [e.step(a)[0] for e in (plain, noisy, late)]
        history.append(obs[0]["parts"])
        np.testing.assert_array_equal(obs[1]["state"], obs[0]["state"])
        offsets.append(obs[1]["parts"][[0, 1, 2, 9, 10, 11]] - obs[0]["parts"][[0, 1, 2, 9, 10, 11]])
        for i in (0, 9):
            r = rot6d_to_matrix(obs[1]["parts"][i + 3:i + 9].astype(np.float64))
            assert np.degrees(np.arccos(np.clip((np.trace(r.T @ rot6d_to_matrix(
                obs[0]["parts"][i + 3:i + 9].astype(np.float64))) - 1) / 2, -1, 1))) < 12
        np.testing.assert_array_equal(obs[2]["state"], obs[0]["state"])
        np.testing.assert_array_equal(obs[2]["parts"], history[-2])
    std = float(np.std(np.concatenate(offsets)))
    assert 0.0015 < std < 0.006, std  # sigma 3 mm
