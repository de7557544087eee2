"""furniture-bench pickles (one file, or a folder of them) -> our episodes.

Facts from furniture-bench that decide the conversion:
- DataCollector.save pickles hold `observations` (list of dicts, one more than actions: the
  final observation), `actions` (delta: pos 3 + quat xyzw 4 + grasp 1), `rewards`, `skills`,
  `success`, `furniture`.
- Quaternions are xyzw (IsaacGym / polymetis), w >= 0 in sim.
- The env sets goal_pos = ee_pos + d and goal_quat = ee_quat * dq (Hamilton product, i.e.
  R_goal = R_ee @ R_delta: the rotation delta is in the EE frame), and switches the gripper
  only when |grasp| > 0.019 and its sign changes (open = max width of the furniture, 0.065 m
  for one_leg; closed = 0). We replay exactly that.

Unpickling runs code from the file: only convert furniture-bench pickles you trust.
"""
from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import pickle
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from data.convert.common import Episode, Source, check_image, gripper_command_to_width, pose_vector
from data.episodes import DatasetError
from data.rotation import quat_xyzw_to_matrix, rot6d_to_matrix, rotvec_to_matrix
from data.schema import RGB_PREFIX

log = logging.getLogger(__name__)

FURNITURE_CAMERAS = {"color_image1": "wrist", "color_image2": "front"}  # 1 wrist, 2 front, 3 rear
FURNITURE_HZ = 10.0
FURNITURE_GRASP_MARGIN = 0.02 - 0.001  # env ignores |grasp| below this (no open/close chatter)
FURNITURE_MAX_GRIPPER_WIDTH = {  # furniture_bench/config.py robot.max_gripper_width
    "square_table": 0.065, "one_leg": 0.065, "desk": 0.065, "stool": 0.065, "chair": 0.065,
    "drawer": 0.065, "round_table": 0.065, "cabinet": 0.08, "lamp": 0.07,
}
PICKLE_SUFFIXES = (".pkl", ".pkl.gz", ".pkl.xz", ".pkl.bz2", ".pickle")


def furniture_files(src: Path) -> list[Path]:
    """A .pkl file, or every pickle below a folder (sorted: collectors name them by time)."""
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DatasetError(f"furniture-bench source not found: {src}")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
    if not files:
        raise DatasetError(f"{src}: no .pkl files found")
    return files


def load_pickle(path: Path) -> Any:
    """Unpickle a plain or compressed (.gz, .xz, .bz2) file, as the collectors may save them."""
    opener: Callable[..., Any] = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "rb") as fh:
        return pickle.load(fh)


def _fb_column(observations: Any, keys: tuple[str, ...], path: Path) -> np.ndarray:
    """Stack observations[t][k1][k2] over t; also accepts a dict of pre-stacked arrays."""
    where = "observations" + "".join(f"[{k!r}]" for k in keys)
    if isinstance(observations, Mapping):
        node: Any = observations
        for k in keys:
            if not isinstance(node, Mapping) or k not in node:
                raise DatasetError(f"{path}: missing required key {where}")
            node = node[k]
        return np.asarray(node)
    rows = []
    for t, ob in enumerate(observations):
        node = ob
        for k in keys:
            if not isinstance(node, Mapping) or k not in node:
                raise DatasetError(f"{path}: missing required key {where} (step {t})")
            node = node[k]
        rows.append(np.asarray(node))
    return np.stack(rows)


def _fb_images(img: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Camera frames -> uint8 (T, H, W, 3): some envs store channel-first or [0, 1] floats."""
    if img.ndim == 4 and img.shape[1] == 3 and img.shape[-1] != 3:  # channel-first envs
        img = img.transpose(0, 2, 3, 1)
    if img.dtype != np.uint8 and np.issubdtype(img.dtype, np.floating) and img.max(initial=0) <= 1.0:
        img = np.round(img * 255.0).astype(np.uint8)
    check_image(path, f"observations[{key!r}]", img.astype(np.uint8, copy=False))
    return np.ascontiguousarray(img, dtype=np.uint8)


def delta_rotation(act_rot: np.ndarray) -> np.ndarray:
    """Rotation part of a furniture-bench delta action, by its size: quat xyzw (4), rot6d (6), axis-angle (3)."""
    n = act_rot.shape[-1]
    if n == 4:
        return quat_xyzw_to_matrix(act_rot)
    if n == 6:
        return rot6d_to_matrix(act_rot)
    if n == 3:
        return rotvec_to_matrix(act_rot)
    raise DatasetError(f"furniture-bench action rotation has {n} numbers; expected 4 (quat), 6 (rot6d) or 3 (axis)")


def furniture_episode(data: Mapping[str, Any], path: Path, cam_map: Mapping[str, str], include_joints: bool,
                      open_width: float | None) -> Episode:
    """One furniture-bench pickle -> Episode with absolute targets rebuilt from the deltas."""
    for key in ("observations", "actions"):
        if key not in data:
            raise DatasetError(f"{path}: missing required key '{key}' (has {sorted(data)})")
    actions = np.asarray(data["actions"], dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] not in (7, 8, 10) or len(actions) == 0:
        raise DatasetError(f"{path}: actions have shape {actions.shape}, expected (T, 8) = pos + quat xyzw + grasp")
    t_len = len(actions)
    obs = data["observations"]
    pos = _fb_column(obs, ("robot_state", "ee_pos"), path).astype(np.float64)
    n_obs = len(pos)
    if n_obs not in (t_len, t_len + 1):
        raise DatasetError(f"{path}: {n_obs} observations for {t_len} actions (expected T or T+1)")
    pos = pos[:t_len]
    quat = _fb_column(obs, ("robot_state", "ee_quat"), path)[:t_len]
    width = _fb_column(obs, ("robot_state", "gripper_width"), path)[:t_len].reshape(t_len, -1)[:, 0]
    joints = _fb_column(obs, ("robot_state", "joint_positions"), path)[:t_len] if include_joints else None
    rot = quat_xyzw_to_matrix(quat)

    furniture = str(data.get("furniture", ""))
    open_w = open_width if open_width is not None else FURNITURE_MAX_GRIPPER_WIDTH.get(furniture, 0.065)
    t_pos = pos + actions[:, :3]
    t_rot = rot @ delta_rotation(actions[:, 3:-1])  # goal = ee_quat * delta: delta in the EE frame
    t_width = gripper_command_to_width(actions[:, -1], open_w, margin=FURNITURE_GRASP_MARGIN)
    frames: dict[str, np.ndarray] = {
        "state": pose_vector(pos, rot, width, joints),
        "action": pose_vector(t_pos, t_rot, t_width),
    }
    for src_key, cam in cam_map.items():
        frames[RGB_PREFIX + cam] = _fb_images(_fb_column(obs, (src_key,), path)[:t_len], path, src_key)
    if "rewards" in data:
        frames["reward"] = np.asarray(data["rewards"], dtype=np.float32).reshape(-1)[:t_len]
        if len(frames["reward"]) != t_len:
            raise DatasetError(f"{path}: {len(frames['reward'])} rewards for {t_len} actions")
    skills = np.asarray(data.get("skills", []), dtype=np.float64).reshape(-1)
    meta = {"origin": {"format": "furniture_bench", "file": str(path.resolve())}, "furniture": furniture,
            "skill_steps": np.flatnonzero(skills > 0).tolist(), "error": bool(data.get("error", False)),
            "error_description": str(data.get("error_description", ""))}
    return Episode(frames=frames, success=bool(data.get("success", True)), meta=meta)


def read_furniture_bench(src: Path, *, cameras: Mapping[str, str] | None = None, include_joints: bool = False,
                         gripper_open_width: float | None = None, task: str | None = None) -> Source:
    """Open one pickle or a folder of them; the first file decides the task (its furniture)."""
    files = furniture_files(src)
    first = load_pickle(files[0])
    if not isinstance(first, Mapping):
        raise DatasetError(f"{files[0]}: expected a dict pickle, got {type(first).__name__}")
    cam_map = dict(cameras) if cameras is not None else dict(FURNITURE_CAMERAS)
    furniture = str(first.get("furniture", "")) or None
    notes = ["ee_quat and action quaternions read as xyzw",
             "absolute target = (ee_pos + d_pos, R(ee_quat) @ R(d_quat)) from the observation at the same step",
             f"grasp command -> width with furniture-bench's hysteresis (|grasp| > {FURNITURE_GRASP_MARGIN:.3f})",
             "parts_poses (AprilTag frame) are not converted"]

    def episodes() -> Iterator[Episode]:
        for i, p in enumerate(files):
            data = first if i == 0 else load_pickle(p)
            if not isinstance(data, Mapping):
                raise DatasetError(f"{p}: expected a dict pickle, got {type(data).__name__}")
            if furniture and data.get("furniture", furniture) != furniture:
                log.warning("%s is furniture %r, dataset task is %r", p, data.get("furniture"), furniture)
            yield furniture_episode(data, p, cam_map, include_joints, gripper_open_width)

    return Source(task=task or furniture or Path(src).stem, control_hz=FURNITURE_HZ,
                  source_format="furniture_bench", camera_sources={dst: k for k, dst in cam_map.items()},
                  episodes=episodes(), notes=notes, extra_attrs={"frame": "robot_base", "furniture": furniture})
