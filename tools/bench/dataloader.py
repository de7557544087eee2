"""Samples/s of the pixel-window DataLoader, and bytes on disk per frame.

Builds a realistic dataset (real renders of the one_leg sim driven by the scripted expert:
2 cameras 96x96, state, parts, action) unless `--dataset` points at an existing one, then
times `EpisodeWindowDataset` + `make_loader` for windows of obs_history 1 / horizon 8, batch
256, shuffled, with 0/1/2 workers, from disk and from the RAM cache; the zarr-API reader
(no fast path) and a cold-page-cache pass (our files evicted with posix_fadvise) are
measured too. Only batches after the first two (worker start-up) count.

    python tools/bench/dataloader.py                       # 20 episodes x <=450 steps (~40 s to build)
    python tools/bench/dataloader.py --episodes 4 --batches 10
    python tools/bench/dataloader.py --dataset outputs/bench/dataloader.zarr
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from data.episodes import EpisodeDataset, EpisodeWriter  # noqa: E402
from data.sampler import WindowConfig  # noqa: E402
from data.torch_dataset import EpisodeWindowDataset, WindowDatasetConfig, make_loader  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("bench.dataloader")
CAMERAS = ("front", "wrist")


def build_dataset(path: Path, episodes: int, max_steps: int) -> None:
    """Scripted-expert episodes rendered by the MuJoCo backend (pixel obs, low randomness)."""
    from data.schema import ObsSchema
    from sim.backends.mujoco_one_leg import OneLegMujocoEnv
    from sim.config import EnvConfig
    from sim.experts.one_leg import OneLegExpert

    env = OneLegMujocoEnv(EnvConfig(obs_mode="pixel", randomness="low"))
    writer = EpisodeWriter.create(path, {"task": "one_leg", "randomness": "low", "control_hz": 10.0,
                                         "schema": {"obs": ObsSchema().to_dict()}, "note": "dataloader benchmark"},
                                  overwrite=True)
    expert = OneLegExpert()
    t0 = time.perf_counter()
    try:
        for seed in range(episodes):
            obs, _ = env.reset(seed=seed)
            expert.reset(seed)
            steps: dict[str, list] = {k: [] for k in ("state", "parts", "action", *(f"rgb/{c}" for c in CAMERAS))}
            success = False
            for _ in range(max_steps):
                action = expert.act(obs)
                for k in steps:
                    steps[k].append(np.array(action if k == "action" else obs[k], copy=True))
                obs, _, term, trunc, info = env.step(action)
                success = bool(info.get("success", False))
                if term or trunc:
                    break
            frames = {k: np.stack(v) for k, v in steps.items()}
            frames["action"] = frames["action"].astype(np.float32)
            writer.add_episode(frames, success=success, source="scripted", seed=seed)
            log.info("episode %d: %d steps, success=%s (%.0f s)", seed, len(frames["action"]), success,
                     time.perf_counter() - t0)
    finally:
        env.close()


def disk_bytes(path: Path) -> dict[str, float]:
    ds = EpisodeDataset(path)
    n = ds.n_frames
    out = {}
    for cam in CAMERAS:
        d = path / "data" / "rgb" / cam
        out[f"rgb/{cam}"] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / n
    out["images_total"] = sum(out[f"rgb/{c}"] for c in CAMERAS)
    out["all_total"] = ds.nbytes_on_disk() / n
    out["raw_image_bytes"] = 96 * 96 * 3
    return out


def evict_page_cache(path: Path) -> int:
    """Drop only this dataset's pages from the OS cache (no root, nothing else affected)."""
    n = 0
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
            finally:
                os.close(fd)
    return n


def time_loader(ds, workers: int, batches: int, batch_size: int, context: str | None, skip: int = 2) -> dict:
    loader = make_loader(ds, batch_size, shuffle=True, num_workers=workers, multiprocessing_context=context,
                         drop_last=True, seed=0)
    n_done, t_start, first = 0, None, None
    t0 = time.perf_counter()
    while n_done < batches + skip:
        for batch in loader:
            if n_done == 0:
                first = time.perf_counter() - t0
            n_done += 1
            if n_done == skip:
                t_start = time.perf_counter()
            if n_done >= batches + skip:
                break
    dt = time.perf_counter() - t_start
    shapes = {k: list(v.shape) for k, v in batch["obs"].items()}
    del loader
    return {"samples_per_s": batches * batch_size / dt, "ms_per_batch": dt / batches * 1e3,
            "first_batch_s": first, "shapes": shapes}


def time_device_batches(ds, device: str, batches: int, batch_size: int, skip: int = 2) -> dict:
    """Batches gathered on `device` from the cached dataset (data/device_batches.py), as pretraining
    does on CUDA; the one-off copy of the cache to the device is reported, not timed per batch."""
    import torch

    from data.device_batches import DeviceWindowBatches

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    dev = DeviceWindowBatches(ds, device)
    sync()
    first = time.perf_counter() - t0
    stream = dev.epochs(batch_size, shuffle=True, seed=0)
    for _ in range(skip):
        batch = next(stream)
    sync()
    t = time.perf_counter()
    for _ in range(batches):
        batch = next(stream)
    sync()
    dt = time.perf_counter() - t
    return {"samples_per_s": batches * batch_size / dt, "ms_per_batch": dt / batches * 1e3,
            "first_batch_s": first, "shapes": {k: list(v.shape) for k, v in batch["obs"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=None, help="existing dataset to reuse (skips building)")
    ap.add_argument("--build-to", type=Path, default=ROOT / "outputs" / "bench" / "dataloader.zarr")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--max-steps", type=int, default=450)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--batches", type=int, default=30, help="timed batches per row")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--context", default=None, help="DataLoader start method (default: the platform's)")
    ap.add_argument("--layout", default="chw", choices=["chw", "hwc"])
    ap.add_argument("--devices", nargs="+", default=None,
                    help="devices for the device-batches rows (default: cpu, and cuda when available)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "dataloader.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    path = args.dataset
    build_s = None
    if path is None:
        path = args.build_to
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        build_dataset(path, args.episodes, args.max_steps)
        build_s = time.perf_counter() - t0
    ds_info = EpisodeDataset(path)
    window = WindowConfig(obs_history=1, horizon=8)
    keys = ("state", *(f"rgb/{c}" for c in CAMERAS))

    def dataset(cache: bool, fast: bool = True, layout: str = args.layout) -> EpisodeWindowDataset:
        cfg = WindowDatasetConfig(obs_keys=keys, window=window, cache_images=cache, fast_path=fast,
                                  image_layout=layout)
        return EpisodeWindowDataset(path, None, cfg)

    rows = []
    load_at_start = os.getloadavg()[0]  # other processes on the machine skew the numbers: record it

    def run(name: str, ds, workers: int, cache: bool, fast: bool, batches: int = args.batches,
            layout: str = args.layout) -> None:
        r = time_loader(ds, workers, batches, args.batch_size, args.context)
        rows.append({"reader": name, "workers": workers, "cache": cache, "fast_path": fast, "layout": layout, **r})
        _print_row(rows[-1])

    disk = dataset(cache=False)
    cached = dataset(cache=True)
    for w in args.workers:
        run("files+blosc", disk, w, False, True)
    evicted = evict_page_cache(path)
    log.info("evicted %d files of %s from the page cache", evicted, path)
    run("files+blosc, cold page cache", disk, max(args.workers), False, True)
    for w in args.workers:
        run("RAM cache", cached, w, True, True)
    import torch

    for device in args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]:
        r = time_device_batches(cached, device, args.batches, args.batch_size)
        rows.append({"reader": f"device batches ({device})", "workers": 0, "cache": True, "fast_path": True,
                     "layout": args.layout, **r})
        _print_row(rows[-1])
    other = "hwc" if args.layout == "chw" else "chw"
    run(f"files+blosc, {other}", dataset(cache=False, layout=other), max(args.workers), False, True, layout=other)
    slow = dataset(cache=False, fast=False)
    for w in sorted({0, max(args.workers)}):
        run("zarr API", slow, w, False, False, batches=max(3, args.batches // 5))

    disk_b = disk_bytes(path)
    print(f"\nbytes on disk per frame: front {disk_b['rgb/front']:.0f}, wrist {disk_b['rgb/wrist']:.0f}, "
          f"images {disk_b['images_total']:.0f} (raw {2 * disk_b['raw_image_bytes']}), "
          f"all arrays {disk_b['all_total']:.0f}")
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "loadavg_1m_at_start": load_at_start, "loadavg_1m_at_end": os.getloadavg()[0]},
        "dataset": {"path": str(path), "episodes": len(ds_info), "frames": ds_info.n_frames,
                    "build_s": build_s, "bytes_per_frame": disk_b},
        "settings": {"window": asdict(window), "batch_size": args.batch_size, "batches": args.batches,
                     "keys": list(keys), "context": args.context or "platform default", "shuffle": True},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def _print_row(r: dict) -> None:
    if not hasattr(_print_row, "header"):
        _print_row.header = True
        print(f"\n{'reader':32s} {'layout':6s} {'workers':>7s} {'samples/s':>10s} {'ms/batch':>9s} "
              f"{'1st batch s':>11s}")
    print(f"{r['reader']:32s} {r['layout']:6s} {r['workers']:7d} {r['samples_per_s']:10.0f} {r['ms_per_batch']:9.1f} "
          f"{r['first_batch_s']:11.2f}", flush=True)


if __name__ == "__main__":
    main()
