"""LeRobot dataset format: read v2.x / v3.0 folders into ours, export ours as v3.0.

Checked by hand against lerobot 0.4.4 in a separate numpy-2 venv: LeRobotDataset loads our
exports (values exact, delta_timestamps across episode boundaries), and datasets that LeRobot
itself wrote (AV1 video, several tasks) convert back to ours.

Modules: `format` (paths and feature names), `columns` (pyarrow <-> numpy), `video` (mp4 files
shared by episodes), `stats` (meta/stats.json), `meta` (info.json, tasks, episode records),
`layout` (foreign state/action vectors), `reader` (import) and `export` (export).
"""
from data.convert.lerobot.export import LeRobotExportOptions, export_lerobot
from data.convert.lerobot.format import (JOINT_NAMES, LEROBOT_CHUNKS_SIZE, LEROBOT_DATA_PATH, LEROBOT_EPISODES_PATH,
                                         LEROBOT_IMAGE_PREFIX, LEROBOT_INDEX_COLUMNS, LEROBOT_VERSION,
                                         LEROBOT_VIDEO_PATH, OUR_META_FILE, STATE_NAMES, lerobot_key)
from data.convert.lerobot.layout import LAYOUT_PARTS, ROT_PARTS, apply_layout, parse_layout
from data.convert.lerobot.reader import read_lerobot

__all__ = [
    "JOINT_NAMES", "LAYOUT_PARTS", "LEROBOT_CHUNKS_SIZE", "LEROBOT_DATA_PATH", "LEROBOT_EPISODES_PATH",
    "LEROBOT_IMAGE_PREFIX", "LEROBOT_INDEX_COLUMNS", "LEROBOT_VERSION", "LEROBOT_VIDEO_PATH", "OUR_META_FILE",
    "ROT_PARTS", "STATE_NAMES", "LeRobotExportOptions", "apply_layout", "export_lerobot", "lerobot_key",
    "parse_layout", "read_lerobot",
]
