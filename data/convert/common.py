"""What every reader shares: the episode/source records and our state/action packing.

Readers differ in how they find poses, but all of them must hand the writer the DESIGN.md
contract (`state` = EE position + 6D rotation + gripper width [+ joints], `action` = absolute
EE target of the same layout), so the packing and the gripper-command mapping live here once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from data.episodes import DatasetError
from data.rotation import matrix_to_rot6d


@dataclass
class Episode:
    """One converted episode, ready for EpisodeWriter.add_episode."""

    frames: dict[str, np.ndarray]
    success: bool
    seed: int = -1
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Source:
    """What a reader found: dataset-level facts plus a lazy stream of episodes.

    Episodes are produced lazily so a multi-GB source is never held in memory at once.
    """

    task: str
    control_hz: float
    source_format: str
    camera_sources: dict[str, str]  # our camera name -> key in the source
    episodes: Iterator[Episode]
    notes: list[str] = field(default_factory=list)
    extra_attrs: dict[str, Any] = field(default_factory=dict)


def pose_vector(pos: np.ndarray, rot: np.ndarray, width: np.ndarray, joints: np.ndarray | None = None) -> np.ndarray:
    """Pack (T,3) position, (T,3,3) rotation, (T,) width [, (T,7) joints] into our float32 layout."""
    parts = [np.asarray(pos, dtype=np.float64), matrix_to_rot6d(rot), np.asarray(width, dtype=np.float64)[:, None]]
    if joints is not None:
        parts.append(np.asarray(joints, dtype=np.float64))
    return np.concatenate(parts, axis=-1).astype(np.float32)


def gripper_command_to_width(cmd: np.ndarray, open_width: float, margin: float = 0.0,
                             start_open: bool = True) -> np.ndarray:
    """Binary gripper commands (-1 open, +1 close) -> target width in metres.

    A command only switches the gripper when |cmd| > margin (furniture-bench's hysteresis);
    a command inside the margin (or exactly 0, robosuite's "hold") keeps the previous state.
    """
    closed = not start_open
    out = np.empty(len(cmd), dtype=np.float32)
    for i, c in enumerate(np.asarray(cmd, dtype=np.float64).reshape(len(cmd))):
        if abs(c) > margin and c != 0.0:
            closed = c > 0.0
        out[i] = 0.0 if closed else open_width
    return out


def check_image(path: Path, key: str, img: np.ndarray) -> None:
    """Refuse anything but uint8 (T, H, W, 3): the writer would store it, the trainer would choke on it later."""
    if img.dtype != np.uint8 or img.ndim != 4 or img.shape[-1] != 3:
        raise DatasetError(f"{path}: {key} is {img.dtype}{list(img.shape)}, expected uint8 (T, H, W, 3)")
