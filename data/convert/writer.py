"""Stream a reader's episodes into one of our zarr datasets, with attrs that say what was converted.

The dataset attrs carry task, schema, control_hz, cameras, source_format and the list of
approximations the reader made (`conversion.notes`), so a trainer can see what it gets
without knowing which converter produced the data.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

from data.convert.common import Episode, Source
from data.convert.staging import commit_staging, staging_dir
from data.episodes import DatasetError, EpisodeWriter
from data.schema import RGB_PREFIX, ActionSchema, ObsSchema

log = logging.getLogger(__name__)


def build_attrs(src: Source, first: Episode, include_joints: bool, src_path: Path) -> dict[str, Any]:
    """Dataset attrs from the reader's facts and the first episode's shapes."""
    cameras: dict[str, Any] = {}
    hw: tuple[int, int] | None = None
    for cam, source_key in src.camera_sources.items():
        img = first.frames[RGB_PREFIX + cam]
        cam_hw = (int(img.shape[1]), int(img.shape[2]))
        cameras[cam] = {"image_hw": list(cam_hw), "source_key": source_key}
        if hw is None:
            hw = cam_hw
        elif cam_hw != hw:
            log.warning("camera %s is %s but the schema has one image_hw %s (taken from the first camera)",
                        cam, cam_hw, hw)
    n_parts = int(first.frames["parts"].shape[-1] // 9) if "parts" in first.frames else 0
    obs = ObsSchema(cameras=tuple(src.camera_sources), image_hw=hw or (0, 0), include_joints=include_joints,
                    include_parts="parts" in first.frames, n_parts=n_parts)
    return {
        "task": src.task,
        "schema": {"obs": obs.to_dict(), "action": ActionSchema(control_hz=float(src.control_hz)).to_dict()},
        "control_hz": float(src.control_hz),
        "cameras": cameras,
        "source_format": src.source_format,
        "source_path": str(src_path),
        "conversion": {"notes": list(src.notes)},
        **src.extra_attrs,
    }


def write_ours(src: Source, dst: Path, include_joints: bool, src_path: Path, overwrite: bool = False) -> int:
    """Stream a reader's episodes into a new zarr dataset; returns the episode count.

    The first episode is read before the dataset is created because the schema (image sizes,
    parts) is only known from real frames.
    """
    tmp = staging_dir(dst, overwrite)
    try:
        first = next(src.episodes, None)
        if first is None:
            raise DatasetError(f"{src_path}: no episodes to convert")
        attrs = build_attrs(src, first, include_joints, src_path)
        writer = EpisodeWriter.create(tmp / "ds", attrs)
        n = 0
        for ep in _chain_first(first, src.episodes):
            writer.add_episode(ep.frames, success=ep.success, source="converted", seed=ep.seed, **ep.meta)
            n += 1
        if src.notes != attrs["conversion"]["notes"]:  # readers may add notes while streaming
            writer.set_attrs(conversion={"notes": list(src.notes)})
        commit_staging(tmp / "ds", dst)
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("wrote %d episodes to %s", n, dst)
        return n
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _chain_first(first: Episode, rest: Iterator[Episode]) -> Iterator[Episode]:
    yield first
    yield from rest
