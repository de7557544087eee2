"""Map a foreign LeRobot state/action vector (e.g. EE pos + quaternion + finger joints) onto ours.

LeRobot datasets from other robots put whatever their robot reports into `observation.state`
and `action`; a small `NAME=START:END` description lets them be converted without code.
Absolute poses only: deltas have no defined origin here.
"""
from __future__ import annotations

import numpy as np

from data.convert.common import gripper_command_to_width, pose_vector
from data.rotation import quat_to_matrix, quat_xyzw_to_matrix, rot6d_to_matrix, rotvec_to_matrix

LAYOUT_PARTS = {"pos": 3, "rot6d": 6, "quat_wxyz": 4, "quat_xyzw": 4, "rotvec": 3, "gripper": 1,
                "gripper_qpos": 2, "gripper_cmd": 1, "joints": 7}
ROT_PARTS = ("rot6d", "quat_wxyz", "quat_xyzw", "rotvec")


def parse_layout(spec: str | None, dim: int, what: str) -> dict[str, slice] | None:
    """'pos=0:3,quat_xyzw=3:7,gripper=7:8' -> {name: slice}; None means 'already our layout'.

    Lets a foreign LeRobot dataset (e.g. EE pos + quaternion + finger joints) be mapped onto our
    state/action without code; absolute poses only (deltas have no defined origin here).
    """
    if spec is None:
        return None
    out: dict[str, slice] = {}
    for item in spec.split(","):
        name, sep, rng = item.strip().partition("=")
        a, sep2, b = rng.partition(":")
        if not sep or not sep2 or name not in LAYOUT_PARTS:
            raise ValueError(f"--{what}-layout item {item!r}: expected NAME=START:END, "
                             f"NAME in {sorted(LAYOUT_PARTS)}")
        s = slice(int(a), int(b))
        if s.stop - s.start != LAYOUT_PARTS[name] or s.stop > dim:
            raise ValueError(f"--{what}-layout {name}={rng}: needs {LAYOUT_PARTS[name]} values inside a {dim}-D vector")
        out[name] = s
    rots = [k for k in out if k in ROT_PARTS]
    if "pos" not in out or len(rots) != 1:
        raise ValueError(f"--{what}-layout needs 'pos' and exactly one rotation ({', '.join(ROT_PARTS)})")
    if not {"gripper", "gripper_qpos", "gripper_cmd"} & set(out):
        raise ValueError(f"--{what}-layout needs a gripper part (gripper, gripper_qpos or gripper_cmd)")
    return out


def apply_layout(x: np.ndarray, layout: dict[str, slice] | None, *, joints: bool, open_width: float) -> np.ndarray:
    """Map a (T, D) vector in a foreign layout onto ours (identity when layout is None)."""
    if layout is None:
        return np.asarray(x, dtype=np.float32)
    x = np.asarray(x, dtype=np.float64)
    rot_name = next(k for k in layout if k in ROT_PARTS)
    r = x[:, layout[rot_name]]
    rot = {"rot6d": rot6d_to_matrix, "quat_wxyz": quat_to_matrix, "quat_xyzw": quat_xyzw_to_matrix,
           "rotvec": rotvec_to_matrix}[rot_name](r)
    if "gripper" in layout:
        width = x[:, layout["gripper"]][:, 0]
    elif "gripper_qpos" in layout:
        q = x[:, layout["gripper_qpos"]]
        width = q[:, 0] - q[:, 1]
    else:
        width = gripper_command_to_width(x[:, layout["gripper_cmd"]][:, 0], open_width)
    jnt = x[:, layout["joints"]] if joints and "joints" in layout else None
    if joints and jnt is None:
        raise ValueError("--joints needs a 'joints=START:END' part in --state-layout")
    return pose_vector(x[:, layout["pos"]], rot, width, jnt)
