"""Inspect an episodic dataset: schema, episodes, lengths, success; optionally a video.

    python -m data.inspect datasets/one_leg_low_scripted.zarr
    python -m data.inspect datasets/one_leg_low_scripted.zarr --video 3 --out ep3.mp4
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from data.episodes import DatasetError, EpisodeDataset


def describe(ds: EpisodeDataset) -> str:
    lines = [f"dataset      {ds.path}"]
    a = ds.attrs
    lines.append(f"format       {a.get('format')} v{a.get('format_version')}, created {a.get('created', '?')}")
    lines.append(f"task         {a.get('task', '?')} (randomness {a.get('randomness', '?')}, "
                 f"{a.get('control_hz', '?')} Hz, backend {a.get('backend', '?')})")
    lengths = ds.episode_ends - ds.episode_starts
    if len(ds):
        lines.append(f"episodes     {len(ds)}, {ds.n_frames} steps; length min/mean/max "
                     f"{lengths.min()}/{lengths.mean():.0f}/{lengths.max()}")
        lines.append(f"success      {ds.success.mean():.2f} ({int(ds.success.sum())}/{len(ds)})")
        sources = Counter(r.get("source", "?") for r in ds.episodes_meta)
        lines.append("sources      " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())))
    else:
        lines.append("episodes     0")
    lines.append("arrays")
    for key in ds.keys:
        arr = ds.array(key)
        lines.append(f"  {key:14s} {str(arr.dtype):8s} {list(arr.shape)} chunks {list(arr.chunks)}")
    for cam, info in (a.get("cameras") or {}).items():
        lines.append(f"camera       {cam}: {info}")
    lines.append(f"size         {ds.nbytes_on_disk() / 1e6:.1f} MB on disk"
                 + (f" ({ds.nbytes_on_disk() / max(ds.n_frames, 1) / 1e3:.1f} KB/step)" if ds.n_frames else ""))
    if "schema" in a:
        lines.append("schema       " + json.dumps(a["schema"]["obs"]))
    return "\n".join(lines)


def write_video(ds: EpisodeDataset, episode: int, out: Path, fps: float | None = None) -> Path:
    import imageio.v2 as imageio

    cams = [k for k in ds.keys if k.startswith("rgb/")]
    if not cams:
        raise DatasetError(f"dataset {ds.path} has no camera arrays (rgb/<camera>) to make a video from")
    ep = ds.episode(episode, keys=cams)
    frames = np.concatenate([ep[k] for k in cams], axis=2)  # cameras side by side
    fps = fps or float(ds.attrs.get("control_hz", 10.0))
    imageio.mimsave(out, list(frames), fps=fps, macro_block_size=1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("--video", type=int, metavar="EP", help="write a video of episode EP's cameras")
    ap.add_argument("--out", type=Path, help="video path (default: <dataset>_ep<EP>.mp4)")
    ap.add_argument("--fps", type=float)
    args = ap.parse_args(argv)
    try:
        ds = EpisodeDataset(args.path)
        print(describe(ds))
        if args.video is not None:
            out = args.out or args.path.with_name(f"{args.path.stem}_ep{args.video}.mp4")
            print(f"video        {write_video(ds, args.video, out, args.fps)}")
    except (DatasetError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
