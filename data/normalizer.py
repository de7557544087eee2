"""Per-dimension normalisation of low-dim observations and actions.

Each key (e.g. `state`, `action`, `parts`) has its own mode:

* `minmax`   - affine map of [min, max] onto [-1, 1] (diffusion policies want actions there);
* `meanstd`  - zero mean, unit variance;
* `identity` - unchanged (stats are still recorded, for reports).

A dimension whose range (minmax) or std (meanstd) is below `eps` - a gripper that never
moved, a joint that is fixed in this task - is only centred (scale 1): dividing by ~0 would
blow tiny noise at deployment time up into huge inputs.

Statistics are computed in one streaming pass over the low-dim arrays of a dataset, chunk by
chunk in float64 (Chan et al.'s parallel mean/variance merge), never touching images.

Persistence: `state_dict()` holds only str/int/float/list/dict, so it can be stored inside a
checkpoint and read back with `torch.load(weights_only=True)`. As a file, the stats live in a
JSON *sidecar next to the dataset*: `<parent>/<dataset dir name>.stats.json` (e.g.
`demos/one_leg.zarr` -> `demos/one_leg.zarr.stats.json`), not in the dataset's attrs, because
the dataset is append-only and shared by readers; the sidecar records the dataset's frame and
episode counts, so stale statistics (the dataset grew since) are detected and recomputed.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

MODES = ("minmax", "meanstd", "identity")
STATE_DICT_VERSION = 1
DEFAULT_EPS = 1e-4


class NormalizerError(KeyError):
    """A key has no statistics, or data does not match them."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass
class KeyStats:
    """Running per-dimension statistics of one key (float64)."""

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None  # sum of squared deviations from the mean
    min: np.ndarray | None = None
    max: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        x = x.reshape(len(x), -1) if x.ndim > 1 else x.reshape(-1, 1)
        n = len(x)
        if n == 0:
            return
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean_b, m2_b
            self.min, self.max = x.min(axis=0), x.max(axis=0)
            return
        if x.shape[1] != len(self.mean):
            raise NormalizerError(f"stats update with {x.shape[1]} dims, expected {len(self.mean)}")
        total = self.count + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.count * n / total)
        self.count = total
        self.min = np.minimum(self.min, x.min(axis=0))
        self.max = np.maximum(self.max, x.max(axis=0))

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))  # population std, as np.std


@dataclass
class KeyNormalizer:
    """Affine map y = x * scale + offset for one key, plus the stats it came from."""

    mode: str
    scale: np.ndarray
    offset: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return len(self.scale)

    @classmethod
    def from_stats(cls, s: KeyStats, mode: str, eps: float = DEFAULT_EPS) -> "KeyNormalizer":
        if mode not in MODES:
            raise ValueError(f"unknown normalisation mode {mode!r}; choose from {MODES}")
        if s.count == 0:
            raise ValueError("cannot build a normaliser from zero samples")
        lo, hi, mean, std = s.min, s.max, s.mean, s.std
        if mode == "minmax":
            rng = hi - lo
            ok = rng > eps
            scale = np.where(ok, 2.0 / np.where(ok, rng, 1.0), 1.0)
            offset = np.where(ok, -1.0 - lo * scale, -(lo + hi) / 2.0)
        elif mode == "meanstd":
            ok = std > eps
            scale = np.where(ok, 1.0 / np.where(ok, std, 1.0), 1.0)
            offset = -mean * scale
        else:
            scale, offset = np.ones_like(mean), np.zeros_like(mean)
        stats = {"count": int(s.count), "min": lo.tolist(), "max": hi.tolist(), "mean": mean.tolist(),
                 "std": std.tolist()}
        return cls(mode, scale.astype(np.float64), offset.astype(np.float64), stats)


class Normalizer:
    """Normalise / unnormalise dicts or single arrays of numpy arrays or torch tensors.

    >>> norm = Normalizer.fit(dataset, {"state": "minmax", "action": "minmax"})
    >>> y = norm.normalize("action", x)   # numpy or torch, any leading dims, last dim = key's dims
    >>> x = norm.unnormalize("action", y)
    """

    def __init__(self, keys: Mapping[str, KeyNormalizer] | None = None):
        self.keys: dict[str, KeyNormalizer] = dict(keys or {})
        self._torch_cache: dict[tuple, Any] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {v.mode}[{v.dim}]" for k, v in self.keys.items())
        return f"Normalizer({inner})"

    # --- fitting ---------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], modes: Mapping[str, str],
                    eps: float = DEFAULT_EPS) -> "Normalizer":
        out = {}
        for key, mode in modes.items():
            s = KeyStats()
            s.update(np.asarray(arrays[key]))
            out[key] = KeyNormalizer.from_stats(s, mode, eps)
        return cls(out)

    @classmethod
    def fit(cls, dataset, modes: Mapping[str, str], episodes: Sequence[int] | None = None,
            eps: float = DEFAULT_EPS, block_rows: int | None = None) -> "Normalizer":
        """Streaming statistics over `dataset` (an `EpisodeDataset`), optionally only some episodes."""
        stats = compute_stats(dataset, list(modes), episodes=episodes, block_rows=block_rows)
        return cls({k: KeyNormalizer.from_stats(stats[k], m, eps) for k, m in modes.items()})

    # --- applying --------------------------------------------------------------------
    def _get(self, key: str, x) -> KeyNormalizer:
        if key not in self.keys:
            raise NormalizerError(f"normaliser has no statistics for key '{key}'; it has {sorted(self.keys)}")
        kn = self.keys[key]
        last = x.shape[-1] if getattr(x, "ndim", 0) >= 1 else None
        if last != kn.dim:
            raise NormalizerError(f"'{key}': data has shape {tuple(x.shape)} (last dim {last}), "
                                  f"the normaliser was fitted on {kn.dim} dims")
        return kn

    def _params(self, key: str, kn: KeyNormalizer, x):
        if isinstance(x, np.ndarray):
            dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
            return kn.scale.astype(dtype), kn.offset.astype(dtype), dtype
        import torch  # torch only when given a tensor; data/ must not need it

        dtype = x.dtype if x.is_floating_point() else torch.float32
        ck = (key, x.device, dtype)
        if ck not in self._torch_cache:
            self._torch_cache[ck] = (torch.as_tensor(kn.scale, dtype=dtype, device=x.device),
                                     torch.as_tensor(kn.offset, dtype=dtype, device=x.device))
        scale, offset = self._torch_cache[ck]
        return scale, offset, dtype

    def unit_range(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The raw values that normalise to -1 and +1 per dimension (min/max of a minmax key,
        mean -/+ std of a meanstd one): where the data the statistics came from lies."""
        if key not in self.keys:
            raise NormalizerError(f"normaliser has no statistics for key '{key}'; it has {sorted(self.keys)}")
        kn = self.keys[key]
        a, b = (-1.0 - kn.offset) / kn.scale, (1.0 - kn.offset) / kn.scale
        return np.minimum(a, b), np.maximum(a, b)

    def clear_cache(self) -> None:
        """Forget the per-device torch copies of the statistics (rebuilt on the next call); after a
        graph capture they may hold the capture's placeholder tensors."""
        self._torch_cache.clear()

    def normalize(self, key: str, x):
        x = _as_array(x)
        kn = self._get(key, x)
        scale, offset, dtype = self._params(key, kn, x)
        return _cast(x, dtype) * scale + offset

    def unnormalize(self, key: str, y):
        y = _as_array(y)
        kn = self._get(key, y)
        scale, offset, dtype = self._params(key, kn, y)
        return (_cast(y, dtype) - offset) / scale

    def normalize_dict(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Normalise the keys that have statistics; pass the others (images) through."""
        return {k: self.normalize(k, v) if k in self.keys else v for k, v in batch.items()}

    def unnormalize_dict(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.unnormalize(k, v) if k in self.keys else v for k, v in batch.items()}

    # --- persistence -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain python containers only (safe for `torch.load(weights_only=True)` and JSON)."""
        return {"version": STATE_DICT_VERSION,
                "keys": {k: {"mode": v.mode, "scale": [float(a) for a in v.scale],
                             "offset": [float(a) for a in v.offset], "stats": v.stats}
                         for k, v in self.keys.items()}}

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any]) -> "Normalizer":
        version = sd.get("version")
        if version != STATE_DICT_VERSION:
            raise ValueError(f"normaliser state_dict version {version!r}; this code reads {STATE_DICT_VERSION}")
        keys = {}
        for k, v in sd["keys"].items():
            if v["mode"] not in MODES:
                raise ValueError(f"'{k}': unknown normalisation mode {v['mode']!r}")
            scale, offset = np.asarray(v["scale"], np.float64), np.asarray(v["offset"], np.float64)
            if scale.shape != offset.shape or scale.ndim != 1:
                raise ValueError(f"'{k}': scale {scale.shape} and offset {offset.shape} must be equal 1-D")
            keys[k] = KeyNormalizer(v["mode"], scale, offset, dict(v.get("stats", {})))
        return cls(keys)

    def save(self, path: str | os.PathLike, fingerprint: Mapping[str, Any] | None = None) -> Path:
        path = Path(path)
        doc = {**self.state_dict(), "fingerprint": dict(fingerprint or {})}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)  # readers never see a half-written file
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Normalizer":
        return cls.from_state_dict(json.loads(Path(path).read_text()))


def _as_array(x):
    """Torch tensors pass through; anything else becomes a numpy array."""
    return x if hasattr(x, "is_floating_point") else np.asarray(x)


def _cast(x, dtype):
    if isinstance(x, np.ndarray):
        return x.astype(dtype, copy=False)
    return x.to(dtype)


def stats_path(dataset_path: str | os.PathLike, tag: str = "") -> Path:
    """Sidecar file for a dataset's statistics: `<parent>/<name>[.<tag>].stats.json`."""
    p = Path(dataset_path)
    return p.parent / f"{p.name}{'.' + tag if tag else ''}.stats.json"


def dataset_fingerprint(dataset, modes: Mapping[str, str], episodes: Sequence[int] | None,
                        eps: float) -> dict[str, Any]:
    """What the statistics depend on; a sidecar whose fingerprint differs is stale."""
    eps_sel = None if episodes is None else [int(e) for e in np.asarray(episodes).reshape(-1)]
    return {"n_frames": int(dataset.n_frames), "n_episodes": int(len(dataset)), "modes": dict(modes),
            "episodes": eps_sel, "eps": float(eps)}


def modes_to_fit(dataset_keys: Iterable[str], modes: Mapping[str, str], required: Sequence[str],
                 where: str = "modes") -> dict[str, str]:
    """Which keys to fit, with their modes: every `required` key (it must have a mode) and every
    other key of `modes` that the dataset has. So a pixel actor's normaliser still holds the
    privileged `parts` statistics of its dataset, which a critic trained beside it needs.
    `where` names `modes` in the error (e.g. the config key `data.norm`)."""
    have = set(dataset_keys)
    missing = [k for k in required if k not in modes]
    if missing:
        raise NormalizerError(f"{where} has no normalisation mode for {missing} (has {sorted(modes)}); "
                              f"add e.g. {missing[0]}: minmax")
    absent = [k for k in required if k not in have]
    if absent:
        raise NormalizerError(f"the dataset has no keys {absent} to fit statistics of; it has {sorted(have)}")
    keys = list(dict.fromkeys([*required, *(k for k in modes if k in have)]))
    return {k: modes[k] for k in keys}


def load_or_fit(dataset, modes: Mapping[str, str], episodes: Sequence[int] | None = None,
                path: str | os.PathLike | None = None, eps: float = DEFAULT_EPS, save: bool = True) -> Normalizer:
    """Read the stats sidecar if it matches the dataset, else compute (and save) them."""
    path = Path(path) if path is not None else stats_path(dataset.path)
    fp = dataset_fingerprint(dataset, modes, episodes, eps)
    if path.exists():
        try:
            doc = json.loads(path.read_text())
            if doc.get("fingerprint") == fp:
                log.info("normaliser: using %s", path)
                return Normalizer.from_state_dict(doc)
            log.info("normaliser: %s is stale (dataset or settings changed); recomputing", path)
        except (ValueError, KeyError) as e:
            log.warning("normaliser: ignoring unreadable %s (%s)", path, e)
    norm = Normalizer.fit(dataset, modes, episodes=episodes, eps=eps)
    if save:
        try:
            norm.save(path, fingerprint=fp)
        except OSError as e:  # read-only dataset directory: the stats still work in memory
            log.warning("normaliser: could not save %s (%s)", path, e)
    return norm


def compute_stats(dataset, keys: Iterable[str], episodes: Sequence[int] | None = None,
                  block_rows: int | None = None) -> dict[str, KeyStats]:
    """One streaming pass per key over committed frames (of `episodes`, if given)."""
    from data.episodes import is_image_key

    n = dataset.n_frames
    mask = None
    if episodes is not None:
        episodes = np.asarray(episodes, dtype=np.int64).reshape(-1)
        # Boolean frame mask from episode ranges without a Python loop (difference array).
        marks = np.zeros(n + 1, dtype=np.int64)
        np.add.at(marks, dataset.episode_starts[episodes], 1)
        np.add.at(marks, dataset.episode_ends[episodes], -1)
        mask = np.cumsum(marks[:-1]) > 0
    out = {}
    for key in keys:
        arr = dataset.array(key)
        if is_image_key(key, arr.shape[1:], arr.dtype):
            raise NormalizerError(f"'{key}' is an image array; images are scaled in the model, not normalised here")
        rows = block_rows or max(arr.chunks[0], 1) * max(1, 65536 // max(arr.chunks[0], 1))
        s = KeyStats()
        for lo in range(0, n, rows):
            block = np.asarray(arr[lo:min(n, lo + rows)])
            if mask is not None:
                block = block[mask[lo:lo + len(block)]]
            if len(block):
                s.update(block.reshape(len(block), -1))
        if s.count == 0:
            raise ValueError(f"no frames to compute statistics of '{key}' from")
        out[key] = s
    return out
