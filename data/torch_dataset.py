"""PyTorch dataset of training windows (observation history + action chunk) from a zarr dataset.

A sample is

    {"obs": {"state": float32 (obs_history, D), "rgb/front": uint8 (obs_history, 3, H, W), ...},
     "action": float32 (horizon, action_dim)}

Images stay uint8 (scaling/augmentation happen on the accelerator, where they are cheap) in
`image_layout` "chw" (default, torchvision convention) or "hwc" (as stored; skips a transpose
on the CPU). Low-dim keys are normalised by the given `Normalizer` (every low-dim key must
then have statistics; use mode 'identity' to opt a key out).

Where the time goes, and why the code looks like this:

* Low-dim arrays are small, so they are read (and normalised) once, into RAM.
* Images are one frame per zarr chunk. zarr 3 costs ~0.4 ms of Python/asyncio per indexing
  call, several times the decode itself, so when an array's layout is plain (local store,
  codecs exactly bytes + blosc, one frame per chunk, a known chunk key encoding) the
  `FrameReader` reads the chunk files itself and blosc-decodes them straight into the
  batch buffer; otherwise it falls back to the zarr API. A missing chunk file is a frame
  equal to the fill value (zarr does not write all-fill chunks).
* `cache_images` keeps the decoded frames of the used episodes in RAM ('auto': when they
  fit in `cache_budget_fraction` of available memory). The cache is a torch tensor in
  shared memory, so DataLoader workers started with 'spawn' receive a handle, not a copy
  (with 'fork' they inherit it).
* `__getitems__` assembles a whole batch with vectorised indexing; `collate_windows` (which
  `make_loader` installs) passes that batch through instead of re-stacking per-sample dicts.
  With the default collate function the dataset still works, just slower.
* Nothing process-bound is pickled: zarr handles are opened lazily per process (checked by
  pid), so the dataset works with num_workers 0..N and any start method.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence as _SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from data.chunk_files import FrameLayout, chunk_path, fast_layout
from data.episodes import EpisodeDataset, is_image_key
from data.normalizer import Normalizer, NormalizerError, load_or_fit
from data.sampler import SplitConfig, WindowConfig, WindowIndex, make_windows, select_and_split

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------
# Image frames
# --------------------------------------------------------------------------------------------
class FrameReader:
    """Reads frames of one one-frame-per-chunk image array into caller-provided buffers."""

    def __init__(self, dataset_path: str | os.PathLike, key: str, fast_path: bool = True):
        self.dataset_path = str(dataset_path)
        self.key = key
        arr = EpisodeDataset(dataset_path).array(key)
        self.frame_shape = tuple(int(s) for s in arr.shape[1:])
        self.dtype = np.dtype(arr.dtype)
        self.fill_value = arr.metadata.fill_value
        self.layout: FrameLayout | None = None
        self.fallback_reason = "disabled"
        if fast_path:
            self.layout, self.fallback_reason = fast_layout(arr)
        if self.layout is not None and not self._self_test(arr):
            self.layout, self.fallback_reason = None, "self-test mismatch against zarr"
        if self.layout is None:
            log.info("%s: zarr API reads (%s)", key, self.fallback_reason)
        self._pid = -1
        self._array = None

    @property
    def fast(self) -> bool:
        return self.layout is not None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"], state["_pid"] = None, -1  # zarr handles stay in their process
        return state

    def _zarr_array(self):
        if self._pid != os.getpid() or self._array is None:
            self._array = EpisodeDataset(self.dataset_path).array(self.key)
            self._pid = os.getpid()
        return self._array

    def read_into(self, frames: np.ndarray, out: np.ndarray) -> None:
        """Decode frames (global indices) into `out` (len(frames), *frame_shape), C-contiguous."""
        frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        if self.layout is None:
            uniq, inverse = np.unique(frames, return_inverse=True)
            out[...] = np.asarray(self._zarr_array().get_orthogonal_selection((uniq,)))[inverse]
            return
        from numcodecs.blosc import decompress

        for j, f in enumerate(frames.tolist()):
            try:
                with open(chunk_path(self.layout, f), "rb", buffering=0) as fh:
                    buf = fh.read()
            except FileNotFoundError:
                out[j] = self.fill_value
                continue
            decompress(buf, out[j])

    def read(self, frames: Sequence[int] | np.ndarray) -> np.ndarray:
        frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        out = np.empty((len(frames), *self.frame_shape), dtype=self.dtype)
        self.read_into(frames, out)
        return out

    def _self_test(self, arr) -> bool:
        """Decode the first and last frame both ways; any difference disables the fast path."""
        n = int(arr.shape[0])
        if n == 0:
            return True
        frames = np.unique([0, n - 1])
        mine = self.read(frames)
        ref = np.stack([np.asarray(arr[int(f)]) for f in frames])
        return bool(np.array_equal(mine, ref))


def available_memory_bytes() -> int:
    """MemAvailable (counts reclaimable page cache) when readable, else free physical pages."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def _shm_free_bytes() -> int:
    try:
        st = os.statvfs("/dev/shm")
        return st.f_bavail * st.f_frsize
    except OSError:
        return 0


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A batch tensor; in a DataLoader worker, allocated in shared memory as default_collate does
    (otherwise it is copied into shared memory when sent to the main process)."""
    if get_worker_info() is not None:
        numel = int(np.prod(shape))
        try:
            storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
            return torch.empty(0, dtype=dtype).new(storage).view(shape)
        except (AttributeError, RuntimeError):  # private API moved: the copy is only a cost
            pass
    return torch.empty(shape, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------
@dataclass
class WindowDatasetConfig:
    """What a sample contains and how images are read."""

    obs_keys: tuple[str, ...] = ("state", "rgb/front", "rgb/wrist")
    action_key: str = "action"
    window: WindowConfig = field(default_factory=WindowConfig)
    image_layout: str = "chw"  # "chw" | "hwc"
    cache_images: bool | str = "auto"  # True | False | "auto"
    cache_budget_fraction: float = 0.25  # of available RAM, for "auto"
    fast_path: bool = True

    def __post_init__(self) -> None:
        if self.image_layout not in ("chw", "hwc"):
            raise ValueError(f"image_layout must be 'chw' or 'hwc', got {self.image_layout!r}")
        if self.cache_images not in (True, False, "auto"):
            raise ValueError(f"cache_images must be True, False or 'auto', got {self.cache_images!r}")
        self.obs_keys = tuple(self.obs_keys)


class WindowBatch(_SequenceABC):
    """What `__getitems__` returns: a sequence of samples backed by one pre-stacked batch.

    `collate_windows` returns `.stacked` as is; any other collate function sees ordinary
    per-sample dicts (views into the batch)."""

    def __init__(self, stacked: dict[str, Any]):
        self.stacked = stacked

    def __len__(self) -> int:
        return int(self.stacked["action"].shape[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return {"obs": {k: v[i] for k, v in self.stacked["obs"].items()}, "action": self.stacked["action"][i]}


def collate_windows(batch):
    """Collate function for `EpisodeWindowDataset`: a `WindowBatch` is already a batch."""
    if isinstance(batch, WindowBatch):
        return batch.stacked
    return default_collate(batch)


class EpisodeWindowDataset(Dataset):
    """Windows of `episodes` (all committed episodes if None) of the dataset at `path`."""

    def __init__(self, path: str | os.PathLike, episodes: Sequence[int] | np.ndarray | None = None,
                 cfg: WindowDatasetConfig | None = None, normalizer: Normalizer | None = None):
        self.path = Path(path)
        self.cfg = cfg = cfg or WindowDatasetConfig()
        ds = EpisodeDataset(path)
        self._ep_starts, self._ep_ends, self.n_frames = ds.episode_starts, ds.episode_ends, ds.n_frames
        self.episodes = np.arange(len(ds)) if episodes is None else np.asarray(episodes, dtype=np.int64)
        self.windows: WindowIndex = make_windows(ds.episode_starts, ds.episode_ends, self.episodes, cfg.window)
        self.normalizer = normalizer
        keys = [*cfg.obs_keys, cfg.action_key]
        missing = [k for k in keys if k not in ds.keys]
        if missing:
            raise KeyError(f"dataset {path} has no keys {missing}; it has {ds.keys}")
        arrays = {k: ds.array(k) for k in keys}
        images = {k for k in keys if is_image_key(k, arrays[k].shape[1:], arrays[k].dtype)}
        if cfg.action_key in images:
            raise ValueError(f"action key '{cfg.action_key}' is an image array")
        self.image_keys = [k for k in cfg.obs_keys if k in images]
        self.lowdim_keys = [k for k in keys if k not in images]
        n = ds.n_frames
        self.lowdim: dict[str, np.ndarray] = {}
        for k in dict.fromkeys(self.lowdim_keys):
            x = np.asarray(arrays[k][:n])
            if normalizer is not None:
                if k not in normalizer:
                    raise NormalizerError(f"normaliser has no statistics for '{k}' (has {sorted(normalizer.keys)}); "
                                          f"fit it with mode 'identity' to leave '{k}' as is")
                x = normalizer.normalize(k, x)
            self.lowdim[k] = np.ascontiguousarray(x, dtype=np.float32)
        self.readers = {k: FrameReader(path, k, cfg.fast_path) for k in self.image_keys}
        self.cache: dict[str, torch.Tensor] = {}
        self._cache_row: np.ndarray | None = None  # global frame -> cache row (-1: not cached)
        self._scratch_bufs: dict[str, np.ndarray] = {}
        self._scratch_pid = -1
        if self.image_keys and self._want_cache():
            self._build_cache()

    # --- cache -----------------------------------------------------------------------------
    def _used_frames(self) -> np.ndarray:
        """Boolean mask of the frames some window can touch (its episodes)."""
        marks = np.zeros(self.n_frames + 1, dtype=np.int64)
        eps = self.windows.episodes
        np.add.at(marks, self._ep_starts[eps], 1)
        np.add.at(marks, self._ep_ends[eps], -1)
        return np.cumsum(marks[:-1]) > 0

    def cache_nbytes(self) -> int:
        """Decoded size of the images of the used frames (what the RAM cache would hold)."""
        n_used = int(self._used_frames().sum())
        return sum(n_used * int(np.prod(r.frame_shape)) * r.dtype.itemsize for r in self.readers.values())

    def _want_cache(self) -> bool:
        mode = self.cfg.cache_images
        if mode is False:
            return False
        need = self.cache_nbytes()
        if mode == "auto":
            budget = int(self.cfg.cache_budget_fraction * available_memory_bytes())
            if need > budget:
                log.info("image cache off: %.1f MB decoded > budget %.1f MB", need / 2**20, budget / 2**20)
                return False
        return True

    def _build_cache(self) -> None:
        used = np.flatnonzero(self._used_frames())
        row = np.full(self.n_frames, -1, dtype=np.int64)
        row[used] = np.arange(len(used))
        share = _shm_free_bytes() > 1.1 * self.cache_nbytes()
        for k, reader in self.readers.items():
            t = torch.empty((len(used), *reader.frame_shape), dtype=torch.uint8)
            if share:  # move the (still untouched) storage to shared memory before filling it
                t.share_memory_()
            buf = t.numpy()
            for lo in range(0, len(used), 4096):
                reader.read_into(used[lo:lo + 4096], buf[lo:lo + 4096])
            self.cache[k] = t
        self._cache_row = row
        log.info("image cache: %d frames x %d cameras, %.1f MB%s", len(used), len(self.readers),
                 self.cache_nbytes() / 2**20, " (shared memory)" if share else "")
        if not share:
            log.warning("image cache not in shared memory (/dev/shm too small): spawned DataLoader workers "
                        "will read images from disk")

    @property
    def cached(self) -> bool:
        return bool(self.cache)

    @property
    def cache_rows(self) -> np.ndarray | None:
        """Global frame index -> row of the image cache (-1: frame not cached)."""
        return self._cache_row

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_scratch_bufs"], state["_scratch_pid"] = {}, -1
        if self.cache and not all(t.is_shared() for t in self.cache.values()):
            state["cache"], state["_cache_row"] = {}, None  # would be copied per worker
        return state

    # --- access ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range ({len(self)})")
        return self.__getitems__([i % len(self)])[0]

    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> WindowBatch:
        idx = np.asarray(indices, dtype=np.int64)
        obs_f = self.windows.obs_indices(idx)  # (B, To)
        act_f = self.windows.action_indices(idx)  # (B, H)
        obs: dict[str, torch.Tensor] = {}
        for k in self.cfg.obs_keys:
            obs[k] = self._images(k, obs_f) if k in self.readers else torch.from_numpy(self.lowdim[k][obs_f])
        action = torch.from_numpy(self.lowdim[self.cfg.action_key][act_f])
        return WindowBatch({"obs": obs, "action": action})

    def _images(self, key: str, frames: np.ndarray) -> torch.Tensor:
        b, to = frames.shape
        reader = self.readers[key]
        h, w, c = reader.frame_shape
        chw = self.cfg.image_layout == "chw"
        out = _empty((b, to, c, h, w) if chw else (b, to, h, w, c), torch.uint8)
        flat = frames.reshape(-1)
        # HWC frames go straight into the batch; CHW ones via a reused scratch buffer
        # (a fresh 10+ MB buffer per batch costs more in page faults than the transpose).
        dst = self._scratch(key, len(flat)) if chw else out.numpy().reshape(-1, h, w, c)
        if self.cache:
            np.take(self.cache[key].numpy(), self._cache_row[flat], axis=0, out=dst)
        else:
            reader.read_into(flat, dst)
        if chw:
            np.copyto(out.numpy().reshape(b * to, c, h, w), dst.transpose(0, 3, 1, 2))
        return out

    def _scratch(self, key: str, n: int) -> np.ndarray:
        """Per-process decode buffer for `key`, grown on demand and reused across batches."""
        if self._scratch_pid != os.getpid():
            self._scratch_bufs, self._scratch_pid = {}, os.getpid()
        buf = self._scratch_bufs.get(key)
        if buf is None or len(buf) < n:
            buf = np.empty((n, *self.readers[key].frame_shape), dtype=self.readers[key].dtype)
            self._scratch_bufs[key] = buf
        return buf[:n]


# --------------------------------------------------------------------------------------------
# Convenience
# --------------------------------------------------------------------------------------------
def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                multiprocessing_context: str | None = None, drop_last: bool = False, seed: int | None = None,
                **kwargs: Any) -> DataLoader:
    """A DataLoader with `collate_windows` and persistent workers (they keep their file handles
    and the image cache handle across epochs)."""
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    if num_workers > 0:
        kwargs.setdefault("persistent_workers", True)
        if multiprocessing_context is not None:
            kwargs["multiprocessing_context"] = multiprocessing_context
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_windows, drop_last=drop_last, generator=generator, **kwargs)


def make_datasets(path: str | os.PathLike, cfg: WindowDatasetConfig | None = None,
                  split: SplitConfig | None = None, norm_modes: Mapping[str, str] | None = None,
                  stats_file: str | os.PathLike | None = None
                  ) -> tuple[EpisodeWindowDataset, EpisodeWindowDataset | None, Normalizer | None]:
    """Train and val datasets split by episode, with a normaliser fitted on the train episodes
    (cached in the dataset's stats sidecar, see `data.normalizer`)."""
    cfg = cfg or WindowDatasetConfig()
    split = split or SplitConfig()
    ds = EpisodeDataset(path)
    train_eps, val_eps = select_and_split(ds, split)
    norm = None
    if norm_modes is not None:
        norm = load_or_fit(ds, norm_modes, episodes=train_eps, path=stats_file)
    train = EpisodeWindowDataset(path, train_eps, cfg, norm)
    val = EpisodeWindowDataset(path, val_eps, cfg, norm) if len(val_eps) else None
    return train, val, norm

