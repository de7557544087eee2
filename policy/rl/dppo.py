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
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from data.rotation import matrix_to_rot6d, rot6d_to_matrix
from policy.diffusion_policy import DiffusionPolicy, LogProbSpec
from policy.rl.critic import Critic
from policy.rl.schedules import clip_coefficients, warmup_cosine

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """Losses or gradients were NaN/Inf in too many consecutive minibatches."""


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


def orthonormal_actions(actions: torch.Tensor) -> np.ndarray:
    """Decoded chunk -> float32 numpy with every rotation re-orthonormalised (as `act`)."""
    out = actions.detach().cpu().numpy().astype(np.float32)
    if out.shape[-1] == 10:
        out[..., 3:9] = matrix_to_rot6d(rot6d_to_matrix(out[..., 3:9])).astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("the policy produced NaN/Inf actions")
    return out


class DPPOAgent:
    """The fine-tuned diffusion actor, its critic and their optimisers.

    `explore` samples chunks for a rollout (eta 1, std floor, clipped noise); `update` runs the
    PPO epochs on a `Batch`. The actor stays a `DiffusionPolicy`, so evaluation and the saved
    checkpoint use exactly the fine-tuned weights through the same `act` as any checkpoint.
    """

    def __init__(self, actor: DiffusionPolicy, critic: Critic, chain: ChainConfig, ppo: PPOConfig,
                 total_iterations: int, seed: int = 0, world_size: int = 1):
        self.actor, self.critic, self.chain, self.ppo = actor, critic, chain, ppo
        self.world_size = int(world_size)  # > 1: torch.distributed is initialised; gradients are averaged
        self.total_iterations = int(total_iterations)
        self.device = next(actor.parameters()).device
        # the frozen base exists only where it is used: the K - K' early steps (kept inside the
        # actor, so its checkpoints sample the same chain) and the optional BC loss
        self.base: DiffusionPolicy | None = None
        if chain.ft_steps < chain.ddim_steps:
            if actor.frozen_base is None:
                actor.freeze_early_steps(chain.ddim_steps, chain.ft_steps)
            elif actor.cfg.frozen_steps != chain.ddim_steps - chain.ft_steps:
                raise ValueError(f"the actor already freezes {actor.cfg.frozen_steps} steps; chain.ft_steps "
                                 f"{chain.ft_steps} of {chain.ddim_steps} would freeze another number")
            self.base = actor.frozen_base
        elif ppo.bc_coef > 0:
            self.base = copy.deepcopy(actor).eval().requires_grad_(False)
        self.actor.eval()  # no augmentation/dropout: sampling-time and update-time log-probs agree
        self.actor_params = [p for p in self.actor.parameters() if p.requires_grad]
        self.actor_opt = torch.optim.AdamW(self.actor_params, lr=ppo.actor_lr, weight_decay=ppo.weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=ppo.critic_lr, weight_decay=ppo.weight_decay)
        self.clips = clip_coefficients(chain.ft_steps, ppo.clip, ppo.clip_base, ppo.clip_rate)
        ts, tps = actor.policy_timesteps(chain.ddim_steps, chain.ft_steps)
        self.ts = torch.tensor(ts, device=self.device)
        self.tps = torch.tensor(tps, device=self.device)
        k = chain.ft_steps
        self.denoise_discount = torch.tensor([ppo.gamma_denoising ** (k - 1 - i) for i in range(k)],
                                             device=self.device)
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.nonfinite_streak = 0

    # --- rollouts ------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        """What a rollout stores per env step to recompute log-probs: the chain (K'+1, H, A)."""
        return (self.chain.ft_steps + 1, self.actor.horizon, self.actor.action_dim)

    @property
    def n_log_probs(self) -> int:
        return self.chain.ft_steps

    @property
    def obs_keys(self) -> tuple[str, ...]:
        keys = list(self.actor.obs_keys)
        keys += [k for k in self.critic.obs_keys if k not in keys]
        return tuple(keys)

    @torch.no_grad()
    def explore(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None):
        """Chunks to execute (N, Ta, A) numpy, the chain (N, K'+1, H, A) and its log-probs (N, K')."""
        c = self.chain
        s = self.actor.sample_chain(obs, steps=c.ddim_steps, eta=c.eta, ft_steps=c.ft_steps, min_std=c.min_std,
                                    noise_clip=c.noise_clip, generator=generator,
                                    log_prob=c.spec)
        return orthonormal_actions(s.actions[:, : self.actor.act_steps]), s.chain.float(), s.log_prob

    @torch.no_grad()
    def value(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.critic(obs).float()

    @torch.no_grad()
    def log_probs(self, obs: Mapping[str, torch.Tensor], chains: torch.Tensor) -> torch.Tensor:
        """Old log-probabilities (M, K') of a rollout's chains, recomputed in batches."""
        out = []
        for i in range(0, chains.shape[0], self.ppo.logprob_batch):
            sl = slice(i, i + self.ppo.logprob_batch)
            out.append(self._chain_log_prob({k: v[sl] for k, v in obs.items()}, chains[sl]))
        return torch.cat(out)

    def _chain_log_prob(self, obs, chains):
        c = self.chain
        return self.actor.chain_log_prob(obs, chains, steps=c.ddim_steps, eta=c.eta, min_std=c.logprob_min_std,
                                         clamp=c.logprob_clamp, reduce=c.logprob_reduce, span=c.logprob_span)

    # --- the PPO update ------------------------------------------------------------------
    def set_learning_rates(self, iteration: int) -> tuple[float, float]:
        p = self.ppo
        actor_it = iteration - p.critic_warmup
        actor_total = self.total_iterations - p.critic_warmup
        a_lr = warmup_cosine(max(actor_it, 0), p.actor_lr, p.actor_min_lr, p.actor_warmup, actor_total)
        c_lr = warmup_cosine(iteration, p.critic_lr, p.critic_min_lr, 0, self.total_iterations)
        for g in self.actor_opt.param_groups:
            g["lr"] = a_lr
        for g in self.critic_opt.param_groups:
            g["lr"] = c_lr
        return a_lr, c_lr

    def policy_loss(self, new_lp: torch.Tensor, old_lp: torch.Tensor, adv: torch.Tensor,
                    k: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate over (env step, denoising step k) pairs: advantages normalised over
        the minibatch, then discounted by gamma_denoising^(K'-1-k); per-k clip coefficients."""
        if self.ppo.norm_adv and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        adv = adv * self.denoise_discount[k]
        log_ratio = new_lp - old_lp
        ratio = log_ratio.exp()
        clip = torch.tensor(self.clips, device=ratio.device, dtype=ratio.dtype)[k]
        pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()
        with torch.no_grad():
            stats = {"approx_kl": ((ratio - 1) - log_ratio).mean(),
                     "clipfrac": ((ratio - 1).abs() > clip).float().mean(),
                     "ratio": ratio.mean()}
        return pg, stats

    def value_loss(self, v: torch.Tensor, returns: torch.Tensor, old_v: torch.Tensor) -> torch.Tensor:
        if self.ppo.value_clip is None:
            return 0.5 * ((v - returns) ** 2).mean()
        vc = old_v + (v - old_v).clamp(-self.ppo.value_clip, self.ppo.value_clip)
        return 0.5 * torch.max((v - returns) ** 2, (vc - returns) ** 2).mean()

    def prepare(self, batch: Batch) -> Batch:
        if batch.old_log_probs is None:
            batch.old_log_probs = self.log_probs(batch.obs, batch.chains)
        return batch

    def update(self, batch: Batch, iteration: int, train_actor: bool = True) -> dict[str, float]:
        """PPO epochs over all (env step, denoising step) pairs of `batch`; returns mean metrics."""
        p, k_ft = self.ppo, self.chain.ft_steps
        batch = self.prepare(batch)
        a_lr, c_lr = self.set_learning_rates(iteration)
        train_actor = train_actor and iteration >= p.critic_warmup  # False: the critic only
        m = batch.chains.shape[0]
        n_pairs = m * k_ft
        sums: dict[str, float] = {}
        counts = 0
        skipped = 0
        stopped_early = False
        for _epoch in range(p.update_epochs):
            perm = torch.randperm(n_pairs, generator=self.generator).to(self.device)
            for start in range(0, n_pairs, p.batch_size):
                idx = perm[start:start + p.batch_size]
                s, k = idx // k_ft, idx % k_ft
                stats = self._minibatch(batch, s, k, train_actor)
                if stats is None:
                    skipped += 1
                    continue
                for key, val in stats.items():
                    sums[key] = sums.get(key, 0.0) + val
                counts += 1
                if train_actor and p.target_kl is not None and self._mean_over_ranks(stats["approx_kl"]) > p.target_kl:
                    stopped_early = True
                    break
            if stopped_early:
                break
        out = {key: val / max(counts, 1) for key, val in sums.items()}
        var_r = batch.returns.var()
        out.update({"actor_lr": a_lr if train_actor else 0.0, "critic_lr": c_lr, "minibatches": counts,
                    "skipped_minibatches": skipped, "early_stop": float(stopped_early),
                    "explained_variance": float(1 - (batch.returns - batch.values).var() / var_r)
                    if var_r > 0 else float("nan"),
                    "clip": self.clips[-1]})
        return out

    def _minibatch(self, batch: Batch, s, k, train_actor: bool) -> dict[str, float] | None:
        p, c = self.ppo, self.chain
        # each env step appears up to K' times in a minibatch: encode its observation once
        us, inverse = torch.unique(s, return_inverse=True)
        obs_u = {key: v[us] for key, v in batch.obs.items()}
        cond = self.actor.condition(obs_u)[inverse]
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
                bc = self._bc_loss({key: v[s] for key, v in batch.obs.items()}, cond)
                loss = loss + p.bc_coef * bc
        if not self._all_ranks_true(bool(torch.isfinite(loss))):  # every rank skips together
            return self._skip("loss")
        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world_size > 1:
            self._all_reduce_grads(train_actor)
        a_norm = nn.utils.clip_grad_norm_(self.actor_params, p.max_grad_norm) if train_actor else \
            torch.zeros(())
        c_norm = nn.utils.clip_grad_norm_(self.critic.parameters(), p.max_grad_norm)
        if not (torch.isfinite(a_norm) and torch.isfinite(c_norm)):
            self.actor_opt.zero_grad(set_to_none=True)
            self.critic_opt.zero_grad(set_to_none=True)
            return self._skip("gradient")
        if train_actor:
            self.actor_opt.step()
        self.critic_opt.step()
        self.nonfinite_streak = 0
        pg, v_loss, bc = pg.detach(), v_loss.detach(), bc.detach()
        return {"policy_loss": float(pg), "value_loss": float(v_loss), "bc_loss": float(bc),
                "approx_kl": float(stats["approx_kl"]), "clipfrac": float(stats["clipfrac"]),
                "ratio": float(stats["ratio"]), "actor_grad_norm": float(a_norm), "critic_grad_norm": float(c_norm)}

    def _all_reduce_grads(self, train_actor: bool) -> None:
        """Average gradients over the data-parallel ranks (each rank holds its own envs' rollout);
        every rank then takes the same optimiser step, so weights stay identical."""
        import torch.distributed as dist

        params = [*(self.actor_params if train_actor else ()), *self.critic.parameters()]
        for prm in params:
            if prm.grad is None:
                prm.grad = torch.zeros_like(prm)
            dist.all_reduce(prm.grad, op=dist.ReduceOp.SUM)
            prm.grad /= self.world_size

    def _all_ranks_true(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def _mean_over_ranks(self, value: float) -> float:
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) / self.world_size

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

    def _skip(self, what: str) -> None:
        self.nonfinite_streak += 1
        log.warning("non-finite %s in a PPO minibatch: update skipped (%d in a row)", what, self.nonfinite_streak)
        if self.nonfinite_streak >= self.ppo.max_nonfinite:
            raise NonFiniteError(f"{self.nonfinite_streak} consecutive PPO minibatches had a non-finite {what}; "
                                 "stopping before the weights are corrupted (the last checkpoint is intact). "
                                 "Lower the learning rates or check the rewards/observations for NaN.")
        return None

    def weights_finite(self) -> bool:
        return all(torch.isfinite(t).all() for t in (*self.actor.parameters(), *self.critic.parameters()))

    # --- persistence ---------------------------------------------------------------------
    def save(self, path, train_state: Mapping[str, Any], schema: Mapping[str, Any] | None,
             meta: Mapping[str, Any]):
        """The fine-tuned actor in the pretrained checkpoints' format (`load_policy`,
        `tools/eval_policy.py` and `real/deploy.py` read it), the training state beside it."""
        from policy.checkpoint import save_checkpoint

        return save_checkpoint(path, self.actor, train_state=train_state, schema=schema, meta=meta)

    def load_actor(self, payload: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(payload["model"])

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(), "critic_extra": self.critic.extra_state(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "generator": self.generator.get_state(), "nonfinite_streak": self.nonfinite_streak,
                "base": self.base.state_dict() if self.base is not None and self.base is not self.actor.frozen_base
                else None,
                "chain": asdict(self.chain), "ppo": asdict(self.ppo)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The actor's weights come with the checkpoint's `model`; this restores the rest."""
        self.critic.load_extra_state(state["critic_extra"])
        self.critic.load_state_dict(state["critic"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.generator.set_state(state["generator"])
        self.nonfinite_streak = int(state["nonfinite_streak"])
        if self.base is not None and state.get("base") is not None:
            self.base.load_state_dict(state["base"])
