"""Training windows over an episodic dataset, and the train/val split by episode.

A *window* is what one training sample needs: `obs_history` observations ending at the
current step `t` and `horizon` actions starting at the oldest of those observations,
`t - obs_history + 1` (diffusion_policy's convention: the action chunk is aligned with the
observation history, so `act_steps` actions executed from index `obs_history - 1` on are
the ones that follow the current observation). Indices that fall outside the episode are
clamped to it: before the start this repeats the first frame (observation and action),
after the end it repeats the last action. Windows never cross an episode boundary.

Every step of an episode is a candidate `t`; `pad_before` / `pad_after` cap how many
clamped (repeated) frames a window may contain at its start / end, which drops the
windows at the episode edges that would need more (0/0 keeps only windows fully inside
the episode). `None` means no cap.

Only three int64 numbers per window are stored (current frame, episode start and end, as
global frame indices), and the frame indices of a batch are computed on the fly with one
vectorised clamp, so building the index for millions of frames takes milliseconds.

The split is by episode, never by window: windows of one episode overlap heavily, so a
window-level split would leak nearly identical samples into validation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowConfig:
    """Shape of a training window (see module docstring)."""

    obs_history: int = 1
    horizon: int = 8
    pad_before: int | None = None
    pad_after: int | None = None

    def __post_init__(self) -> None:
        if self.obs_history < 1 or self.horizon < 1:
            raise ValueError(f"obs_history and horizon must be >= 1, got {self.obs_history}, {self.horizon}")
        for name in ("pad_before", "pad_after"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {v}")


@dataclass(frozen=True)
class SplitConfig:
    """Which episodes take part, and how they are divided into train and val."""

    val_ratio: float = 0.1
    seed: int = 0
    success_only: bool = False
    sources: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_ratio < 1.0:
            raise ValueError(f"val_ratio must be in [0, 1), got {self.val_ratio}")


class WindowIndex:
    """All windows of a set of episodes; `obs_indices` / `action_indices` give frame indices.

    Frame indices are global (rows of the concatenated `data/<key>` arrays).
    """

    def __init__(self, current: np.ndarray, ep_start: np.ndarray, ep_end: np.ndarray, episode: np.ndarray,
                 cfg: WindowConfig):
        self.current = np.asarray(current, dtype=np.int64)
        self.ep_start = np.asarray(ep_start, dtype=np.int64)
        self.ep_end = np.asarray(ep_end, dtype=np.int64)
        self.episode = np.asarray(episode, dtype=np.int64)
        self.cfg = cfg
        self._obs_offsets = np.arange(-cfg.obs_history + 1, 1, dtype=np.int64)
        self._act_offsets = np.arange(cfg.horizon, dtype=np.int64) - (cfg.obs_history - 1)

    def __len__(self) -> int:
        return len(self.current)

    @property
    def obs_offsets(self) -> np.ndarray:
        """Frame offsets of a window's observations relative to its current step."""
        return self._obs_offsets

    @property
    def action_offsets(self) -> np.ndarray:
        return self._act_offsets

    @property
    def episodes(self) -> np.ndarray:
        """Episode indices that contribute at least one window (sorted)."""
        return np.unique(self.episode)

    def _frames(self, idx, offsets: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        frames = self.current[idx][..., None] + offsets
        return np.clip(frames, self.ep_start[idx][..., None], self.ep_end[idx][..., None] - 1)

    def obs_indices(self, idx) -> np.ndarray:
        """(..., obs_history) global frame indices of the observations of windows `idx`."""
        return self._frames(idx, self._obs_offsets)

    def action_indices(self, idx) -> np.ndarray:
        """(..., horizon) global frame indices of the actions of windows `idx`."""
        return self._frames(idx, self._act_offsets)


def make_windows(episode_starts: np.ndarray, episode_ends: np.ndarray, episodes: Sequence[int] | np.ndarray,
                 cfg: WindowConfig) -> WindowIndex:
    """Windows of the given episodes (indices into `episode_starts/ends`), in episode order.

    For an episode of length L and current step t (0 <= t < L), the window clamps
    `max(0, obs_history - 1 - t)` frames at its start and
    `max(0, t - obs_history + 1 + horizon - L)` at its end; t is kept when both are within
    the caps, i.e. `obs_history - 1 - pad_before <= t <= L - 1 - horizon + obs_history + pad_after`.
    """
    episodes = np.asarray(episodes, dtype=np.int64).reshape(-1)
    starts = np.asarray(episode_starts, dtype=np.int64)[episodes]
    ends = np.asarray(episode_ends, dtype=np.int64)[episodes]
    lengths = ends - starts
    to, h = cfg.obs_history, cfg.horizon
    t_lo = np.zeros_like(lengths) if cfg.pad_before is None else np.maximum(0, to - 1 - cfg.pad_before)
    t_lo = np.broadcast_to(t_lo, lengths.shape)
    t_hi = lengths - 1  # inclusive
    if cfg.pad_after is not None:
        t_hi = np.minimum(t_hi, lengths - 1 - h + to + cfg.pad_after)
    counts = np.maximum(0, t_hi - t_lo + 1)
    total = int(counts.sum())
    # Ragged arange without a Python loop: position within each episode's run of windows.
    run_start = np.repeat(np.cumsum(counts) - counts, counts)
    local = np.arange(total, dtype=np.int64) - run_start
    which = np.repeat(np.arange(len(episodes)), counts)
    current = starts[which] + t_lo[which] + local
    skipped = int((counts == 0).sum())
    if skipped:
        log.info("%d of %d episodes are too short for any window (obs_history=%d, horizon=%d, pad %s/%s)",
                 skipped, len(episodes), to, h, cfg.pad_before, cfg.pad_after)
    return WindowIndex(current, starts[which], ends[which], episodes[which], cfg)


def _hash_u64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, platform-independent pseudo-random score per integer."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def split_episodes(episodes: Sequence[int] | np.ndarray, val_ratio: float, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Split episode indices into (train, val), both sorted.

    Each episode gets a score hashed from (seed, episode index), and the `round(val_ratio * n)`
    lowest scores go to val, clipped to at least 1 (when val_ratio > 0 and n > 1) and at most
    n - 1. The score of an episode does not depend on the other episodes, so filtering or
    appending episodes moves few existing episodes between train and val (a permutation
    would reshuffle all of them).
    """
    episodes = np.unique(np.asarray(episodes, dtype=np.int64))
    n = len(episodes)
    n_val = int(round(val_ratio * n))
    if val_ratio > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    seed_mix = _hash_u64(np.array([seed], dtype=np.int64))[0]
    scores = _hash_u64(episodes.astype(np.uint64) ^ seed_mix)
    order = np.argsort(scores, kind="stable")
    val = np.sort(episodes[order[:n_val]])
    train = np.sort(episodes[order[n_val:]])
    return train, val


def select_and_split(dataset, split: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Filter a dataset's episodes (`EpisodeDataset.select`) and split them by episode."""
    selected = dataset.select(success_only=split.success_only, sources=split.sources)
    if len(selected) == 0:
        raise ValueError(f"no episode of {getattr(dataset, 'path', dataset)} passes the filters "
                         f"(success_only={split.success_only}, sources={split.sources})")
    train, val = split_episodes(selected, split.val_ratio, split.seed)
    log.info("episodes: %d of %d selected -> %d train, %d val", len(selected), len(dataset), len(train), len(val))
    return train, val
