"""Read and check a LeRobot folder's metadata: info.json, tasks and per-episode records (v2.x, v3.0).

v3.0 keeps tasks in `meta/tasks.parquet` and episode records in `meta/episodes/**.parquet`;
v2.x in `meta/tasks.jsonl` and `meta/episodes.jsonl`. The reader only sees the merged result.

These files come from other people's tools, so every value the reader relies on is checked
here, once, and a malformed one raises DatasetFormatError naming the file and what is wrong
(instead of a TypeError or KeyError somewhere later).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from data.convert.errors import DatasetFormatError
from data.convert.lerobot.columns import arrow, column_to_numpy

INFO_FILE = "meta/info.json"
INFO_REQUIRED = ("codebase_version", "fps", "features")
REQUIRED_FEATURES = ("observation.state", "action")
SUPPORTED_MAJOR = ("2", "3")


def _json_type(value: Any) -> str:
    """JSON's name for a parsed value's type (what the user sees in the file)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def load_json(path: Path) -> Any:
    """Parse a JSON file; unreadable bytes or bad syntax raise DatasetFormatError with the file and position."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: cannot read the file ({e})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e


def load_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-empty line of a JSON-lines file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: cannot read the file ({e})") from e
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{path}: line {n} is not valid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(row, dict):
            raise DatasetFormatError(f"{path}: line {n} should be a JSON object, got {_json_type(row)}")
        rows.append((n, row))
    return rows


def read_parquet(path: Path) -> Any:
    """A metadata parquet table; a damaged file raises DatasetFormatError instead of pyarrow's nameless error."""
    _, pq = arrow()
    try:
        return pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise DatasetFormatError(f"{path}: not a readable parquet file ({e})") from e


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_features(path: Path, feats: Any) -> None:
    if not isinstance(feats, dict):
        raise DatasetFormatError(f"{path}: 'features' should be an object mapping feature names to "
                                 f"{{dtype, shape, names}}, got {_json_type(feats)}")
    for name, feat in feats.items():
        if not isinstance(feat, dict):
            raise DatasetFormatError(f"{path}: features['{name}'] should be an object with dtype and shape, "
                                     f"got {_json_type(feat)}")
        if not isinstance(feat.get("dtype"), str):
            raise DatasetFormatError(f"{path}: features['{name}'] has no string 'dtype' (got {feat.get('dtype')!r})")
    for name in REQUIRED_FEATURES:
        if name not in feats:
            raise DatasetFormatError(f"{path}: features lack required key '{name}'")
        shape = feats[name].get("shape")
        if not (isinstance(shape, list) and len(shape) == 1 and _is_count(shape[0])):
            raise DatasetFormatError(f"{path}: features['{name}']['shape'] should be a list of one positive "
                                     f"integer (the vector size), got {shape!r}")


def read_info(root: Path) -> dict[str, Any]:
    """meta/info.json, checked for everything the reader relies on (features, fps, version, paths)."""
    path = root / INFO_FILE
    if not path.is_file():
        raise DatasetFormatError(f"{root}: not a LeRobot dataset (missing {INFO_FILE})")
    info = load_json(path)
    if not isinstance(info, dict):
        raise DatasetFormatError(f"{path}: should hold a JSON object (codebase_version, fps, features, ...), "
                                 f"got {_json_type(info)}")
    missing = [k for k in INFO_REQUIRED if k not in info]
    if missing:
        raise DatasetFormatError(f"{path}: missing required key{'s' if len(missing) > 1 else ''} "
                                 + ", ".join(f"'{k}'" for k in missing))
    version = info["codebase_version"]
    if not isinstance(version, str):
        raise DatasetFormatError(f"{path}: 'codebase_version' should be a string such as 'v3.0', got {version!r}")
    if version.lstrip("v").split(".")[0] not in SUPPORTED_MAJOR:
        raise DatasetFormatError(f"{path}: codebase_version {version} is not supported (v2.x, v3.0)")
    fps = info["fps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise DatasetFormatError(f"{path}: 'fps' should be a positive number, got {fps!r}")
    for key in ("data_path", "video_path"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise DatasetFormatError(f"{path}: '{key}' should be a path template string, got {info[key]!r}")
    if "chunks_size" in info and not _is_count(info["chunks_size"]):
        raise DatasetFormatError(f"{path}: 'chunks_size' should be a positive integer, got {info['chunks_size']!r}")
    _check_features(path, info["features"])
    return info


def read_our_meta(path: Path) -> dict[str, Any] | None:
    """Our exporter's meta/pixel_dppo.json (key map and attrs), or None for a dataset we did not write."""
    if not path.is_file():
        return None
    ours = load_json(path)
    if not isinstance(ours, dict) or not isinstance(ours.get("key_map", {}), dict) \
            or not isinstance(ours.get("attrs", {}), dict):
        raise DatasetFormatError(f"{path}: should be an object with 'key_map' and 'attrs' objects")
    return ours


def read_tasks(root: Path) -> dict[int, str]:
    """{task_index: task text}: frames name their task by index, and indices need not start at 0."""
    if (root / "meta/tasks.parquet").is_file():
        path = root / "meta/tasks.parquet"
        table = read_parquet(path)
        col = "task" if "task" in table.column_names else "__index_level_0__"
        if "task_index" not in table.column_names or col not in table.column_names:
            raise DatasetFormatError(f"{path}: needs a 'task_index' column and the task text (column or index "
                                     f"'task'), has {table.column_names}")
        indices = column_to_numpy(table["task_index"]).astype(np.int64).tolist()
        return dict(zip(indices, table[col].to_pylist()))
    if (root / "meta/tasks.jsonl").is_file():
        path = root / "meta/tasks.jsonl"
        rows = load_jsonl(path)
        for n, r in rows:
            if not isinstance(r.get("task"), str) or not isinstance(r.get("task_index"), int):
                raise DatasetFormatError(f"{path}: line {n} needs 'task' (text) and 'task_index' (integer)")
        return {r["task_index"]: r["task"] for _, r in rows}
    return {}


def read_episode_records(root: Path) -> dict[int, dict[str, Any]]:
    """Per-episode metadata rows by episode_index: v3.0 parquet files or v2.x episodes.jsonl."""
    records: dict[int, dict[str, Any]] = {}
    ep_dir = root / "meta/episodes"
    if ep_dir.is_dir():
        for f in sorted(ep_dir.rglob("*.parquet")):
            table = read_parquet(f)
            if "episode_index" not in table.column_names:
                raise DatasetFormatError(f"{f}: missing required column 'episode_index'")
            for row in table.to_pylist():
                records[int(row["episode_index"])] = row
    elif (root / "meta/episodes.jsonl").is_file():
        path = root / "meta/episodes.jsonl"
        for n, row in load_jsonl(path):
            if not isinstance(row.get("episode_index"), int):
                raise DatasetFormatError(f"{path}: line {n} has no integer 'episode_index'")
            records[row["episode_index"]] = row
    return records
