"""Our zarr dataset -> a LeRobot v3.0 folder.

Layout written: `meta/info.json`, `meta/stats.json`, `meta/tasks.parquet`,
`meta/episodes/chunk-XXX/file-XXX.parquet`, `data/chunk-XXX/file-XXX.parquet` and videos in
`videos/<key>/chunk-XXX/file-XXX.mp4` concatenating episodes. Images go to mp4 (lossy; default
H.264 crf 18) or, with `images="image"`, to lossless PNG inside the parquet; low-dim values
round-trip bit-exactly (float32 columns). Our own attrs and key map go to `meta/pixel_dppo.json`
(LeRobot ignores unknown meta files), so importing our export back restores them.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.convert.lerobot.columns import arrow, arrow_column, concat_column, png_column
from data.convert.lerobot.format import (LEROBOT_CHUNKS_SIZE, LEROBOT_DATA_PATH, LEROBOT_EPISODES_PATH,
                                         LEROBOT_IMAGE_PREFIX, LEROBOT_VERSION, LEROBOT_VIDEO_PATH, OUR_META_FILE,
                                         feature_names, lerobot_key)
from data.convert.lerobot.stats import Stats, image_stats, shape_image_stats
from data.convert.lerobot.video import VideoWriter
from data.convert.staging import commit_staging, staging_dir
from data.episodes import DatasetError, EpisodeDataset, is_image_key
from data.schema import RGB_PREFIX

log = logging.getLogger(__name__)


@dataclass
class LeRobotExportOptions:
    """How to write the LeRobot copy: image encoding, task text, robot type and camera names."""

    images: str = "video"  # "video" (mp4) or "image" (PNG bytes in the parquet, lossless)
    vcodec: str = "libx264"
    pix_fmt: str = "yuv420p"
    crf: int = 18
    gop: int = 2  # LeRobot uses short GOPs so random frame access stays cheap
    task_text: str | None = None  # one task for every episode; None: each episode's own task, else the dataset's
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
    tmp = staging_dir(Path(dst), overwrite)
    try:
        _export_lerobot_into(ds, tmp, opts)
        commit_staging(tmp, Path(dst))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote LeRobot %s dataset with %d episodes to %s", LEROBOT_VERSION, len(ds), dst)
    return len(ds)


def episode_task(meta: dict[str, Any], task_text: str | None, dataset_task: str) -> str:
    """The task an episode is exported under: an explicit --task-text for all, else the episode's own
    `task` attribute (what import keeps per episode), else the dataset's task."""
    if task_text:
        return task_text
    own = meta.get("task")
    return own if isinstance(own, str) and own else dataset_task


def _lowdim_feature(key: str, arr: Any) -> dict[str, Any]:
    """Feature spec of a vector/scalar array; LeRobot has no place for per-frame matrices."""
    shape = tuple(arr.shape[1:]) or (1,)
    if len(shape) != 1:
        raise ValueError(f"data/{key} has per-frame shape {shape}; only vectors and scalars go to LeRobot")
    return {"dtype": str(np.dtype(arr.dtype)), "shape": list(shape), "names": feature_names(key, shape[0])}


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


def _export_lerobot_into(ds: EpisodeDataset, root: Path, opts: LeRobotExportOptions) -> None:
    """Write data files, videos and metadata into ROOT, one episode at a time (bounded memory)."""
    pa, pq = arrow()
    hz = float(ds.attrs.get("control_hz", 10.0))
    fps = int(round(hz))
    if abs(fps - hz) > 1e-6:
        log.warning("control_hz %.3f is not an integer; LeRobot stores fps=%d", hz, fps)
    features, key_map = _export_features(ds, opts, fps)
    video_keys = [k for k, f in features.items() if f["dtype"] == "video"]
    dataset_task = str(ds.attrs.get("task", "task"))
    task_index: dict[str, int] = {}  # task text -> task_index, in order of first use
    stats = Stats()

    file_counter, frames_in_file, global_index = 0, 0, 0
    rows: dict[str, list[Any]] = {}
    videos: dict[str, VideoWriter] = {}
    episode_rows: list[dict[str, Any]] = []

    def loc(counter: int) -> dict[str, int]:
        return {"chunk_index": counter // LEROBOT_CHUNKS_SIZE, "file_index": counter % LEROBOT_CHUNKS_SIZE}

    def flush() -> None:
        if rows:
            table = pa.table({name: concat_column(pa, parts) for name, parts in rows.items()})
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
        meta = dict(ds.episodes_meta[ep_i])
        task = episode_task(meta, opts.task_text, dataset_task)
        t_idx = task_index.setdefault(task, len(task_index))
        rec = {"episode_index": ep_i, "tasks": [task], "length": n,
               "data/chunk_index": loc(file_counter)["chunk_index"], "data/file_index": loc(file_counter)["file_index"],
               "dataset_from_index": global_index, "dataset_to_index": global_index + n}
        columns = {"timestamp": (np.arange(n) / fps).astype(np.float32), "frame_index": np.arange(n, dtype=np.int64),
                   "episode_index": np.full(n, ep_i, dtype=np.int64),
                   "index": np.arange(global_index, global_index + n, dtype=np.int64),
                   "task_index": np.full(n, t_idx, dtype=np.int64)}
        for name, key in key_map.items():
            values = np.asarray(ep[key])
            if name in video_keys:
                if name not in videos:
                    path = root / LEROBOT_VIDEO_PATH.format(video_key=name, **loc(file_counter))
                    videos[name] = VideoWriter(path, tuple(values.shape[1:3]), fps, opts.vcodec, opts.pix_fmt,
                                                opts.crf, opts.gop)
                start = videos[name].n_frames
                videos[name].write(values)
                rec.update({f"videos/{name}/chunk_index": loc(file_counter)["chunk_index"],
                            f"videos/{name}/file_index": loc(file_counter)["file_index"],
                            f"videos/{name}/from_timestamp": start / fps,
                            f"videos/{name}/to_timestamp": (start + n) / fps})
                stats.add(name, image_stats(values))
            elif features[name]["dtype"] == "image":
                rows.setdefault(name, []).append(png_column(pa, values))
                stats.add(name, image_stats(values))
            else:
                rows.setdefault(name, []).append(arrow_column(pa, values))
                stats.add(name, values.reshape(n, -1))
        for name, values in columns.items():
            rows.setdefault(name, []).append(arrow_column(pa, values))
            stats.add(name, values.reshape(n, 1).astype(np.float64))
        rec.update({"success": bool(ds.success[ep_i]), "source": str(meta.get("source", "")),
                    "seed": int(meta.get("seed", -1)), "pixel_dppo_meta": json.dumps(meta),
                    "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        episode_rows.append(rec)
        frames_in_file += n
        global_index += n
    flush()

    _write_lerobot_meta(root, ds, features, key_map, episode_rows, stats, list(task_index), fps, opts,
                        bool(video_keys), global_index)


def _write_lerobot_meta(root: Path, ds: EpisodeDataset, features: dict, key_map: dict[str, str],
                        episode_rows: list[dict[str, Any]], stats: Stats, tasks: list[str], fps: int,
                        opts: LeRobotExportOptions, has_video: bool, total_frames: int) -> None:
    """info.json, stats.json, tasks.parquet, the episodes parquet and our own meta file."""
    import pandas as pd

    pa, pq = arrow()
    meta_dir = root / "meta"
    (meta_dir / "episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    info = {
        "codebase_version": LEROBOT_VERSION, "robot_type": opts.robot_type, "total_episodes": len(episode_rows),
        "total_frames": total_frames, "total_tasks": len(tasks), "chunks_size": LEROBOT_CHUNKS_SIZE,
        "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": fps,
        "splits": {"train": f"0:{len(episode_rows)}"}, "data_path": LEROBOT_DATA_PATH,
        "video_path": LEROBOT_VIDEO_PATH if has_video else None, "features": features,
    }
    (meta_dir / "info.json").write_text(json.dumps(info, indent=4))
    (meta_dir / "stats.json").write_text(json.dumps(shape_image_stats(stats.to_json(), features), indent=4))
    # LeRobot reads tasks with pandas and looks tasks up by the index (the task string); tasks[i] has task_index i.
    pd.DataFrame({"task_index": list(range(len(tasks)))},
                 index=pd.Index(tasks, name="task")).to_parquet(meta_dir / "tasks.parquet")
    columns = {k: [r.get(k) for r in episode_rows] for k in episode_rows[0]}
    table = pa.table({k: pa.array(v) for k, v in columns.items()})
    pq.write_table(table, root / LEROBOT_EPISODES_PATH.format(chunk_index=0, file_index=0))
    ours = {"format": "pixel-dppo-lerobot-export", "version": 1, "key_map": key_map,
            "attrs": {k: v for k, v in ds.attrs.items() if k not in ("format", "format_version", "created")}}
    (root / OUR_META_FILE).write_text(json.dumps(ours, indent=2))
