"""ViT diffusion policy: observation encoder + conditional denoiser over an action chunk.

`act(obs)` is the one API sim and real use: raw observations (uint8 images, state in the
robot base frame) in, denormalised absolute EE action chunks out. Normalisation statistics
live inside the policy (and its checkpoint), so nothing else is needed to run it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from data.normalizer import Normalizer
from data.rotation import rot6d_to_matrix, matrix_to_rot6d
from policy.action_repr import RELATIVE, RELATIVE_KEY, REPRS, to_absolute, to_relative
from policy.denoisers import MLPDenoiser, MLPDenoiserConfig, UNetDenoiser, UNetDenoiserConfig
from policy.diffusion import DiffusionConfig, NoiseSchedule
from policy.obs_encoder import ObsEncoder, ObsEncoderConfig


@dataclass
class PolicyConfig:
    action_dim: int = 10
    horizon: int = 8
    act_steps: int = 8
    denoiser: str = "mlp"  # mlp | unet
    action_repr: str = "absolute"  # absolute | relative (to the latest EE pose; see policy.action_repr)
    obs_clip: float = 5.0  # normalised low-dim observations clipped to +-this (as DPPO)
    mlp: MLPDenoiserConfig = field(default_factory=MLPDenoiserConfig)
    unet: UNetDenoiserConfig = field(default_factory=UNetDenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    obs: ObsEncoderConfig = field(default_factory=ObsEncoderConfig)

    def __post_init__(self) -> None:
        if self.action_repr not in REPRS:
            raise ValueError(f"action_repr must be one of {REPRS}, got '{self.action_repr}'")
        if self.action_repr == RELATIVE and "state" not in self.obs.lowdim_keys:
            raise ValueError("action_repr=relative needs 'state' (the EE pose) among obs.lowdim_keys")
        if self.act_steps > self.exec_horizon:
            raise ValueError(f"act_steps={self.act_steps} exceeds the {self.exec_horizon} future actions of a chunk "
                             f"(horizon {self.horizon} - obs_history {self.obs.obs_history} + 1)")

    @property
    def exec_start(self) -> int:
        """Index of the action for the current step in a predicted chunk.

        Training windows align the chunk with the observation history (the first
        `obs_history - 1` actions are the ones already taken, as in diffusion_policy), so the
        action to execute now is at `obs_history - 1`.
        """
        return self.obs.obs_history - 1

    @property
    def exec_horizon(self) -> int:
        return self.horizon - self.exec_start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PolicyConfig":
        from policy.vit import ViTConfig

        d = dict(d)
        obs = dict(d.pop("obs"))
        obs["vit"] = ViTConfig(**obs["vit"])
        return cls(obs=ObsEncoderConfig(**obs), mlp=MLPDenoiserConfig(**d.pop("mlp")),
                   unet=UNetDenoiserConfig(**d.pop("unet")), diffusion=DiffusionConfig(**d.pop("diffusion")), **d)


class DiffusionPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig, normalizer: Normalizer):
        super().__init__()
        self.cfg = cfg
        self.normalizer = normalizer
        self.action_key = RELATIVE_KEY if cfg.action_repr == RELATIVE else "action"
        for key in (*cfg.obs.lowdim_keys, self.action_key):
            if key not in normalizer:
                raise KeyError(f"normalizer lacks statistics for '{key}'")
        self.encoder = ObsEncoder(cfg.obs)
        cond = self.encoder.out_dim
        if cfg.denoiser == "mlp":
            self.denoiser = MLPDenoiser(cfg.action_dim, cfg.horizon, cond, cfg.mlp)
        elif cfg.denoiser == "unet":
            self.denoiser = UNetDenoiser(cfg.action_dim, cfg.horizon, cond, cfg.unet)
        else:
            raise ValueError(f"denoiser must be 'mlp' or 'unet', got '{cfg.denoiser}'")
        self.schedule = NoiseSchedule(cfg.diffusion)

    # --- training --------------------------------------------------------------------------
    def condition(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        lowdim = torch.cat([self.normalizer.normalize(k, obs[k].float()) for k in self.cfg.obs.lowdim_keys], dim=-1)
        if self.cfg.obs_clip > 0:
            lowdim = lowdim.clamp(-self.cfg.obs_clip, self.cfg.obs_clip)
        return self.encoder(obs, lowdim)

    def encode_actions(self, action: torch.Tensor, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw absolute chunk (B, H, 10) -> the normalised chunk the denoiser models."""
        if self.cfg.action_repr == RELATIVE:
            rel = to_relative(action, obs["state"][:, -1].float())
            return self.normalizer.normalize(RELATIVE_KEY, rel.flatten(1)).view_as(rel)
        return self.normalizer.normalize("action", action)

    def decode_actions(self, x: torch.Tensor, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of `encode_actions`: normalised chunk -> raw absolute EE targets."""
        if self.cfg.action_repr == RELATIVE:
            rel = self.normalizer.unnormalize(RELATIVE_KEY, x.flatten(1)).view_as(x)
            return to_absolute(rel, obs["state"][:, -1].float())
        return self.normalizer.unnormalize("action", x)

    def forward(self, obs: Mapping[str, torch.Tensor], action: torch.Tensor) -> torch.Tensor:
        """The training loss: calling the module (not `.loss`) lets DDP synchronise gradients."""
        return self.loss(obs, action)

    def loss(self, obs: Mapping[str, torch.Tensor], action: torch.Tensor) -> torch.Tensor:
        """DDPM loss on a batch: obs values (B, T, ...), action (B, horizon, action_dim) raw."""
        x0 = self.encode_actions(action.float(), obs)
        cond = self.condition(obs)
        b = x0.shape[0]
        t = torch.randint(0, self.schedule.steps, (b,), device=x0.device)
        noise = torch.randn_like(x0)
        out = self.denoiser(self.schedule.add_noise(x0, noise, t), t, cond)
        target = noise if self.cfg.diffusion.predict == "epsilon" else x0
        return torch.mean((out - target) ** 2)

    # --- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, obs: Mapping[str, torch.Tensor], steps: int | None = None, eta: float | None = None,
               ddpm: bool = False, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised action chunk (B, horizon, action_dim) by DDIM (or full DDPM).

        `noise` is the starting sample x_T (default: drawn here); with DDIM eta 0 it fixes the result.
        """
        cond = self.condition(obs)
        b = cond.shape[0]
        shape = (b, self.cfg.horizon, self.cfg.action_dim)
        if noise is not None and tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        x = torch.randn(shape, device=cond.device, generator=generator) if noise is None else noise
        if ddpm:
            for t in reversed(range(self.schedule.steps)):
                tt = torch.full((b,), t, device=x.device, dtype=torch.long)
                mean, std = self.schedule.ddpm_step(self.denoiser(x, tt, cond), x, t)
                x = mean + std * torch.randn(shape, device=x.device, generator=generator) if t > 0 else mean
            return x.clamp(-1, 1)
        steps = steps or self.cfg.diffusion.ddim_steps
        eta = self.cfg.diffusion.ddim_eta if eta is None else eta
        ts = self.schedule.ddim_timesteps(steps)
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            tt = torch.full((b,), t, device=x.device, dtype=torch.long)
            mean, std = self.schedule.ddim_step(self.denoiser(x, tt, cond), x, t, t_prev, eta)
            x = mean + std * torch.randn(shape, device=x.device, generator=generator) if eta > 0 else mean
        return x.clamp(-1, 1)

    @torch.no_grad()
    def act(self, obs: Mapping[str, np.ndarray | torch.Tensor], **sample_kw) -> np.ndarray:
        """Raw observations with history (B, T, ...) -> the actions to execute from now on,
        denormalised: (B, horizon - obs_history + 1, 10); run the first `act_steps` of them.

        The rotation part is re-orthonormalised so every action is a valid pose.
        """
        device = next(self.parameters()).device
        batch = {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in obs.items()
                 if k in self.cfg.obs.lowdim_keys or k.startswith("rgb/")}
        x = self.sample(batch, **sample_kw)
        x = self.decode_actions(x, batch)[:, self.cfg.exec_start:]  # drop past steps of the history window
        actions = x.cpu().numpy().astype(np.float32)
        if self.cfg.action_dim == 10:
            actions[..., 3:9] = matrix_to_rot6d(rot6d_to_matrix(actions[..., 3:9])).astype(np.float32)
        if not np.all(np.isfinite(actions)):
            raise FloatingPointError("policy produced NaN/Inf actions")
        return actions


class ObsHistory:
    """Keeps the last `n` observations of each env, padding a fresh episode with its first obs."""

    def __init__(self, n: int, keys: list[str]):
        self.n, self.keys = n, keys
        self.buffers: list[deque] | None = None

    def reset(self, obs: Mapping[str, np.ndarray], envs: np.ndarray | None = None) -> None:
        b = len(obs[self.keys[0]])
        if self.buffers is None or len(self.buffers) != b:
            self.buffers = [deque(maxlen=self.n) for _ in range(b)]
            envs = np.arange(b)
        for i in (np.arange(b) if envs is None else envs):
            self.buffers[i].clear()
            for _ in range(self.n):
                self.buffers[i].append({k: np.asarray(obs[k][i]) for k in self.keys})

    def add(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Append the newest observation of every env; returns the stacked history (B, n, ...)."""
        if self.buffers is None:
            self.reset(obs)
        else:
            for i, buf in enumerate(self.buffers):
                buf.append({k: np.asarray(obs[k][i]) for k in self.keys})
        return self.stacked()

    def stacked(self) -> dict[str, np.ndarray]:
        return {k: np.stack([np.stack([o[k] for o in buf]) for buf in self.buffers]) for k in self.keys}
