"""PPO on a Gaussian chunk policy: the baseline of the DPPO paper (Ren et al. 2025, "Gaussian").

The same two-level picture as DPPO with a one-step "chain": each env step executes the first
`act_steps` actions of one sampled normalised chunk, whose log-probability (DPPO's Gaussian
PPO: averaged over the executed elements) is the PPO likelihood. `GaussianPPOAgent` has the
interface `sim/finetune.py` drives `DPPOAgent` by (sample_shape, n_log_probs, obs_keys,
explore, value, log_probs, prepare, update, save, load_actor, state_dict, load_state_dict,
weights_finite), so the loop, the buffer (it stores the chunk as a (1, H, A) "chain"), GAE and
the checkpoints are shared; so is the PPO update itself (`policy.rl.ppo.PPOAgentBase`), whose
samples here are env steps.

Settings: `PPOConfig` (policy.rl.dppo) where they apply - gamma, gae_lambda, clip, update_epochs,
batch_size (env steps per minibatch here), norm_adv, target_kl, max_grad_norm, vf_coef,
value_clip, bc_coef, actor/critic lrs and warmups, weight_decay, max_nonfinite,
logprob_batch; gamma_denoising, clip_base and clip_rate have no meaning here. Gaussian-only
settings are in `GaussianPPOConfig`. The non-finite guard is DPPO's (`NonFiniteError`, in
`policy.rl.ppo`).

The optional BC term (`bc_coef`, DPPO's `use_bc_loss`: the negative log-likelihood under the
fine-tuned policy of chunks the frozen pretrained policy samples) is computed in closed form,
E_{x ~ N(mu_b, s_b)}[-log N(x; mu, s)] per executed element, instead of from one draw: the
same expectation without its sampling noise.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from policy.action_repr import orthonormal_actions
from policy.gaussian_policy import REDUCES, GaussianPolicy
from policy.rl.critic import Critic, CriticConfig, observation_widths
from policy.rl.dppo import Batch, PPOConfig
from policy.rl.ppo import PPOAgentBase


@dataclass
class GaussianPPOConfig:
    """`gaussian` group of the fine-tuning config (method=gaussian)."""

    ent_coef: float = 0.0  # entropy bonus (per-element entropy of the executed actions)
    learn_std: bool = True  # train the per-dimension log std (DPPO: learn_fixed_std)
    noise_clip: float | None = 3.0  # standard-normal draws clipped to +-this (DPPO: randn_clip_value 3)
    logprob_reduce: str = "mean"  # mean (DPPO's Gaussian PPO) | sum over the executed actions' elements
    logprob_clamp: tuple[float, float] | None = None  # DPPO clamps the averaged log-prob to [-5, 2]; None: off

    def __post_init__(self) -> None:
        if self.logprob_reduce not in REDUCES:
            raise ValueError(f"logprob_reduce must be one of {REDUCES}, got '{self.logprob_reduce}'")
        if self.logprob_clamp is not None:
            self.logprob_clamp = tuple(float(c) for c in self.logprob_clamp)


class GaussianPPOAgent(PPOAgentBase):
    """The fine-tuned Gaussian actor, its critic and their optimisers (the PPO update over env
    steps: `PPOAgentBase`)."""

    def __init__(self, actor: GaussianPolicy, critic: Critic, ppo: PPOConfig, gauss: GaussianPPOConfig,
                 total_iterations: int, seed: int = 0, world_size: int = 1):
        if not isinstance(actor, GaussianPolicy):
            raise TypeError(f"GaussianPPOAgent fine-tunes a GaussianPolicy, got {type(actor).__name__} "
                            "(a diffusion checkpoint fine-tunes with method=dppo)")
        self.gauss = gauss
        actor.log_std.requires_grad_(bool(gauss.learn_std))
        base = copy.deepcopy(actor).eval().requires_grad_(False) if ppo.bc_coef > 0 else None
        super().__init__(actor, critic, ppo, total_iterations, seed, world_size, base)

    @classmethod
    def from_checkpoint(cls, path: str | Path, critic_cfg: CriticConfig, ppo_cfg: PPOConfig,
                        gauss_cfg: GaussianPPOConfig, total_iterations: int, seed: int = 0, world_size: int = 1,
                        device: str | torch.device = "cpu", lowdim_widths: Mapping[str, int] | None = None,
                        use_ema: bool = True) -> "GaussianPPOAgent":
        """The agent for a Gaussian checkpoint (`load_policy`; a CheckpointError for any other
        policy) with a fresh critic. `lowdim_widths`: the widths of the low-dim keys the envs
        produce (default: from the checkpoint's obs schema: `state`, and `parts` when it has
        part poses)."""
        from policy.checkpoint import CheckpointError, load_policy

        actor = load_policy(path, use_ema=use_ema, device=device)
        if not isinstance(actor, GaussianPolicy):
            raise CheckpointError(f"{path} holds a {type(actor).__name__}, not a Gaussian policy "
                                  "(fine-tune it with method=dppo)")
        if lowdim_widths is None:
            lowdim_widths = observation_widths(actor.obs_schema)
        widths = {k: int(v) for k, v in lowdim_widths.items()}
        critic = Critic(critic_cfg, actor.lowdim_keys, actor.cameras, actor.image_hw, actor.obs_history,
                        actor.normalizer, widths).to(device)
        return cls(actor, critic, ppo_cfg, gauss_cfg, total_iterations, seed=seed, world_size=world_size)

    # --- rollouts ------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        """What a rollout stores per env step: the sampled normalised chunk as a one-state chain."""
        return (1, self.actor.horizon, self.actor.action_dim)

    @property
    def n_log_probs(self) -> int:
        return 1

    def _log_prob(self, obs, chunks, mean=None) -> torch.Tensor:
        lp = self.actor.log_prob(obs, chunks, self.gauss.logprob_reduce, mean=mean)
        if self.gauss.logprob_clamp is not None:
            lp = lp.clamp(*self.gauss.logprob_clamp)
        return lp

    @torch.no_grad()
    def explore(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None):
        """Chunks to execute (N, Ta, A) numpy, the sampled normalised chunk (N, 1, H, A) and
        its log-prob (N, 1)."""
        x, _ = self.actor.sample(obs, generator=generator, noise_clip=self.gauss.noise_clip)
        lp = self._log_prob(obs, x)
        actions = self.actor.executed(x, obs)[:, : self.actor.act_steps]
        return orthonormal_actions(actions), x[:, None].float(), lp[:, None]

    def _log_prob_rows(self, obs, samples):
        """Log-probabilities (n, 1) of chunks (n, 1, H, A)."""
        return self._log_prob(obs, samples[:, 0])[:, None]

    # --- the PPO update ------------------------------------------------------------------
    def policy_loss(self, new_lp: torch.Tensor, old_lp: torch.Tensor,
                    adv: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate: advantages normalised over the minibatch (norm_adv), ratio
        exp(new - old), loss mean(max(-A r, -A clamp(r, 1 - clip, 1 + clip)))."""
        return self.clipped_surrogate(new_lp, old_lp, self.normalised_advantages(adv), self.ppo.clip)

    def bc_loss(self, obs, mean: torch.Tensor) -> torch.Tensor:
        """E over the frozen base policy's chunks of -log N(x; mean, std), per executed element,
        averaged (closed form): log s + log(2 pi)/2 + (s_b^2 + (mu_b - mu)^2) / (2 s^2)."""
        with torch.no_grad():
            mu_b, s_b = self.base.mean(obs), self.base.std()
        sl = slice(self.actor.cfg.exec_start, self.actor.cfg.exec_start + self.actor.act_steps)
        s = self.actor.std()
        nll = torch.log(s) + 0.5 * math.log(2 * math.pi) + (s_b ** 2 + (mu_b[:, sl] - mean[:, sl]) ** 2) / (2 * s ** 2)
        return nll.mean()

    def _n_samples(self, batch: Batch) -> int:
        return batch.chains.shape[0]  # env steps

    def _minibatch(self, batch: Batch, idx: torch.Tensor, train_actor: bool) -> dict[str, float] | None:
        p, g = self.ppo, self.gauss
        obs = {key: v[idx] for key, v in batch.obs.items()}
        actor_obs = {k: obs[k] for k in self.actor.obs_keys}
        mean = self.actor.mean(actor_obs)
        new_lp = self._log_prob(actor_obs, batch.chains[idx, 0], mean=mean)
        pg, stats = self.policy_loss(new_lp, batch.old_log_probs[idx, 0], batch.advantages[idx])
        entropy = self.actor.entropy()
        v_loss = self.value_loss(self.critic({k: obs[k] for k in self.critic.obs_keys}), batch.returns[idx],
                                 batch.values[idx])
        loss = p.vf_coef * v_loss
        bc = torch.zeros((), device=self.device)
        if train_actor:
            loss = loss + pg - g.ent_coef * entropy
            if p.bc_coef > 0:
                bc = self.bc_loss(actor_obs, mean)
                loss = loss + p.bc_coef * bc
        norms = self._step(loss, train_actor)
        if norms is None:
            return None
        return self._metrics(pg, v_loss, bc, stats, norms, entropy=float(entropy.detach()))

    def _extra_metrics(self) -> dict[str, float]:
        return {"clip": float(self.ppo.clip), "std": float(self.actor.std().detach().mean())}

    # --- persistence ---------------------------------------------------------------------
    def _config_state(self) -> dict[str, Any]:
        return {"ppo": asdict(self.ppo), "gaussian": asdict(self.gauss)}
