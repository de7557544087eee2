"""robomimic HDF5 -> our episodes.

Facts from robomimic/robosuite that decide the conversion:
- `robot0_eef_quat` is xyzw (robosuite convention) and poses are in the MuJoCo world frame
  (pass --base-pos/--base-quat to move them into the robot base frame).
- `actions` are delta OSC commands. Absolute targets come from `actions_abs` (pos + axis-angle
  + gripper) when the file has them, else from the next observed EE pose (an approximation:
  it is where the arm got to, not where it was commanded).
- Images are stored upright by robomimic.
- Gripper command -1 opens and +1 closes (robosuite moves the fingers by the sign), mapped to
  0.08 / 0.0 m.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from data.convert.common import Episode, Source, check_image, gripper_command_to_width, pose_vector
from data.episodes import DatasetError
from data.rotation import quat_to_matrix, quat_xyzw_to_matrix, rotvec_to_matrix
from data.schema import GRIPPER_MAX_WIDTH, RGB_PREFIX

log = logging.getLogger(__name__)

ROBOMIMIC_CAMERAS = {"agentview_image": "front", "robot0_eye_in_hand_image": "wrist"}
ROBOMIMIC_DEFAULT_HZ = 20.0  # robosuite control_freq used by the robomimic datasets
ROBOMIMIC_REQUIRED_OBS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")


def target_offset(target_pos: np.ndarray, target_rot: np.ndarray, next_pos: np.ndarray,
                  next_rot: np.ndarray) -> tuple[float, float]:
    """Median (degrees, metres) between absolute targets and the next observed EE pose.

    Large values mean the source's controller frame differs from its EE observation frame
    (robosuite versions differ here), which would make the targets wrong for our controller.
    """
    rel = np.einsum("tij,tkj->tik", target_rot, next_rot)
    angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)))
    return float(np.median(angle)), float(np.median(np.linalg.norm(target_pos - next_pos, axis=-1)))


def _demo_sort_key(name: str) -> tuple[int, str]:
    """demo_2 before demo_10: robomimic numbers demos, and a string sort would scramble their order."""
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (sys.maxsize, name)


def _robomimic_masks(f) -> dict[str, set[str]]:
    """mask/<key> lists -> {key: demo names}; they carry train/valid splits and failed-demo marks."""
    masks: dict[str, set[str]] = {}
    if "mask" in f:
        for name, ds in f["mask"].items():
            masks[name] = {x.decode() if isinstance(x, bytes) else str(x) for x in ds[:]}
    return masks


def _robomimic_env_args(data_group) -> dict[str, Any]:
    """data.attrs['env_args'] (JSON: env name, control_freq); an unreadable one only costs the defaults."""
    raw = data_group.attrs.get("env_args")
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        log.warning("data.attrs['env_args'] is not JSON; ignoring it")
        return {}


def _check_robomimic_demo(path: Path, name: str, demo, cameras: Mapping[str, str], include_joints: bool) -> None:
    """Fail before writing anything when a demo lacks a key we need (names the key)."""
    if "actions" not in demo:
        raise DatasetError(f"{path}: data/{name} lacks required key 'actions'")
    if "obs" not in demo:
        raise DatasetError(f"{path}: data/{name} lacks required group 'obs'")
    needed = list(ROBOMIMIC_REQUIRED_OBS) + (["robot0_joint_pos"] if include_joints else []) + list(cameras)
    for key in needed:
        if key not in demo["obs"]:
            raise DatasetError(f"{path}: data/{name}/obs lacks required key '{key}' (has {sorted(demo['obs'])})")


def read_robomimic(path: Path, *, cameras: Mapping[str, str] | None = None, filter_key: str | None = None,
                   base_pos: Sequence[float] | None = None, base_quat: Sequence[float] | None = None,
                   include_joints: bool = False, stride: int = 1, vflip: bool = False,
                   gripper_open_width: float = GRIPPER_MAX_WIDTH, task: str | None = None) -> Source:
    """Open a robomimic hdf5 and describe it; episodes are read one demo at a time."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"robomimic file not found: {path}")
    if stride < 1:
        raise ValueError("--stride must be >= 1")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not an HDF5 file ({e})") from e
    try:
        if "data" not in f:
            raise DatasetError(f"{path}: not a robomimic file (no 'data' group)")
        env_args = _robomimic_env_args(f["data"])
        masks = _robomimic_masks(f)
        demos = sorted((k for k in f["data"] if k.startswith("demo")), key=_demo_sort_key)
        if filter_key is not None:
            if filter_key not in masks:
                raise DatasetError(f"{path}: filter key '{filter_key}' not in mask/ (has {sorted(masks)})")
            demos = [d for d in demos if d in masks[filter_key]]
        if not demos:
            raise DatasetError(f"{path}: no demos to convert")
        explicit = cameras is not None
        cam_map = dict(cameras) if explicit else {
            k: v for k, v in ROBOMIMIC_CAMERAS.items() if k in f["data"][demos[0]].get("obs", {})}
        for name in demos:
            _check_robomimic_demo(path, name, f["data"][name], cam_map, include_joints)
    except BaseException:
        f.close()
        raise
    if not explicit and not cam_map:
        log.warning("%s: no camera images found (looked for %s); converting state only", path, list(ROBOMIMIC_CAMERAS))

    kwargs = env_args.get("env_kwargs", {})
    hz = float(kwargs.get("control_freq", ROBOMIMIC_DEFAULT_HZ)) / stride
    if "control_freq" not in kwargs:
        log.warning("%s: env_args has no control_freq; assuming %.0f Hz", path, ROBOMIMIC_DEFAULT_HZ)
    notes = ["robot0_eef_quat read as xyzw", "gripper width = robot0_gripper_qpos[0] - [1]",
             f"gripper command sign -> width target {gripper_open_width} (open, <0) / 0.0 (close, >0)"]
    base = _base_transform(base_pos, base_quat)
    if base is None:
        notes.append("poses are in the robomimic (MuJoCo) world frame: no --base-pos/--base-quat given")
        log.warning("%s: no --base-pos/--base-quat: poses stay in the MuJoCo world frame, not the robot base "
                    "frame (robosuite puts the Panda base at about (-0.56, 0, 0.912) on the table tasks)", path)
    if stride > 1:
        notes.append(f"subsampled every {stride} steps; each action is the target at the end of its window")
    src = Source(task=task or env_args.get("env_name") or path.stem, control_hz=hz, source_format="robomimic",
                 camera_sources={dst: srck for srck, dst in cam_map.items()}, episodes=iter(()), notes=notes,
                 extra_attrs={"frame": "robot_base" if base is not None else "robomimic_world",
                              "source_env_args": env_args})
    src.episodes = _robomimic_episodes(f, path, demos, masks, cam_map, base, include_joints, stride, vflip,
                                       gripper_open_width, notes)
    return src


def _base_transform(base_pos, base_quat) -> tuple[np.ndarray, np.ndarray] | None:
    """World pose of the robot base (pos, wxyz quat) -> (p, R), or None when not given."""
    if base_pos is None and base_quat is None:
        return None
    p = np.asarray(base_pos if base_pos is not None else [0.0, 0.0, 0.0], dtype=np.float64)
    q = np.asarray(base_quat if base_quat is not None else [1.0, 0.0, 0.0, 0.0], dtype=np.float64)
    if p.shape != (3,) or q.shape != (4,):
        raise ValueError("--base-pos takes 3 numbers and --base-quat 4 (w x y z)")
    return p, quat_to_matrix(q)


def _to_base(pos: np.ndarray, rot: np.ndarray, base) -> tuple[np.ndarray, np.ndarray]:
    """World-frame poses -> robot base frame (identity when no base pose was given)."""
    if base is None:
        return pos, rot
    p, r = base
    return (pos - p) @ r, np.einsum("ji,tjk->tik", r, rot)  # R^T (x - p), R^T R_x


def _robomimic_episodes(f, path: Path, demos: list[str], masks: dict[str, set[str]], cam_map: Mapping[str, str],
                        base, include_joints: bool, stride: int, vflip: bool, open_width: float,
                        notes: list[str]) -> Iterator[Episode]:
    """Yield demos one at a time (closing the file at the end); diagnostics are noted once, not per demo."""
    warned_next = warned_offset = False
    with_reward = all("rewards" in f["data"][d] for d in demos)
    try:
        for name in demos:
            demo = f["data"][name]
            ep, used_next, offset = _robomimic_episode(path, name, demo, cam_map, base, include_joints, stride,
                                                       vflip, open_width, with_reward)
            if offset is not None and (offset[0] > 20.0 or offset[1] > 0.05) and not warned_offset:
                msg = (f"actions_abs targets are {offset[0]:.1f} deg / {offset[1]:.3f} m (median, {name}) from the "
                       "next observed EE pose: the controller frame may differ from robot0_eef_quat's frame")
                log.warning("%s: %s", path, msg)
                notes.append(msg)
                warned_offset = True
            if used_next and not warned_next:
                msg = ("no actions_abs: absolute action targets approximated by the next observed EE pose "
                       "(where the arm went, not what was commanded)")
                log.warning("%s: %s", path, msg)
                notes.append(msg)
                warned_next = True
            in_masks = sorted(k for k, v in masks.items() if name in v)
            failed = any("fail" in k.lower() for k in in_masks)
            ep.success = not failed
            ep.meta.update(origin={"format": "robomimic", "file": str(path.resolve()), "demo": name},
                           filter_keys=in_masks, num_samples=int(demo.attrs.get("num_samples", len(demo["actions"]))))
            yield ep
    finally:
        f.close()


def _robomimic_episode(path: Path, name: str, demo, cam_map: Mapping[str, str], base, include_joints: bool,
                       stride: int, vflip: bool, open_width: float,
                       with_reward: bool) -> tuple[Episode, bool, tuple[float, float] | None]:
    """One demo -> (Episode, whether the next-pose approximation was used, actions_abs offset)."""
    obs = demo["obs"]
    pos = np.asarray(obs["robot0_eef_pos"][:], dtype=np.float64)
    rot = quat_xyzw_to_matrix(obs["robot0_eef_quat"][:])
    qpos = np.asarray(obs["robot0_gripper_qpos"][:], dtype=np.float64)
    actions = np.asarray(demo["actions"][:], dtype=np.float64)
    t_len = len(actions)
    if not (len(pos) == len(rot) == len(qpos) == t_len) or t_len == 0:
        raise DatasetError(f"{path}: data/{name}: obs and actions lengths differ or are empty "
                           f"({len(pos)} obs, {t_len} actions)")
    width = qpos[:, 0] - qpos[:, 1]
    joints = np.asarray(obs["robot0_joint_pos"][:], dtype=np.float64) if include_joints else None
    keep = np.arange(0, t_len, stride)
    window_end = np.minimum(keep + stride, t_len) - 1  # last raw step of each kept step's window

    used_next = "actions_abs" not in demo
    offset = None
    if not used_next:
        absa = np.asarray(demo["actions_abs"][:], dtype=np.float64)
        if absa.shape != (t_len, 7):
            raise DatasetError(f"{path}: data/{name}/actions_abs has shape {absa.shape}, expected ({t_len}, 7)")
        t_pos, t_rot, grip = absa[:, :3], rotvec_to_matrix(absa[:, 3:6]), absa[:, 6]
        nxt_pos, nxt_rot = _robomimic_next_pose(demo, pos, rot)
        offset = target_offset(t_pos, t_rot, nxt_pos, nxt_rot)
    else:
        t_pos, t_rot = _robomimic_next_pose(demo, pos, rot)
        grip = actions[:, -1]
    width_target = gripper_command_to_width(grip, open_width)

    s_pos, s_rot = _to_base(pos[keep], rot[keep], base)
    a_pos, a_rot = _to_base(t_pos[window_end], t_rot[window_end], base)
    frames: dict[str, np.ndarray] = {
        "state": pose_vector(s_pos, s_rot, width[keep], None if joints is None else joints[keep]),
        "action": pose_vector(a_pos, a_rot, width_target[window_end]),
    }
    for src_key, cam in cam_map.items():
        img = np.asarray(obs[src_key][:])
        check_image(path, f"data/{name}/obs/{src_key}", img)
        img = img[keep]
        frames[RGB_PREFIX + cam] = np.ascontiguousarray(img[:, ::-1] if vflip else img)
    if with_reward:
        rew = np.asarray(demo["rewards"][:], dtype=np.float32)
        frames["reward"] = np.add.reduceat(rew, keep) if stride > 1 else rew
    return Episode(frames=frames, success=True), used_next, offset


def _robomimic_next_pose(demo, pos: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EE pose after each step: obs shifted by one, the last from next_obs (or held)."""
    if "next_obs" in demo and "robot0_eef_pos" in demo["next_obs"] and "robot0_eef_quat" in demo["next_obs"]:
        last_pos = np.asarray(demo["next_obs"]["robot0_eef_pos"][-1], dtype=np.float64)[None]
        last_rot = quat_xyzw_to_matrix(demo["next_obs"]["robot0_eef_quat"][-1])[None]
    else:
        last_pos, last_rot = pos[-1:], rot[-1:]
    return np.concatenate([pos[1:], last_pos]), np.concatenate([rot[1:], last_rot])
