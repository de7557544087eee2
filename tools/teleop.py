"""Teleoperation devices for demo collection: keyboard (OpenCV window) and SpaceMouse.

Devices turn operator input into an absolute EE target (the action contract) by integrating
small deltas, plus recording commands modelled on diffusion_policy's demo tool: start/stop
recording, discard, quit. The key handling is plain logic (`KeyboardTeleop.handle_key`), so
it is tested without a display; only `OpenCVViewer` needs one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from data.rotation import rot6d_to_matrix, rot_z
from data.schema import make_action


class Command(Enum):
    NONE = "none"
    START = "start"      # begin recording an episode
    STOP = "stop"        # finish and save the episode
    DISCARD = "discard"  # drop the episode being recorded
    QUIT = "quit"


KEY_HELP = """keys: w/s +x/-x  a/d +y/-y  r/f up/down  z/x yaw  space gripper
      c start recording  v stop+save  b discard  q/ESC quit"""


@dataclass
class KeyboardTeleop:
    pos_step: float = 0.01  # m per key press
    rot_step_deg: float = 5.0
    open_width: float = 0.065
    target_pos: np.ndarray = field(default_factory=lambda: np.zeros(3))
    target_rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    gripper_open: bool = True

    def sync(self, state: np.ndarray) -> None:
        """Start from the robot's current EE pose (state vector of the observation)."""
        self.target_pos = np.asarray(state[:3], dtype=np.float64).copy()
        self.target_rot = rot6d_to_matrix(state[3:9])
        self.gripper_open = float(state[9]) > 0.5 * self.open_width

    def handle_key(self, key: int) -> Command:
        """Apply one key code (cv2.waitKey's value; -1 = none) and return the command it carries."""
        if key < 0:
            return Command.NONE
        ch = chr(key & 0xFF).lower() if (key & 0xFF) < 128 else ""
        moves = {"w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "r": (2, 1), "f": (2, -1)}
        if ch in moves:
            axis, sign = moves[ch]
            self.target_pos[axis] += sign * self.pos_step
        elif ch in ("z", "x"):
            sign = 1.0 if ch == "z" else -1.0
            self.target_rot = rot_z(sign * np.radians(self.rot_step_deg)) @ self.target_rot
        elif ch == " ":
            self.gripper_open = not self.gripper_open
        elif ch == "c":
            return Command.START
        elif ch == "v":
            return Command.STOP
        elif ch == "b" or (key & 0xFF) == 8:
            return Command.DISCARD
        elif ch == "q" or (key & 0xFF) == 27:
            return Command.QUIT
        return Command.NONE

    def action(self) -> np.ndarray:
        return make_action(self.target_pos, self.target_rot, self.open_width if self.gripper_open else 0.0)


class SpaceMouseTeleop(KeyboardTeleop):
    """6-DoF SpaceMouse via `pyspacemouse`; keys still carry the recording commands."""

    def __init__(self, pos_scale: float = 0.02, rot_scale_deg: float = 6.0, **kw):
        super().__init__(**kw)
        try:
            import pyspacemouse
        except ImportError as e:
            raise ImportError("SpaceMouse teleoperation needs the package 'pyspacemouse' (pip install "
                              "pyspacemouse) and a connected 3Dconnexion device") from e
        if not pyspacemouse.open():
            raise RuntimeError("no SpaceMouse found: check the USB connection and udev permissions")
        self._sm = pyspacemouse
        self.pos_scale, self.rot_scale = pos_scale, np.radians(rot_scale_deg)
        self._buttons = (0, 0)

    def poll(self) -> None:
        s = self._sm.read()
        self.target_pos += self.pos_scale * np.array([s.y, -s.x, s.z])
        self.target_rot = rot_z(-self.rot_scale * s.yaw) @ self.target_rot
        buttons = tuple(s.buttons[:2]) if len(s.buttons) >= 2 else (0, 0)
        if buttons[0] and not self._buttons[0]:
            self.gripper_open = not self.gripper_open
        self._buttons = buttons


class OpenCVViewer:
    """Live window of the camera images; returns pressed keys. Needs a display."""

    def __init__(self, title: str = "one_leg teleop", scale: int = 4):
        import cv2

        try:
            cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
        except cv2.error as e:
            raise RuntimeError("keyboard teleoperation needs a display and OpenCV with GUI support "
                               "(pip install opencv-python, not -headless); none is available here") from e
        self.cv2, self.title, self.scale = cv2, title, scale

    def show(self, images: list[np.ndarray], status: str) -> int:
        cv2 = self.cv2
        canvas = np.concatenate([np.kron(im, np.ones((self.scale, self.scale, 1), np.uint8)) for im in images], 1)
        canvas = cv2.cvtColor(np.ascontiguousarray(canvas), cv2.COLOR_RGB2BGR)
        cv2.putText(canvas, status, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 255), 1)
        cv2.imshow(self.title, canvas)
        return cv2.waitKey(1)

    def close(self) -> None:
        self.cv2.destroyWindow(self.title)
