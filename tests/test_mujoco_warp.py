"""The batched backend's parts against the CPU backend's: IK, thread, and mujoco-warp itself.

The IK and thread tests run the torch code on MuJoCo C data (no mujoco-warp needed). The
backend tests run mujoco-warp on CPU at 2 worlds (its kernels compile once, ~1-2 min cold,
then come from ~/.cache/warp): same seeds and actions as the CPU backend, compared per step.

Tolerances: mujoco-warp integrates in float32, MuJoCo C in float64. Over the 20 free-space
control steps below the two agreed to 7e-7 m (measured); 2e-5 m (20 um) leaves room for other
CPUs' float rounding while a wrong frame, sign or ordering (millimetres) cannot hide in it.
"""
import numpy as np
import pytest
import torch

from sim.backends.mujoco_one_leg import IK_SEEDS, REST_Q, OneLegMujocoEnv
from sim.config import EnvConfig
from sim.control.batched_ik import ArmChain, BatchedDifferentialIK
from sim.tasks.one_leg import geometry as G
from sim.tasks.one_leg import scene as S
from sim.tasks.one_leg.thread_batched import BatchedThread

TOL = 2e-5


@pytest.fixture(scope="module")
def cpu_env():
    e = OneLegMujocoEnv(EnvConfig(randomness="low"))
    yield e
    e.close()


def test_batched_kinematics_and_ik_match_the_cpu_solver(cpu_env):
    import mujoco

    env, m = cpu_env, cpu_env.model
    rng = np.random.default_rng(0)
    q = torch.as_tensor(REST_Q + rng.normal(0, 0.3, (8, 7)))
    pos, rot, jac = ArmChain(m, S.ARM_JOINTS, S.EE_SITE).forward(q, jacobian=True)
    for i in range(8):
        p, r = env.ik.forward(q[i].numpy())
        jp, jr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        mujoco.mj_comPos(m, env.ik.data)
        mujoco.mj_jacSite(m, env.ik.data, jp, jr, env.ik.site_id)
        np.testing.assert_allclose(pos[i].numpy(), p, atol=1e-12)
        np.testing.assert_allclose(rot[i].numpy(), r, atol=1e-12)
        np.testing.assert_allclose(jac[i].numpy(), np.vstack([jp[:, env.ik.dof_idx], jr[:, env.ik.dof_idx]]), atol=1e-12)
    ik = BatchedDifferentialIK(m, S.ARM_JOINTS, S.EE_SITE, REST_Q, 8, env.cfg.ik, IK_SEEDS)
    # near targets (converge) and far ones (retries from the seeds, cooldowns)
    for spread in (0.03, 0.3):
        target = pos + torch.as_tensor(rng.normal(0, spread, (8, 3)))
        ik.cooldown[:] = 0
        qb, eb = ik.solve(target, rot, torch.as_tensor(REST_Q).expand(8, 7))
        for i in range(8):
            env.ik.reset()
            qc, ec = env.ik.solve(target[i].numpy(), rot[i].numpy(), REST_Q)
            np.testing.assert_allclose(qb[i].numpy(), qc, atol=1e-9)
            assert eb[i].item() == pytest.approx(ec, abs=1e-9)
            assert int(ik.cooldown[i]) == env.ik.get_state()["cooldown"]
    assert int(ik.cooldown.max()) > 0  # the far targets did exercise the retry path


def _rim_in_phase(env, yaw_offset_deg: float = 0.0, settled: bool = False, drop: float = 0.0004):
    """The leg `drop` above its stop over hole 0, `yaw_offset_deg` off the thread phase where it
    is placed (or, `settled`, where it will rest: the phase runs with depth, 15 deg per 0.4 mm)."""
    from data.rotation import axis_angle_to_matrix

    env.reset(seed=0)
    env.set_part_pose("top", G.TOP_CORNER_POS, G.TOP_REST_ROT)
    tp, tr = env.body_pose("top")
    hole = tp + tr @ G.hole_centres_local()[0]
    depth = G.ENGAGE_HEIGHT + drop
    phase_depth = G.ENGAGE_HEIGHT if settled else depth
    yaw = (2 * np.pi / G.THREAD_PITCH * phase_depth + np.pi) % (2 * np.pi) - np.pi + np.radians(yaw_offset_deg)
    env.set_part_pose("leg", hole + tr[:, 1] * depth, tr @ axis_angle_to_matrix(np.array([0.0, 1.0, 0.0]), yaw))


@pytest.mark.parametrize("yaw_offset_deg, engages", [(3.0, True), (40.0, False)])
def test_batched_thread_writes_what_the_cpu_thread_writes(cpu_env, yaw_offset_deg, engages):
    env = cpu_env
    _rim_in_phase(env, yaw_offset_deg)
    d, m = env.data, env.model
    view = lambda a: torch.as_tensor(np.array(a, copy=True))[None]  # noqa: E731  one world
    qpos, qvel, eq_active = view(d.qpos), view(d.qvel), view(d.eq_active).bool()
    eq_data, xpos, xmat = view(m.eq_data), view(d.xpos), view(d.xmat).reshape(1, -1, 3, 3)
    batched = BatchedThread(m, env.cfg.thread, 1, "cpu")
    changed = batched.update(torch.arange(1), qpos, qvel, eq_active, eq_data, xpos, xmat)
    assert env.thread.update() is engages and bool(changed[0]) is engages
    assert int(batched.engaged_hole[0]) == env.thread.engaged_hole
    np.testing.assert_allclose(qpos[0].numpy(), d.qpos, atol=1e-12)
    np.testing.assert_array_equal(eq_active[0].numpy(), d.eq_active.astype(bool))
    np.testing.assert_allclose(eq_data[0].numpy(), m.eq_data, atol=1e-12)
    if engages:  # and the release when the leg is lifted out
        qpos[0, batched.slide_qadr[0]] = d.qpos[env.thread.slide_qadr[0]] = G.ENGAGE_HEIGHT + 0.002
        assert env.thread.update()
        assert bool(batched.update(torch.arange(1), qpos, qvel, eq_active, eq_data, xpos, xmat)[0])
        np.testing.assert_allclose(qpos[0].numpy(), d.qpos, atol=1e-12)
        np.testing.assert_array_equal(eq_active[0].numpy(), d.eq_active.astype(bool))
        assert int(batched.engaged_hole[0]) == -1


# --- mujoco-warp itself (on CPU here) ------------------------------------------------------------
mjw = pytest.importorskip("mujoco_warp", reason="mujoco-warp is not installed (pip install -e .[gpu])")


def _pair(cfg: EnvConfig, n: int = 2):
    from sim.make import make

    return make(cfg, n, backend="mujoco", n_workers=0), make(cfg, n, backend="mujoco_warp")


def _expert_actions(n: int, seed: int):
    from sim.experts.one_leg import ExpertPool

    pool = ExpertPool(n, seed=0)
    for i in range(n):
        pool.reset(i, seed=seed + i)
    return pool


def test_warp_backend_matches_the_cpu_backend_step_by_step():
    cpu, warp = _pair(EnvConfig(randomness="low"))
    with cpu, warp:
        assert warp.device == "cpu" and warp.num_envs == 2
        o1, i1 = cpu.reset(seed=5)
        o2, i2 = warp.reset(seed=5)
        for k in o1:  # the first state comes from the CPU env's own reset: identical
            np.testing.assert_array_equal(o1[k], o2[k].numpy())
        np.testing.assert_array_equal(i1["episode_seed"], i2["episode_seed"].numpy())
        pool = _expert_actions(2, 5)
        ee0 = o1["state"][:, -1, :3].copy()
        for _ in range(20):
            a = pool.act({k: o1[k][:, -1] for k in ("state", "parts")})
            s1, s2 = cpu.step(a), warp.step(torch.as_tensor(a))
            o1, o2 = s1.obs, s2.obs
            for k in o1:
                np.testing.assert_allclose(o2[k].numpy(), o1[k], atol=TOL, err_msg=k)
            np.testing.assert_array_equal(s2.reward.numpy(), s1.reward)
            np.testing.assert_allclose(s2.infos["ik_error"].numpy(), s1.infos["ik_error"], atol=TOL)
        # the expert moved the arm and pushed the tabletop: a real trajectory, not a resting scene
        assert np.linalg.norm(o1["state"][:, -1, :3] - ee0, axis=-1).min() > 0.02


def test_warp_thread_engages_with_the_cpu_backend():
    """From the same state on the rim in phase, both backends engage at the first control step
    and write the same weld (to float32 precision); holding still keeps them together. The leg
    starts 20 um above its stop: a longer drop onto the near-hard lock is an impact that float32
    and float64 solvers resolve differently (0.4 mm: 0.08 rad apart in the captured phase)."""
    from tests.conftest import hold_action

    host = OneLegMujocoEnv(EnvConfig(randomness="low"))
    cpu_env = OneLegMujocoEnv(EnvConfig(randomness="low"))
    from sim.make import make

    warp = make(EnvConfig(randomness="low"), 1, backend="mujoco_warp")
    try:
        _rim_in_phase(host, 3.0, settled=True, drop=2e-5)
        state = host.get_sim_state()
        cpu_env.reset(seed=0)
        cpu_env.set_sim_state(state)
        warp.reset(seed=0)
        warp.set_sim_states([0], [state])
        obs = cpu_env._observe()
        action = hold_action(obs)
        for _ in range(3):
            obs, _, _, _, info = cpu_env.step(action)
            out = warp.step(torch.as_tensor(action)[None])
            assert bool(out.infos["engaged"][0]) == info["engaged"]
            # parts just placed settle in a contact transient that float32 and float64 solvers
            # resolve differently (6.3e-5 m measured)
            np.testing.assert_allclose(out.obs["parts"][0, -1].numpy(), obs["parts"], atol=2e-4)
        assert info["engaged"]
        # the weld captures the leg's pose as it settled (5.8e-5 measured), the coupling's phase
        # c0 = yaw - 668 rad/m * depth (4.8e-4 rad measured: 0.7 um of depth)
        th = cpu_env.thread
        weld, coupling = warp.eq_data[0, warp.thread.weld_eq].numpy(), warp.eq_data[0, warp.thread.coupling_eq].numpy()
        np.testing.assert_allclose(weld, cpu_env.model.eq_data[th.weld_eq], atol=3e-4)
        np.testing.assert_allclose(coupling, cpu_env.model.eq_data[th.coupling_eq], atol=2e-3)
        np.testing.assert_array_equal(warp.eq_active[0].numpy(), cpu_env.data.eq_active.astype(bool))
    finally:
        host.close()
        cpu_env.close()
        warp.close()


def test_warp_auto_reset_final_obs_and_seeds_follow_the_cpu_semantics():
    cfg = EnvConfig(randomness="low", max_episode_steps=3)
    cpu, warp = _pair(cfg)
    with cpu, warp:
        o1, _ = cpu.reset(seed=11)
        warp.reset(seed=11)
        action = np.repeat(o1["state"][:, -1:, :10], 4, axis=1)  # hold: a 4-action chunk
        active = np.array([True, False])
        idle_state = {f: warp._views[f][1].clone() for f in ("qpos", "qvel", "qacc_warmstart", "ctrl", "time")}
        s1 = cpu.step(action, active=active, reset_seeds=np.array([77, -1]))
        s2 = warp.step(torch.as_tensor(action), active=torch.as_tensor(active), reset_seeds=torch.tensor([77, -1]))
        for key in ("executed", "episode_length", "episode_seed", "next_episode_seed"):
            np.testing.assert_array_equal(s2.infos[key].numpy(), s1.infos[key], err_msg=key)
        np.testing.assert_array_equal(s2.truncated.numpy(), [True, False])
        assert s2.infos["executed"].tolist() == [3, 0] and s2.infos["next_episode_seed"][0] == 77
        for k in s1.obs:  # the reset world's new episode, the idle world untouched
            np.testing.assert_allclose(s2.obs[k].numpy(), s1.obs[k], atol=TOL)
            np.testing.assert_allclose(s2.infos["final_obs"][k].numpy(), s1.infos["final_obs"][k], atol=TOL)
        np.testing.assert_array_equal(s2.obs["state"][1].numpy(), o1["state"][1])
        for f, before in idle_state.items():  # mujoco-warp stepped it along; it was put back
            assert torch.equal(warp._views[f][1], before), f


def test_warp_divergence_ends_only_that_world_and_overflow_names_the_setting():
    from sim.make import make

    warp = make(EnvConfig(randomness="low"), 2, backend="mujoco_warp")
    with warp:
        obs, _ = warp.reset(seed=3)
        warp.qvel[1, 0] = float("nan")  # world 1 blows up
        out = warp.step(obs["state"][:, -1, :10])
        assert out.infos["diverged"].tolist() == [False, True]
        assert out.truncated.tolist() == [False, True] and out.reward[1] == 0
        assert bool(torch.isfinite(out.obs["state"]).all())  # world 1 starts its next episode
        assert int(out.infos["next_episode_seed"][1]) != int(out.infos["episode_seed"][1])
    tight = EnvConfig(randomness="low")
    tight.warp.nconmax = 1
    warp = make(tight, 2, backend="mujoco_warp")
    with warp:
        obs, _ = warp.reset(seed=3)
        with pytest.raises(RuntimeError, match="nconmax"):
            warp.step(obs["state"][:, -1, :10])


def _image_error(a, b) -> tuple[float, float]:
    """Mean absolute difference (in 1/255) and the fraction of pixels off by more than 32/255."""
    d = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    return float(d.mean()), float((d.max(-1) > 32).mean())


# mujoco-warp's ray tracer against MuJoCo's OpenGL renders of the same states: 0.4-0.8/255 mean
# and under 0.2 % of pixels more than 32/255 off (edges, where a ray and a raster disagree on
# which surface a pixel centre hits) measured; a wrong camera, pose, channel order or image
# orientation gives tens per pixel
IMAGE_MEAN_TOL, IMAGE_OUTLIER_TOL = 2.0, 0.01


def test_warp_pixel_observations_match_the_cpu_backend_renders():
    """obs=pixel on mujoco_warp: front and wrist images from the batched tracer (a non-square
    size, so a transposed image cannot pass), uint8 on the device, the first ones rendered
    from the reset state, all close to the CPU backend's OpenGL renders of the same states."""
    cfg = EnvConfig(randomness="low", obs_mode="pixel", include_parts=True)  # the expert reads the parts
    cfg.render.image_hw = (72, 96)
    cpu, warp = _pair(cfg)
    with cpu, warp:
        o1, _ = cpu.reset(seed=5)
        o2, _ = warp.reset(seed=5)
        assert warp.cameras is not None and warp.host.observe_images is False
        pool = _expert_actions(2, 5)
        for step in range(6):
            for cam in ("rgb/front", "rgb/wrist"):
                got = o2[cam]
                assert got.dtype == torch.uint8 and tuple(got.shape) == (2, 1, 72, 96, 3)
                for i in range(2):
                    mean, outliers = _image_error(got[i, -1].numpy(), o1[cam][i, -1])
                    assert mean < IMAGE_MEAN_TOL and outliers < IMAGE_OUTLIER_TOL, (step, cam, i, mean, outliers)
                assert float(got.float().std()) > 20  # a scene, not a blank
            np.testing.assert_allclose(o2["state"].numpy(), o1["state"], atol=TOL)
            a = pool.act({k: o1[k][:, -1] for k in ("state", "parts")})
            o1, o2 = cpu.step(a).obs, warp.step(torch.as_tensor(a)).obs
        # the wrist camera rides on the hand: the expert's moves changed its view
        assert _image_error(o2["rgb/wrist"][0, -1].numpy(), warp.latest["rgb/wrist"][1].numpy())[0] > 1.0


def test_warp_visual_randomisation_is_per_world_and_the_cpu_backends():
    """Each world keeps its own episode's colours, lights and camera jitter (per-world model
    rows on the device, drawn by the host's reset from the episode seed): world i looks like
    CPU env i, and the two worlds do not look alike."""
    from sim.config import VisualRandomization

    cfg = EnvConfig(randomness="low", obs_mode="pixel",
                    visual_randomization=VisualRandomization(lighting=True, colors=True, camera_jitter_pos=0.02,
                                                             camera_jitter_deg=3.0))
    cpu, warp = _pair(cfg)
    with cpu, warp:
        o1, _ = cpu.reset(seed=21)
        o2, _ = warp.reset(seed=21)
        front = o2["rgb/front"][:, -1].numpy()
        for i in range(2):
            mean, outliers = _image_error(front[i], o1["rgb/front"][i, -1])
            assert mean < IMAGE_MEAN_TOL and outliers < IMAGE_OUTLIER_TOL, (i, mean, outliers)
        assert _image_error(front[0], front[1])[0] > 5 * IMAGE_MEAN_TOL
        rgba = warp._per_world["geom_rgba"]
        assert not torch.equal(rgba[0], rgba[1])


@pytest.mark.parametrize("obs", ["state", "pixel"])
def test_dppo_fine_tunes_on_the_warp_backend(tmp_path, obs):
    """sim/finetune.py with sim=mujoco_warp: the same loop, rollouts from the batched worlds
    (pixels: the batched tracer's images into the pixel policy, camera encoders fixed)."""
    from policy.checkpoint import load_policy
    from sim.backends.mujoco_warp_one_leg import OneLegWarpVectorEnv
    from sim.finetune import Finetuner
    from tests.conftest import compose_config

    torch.set_num_threads(1)
    cfg = compose_config("finetune", [
        f"out_dir={tmp_path}", "sim=mujoco_warp", "sim.warp.device=cpu", "env.n_envs=2", "train.actor_needs_reward=false",
        "train.n_steps=3", "train.iterations=1", "train.save_every=1", "train.keep_every=0",
        *(["eval.every=1", "eval.at_start=false", "eval.episodes=1", "eval.n_envs=1", "eval.n_workers=0",
           "eval.video=false"] if obs == "state" else ["eval.every=0"]),
        "ppo.batch_size=15", "ppo.update_epochs=1", "ppo.critic_warmup=0", "ppo.actor_warmup=0", "ppo.actor_lr=1e-4",
        "critic.hidden=32", "critic.blocks=1", "device=cpu",
        *(["obs=pixel", "train.freeze_image_encoders=true"] if obs == "pixel" else [])])
    ft = Finetuner(cfg)
    with ft._make_envs() as envs:
        assert isinstance(envs, OneLegWarpVectorEnv)
    ft.train()
    import json

    last = [json.loads(line) for line in open(tmp_path / "history.jsonl")][-1]
    assert last["env_steps"] == 2 * 3 * 4  # 2 worlds x 3 chunks x 4 executed actions
    if obs == "state":  # evaluation runs on MuJoCo C (sim.evaluate): an episode to its end
        assert last["eval"]["n_episodes"] == 1 and last["eval"]["env_steps"] > 100
    tuned, base = load_policy(tmp_path / "last.pt"), load_policy(f"checkpoints/one_leg_{obs}_bc.pt")
    assert tuned.obs_keys == base.obs_keys
    assert any(not torch.equal(v, base.state_dict()[k]) for k, v in tuned.state_dict().items())


def test_warp_worlds_keep_their_own_physics_randomisation():
    """Part mass and friction draws live in per-world model rows, written from each world's host
    reset: world i has CPU env i's draws for the same seed, and the two worlds differ."""
    from sim.config import PhysicsRandomization

    cfg = EnvConfig(randomness="low", physics_randomization=PhysicsRandomization(part_mass_scale=0.2,
                                                                                 part_friction_scale=0.3))
    cpu, warp = _pair(cfg)
    with cpu, warp:
        cpu.reset(seed=8)
        warp.reset(seed=8)
        leg = warp.leg_id
        for i in range(2):
            ref = OneLegMujocoEnv(cfg, render_mode=None)
            ref.reset(seed=8 + i)
            np.testing.assert_allclose(warp._per_world["body_mass"][i].numpy(), ref.model.body_mass, rtol=1e-6)
            np.testing.assert_allclose(warp._per_world["geom_friction"][i].numpy(), ref.model.geom_friction, rtol=1e-6)
            ref.close()
        assert float(warp._per_world["body_mass"][0, leg]) != float(warp._per_world["body_mass"][1, leg])
