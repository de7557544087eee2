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

    def forward(self, obs: dict[str, torch.Tensor], state_norm: torch.Tensor) -> torch.Tensor:
        """obs['rgb/<cam>']: uint8 (B, T, H, W, 3); state_norm: (B, T, state_dim) already normalised."""
        b, t = state_norm.shape[:2]
        feats = [self.state_mlp(state_norm)]  # (B, T, S)
        for i, cam in enumerate(self.cfg.cameras):
            img = obs[f"rgb/{cam}"]
            if img.shape[1] != t:
                raise ValueError(f"rgb/{cam} has {img.shape[1]} history frames, state has {t}")
            x = img.reshape(b * t, *img.shape[2:]).permute(0, 3, 1, 2).float().div_(255.0)
            if self.training and self.cfg.augment_shift:
                x = random_shift(x, self.shift_pad)
            vit = self.vits[0 if self.cfg.share_vit else i]
            feats.append(vit(x).view(b, t, -1))
        return torch.cat(feats, dim=-1).reshape(b, -1)
