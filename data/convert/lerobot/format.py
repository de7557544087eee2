"""LeRobot v3.0 on-disk naming: paths, feature names, and our key <-> LeRobot feature mapping.

Kept apart from the reader and the exporter so both agree on one spelling of every path and
name (a typo in one of them would write datasets the other cannot read back).
"""
from __future__ import annotations

from data.schema import RGB_PREFIX

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


def lerobot_key(key: str) -> str:
    """Our array key -> LeRobot feature name (LeRobot's conventional names where one exists)."""
    fixed = {"state": "observation.state", "action": "action", "parts": "observation.environment_state",
             "reward": "next.reward"}
    if key in fixed:
        return fixed[key]
    if key.startswith(RGB_PREFIX):
        return LEROBOT_IMAGE_PREFIX + key[len(RGB_PREFIX):]
    return "extra." + key.replace("/", ".")


def feature_names(key: str, dim: int) -> list[str] | None:
    """Per-dimension names for our state/action layouts (LeRobot shows them; other keys stay unnamed)."""
    if key in ("state", "action") and dim in (10, 17):
        return (STATE_NAMES + JOINT_NAMES)[:dim]
    return None
