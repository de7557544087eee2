"""Rotation conversions shared by sim, real and data (numpy, batched over leading dims).

The 6D rotation follows pytorch3d's `matrix_to_rotation_6d` (the first two *rows* of the
matrix), which is what DPPO's furniture data and furniture-bench's converters use, so
actions recorded elsewhere map onto ours without a transpose.
Quaternions are MuJoCo order (w, x, y, z) unless a function's name says `xyzw`: robosuite,
IsaacGym, polymetis and scipy use (x, y, z, w), and reading one order as the other silently
gives a different rotation, so the order is in the name and stated in every docstring.
"""
from __future__ import annotations

import numpy as np


def matrix_to_rot6d(mat: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6): first two rows, flattened."""
    mat = np.asarray(mat)
    return mat[..., :2, :].reshape(*mat.shape[:-2], 6).copy()


def rot6d_to_matrix(r6: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt; tolerant of non-orthonormal network outputs."""
    r6 = np.asarray(r6, dtype=np.float64)
    a1, a2 = r6[..., :3], r6[..., 3:6]
    n1 = np.linalg.norm(a1, axis=-1, keepdims=True)
    if np.any(n1 < 1e-8):
        raise ValueError("degenerate 6D rotation: first row has zero norm")
    b1 = a1 / n1
    b2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    n2 = np.linalg.norm(b2, axis=-1, keepdims=True)
    if np.any(n2 < 1e-8):
        raise ValueError("degenerate 6D rotation: rows are parallel")
    b2 = b2 / n2
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-2)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternion in **wxyz** order -> (..., 3, 3); normalised first, so any nonzero scale is fine."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 4) quaternion in **wxyz** order with w >= 0 (Shepperd's method, batched)."""
    m = np.asarray(m, dtype=np.float64)
    flat = m.reshape(-1, 3, 3)
    out = np.empty((flat.shape[0], 4))
    for i, r in enumerate(flat):
        tr = r[0, 0] + r[1, 1] + r[2, 2]
        if tr > 0:
            s = np.sqrt(tr + 1.0) * 2
            out[i] = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
        elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
            s = np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
            out[i] = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
        elif r[1, 1] > r[2, 2]:
            s = np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
            out[i] = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
        else:
            s = np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
            out[i] = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    out *= np.where(out[:, :1] < 0, -1.0, 1.0)
    return out.reshape(*m.shape[:-2], 4)


def quat_xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """(..., 4) **xyzw** (robosuite, IsaacGym, polymetis, scipy) -> (..., 4) **wxyz** (MuJoCo, ours)."""
    q = np.asarray(q)
    return q[..., [3, 0, 1, 2]]


def quat_wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """(..., 4) **wxyz** (MuJoCo, ours) -> (..., 4) **xyzw** (robosuite, IsaacGym, polymetis, scipy)."""
    q = np.asarray(q)
    return q[..., [1, 2, 3, 0]]


def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternion in **xyzw** order -> (..., 3, 3).

    For data recorded by robosuite (`robot0_eef_quat`), IsaacGym and furniture-bench, which
    store the scalar last; the same rotation as `quat_to_matrix(quat_xyzw_to_wxyz(q))`.
    """
    return quat_to_matrix(quat_xyzw_to_wxyz(np.asarray(q, dtype=np.float64)))


def rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vector (axis * angle in rad, right-handed) -> (..., 3, 3), batched Rodrigues.

    The form robosuite's `actions_abs` and many LeRobot datasets use for orientation; a zero
    vector is the identity (no division by the zero angle).
    """
    rv = np.asarray(rv, dtype=np.float64)
    theta = np.linalg.norm(rv, axis=-1)
    axis = np.where(theta[..., None] > 1e-12, rv / np.maximum(theta, 1e-12)[..., None], 0.0)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    s, c = np.sin(theta)[..., None, None], np.cos(theta)[..., None, None]
    return np.eye(3) + s * k + (1.0 - c) * (k @ k)


def axis_angle_to_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula for one axis (3,) and angle (rad)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_error(r_target: np.ndarray, r_current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (3,) of r_target @ r_current^T, i.e. the world-frame rotation to apply."""
    r = r_target @ r_current.T
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-9:
        return np.zeros(3)
    if np.pi - angle < 1e-6:
        # Near 180 degrees the skew part vanishes; take the axis from the symmetric part.
        axis = np.sqrt(np.clip((np.diag(r) + 1.0) / 2.0, 0.0, None))
        i = int(np.argmax(axis))
        for j in range(3):
            if j != i and r[i, j] + r[j, i] < 0:
                axis[j] = -axis[j]
        return axis / np.linalg.norm(axis) * angle
    v = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return v / (2.0 * np.sin(angle)) * angle


def angle_between(r_a: np.ndarray, r_b: np.ndarray) -> float:
    """Geodesic angle (rad) between two rotation matrices."""
    cos = np.clip((np.trace(r_a @ r_b.T) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.arccos(cos))
