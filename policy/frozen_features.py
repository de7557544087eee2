"""Features of frozen camera encoders, computed once per dataset frame.

Why: a pixel training step spends nearly all its time in the image encoders (forward and
backward over batch x history x cameras images: ~1,000 ViT passes per step at batch 256). When
the encoders are kept fixed - warm-started from an end-to-end run, or a pretrained backbone -
their output for a frame never changes, so it is computed once here and the denoiser then trains
at the speed of the state-only policy (tens of steps/s on two CPU cores instead of <1).

Random-shift augmentation survives as `views`: view 0 is the unshifted image, views 1.. are
independently shifted copies, and training batches pick one per frame
(`DeviceWindowBatches(image_features=...)`).
"""
from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from data.torch_dataset import EpisodeWindowDataset
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
