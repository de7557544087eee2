import numpy as np
import pytest

from data.rotation import matrix_to_quat, matrix_to_rot6d, quat_to_matrix, rot6d_to_matrix, rotation_error
from data.schema import ActionSchema, ObsSchema, make_action, split_action


def random_rotations(n, seed=0):
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return quat_to_matrix(q / np.linalg.norm(q, axis=1, keepdims=True))


def test_rot6d_round_trip_and_orthonormal():
    r = random_rotations(64)
    back = rot6d_to_matrix(matrix_to_rot6d(r))
    np.testing.assert_allclose(back, r, atol=1e-9)
    # noisy 6D (as a network outputs) still maps to a proper rotation
    noisy = matrix_to_rot6d(r) + np.random.default_rng(1).normal(0, 0.05, (64, 6))
    m = rot6d_to_matrix(noisy)
    np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-9)


def test_rot6d_is_first_two_rows_pytorch3d_convention():
    r = random_rotations(1)[0]
    np.testing.assert_allclose(matrix_to_rot6d(r), np.concatenate([r[0], r[1]]))


def test_quaternion_round_trip_and_rotation_error():
    r = random_rotations(32, seed=3)
    np.testing.assert_allclose(quat_to_matrix(matrix_to_quat(r)), r, atol=1e-9)
    assert np.linalg.norm(rotation_error(r[0], r[0])) < 1e-9
    # 180-degree case has a well-defined angle
    flip = np.diag([1.0, -1.0, -1.0])
    assert np.isclose(np.linalg.norm(rotation_error(flip, np.eye(3))), np.pi, atol=1e-6)


def test_obs_schema_shapes_and_checks():
    s = ObsSchema(cameras=("front", "wrist"), image_hw=(64, 80), include_joints=True)
    specs = s.specs()
    assert specs["rgb/front"].shape == (64, 80, 3) and specs["rgb/front"].dtype == "uint8"
    assert specs["state"].shape == (17,) and specs["parts"].shape == (18,)
    good = {k: np.zeros(v.shape, v.dtype) for k, v in specs.items()}
    s.check(good)
    with pytest.raises(KeyError, match="rgb/wrist"):
        s.check({k: v for k, v in good.items() if k != "rgb/wrist"})
    with pytest.raises(TypeError, match="float32"):
        s.check({**good, "state": good["state"].astype(np.float64)})
    with pytest.raises(ValueError, match="shape"):
        s.check({**good, "rgb/front": np.zeros((96, 96, 3), np.uint8)})
    assert ObsSchema.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="version"):
        ObsSchema.from_dict({**s.to_dict(), "version": 99})


def test_action_pack_unpack_and_nan_rejected():
    r = random_rotations(5, seed=4)
    pos = np.random.default_rng(5).uniform(-1, 1, (5, 3))
    a = make_action(pos, r, np.linspace(0, 0.08, 5))
    assert a.shape == (5, 10) and a.dtype == np.float32
    p2, r2, g2 = split_action(a)
    np.testing.assert_allclose(p2, pos, atol=1e-6)
    np.testing.assert_allclose(r2, r, atol=1e-5)
    np.testing.assert_allclose(g2, np.linspace(0, 0.08, 5), atol=1e-7)
    spec = ActionSchema()
    spec.check(a, batch_dims=1)
    a[2, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        spec.check(a, batch_dims=1)


def test_env_observations_follow_schema(env):
    obs, info = env.reset(seed=0)
    env.obs_schema.check(obs)
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (10,)
    assert set(info) >= {"success", "engaged"}
