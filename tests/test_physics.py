"""Physics sanity of the embedded one_leg: resting, grasping, screwing, and not screwing."""
import numpy as np
import pytest

from data.rotation import axis_angle_to_matrix, rot_z
from data.schema import make_action
from sim.experts.one_leg import BASE, OneLegExpert, hand_down
from sim.tasks.one_leg import geometry as G
from tests.conftest import hold_action



def upright(yaw: float) -> np.ndarray:
    r = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # +90 deg about x: y -> z
    return rot_z(yaw) @ r


def hole_world(env, k: int = 0):
    tp, tr = env.body_pose("top")
    return tp + tr @ G.hole_centres_local()[k], tr


def test_leg_falls_onto_table_and_rests(env):
    obs, _ = env.reset(seed=0)
    env.set_part_pose("leg", np.array([0.05, 0.2, G.TABLE_Z + 0.06]), G.LEG_REST_ROT)
    for _ in range(15):
        obs, *_ = env.step(hold_action(obs))
    pos, rot = env.body_pose("leg")
    assert abs(pos[2] - (G.TABLE_Z + G.LEG_HALF_XZ)) < 0.001  # lying on a face
    assert abs(rot[:, 1] @ np.array([0, 0, 1.0])) < 0.02  # axis horizontal
    v = env.data.qvel[env.model.jnt_dofadr[env.model.joint("leg_free").id]:][:6]
    assert np.linalg.norm(v[:3]) < 1e-3


def _move(env, obs, pos, rot, width, steps):
    for _ in range(steps):
        obs, *_ = env.step(make_action(pos - BASE, rot, width))
    return obs


def test_gripper_grasps_and_lifts_leg(env):
    obs, _ = env.reset(seed=0)
    pos, rot = env.body_pose("leg")
    axis = rot[:, 1]
    rot_hand = hand_down(np.arctan2(axis[1], axis[0]) + np.pi / 2)
    obs = _move(env, obs, pos + [0, 0, 0.08], rot_hand, 0.065, 15)
    obs = _move(env, obs, pos, rot_hand, 0.065, 10)
    obs = _move(env, obs, pos, rot_hand, 0.0, 5)
    assert 0.027 < env.gripper_width() < 0.031  # fingers stopped by the 30 mm leg
    obs = _move(env, obs, pos + [0, 0, 0.10], rot_hand, 0.0, 15)
    new_pos, _ = env.body_pose("leg")
    assert new_pos[2] - pos[2] > 0.09
    assert np.linalg.norm(new_pos - env.ee_pose_world()[0]) < 0.02


def _screw_from_rim(env, offset: np.ndarray, steps: int, seed: int = 0):
    """Top in its corner, leg upright over hole 0 (+offset), expert's twist strokes."""
    obs, _ = env.reset(seed=seed)
    env.set_part_pose("top", G.TOP_CORNER_POS, G.TOP_REST_ROT)
    hole, top_rot = hole_world(env, 0)
    up = top_rot[:, 1]
    leg_pos = hole + up * (G.ENGAGE_HEIGHT + 0.0005) + offset
    if np.linalg.norm(offset) > 0.012:  # off the hole: the peg stands on the tabletop surface
        leg_pos = hole + offset + up * (G.TOP_Y_MAX - G.SEATED_Y - G.PEG_Y[0] + 0.0005)
    env.set_part_pose("leg", leg_pos, upright(0.3))
    for _ in range(5):
        obs, *_ = env.step(hold_action(obs))
    expert = OneLegExpert()
    expert.reset(seed)
    expert.phase = "twist_grasp"
    engaged, success = False, False
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(expert.act(obs))
        engaged |= info["engaged"]
        if term:
            success = info["success"]
            assert r == 1.0
            break
    return engaged, success


def test_leg_on_hole_screwed_by_controller_reaches_success(env):
    engaged, success = _screw_from_rim(env, np.zeros(3), steps=400)
    assert engaged and success
    pos_err, ang_err, hole = env.assembly_error()
    assert pos_err < 0.0075 and ang_err < 15.0 and hole == 0


def test_leg_two_cm_off_the_hole_never_engages(env):
    engaged, success = _screw_from_rim(env, np.array([0.02, 0.0, 0.0]), steps=150)
    assert not engaged and not success
    pos_err, _, _ = env.assembly_error()
    assert pos_err > 0.01


def test_thread_requires_phase_alignment(env):
    """Resting on the rim at a wrong thread phase does not engage until twisted into phase."""
    env.reset(seed=0)
    env.set_part_pose("top", G.TOP_CORNER_POS, G.TOP_REST_ROT)
    hole, top_rot = hole_world(env, 0)
    depth = G.ENGAGE_HEIGHT
    right_yaw = (2 * np.pi / G.THREAD_PITCH * depth + np.pi) % (2 * np.pi) - np.pi
    for yaw, expect in ((right_yaw + np.radians(45), False), (right_yaw + np.radians(3), True)):
        env.thread.reset()
        # a rotation about the top's +y (hole axis) by `yaw`: world yaw of -yaw for this top
        env.set_part_pose("leg", hole + top_rot[:, 1] * depth, top_rot @ _rot_y(yaw))
        env.thread.update()
        assert (env.thread.engaged_hole == 0) is expect


def test_thread_switches_only_equalities_never_collision_filters(env):
    """The design a batched simulator can run: engaging and disengaging change eq_active and
    eq_data, never contype/conaffinity (mujoco-warp shares those across its worlds)."""
    m = env.model
    bits = (m.geom_contype.copy(), m.geom_conaffinity.copy())
    env.reset(seed=0)
    env.set_part_pose("top", G.TOP_CORNER_POS, G.TOP_REST_ROT)
    hole, top_rot = hole_world(env, 0)
    th = env.thread
    assert np.all(env.data.eq_active[th.lock_eq] == 1) and np.all(env.data.eq_active[th.weld_eq] == 0)
    depth = G.ENGAGE_HEIGHT
    yaw = (2 * np.pi / G.THREAD_PITCH * depth + np.pi) % (2 * np.pi) - np.pi  # in phase
    env.set_part_pose("leg", hole + top_rot[:, 1] * depth, top_rot @ _rot_y(yaw))
    assert th.update() and th.engaged_hole == 0
    assert env.data.eq_active[th.lock_eq[0]] == 0 and env.data.eq_active[th.weld_eq[0]] == 1
    assert np.all(env.data.eq_active[th.lock_eq[1:]] == 1)
    np.testing.assert_array_equal(m.geom_contype, bits[0])
    np.testing.assert_array_equal(m.geom_conaffinity, bits[1])
    # lifted above the engagement height: the thread lets go and the follower is locked again
    env.data.qpos[th.slide_qadr[0]] = G.ENGAGE_HEIGHT + 2 * env.cfg.thread.depth_tolerance
    assert th.update() and th.engaged_hole == -1
    assert env.data.eq_active[th.lock_eq[0]] == 1 and env.data.eq_active[th.weld_eq[0]] == 0
    assert th.slide(0) == pytest.approx(G.LOCK_HEIGHT)
    np.testing.assert_array_equal(m.geom_contype, bits[0])


def test_locked_follower_carries_the_leg_at_the_engagement_height(env):
    """Out of phase the leg rests on its hole's follower stop (not the tabletop, which its stop
    plate does not touch) at the engagement height, the peg centred by the follower's guides."""
    env.reset(seed=0)
    env.set_part_pose("top", G.TOP_CORNER_POS, G.TOP_REST_ROT)
    hole, top_rot = hole_world(env, 0)
    depth = G.ENGAGE_HEIGHT + 0.001
    wrong = (2 * np.pi / G.THREAD_PITCH * depth + np.pi) % (2 * np.pi) - np.pi + np.radians(60)
    env.set_part_pose("leg", hole + top_rot[:, 1] * depth + top_rot[:, 0] * 0.0004, top_rot @ _rot_y(wrong))
    obs = env._observe()
    for _ in range(10):
        obs, *_ = env.step(hold_action(obs))
    pos, rot = env.thread.leg_in_top()
    assert env.thread.engaged_hole == -1
    assert abs(pos[1] - G.SEATED_Y - G.ENGAGE_HEIGHT) < 0.0005  # resting on the stop, not fallen in
    assert np.hypot(pos[0] - G.hole_centres_local()[0][0], pos[2] - G.hole_centres_local()[0][2]) < 0.0006
    stop = env.model.geom("follower0_stop").id
    touching = {tuple(sorted((int(c.geom1), int(c.geom2)))) for c in env.data.contact[:env.data.ncon]}
    assert tuple(sorted((stop, env.model.geom("leg_stop_disc").id))) in touching


def test_locked_follower_holds_a_pressed_leg_within_microns(env):
    """A leg pressed onto the stop sinks no further than it would on the tabletop: the lock's
    give shifts the thread phase the leg engages at (2 pi / pitch: 38 deg per mm), so a soft
    lock changes which twists catch. The default-soft lock sank 0.64 mm under 5 N."""
    env.reset(seed=0)
    env.set_part_pose("top", G.TOP_CORNER_POS, G.TOP_REST_ROT)
    hole, top_rot = hole_world(env, 0)
    depth = G.ENGAGE_HEIGHT + 0.001
    wrong = (2 * np.pi / G.THREAD_PITCH * depth + np.pi) % (2 * np.pi) - np.pi + np.radians(60)
    env.set_part_pose("leg", hole + top_rot[:, 1] * depth, top_rot @ _rot_y(wrong))
    obs = env._observe()
    leg = env.model.body("leg").id
    sink = {}
    for force in (0.0, 10.0, 40.0):
        env.data.xfrc_applied[leg, 2] = -force
        for _ in range(5):
            obs, *_ = env.step(hold_action(obs))
        pos, _ = env.thread.leg_in_top()
        sink[force] = G.SEATED_Y + G.ENGAGE_HEIGHT - pos[1]
    assert env.thread.engaged_hole == -1
    assert abs(sink[0.0]) < 5e-6
    assert 0.0 < sink[10.0] < 3e-5  # 17 um measured
    assert sink[10.0] < sink[40.0] < 1e-4  # 68 um under four times the leg's weight and more


def test_engaged_leg_touches_nothing_of_its_follower(env):
    """Engaging drops the follower's stop STOP_CLEARANCE clear of the welded leg's plate, so a
    push on the leg reaches the thread through the weld alone; a stop left touching carried it
    as a contact the weld fought (DPPO learnt nothing from thread-engaged starts then)."""
    env.reset(seed=0)
    env.set_part_pose("top", G.TOP_CORNER_POS, G.TOP_REST_ROT)
    hole, top_rot = hole_world(env, 0)
    depth = G.ENGAGE_HEIGHT
    yaw = (2 * np.pi / G.THREAD_PITCH * depth + np.pi) % (2 * np.pi) - np.pi  # in phase
    env.set_part_pose("leg", hole + top_rot[:, 1] * depth, top_rot @ _rot_y(yaw))
    obs = env._observe()
    th = env.thread
    assert th.update() and th.engaged_hole == 0
    assert th.slide(0) == pytest.approx(depth, abs=1e-6)  # the follower at the leg's depth
    m = env.model
    follower = {g for g in range(m.ngeom) if m.geom_bodyid[g] == m.body("follower0").id}
    leg = env.model.body("leg").id
    env.data.xfrc_applied[leg, 2] = -5.0  # a push that screws it in (a steep thread does not lock)
    touched = 0
    for _ in range(3):
        obs, *_ = env.step(hold_action(obs))
        touched += sum(int(c.geom1 in follower or c.geom2 in follower) for c in env.data.contact[:env.data.ncon])
    assert th.engaged_hole == 0
    assert touched == 0
    assert th.slide(0) < depth - 0.001  # and it did screw in


def _rot_y(a):
    return axis_angle_to_matrix(np.array([0.0, 1.0, 0.0]), a)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_action_is_rejected(env, bad):
    obs, _ = env.reset(seed=0)
    a = hold_action(obs)
    a[0] = bad
    with pytest.raises(ValueError, match="NaN"):
        env.step(a)


def test_dense_reward_rises_with_progress_and_is_one_on_success():
    from sim.backends.mujoco_one_leg import OneLegMujocoEnv
    from sim.config import EnvConfig

    env = OneLegMujocoEnv(EnvConfig(randomness="none", reward="dense"))
    obs, _ = env.reset(seed=0)
    _, r_start, *_ = env.step(hold_action(obs))
    env.set_part_pose("top", G.TOP_CORNER_POS, G.TOP_REST_ROT)
    _, r_corner, *_ = env.step(hold_action(obs))
    assert 0.0 <= r_start < r_corner < 1.0
    engaged, success = _screw_from_rim(env, np.zeros(3), steps=400)
    assert success  # the terminal step's reward (asserted == 1.0 inside) is the success reward


def test_part_knocked_off_the_table_ends_the_episode(env):
    obs, _ = env.reset(seed=0)
    env.set_part_pose("leg", np.array([0.2, 0.6, G.TABLE_Z + 0.02]), G.LEG_REST_ROT)  # past the table edge
    terminated = False
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(hold_action(obs))
        if terminated:
            break
    assert terminated and info["part_lost"] and reward == 0.0 and not info["success"]
