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

One module per format, each stating the facts of its source that decide the conversion:
`robomimic`, `furniture_bench`, `lerobot/` (import and export); what they share: `common`
(episode records, state/action packing), `writer` (into our zarr), `staging` (all-or-nothing
output); the command line is `cli` (run by `__main__`). This package imports nothing of the
project outside `data/`.
"""
from data.convert.cli import FORMATS, build_parser, cli, convert, main, parse_mapping
from data.convert.common import Episode, Source, gripper_command_to_width, pose_vector
from data.convert.errors import DatasetFormatError
from data.convert.furniture_bench import (FURNITURE_CAMERAS, FURNITURE_GRASP_MARGIN, FURNITURE_HZ,
                                          FURNITURE_MAX_GRIPPER_WIDTH, PICKLE_SUFFIXES, delta_rotation,
                                          furniture_episode, furniture_files, load_pickle, read_furniture_bench)
from data.convert.lerobot import (JOINT_NAMES, LAYOUT_PARTS, LEROBOT_CHUNKS_SIZE, LEROBOT_DATA_PATH,
                                  LEROBOT_EPISODES_PATH, LEROBOT_IMAGE_PREFIX, LEROBOT_INDEX_COLUMNS, LEROBOT_VERSION,
                                  LEROBOT_VIDEO_PATH, OUR_META_FILE, ROT_PARTS, STATE_NAMES, LeRobotExportOptions,
                                  apply_layout, export_lerobot, lerobot_key, parse_layout, read_lerobot)
from data.convert.robomimic import (ROBOMIMIC_CAMERAS, ROBOMIMIC_DEFAULT_HZ, ROBOMIMIC_REQUIRED_OBS, read_robomimic,
                                    target_offset)
from data.convert.writer import build_attrs, write_ours
from data.episodes import DatasetError
from data.rotation import quat_xyzw_to_matrix, rotvec_to_matrix  # they lived here before data/rotation.py

__all__ = [
    "FORMATS", "FURNITURE_CAMERAS", "FURNITURE_GRASP_MARGIN", "FURNITURE_HZ", "FURNITURE_MAX_GRIPPER_WIDTH",
    "JOINT_NAMES", "LAYOUT_PARTS", "LEROBOT_CHUNKS_SIZE", "LEROBOT_DATA_PATH", "LEROBOT_EPISODES_PATH",
    "LEROBOT_IMAGE_PREFIX", "LEROBOT_INDEX_COLUMNS", "LEROBOT_VERSION", "LEROBOT_VIDEO_PATH", "OUR_META_FILE",
    "PICKLE_SUFFIXES", "ROBOMIMIC_CAMERAS", "ROBOMIMIC_DEFAULT_HZ", "ROBOMIMIC_REQUIRED_OBS", "ROT_PARTS",
    "STATE_NAMES", "DatasetError", "DatasetFormatError", "Episode", "LeRobotExportOptions", "Source",
    "apply_layout", "build_attrs", "build_parser", "cli", "convert", "delta_rotation", "export_lerobot",
    "furniture_episode", "furniture_files", "gripper_command_to_width", "lerobot_key", "load_pickle", "main",
    "parse_layout", "parse_mapping", "pose_vector", "quat_xyzw_to_matrix", "read_furniture_bench", "read_lerobot",
    "read_robomimic", "rotvec_to_matrix", "target_offset", "write_ours",
]
