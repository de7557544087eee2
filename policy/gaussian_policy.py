"""Gaussian MLP policy over action chunks: the baseline DPPO is compared against (Ren et al. 2025).

One forward pass maps the observation history to the mean of the whole chunk (B, H, A) in the
normalised action space (tanh-bounded, so inside [-1, 1]); the standard deviation is one
learned number per action dimension, shared by every chunk index and independent of the
observation (DPPO's `Gaussian_MLP` with `learn_fixed_std`), clamped to [min_std, max_std].

It speaks the same small interface as `DiffusionPolicy` (obs_keys, obs_history, act_steps,
horizon, action_dim, `act`), uses the same action representation (`policy.action_repr`:
chunks relative to the latest EE pose, per-index statistics) and keeps its normaliser inside,
so evaluation, checkpoints (`policy.checkpoint`, dispatched on the config's
`policy_class: gaussian`) and fine-tuning (`policy.rl.gaussian_ppo`) treat it like any policy.

Choices (documented because PPO depends on them):
* **BC loss**: MSE between the mean and the normalised demo chunk over the whole horizon (as
  the diffusion policy's loss covers the whole chunk). DPPO pretrains its Gaussian baselines by
  the Gaussian NLL with a fixed std, which is this MSE up to a scale and a constant; the std is
  not trained by BC (it stays at `init_std`) and becomes a fine-tuning parameter.
* **log-probability** of a sampled chunk: Normal(mean, std) per element, taken over the
  executed actions only (chunk indices exec_start .. exec_start + act_steps - 1; the other
  indices never reach the env), **averaged** over those elements (`reduce="mean"`, DPPO's
  Gaussian PPO; the PPO clip is then a per-element ratio bound) or summed (`reduce="sum"`,
  the joint density). `sample` computes it with the same function `log_prob` uses, so a
  recomputation on the same batch equals the sampling-time value.
* **sampling**: mean + std * z with z clipped to +-`noise_clip` (DPPO: 3). The truncation's
  normaliser is the same for every mean and std, so it cancels in PPO ratios. The stored
  sample is not clamped (its log-prob stays a density); `decode` clamps to [-1, 1] before
  converting to absolute EE targets, i.e. the clamp is part of executing the action.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from data.normalizer import Normalizer
from policy.action_repr import RELATIVE, RELATIVE_KEY, REPRS, decode_chunk, encode_chunk, orthonormal_actions
from policy.denoisers import ResidualBlock
from policy.obs_encoder import ObsEncoderConfig

POLICY_CLASS = "gaussian"  # the checkpoint config's `policy_class` (policy.checkpoint.load_policy)
REDUCES = ("mean", "sum")


@dataclass
class GaussianPolicyConfig:
    """configs/pretrain_gaussian.yaml's `policy` group, field for field. Pretraining sets
    `action_dim` and `state_dim` (the summed widths of `lowdim_keys`) from the dataset."""

    policy_class: str = POLICY_CLASS  # fixed: what `load_policy` dispatches on
    name: str = "gaussian_mlp"
    action_dim: int = 10
    state_dim: int = 10
    horizon: int = 8
    act_steps: int = 4
    obs_history: int = 2
    lowdim_keys: list[str] = field(default_factory=lambda: ["state", "parts"])
    image_hw: list[int] = field(default_factory=lambda: [96, 96])  # no cameras: recorded for the schema only
    hidden: int = 512  # residual MLP, Mish (blocks of two layers, as the diffusion MLP)
    blocks: int = 3
    layer_norm: bool = False
    action_repr: str = RELATIVE  # absolute | relative (policy.action_repr)
    obs_clip: float = 5.0  # normalised low-dim observations clipped to +-this (0: off)
    init_std: float = 0.04  # initial std in normalised action units (DPPO one_leg: fixed_std 0.04)
    min_std: float = 0.01
    max_std: float = 0.2

    def __post_init__(self) -> None:
        if self.policy_class != POLICY_CLASS:
            raise ValueError(f"GaussianPolicyConfig.policy_class must be '{POLICY_CLASS}', got '{self.policy_class}'")
        if self.action_repr not in REPRS:
            raise ValueError(f"action_repr must be one of {REPRS}, got '{self.action_repr}'")
        if self.action_repr == RELATIVE and "state" not in self.lowdim_keys:
            raise ValueError("action_repr=relative needs 'state' (the EE pose) among lowdim_keys")
        if self.obs_history < 1 or self.horizon < 1:
            raise ValueError("obs_history and horizon must be >= 1")
        if not 1 <= self.act_steps <= self.exec_horizon:
            raise ValueError(f"act_steps={self.act_steps} must be in 1..{self.exec_horizon} (horizon {self.horizon} - "
                             f"obs_history {self.obs_history} + 1)")
        if not 0 < self.min_std <= self.init_std <= self.max_std:
            raise ValueError(f"need 0 < min_std <= init_std <= max_std, got {self.min_std}, {self.init_std}, "
                             f"{self.max_std}")

    @property
    def exec_start(self) -> int:
        """Index of the action for the current step in a chunk (the first obs_history - 1 are
        the ones already taken, as the diffusion policy's windows)."""
        return self.obs_history - 1

    @property
    def exec_horizon(self) -> int:
        return self.horizon - self.exec_start

    @property
    def obs(self) -> ObsEncoderConfig:
        """The observation part in the diffusion config's shape, which `policy.checkpoint`'s
        schema checks and `pretrain.dataset_schemas` read (cameras, image_hw, lowdim keys,
        state_dim)."""
        return ObsEncoderConfig(cameras=[], image_hw=list(self.image_hw), state_dim=int(self.state_dim),
                                lowdim_keys=list(self.lowdim_keys), obs_history=int(self.obs_history))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> "GaussianPolicyConfig":
        from data.typed_config import from_mapping

        return from_mapping(cls, d, where=where)


def gaussian_log_prob(mean: torch.Tensor, std: torch.Tensor, x: torch.Tensor, start: int, steps: int,
                      reduce: str = "mean") -> torch.Tensor:
    """log N(x; mean, std) per element of chunks (B, H, A), over chunk indices start ..
    start + steps - 1, averaged or summed: (B,). `std` broadcasts (A,) or (B, H, A)."""
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, got '{reduce}'")
    sl = slice(start, start + steps)
    m, xs = mean[:, sl], x[:, sl]
    s = std.expand_as(mean)[:, sl]
    lp = -((xs - m) ** 2) / (2 * s ** 2) - torch.log(s) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=(1, 2)) if reduce == "mean" else lp.sum(dim=(1, 2))


def _randn(shape: tuple[int, ...], device, generator) -> torch.Tensor:
    """Standard normal draws on the CPU generator(s) given (one, or one per row), then moved."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator]).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


class GaussianPolicy(nn.Module):
    def __init__(self, cfg: GaussianPolicyConfig, normalizer: Normalizer):
        super().__init__()
        self.cfg = cfg
        self.normalizer = normalizer
        self.action_key = RELATIVE_KEY if cfg.action_repr == RELATIVE else "action"
        for key in (*cfg.lowdim_keys, self.action_key):
            if key not in normalizer:
                raise KeyError(f"normalizer lacks statistics for '{key}'")
        h, a = cfg.horizon, cfg.action_dim
        self.inp = nn.Sequential(nn.Linear(cfg.obs_history * cfg.state_dim, cfg.hidden), nn.Mish())
        self.blocks = nn.Sequential(*[ResidualBlock(cfg.hidden, cfg.layer_norm) for _ in range(cfg.blocks)])
        self.out = nn.Linear(cfg.hidden, h * a)
        self.log_std = nn.Parameter(torch.full((a,), math.log(cfg.init_std)))

    # --- the small interface sim/ and real/ drive a policy by ------------------------------
    @property
    def lowdim_keys(self) -> tuple[str, ...]:
        return tuple(self.cfg.lowdim_keys)

    @property
    def cameras(self) -> tuple[str, ...]:
        return ()

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self.cfg.image_hw)

    @property
    def obs_keys(self) -> tuple[str, ...]:
        return self.lowdim_keys

    @property
    def obs_history(self) -> int:
        return int(self.cfg.obs_history)

    @property
    def act_steps(self) -> int:
        return int(self.cfg.act_steps)

    @property
    def horizon(self) -> int:
        return int(self.cfg.horizon)

    @property
    def action_dim(self) -> int:
        return int(self.cfg.action_dim)

    # --- the distribution ----------------------------------------------------------------------
    def features(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalised, clipped low-dim history (B, To * state_dim)."""
        low = torch.cat([self.normalizer.normalize(k, obs[k].float()) for k in self.cfg.lowdim_keys], dim=-1)
        if low.shape[1] != self.cfg.obs_history:
            raise ValueError(f"observations have {low.shape[1]} history frames, the policy reads "
                             f"{self.cfg.obs_history}")
        if self.cfg.obs_clip > 0:
            low = low.clamp(-self.cfg.obs_clip, self.cfg.obs_clip)
        return low.flatten(1)

    def mean(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The mean chunk (B, H, A) in the normalised action space, in (-1, 1)."""
        b = next(iter(obs.values())).shape[0]
        h = self.blocks(self.inp(self.features(obs)))
        return torch.tanh(self.out(h)).view(b, self.cfg.horizon, self.cfg.action_dim)

    def std(self) -> torch.Tensor:
        """Per action dimension (A,), clamped to [min_std, max_std]."""
        return self.log_std.exp().clamp(self.cfg.min_std, self.cfg.max_std)

    def entropy(self) -> torch.Tensor:
        """Mean entropy per element of the executed actions (state independent): scalar."""
        return (0.5 * math.log(2 * math.pi * math.e) + torch.log(self.std())).mean()

    def log_prob(self, obs: Mapping[str, torch.Tensor], chunk: torch.Tensor, reduce: str = "mean",
                 mean: torch.Tensor | None = None) -> torch.Tensor:
        """log-probability (B,) of normalised chunks (B, H, A) over the executed actions
        (see the module docstring); differentiable. `mean` may pass a precomputed mean."""
        mean = self.mean(obs) if mean is None else mean
        return gaussian_log_prob(mean, self.std(), chunk, self.cfg.exec_start, self.cfg.act_steps, reduce)

    def sample(self, obs: Mapping[str, torch.Tensor], generator=None, noise_clip: float | None = 3.0,
               reduce: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """A normalised chunk (B, H, A) drawn as mean + std * clip(z) and its log-prob (B,)."""
        mean = self.mean(obs)
        z = _randn(tuple(mean.shape), mean.device, generator)
        if noise_clip is not None:
            z = z.clamp(-noise_clip, noise_clip)
        x = mean + self.std() * z
        return x, self.log_prob(obs, x, reduce, mean=mean)

    # --- actions ---------------------------------------------------------------------------------
    def encode_actions(self, action: torch.Tensor, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw absolute chunk (B, H, 10) -> the normalised chunk the mean models."""
        return encode_chunk(self.normalizer, self.cfg.action_repr, action, obs)

    def decode_actions(self, x: torch.Tensor, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalised chunk (clamped to [-1, 1] here) -> raw absolute EE targets (B, H, A)."""
        x = x.clamp(-1, 1)
        return decode_chunk(self.normalizer, self.cfg.action_repr, x, obs)

    def executed(self, x: torch.Tensor, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The decoded actions from the current step on: (B, H - To + 1, A)."""
        return self.decode_actions(x, obs)[:, self.cfg.exec_start:]

    # --- training ----------------------------------------------------------------------------
    def forward(self, obs: Mapping[str, torch.Tensor], action: torch.Tensor) -> torch.Tensor:
        return self.loss(obs, action)

    def loss(self, obs: Mapping[str, torch.Tensor], action: torch.Tensor) -> torch.Tensor:
        """BC loss: MSE of the mean against the normalised demo chunk (B, H, A raw absolute)."""
        target = self.encode_actions(action.float(), obs)
        return torch.mean((self.mean(obs) - target) ** 2)

    # --- acting ------------------------------------------------------------------------------
    def to_batch(self, obs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        device = next(self.parameters()).device
        return {k: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v).to(device)
                for k, v in obs.items() if k in self.cfg.lowdim_keys}

    @torch.no_grad()
    def act(self, obs: Mapping[str, np.ndarray | torch.Tensor], generator=None, **ignored) -> np.ndarray:
        """Raw observations with history (B, To, ...) -> the mean chunk's actions from now on,
        denormalised: (B, horizon - obs_history + 1, 10); run the first `act_steps`.

        Deterministic (the mean), so `generator` and the diffusion policy's sampling options
        (`steps`, `eta`, `noise`, which evaluation passes) are accepted and ignored. Rotations are
        re-orthonormalised so every action is a valid pose.
        """
        batch = self.to_batch(obs)
        return orthonormal_actions(self.executed(self.mean(batch), batch))

