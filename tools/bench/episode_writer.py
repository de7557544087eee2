"""Seconds to append one recorded pixel episode to a zarr dataset, chunk-file writer vs zarr's.

The writer runs in the collector's main process between env steps, so on a many-core machine
its time per episode caps the collection rate. Frames come from an existing dataset (real
renders, so compression is realistic); each repetition appends the same episode to a fresh
dataset through `EpisodeWriter`: chunk files (the default), zarr's own append, and zarr's append
into image arrays with zarr's default nested chunk keys (the layout datasets had before).

    python tools/bench/episode_writer.py --dataset datasets/one_leg_low_scripted.zarr
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from data import chunk_files
from data.episodes import EpisodeDataset, EpisodeWriter, _image_codecs

ROOT = Path(__file__).resolve().parents[2]


def first_episode(path: Path) -> dict[str, np.ndarray]:
    ds = EpisodeDataset(path)
    end = int(ds.episode_ends[0])
    return {k: np.asarray(ds.array(k)[:end]) for k in ds.keys}


def time_writes(frames: dict[str, np.ndarray], reps: int, fast: bool, nested_keys: bool = False) -> float:
    """Median seconds of one add_episode. nested_keys: image arrays with zarr's default '/' chunk keys
    (c/<frame>/0/0/0, the layout before flat keys), created here before the writer sees them."""
    real_layout = chunk_files.fast_layout
    if not fast:
        chunk_files.fast_layout = lambda arr: (None, "benchmark: zarr writer")
    try:
        times = []
        for r in range(reps + 1):
            tmp = Path(tempfile.mkdtemp(prefix="bench_writer_"))
            try:
                w = EpisodeWriter.create(tmp / "ds.zarr")
                if nested_keys:
                    for k in (k for k in frames if k.startswith("rgb/")):
                        w.group["data"].create_array(k, shape=(0, *frames[k].shape[1:]), dtype=frames[k].dtype,
                                                     chunks=(1, *frames[k].shape[1:]), compressors=_image_codecs())
                    for k in (k for k in frames if not k.startswith("rgb/")):
                        w._array(k, frames[k])  # the low-dim arrays as the writer makes them
                w.add_episode(frames, success=True, source="scripted")  # creates the arrays
                t = time.perf_counter()
                w.add_episode(frames, success=True, source="scripted")
                if r:  # the first repetition warms imports and the page cache
                    times.append(time.perf_counter() - t)
            finally:
                shutil.rmtree(tmp)
        return float(np.median(times))
    finally:
        chunk_files.fast_layout = real_layout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=ROOT / "datasets" / "one_leg_low_scripted.zarr")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "episode_writer.json")
    args = ap.parse_args()
    frames = first_episode(args.dataset)
    steps = len(frames["action"])
    images = [k for k in frames if k.startswith("rgb/")]
    rows = []
    print(f"episode: {steps} steps, keys {sorted(frames)}")
    print(f"{'writer':24s} {'s/episode':>10s} {'ms/step':>8s}")
    for name, fast, nested in (("chunk files, flat keys", True, False), ("zarr append, flat keys", False, False),
                               ("zarr append, '/' keys", False, True)):
        s = time_writes(frames, args.reps, fast, nested)
        rows.append({"writer": name, "s_per_episode": s, "ms_per_step": s / steps * 1e3})
        print(f"{name:24s} {s:10.3f} {s / steps * 1e3:8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "steps": steps,
                                    "images": images, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
