"""ViT diffusion policy: observation encoder + conditional denoiser over an action chunk.

`act(obs)` is the one API sim and real use: raw observations (uint8 images, state in the
robot base frame) in, denormalised absolute EE action chunks out. Normalisation statistics
live inside the policy (and its checkpoint), so nothing else is needed to run it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch
from torch import nn

from data.normalizer import Normalizer
from policy.action_repr import RELATIVE, RELATIVE_KEY, REPRS, decode_chunk, encode_chunk, orthonormal_actions
from policy.denoisers import MLPDenoiser, MLPDenoiserConfig, UNetDenoiser, UNetDenoiserConfig
from policy.diffusion import DiffusionConfig, NoiseSchedule
from policy.obs_encoder import ObsEncoder, ObsEncoderConfig


@dataclass
class PolicyConfig:
    """The policy's architecture; configs/policy/<name>.yaml matches it field for field (built by
    `from_dict`, which rejects unknown keys). Pretraining sets `action_dim` and `obs.state_dim`
    from the dataset."""

    name: str = ""  # the preset (configs/policy/<name>.yaml): names run directories and reports
    action_dim: int = 10
    horizon: int = 8
    act_steps: int = 8
    denoiser: str = "mlp"  # mlp | unet
    action_repr: str = "absolute"  # absolute | relative (to the latest EE pose; see policy.action_repr)
    obs_clip: float = 5.0  # normalised low-dim observations clipped to +-this (as DPPO)
    frozen_steps: int = 0  # the first this many of diffusion.ddim_steps DDIM steps run `frozen_base`, a
    # frozen copy of the pretrained weights (DPPO fine-tuning only the last K' = K - frozen_steps steps)
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
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> "PolicyConfig":
        """From `to_dict()` (a checkpoint's config) or the Hydra policy group, through the typed
        loader (`data.typed_config`): an unknown key is a KeyError naming its dotted path (after
        `where`), a key left out (older checkpoints) takes its default."""
        from data.typed_config import from_mapping

        return from_mapping(cls, d, where=where)


def standard_normal(shape: tuple[int, ...], device, generator) -> torch.Tensor:
    """Standard normal noise; `generator` may be one torch.Generator or one per sample (row),
    so each env's noise depends on its own episode only (exported policies draw theirs here too)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator]).to(device)
    return torch.randn(shape, device=device, generator=generator)


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
        self.frozen_base: DiffusionPolicy | None = None
        if cfg.frozen_steps:
            if not 0 < cfg.frozen_steps < cfg.diffusion.ddim_steps:
                raise ValueError(f"frozen_steps must be in 0..{cfg.diffusion.ddim_steps - 1}, got {cfg.frozen_steps}")
            from dataclasses import replace

            self.frozen_base = DiffusionPolicy(replace(cfg, frozen_steps=0), normalizer).requires_grad_(False)

    def freeze_early_steps(self, ddim_steps: int, ft_steps: int) -> "DiffusionPolicy":
        """Fine-tune only the last `ft_steps` of `ddim_steps` DDIM steps: the earlier ones run a
        frozen copy of the current weights from now on, kept inside this policy (and its
        checkpoints), so evaluation and deployment sample exactly the chain that was trained."""
        from dataclasses import replace

        if ft_steps >= ddim_steps:
            return self
        frozen = DiffusionPolicy(replace(self.cfg, frozen_steps=0), self.normalizer)
        frozen.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("frozen_base.")})
        frozen.to(next(self.parameters()).device).requires_grad_(False).eval()
        self.cfg = replace(self.cfg, frozen_steps=ddim_steps - ft_steps,
                           diffusion=replace(self.cfg.diffusion, ddim_steps=ddim_steps))
        self.frozen_base = frozen
        return self

    # --- training --------------------------------------------------------------------------
    def condition(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        lowdim = torch.cat([self.normalizer.normalize(k, obs[k].float()) for k in self.cfg.obs.lowdim_keys], dim=-1)
        if self.cfg.obs_clip > 0:
            lowdim = lowdim.clamp(-self.cfg.obs_clip, self.cfg.obs_clip)
        return self.encoder(obs, lowdim)

    def encode_actions(self, action: torch.Tensor, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw absolute chunk (B, H, 10) -> the normalised chunk the denoiser models."""
        return encode_chunk(self.normalizer, self.cfg.action_repr, action, obs)

    def decode_actions(self, x: torch.Tensor, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of `encode_actions`: normalised chunk -> raw absolute EE targets."""
        return decode_chunk(self.normalizer, self.cfg.action_repr, x, obs)

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

    # --- the small interface sim/ and real/ drive a policy by ------------------------------
    @property
    def lowdim_keys(self) -> tuple[str, ...]:
        return tuple(self.cfg.obs.lowdim_keys)

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.cfg.obs.cameras)

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self.cfg.obs.image_hw)

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """Observation keys `act` reads: the low-dim ones, then `rgb/<camera>`."""
        return self.lowdim_keys + tuple(f"rgb/{c}" for c in self.cameras)

    @property
    def obs_history(self) -> int:
        return int(self.cfg.obs.obs_history)

    @property
    def act_steps(self) -> int:
        return int(self.cfg.act_steps)

    @property
    def horizon(self) -> int:
        return int(self.cfg.horizon)

    @property
    def action_dim(self) -> int:
        return int(self.cfg.action_dim)

    # --- sampling ----------------------------------------------------------------------------
    def _randn(self, shape: tuple[int, ...], device, generator) -> torch.Tensor:
        return standard_normal(shape, device, generator)

    def denoising_timesteps(self, steps: int | None = None) -> list[int]:
        return self.schedule.ddim_timesteps(steps or self.cfg.diffusion.ddim_steps)

    def sample_chain(self, obs: Mapping[str, torch.Tensor], steps: int | None = None, eta: float | None = None,
                     ft_steps: int | None = None, min_std: float = 0.0, noise_clip: float | None = None,
                     generator=None, deterministic: bool = False, noise: torch.Tensor | None = None,
                     cond: torch.Tensor | None = None, base: "DiffusionPolicy | None" = None,
                     log_prob: "LogProbSpec | None" = None) -> "ChainSample":
        """DDIM-sample action chunks, keeping the denoising chain DPPO treats as a policy.

        The last `ft_steps` (K', default all) of the `steps` (K) DDIM steps are the policy's
        Gaussian steps: x_{k+1} ~ N(mean, max(sigma, min_std)) with the standard-normal draw
        clipped to +-`noise_clip`; `deterministic` takes the means (evaluation). The earlier
        K - K' steps run `base` (the frozen pretrained policy, when fine-tuning only the last
        steps; default: the policy's own `frozen_base` for its first `frozen_steps` steps, if it
        has one, else this policy), which is evaluated only there. Returns the normalised
        chain (B, K'+1, H, A) - x before the first policy step and after each one, the last
        clamped to the action range - the decoded absolute actions from now on
        (B, H - To + 1, A) and, when `log_prob` is given, each policy step's log-probability
        (B, K') as `chain_log_prob` computes it. `noise` optionally gives x_T (B, H, A).
        """
        steps = steps or self.cfg.diffusion.ddim_steps
        eta = self.cfg.diffusion.ddim_eta if eta is None else float(eta)
        ft_steps = steps if ft_steps is None else int(ft_steps)
        if not 1 <= ft_steps <= steps:
            raise ValueError(f"ft_steps must be in 1..{steps}, got {ft_steps}")
        cond = self.condition(obs) if cond is None else cond
        b = cond.shape[0]
        shape = (b, self.cfg.horizon, self.cfg.action_dim)
        if noise is not None and tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        x = self._randn(shape, cond.device, generator) if noise is None else noise
        ts = self.schedule.ddim_timesteps(steps)
        first_ft = steps - ft_steps
        if base is None and self.frozen_base is not None:
            if steps != self.cfg.diffusion.ddim_steps:
                raise ValueError(f"this policy was fine-tuned with {self.cfg.diffusion.ddim_steps} DDIM steps, the "
                                 f"first {self.cfg.frozen_steps} frozen; it samples with exactly those, not {steps}")
            base, n_base = self.frozen_base, self.cfg.frozen_steps
        else:
            n_base = first_ft if base is not None else 0
        base_cond = None
        chain, log_probs = [], []
        for i, t in enumerate(ts):
            if i == first_ft:
                chain.append(x)
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            tt = torch.full((b,), t, device=x.device, dtype=torch.long)
            policy_step = i >= first_ft
            if i >= n_base:
                out = self.denoiser(x, tt, cond)
            else:
                base_cond = base.condition(obs) if base_cond is None else base_cond
                out = base.denoiser(x, tt, base_cond)
            mean, sigma = self.schedule.ddim_step(out, x, t, t_prev, eta)
            std = sigma.clamp(min=min_std) if policy_step and min_std > 0 else sigma
            if deterministic or (eta == 0 and not (policy_step and min_std > 0)):
                x_next = mean
            else:
                z = self._randn(shape, x.device, generator)
                if noise_clip is not None:
                    z = z.clamp(-noise_clip, noise_clip)
                x_next = mean + std * z
            if i == len(ts) - 1:
                x_next = x_next.clamp(-1, 1)
            if policy_step:
                chain.append(x_next)
                if log_prob is not None:
                    log_probs.append(self.step_log_prob(mean, sigma, x_next, log_prob))
            x = x_next
        chain_t = torch.stack(chain, dim=1)
        lp = torch.stack(log_probs, dim=1) if log_prob is not None else None
        return ChainSample(chain_t, self.decode_actions(x, obs)[:, self.cfg.exec_start:], lp)

    def step_log_prob(self, mean: torch.Tensor, sigma: torch.Tensor, x_next: torch.Tensor,
                      spec: "LogProbSpec") -> torch.Tensor:
        """log N(x_next; mean, max(sigma, min_std)) per element, clamped, over the executed
        actions (span "executed") or the whole chunk ("chunk"), averaged (DPPO's default) or
        summed: (B,)."""
        std = sigma.clamp(min=spec.min_std)
        logp = torch.distributions.Normal(mean, std).log_prob(x_next).clamp(*spec.clamp)
        if spec.span == "executed":
            logp = logp[:, self.cfg.exec_start:self.cfg.exec_start + self.cfg.act_steps]
        return logp.mean(dim=(1, 2)) if spec.reduce == "mean" else logp.sum(dim=(1, 2))

    def transition_log_prob(self, obs: Mapping[str, torch.Tensor] | None, x: torch.Tensor, x_next: torch.Tensor,
                            t: torch.Tensor, t_prev: torch.Tensor, eta: float, spec: "LogProbSpec",
                            cond: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probabilities (B,) of single denoising steps x -> x_next, one (t, t_prev) pair per
        row (DPPO's minibatches mix steps of different chains); differentiable."""
        cond = self.condition(obs) if cond is None else cond
        mean, sigma = self.schedule.ddim_step(self.denoiser(x, t, cond), x, t, t_prev, eta)
        return self.step_log_prob(mean, sigma, x_next, spec)

    def policy_timesteps(self, steps: int, ft_steps: int) -> tuple[list[int], list[int]]:
        """The (t, t_prev) of each of the last `ft_steps` DDIM steps (t_prev -1: the clean sample)."""
        ts = self.schedule.ddim_timesteps(steps)[steps - ft_steps:]
        return ts, ts[1:] + [-1]

    def chain_log_prob(self, obs: Mapping[str, torch.Tensor], chain: torch.Tensor, steps: int | None = None,
                       eta: float = 1.0, min_std: float = 0.1, clamp: tuple[float, float] = (-5.0, 2.0),
                       reduce: str = "mean", cond: torch.Tensor | None = None, span: str = "executed") -> torch.Tensor:
        """Log-probabilities (B, K') of a chain's policy steps under the current weights
        (differentiable; the observation is encoded once).

        Each step is N(mean, max(sigma, min_std)) per element, clamped to `clamp`, taken over
        the executed actions only (exec_start .. exec_start + act_steps) and averaged (DPPO's
        default) or summed (`reduce="sum"`) over them; `span="chunk"` takes every element.
        """
        spec = LogProbSpec(min_std, tuple(clamp), reduce, span)
        steps = steps or self.cfg.diffusion.ddim_steps
        b, k1 = chain.shape[:2]
        ft_steps = k1 - 1
        if not 1 <= ft_steps <= steps:
            raise ValueError(f"a chain of {k1} states needs 1..{steps} policy steps")
        cond = self.condition(obs) if cond is None else cond
        ts, t_prev = self.policy_timesteps(steps, ft_steps)
        device = chain.device
        t = torch.tensor(ts, device=device).repeat(b)  # (B * K',), chain-major
        tp = torch.tensor(t_prev, device=device).repeat(b)
        x = chain[:, :-1].reshape(b * ft_steps, *chain.shape[2:])
        nxt = chain[:, 1:].reshape_as(x)
        c = cond.repeat_interleave(ft_steps, dim=0)
        return self.transition_log_prob(None, x, nxt, t, tp, eta, spec, cond=c).view(b, ft_steps)

    @torch.no_grad()
    def sample(self, obs: Mapping[str, torch.Tensor], steps: int | None = None, eta: float | None = None,
               ddpm: bool = False, generator=None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised action chunk (B, horizon, action_dim) by DDIM (or the full DDPM chain).

        `noise` is the starting sample x_T (default: drawn here); with DDIM eta 0 it fixes the result.
        """
        if not ddpm:
            return self.sample_chain(obs, steps=steps, eta=eta, ft_steps=1, generator=generator,
                                     noise=noise).chain[:, -1]
        cond = self.condition(obs)
        b = cond.shape[0]
        shape = (b, self.cfg.horizon, self.cfg.action_dim)
        x = self._randn(shape, cond.device, generator) if noise is None else noise
        for t in reversed(range(self.schedule.steps)):
            tt = torch.full((b,), t, device=x.device, dtype=torch.long)
            mean, std = self.schedule.ddpm_step(self.denoiser(x, tt, cond), x, t)
            x = mean + std * self._randn(shape, x.device, generator) if t > 0 else mean
        return x.clamp(-1, 1)

    def to_batch(self, obs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw observations (numpy or torch, (B, To, ...)) -> tensors on the policy's device."""
        device = next(self.parameters()).device
        return {k: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v).to(device)
                for k, v in obs.items() if k in self.cfg.obs.lowdim_keys or k.startswith("rgb/")}

    @torch.no_grad()
    def act(self, obs: Mapping[str, np.ndarray | torch.Tensor], steps: int | None = None, eta: float | None = None,
            generator=None, noise: torch.Tensor | None = None) -> np.ndarray:
        """Raw observations with history (B, T, ...) -> the actions to execute from now on,
        denormalised: (B, horizon - obs_history + 1, 10); run the first `act_steps` of them.

        A thin wrapper over `sample_chain` (evaluation: the chain's means when eta is 0). The
        rotation part is re-orthonormalised so every action is a valid pose.
        """
        out = self.sample_chain(self.to_batch(obs), steps=steps, eta=eta, ft_steps=1, generator=generator,
                                noise=noise)
        return orthonormal_actions(out.actions)


class ChainSample(NamedTuple):
    """`sample_chain`'s result: the normalised denoising chain (B, K'+1, H, A), the decoded
    absolute actions from the current step on (B, H - To + 1, A) and, when asked for, the
    policy steps' log-probabilities (B, K')."""

    chain: torch.Tensor
    actions: torch.Tensor
    log_prob: torch.Tensor | None = None


@dataclass(frozen=True)
class LogProbSpec:
    """How a denoising step's log-probability is taken: std floor (DPPO: 0.1, separate from
    the sampling floor), per-element clamp, mean (DPPO) or sum, over the executed actions or
    the whole chunk."""

    min_std: float = 0.1
    clamp: tuple[float, float] = (-5.0, 2.0)
    reduce: str = "mean"
    span: str = "executed"  # executed: the executed actions only (the reference) | chunk: every element

    def __post_init__(self) -> None:
        if self.reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got '{self.reduce}'")
        if self.span not in ("executed", "chunk"):
            raise ValueError(f"span must be 'executed' or 'chunk', got '{self.span}'")
