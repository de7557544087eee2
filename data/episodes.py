"""Episodic zarr datasets (zarr 3 API): append-only writer and lazy reader.

Layout (DESIGN.md contract):

    <root>/zarr.json                 dataset attrs: format, version, schema, control_hz, cameras, ...
    <root>/data/<key>                arrays concatenated over time (state, action, parts, rgb/<cam>, ...)
    <root>/meta/episode_ends         int64, cumulative end index of each finished episode (commit point)
    <root>/meta/<field>              per-episode columns for fast filtering (success, seed, source, ...)
    <root>/meta  attrs["episodes"]   per-episode metadata as JSON (operator, notes, timestamps, ...)

Crash safety: an episode's frames are appended first and `meta/episode_ends` last, so a
reader only sees committed episodes; frames past the last end (a writer killed mid-episode)
are ignored and cut off when the dataset is reopened for appending. Images are chunked one
frame per chunk, so appending never touches an earlier image chunk; low-dim arrays use
larger chunks whose tail chunk is replaced atomically (zarr's LocalStore writes to a temp file
and renames), so earlier values are never at risk.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "pixel-dppo-episodes"
FORMAT_VERSION = 1
LOWDIM_CHUNK = 1024
EPISODE_COLUMNS = {"success": "bool", "seed": "int64", "length": "int64"}
SOURCES = ("scripted", "teleop", "policy", "real", "converted")


class DatasetError(Exception):
    """A dataset is missing, malformed, of an unknown version, or does not match a task."""


def _zarr():
    import zarr

    return zarr


def _image_codecs():
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def _lowdim_codecs():
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


def is_image_key(key: str, shape: Sequence[int], dtype) -> bool:
    return np.dtype(dtype) == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3, 4)


@dataclass
class EpisodeInfo:
    index: int
    start: int
    end: int
    meta: dict[str, Any]

    @property
    def length(self) -> int:
        return self.end - self.start


class EpisodeWriter:
    """Append whole episodes to a (new or existing) dataset.

    >>> w = EpisodeWriter.create(path, attrs={"task": "one_leg", "schema": ...})
    >>> w.add_episode({"state": (T,10) f32, "action": (T,10) f32, "rgb/front": (T,H,W,3) u8},
    ...               success=True, source="scripted", seed=3)
    """

    def __init__(self, group, path: Path):
        self.group = group
        self.path = path
        self._chunk_writers: dict[str, tuple | None] = {}
        self._checked: set[str] = set()
        self._recover()

    # --- opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, attrs: Mapping[str, Any] | None = None,
               overwrite: bool = False) -> "EpisodeWriter":
        path = Path(path)
        if path.exists() and not overwrite:
            raise DatasetError(f"dataset {path} already exists (use resume/append, or overwrite=True)")
        zarr = _zarr()
        group = zarr.open_group(str(path), mode="w" if overwrite else "w-")
        group.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(), **dict(attrs or {}),
        })
        group.require_group("data")
        meta = group.require_group("meta")
        meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64", compressors=_lowdim_codecs())
        for name, dtype in EPISODE_COLUMNS.items():
            meta.create_array(name, shape=(0,), chunks=(4096,), dtype=dtype, compressors=_lowdim_codecs())
        meta.attrs["episodes"] = []
        return cls(group, path)

    @classmethod
    def append_to(cls, path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> "EpisodeWriter":
        """Open an existing dataset for appending; `expect` attrs (e.g. task) must match."""
        zarr = _zarr()
        group = _open_checked(path, mode="r+", zarr=zarr)
        for k, v in (expect or {}).items():
            if k in group.attrs and _jsonable(group.attrs[k]) != _jsonable(v):
                raise DatasetError(f"dataset {path} has {k}={group.attrs[k]!r}, expected {v!r}")
        return cls(group, Path(path))

    @classmethod
    def open_or_create(cls, path, attrs: Mapping[str, Any], resume: bool) -> "EpisodeWriter":
        if resume and Path(path).exists():
            return cls.append_to(path, expect={k: attrs[k] for k in ("task", "schema") if k in attrs})
        return cls.create(path, attrs)

    # --- writing ------------------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return int(self.group["meta/episode_ends"].shape[0])

    @property
    def n_frames(self) -> int:
        ends = self.group["meta/episode_ends"]
        return int(ends[-1]) if ends.shape[0] else 0

    def _array(self, key: str, sample: np.ndarray):
        data = self.group["data"]
        if key in _array_keys(data):
            arr = data[key]
            if arr.shape[1:] != sample.shape[1:] or arr.dtype != sample.dtype:
                raise DatasetError(f"data/{key}: episode has {sample.dtype}{list(sample.shape[1:])}, "
                                   f"dataset has {arr.dtype}{list(arr.shape[1:])}")
            return arr
        if self.n_frames > 0:
            raise DatasetError(f"data/{key} is new but the dataset already has {self.n_episodes} episodes without it")
        if is_image_key(key, sample.shape[1:], sample.dtype):
            # one chunk per frame, named c.<frame>.0.0.0 in one folder: zarr's default "/" keys
            # would make three folders per frame, and mkdir dominates writing on overlay filesystems
            return data.create_array(key, shape=(0, *sample.shape[1:]), chunks=(1, *sample.shape[1:]),
                                     dtype=sample.dtype, compressors=_image_codecs(),
                                     chunk_key_encoding={"name": "default", "separator": "."})
        return data.create_array(key, shape=(0, *sample.shape[1:]), chunks=(LOWDIM_CHUNK, *sample.shape[1:]),
                                 dtype=sample.dtype, compressors=_lowdim_codecs())

    def _append_frames(self, key: str, arr, start: int, frames: np.ndarray) -> None:
        """Append along axis 0: image arrays through their chunk files when the layout allows
        (data/chunk_files.py; ~3x faster than zarr's append), everything else through zarr."""
        from data.chunk_files import write_frames

        if arr.shape[0] != start:  # the frames must go right after the committed ones
            raise DatasetError(f"data/{key} has {arr.shape[0]} frames, expected {start}")
        fast = self._chunk_writer(key, arr, frames)
        if fast is None:
            arr.append(frames, axis=0)
            return
        arr.resize((start + len(frames), *arr.shape[1:]))
        layout, params, fill = fast
        write_frames(layout, params, start, frames, fill)
        if key not in self._checked:  # first write to this array: zarr must read back what was written
            self._checked.add(key)
            if not all(np.array_equal(np.asarray(arr[i]), frames[i - start]) for i in (start, start + len(frames) - 1)):
                log.warning("data/%s: chunk files do not read back through zarr; using zarr's writer", key)
                self._chunk_writers[key] = None
                arr[start:start + len(frames)] = frames

    def _chunk_writer(self, key: str, arr, frames: np.ndarray):
        """(layout, blosc params) for writing `key` as chunk files, or None for the zarr API."""
        from data.chunk_files import blosc_params, fast_layout

        if not is_image_key(key, frames.shape[1:], frames.dtype):
            return None
        if key not in self._chunk_writers:
            layout, why = fast_layout(arr)
            self._chunk_writers[key] = ((layout, blosc_params(arr), arr.metadata.fill_value) if layout is not None
                                         else None)
            if layout is None:
                log.info("data/%s: appending through zarr (%s)", key, why)
        return self._chunk_writers[key]

    def add_episode(self, frames: Mapping[str, np.ndarray], *, success: bool, source: str, seed: int = -1,
                    **meta: Any) -> int:
        """Append one finished episode; returns its index. All arrays share their first dim."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        frames = {k: np.asarray(v) for k, v in frames.items()}
        lengths = {k: len(v) for k, v in frames.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"episode arrays differ in length: {lengths}")
        length = next(iter(lengths.values()))
        if length == 0:
            raise ValueError("cannot add an empty episode")
        existing = set(_array_keys(self.group["data"]))
        if existing and existing != set(frames):
            raise DatasetError(f"episode keys {sorted(frames)} differ from dataset keys {sorted(existing)}")
        start = self.n_frames
        arrays = {k: self._array(k, v) for k, v in frames.items()}
        for k, arr in arrays.items():  # frames first ...
            self._append_frames(k, arr, start, frames[k])
        meta_group = self.group["meta"]
        record = {"index": self.n_episodes, "length": int(length), "success": bool(success), "source": source,
                  "seed": int(seed), "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                  **{k: _jsonable(v) for k, v in meta.items()}}
        meta_group["success"].append(np.array([success], dtype=bool))
        meta_group["seed"].append(np.array([seed], dtype=np.int64))
        meta_group["length"].append(np.array([length], dtype=np.int64))
        meta_group.attrs["episodes"] = list(meta_group.attrs.get("episodes", [])) + [record]
        meta_group["episode_ends"].append(np.array([start + length], dtype=np.int64))  # ... commit last
        return record["index"]

    def _recover(self) -> None:
        """Cut frames and per-episode rows left by a writer that died mid-episode."""
        n_ep, n_frames = self.n_episodes, self.n_frames
        for key in _array_keys(self.group["data"]):
            arr = self.group["data"][key]
            if arr.shape[0] > n_frames:
                log.warning("dataset %s: dropping %d uncommitted frames of data/%s (interrupted write)",
                            self.path, arr.shape[0] - n_frames, key)
                arr.resize((n_frames, *arr.shape[1:]))
        meta = self.group["meta"]
        for name in EPISODE_COLUMNS:
            if meta[name].shape[0] > n_ep:
                meta[name].resize((n_ep,))
        episodes = list(meta.attrs.get("episodes", []))
        if len(episodes) > n_ep:
            meta.attrs["episodes"] = episodes[:n_ep]

    def set_attrs(self, **attrs: Any) -> None:
        self.group.attrs.update({k: _jsonable(v) for k, v in attrs.items()})


class EpisodeDataset:
    """Lazy reader: nothing but `meta` is loaded until arrays are indexed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.group = _open_checked(path, mode="r", zarr=_zarr())
        self.attrs = dict(self.group.attrs)
        meta = self.group["meta"]
        self.episode_ends = np.asarray(meta["episode_ends"][:], dtype=np.int64)
        self.episode_starts = np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)
        n = len(self.episode_ends)
        records = list(meta.attrs.get("episodes", []))[:n]
        if len(records) < n:
            records += [{"index": i} for i in range(len(records), n)]
        self.episodes_meta = records
        self.success = np.asarray(meta["success"][:n], dtype=bool) if meta["success"].shape[0] >= n else \
            np.array([bool(r.get("success", False)) for r in records])
        self.keys = sorted(_array_keys(self.group["data"]))

    def __len__(self) -> int:
        return len(self.episode_ends)

    @property
    def n_frames(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    def array(self, key: str):
        if key not in self.keys:
            raise DatasetError(f"dataset {self.path} has no key '{key}'; keys: {self.keys}")
        return self.group["data"][key]

    def episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(f"episode {i} out of range (dataset has {len(self)})")
        s, e = self.episode_starts[i], self.episode_ends[i]
        return {k: self.array(k)[s:e] for k in (keys or self.keys)}

    def info(self, i: int) -> EpisodeInfo:
        return EpisodeInfo(i, int(self.episode_starts[i]), int(self.episode_ends[i]), dict(self.episodes_meta[i]))

    def select(self, *, success_only: bool = False, sources: Sequence[str] | None = None) -> np.ndarray:
        """Indices of episodes passing the filters."""
        keep = np.ones(len(self), dtype=bool)
        if success_only:
            keep &= self.success
        if sources is not None:
            keep &= np.array([r.get("source") in sources for r in self.episodes_meta], dtype=bool)
        return np.flatnonzero(keep)

    def check_compatible(self, task: str | None = None, schema: Mapping[str, Any] | None = None,
                         required_keys: Sequence[str] = ()) -> None:
        """Raise DatasetError if the dataset does not fit a task / observation schema."""
        if task is not None and self.attrs.get("task") not in (None, task):
            raise DatasetError(f"dataset {self.path} is for task '{self.attrs.get('task')}', not '{task}'")
        missing = [k for k in required_keys if k not in self.keys]
        if missing:
            raise DatasetError(f"dataset {self.path} lacks keys {missing}; has {self.keys}")
        if schema is not None and "schema" in self.attrs:
            mine = self.attrs["schema"].get("obs", {})
            for field in ("cameras", "image_hw", "include_joints"):
                if field in schema and field in mine and _jsonable(mine[field]) != _jsonable(schema[field]):
                    raise DatasetError(f"dataset {self.path} schema {field}={mine[field]} != expected {schema[field]}")

    def nbytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def _open_checked(path, mode: str, zarr):
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    try:
        group = zarr.open_group(str(path), mode=mode)
    except Exception as e:  # noqa: BLE001 - zarr raises several types for a non-group
        raise DatasetError(f"{path} is not a zarr dataset: {e}") from e
    attrs = dict(group.attrs)
    if attrs.get("format") != FORMAT:
        raise DatasetError(f"{path} is not a {FORMAT} dataset (format={attrs.get('format')!r})")
    version = attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path} has format_version {version}; this code reads version {FORMAT_VERSION}")
    for required in ("data", "meta"):
        if required not in group:
            raise DatasetError(f"{path} lacks the '{required}' group")
    if "episode_ends" not in group["meta"]:
        raise DatasetError(f"{path} lacks meta/episode_ends")
    return group


def _array_keys(group, prefix: str = "") -> list[str]:
    """Keys of all arrays below a group, nested groups joined with '/' (e.g. 'rgb/front')."""
    out = []
    for name, member in group.members():
        key = f"{prefix}{name}"
        if hasattr(member, "shape"):
            out.append(key)
        else:
            out.extend(_array_keys(member, prefix=key + "/"))
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def dumps_attrs(attrs: Mapping[str, Any]) -> str:
    return json.dumps(_jsonable(attrs), indent=2)
