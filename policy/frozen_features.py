"""Features of frozen camera encoders, computed once per dataset frame.

Why: a pixel training step spends nearly all its time in the image encoders (forward and
backward over batch x history x cameras images: ~1,000 ViT passes per step at batch 256). When
the encoders are kept fixed - warm-started from an end-to-end run, or a pretrained backbone -
their output for a frame never changes, so it is computed once here and the denoiser then trains
at the speed of the state-only policy (tens of steps/s on two CPU cores instead of <1).

Random-shift augmentation survives as `views`: view 0 is the unshifted image, views 1.. are
independently shifted copies, and training batches pick one per frame
(`DeviceWindowBatches(image_features=...)`).

Computing them takes minutes on a CPU (~455 images/s: 4 views of a 100-demo set is ~10 min), so
`cached_frame_features` keeps them in the run directory, keyed by everything they depend on, and
a resumed chunk reads them back in a second.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.torch_dataset import EpisodeWindowDataset
from policy.checkpoint import atomic_save
from policy.obs_encoder import ObsEncoder

log = logging.getLogger(__name__)


@torch.no_grad()
def frame_features(encoder: ObsEncoder, dataset: EpisodeWindowDataset, views: int = 1, seed: int = 0,
                   batch_size: int = 512, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """{`rgb/<cam>`: float32 (cache rows, views, D)} for every frame in the dataset's image cache."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    if not dataset.cached:
        raise ValueError("frozen-encoder features are computed from the image cache (data.cache_images), "
                         "which this dataset did not build")
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = encoder.training
    encoder.eval()
    out: dict[str, torch.Tensor] = {}
    try:
        for i, cam in enumerate(encoder.cfg.cameras):
            images = dataset.cache[f"rgb/{cam}"]
            feats = torch.empty((len(images), views, encoder.cfg.vit.out_dim), dtype=torch.float32)
            for lo in tqdm(range(0, len(images), batch_size), desc=f"features {cam} x{views}", unit="batch",
                           leave=False):
                x = images[lo:lo + batch_size].to(device)
                for v in range(views):
                    f = encoder.encode_camera(i, x, augment=v > 0, generator=generator)
                    feats[lo:lo + len(x), v] = f.float().cpu()
            out[f"rgb/{cam}"] = feats
            log.info("cached %s features: %d frames x %d views", cam, len(images), views)
    finally:
        encoder.train(was_training)
    return out


def features_key(encoder: ObsEncoder, dataset: EpisodeWindowDataset, views: int, seed: int) -> str:
    """Hash of what the features depend on: encoder weights and image settings, the frames
    (dataset path, episodes, their low-dim data), the number of views and the shift seed."""
    h = hashlib.sha256()
    for name, t in sorted(encoder.vits.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr((encoder.cfg.cameras, encoder.cfg.image_hw, encoder.shift_pad, encoder.cfg.share_vit,
                   str(Path(dataset.path).resolve()), views, seed)).encode())
    h.update(np.asarray(dataset.episodes).tobytes())
    for k in sorted(dataset.lowdim):
        h.update(k.encode())
        h.update(dataset.lowdim[k].tobytes())
    return h.hexdigest()[:20]


def cached_frame_features(encoder: ObsEncoder, dataset: EpisodeWindowDataset, cache_dir: str | os.PathLike,
                          views: int = 1, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """`frame_features`, read from `cache_dir` when it holds them for exactly these inputs."""
    path = Path(cache_dir) / f"{features_key(encoder, dataset, views, seed)}.pt"
    if path.exists():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            rows = len(next(iter(dataset.cache.values())))
            if set(feats) == {f"rgb/{c}" for c in encoder.cfg.cameras} and all(
                    f.shape[:2] == (rows, views) for f in feats.values()):
                log.info("frozen-encoder features read from %s", path)
                return feats
        except Exception as e:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
            log.warning("ignoring unreadable feature cache %s (%s)", path, e)
    feats = frame_features(encoder, dataset, views=views, seed=seed, device=device)
    atomic_save(feats, path)  # DDP ranks may write at once
    return feats
