"""The one_leg simulator as the world of a deployment rehearsal: its arm follows an external one.

In `real/deploy.py --rehearse` the policy drives franky-sim through the unchanged deploy stack
(franky, safety, timing); this world makes the task physical around it. Every control period
it takes the external arm's EE pose and commanded gripper width as an absolute target for the
simulator's own controller (IK + joint servos, one 10 Hz step), so the simulated Panda follows
franky-sim's arm and the parts respond through contact. Following the EE pose, not the joint
angles: franky-sim's FR3 and robosuite's Panda MJCF do not agree joint for joint (3-5 cm apart
at the same angles away from the ready pose; docs/deploy.md). The world supplies what a real
cell would: camera images (rendered at the configured resolution and poses), part poses, the
gripper width it measures (the fingers stop on the leg) and the success judgement.

Thread-safe: one lock around the simulator (the world's stepping thread, the camera feed and
the controller's observation reads all meet here).
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np

from data.rotation import matrix_to_rot6d
from sim.backends.mujoco_one_leg import OneLegMujocoEnv
from sim.config import EnvConfig


class FollowerWorld:
    def __init__(self, cfg: EnvConfig | None = None):
        cfg = dataclasses.replace(cfg or EnvConfig(), include_parts=True, obs_mode="state")
        self.env = OneLegMujocoEnv(cfg, render_mode="rgb_array")
        self.lock = threading.Lock()
        self.info: dict[str, Any] = {}
        self.steps = 0
        self.terminated = False

    def reset(self, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Start episode `seed` (the standard reset); returns the EE pose the external arm must
        take first (base frame: position, rotation) and the gripper width."""
        with self.lock:
            _, self.info = self.env.reset(seed=seed)
            self.steps, self.terminated = 0, False
            pos, rot = self.env.ee_pose_world()
            return pos - self.env.base_pos, rot, self.env.gripper_width()

    def follow(self, ee_pos: np.ndarray, ee_rot: np.ndarray, gripper_width: float) -> dict[str, Any]:
        """One control period toward the external arm's EE pose (base frame) and gripper target."""
        action = np.concatenate([ee_pos, matrix_to_rot6d(ee_rot), [gripper_width]])
        with self.lock:
            _, _, terminated, _, info = self.env.step(action)
            self.steps += 1
            self.terminated = self.terminated or bool(terminated)
            self.info = info
            return info

    @property
    def success(self) -> bool:
        return bool(self.info.get("success", False))

    @property
    def part_lost(self) -> bool:
        """A part knocked off the table: the simulator's failed terminal state."""
        return bool(self.info.get("part_lost", False))

    @property
    def milestones(self) -> dict[str, bool]:
        with self.lock:
            return {k: bool(v) for k, v in self.env.reached.items()}

    def parts(self) -> np.ndarray:
        """The privileged `parts` observation (tabletop and leg poses, base frame)."""
        with self.lock:
            return self.env.parts_vector()

    def gripper_width(self) -> float:
        with self.lock:
            return self.env.gripper_width()

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            pos, rot = self.env.ee_pose_world()
            return pos - self.env.base_pos, rot

    def render(self, camera: str, height: int, width: int) -> np.ndarray:
        """uint8 (height, width, 3) from the scene camera `camera` ('front' or 'wrist')."""
        with self.lock:
            return self.env.render(camera, (height, width))

    def close(self) -> None:
        self.env.close()
