"""Value functions for PPO over action chunks: V(observation history) -> scalar.

Three inputs (config `critic.input`):
* `state`: the actor's own low-dim keys (a state actor: `state` and `parts`);
* `privileged`: `state` + `parts`, the ground-truth part poses only a simulator has; the
  default for pixel actors in sim (an asymmetric actor-critic: the critic is thrown away at
  deployment, so it may read what the robot cannot see);
* `pixel`: its own ViT over the actor's cameras (+ `state`), for a critic that sees what the
  actor sees.
Low-dim inputs are normalised with the actor's statistics where it has them; keys the actor's
checkpoint has none for (e.g. `parts` of a pixel checkpoint) are fitted min-max on the first
rollout and then kept fixed (saved with the critic), so targets do not drift with the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import nn

from data.normalizer import KeyNormalizer, KeyStats, Normalizer
from policy.obs_encoder import ObsEncoder, ObsEncoderConfig
from policy.vit import ViTConfig

INPUTS = ("auto", "state", "privileged", "pixel")


@dataclass
class CriticConfig:
    input: str = "auto"  # auto: `state` for state actors, `privileged` for pixel actors
    hidden: int = 512  # residual MLP, Mish (DPPO's furniture critic: 512 x 3)
    blocks: int = 3
    history: int | None = None  # observations read (latest ones); None: the actor's history
    obs_clip: float = 5.0
    vit: ViTConfig = field(default_factory=ViTConfig)  # input=pixel only
    state_hidden: int = 64  # input=pixel only: the state branch of its encoder

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"critic.input must be one of {INPUTS}, got '{self.input}'")


class _Residual(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.Mish(), nn.Linear(dim, dim), nn.Mish())

    def forward(self, x):
        return x + self.net(x)


def observation_widths(schema) -> dict[str, int]:
    """Widths of the low-dim keys a simulator produces for a policy with this ObsSchema: its
    `state`, and `parts` (the privileged part poses a privileged critic reads, present in the
    envs even when the actor does not read them)."""
    from policy.checkpoint import PART_DIM

    return {"state": schema.state_dim, "parts": PART_DIM * schema.n_parts}


def resolve_input(cfg: CriticConfig, actor_cameras: tuple[str, ...]) -> str:
    if cfg.input != "auto":
        return cfg.input
    return "privileged" if actor_cameras else "state"


class Critic(nn.Module):
    def __init__(self, cfg: CriticConfig, actor_lowdim: tuple[str, ...], actor_cameras: tuple[str, ...],
                 image_hw: tuple[int, int], obs_history: int, normalizer: Normalizer,
                 lowdim_widths: Mapping[str, int]):
        super().__init__()
        self.cfg = cfg
        self.kind = resolve_input(cfg, actor_cameras)
        self.history = int(cfg.history or obs_history)
        if not 1 <= self.history <= obs_history:
            raise ValueError(f"critic.history must be in 1..{obs_history} (the actor's history)")
        if self.kind == "state":
            self.lowdim_keys = tuple(actor_lowdim)
        elif self.kind == "privileged":
            self.lowdim_keys = ("state", "parts")
        else:
            self.lowdim_keys = ("state",)
        self.cameras = tuple(actor_cameras) if self.kind == "pixel" else ()
        if self.kind == "pixel" and not self.cameras:
            raise ValueError("critic.input=pixel needs an actor with cameras")
        missing = [k for k in self.lowdim_keys if k not in lowdim_widths]
        if missing:
            raise ValueError(f"critic.input={self.kind} reads {missing}, which the observations lack")
        self.widths = {k: int(lowdim_widths[k]) for k in self.lowdim_keys}
        # the actor's statistics where it has them; the rest fitted on the first rollout
        self.normalizer = Normalizer({k: normalizer.keys[k] for k in self.lowdim_keys if k in normalizer})
        lowdim = sum(self.widths.values())
        if self.kind == "pixel":
            enc_cfg = ObsEncoderConfig(cameras=list(self.cameras), image_hw=list(image_hw), state_dim=lowdim,
                                       lowdim_keys=list(self.lowdim_keys), obs_history=self.history,
                                       vit=cfg.vit, state_hidden=cfg.state_hidden)
            self.encoder = ObsEncoder(enc_cfg)
            in_dim = self.encoder.out_dim
        else:
            self.encoder = None
            in_dim = lowdim * self.history
        self.inp = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.Mish())
        self.blocks = nn.Sequential(*[_Residual(cfg.hidden) for _ in range(cfg.blocks)])
        self.out = nn.Linear(cfg.hidden, 1)

    @property
    def obs_keys(self) -> tuple[str, ...]:
        return self.lowdim_keys + tuple(f"rgb/{c}" for c in self.cameras)

    @property
    def needs_fit(self) -> list[str]:
        return [k for k in self.lowdim_keys if k not in self.normalizer]

    def fit_missing(self, obs: Mapping[str, torch.Tensor]) -> list[str]:
        """Min-max statistics for the inputs the actor has none for, from rollout observations."""
        fitted = []
        for k in self.needs_fit:
            s = KeyStats()
            s.update(obs[k].reshape(-1, self.widths[k]).double().cpu().numpy().astype(np.float64))
            self.normalizer.keys[k] = KeyNormalizer.from_stats(s, "minmax")
            fitted.append(k)
        self.normalizer._torch_cache.clear()
        return fitted

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs values (B, To, ...) -> V (B,)."""
        h = self.history
        low = torch.cat([self.normalizer.normalize(k, obs[k][:, -h:].float()) for k in self.lowdim_keys], dim=-1)
        if self.cfg.obs_clip > 0:
            low = low.clamp(-self.cfg.obs_clip, self.cfg.obs_clip)
        if self.encoder is not None:
            x = self.encoder({f"rgb/{c}": obs[f"rgb/{c}"][:, -h:] for c in self.cameras}, low)
        else:
            x = low.flatten(1)
        return self.out(self.blocks(self.inp(x))).squeeze(-1)

    def extra_state(self) -> dict:
        """What `state_dict` does not hold: the fitted input statistics."""
        return {"normalizer": self.normalizer.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.normalizer = Normalizer.from_state_dict(state["normalizer"])
