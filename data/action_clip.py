"""The action clip shared by the simulator and the robot's safety layer.

A policy's absolute EE target is limited the same way everywhere, so a policy meets the same
constraints in simulation as on the arm: the target position is clipped to the workspace box,
then pulled toward the current EE position so it is at most `max_pos_step` away, the 6D
rotation is orthonormalised, and the gripper width clipped to [0, gripper_max_width]. Pure
numpy, no state: `real/safety.py` calls it and counts what it changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from data.rotation import rot6d_to_matrix


@dataclass(frozen=True)
class ActionLimits:
    workspace_low: tuple[float, float, float] = (0.3, -0.55, -0.02)  # robot base frame, m
    workspace_high: tuple[float, float, float] = (0.8, 0.55, 0.4)
    max_pos_step: float = 0.10  # m from the current EE position per action
    gripper_max_width: float = 0.08


class ClippedAction(NamedTuple):
    """The limited target: position (base frame), rotation matrix, gripper width, and flags
    saying which limit changed it (for logging and safety counters)."""

    pos: np.ndarray
    rot: np.ndarray
    width: np.ndarray
    outside_workspace: np.ndarray
    step_limited: np.ndarray
    gripper_clipped: np.ndarray


def clip_action(action: np.ndarray, ee_pos: np.ndarray, limits: ActionLimits) -> ClippedAction:
    """`action` (..., 10) absolute targets, `ee_pos` (..., 3) current EE positions (base frame).

    Raises ValueError on NaN/Inf: a non-finite target is never clipped into a valid one.
    """
    action = np.asarray(action, dtype=np.float64)
    if action.shape[-1] != 10:
        raise ValueError(f"actions have 10 numbers (pos 3, rot6d 6, gripper 1), got shape {action.shape}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"action contains NaN/Inf: {action}")
    low, high = np.asarray(limits.workspace_low), np.asarray(limits.workspace_high)
    pos = np.clip(action[..., :3], low, high)
    outside = np.any(pos != action[..., :3], axis=-1)
    delta = pos - np.asarray(ee_pos, dtype=np.float64)
    # one env: the 1-D norm (the simulator's historical arithmetic, bit for bit)
    dist = np.linalg.norm(delta) if delta.ndim == 1 else np.linalg.norm(delta, axis=-1)
    limited = dist > limits.max_pos_step
    if delta.ndim == 1:
        if limited:
            pos = ee_pos + delta * (limits.max_pos_step / dist)
    else:
        scale = np.where(limited, limits.max_pos_step / np.maximum(dist, 1e-12), 1.0)[..., None]
        pos = np.where(limited[..., None], ee_pos + delta * scale, pos)
    width = np.clip(action[..., 9], 0.0, limits.gripper_max_width)
    return ClippedAction(pos, rot6d_to_matrix(action[..., 3:9]), width, outside, np.asarray(limited),
                         width != action[..., 9])
