"""Camera calibration (issue 15, item 4): ChArUco extrinsics round-trip on synthetic views of known
pose, the calibration file, RealSense intrinsics, and the simulator placing its cameras from it."""
import numpy as np
import pytest

from data.calibration import CameraCalibration, load_calibration, mujoco_camera_rotation, save_calibration
from data.rotation import axis_angle_to_matrix
from real.calibration import (BoardSpec, _rigid, calibrate_extrinsics, detect_board_pose, intrinsics_from_realsense,
                              overlay, render_board_view)

K = np.array([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])
INTR = {"fx": 600.0, "fy": 600.0, "cx": 320.0, "cy": 240.0, "dist": (0.0,) * 5, "image_wh": (640, 480)}


def _errors(a, b) -> tuple[float, float]:
    """Position (mm) and rotation (deg) between two rigid transforms."""
    cos = np.clip((np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2, -1, 1)
    return float(np.linalg.norm(a[:3, 3] - b[:3, 3]) * 1000), float(np.degrees(np.arccos(cos)))


@pytest.mark.parametrize("angle_deg, t", [(10, [-0.10, -0.14, 0.45]), (25, [-0.09, -0.12, 0.55]),
                                          (40, [-0.05, -0.10, 0.70])])
def test_board_pose_from_a_synthetic_view_of_known_pose(angle_deg, t):
    """Measured: 0.6-0.9 mm and 0.03-0.10 deg at 0.45-0.7 m, reprojection 0.08-0.10 px."""
    truth = _rigid(axis_angle_to_matrix(np.array([1.0, 0.2, 0.1]), np.radians(angle_deg)), t)
    img = render_board_view(BoardSpec(), K, truth, (640, 480))
    est, corners, rms = detect_board_pose(img, BoardSpec(), K)
    mm, deg = _errors(est, truth)
    assert corners == 24 and rms < 0.3
    assert mm < 2.0 and deg < 0.3, (mm, deg)


def test_extrinsics_from_several_views_and_the_file_round_trip(tmp_path):
    """A fixed camera, a board carried to three known poses in the base frame (as a board held by
    the gripper): the camera's base pose within 1 mm and 0.1 deg, saved and read back."""
    base_from_camera = _rigid(axis_angle_to_matrix(np.array([0.3, 1.0, 0.2]), np.radians(120)), [0.9, -0.3, 0.6])
    views, boards = [], []
    for ang, t in [(15, [-0.10, -0.12, 0.50]), (30, [-0.06, -0.10, 0.60]), (5, [-0.12, -0.14, 0.55])]:
        cam_from_board = _rigid(axis_angle_to_matrix(np.array([1.0, -0.3, 0.2]), np.radians(ang)), t)
        views.append(render_board_view(BoardSpec(), K, cam_from_board, (640, 480)))
        boards.append(base_from_camera @ cam_from_board)
    cal = calibrate_extrinsics(views, BoardSpec(), INTR, "front", np.stack(boards), source="synthetic")
    mm, deg = _errors(cal.transform, base_from_camera)
    assert mm < 1.0 and deg < 0.1, (mm, deg)
    assert cal.rms_px < 0.3 and cal.extra["views"] == 3
    path = save_calibration([cal], tmp_path / "cell.json")
    again = load_calibration(path)["front"]
    assert again == cal
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a pixel_dppo.camera_calibration"):
        load_calibration(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="board not found"):
        detect_board_pose(np.full((480, 640, 3), 128, np.uint8), BoardSpec(), K)


def test_intrinsics_come_from_the_realsense_stream():
    """pyrealsense2's stream intrinsics (a software device here, as a recorded or live camera
    gives them) become the calibration's."""
    from real.cameras import CameraConfig, SoftwareCamera

    cam = SoftwareCamera(CameraConfig(name="front", width=640, height=480, fps=30),
                         intrinsics={"fx": 612.5, "fy": 611.0, "cx": 318.2, "cy": 242.7})
    intr = intrinsics_from_realsense(cam._profile)
    assert intr["image_wh"] == (640, 480)
    assert (intr["fx"], intr["fy"], intr["cx"], intr["cy"]) == pytest.approx((612.5, 611.0, 318.2, 242.7), abs=1e-3)


def test_the_simulator_places_its_cameras_from_the_calibration(tmp_path):
    """The front camera moves to the calibrated base pose (MuJoCo's -z view axis from OpenCV's
    +z), its fovy is that of the crop the policy sees; a wrist camera is placed on the hand
    relative to the EE frame; renders against a real frame overlay."""
    from sim.backends.mujoco_one_leg import OneLegMujocoEnv
    from sim.config import EnvConfig
    from sim.tasks.one_leg import geometry as G

    base_from_cam = _rigid(axis_angle_to_matrix(np.array([0.2, 1.0, 0.1]), np.radians(110)), [0.95, -0.25, 0.35])
    ee_from_wrist = _rigid(axis_angle_to_matrix(np.array([0.0, 0.0, 1.0]), np.radians(90)), [0.06, 0.0, -0.04])
    cals = [CameraCalibration("front", (1280, 720), 910.0, 910.0, 640.0, 360.0,
                              parent_from_camera=tuple(map(tuple, base_from_cam))),
            CameraCalibration("wrist", (640, 480), 380.0, 380.0, 320.0, 240.0, parent="hand",
                              parent_from_camera=tuple(map(tuple, ee_from_wrist)))]
    path = save_calibration(cals, tmp_path / "cell.json")
    cfg = EnvConfig(obs_mode="pixel")
    cfg.render.calibration = str(path)
    env = OneLegMujocoEnv(cfg)
    obs, _ = env.reset(seed=0)
    m, d = env.model, env.data
    front = m.camera("front").id
    np.testing.assert_allclose(d.cam_xpos[front], G.ROBOT_BASE_POS + base_from_cam[:3, 3], atol=1e-9)
    r_mj = d.cam_xmat[front].reshape(3, 3)
    np.testing.assert_allclose(r_mj, mujoco_camera_rotation(base_from_cam), atol=1e-6)
    # MuJoCo looks along its -z with y up; OpenCV along +z with y down; x is right in both
    np.testing.assert_allclose(-r_mj[:, 2], base_from_cam[:3, 2], atol=1e-6)
    np.testing.assert_allclose(r_mj[:, 1], -base_from_cam[:3, 1], atol=1e-6)
    np.testing.assert_allclose(r_mj[:, 0], base_from_cam[:3, 0], atol=1e-6)
    # 96x96 from 1280x720: the centred 720x720 crop, so fovy = 2 atan(360 / 910)
    assert m.cam_fovy[front] == pytest.approx(np.degrees(2 * np.arctan(360 / 910)), abs=1e-9)
    wrist = m.camera("wrist").id
    ee = np.eye(4)
    ee[:3, :3], ee[:3, 3] = d.site_xmat[env.ee_site].reshape(3, 3), d.site_xpos[env.ee_site]
    np.testing.assert_allclose(d.cam_xpos[wrist], (ee @ ee_from_wrist)[:3, 3], atol=1e-6)
    np.testing.assert_allclose(d.cam_xmat[wrist].reshape(3, 3), mujoco_camera_rotation(ee @ ee_from_wrist), atol=1e-6)
    assert obs["rgb/front"].std() > 10
    blend, side = overlay(np.zeros((480, 640, 3), np.uint8), obs["rgb/front"])
    assert blend.shape == (480, 640, 3) and side.shape == (480, 1280, 3)
    assert abs(float(blend.mean()) - 0.5 * float(side[:, 640:].mean())) < 1.0
    env.close()
