"""Quaternion-order and rotation-vector helpers of data/rotation.py, against values written by hand.

The converters read robosuite / IsaacGym / furniture-bench quaternions (xyzw) and axis-angle
actions through these functions; a swapped order or a sign slip gives valid-looking but wrong
rotations, so the expected matrices here are spelled out, not recomputed with the helpers.
"""
from __future__ import annotations

import numpy as np
import pytest

from data.rotation import (axis_angle_to_matrix, matrix_to_quat, quat_to_matrix, quat_wxyz_to_xyzw, quat_xyzw_to_matrix,
                           quat_xyzw_to_wxyz, rotation_error, rotvec_to_matrix)

S45 = np.sin(np.pi / 4)
RZ90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # +90 deg about z
RX90 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # +90 deg about x


def random_xyzw(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_quaternion_orders_known_values():
    # +90 deg about z is (w, x, y, z) = (c, 0, 0, s) and (x, y, z, w) = (0, 0, s, c)
    np.testing.assert_allclose(quat_to_matrix([S45, 0, 0, S45]), RZ90, atol=1e-12)
    np.testing.assert_allclose(quat_xyzw_to_matrix([0, 0, S45, S45]), RZ90, atol=1e-12)
    np.testing.assert_allclose(quat_xyzw_to_matrix([S45, 0, 0, S45]), RX90, atol=1e-12)
    # the same four numbers read in the other order are a different rotation: the order matters
    assert not np.allclose(quat_xyzw_to_matrix([S45, 0, 0, S45]), quat_to_matrix([S45, 0, 0, S45]))
    # identity: scalar first in wxyz, last in xyzw
    np.testing.assert_allclose(quat_to_matrix([1, 0, 0, 0]), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(quat_xyzw_to_matrix([0, 0, 0, 1]), np.eye(3), atol=1e-12)


def test_quaternion_reorder_round_trips():
    q = random_xyzw(16)
    np.testing.assert_array_equal(quat_xyzw_to_wxyz(q)[:, 0], q[:, 3])  # scalar moves to the front
    np.testing.assert_array_equal(quat_wxyz_to_xyzw(quat_xyzw_to_wxyz(q)), q)
    np.testing.assert_allclose(quat_xyzw_to_matrix(q), quat_to_matrix(quat_xyzw_to_wxyz(q)), atol=1e-12)
    # matrix -> wxyz quaternion (w >= 0) gives back q up to the sign of the double cover
    back = matrix_to_quat(quat_xyzw_to_matrix(q))
    assert np.all(back[:, 0] >= 0)
    expected = quat_xyzw_to_wxyz(q) * np.sign(q[:, 3:4])
    np.testing.assert_allclose(back, expected, atol=1e-9)


def test_quaternion_scale_and_sign_do_not_change_the_rotation():
    q = random_xyzw(8, seed=1)
    r = quat_xyzw_to_matrix(q)
    np.testing.assert_allclose(quat_xyzw_to_matrix(3.0 * q), r, atol=1e-12)
    np.testing.assert_allclose(quat_xyzw_to_matrix(-q), r, atol=1e-12)
    np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)


def test_rotvec_known_values_and_right_handed():
    np.testing.assert_allclose(rotvec_to_matrix([0, 0, np.pi / 2]), RZ90, atol=1e-12)
    np.testing.assert_allclose(rotvec_to_matrix([np.pi / 2, 0, 0]), RX90, atol=1e-12)
    # +90 deg about z turns the x axis into the y axis (right-handed, active rotation)
    np.testing.assert_allclose(rotvec_to_matrix([0, 0, np.pi / 2]) @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-12)
    # half a turn about x flips y and z
    np.testing.assert_allclose(rotvec_to_matrix([np.pi, 0, 0]), np.diag([1.0, -1.0, -1.0]), atol=1e-12)


def test_rotvec_zero_and_tiny_angles_are_finite():
    np.testing.assert_array_equal(rotvec_to_matrix(np.zeros(3)), np.eye(3))
    tiny = rotvec_to_matrix([1e-14, 0, 0])
    assert np.all(np.isfinite(tiny))
    np.testing.assert_allclose(tiny, np.eye(3), atol=1e-12)


def test_rotvec_batched_matches_single_axis_formula_and_round_trips():
    rv = np.random.default_rng(2).normal(size=(2, 5, 3))
    rv *= (np.pi * 0.9 / np.linalg.norm(rv, axis=-1, keepdims=True)) * np.random.default_rng(3).random((2, 5, 1))
    r = rotvec_to_matrix(rv)
    assert r.shape == (2, 5, 3, 3)
    for i in range(2):
        for j in range(5):
            angle = np.linalg.norm(rv[i, j])
            np.testing.assert_allclose(r[i, j], axis_angle_to_matrix(rv[i, j], angle), atol=1e-12)
            # rotation_error(R, I) is the rotation vector of R: the inverse map for angles below pi
            np.testing.assert_allclose(rotation_error(r[i, j], np.eye(3)), rv[i, j], atol=1e-9)


def test_against_scipy_conventions():
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    q = random_xyzw(32, seed=4)
    np.testing.assert_allclose(quat_xyzw_to_matrix(q), rotation.from_quat(q).as_matrix(), atol=1e-12)  # scipy: xyzw
    rv = np.random.default_rng(5).normal(size=(32, 3))
    np.testing.assert_allclose(rotvec_to_matrix(rv), rotation.from_rotvec(rv).as_matrix(), atol=1e-12)
