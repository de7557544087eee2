"""Command line of the converters: `python -m data.convert SRC DST --from FORMAT | --to lerobot`.

`main` raises on bad input (tests and `convert` want the exception); `cli` is what the module
entry point runs and turns those errors into one line on stderr and exit status 1.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from data.convert.furniture_bench import read_furniture_bench
from data.convert.lerobot import LeRobotExportOptions, export_lerobot, read_lerobot
from data.convert.robomimic import read_robomimic
from data.convert.writer import write_ours
from data.episodes import DatasetError
from data.schema import GRIPPER_MAX_WIDTH

FORMATS = ("robomimic", "furniture_bench", "lerobot")
DESCRIPTION = "Convert demonstration datasets between other formats and our zarr episodes."


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data.convert", description=DESCRIPTION,
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
    g.add_argument("--task-text", help="LeRobot task description for every episode (default: each episode's own "
                   "task attribute, else the dataset's task)")
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
    except (DatasetError, ValueError, FileNotFoundError) as e:  # DatasetFormatError is both of the first two
        print(f"python -m data.convert: error: {e}", file=sys.stderr)  # also when logging is not set up
        return 1
