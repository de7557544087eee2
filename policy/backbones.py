"""Pretrained image backbones through timm, from local weight files only.

The default image encoder is our small ViT trained from scratch (policy/vit.py), as DPPO's
pixel policies. Some users want an ImageNet (or R3M/DINO-style) backbone instead; timm builds
the architecture, and the weights come from a file the user already has: nothing is downloaded
at run time (robots and cluster nodes are often offline, and a silent download changes what a
run means). Once trained, the backbone's weights live in the policy checkpoint, so deployment
needs timm but not the original weight file.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.", "head_dist.")


def require_timm():
    try:
        import timm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("policy backbone 'timm' needs the timm package: pip install 'timm>=1.0' "
                          "(or pip install -e .[pretrained])") from e
    return timm


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local .safetensors / .pth / .pt / .bin file (plain tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path} (weights are never downloaded; "
                                f"point policy.obs.timm_weights at a local file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers of training checkpoints
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return sd


class TimmEncoder(nn.Module):
    """timm model without its classifier -> linear projection to `out_dim`.

    Images come in as float (N, 3, H, W) in [0, 1]; the backbone's own mean/std normalisation is
    applied here. ViT-family models are built with `dynamic_img_size`, so any resolution works
    (CNNs are resolution-agnostic anyway).
    """

    def __init__(self, model: str, out_dim: int, freeze: bool = False):
        super().__init__()
        timm = require_timm()
        try:
            self.net = timm.create_model(model, pretrained=False, num_classes=0, dynamic_img_size=True)
        except TypeError:  # architectures without that option (CNNs)
            self.net = timm.create_model(model, pretrained=False, num_classes=0)
        self.model_name = model
        self.freeze = freeze
        cfg = getattr(self.net, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.proj = nn.Linear(self.net.num_features, out_dim)
        if freeze:
            self.net.requires_grad_(False)

    def load_weights(self, path: str | Path) -> None:
        """Load backbone weights from a local file; the classifier head in it is ignored."""
        sd = {k: v for k, v in read_weights(path).items() if not k.startswith(CLASSIFIER_PREFIXES)}
        try:
            missing, unexpected = self.net.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"{path} does not fit timm model '{self.model_name}': {e}") from e
        if missing or unexpected:  # a partial load would silently mix pretrained and random layers
            raise ValueError(f"{path} does not fit timm model '{self.model_name}': {len(missing)} missing "
                             f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}) tensors")
        log.info("loaded %s backbone weights from %s", self.model_name, path)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.net.eval()  # frozen: keep batch-norm statistics as loaded
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net((x - self.mean) / self.std))
