"""Streaming feature statistics for LeRobot's meta/stats.json (the input of its normaliser).

Computed while exporting, one episode at a time, so a large dataset never has to be in memory.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class Stats:
    """Streaming min/max/mean/std per feature for meta/stats.json (LeRobot's normaliser input)."""

    def __init__(self) -> None:
        self.acc: dict[str, list[Any]] = {}

    def add(self, name: str, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        s = [x.min(0), x.max(0), x.sum(0), (x * x).sum(0), len(x)]
        if name not in self.acc:
            self.acc[name] = s
            return
        a = self.acc[name]
        self.acc[name] = [np.minimum(a[0], s[0]), np.maximum(a[1], s[1]), a[2] + s[2], a[3] + s[3], a[4] + s[4]]

    def to_json(self) -> dict[str, Any]:
        out = {}
        for name, (mn, mx, sm, sq, n) in self.acc.items():
            mean = sm / n
            std = np.sqrt(np.maximum(sq / n - mean * mean, 0.0))
            out[name] = {"min": np.atleast_1d(mn).tolist(), "max": np.atleast_1d(mx).tolist(),
                         "mean": np.atleast_1d(mean).tolist(), "std": np.atleast_1d(std).tolist(), "count": [int(n)]}
        return out


def image_stats(img: np.ndarray, stride: int = 10) -> np.ndarray:
    """Per-channel values in [0, 1] of every `stride`-th frame: LeRobot keeps (3,1,1) image stats."""
    return (img[::stride].reshape(-1, img.shape[-1]) / 255.0).astype(np.float64)


def shape_image_stats(stats: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
    """LeRobot keeps image stats as (C, 1, 1) lists in [0, 1]."""
    for name, feat in features.items():
        if feat["dtype"] in ("video", "image") and name in stats:
            stats[name] = {k: ([[[x]] for x in v] if k != "count" else v) for k, v in stats[name].items()}
    return stats
