"""The IsaacGym adapter's pure mappings (sim/backends/isaacgym_one_leg.py): furniture-bench's
observation and action formats onto ours, checked against our own MuJoCo model and rotation
code and against the Franka URDF that furniture-bench ships (IsaacGym itself cannot run here)."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from data.rotation import matrix_to_quat, matrix_to_rot6d, quat_wxyz_to_xyzw, rot6d_to_matrix
from sim.backends import isaacgym_one_leg as A
from sim.tasks.one_leg import geometry as G


def _our_ee_on_link7(env):
    m, d = env.model, env.data
    link7 = m.body("robot0_link7").id
    r7, p7 = d.xmat[link7].reshape(3, 3), d.xpos[link7]
    rs, ps = d.site_xmat[env.ee_site].reshape(3, 3), d.site_xpos[env.ee_site]
    return r7, p7, r7.T @ rs, r7.T @ (ps - p7)


def _xyzw(r):
    return quat_wxyz_to_xyzw(matrix_to_quat(r))


def test_frame_map_is_what_both_robot_models_say(env):
    """Ours: the grip site is -135 deg and 0.2035 m along link 7's z; theirs (furniture-bench's
    franka_panda.urdf): the hand joint's -45 deg and 0.107 m, then k_ee_link 0.103399 m."""
    env.reset(seed=0)
    _, _, r_rel, p_rel = _our_ee_on_link7(env)
    np.testing.assert_allclose(r_rel, A.rot_z(-135.0), atol=2e-3)  # robosuite's site: 0.04 deg off
    np.testing.assert_allclose(p_rel, [0, 0, 0.2035], atol=1e-4)
    from sim.assets import furniture_bench_asset_dir

    urdf = furniture_bench_asset_dir().parent / "franka_description_ros/franka_description/robots/franka_panda.urdf"
    joints = {j.find("child").get("link"): j.find("origin") for j in ET.parse(urdf).getroot().iter("joint")}
    hand, k_ee = joints["panda_hand"], joints["k_ee_link"]
    yaw = np.degrees(float(hand.get("rpy").split()[2]))
    reach = float(hand.get("xyz").split()[2]) + float(k_ee.get("xyz").split()[2])
    assert A.ISAAC_EE_FROM_LINK7 == pytest.approx((yaw, reach), abs=1e-6)
    derived = A.FrameMap.from_models(G.ROBOT_BASE_POS, (-135.0, float(p_rel[2])))
    default = A.FrameMap()
    np.testing.assert_allclose(derived.base_offset, default.base_offset, atol=1e-12)
    np.testing.assert_allclose(derived.ee_rot, default.ee_rot, atol=1e-12)
    assert derived.ee_shift == pytest.approx(default.ee_shift, abs=1e-4)


def test_their_robot_state_becomes_our_state_observation(env):
    """Their k_ee_link pose of the same arm, in their base frame (15 mm lower base), maps onto
    our state observation: EE position, 6D rotation, finger gap, arm joints."""
    obs, _ = env.reset(seed=3)
    r7, p7, _, _ = _our_ee_on_link7(env)
    r_k = r7 @ A.rot_z(A.ISAAC_EE_FROM_LINK7[0])
    p_k = p7 + r7[:, 2] * A.ISAAC_EE_FROM_LINK7[1]
    their_base = np.asarray(G.ROBOT_BASE_POS) + np.asarray(A.FrameMap().base_offset)
    f64 = dict(dtype=torch.float64)
    q = env.data.qpos[env.arm_qadr]
    robot_state = {"ee_pos": torch.tensor(p_k - their_base, **f64)[None],
                   "ee_quat": torch.tensor(_xyzw(r_k), **f64)[None],
                   "gripper_width": torch.tensor([[env.gripper_width()]], **f64),
                   "joint_positions": torch.tensor(q, **f64)[None]}
    state = A.state_from_isaac(robot_state, A.FrameMap(), include_joints=True)
    ours = np.concatenate([env.state_vector(), q])
    assert state.shape == (1, 17) and state.dtype == torch.float32
    np.testing.assert_allclose(state[0, :3].numpy(), ours[:3], atol=5e-5)  # the site's 0.04 deg, 0.2 m out
    np.testing.assert_allclose(state[0, 3:9].numpy(), ours[3:9], atol=2e-3)
    np.testing.assert_allclose(state[0, 9:].numpy(), ours[9:], atol=1e-6)


def test_their_part_poses_become_our_parts_vector(env):
    """parts_poses rows 0 (tabletop) and 4 (leg4) of (5 parts + obstacle) x 7, robot frame, xyzw."""
    env.reset(seed=7)
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(6, 7))
    their_base = np.asarray(G.ROBOT_BASE_POS) + np.asarray(A.FrameMap().base_offset)
    for i, name in ((0, "top"), (4, "leg")):
        pos, rot = env.body_pose(name)
        rows[i] = np.concatenate([pos - their_base, _xyzw(rot)])
    parts = A.parts_from_isaac(torch.tensor(rows.reshape(1, -1)), A.FrameMap())
    assert parts.shape == (1, 18)
    np.testing.assert_allclose(parts[0].numpy(), env.parts_vector(), atol=1e-6)


def test_our_actions_become_theirs_and_back():
    """Absolute base-frame targets in our EE convention -> their k_ee_link targets (rot_6d rows,
    action_type 'pos') that `ee_from_isaac` maps back exactly; finger-gap targets -> a gripper
    sign past their switching margin."""
    rng = np.random.default_rng(1)
    n = 16
    rots = [rot6d_to_matrix(rng.normal(size=6)) for _ in range(n)]
    widths = np.linspace(0.0, 0.08, n)
    ours = np.concatenate([rng.uniform(-0.3, 0.6, (n, 3)), np.stack([matrix_to_rot6d(r) for r in rots]),
                           widths[:, None]], axis=1)
    fm = A.FrameMap()
    theirs = A.action_to_isaac(torch.tensor(ours), fm, close_below=0.0325).numpy()
    assert theirs.shape == (n, 10)
    r_theirs = np.stack([rot6d_to_matrix(t[3:9]) for t in theirs])
    np.testing.assert_allclose(theirs[:, 3:9], np.stack([matrix_to_rot6d(r) for r in r_theirs]), atol=1e-9)
    back_pos, back_rot = A.ee_from_isaac(torch.tensor(theirs[:, :3]),
                                         torch.tensor(np.stack([_xyzw(r) for r in r_theirs])), fm)
    np.testing.assert_allclose(back_pos.numpy(), ours[:, :3], atol=1e-9)
    np.testing.assert_allclose(back_rot.numpy(), np.stack(rots), atol=1e-9)
    # the two EE points differ by ee_shift along the approach axis, the frames by 90 deg about it
    np.testing.assert_allclose(np.linalg.norm(theirs[:, :3] - (ours[:, :3] - fm.base_offset), axis=1), fm.ee_shift,
                               atol=1e-9)
    grip = theirs[:, 9]
    np.testing.assert_array_equal(grip, np.where(widths < 0.0325, 1.0, -1.0))
    assert np.all(np.abs(grip) > A.ISAAC_GRASP_MARGIN)


def test_their_images_become_ours():
    """color_image1 is the wrist camera, color_image2 the front one; RGBA -> RGB, area-resized
    from their 224x224 to our size, uint8."""
    n = 2
    wrist = torch.zeros(n, 224, 224, 4, dtype=torch.uint8)
    wrist[..., 0] = 200
    front = torch.zeros(n, 224, 224, 4, dtype=torch.uint8)
    front[:, :112, :, 2] = 255  # top half blue
    out = A.images_from_isaac({"color_image1": wrist, "color_image2": front}, ("front", "wrist"), (96, 96))
    assert set(out) == {"rgb/front", "rgb/wrist"}
    assert out["rgb/wrist"].shape == (n, 96, 96, 3) and out["rgb/wrist"].dtype == torch.uint8
    assert torch.all(out["rgb/wrist"][..., 0] == 200) and torch.all(out["rgb/wrist"][..., 1:] == 0)
    assert torch.all(out["rgb/front"][:, :48, :, 2] == 255) and torch.all(out["rgb/front"][:, 48:, :, 2] == 0)
    with pytest.raises(ValueError, match="no 'side' camera"):
        A.images_from_isaac({"color_image1": wrist}, ("side",), (96, 96))


def test_isaacgym_config_maps_from_hydra():
    from sim.make import env_config_from_hydra
    from tests.conftest import compose_config

    cfg = env_config_from_hydra(compose_config("finetune", ["sim=isaacgym", "sim.isaacgym.close_below=0.02"]))
    assert cfg.isaacgym.close_below == 0.02 and cfg.isaacgym.headless is True
