"""One-frame-per-chunk image arrays read and written as chunk files, beside the zarr API.

Why: zarr 3 spends ~0.4 ms of Python/asyncio per indexing call and ~0.5 ms per chunk when
appending, which made reading the dominant cost of training and writing the dominant cost of
collecting pixel demos on a many-core machine (one episode of two cameras took ~1 s to append).
When an array is stored exactly as assumed here (zarr v3, local directory, codecs exactly
bytes + blosc, one frame per chunk, a plain chunk key template), the chunk files are read and
written directly with numcodecs' blosc; anything else stays on the zarr API. Both directions
check themselves against zarr on first use.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np

_SENTINEL = 987654321


@dataclass
class FrameLayout:
    """Where the chunk file of frame i lives, when the fast path applies."""

    directory: str  # the array's directory on disk
    prefix: str  # chunk key = prefix + str(i) + suffix
    suffix: str


def fast_layout(arr) -> tuple[FrameLayout | None, str]:
    """A FrameLayout if `arr` is stored exactly as the fast path assumes, else (None, why)."""
    try:
        from zarr.codecs import BloscCodec, BytesCodec
        from zarr.core.chunk_grids import RegularChunkGrid
        from zarr.storage import LocalStore
    except ImportError as e:  # a zarr without these names: stay on the public API
        return None, f"zarr internals unavailable ({e})"
    meta = arr.metadata
    if getattr(meta, "zarr_format", None) != 3:
        return None, "not a zarr v3 array"
    if not isinstance(arr.store, LocalStore):
        return None, f"store is {type(arr.store).__name__}, not a local directory"
    codecs = tuple(meta.codecs)
    if len(codecs) != 2 or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[1], BloscCodec):
        return None, f"codecs are {[type(c).__name__ for c in codecs]}, not [BytesCodec, BloscCodec]"
    if getattr(meta, "storage_transformers", ()):
        return None, "storage transformers present"
    dtype = np.dtype(arr.dtype)
    if dtype.itemsize > 1 and (codecs[0].endian is None or codecs[0].endian.value != _native_endian()):
        return None, "multi-byte dtype with non-native endianness"
    grid = meta.chunk_grid
    if not isinstance(grid, RegularChunkGrid) or tuple(grid.chunk_shape) != (1, *arr.shape[1:]):
        return None, f"chunks are {getattr(grid, 'chunk_shape', grid)}, not one frame"
    zeros = (0,) * (len(arr.shape) - 1)
    probe = meta.encode_chunk_key((_SENTINEL, *zeros))
    if probe.count(str(_SENTINEL)) != 1:
        return None, f"unexpected chunk key {probe!r}"
    prefix, suffix = probe.split(str(_SENTINEL))
    for i in (0, 7, 12345):
        if meta.encode_chunk_key((i, *zeros)) != f"{prefix}{i}{suffix}":
            return None, "chunk key encoding is not a plain template"
    directory = os.path.join(str(arr.store.root), *arr.path.split("/"))
    return FrameLayout(directory, prefix, suffix), ""


def _native_endian() -> str:
    import sys

    return sys.byteorder


def chunk_path(layout: FrameLayout, frame: int) -> str:
    return os.path.join(layout.directory, f"{layout.prefix}{frame}{layout.suffix}")


def blosc_params(arr) -> dict:
    """numcodecs.blosc.compress arguments equivalent to the array's BloscCodec."""
    from numcodecs import blosc

    codec = arr.metadata.codecs[1]
    shuffle = {"noshuffle": blosc.NOSHUFFLE, "shuffle": blosc.SHUFFLE, "bitshuffle": blosc.BITSHUFFLE}
    return {"cname": codec.cname.value.encode(), "clevel": int(codec.clevel),
            "shuffle": shuffle[codec.shuffle.value], "blocksize": int(codec.blocksize)}


def write_frames(layout: FrameLayout, params: dict, start: int, frames: np.ndarray, fill_value=0) -> None:
    """Compress and write frames start, start+1, ... as chunk files (the array must already be that long).

    Frames that are all `fill_value` get no file, as zarr does by default (write_empty_chunks off):
    reading them gives the fill value either way.
    """
    from numcodecs.blosc import compress

    frames = np.ascontiguousarray(frames)
    nested = os.sep in layout.suffix  # zarr's default keys give every frame its own folder (c/<i>/0/0/0)
    for j in range(len(frames)):
        path = chunk_path(layout, start + j)
        if not np.any(frames[j] != fill_value):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # a stale file (from a writer killed earlier) would shadow the fill value
            continue
        if nested or j == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb", buffering=0) as fh:
            fh.write(compress(frames[j], **params))
