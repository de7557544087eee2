"""Convert demonstration datasets between other formats and our zarr episodes.

    python -m data.convert SRC DST --from robomimic        # robomimic hdf5 -> ours
    python -m data.convert SRC DST --from furniture_bench  # furniture-bench .pkl (file or folder) -> ours
    python -m data.convert SRC DST --from lerobot          # LeRobot v2.x / v3.0 folder -> ours
    python -m data.convert SRC DST --to lerobot            # ours -> LeRobot v3.0 folder

Every import produces the DESIGN.md contract: `state` float32 = EE position (3) + 6D rotation
(first two rows of the matrix) + gripper width in metres (1) [+ 7 joints with --joints];
`action` float32 (10,) = absolute EE target position + 6D rotation + gripper target width;
`rgb/<camera>` uint8 HxWx3; episodes have source="converted" and an `origin` record. The
dataset attrs carry task, schema, control_hz, cameras, source_format and the list of
approximations the converter made (`conversion.notes`), so a trainer can see what it gets.

Why the conversions are what they are (facts from the source projects, our own code):
- robomimic stores `robot0_eef_quat` as xyzw (robosuite convention), poses in the MuJoCo world
  frame (pass --base-pos/--base-quat to move them into the robot base frame) and delta OSC
  actions. Absolute targets come from `actions_abs` (pos + axis-angle + gripper) when the file
  has them, else from the next observed EE pose (an approximation: it is where the arm got to,
  not where it was commanded). Images are stored upright by robomimic. Gripper command -1 opens
  and +1 closes (robosuite moves the fingers by the sign), mapped to 0.08 / 0.0 m.
- furniture-bench pickles (DataCollector.save) hold `observations` (list of dicts, one more
  than actions: the final observation), `actions` (delta: pos 3 + quat xyzw 4 + grasp 1),
  `rewards`, `skills`, `success`, `furniture`. Quaternions are xyzw (IsaacGym / polymetis),
  w >= 0 in sim. The env sets goal_pos = ee_pos + d and goal_quat = ee_quat * dq (Hamilton
  product, i.e. R_goal = R_ee @ R_delta: the rotation delta is in the EE frame), and switches
  the gripper only when |grasp| > 0.019 and its sign changes (open = max width of the
  furniture, 0.065 m for one_leg; closed = 0). We replay exactly that.
- LeRobot: written against the documented on-disk layout (lerobot itself pins numpy>=2 and an
  older torch, so it is not installed): v3.0 (`meta/info.json`, `meta/tasks.parquet`,
  `meta/episodes/chunk-XXX/file-XXX.parquet`, `data/chunk-XXX/file-XXX.parquet`, videos in
  `videos/<key>/chunk-XXX/file-XXX.mp4` concatenating episodes) is written; v2.x
  (`episodes.jsonl`, `tasks.jsonl`, one parquet and one mp4 per episode) and v3.0 are read.
  Images go to mp4 (lossy; default H.264 crf 18, `--images image` stores lossless PNG in the
  parquet instead); low-dim values round-trip bit-exactly (float32 columns). Checked by hand
  against lerobot 0.4.4 in a separate numpy-2 venv: LeRobotDataset loads our exports (values
  exact, delta_timestamps across episode boundaries), and datasets that LeRobot itself wrote
  (AV1 video, several tasks) convert back to ours.

Unpickling runs code from the file: only convert furniture-bench pickles you trust.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import json
import logging
import lzma
import os
import pickle
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from data.episodes import DatasetError, EpisodeDataset, EpisodeWriter, is_image_key
from data.rotation import matrix_to_rot6d, quat_to_matrix, rot6d_to_matrix
from data.schema import GRIPPER_MAX_WIDTH, RGB_PREFIX, ActionSchema, ObsSchema

log = logging.getLogger("data.convert")

FORMATS = ("robomimic", "furniture_bench", "lerobot")

ROBOMIMIC_CAMERAS = {"agentview_image": "front", "robot0_eye_in_hand_image": "wrist"}
ROBOMIMIC_DEFAULT_HZ = 20.0  # robosuite control_freq used by the robomimic datasets

FURNITURE_CAMERAS = {"color_image1": "wrist", "color_image2": "front"}  # 1 wrist, 2 front, 3 rear
FURNITURE_HZ = 10.0
FURNITURE_GRASP_MARGIN = 0.02 - 0.001  # env ignores |grasp| below this (no open/close chatter)
FURNITURE_MAX_GRIPPER_WIDTH = {  # furniture_bench/config.py robot.max_gripper_width
    "square_table": 0.065, "one_leg": 0.065, "desk": 0.065, "stool": 0.065, "chair": 0.065,
    "drawer": 0.065, "round_table": 0.065, "cabinet": 0.08, "lamp": 0.07,
}

LEROBOT_VERSION = "v3.0"
LEROBOT_CHUNKS_SIZE = 1000
LEROBOT_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
LEROBOT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
LEROBOT_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
LEROBOT_IMAGE_PREFIX = "observation.images."
OUR_META_FILE = "meta/pixel_dppo.json"  # our attrs + key map; LeRobot ignores unknown meta files
LEROBOT_INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")

STATE_NAMES = ["x", "y", "z", "r11", "r12", "r13", "r21", "r22", "r23", "gripper_width"]
JOINT_NAMES = [f"joint{i}" for i in range(1, 8)]


# ==========================================================================================
# Shared pieces
# ==========================================================================================
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


def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) xyzw (robosuite, IsaacGym, scipy) -> (..., 3, 3); our rotation module is wxyz."""
    q = np.asarray(q, dtype=np.float64)
    return quat_to_matrix(q[..., [3, 0, 1, 2]])


def rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle (angle = norm) -> (..., 3, 3), batched Rodrigues."""
    rv = np.asarray(rv, dtype=np.float64)
    theta = np.linalg.norm(rv, axis=-1)
    axis = np.where(theta[..., None] > 1e-12, rv / np.maximum(theta, 1e-12)[..., None], 0.0)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    s, c = np.sin(theta)[..., None, None], np.cos(theta)[..., None, None]
    return np.eye(3) + s * k + (1.0 - c) * (k @ k)


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


def parse_mapping(items: Sequence[str] | None, default: Mapping[str, str]) -> dict[str, str]:
    """`--camera SRC=DST` options -> {src: dst}; replaces the default mapping when given."""
    if not items:
        return dict(default)
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise ValueError(f"--camera expects SRC=DST, got {item!r}")
        out[src] = dst
    return out


def target_offset(target_pos: np.ndarray, target_rot: np.ndarray, next_pos: np.ndarray,
                  next_rot: np.ndarray) -> tuple[float, float]:
    """Median (degrees, metres) between absolute targets and the next observed EE pose.

    Large values mean the source's controller frame differs from its EE observation frame
    (robosuite versions differ here), which would make the targets wrong for our controller.
    """
    rel = np.einsum("tij,tkj->tik", target_rot, next_rot)
    angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)))
    return float(np.median(angle)), float(np.median(np.linalg.norm(target_pos - next_pos, axis=-1)))


def build_attrs(src: Source, first: Episode, include_joints: bool, src_path: Path) -> dict[str, Any]:
    """Dataset attrs from the reader's facts and the first episode's shapes."""
    cameras: dict[str, Any] = {}
    hw: tuple[int, int] | None = None
    for cam, source_key in src.camera_sources.items():
        img = first.frames[RGB_PREFIX + cam]
        cam_hw = (int(img.shape[1]), int(img.shape[2]))
        cameras[cam] = {"image_hw": list(cam_hw), "source_key": source_key}
        if hw is None:
            hw = cam_hw
        elif cam_hw != hw:
            log.warning("camera %s is %s but the schema has one image_hw %s (taken from the first camera)",
                        cam, cam_hw, hw)
    n_parts = int(first.frames["parts"].shape[-1] // 9) if "parts" in first.frames else 0
    obs = ObsSchema(cameras=tuple(src.camera_sources), image_hw=hw or (0, 0), include_joints=include_joints,
                    include_parts="parts" in first.frames, n_parts=n_parts)
    return {
        "task": src.task,
        "schema": {"obs": obs.to_dict(), "action": ActionSchema(control_hz=float(src.control_hz)).to_dict()},
        "control_hz": float(src.control_hz),
        "cameras": cameras,
        "source_format": src.source_format,
        "source_path": str(src_path),
        "conversion": {"notes": list(src.notes)},
        **src.extra_attrs,
    }


def _staging_dir(dst: Path, overwrite: bool) -> Path:
    """Write next to DST and rename at the end, so a failed conversion leaves nothing behind."""
    if dst.exists() and not overwrite:
        raise DatasetError(f"{dst} already exists (pass --overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))


def _commit_staging(tmp: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def write_ours(src: Source, dst: Path, include_joints: bool, src_path: Path, overwrite: bool = False) -> int:
    """Stream a reader's episodes into a new zarr dataset; returns the episode count."""
    tmp = _staging_dir(dst, overwrite)
    try:
        first = next(src.episodes, None)
        if first is None:
            raise DatasetError(f"{src_path}: no episodes to convert")
        attrs = build_attrs(src, first, include_joints, src_path)
        writer = EpisodeWriter.create(tmp / "ds", attrs)
        n = 0
        for ep in _chain_first(first, src.episodes):
            writer.add_episode(ep.frames, success=ep.success, source="converted", seed=ep.seed, **ep.meta)
            n += 1
        if src.notes != attrs["conversion"]["notes"]:  # readers may add notes while streaming
            writer.set_attrs(conversion={"notes": list(src.notes)})
        _commit_staging(tmp / "ds", dst)
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("wrote %d episodes to %s", n, dst)
        return n
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _chain_first(first: Episode, rest: Iterator[Episode]) -> Iterator[Episode]:
    yield first
    yield from rest


# ==========================================================================================
# robomimic hdf5 -> ours
# ==========================================================================================
ROBOMIMIC_REQUIRED_OBS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")


def _demo_sort_key(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (sys.maxsize, name)


def _robomimic_masks(f) -> dict[str, set[str]]:
    masks: dict[str, set[str]] = {}
    if "mask" in f:
        for name, ds in f["mask"].items():
            masks[name] = {x.decode() if isinstance(x, bytes) else str(x) for x in ds[:]}
    return masks


def _robomimic_env_args(data_group) -> dict[str, Any]:
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
    if base is None:
        return pos, rot
    p, r = base
    return (pos - p) @ r, np.einsum("ji,tjk->tik", r, rot)  # R^T (x - p), R^T R_x


def _robomimic_episodes(f, path: Path, demos: list[str], masks: dict[str, set[str]], cam_map: Mapping[str, str],
                        base, include_joints: bool, stride: int, vflip: bool, open_width: float,
                        notes: list[str]) -> Iterator[Episode]:
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
        _check_image(path, f"data/{name}/obs/{src_key}", img)
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


def _check_image(path: Path, key: str, img: np.ndarray) -> None:
    if img.dtype != np.uint8 or img.ndim != 4 or img.shape[-1] != 3:
        raise DatasetError(f"{path}: {key} is {img.dtype}{list(img.shape)}, expected uint8 (T, H, W, 3)")


# ==========================================================================================
# furniture-bench pickles -> ours
# ==========================================================================================
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
    if img.ndim == 4 and img.shape[1] == 3 and img.shape[-1] != 3:  # channel-first envs
        img = img.transpose(0, 2, 3, 1)
    if img.dtype != np.uint8 and np.issubdtype(img.dtype, np.floating) and img.max(initial=0) <= 1.0:
        img = np.round(img * 255.0).astype(np.uint8)
    _check_image(path, f"observations[{key!r}]", img.astype(np.uint8, copy=False))
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


# ==========================================================================================
# ours -> LeRobot v3.0
# ==========================================================================================
def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("LeRobot conversion needs pyarrow: pip install -e '.[convert]'") from e
    return pa, pq


def lerobot_key(key: str) -> str:
    """Our array key -> LeRobot feature name (LeRobot's conventional names where one exists)."""
    fixed = {"state": "observation.state", "action": "action", "parts": "observation.environment_state",
             "reward": "next.reward"}
    if key in fixed:
        return fixed[key]
    if key.startswith(RGB_PREFIX):
        return LEROBOT_IMAGE_PREFIX + key[len(RGB_PREFIX):]
    return "extra." + key.replace("/", ".")


def _feature_names(key: str, dim: int) -> list[str] | None:
    if key in ("state", "action") and dim in (10, 17):
        return (STATE_NAMES + JOINT_NAMES)[:dim]
    return None


def _lowdim_feature(key: str, arr) -> dict[str, Any]:
    shape = tuple(arr.shape[1:]) or (1,)
    if len(shape) != 1:
        raise ValueError(f"data/{key} has per-frame shape {shape}; only vectors and scalars go to LeRobot")
    return {"dtype": str(np.dtype(arr.dtype)), "shape": list(shape), "names": _feature_names(key, shape[0])}


class _Stats:
    """Streaming min/max/mean/std per feature for meta/stats.json (LeRobot's normaliser input)."""

    def __init__(self) -> None:
        self.acc: dict[str, list[Any]] = {}

    def add(self, name: str, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        s = [x.min(0), x.max(0), x.sum(0), (x * x).sum(0), len(x)]
        if name not in self.acc:
            self.acc[name] = s
            return
        a = self.acc[name]
        self.acc[name] = [np.minimum(a[0], s[0]), np.maximum(a[1], s[1]), a[2] + s[2], a[3] + s[3], a[4] + s[4]]

    def to_json(self) -> dict[str, Any]:
        out = {}
        for name, (mn, mx, sm, sq, n) in self.acc.items():
            mean = sm / n
            std = np.sqrt(np.maximum(sq / n - mean * mean, 0.0))
            out[name] = {"min": np.atleast_1d(mn).tolist(), "max": np.atleast_1d(mx).tolist(),
                         "mean": np.atleast_1d(mean).tolist(), "std": np.atleast_1d(std).tolist(), "count": [int(n)]}
        return out


def _image_stats(img: np.ndarray, stride: int = 10) -> np.ndarray:
    """Per-channel values in [0, 1] of every `stride`-th frame: LeRobot keeps (3,1,1) image stats."""
    return (img[::stride].reshape(-1, img.shape[-1]) / 255.0).astype(np.float64)


class _VideoWriter:
    """One mp4 per camera and data file, episodes appended back to back (LeRobot v3.0 layout)."""

    def __init__(self, path: Path, hw: tuple[int, int], fps: int, codec: str, pix_fmt: str, crf: int, gop: int):
        import imageio_ffmpeg

        h, w = hw
        if pix_fmt == "yuv420p" and (h % 2 or w % 2):
            log.info("%s: odd image size %s, using yuv444p", path, hw)
            pix_fmt = "yuv444p"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.n_frames, self.hw, self.pix_fmt, self.codec = path, 0, hw, pix_fmt, codec
        self.gen = imageio_ffmpeg.write_frames(
            str(path), size=(w, h), fps=fps, codec=codec, pix_fmt_in="rgb24", pix_fmt_out=pix_fmt, quality=None,
            macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", str(crf), "-g", str(gop)])
        self.gen.send(None)

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            self.gen.send(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        self.n_frames += len(frames)

    def close(self) -> None:
        self.gen.close()


@dataclass
class LeRobotExportOptions:
    images: str = "video"  # "video" (mp4) or "image" (PNG bytes in the parquet, lossless)
    vcodec: str = "libx264"
    pix_fmt: str = "yuv420p"
    crf: int = 18
    gop: int = 2  # LeRobot uses short GOPs so random frame access stays cheap
    task_text: str | None = None
    robot_type: str = "franka"
    cameras: dict[str, str] = field(default_factory=dict)  # our camera -> LeRobot camera name
    max_frames_per_file: int = 50_000


def export_lerobot(src: Path, dst: Path, opts: LeRobotExportOptions | None = None, overwrite: bool = False) -> int:
    """Write our dataset as a LeRobot v3.0 folder; returns the episode count."""
    opts = opts or LeRobotExportOptions()
    if opts.images not in ("video", "image"):
        raise ValueError("--images must be 'video' or 'image'")
    ds = EpisodeDataset(src)
    if len(ds) == 0:
        raise DatasetError(f"{src}: no episodes to export")
    tmp = _staging_dir(Path(dst), overwrite)
    try:
        _export_lerobot_into(ds, tmp, opts)
        _commit_staging(tmp, Path(dst))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote LeRobot %s dataset with %d episodes to %s", LEROBOT_VERSION, len(ds), dst)
    return len(ds)


def _export_features(ds: EpisodeDataset, opts: LeRobotExportOptions, fps: int) -> tuple[dict, dict[str, str]]:
    """LeRobot feature specs and the key map (LeRobot name -> our key)."""
    features: dict[str, Any] = {}
    key_map: dict[str, str] = {}
    for key in ds.keys:
        arr = ds.array(key)
        if key.startswith(RGB_PREFIX):
            if not is_image_key(key, arr.shape[1:], arr.dtype) or arr.shape[-1] != 3:
                raise ValueError(f"data/{key}: expected uint8 (H, W, 3) images, got {arr.dtype}{list(arr.shape[1:])}")
            cam = key[len(RGB_PREFIX):]
            name = LEROBOT_IMAGE_PREFIX + opts.cameras.get(cam, cam)
            h, w = int(arr.shape[1]), int(arr.shape[2])
            feat: dict[str, Any] = {"dtype": opts.images, "shape": [h, w, 3], "names": ["height", "width", "channels"]}
            if opts.images == "video":
                pix = opts.pix_fmt if not (opts.pix_fmt == "yuv420p" and (h % 2 or w % 2)) else "yuv444p"
                codec = {"libx264": "h264", "libx265": "hevc", "libsvtav1": "av1", "libaom-av1": "av1"}.get(
                    opts.vcodec, opts.vcodec)
                feat["info"] = {"video.height": h, "video.width": w, "video.codec": codec, "video.pix_fmt": pix,
                                "video.is_depth_map": False, "video.fps": fps, "video.channels": 3,
                                "has_audio": False}
        else:
            name = lerobot_key(key)
            feat = _lowdim_feature(key, arr)
        features[name] = feat
        key_map[name] = key
    features.update({
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    })
    return features, key_map


def _arrow_column(pa, values: np.ndarray):
    """(N,) -> plain column; (N, D) -> fixed_size_list<D> (what LeRobot's datasets Sequence(length=D) reads)."""
    values = np.ascontiguousarray(values)
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), int(values.shape[1]))


def _png_column(pa, images: np.ndarray):
    import cv2

    blobs = []
    for img in images:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        blobs.append({"bytes": buf.tobytes(), "path": None})
    return pa.array(blobs, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


def _export_lerobot_into(ds: EpisodeDataset, root: Path, opts: LeRobotExportOptions) -> None:
    pa, pq = _pa()
    hz = float(ds.attrs.get("control_hz", 10.0))
    fps = int(round(hz))
    if abs(fps - hz) > 1e-6:
        log.warning("control_hz %.3f is not an integer; LeRobot stores fps=%d", hz, fps)
    features, key_map = _export_features(ds, opts, fps)
    video_keys = [k for k, f in features.items() if f["dtype"] == "video"]
    task_text = opts.task_text or str(ds.attrs.get("task", "task"))
    stats = _Stats()

    file_counter, frames_in_file, global_index = 0, 0, 0
    rows: dict[str, list[Any]] = {}
    videos: dict[str, _VideoWriter] = {}
    episode_rows: list[dict[str, Any]] = []

    def loc(counter: int) -> dict[str, int]:
        return {"chunk_index": counter // LEROBOT_CHUNKS_SIZE, "file_index": counter % LEROBOT_CHUNKS_SIZE}

    def flush() -> None:
        if rows:
            table = pa.table({name: _concat_column(pa, parts) for name, parts in rows.items()})
            out = root / LEROBOT_DATA_PATH.format(**loc(file_counter))
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out)
            rows.clear()
        for vw in videos.values():
            vw.close()
        videos.clear()

    for ep_i in range(len(ds)):
        ep = ds.episode(ep_i)
        n = len(ep["action"]) if "action" in ep else len(next(iter(ep.values())))
        if frames_in_file and frames_in_file + n > opts.max_frames_per_file:
            flush()
            file_counter, frames_in_file = file_counter + 1, 0
        rec = {"episode_index": ep_i, "tasks": [task_text], "length": n,
               "data/chunk_index": loc(file_counter)["chunk_index"], "data/file_index": loc(file_counter)["file_index"],
               "dataset_from_index": global_index, "dataset_to_index": global_index + n}
        columns = {"timestamp": (np.arange(n) / fps).astype(np.float32), "frame_index": np.arange(n, dtype=np.int64),
                   "episode_index": np.full(n, ep_i, dtype=np.int64),
                   "index": np.arange(global_index, global_index + n, dtype=np.int64),
                   "task_index": np.zeros(n, dtype=np.int64)}
        for name, key in key_map.items():
            values = np.asarray(ep[key])
            if name in video_keys:
                if name not in videos:
                    path = root / LEROBOT_VIDEO_PATH.format(video_key=name, **loc(file_counter))
                    videos[name] = _VideoWriter(path, tuple(values.shape[1:3]), fps, opts.vcodec, opts.pix_fmt,
                                                opts.crf, opts.gop)
                start = videos[name].n_frames
                videos[name].write(values)
                rec.update({f"videos/{name}/chunk_index": loc(file_counter)["chunk_index"],
                            f"videos/{name}/file_index": loc(file_counter)["file_index"],
                            f"videos/{name}/from_timestamp": start / fps,
                            f"videos/{name}/to_timestamp": (start + n) / fps})
                stats.add(name, _image_stats(values))
            elif features[name]["dtype"] == "image":
                rows.setdefault(name, []).append(_png_column(pa, values))
                stats.add(name, _image_stats(values))
            else:
                rows.setdefault(name, []).append(_arrow_column(pa, values))
                stats.add(name, values.reshape(n, -1))
        for name, values in columns.items():
            rows.setdefault(name, []).append(_arrow_column(pa, values))
            stats.add(name, values.reshape(n, 1).astype(np.float64))
        meta = dict(ds.episodes_meta[ep_i])
        rec.update({"success": bool(ds.success[ep_i]), "source": str(meta.get("source", "")),
                    "seed": int(meta.get("seed", -1)), "pixel_dppo_meta": json.dumps(meta),
                    "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        episode_rows.append(rec)
        frames_in_file += n
        global_index += n
    flush()

    _write_lerobot_meta(root, ds, features, key_map, episode_rows, stats, task_text, fps, opts,
                        bool(video_keys), global_index)


def _concat_column(pa, parts: list[Any]):
    return pa.chunked_array(parts) if len(parts) > 1 else parts[0]


def _write_lerobot_meta(root: Path, ds: EpisodeDataset, features: dict, key_map: dict[str, str],
                        episode_rows: list[dict[str, Any]], stats: _Stats, task_text: str, fps: int,
                        opts: LeRobotExportOptions, has_video: bool, total_frames: int) -> None:
    import pandas as pd

    pa, pq = _pa()
    meta_dir = root / "meta"
    (meta_dir / "episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    info = {
        "codebase_version": LEROBOT_VERSION, "robot_type": opts.robot_type, "total_episodes": len(episode_rows),
        "total_frames": total_frames, "total_tasks": 1, "chunks_size": LEROBOT_CHUNKS_SIZE,
        "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": fps,
        "splits": {"train": f"0:{len(episode_rows)}"}, "data_path": LEROBOT_DATA_PATH,
        "video_path": LEROBOT_VIDEO_PATH if has_video else None, "features": features,
    }
    (meta_dir / "info.json").write_text(json.dumps(info, indent=4))
    (meta_dir / "stats.json").write_text(json.dumps(_shape_image_stats(stats.to_json(), features), indent=4))
    # LeRobot reads tasks with pandas and looks tasks up by the index (the task string).
    pd.DataFrame({"task_index": [0]}, index=pd.Index([task_text], name="task")).to_parquet(meta_dir / "tasks.parquet")
    columns = {k: [r.get(k) for r in episode_rows] for k in episode_rows[0]}
    table = pa.table({k: pa.array(v) for k, v in columns.items()})
    pq.write_table(table, root / LEROBOT_EPISODES_PATH.format(chunk_index=0, file_index=0))
    ours = {"format": "pixel-dppo-lerobot-export", "version": 1, "key_map": key_map,
            "attrs": {k: v for k, v in ds.attrs.items() if k not in ("format", "format_version", "created")}}
    (root / OUR_META_FILE).write_text(json.dumps(ours, indent=2))


def _shape_image_stats(stats: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
    """LeRobot keeps image stats as (C, 1, 1) lists in [0, 1]."""
    for name, feat in features.items():
        if feat["dtype"] in ("video", "image") and name in stats:
            stats[name] = {k: ([[[x]] for x in v] if k != "count" else v) for k, v in stats[name].items()}
    return stats


# ==========================================================================================
# LeRobot (v2.x / v3.0) -> ours
# ==========================================================================================
LAYOUT_PARTS = {"pos": 3, "rot6d": 6, "quat_wxyz": 4, "quat_xyzw": 4, "rotvec": 3, "gripper": 1,
                "gripper_qpos": 2, "gripper_cmd": 1, "joints": 7}
ROT_PARTS = ("rot6d", "quat_wxyz", "quat_xyzw", "rotvec")


def parse_layout(spec: str | None, dim: int, what: str) -> dict[str, slice] | None:
    """'pos=0:3,quat_xyzw=3:7,gripper=7:8' -> {name: slice}; None means 'already our layout'.

    Lets a foreign LeRobot dataset (e.g. EE pos + quaternion + finger joints) be mapped onto our
    state/action without code; absolute poses only (deltas have no defined origin here).
    """
    if spec is None:
        return None
    out: dict[str, slice] = {}
    for item in spec.split(","):
        name, sep, rng = item.strip().partition("=")
        a, sep2, b = rng.partition(":")
        if not sep or not sep2 or name not in LAYOUT_PARTS:
            raise ValueError(f"--{what}-layout item {item!r}: expected NAME=START:END, "
                             f"NAME in {sorted(LAYOUT_PARTS)}")
        s = slice(int(a), int(b))
        if s.stop - s.start != LAYOUT_PARTS[name] or s.stop > dim:
            raise ValueError(f"--{what}-layout {name}={rng}: needs {LAYOUT_PARTS[name]} values inside a {dim}-D vector")
        out[name] = s
    rots = [k for k in out if k in ROT_PARTS]
    if "pos" not in out or len(rots) != 1:
        raise ValueError(f"--{what}-layout needs 'pos' and exactly one rotation ({', '.join(ROT_PARTS)})")
    if not {"gripper", "gripper_qpos", "gripper_cmd"} & set(out):
        raise ValueError(f"--{what}-layout needs a gripper part (gripper, gripper_qpos or gripper_cmd)")
    return out


def apply_layout(x: np.ndarray, layout: dict[str, slice] | None, *, joints: bool, open_width: float) -> np.ndarray:
    """Map a (T, D) vector in a foreign layout onto ours (identity when layout is None)."""
    if layout is None:
        return np.asarray(x, dtype=np.float32)
    x = np.asarray(x, dtype=np.float64)
    rot_name = next(k for k in layout if k in ROT_PARTS)
    r = x[:, layout[rot_name]]
    rot = {"rot6d": rot6d_to_matrix, "quat_wxyz": quat_to_matrix, "quat_xyzw": quat_xyzw_to_matrix,
           "rotvec": rotvec_to_matrix}[rot_name](r)
    if "gripper" in layout:
        width = x[:, layout["gripper"]][:, 0]
    elif "gripper_qpos" in layout:
        q = x[:, layout["gripper_qpos"]]
        width = q[:, 0] - q[:, 1]
    else:
        width = gripper_command_to_width(x[:, layout["gripper_cmd"]][:, 0], open_width)
    jnt = x[:, layout["joints"]] if joints and "joints" in layout else None
    if joints and jnt is None:
        raise ValueError("--joints needs a 'joints=START:END' part in --state-layout")
    return pose_vector(x[:, layout["pos"]], rot, width, jnt)


def _column_to_numpy(col) -> np.ndarray:
    """Arrow column (scalar, list or fixed-size list) -> numpy (N,) or (N, D)."""
    import pyarrow.compute as pc

    pa, _ = _pa()
    col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    if pa.types.is_fixed_size_list(col.type):
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(len(col), col.type.list_size)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False))
        if len(lengths) and not np.all(lengths == lengths[0]):
            raise DatasetError("a list column has rows of different lengths")
        width = int(lengths[0]) if len(lengths) else 0
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(len(col), width)
    return np.asarray(col.to_numpy(zero_copy_only=False))


def _decode_image_column(col, root: Path) -> np.ndarray:
    """LeRobot `image` feature (struct of PNG/JPEG bytes or a path) -> (N, H, W, 3) uint8."""
    import cv2

    out = []
    for item in col.to_pylist():
        blob = item.get("bytes") if isinstance(item, dict) else item
        if blob is None and isinstance(item, dict) and item.get("path"):
            blob = (root / item["path"]).read_bytes()
        if blob is None:
            raise DatasetError("an image cell has neither bytes nor path")
        img = cv2.imdecode(np.frombuffer(blob, dtype=np.uint8), cv2.IMREAD_COLOR)
        out.append(img[..., ::-1])
    return np.ascontiguousarray(np.stack(out))


class _VideoCursor:
    """Sequential reader of one mp4: episodes of a v3.0 file are read in order without re-decoding."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.gen = None
        self.pos = 0  # frames decoded so far; self.last is frame pos - 1
        self.last: bytes | None = None
        self.hw: tuple[int, int] = (0, 0)

    def _open(self, path: Path) -> None:
        import imageio_ffmpeg

        self.close()
        if not path.is_file():
            raise DatasetError(f"video not found: {path}")
        self.gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(self.gen)
        w, h = meta["size"]
        self.path, self.pos, self.last, self.hw = path, 0, None, (int(h), int(w))

    def read(self, path: Path, indices: np.ndarray) -> np.ndarray:
        """Frames at non-decreasing file frame indices (reopens the file to go back)."""
        if self.path != path or (len(indices) and indices[0] < self.pos - 1):
            self._open(path)
        out = []
        h, w = self.hw
        for idx in indices:
            if idx < self.pos - 1:
                raise DatasetError(f"{path}: video frames requested out of order ({idx} after {self.pos - 1})")
            while self.pos <= idx:
                try:
                    self.last = next(self.gen)
                except StopIteration:
                    raise DatasetError(f"{path}: video ends at frame {self.pos}, frame {idx} requested") from None
                self.pos += 1
            out.append(np.frombuffer(self.last, dtype=np.uint8).reshape(h, w, 3))
        return np.stack(out) if out else np.zeros((0, h, w, 3), np.uint8)

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()
        self.gen, self.path = None, None


def _lerobot_episode_records(root: Path, info: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Per-episode metadata rows: v3.0 parquet files or v2.x episodes.jsonl."""
    _, pq = _pa()
    records: dict[int, dict[str, Any]] = {}
    ep_dir = root / "meta/episodes"
    if ep_dir.is_dir():
        for f in sorted(ep_dir.rglob("*.parquet")):
            for row in pq.read_table(f).to_pylist():
                records[int(row["episode_index"])] = row
    elif (root / "meta/episodes.jsonl").is_file():
        for line in (root / "meta/episodes.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                records[int(row["episode_index"])] = row
    return records


def _lerobot_tasks(root: Path) -> list[str]:
    _, pq = _pa()
    if (root / "meta/tasks.parquet").is_file():
        table = pq.read_table(root / "meta/tasks.parquet")
        col = "task" if "task" in table.column_names else "__index_level_0__"
        order = np.argsort(_column_to_numpy(table["task_index"]))
        return [table[col].to_pylist()[i] for i in order]
    if (root / "meta/tasks.jsonl").is_file():
        rows = [json.loads(x) for x in (root / "meta/tasks.jsonl").read_text().splitlines() if x.strip()]
        return [r["task"] for r in sorted(rows, key=lambda r: r["task_index"])]
    return []


def _lerobot_info(root: Path) -> dict[str, Any]:
    path = root / "meta/info.json"
    if not path.is_file():
        raise DatasetError(f"{root}: not a LeRobot dataset (missing meta/info.json)")
    info = json.loads(path.read_text())
    for key in ("features", "fps", "codebase_version"):
        if key not in info:
            raise DatasetError(f"{path}: missing required key '{key}'")
    major = str(info["codebase_version"]).lstrip("v").split(".")[0]
    if major not in ("2", "3"):
        raise DatasetError(f"{path}: codebase_version {info['codebase_version']} is not supported (v2.x, v3.0)")
    return info


@dataclass
class _LeRobotPlan:
    """How LeRobot features map onto our keys for one dataset."""

    root: Path
    info: dict[str, Any]
    key_map: dict[str, str]  # LeRobot name -> our key
    video_keys: list[str]
    image_keys: list[str]
    state_layout: dict[str, slice] | None
    action_layout: dict[str, slice] | None
    records: dict[int, dict[str, Any]]
    ours: dict[str, Any] | None
    tasks: list[str] = field(default_factory=list)


def _plan_lerobot(root: Path, cameras: Mapping[str, str] | None, state_layout: str | None,
                  action_layout: str | None) -> _LeRobotPlan:
    info = _lerobot_info(root)
    feats = info["features"]
    ours = json.loads((root / OUR_META_FILE).read_text()) if (root / OUR_META_FILE).is_file() else None
    for required in ("observation.state", "action"):
        if required not in feats:
            raise DatasetError(f"{root}/meta/info.json: features lack required key '{required}'")
    key_map: dict[str, str] = {}
    video_keys, image_keys = [], []
    for name, feat in feats.items():
        if name in LEROBOT_INDEX_COLUMNS:
            continue
        if feat.get("dtype") in ("video", "image"):
            cam = name[len(LEROBOT_IMAGE_PREFIX):] if name.startswith(LEROBOT_IMAGE_PREFIX) else name.replace(".", "_")
            if cameras is None and ours is not None and name in ours.get("key_map", {}):
                cam = ours["key_map"][name][len(RGB_PREFIX):]
            if cameras is not None:
                if name not in cameras and cam not in cameras:
                    continue
                cam = cameras.get(name, cameras.get(cam, cam))
            key_map[name] = RGB_PREFIX + cam
            (video_keys if feat["dtype"] == "video" else image_keys).append(name)
        elif ours is not None and name in ours.get("key_map", {}):
            key_map[name] = ours["key_map"][name]
        elif name in ("observation.state", "action"):
            key_map[name] = {"observation.state": "state", "action": "action"}[name]
        elif name == "next.reward":
            key_map[name] = "reward"
    dropped = [k for k in feats if k not in key_map and k not in LEROBOT_INDEX_COLUMNS]
    if dropped:
        log.info("%s: features not converted: %s", root, dropped)
    if cameras is not None:
        found = {k for k in key_map if k in video_keys + image_keys}
        missing = [c for c in cameras if c not in found and LEROBOT_IMAGE_PREFIX + c not in found]
        if missing:
            raise DatasetError(f"{root}: cameras {missing} not among the image features "
                               f"{[k for k, f in feats.items() if f.get('dtype') in ('video', 'image')]}")
    s_dim, a_dim = int(feats["observation.state"]["shape"][0]), int(feats["action"]["shape"][0])
    s_layout = parse_layout(state_layout, s_dim, "state")
    a_layout = parse_layout(action_layout, a_dim, "action")
    if s_layout is None and s_dim not in (10, 17):
        raise DatasetError(f"{root}: observation.state is {s_dim}-D, not our 10/17-D layout; describe it with "
                           "--state-layout, e.g. pos=0:3,quat_xyzw=3:7,gripper=7:8")
    if a_layout is None and a_dim != 10:
        raise DatasetError(f"{root}: action is {a_dim}-D, not our 10-D absolute EE layout; describe it with "
                           "--action-layout, e.g. pos=0:3,rotvec=3:6,gripper_cmd=6:7")
    if ours is None and (s_layout is None or a_layout is None):
        log.warning("%s was not written by our exporter: assuming its %s already follow our layout "
                    "(pos, 6D rotation rows, gripper width m)", root,
                    " and ".join(n for n, lay in (("state", s_layout), ("action", a_layout)) if lay is None))
    return _LeRobotPlan(root, info, key_map, video_keys, image_keys, s_layout, a_layout,
                        _lerobot_episode_records(root, info), ours, _lerobot_tasks(root))


def read_lerobot(root: Path, *, cameras: Mapping[str, str] | None = None, state_layout: str | None = None,
                 action_layout: str | None = None, include_joints: bool | None = None, task: str | None = None,
                 gripper_open_width: float = GRIPPER_MAX_WIDTH) -> tuple[Source, bool]:
    """Open a LeRobot folder; returns the Source and whether state carries joints."""
    root = Path(root)
    plan = _plan_lerobot(root, cameras, state_layout, action_layout)
    feats = plan.info["features"]
    s_dim = int(feats["observation.state"]["shape"][0])
    joints = (s_dim == 17) if plan.state_layout is None else bool(include_joints)
    tasks = plan.tasks
    ours_attrs = dict(plan.ours["attrs"]) if plan.ours else {}
    notes = ["images decoded from mp4 (lossy)"] if plan.video_keys else []
    if plan.state_layout is not None or plan.action_layout is not None:
        notes.append(f"state layout {state_layout!r}, action layout {action_layout!r} mapped onto ours")
    if plan.ours is None:
        notes.append("episode success taken from next.success when present, else assumed (demonstrations)")
    extra = {k: v for k, v in ours_attrs.items()
             if k not in ("task", "schema", "control_hz", "cameras", "source_format", "source_path", "conversion")}
    if ours_attrs.get("source_format"):
        extra["original_source_format"] = ours_attrs["source_format"]
    cam_sources = {plan.key_map[k][len(RGB_PREFIX):]: k for k in plan.video_keys + plan.image_keys}
    src = Source(task=task or ours_attrs.get("task") or (tasks[0] if tasks else root.name),
                 control_hz=float(plan.info["fps"]), source_format="lerobot", camera_sources=cam_sources,
                 episodes=_lerobot_episodes(plan, joints, gripper_open_width), notes=notes,
                 extra_attrs={"frame": ours_attrs.get("frame", "unknown"), "lerobot_tasks": tasks,
                              "lerobot_codebase_version": plan.info["codebase_version"], **extra})
    return src, joints


def _data_files(root: Path) -> list[Path]:
    files = sorted((root / "data").rglob("*.parquet")) if (root / "data").is_dir() else []
    if not files:
        raise DatasetError(f"{root}: no parquet files under data/")
    return files


def _lerobot_episodes(plan: _LeRobotPlan, joints: bool, open_width: float) -> Iterator[Episode]:
    """Yield episodes file by file (a v3.0 file holds many episodes, never a partial one)."""
    _, pq = _pa()
    cursors = {k: _VideoCursor() for k in plan.video_keys}
    files = _data_files(plan.root)
    first_ep = {f: int(_column_to_numpy(pq.read_table(f, columns=["episode_index"])["episode_index"]).min())
                for f in files}
    try:
        for f in sorted(files, key=lambda p: first_ep[p]):
            table = pq.read_table(f)
            for col in ("episode_index", "frame_index"):
                if col not in table.column_names:
                    raise DatasetError(f"{f}: missing required column '{col}'")
            ep_idx = _column_to_numpy(table["episode_index"]).astype(np.int64)
            frame_idx = _column_to_numpy(table["frame_index"]).astype(np.int64)
            order = np.lexsort((frame_idx, ep_idx))
            for ep in np.unique(ep_idx):
                rows = order[ep_idx[order] == ep]
                yield _lerobot_episode(plan, table.take(rows), int(ep), cursors, joints, open_width)
    finally:
        for c in cursors.values():
            c.close()


def _video_location(plan: _LeRobotPlan, name: str, ep: int) -> tuple[Path, float]:
    """(mp4 path, start time in it) of an episode's video: v3.0 from meta/episodes, v2.x per episode."""
    info = plan.info
    rec = plan.records.get(ep, {})
    if f"videos/{name}/chunk_index" in rec:
        path = info["video_path"].format(video_key=name, chunk_index=int(rec[f"videos/{name}/chunk_index"]),
                                          file_index=int(rec[f"videos/{name}/file_index"]))
        return plan.root / path, float(rec[f"videos/{name}/from_timestamp"])
    if not info.get("video_path"):
        raise DatasetError(f"{plan.root}: video feature {name} but no video_path in info.json")
    chunk = ep // int(info.get("chunks_size", LEROBOT_CHUNKS_SIZE))
    try:
        path = info["video_path"].format(video_key=name, episode_chunk=chunk, episode_index=ep)
    except KeyError as e:
        raise DatasetError(f"{plan.root}: episode {ep} has no video location for {name} in meta/episodes") from e
    return plan.root / path, 0.0


def _lerobot_episode(plan: _LeRobotPlan, table, ep: int, cursors: dict[str, _VideoCursor], joints: bool,
                     open_width: float) -> Episode:
    n = table.num_rows
    fps = float(plan.info["fps"])
    frames: dict[str, np.ndarray] = {}
    for name, key in plan.key_map.items():
        if name in plan.video_keys:
            path, start = _video_location(plan, name, ep)
            ts = _column_to_numpy(table["timestamp"]).astype(np.float64) if "timestamp" in table.column_names \
                else _column_to_numpy(table["frame_index"]) / fps
            frames[key] = cursors[name].read(path, np.round((start + ts) * fps).astype(np.int64))
            continue
        if name not in table.column_names:
            raise DatasetError(f"{plan.root}: episode {ep} lacks required column '{name}'")
        if name in plan.image_keys:
            frames[key] = _decode_image_column(table[name], plan.root)
            continue
        values = _column_to_numpy(table[name])
        if name == "observation.state":
            values = apply_layout(values, plan.state_layout, joints=joints, open_width=open_width)
        elif name == "action":
            values = apply_layout(values, plan.action_layout, joints=False, open_width=open_width)
        frames[key] = values
    rec = plan.records.get(ep, {})
    meta = json.loads(rec["pixel_dppo_meta"]) if rec.get("pixel_dppo_meta") else {}
    success = bool(rec["success"]) if rec.get("success") is not None else True
    if "next.success" in table.column_names and rec.get("success") is None:
        success = bool(np.any(_column_to_numpy(table["next.success"])))
    here = {"format": "lerobot", "path": str(plan.root.resolve()), "episode_index": ep}
    # Our own exports carry the original record: keep it (origin stays the first source).
    carried = {k: v for k, v in meta.items() if k not in ("index", "length", "success", "source", "seed", "timestamp")}
    if meta.get("source"):
        carried["original_source"] = meta["source"]
    carried["lerobot_origin" if "origin" in carried else "origin"] = here
    if len(plan.tasks) > 1 and "task_index" in table.column_names:  # multi-task: keep each episode's task
        carried["task"] = plan.tasks[int(_column_to_numpy(table["task_index"])[0])]
    for k, v in frames.items():
        if len(v) != n:
            raise DatasetError(f"{plan.root}: episode {ep} has {len(v)} values of {k} for {n} frames")
    return Episode(frames=frames, success=success, seed=int(meta.get("seed", -1)), meta=carried)


# ==========================================================================================
# CLI
# ==========================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data.convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="source file or folder")
    p.add_argument("dst", type=Path, help="output folder (zarr dataset, or LeRobot folder with --to lerobot)")
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="src_format", choices=FORMATS, help="convert this format into ours")
    direction.add_argument("--to", dest="dst_format", choices=("lerobot",), help="convert ours into this format")
    p.add_argument("--task", help="dataset task name (default: from the source)")
    p.add_argument("--camera", action="append", metavar="SRC=DST",
                   help="camera mapping, repeatable (e.g. agentview_image=front); replaces the default mapping")
    p.add_argument("--joints", action="store_true", help="append the 7 arm joint positions to state")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--gripper-open-width", type=float, default=None,
                   help="width target for an 'open' command (default 0.08 m; furniture-bench: per furniture)")
    g = p.add_argument_group("robomimic")
    g.add_argument("--filter-key", help="only demos listed in mask/<KEY>")
    g.add_argument("--stride", type=int, default=1, help="keep every N-th step (robomimic records at 20 Hz)")
    g.add_argument("--base-pos", type=float, nargs=3, metavar=("X", "Y", "Z"), help="robot base position in world")
    g.add_argument("--base-quat", type=float, nargs=4, metavar=("W", "X", "Y", "Z"), help="robot base rotation")
    g.add_argument("--vflip", action="store_true", help="flip images vertically (upside-down robosuite renders)")
    g = p.add_argument_group("lerobot import")
    g.add_argument("--state-layout", help="foreign observation.state layout, e.g. pos=0:3,quat_xyzw=3:7,gripper=7:8")
    g.add_argument("--action-layout", help="foreign absolute action layout, e.g. pos=0:3,rotvec=3:6,gripper_cmd=6:7")
    g = p.add_argument_group("lerobot export")
    g.add_argument("--images", choices=("video", "image"), default="video", help="mp4 videos (lossy) or PNG in parquet")
    g.add_argument("--vcodec", default="libx264", help="ffmpeg encoder (libx264, libsvtav1, ...)")
    g.add_argument("--pix-fmt", default="yuv420p", help="video pixel format (yuv444p keeps full colour resolution)")
    g.add_argument("--crf", type=int, default=18, help="video quality (lower = better)")
    g.add_argument("--task-text", help="LeRobot task description (default: the dataset's task)")
    g.add_argument("--robot-type", default="franka")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cameras = parse_mapping(args.camera, {}) if args.camera else None
    if args.dst_format == "lerobot":
        opts = LeRobotExportOptions(images=args.images, vcodec=args.vcodec, pix_fmt=args.pix_fmt, crf=args.crf,
                                    task_text=args.task_text or args.task, robot_type=args.robot_type,
                                    cameras=cameras or {})
        export_lerobot(args.src, args.dst, opts, overwrite=args.overwrite)
        return 0
    joints = args.joints
    if args.src_format == "robomimic":
        src = read_robomimic(args.src, cameras=cameras, filter_key=args.filter_key, base_pos=args.base_pos,
                             base_quat=args.base_quat, include_joints=joints, stride=args.stride, vflip=args.vflip,
                             gripper_open_width=args.gripper_open_width or GRIPPER_MAX_WIDTH, task=args.task)
    elif args.src_format == "furniture_bench":
        src = read_furniture_bench(args.src, cameras=cameras, include_joints=joints,
                                   gripper_open_width=args.gripper_open_width, task=args.task)
    else:
        src, joints = read_lerobot(args.src, cameras=cameras, state_layout=args.state_layout,
                                   action_layout=args.action_layout, include_joints=joints, task=args.task,
                                   gripper_open_width=args.gripper_open_width or GRIPPER_MAX_WIDTH)
    write_ours(src, args.dst, joints, Path(args.src).resolve(), overwrite=args.overwrite)
    return 0


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, src_format: str | None = None,
            to: str | None = None, **options: Any) -> int:
    """Programmatic entry point mirroring the CLI (options use the CLI's long names with underscores)."""
    argv = [str(src), str(dst)] + (["--from", src_format] if src_format else []) + (["--to", to] if to else [])
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif v is None or v is False:
            continue
        elif isinstance(v, (list, tuple)):
            if k == "camera":
                for item in v:
                    argv += [flag, str(item)]
            else:
                argv += [flag, *map(str, v)]
        else:
            argv += [flag, str(v)]
    return main(argv)


def cli() -> int:
    """Command-line wrapper: a bad input prints one clear line instead of a traceback."""
    try:
        return main()
    except (DatasetError, ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
