"""A LeRobot v2.x / v3.0 folder -> our episodes.

Written against the documented on-disk layout (lerobot itself pins numpy>=2 and another torch,
so it is not installed here): v3.0 (`meta/info.json`, `meta/tasks.parquet`,
`meta/episodes/chunk-XXX/file-XXX.parquet`, `data/chunk-XXX/file-XXX.parquet`, videos in
`videos/<key>/chunk-XXX/file-XXX.mp4` concatenating episodes) and v2.x (`episodes.jsonl`,
`tasks.jsonl`, one parquet and one mp4 per episode) are read. Datasets that LeRobot itself wrote
(AV1 video, several tasks) and our own exports (which carry `meta/pixel_dppo.json`) convert back.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from data.convert.common import Episode, Source
from data.convert.errors import DatasetFormatError
from data.convert.lerobot.columns import arrow, column_to_numpy, decode_image_column
from data.convert.lerobot.format import (LEROBOT_CHUNKS_SIZE, LEROBOT_IMAGE_PREFIX, LEROBOT_INDEX_COLUMNS,
                                         OUR_META_FILE)
from data.convert.lerobot.layout import apply_layout, parse_layout
from data.convert.lerobot.meta import read_episode_records, read_info, read_our_meta, read_tasks
from data.convert.lerobot.video import VideoCursor
from data.episodes import DatasetError
from data.schema import GRIPPER_MAX_WIDTH, RGB_PREFIX

log = logging.getLogger(__name__)


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
    tasks: dict[int, str] = field(default_factory=dict)  # task_index -> text
    default_task: str = ""  # the dataset's task, for episodes that name none
    notes: list[str] = field(default_factory=list)  # the Source's notes (episodes may add to them)


def _plan_lerobot(root: Path, cameras: Mapping[str, str] | None, state_layout: str | None,
                  action_layout: str | None) -> _LeRobotPlan:
    """Decide, before any frame is read, which features become which of our keys (fails early)."""
    info = read_info(root)  # checked: features is an object of objects, state/action shapes are (D,)
    feats = info["features"]
    ours = read_our_meta(root / OUR_META_FILE)
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
                        read_episode_records(root), ours, read_tasks(root))


def read_lerobot(root: Path, *, cameras: Mapping[str, str] | None = None, state_layout: str | None = None,
                 action_layout: str | None = None, include_joints: bool | None = None, task: str | None = None,
                 gripper_open_width: float = GRIPPER_MAX_WIDTH) -> tuple[Source, bool]:
    """Open a LeRobot folder; returns the Source and whether state carries joints."""
    root = Path(root)
    plan = _plan_lerobot(root, cameras, state_layout, action_layout)
    feats = plan.info["features"]
    s_dim = int(feats["observation.state"]["shape"][0])
    joints = (s_dim == 17) if plan.state_layout is None else bool(include_joints)
    tasks = [plan.tasks[i] for i in sorted(plan.tasks)]
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
    plan.default_task = task or ours_attrs.get("task") or (tasks[0] if tasks else root.name)
    plan.notes = notes
    src = Source(task=plan.default_task,
                 control_hz=float(plan.info["fps"]), source_format="lerobot", camera_sources=cam_sources,
                 episodes=_lerobot_episodes(plan, joints, gripper_open_width), notes=notes,
                 extra_attrs={"frame": ours_attrs.get("frame", "unknown"), "lerobot_tasks": tasks,
                              "lerobot_codebase_version": plan.info["codebase_version"], **extra})
    return src, joints


def _data_files(root: Path) -> list[Path]:
    """Every data parquet (v3.0 files of many episodes, or v2.x one per episode)."""
    files = sorted((root / "data").rglob("*.parquet")) if (root / "data").is_dir() else []
    if not files:
        raise DatasetError(f"{root}: no parquet files under data/")
    return files


def _lerobot_episodes(plan: _LeRobotPlan, joints: bool, open_width: float) -> Iterator[Episode]:
    """Yield episodes file by file (a v3.0 file holds many episodes, never a partial one)."""
    _, pq = arrow()
    cursors = {k: VideoCursor() for k in plan.video_keys}
    files = _data_files(plan.root)
    first_ep = {f: int(column_to_numpy(pq.read_table(f, columns=["episode_index"])["episode_index"]).min())
                for f in files}
    try:
        for f in sorted(files, key=lambda p: first_ep[p]):
            table = pq.read_table(f)
            for col in ("episode_index", "frame_index"):
                if col not in table.column_names:
                    raise DatasetError(f"{f}: missing required column '{col}'")
            ep_idx = column_to_numpy(table["episode_index"]).astype(np.int64)
            frame_idx = column_to_numpy(table["frame_index"]).astype(np.int64)
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


def _lerobot_episode(plan: _LeRobotPlan, table, ep: int, cursors: dict[str, VideoCursor], joints: bool,
                     open_width: float) -> Episode:
    """One episode's rows (sorted by frame) -> Episode, with provenance and our exported metadata kept."""
    n = table.num_rows
    fps = float(plan.info["fps"])
    frames: dict[str, np.ndarray] = {}
    for name, key in plan.key_map.items():
        if name in plan.video_keys:
            path, start = _video_location(plan, name, ep)
            ts = column_to_numpy(table["timestamp"]).astype(np.float64) if "timestamp" in table.column_names \
                else column_to_numpy(table["frame_index"]) / fps
            frames[key] = cursors[name].read(path, np.round((start + ts) * fps).astype(np.int64))
            continue
        if name not in table.column_names:
            raise DatasetError(f"{plan.root}: episode {ep} lacks required column '{name}'")
        if name in plan.image_keys:
            frames[key] = decode_image_column(table[name], plan.root)
            continue
        values = column_to_numpy(table[name])
        if name == "observation.state":
            values = apply_layout(values, plan.state_layout, joints=joints, open_width=open_width)
        elif name == "action":
            values = apply_layout(values, plan.action_layout, joints=False, open_width=open_width)
        frames[key] = values
    rec = plan.records.get(ep, {})
    try:
        meta = json.loads(rec["pixel_dppo_meta"]) if rec.get("pixel_dppo_meta") else {}
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{plan.root}/meta/episodes: episode {ep} has a malformed 'pixel_dppo_meta' "
                                 f"({e.msg})") from e
    success = bool(rec["success"]) if rec.get("success") is not None else True
    if "next.success" in table.column_names and rec.get("success") is None:
        success = bool(np.any(column_to_numpy(table["next.success"])))
    here = {"format": "lerobot", "path": str(plan.root.resolve()), "episode_index": ep}
    # Our own exports carry the original record: keep it (origin stays the first source).
    carried = {k: v for k, v in meta.items() if k not in ("index", "length", "success", "source", "seed", "timestamp")}
    if meta.get("source"):
        carried["original_source"] = meta["source"]
    carried["lerobot_origin" if "origin" in carried else "origin"] = here
    ep_tasks = _episode_tasks(plan, table, ep)
    carried["task"] = ep_tasks[0]  # every episode keeps its own task (export writes it back per episode)
    if len(ep_tasks) > 1:
        carried["tasks"] = ep_tasks
        note = "episodes with several tasks keep them as a list; which frame had which task is not kept"
        if note not in plan.notes:
            log.warning("%s: episode %d has tasks %s: %s", plan.root, ep, ep_tasks, note)
            plan.notes.append(note)
    for k, v in frames.items():
        if len(v) != n:
            raise DatasetError(f"{plan.root}: episode {ep} has {len(v)} values of {k} for {n} frames")
    return Episode(frames=frames, success=success, seed=int(meta.get("seed", -1)), meta=carried)


def _episode_tasks(plan: _LeRobotPlan, table: Any, ep: int) -> list[str]:
    """The episode's task texts in order of first use: from its frames' task_index (what LeRobot itself
    reads), else its metadata record's `tasks`, else the dataset's task."""
    if "task_index" in table.column_names and plan.tasks:
        used = list(dict.fromkeys(column_to_numpy(table["task_index"]).astype(np.int64).tolist()))
        unknown = [i for i in used if i not in plan.tasks]
        if unknown:
            raise DatasetFormatError(f"{plan.root}/meta: episode {ep} uses task_index {unknown}, which the tasks "
                                     f"file does not define (it has {sorted(plan.tasks)})")
        return [plan.tasks[i] for i in used]
    listed = plan.records.get(ep, {}).get("tasks")
    if isinstance(listed, str):
        listed = [listed]
    if isinstance(listed, list) and listed and all(isinstance(t, str) for t in listed):
        return list(listed)
    return [plan.default_task]
