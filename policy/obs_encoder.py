"""Observation encoder: camera images (ViT, shared or per camera) + normalised state -> one vector.

Images arrive uint8 (B, T, H, W, 3) as stored in datasets and produced by envs; conversion,
augmentation (random shift, training only) and the ViT run here, so every caller (pretraining,
DPPO, the real-time controller) feeds raw observations.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from policy.vit import ViTConfig, ViTEncoder, random_shift, shift_pad_for


@dataclass
class ObsEncoderConfig:
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_hw: list[int] = field(default_factory=lambda: [96, 96])
    state_dim: int = 10  # total width of the low-dim keys below, concatenated
    lowdim_keys: list[str] = field(default_factory=lambda: ["state"])  # + "parts" for privileged-state policies
    obs_history: int = 1
    share_vit: bool = False
    vit: ViTConfig = field(default_factory=ViTConfig)
    state_hidden: int = 64
    augment_shift: bool = True
    backbone: str = "vit"  # vit: ours, from scratch | timm: a timm model (policy/backbones.py)
    timm_model: str = "resnet18"
    timm_weights: str | None = None  # local file read once before training; never downloaded
    freeze_backbone: bool = False

    def __post_init__(self) -> None:
        if self.backbone not in ("vit", "timm"):
            raise ValueError(f"backbone must be 'vit' or 'timm', got '{self.backbone}'")

    @property
    def out_dim(self) -> int:
        return self.obs_history * (len(self.cameras) * self.vit.out_dim + self.state_hidden)


class ObsEncoder(nn.Module):
    def __init__(self, cfg: ObsEncoderConfig):
        super().__init__()
        self.cfg = cfg
        n_vit = 1 if cfg.share_vit else len(cfg.cameras)
        self.vits = nn.ModuleList(self._image_encoder() for _ in range(n_vit)) if cfg.cameras else nn.ModuleList()
        self.state_mlp = nn.Sequential(nn.Linear(cfg.state_dim, cfg.state_hidden), nn.Mish(),
                                       nn.Linear(cfg.state_hidden, cfg.state_hidden))
        self.shift_pad = shift_pad_for(tuple(cfg.image_hw))

    def _image_encoder(self) -> nn.Module:
        if self.cfg.backbone == "timm":
            from policy.backbones import TimmEncoder

            return TimmEncoder(self.cfg.timm_model, self.cfg.vit.out_dim, freeze=self.cfg.freeze_backbone)
        return ViTEncoder(self.cfg.vit)

    def load_pretrained_backbones(self) -> bool:
        """Read `timm_weights` into every camera's backbone (before training; a checkpoint
        already holds them afterwards). Returns whether anything was loaded."""
        if self.cfg.backbone != "timm" or not self.cfg.timm_weights or not self.cfg.cameras:
            return False
        for enc in self.vits:
            enc.load_weights(self.cfg.timm_weights)
        return True

    @property
    def out_dim(self) -> int:
        return self.cfg.out_dim

    def encode_camera(self, index: int, images: torch.Tensor, augment: bool | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 images (N, H, W, 3) of camera `index` -> features (N, out_dim).

        `augment` (default: in training mode, if configured) applies the random shift. Called per
        batch by `forward`, and once per dataset frame to cache features of frozen encoders.
        """
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        if (self.training and self.cfg.augment_shift) if augment is None else augment:
            x = random_shift(x, self.shift_pad, generator)
        return self.vits[0 if self.cfg.share_vit else index](x)

    def forward(self, obs: dict[str, torch.Tensor], state_norm: torch.Tensor) -> torch.Tensor:
        """obs['rgb/<cam>']: uint8 (B, T, H, W, 3), or obs['feat/<cam>']: (B, T, out_dim) features
        precomputed by `encode_camera` (frozen encoders); state_norm: (B, T, state_dim) normalised."""
        b, t = state_norm.shape[:2]
        feats = [self.state_mlp(state_norm)]  # (B, T, S)
        for i, cam in enumerate(self.cfg.cameras):
            cached = obs.get(f"feat/{cam}")
            x = cached if cached is not None else obs[f"rgb/{cam}"]
            if x.shape[1] != t:
                raise ValueError(f"{'feat' if cached is not None else 'rgb'}/{cam} has {x.shape[1]} history frames, "
                                 f"state has {t}")
            if cached is None:
                x = self.encode_camera(i, x.reshape(b * t, *x.shape[2:]))
            feats.append(x.reshape(b, t, -1).to(feats[0].dtype))
        return torch.cat(feats, dim=-1).reshape(b, -1)

    def freeze_cameras(self) -> None:
        """Fix the image encoders' weights (trained elsewhere): their features can then be
        computed once per frame instead of every step."""
        self.vits.requires_grad_(False)
