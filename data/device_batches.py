"""Training batches gathered on the training device from a fully cached window dataset.

Why: a DataLoader moves every batch through worker processes (256 two-camera windows with obs
history 2 are ~28 MB of uint8) and pays for it in worker CPU, pickling and shared-memory copies
(pixel pretraining ran at ~8,400 samples/s with 8 workers on a 16-core H200 machine, not
profiled). The 100-demo pixel set decodes to ~1.9 GB, which sits comfortably in GPU memory; a
batch is then a handful of index ops on the device. Batches hold exactly what `EpisodeWindowDataset` returns for the same windows; each epoch
is a fresh `torch.randperm` from a seeded CPU generator.

With `image_features` (image encoders kept fixed, their features computed once per frame), a
batch carries `feat/<cam>` features instead of `rgb/<cam>` images: a few KB per window instead
of ~110 KB, and no image encoder in the training step.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch

from data.torch_dataset import EpisodeWindowDataset


class DeviceWindowBatches:
    """Batches of `dataset` windows as `{"obs": {key: tensor}, "action": tensor}` on `device`."""

    def __init__(self, dataset: EpisodeWindowDataset, device: str | torch.device,
                 image_features: Mapping[str, torch.Tensor] | None = None):
        """`image_features[rgb/<cam>]`: (cache rows, views, D) features of every cached frame, where
        the views are differently augmented copies (view 0: unaugmented). Training batches draw a
        random view per frame; ordered passes (validation) use view 0."""
        if dataset.image_keys and not dataset.cached:
            raise ValueError("device batches need the image cache (data.cache_images): the dataset's images are "
                             "not in memory")
        self.device = torch.device(device)
        self.image_layout = dataset.cfg.image_layout
        self.obs_keys = list(dataset.cfg.obs_keys)
        self.action_key = dataset.cfg.action_key
        self.image_keys = set(dataset.image_keys)
        w = dataset.windows
        to_dev = lambda a: torch.as_tensor(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        self.current, self.ep_start, self.ep_end = to_dev(w.current), to_dev(w.ep_start), to_dev(w.ep_end)
        self.obs_offsets, self.act_offsets = to_dev(w.obs_offsets), to_dev(w.action_offsets)
        self.lowdim = {k: to_dev(v) for k, v in dataset.lowdim.items()}
        self.features = {k: v.to(self.device) for k, v in (image_features or {}).items()}
        for k, f in self.features.items():
            if k not in self.image_keys or f.ndim != 3 or len(f) != len(dataset.cache[k]):
                raise ValueError(f"image_features[{k!r}] must be (cache rows {len(dataset.cache.get(k, []))}, views, D) "
                                 f"for an image key of the dataset ({sorted(self.image_keys)}), got {tuple(f.shape)}")
        self.images = {k: dataset.cache[k].to(self.device) for k in dataset.image_keys if k not in self.features}
        self.cache_row = to_dev(dataset.cache_rows) if dataset.image_keys else None
        self.n = len(w)

    def __len__(self) -> int:
        return self.n

    def nbytes(self) -> int:
        tensors = (*self.images.values(), *self.features.values(), *self.lowdim.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def _frames(self, idx: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        frames = self.current[idx, None] + offsets
        return torch.minimum(torch.maximum(frames, self.ep_start[idx, None]), self.ep_end[idx, None] - 1)

    def batch(self, idx: torch.Tensor | np.ndarray, views: torch.Generator | None = None) -> dict:
        """The windows `idx`, laid out as `EpisodeWindowDataset` batches are (features in place of
        images where given: a random view per frame drawn from `views`, else view 0)."""
        idx = torch.as_tensor(idx, dtype=torch.long).to(self.device)
        obs_f = self._frames(idx, self.obs_offsets)
        obs = {}
        for k in self.obs_keys:
            if k in self.features:
                rows, feats = self.cache_row[obs_f], self.features[k]
                view = (torch.randint(feats.shape[1], rows.shape, generator=views).to(self.device) if views is not None
                        else torch.zeros_like(rows))
                obs["feat/" + k.split("/", 1)[-1]] = feats[rows, view]  # (B, To, D)
            elif k in self.image_keys:
                x = self.images[k][self.cache_row[obs_f]]  # (B, To, H, W, C)
                obs[k] = x.permute(0, 1, 4, 2, 3).contiguous() if self.image_layout == "chw" else x
            else:
                obs[k] = self.lowdim[k][obs_f]
        return {"obs": obs, "action": self.lowdim[self.action_key][self._frames(idx, self.act_offsets)]}

    def epochs(self, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True) -> Iterator[dict]:
        """Endless shuffled batches (or one ordered pass when shuffle is False)."""
        generator = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(self.n, generator=generator) if shuffle else torch.arange(self.n)
            stop = self.n - self.n % batch_size if drop_last else self.n
            for lo in range(0, stop, batch_size):
                yield self.batch(order[lo:lo + batch_size], views=generator if shuffle else None)
            if not shuffle:
                return
