"""Camera calibration files: what a real camera is (intrinsics) and where it stands (extrinsics),
in one JSON file that the hardware side writes (real/calibration.py) and the simulator reads to
place its cameras where the cell's are (sim.backends.mujoco_one_leg, `render.calibration`).

Frames: `parent_from_camera` is the camera's pose in its parent's frame, the parent being the
robot base (a fixed camera) or the hand (a wrist camera), with the camera axes of OpenCV (x
right, y down, z forward). MuJoCo's cameras look along -z with y up: `mujoco_camera_rotation`
turns one into the other.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

FORMAT = "pixel_dppo.camera_calibration"
VERSION = 1
# OpenCV camera axes -> MuJoCo camera axes (x right, y up, looking along -z)
CV_TO_MUJOCO = np.diag([1.0, -1.0, -1.0])


@dataclass
class CameraCalibration:
    camera: str  # our camera name: front | wrist
    image_wh: tuple[int, int]  # the colour stream the intrinsics are for
    fx: float
    fy: float
    cx: float
    cy: float
    dist: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)  # OpenCV's k1 k2 p1 p2 k3
    parent: str = "base"  # base | hand
    parent_from_camera: tuple[tuple[float, ...], ...] = tuple(map(tuple, np.eye(4)))
    rms_px: float | None = None  # reprojection error of the extrinsics fit
    source: str = ""  # how it was made (serial, board, date)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.parent not in ("base", "hand"):
            raise ValueError(f"camera '{self.camera}': parent must be 'base' or 'hand', got '{self.parent}'")
        t = np.asarray(self.parent_from_camera, dtype=float)
        if t.shape != (4, 4) or not np.allclose(t[3], [0, 0, 0, 1]):
            raise ValueError(f"camera '{self.camera}': parent_from_camera must be a 4x4 rigid transform")
        r = t[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise ValueError(f"camera '{self.camera}': parent_from_camera's rotation is not a rotation")
        if min(self.fx, self.fy) <= 0 or min(self.image_wh) <= 0:
            raise ValueError(f"camera '{self.camera}': focal lengths and image size must be positive")

    @property
    def transform(self) -> np.ndarray:
        return np.asarray(self.parent_from_camera, dtype=float)

    def camera_matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def fovy_deg(self, crop: Sequence[int] | None = None) -> float:
        """Vertical field of view of the region the policy sees: `crop` = (x, y, w, h) of the
        colour image (None: all of it)."""
        h = crop[3] if crop is not None else self.image_wh[1]
        return math.degrees(2 * math.atan(0.5 * h / self.fy))

    def principal_offset_px(self, crop: Sequence[int] | None = None) -> tuple[float, float]:
        """How far the principal point lies from the crop's centre (a simulated camera's is at
        the centre: this is the part of the intrinsics it cannot copy)."""
        x, y, w, h = crop if crop is not None else (0, 0, *self.image_wh)
        return self.cx - (x + w / 2), self.cy - (y + h / 2)


def mujoco_camera_rotation(parent_from_camera_cv: np.ndarray) -> np.ndarray:
    """The rotation a MuJoCo camera needs to look where an OpenCV-convention camera looks."""
    return np.asarray(parent_from_camera_cv, dtype=float)[:3, :3] @ CV_TO_MUJOCO


def save_calibration(cals: Sequence[CameraCalibration], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "cameras": [asdict(c) for c in cals]},
                               indent=2))
    return path


def load_calibration(path: str | Path) -> dict[str, CameraCalibration]:
    """{camera name: calibration}; a file of another format or version is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no camera calibration at {path}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a calibration file (not JSON: {e})") from e
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{path} is not a {FORMAT} v{VERSION} file")
    out = {}
    for c in doc["cameras"]:
        c = dict(c)
        c["image_wh"] = tuple(c["image_wh"])
        c["dist"] = tuple(c["dist"])
        c["parent_from_camera"] = tuple(map(tuple, c["parent_from_camera"]))
        cal = CameraCalibration(**c)
        out[cal.camera] = cal
    return out
