"""Camera calibration for the cell: intrinsics from the RealSense, extrinsics from a ChArUco board
(OpenCV), written as a `data.calibration` file that the simulator reads to place its cameras.

    board at a known pose in the robot base frame (e.g. a fixture, or touched with the gripper)
    -> a few colour frames of it -> `calibrate_extrinsics` -> base_from_camera, with its
    reprojection error -> `save_calibration` -> sim `render.calibration=PATH`.

`render_board_view` draws the board as a camera with given intrinsics would see it at a given
pose (a homography of the board's image): the known-pose images the tests check the whole chain
on, and a preview of where a board must stand to fill a camera's view. `overlay` puts a real
frame and the simulator's render of the same camera side by side and blended, to check the match.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from data.calibration import CameraCalibration


@dataclass(frozen=True)
class BoardSpec:
    """A ChArUco board: squares_x x squares_y chessboard squares of `square_m`, ArUco markers of
    `marker_m` in the white ones, from `dictionary` (OpenCV's predefined names)."""

    squares_x: int = 5
    squares_y: int = 7
    square_m: float = 0.04
    marker_m: float = 0.03
    dictionary: str = "DICT_5X5_100"

    def board(self):
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_m, self.marker_m, d)

    @property
    def size_m(self) -> tuple[float, float]:
        return self.squares_x * self.square_m, self.squares_y * self.square_m


def intrinsics_from_realsense(profile: Any) -> dict[str, Any]:
    """fx, fy, cx, cy, dist and image_wh of a pyrealsense2 video stream profile (a live camera's
    or a software device's)."""
    intr = profile.as_video_stream_profile().get_intrinsics()
    return {"fx": float(intr.fx), "fy": float(intr.fy), "cx": float(intr.ppx), "cy": float(intr.ppy),
            "dist": tuple(float(c) for c in intr.coeffs), "image_wh": (int(intr.width), int(intr.height))}


def _rigid(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = r, np.ravel(t)
    return out


def render_board_view(spec: BoardSpec, camera_matrix: np.ndarray, camera_from_board: np.ndarray,
                      image_wh: tuple[int, int], px_per_m: float = 4000.0, background: int = 128,
                      supersample: int = 4) -> np.ndarray:
    """(H, W, 3) uint8: the board seen by a pinhole camera (no distortion) at `camera_from_board`,
    drawn at `supersample` times the resolution and area-averaged down (no aliased edges)."""
    ss = int(supersample)
    # pixel centres at integers in both images: u_ss = ss * u + (ss - 1) / 2
    up = np.array([[ss, 0, (ss - 1) / 2], [0, ss, (ss - 1) / 2], [0, 0, 1.0]])
    camera_matrix = up @ np.asarray(camera_matrix, dtype=float)
    w_m, h_m = spec.size_m
    img = spec.board().generateImage((int(round(w_m * px_per_m)), int(round(h_m * px_per_m))), marginSize=0)
    s = 1.0 / px_per_m  # board image pixel -> board metres (x right, y down the image, as the board's axes);
    # pixel i covers [i, i + 1) / px_per_m, its centre (where warpPerspective samples it) at i + 0.5
    pixel_to_board = np.array([[s, 0, 0.5 * s], [0, s, 0.5 * s], [0, 0, 1.0]])
    r, t = camera_from_board[:3, :3], camera_from_board[:3, 3]
    h = camera_matrix @ np.column_stack([r[:, 0], r[:, 1], t]) @ pixel_to_board
    w, hgt = image_wh
    view = cv2.warpPerspective(img, h, (w * ss, hgt * ss), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=background)
    view = cv2.resize(view, (w, hgt), interpolation=cv2.INTER_AREA)
    return np.repeat(view[..., None], 3, axis=-1)


def detect_board_pose(image: np.ndarray, spec: BoardSpec, camera_matrix: np.ndarray,
                      dist: Sequence[float] = (0, 0, 0, 0, 0), min_corners: int = 6) -> tuple[np.ndarray, int, float]:
    """camera_from_board (4x4), the ChArUco corners used and their RMS reprojection error (px).
    Too few corners (board not in view, blurred, occluded) is an error naming what was found."""
    board = spec.board()
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    corners, ids, markers, _ = cv2.aruco.CharucoDetector(board).detectBoard(gray)
    n = 0 if ids is None else len(ids)
    if n < min_corners:
        found = 0 if markers is None else len(markers)
        raise ValueError(f"board not found: {n} ChArUco corners ({found} markers) in the image, need {min_corners}")
    obj, img_pts = board.matchImagePoints(corners, ids)
    dist = np.asarray(dist, dtype=float)
    ok, rvec, tvec = cv2.solvePnP(obj, img_pts, camera_matrix, dist, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise ValueError("solvePnP found no board pose")
    proj, _ = cv2.projectPoints(obj, rvec, tvec, camera_matrix, dist)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img_pts.reshape(-1, 2)) ** 2, axis=1))))
    return _rigid(cv2.Rodrigues(rvec)[0], tvec), n, rms


def _mean_rotation(rs: Sequence[np.ndarray]) -> np.ndarray:
    u, _, vt = np.linalg.svd(np.sum(rs, axis=0))
    r = u @ vt
    return r if np.linalg.det(r) > 0 else u @ np.diag([1, 1, -1]) @ vt


def calibrate_extrinsics(images: Sequence[np.ndarray], spec: BoardSpec, intrinsics: dict[str, Any], camera: str,
                         parent_from_board: Sequence[np.ndarray] | np.ndarray, parent: str = "base",
                         source: str = "") -> CameraCalibration:
    """The camera's pose in `parent`'s frame from views of a board whose pose there is known:
    one `parent_from_board` for a fixed board, or one per image (a board carried by the hand, for
    a fixed camera, or a fixed board seen by a wrist camera with the hand's pose per image)."""
    k = np.array([[intrinsics["fx"], 0, intrinsics["cx"]], [0, intrinsics["fy"], intrinsics["cy"]], [0, 0, 1.0]])
    dist = intrinsics.get("dist", (0, 0, 0, 0, 0))
    boards = np.asarray(parent_from_board, dtype=float)
    boards = np.repeat(boards[None], len(images), axis=0) if boards.ndim == 2 else boards
    if len(boards) != len(images):
        raise ValueError(f"{len(images)} images but {len(boards)} board poses")
    poses, errors = [], []
    for img, p_b in zip(images, boards):
        c_b, _, rms = detect_board_pose(img, spec, k, dist)
        poses.append(p_b @ np.linalg.inv(c_b))
        errors.append(rms)
    r = _mean_rotation([p[:3, :3] for p in poses])
    t = np.mean([p[:3, 3] for p in poses], axis=0)
    spread = float(np.max([np.linalg.norm(p[:3, 3] - t) for p in poses]))
    return CameraCalibration(camera=camera, image_wh=tuple(intrinsics["image_wh"]), fx=k[0, 0], fy=k[1, 1],
                             cx=k[0, 2], cy=k[1, 2], dist=tuple(dist), parent=parent,
                             parent_from_camera=tuple(map(tuple, _rigid(r, t))), rms_px=float(np.mean(errors)),
                             source=source, extra={"views": len(images), "position_spread_m": spread})


def overlay(real: np.ndarray, sim: np.ndarray, alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(blend, side by side) of a real frame and the simulator's render of the same camera (the
    render resized to the frame): misplaced edges show as double contours in the blend."""
    if sim.shape[:2] != real.shape[:2]:
        sim = cv2.resize(sim, (real.shape[1], real.shape[0]), interpolation=cv2.INTER_LINEAR)
    blend = cv2.addWeighted(real, 1.0 - alpha, sim, alpha, 0.0)
    return blend, np.concatenate([real, sim], axis=1)
