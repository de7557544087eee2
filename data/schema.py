"""The observation and action contract shared by sim, real and data.

A policy trained in simulation must run unchanged on the robot, so every producer of
observations (MuJoCo backend, IsaacGym backend, RealSense+franky controller, dataset
reader) describes its output with these specs and checks against them.

Frames: all poses are in the **robot base frame** (x forward, z up), metres.
Rotations are 6D (first two rows of the rotation matrix, see `data.rotation`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

SCHEMA_VERSION = 1
RGB_PREFIX = "rgb/"

# Layout of the `state` vector and of the action: slices into the last dim.
POS = slice(0, 3)
ROT6D = slice(3, 9)
GRIPPER = slice(9, 10)
JOINTS = slice(10, 17)  # only when `include_joints`

ACTION_DIM = 10
CONTROL_HZ = 10.0
GRIPPER_MAX_WIDTH = 0.08  # Panda hand opening, m


@dataclass(frozen=True)
class ArraySpec:
    """Shape/dtype/meaning of one array in an observation or action."""

    shape: tuple[int, ...]
    dtype: str
    description: str
    frame: str = ""

    def check(self, name: str, value: np.ndarray, batch_dims: int = 0) -> None:
        value = np.asarray(value)
        if value.dtype != np.dtype(self.dtype):
            raise TypeError(f"{name}: dtype {value.dtype}, expected {self.dtype}")
        if tuple(value.shape[batch_dims:]) != tuple(self.shape):
            raise ValueError(f"{name}: shape {value.shape[batch_dims:]}, expected {self.shape}")


@dataclass(frozen=True)
class ObsSchema:
    """Which observation keys exist and their shapes.

    cameras: names of the RGB cameras (each gives `rgb/<name>`).
    image_hw: (height, width) of every camera image.
    include_joints: append the 7 arm joint positions to `state`.
    include_parts: add the privileged `parts` vector (part poses; sim only: the critic and
      the scripted expert read it, the actor must not).
    n_parts: number of part poses in `parts` (9 numbers each: position + 6D rotation).
    """

    cameras: tuple[str, ...] = ("front", "wrist")
    image_hw: tuple[int, int] = (96, 96)
    include_joints: bool = False
    include_parts: bool = True
    n_parts: int = 2

    @property
    def state_dim(self) -> int:
        return 17 if self.include_joints else 10

    def specs(self) -> dict[str, ArraySpec]:
        h, w = self.image_hw
        out: dict[str, ArraySpec] = {}
        for cam in self.cameras:
            out[RGB_PREFIX + cam] = ArraySpec((h, w, 3), "uint8", f"RGB image from camera '{cam}'", "image")
        out["state"] = ArraySpec(
            (self.state_dim,),
            "float32",
            "EE position (3), EE rotation 6D (6), gripper width m (1)"
            + (", arm joint positions rad (7)" if self.include_joints else ""),
            "robot_base",
        )
        if self.include_parts:
            out["parts"] = ArraySpec(
                (9 * self.n_parts,), "float32", "privileged part poses: position (3) + rotation 6D (6) each",
                "robot_base",
            )
        return out

    def check(self, obs: Mapping[str, np.ndarray], batch_dims: int = 0) -> None:
        """Raise a clear error if `obs` does not follow this schema."""
        specs = self.specs()
        missing = sorted(set(specs) - set(obs))
        if missing:
            raise KeyError(f"observation is missing keys {missing}; has {sorted(obs)}")
        for key, spec in specs.items():
            spec.check(key, obs[key], batch_dims)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["version"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ObsSchema":
        version = d.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(f"observation schema version {version} is not supported (expected {SCHEMA_VERSION})")
        return cls(
            cameras=tuple(d["cameras"]),
            image_hw=tuple(d["image_hw"]),
            include_joints=bool(d["include_joints"]),
            include_parts=bool(d["include_parts"]),
            n_parts=int(d["n_parts"]),
        )


@dataclass(frozen=True)
class ActionSchema:
    """Absolute EE pose target + gripper width, in the robot base frame, at `control_hz`.

    Policies predict `horizon` actions and execute `act_steps` of them.
    """

    dim: int = ACTION_DIM
    control_hz: float = CONTROL_HZ
    layout: dict = field(
        default_factory=lambda: {"pos": [0, 3], "rot6d": [3, 9], "gripper_width": [9, 10]}
    )
    frame: str = "robot_base"

    def spec(self) -> ArraySpec:
        return ArraySpec((self.dim,), "float32", "EE position (3), EE rotation 6D (6), gripper target width m (1)", self.frame)

    def check(self, action: np.ndarray, batch_dims: int = 0) -> None:
        action = np.asarray(action)
        if action.shape[batch_dims:] != (self.dim,):
            raise ValueError(f"action shape {action.shape[batch_dims:]}, expected ({self.dim},)")
        if not np.all(np.isfinite(action)):
            raise ValueError("action contains NaN or Inf")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["version"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ActionSchema":
        version = d.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(f"action schema version {version} is not supported (expected {SCHEMA_VERSION})")
        return cls(dim=int(d["dim"]), control_hz=float(d["control_hz"]),
                   layout={str(k): [int(i) for i in v] for k, v in dict(d["layout"]).items()}, frame=str(d["frame"]))


def make_action(pos: np.ndarray, rot: np.ndarray, gripper_width: float | np.ndarray) -> np.ndarray:
    """Pack a position (..,3), rotation matrix (..,3,3) and gripper width into the action layout."""
    from data.rotation import matrix_to_rot6d

    pos = np.asarray(pos, dtype=np.float32)
    r6 = matrix_to_rot6d(rot).astype(np.float32)
    g = np.broadcast_to(np.asarray(gripper_width, dtype=np.float32), pos.shape[:-1])[..., None]
    return np.concatenate([pos, r6, g], axis=-1)


def split_action(action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of `make_action`: (pos, rotation matrix, gripper width)."""
    from data.rotation import rot6d_to_matrix

    action = np.asarray(action)
    return action[..., POS], rot6d_to_matrix(action[..., ROT6D]), action[..., 9]
