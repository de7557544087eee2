"""Read a LeRobot folder's metadata: info.json, tasks and per-episode records (v2.x and v3.0).

v3.0 keeps tasks in `meta/tasks.parquet` and episode records in `meta/episodes/**.parquet`;
v2.x in `meta/tasks.jsonl` and `meta/episodes.jsonl`. The reader only sees the merged result.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from data.convert.lerobot.columns import arrow, column_to_numpy
from data.episodes import DatasetError


def read_info(root: Path) -> dict[str, Any]:
    """meta/info.json, checked for what the reader relies on (features, fps, a supported version)."""
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


def read_tasks(root: Path) -> list[str]:
    """Task strings ordered by task_index (frames refer to tasks by that index)."""
    _, pq = arrow()
    if (root / "meta/tasks.parquet").is_file():
        table = pq.read_table(root / "meta/tasks.parquet")
        col = "task" if "task" in table.column_names else "__index_level_0__"
        order = np.argsort(column_to_numpy(table["task_index"]))
        return [table[col].to_pylist()[i] for i in order]
    if (root / "meta/tasks.jsonl").is_file():
        rows = [json.loads(x) for x in (root / "meta/tasks.jsonl").read_text().splitlines() if x.strip()]
        return [r["task"] for r in sorted(rows, key=lambda r: r["task_index"])]
    return []


def read_episode_records(root: Path, info: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Per-episode metadata rows: v3.0 parquet files or v2.x episodes.jsonl."""
    _, pq = arrow()
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
