"""DPPO (Ren et al., ICLR 2025): PPO on the denoising chain of a diffusion policy.

The two-layer MDP: every env step (one executed action chunk) is produced by K DDIM steps, of
which the last K' are Gaussian policy steps with likelihoods; a PPO update treats each
(env step, denoising step) pair as a sample. The env-step advantage is shared by the chain's
steps, discounted by gamma_denoising^(K'-1-k) (the action-producing step counts fully).

What this module does that the public reference does not (see DESIGN.md's defect list): the
frozen base policy exists only where it is used (the K - K' non-fine-tuned steps, the BC
loss); K' = 1 has a finite clip (`schedules.clip_coefficients`); a non-finite loss or
gradient skips that minibatch and repeated ones stop the run (`NonFiniteError`), so no
corrupted weights are ever saved.

The PPO epochs, losses, optimiser step and guard are shared with the Gaussian baseline
(`policy.rl.ppo.PPOAgentBase`); this module says what a sample is: one (env step, denoising
step) pair of the M * K' in a rollout.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

from policy.action_repr import orthonormal_actions
from policy.diffusion_policy import DiffusionPolicy, LogProbSpec
from policy.rl.critic import Critic
from policy.rl.ppo import NonFiniteError, PPOAgentBase  # noqa: F401  (NonFiniteError: imported from here too)
from policy.rl.schedules import clip_coefficients


@dataclass
class ChainConfig:
    """How the denoising chain is sampled and scored while fine-tuning."""

    ddim_steps: int = 5  # K
    ft_steps: int = 5  # K': the last K' steps are the policy (the first K - K' run the frozen base)
    eta: float = 1.0  # DDIM eta while training (evaluation: 0)
    min_std: float = 0.04  # sampling std floor of the policy steps
    noise_clip: float = 3.0  # standard-normal draws clipped to +-this
    logprob_min_std: float = 0.1  # std floor inside the log-probabilities
    logprob_clamp: tuple[float, float] = (-5.0, 2.0)  # per-element log-prob clamp
    logprob_reduce: str = "mean"  # mean (DPPO) | sum over the elements of `logprob_span`
    # Which elements a denoising step's likelihood covers. chunk: all of x_{k+1}, the step's whole
    # action: its unexecuted entries feed the next denoising step, so leaving them out (executed)
    # lets them drift unclipped and move the executed actions' distribution through the later
    # steps. executed: the reference, where horizon = act_steps makes the two the same.
    logprob_span: str = "chunk"

    def __post_init__(self) -> None:
        if not 1 <= self.ft_steps <= self.ddim_steps:
            raise ValueError(f"ft_steps must be in 1..ddim_steps ({self.ddim_steps}), got {self.ft_steps}")
        if self.logprob_reduce not in ("mean", "sum"):
            raise ValueError(f"logprob_reduce must be 'mean' or 'sum', got '{self.logprob_reduce}'")
        if self.logprob_span not in ("chunk", "executed"):
            raise ValueError(f"logprob_span must be 'chunk' or 'executed', got '{self.logprob_span}'")
        self.logprob_clamp = tuple(float(c) for c in self.logprob_clamp)

    @property
    def spec(self) -> LogProbSpec:
        return LogProbSpec(self.logprob_min_std, tuple(self.logprob_clamp), self.logprob_reduce, self.logprob_span)


@dataclass
class PPOConfig:
    gamma: float = 0.999  # per chunk step
    gae_lambda: float = 0.95
    gamma_denoising: float = 0.9
    clip: float = 0.001  # PPO ratio clip of the action-producing denoising step
    clip_base: float | None = None  # clip of the first policy step (exponential schedule); None: constant
    clip_rate: float = 3.0
    update_epochs: int = 5
    batch_size: int = 2000  # (env step, denoising step) pairs per minibatch
    norm_adv: bool = True  # normalise advantages per minibatch
    target_kl: float | None = None  # stop the iteration's epochs when approx KL exceeds it
    max_grad_norm: float = 1.0
    vf_coef: float = 0.5
    value_clip: float | None = None  # clip V around the rollout's values by +-this (None: off)
    bc_coef: float = 0.0  # > 0: also maximise the log-prob of the base policy's chains
    actor_lr: float = 1.0e-5
    actor_min_lr: float = 1.0e-6
    actor_warmup: int = 10  # iterations of linear lr warmup (after the critic warmup)
    critic_lr: float = 1.0e-3
    critic_min_lr: float = 1.0e-3
    critic_warmup: int = 0  # first iterations train only the critic
    weight_decay: float = 0.0
    max_nonfinite: int = 5  # consecutive skipped minibatches before the run stops
    logprob_batch: int = 4096  # rows per pass when recomputing old log-probs / values


@dataclass
class Batch:
    """A rollout flattened to M chunk samples, on the training device."""

    obs: dict[str, torch.Tensor]  # (M, To, ...)
    chains: torch.Tensor  # (M, K'+1, H, A) float32
    advantages: torch.Tensor  # (M,)
    returns: torch.Tensor  # (M,)
    values: torch.Tensor  # (M,) the rollout critic's
    old_log_probs: torch.Tensor | None = None  # (M, K'); recomputed by `prepare` when None


class DPPOAgent(PPOAgentBase):
    """The fine-tuned diffusion actor, its critic and their optimisers.

    `explore` samples chunks for a rollout (eta 1, std floor, clipped noise); `update` runs the
    PPO epochs on a `Batch` (`PPOAgentBase`) over its (env step, denoising step) pairs. The
    actor stays a `DiffusionPolicy`, so evaluation and the saved checkpoint use exactly the
    fine-tuned weights through the same `act` as any checkpoint.
    """

    def __init__(self, actor: DiffusionPolicy, critic: Critic, chain: ChainConfig, ppo: PPOConfig,
                 total_iterations: int, seed: int = 0, world_size: int = 1, freeze_image_encoders: bool = False):
        """freeze_image_encoders: keep the camera encoders' weights fixed. A pixel update then
        spends its time in the denoiser, not the ViTs: each observation's image features are
        computed once, while sampling, and stored in the rollout in place of the images."""
        self.chain = chain
        if freeze_image_encoders and not actor.cameras:
            raise ValueError("freeze_image_encoders needs a policy with cameras; this one reads "
                             f"{list(actor.obs_keys)}")
        self.frozen_cameras = bool(freeze_image_encoders)
        if self.frozen_cameras:
            actor.encoder.freeze_cameras()  # before the optimiser is built from the trainable parameters
        # the frozen base exists only where it is used: the K - K' early steps (kept inside the
        # actor, so its checkpoints sample the same chain) and the optional BC loss
        base: DiffusionPolicy | None = None
        if chain.ft_steps < chain.ddim_steps:
            if actor.frozen_base is None:
                actor.freeze_early_steps(chain.ddim_steps, chain.ft_steps)
            elif actor.cfg.frozen_steps != chain.ddim_steps - chain.ft_steps:
                raise ValueError(f"the actor already freezes {actor.cfg.frozen_steps} steps; chain.ft_steps "
                                 f"{chain.ft_steps} of {chain.ddim_steps} would freeze another number")
            base = actor.frozen_base
        elif ppo.bc_coef > 0:
            base = copy.deepcopy(actor).eval().requires_grad_(False)
        super().__init__(actor, critic, ppo, total_iterations, seed, world_size, base)
        self.clips = clip_coefficients(chain.ft_steps, ppo.clip, ppo.clip_base, ppo.clip_rate)
        ts, tps = actor.policy_timesteps(chain.ddim_steps, chain.ft_steps)
        self.ts = torch.tensor(ts, device=self.device)
        self.tps = torch.tensor(tps, device=self.device)
        k = chain.ft_steps
        self.denoise_discount = torch.tensor([ppo.gamma_denoising ** (k - 1 - i) for i in range(k)],
                                             device=self.device)

    # --- rollouts ------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        """What a rollout stores per env step to recompute log-probs: the chain (K'+1, H, A)."""
        return (self.chain.ft_steps + 1, self.actor.horizon, self.actor.action_dim)

    @property
    def n_log_probs(self) -> int:
        return self.chain.ft_steps

    @property
    def actor_input_keys(self) -> tuple[str, ...]:
        if not self.frozen_cameras:
            return tuple(self.actor.obs_keys)
        return self.actor.lowdim_keys + tuple(f"feat/{c}" for c in self.actor.cameras)

    @torch.no_grad()
    def input_features(self, obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """{feat/<camera>: (N, To, D) float32} of the frozen encoders, unaugmented (the images'
        features then equal what evaluation and deployment compute); {} when they train."""
        if not self.frozen_cameras:
            return {}
        enc, out = self.actor.encoder, {}
        for i, cam in enumerate(self.actor.cameras):
            x = torch.as_tensor(obs[f"rgb/{cam}"]).to(self.device)
            n, t = x.shape[:2]
            out[f"feat/{cam}"] = enc.encode_camera(i, x.reshape(n * t, *x.shape[2:]), augment=False).reshape(n, t, -1).float()
        return out

    def feature_specs(self, obs_history: int) -> dict[str, Any]:
        from policy.rl.buffer import ObsSpec

        if not self.frozen_cameras:
            return {}
        dim = self.actor.encoder.cfg.vit.out_dim
        return {f"feat/{c}": ObsSpec((int(obs_history), dim), torch.float32) for c in self.actor.cameras}

    @torch.no_grad()
    def explore(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None):
        """Chunks to execute (N, Ta, A) numpy, the chain (N, K'+1, H, A) and its log-probs (N, K')."""
        c = self.chain
        s = self.actor.sample_chain(obs, steps=c.ddim_steps, eta=c.eta, ft_steps=c.ft_steps, min_std=c.min_std,
                                    noise_clip=c.noise_clip, generator=generator,
                                    log_prob=c.spec)
        return orthonormal_actions(s.actions[:, : self.actor.act_steps]), s.chain.float(), s.log_prob

    def _log_prob_rows(self, obs, chains):
        """Log-probabilities (n, K') of chains (n, K'+1, H, A)."""
        c = self.chain
        return self.actor.chain_log_prob(obs, chains, steps=c.ddim_steps, eta=c.eta, min_std=c.logprob_min_std,
                                         clamp=c.logprob_clamp, reduce=c.logprob_reduce, span=c.logprob_span)

    # --- the PPO update ------------------------------------------------------------------
    def policy_loss(self, new_lp: torch.Tensor, old_lp: torch.Tensor, adv: torch.Tensor,
                    k: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate over (env step, denoising step k) pairs: advantages normalised over
        the minibatch, then discounted by gamma_denoising^(K'-1-k); per-k clip coefficients."""
        adv = self.normalised_advantages(adv) * self.denoise_discount[k]
        clip = torch.tensor(self.clips, device=new_lp.device, dtype=torch.promote_types(new_lp.dtype, old_lp.dtype))
        return self.clipped_surrogate(new_lp, old_lp, adv, clip[k])

    def _n_samples(self, batch: Batch) -> int:
        return batch.chains.shape[0] * self.chain.ft_steps  # (env step, denoising step) pairs

    def _minibatch(self, batch: Batch, idx, train_actor: bool) -> dict[str, float] | None:
        p, c = self.ppo, self.chain
        s, k = idx // c.ft_steps, idx % c.ft_steps  # env step, denoising step
        # each env step appears up to K' times in a minibatch: encode its observation once
        us, inverse = torch.unique(s, return_inverse=True)
        obs_u = {key: v[us] for key, v in batch.obs.items()}
        cond_u = self.actor.condition(obs_u)
        cond = cond_u[inverse]
        x, x_next = batch.chains[s, k], batch.chains[s, k + 1]
        new_lp = self.actor.transition_log_prob(None, x, x_next, self.ts[k], self.tps[k], c.eta, c.spec, cond=cond)
        pg, stats = self.policy_loss(new_lp, batch.old_log_probs[s, k], batch.advantages[s], k)
        # the critic once per distinct env step of the minibatch
        v_loss = self.value_loss(self.critic(obs_u), batch.returns[us], batch.values[us])
        loss = p.vf_coef * v_loss
        bc = torch.zeros((), device=self.device)
        if train_actor:
            loss = loss + pg
            if p.bc_coef > 0:
                bc = self._bc_loss(obs_u, cond_u)  # once per distinct env step, as the critic
                loss = loss + p.bc_coef * bc
        norms = self._step(loss, train_actor)
        if norms is None:
            return None
        return self._metrics(pg, v_loss, bc, stats, norms)

    def _extra_metrics(self) -> dict[str, float]:
        return {"clip": self.clips[-1]}

    def _bc_loss(self, obs, cond) -> torch.Tensor:
        """-log-prob under the fine-tuned actor of chains the frozen base samples (Ren et al.'s
        optional BC regulariser), averaged over the policy steps."""
        c = self.chain
        with torch.no_grad():
            base_chain = self.base.sample_chain(obs, steps=c.ddim_steps, eta=c.eta, ft_steps=c.ft_steps,
                                                min_std=c.min_std, noise_clip=c.noise_clip).chain
        lp = self.actor.chain_log_prob(obs, base_chain, steps=c.ddim_steps, eta=c.eta, min_std=c.logprob_min_std,
                                       clamp=c.logprob_clamp, reduce=c.logprob_reduce, cond=cond,
                                       span=c.logprob_span)
        return -lp.mean()

    # --- persistence ---------------------------------------------------------------------
    def _config_state(self) -> dict[str, Any]:
        return {"chain": asdict(self.chain), "ppo": asdict(self.ppo)}
