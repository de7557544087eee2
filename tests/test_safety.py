"""real/safety.py: chunk limits (shared with the sim's clip) and the watchdog."""
import time

import numpy as np
import pytest

from data.rotation import angle_between, axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix
from real.safety import SafetyConfig, SafetyLayer, SafetyStop, Watchdog

DOWN = np.diag([1.0, -1.0, -1.0])  # EE pointing down
START = np.array([0.5, 0.0, 0.2])


def _chunk(points, rot=DOWN, width=0.04):
    points = np.atleast_2d(points)
    out = np.zeros((len(points), 10))
    out[:, :3], out[:, 3:9], out[:, 9] = points, matrix_to_rot6d(rot), width
    return out


def test_a_safe_chunk_passes_unchanged():
    layer = SafetyLayer(SafetyConfig())
    acts = _chunk(START + np.outer(np.arange(1, 5), [0.01, 0, 0]))  # 0.1 m/s at dt 0.1
    out = layer.check_chunk(acts, START, DOWN, dt=0.1)
    assert np.allclose(out, acts) and layer.summary() == {}


def test_nan_stops_and_is_counted():
    layer = SafetyLayer(SafetyConfig())
    acts = _chunk([START, START])
    acts[1, 4] = np.nan
    with pytest.raises(SafetyStop, match="NaN/Inf"):
        layer.check_chunk(acts, START, DOWN, dt=0.1)
    assert layer.summary() == {"non_finite": 1} and layer.events[-1].kind == "non_finite"


def test_workspace_clip_or_stop():
    acts = _chunk([[0.5, 0.0, -0.2]])  # below the table
    out = SafetyLayer(SafetyConfig(max_speed_m_s=10)).check_chunk(acts, [0.5, 0.0, 0.0], DOWN, dt=0.1)
    assert out[0, 2] == pytest.approx(SafetyConfig().workspace_low[2])
    strict = SafetyLayer(SafetyConfig(on_workspace_violation="stop"))
    with pytest.raises(SafetyStop, match="outside the workspace"):
        strict.check_chunk(acts, [0.5, 0.0, 0.0], DOWN, dt=0.1)
    assert strict.summary()["outside_workspace"] == 1


def test_speed_and_rotation_speed_are_capped_step_by_step():
    layer = SafetyLayer(SafetyConfig(max_speed_m_s=0.2, max_rot_speed_rad_s=1.0))
    far = START + [0.08, 0, 0]  # 0.8 m/s at dt 0.1: within the 0.1 m step clip, over the speed cap
    turned = DOWN @ axis_angle_to_matrix([0, 0, 1], 0.5)  # 5 rad/s
    acts = _chunk([far, far], rot=turned)
    out = layer.check_chunk(acts, START, DOWN, dt=0.1)
    assert np.allclose(out[0, :3], START + [0.02, 0, 0]) and np.allclose(out[1, :3], START + [0.04, 0, 0])
    r0, r1 = rot6d_to_matrix(out[0, 3:9]), rot6d_to_matrix(out[1, 3:9])
    assert angle_between(r0, DOWN) == pytest.approx(0.1, abs=1e-6) and angle_between(r1, DOWN) == pytest.approx(0.2, abs=1e-6)
    assert layer.summary() == {"speed_limited": 2, "rot_speed_limited": 2}


def test_gripper_width_clipped():
    layer = SafetyLayer(SafetyConfig())
    out = layer.check_chunk(_chunk([START], width=0.2), START, DOWN, dt=0.1)
    assert out[0, 9] == pytest.approx(0.08) and layer.summary() == {"gripper_clipped": 1}


def test_watchdog_trips_once_per_stall_and_rearms():
    trips = []
    layer = SafetyLayer(SafetyConfig())
    with Watchdog(lambda name, age: trips.append((name, age)), hz=200, safety=layer) as dog:
        dog.watch("inference", 0.05)
        dog.watch("camera/front", 1.0)
        for _ in range(5):
            dog.beat("inference")
            time.sleep(0.01)
        assert trips == []
        time.sleep(0.15)  # inference stalls
        assert [n for n, _ in trips] == ["inference"] and trips[0][1] > 0.05
        time.sleep(0.1)
        assert len(trips) == 1  # once, not every check
        dog.beat("inference")  # recovers, then stalls again
        time.sleep(0.15)
        assert [n for n, _ in trips] == ["inference", "inference"]
    assert layer.summary()["watchdog"] == 2
    with pytest.raises(KeyError, match="not watching"):
        dog.beat("robot")
