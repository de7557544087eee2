"""PPO on a Gaussian chunk policy: the baseline of the DPPO paper (Ren et al. 2025, "Gaussian").

The same two-level picture as DPPO with a one-step "chain": each env step executes the first
`act_steps` actions of one sampled normalised chunk, whose log-probability (DPPO's Gaussian
PPO: averaged over the executed elements) is the PPO likelihood. `GaussianPPOAgent` has the
interface `sim/finetune.py` drives `DPPOAgent` by (sample_shape, n_log_probs, obs_keys,
explore, value, log_probs, prepare, update, save, load_actor, state_dict, load_state_dict,
weights_finite), so the loop, the buffer (it stores the chunk as a (1, H, A) "chain"), GAE and
the checkpoints are shared.

Settings: `PPOConfig` (policy.rl.dppo) where they apply - gamma, gae_lambda, clip, update_epochs,
batch_size (env steps per minibatch here), norm_adv, target_kl, max_grad_norm, vf_coef,
value_clip, bc_coef, actor/critic lrs and warmups, weight_decay, max_nonfinite,
logprob_batch; gamma_denoising, clip_base and clip_rate have no meaning here. Gaussian-only
settings are in `GaussianPPOConfig`. The non-finite guard is DPPO's (`NonFiniteError`).

The optional BC term (`bc_coef`, DPPO's `use_bc_loss`: the negative log-likelihood under the
fine-tuned policy of chunks the frozen pretrained policy samples) is computed in closed form,
E_{x ~ N(mu_b, s_b)}[-log N(x; mu, s)] per executed element, instead of from one draw: the
same expectation without its sampling noise.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from policy.gaussian_policy import REDUCES, GaussianPolicy
from policy.rl.critic import Critic, CriticConfig
from policy.rl.dppo import Batch, NonFiniteError, PPOConfig, orthonormal_actions
from policy.rl.schedules import warmup_cosine

log = logging.getLogger(__name__)


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


class GaussianPPOAgent:
    """The fine-tuned Gaussian actor, its critic and their optimisers."""

    def __init__(self, actor: GaussianPolicy, critic: Critic, ppo: PPOConfig, gauss: GaussianPPOConfig,
                 total_iterations: int, seed: int = 0, world_size: int = 1):
        if not isinstance(actor, GaussianPolicy):
            raise TypeError(f"GaussianPPOAgent fine-tunes a GaussianPolicy, got {type(actor).__name__} "
                            "(a diffusion checkpoint fine-tunes with method=dppo)")
        self.actor, self.critic, self.ppo, self.gauss = actor, critic, ppo, gauss
        self.world_size = int(world_size)
        self.total_iterations = int(total_iterations)
        self.device = next(actor.parameters()).device
        self.actor.log_std.requires_grad_(bool(gauss.learn_std))
        self.base: GaussianPolicy | None = None
        if ppo.bc_coef > 0:
            self.base = copy.deepcopy(actor).eval().requires_grad_(False)
        self.actor.eval()
        self.actor_opt = torch.optim.AdamW([p for p in self.actor.parameters() if p.requires_grad], lr=ppo.actor_lr,
                                           weight_decay=ppo.weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=ppo.critic_lr, weight_decay=ppo.weight_decay)
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.nonfinite_streak = 0

    @classmethod
    def from_checkpoint(cls, path: str | Path, critic_cfg: CriticConfig, ppo_cfg: PPOConfig,
                        gauss_cfg: GaussianPPOConfig, total_iterations: int, seed: int = 0, world_size: int = 1,
                        device: str | torch.device = "cpu", lowdim_widths: Mapping[str, int] | None = None,
                        use_ema: bool = True) -> "GaussianPPOAgent":
        """The agent for a Gaussian checkpoint (`load_policy`; a CheckpointError for any other
        policy) with a fresh critic. `lowdim_widths`: the widths of the low-dim keys the envs
        produce (default: from the checkpoint's obs schema: `state`, and `parts` when it has
        part poses)."""
        from policy.checkpoint import PART_DIM, CheckpointError, load_policy

        actor = load_policy(path, use_ema=use_ema, device=device)
        if not isinstance(actor, GaussianPolicy):
            raise CheckpointError(f"{path} holds a {type(actor).__name__}, not a Gaussian policy "
                                  "(fine-tune it with method=dppo)")
        if lowdim_widths is None:
            s = actor.obs_schema
            lowdim_widths = {"state": s.state_dim, "parts": PART_DIM * s.n_parts}
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

    @property
    def obs_keys(self) -> tuple[str, ...]:
        keys = list(self.actor.obs_keys)
        keys += [k for k in self.critic.obs_keys if k not in keys]
        return tuple(keys)

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

    @torch.no_grad()
    def value(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.critic(obs).float()

    @torch.no_grad()
    def log_probs(self, obs: Mapping[str, torch.Tensor], samples: torch.Tensor) -> torch.Tensor:
        """Old log-probabilities (M, 1) of a rollout's chunks (M, 1, H, A), in batches."""
        out = []
        for i in range(0, samples.shape[0], self.ppo.logprob_batch):
            sl = slice(i, i + self.ppo.logprob_batch)
            out.append(self._log_prob({k: v[sl] for k, v in obs.items()}, samples[sl, 0]))
        return torch.cat(out)[:, None]

    # --- the PPO update ------------------------------------------------------------------
    def set_learning_rates(self, iteration: int) -> tuple[float, float]:
        p = self.ppo
        a_lr = warmup_cosine(max(iteration - p.critic_warmup, 0), p.actor_lr, p.actor_min_lr, p.actor_warmup,
                             self.total_iterations - p.critic_warmup)
        c_lr = warmup_cosine(iteration, p.critic_lr, p.critic_min_lr, 0, self.total_iterations)
        for g in self.actor_opt.param_groups:
            g["lr"] = a_lr
        for g in self.critic_opt.param_groups:
            g["lr"] = c_lr
        return a_lr, c_lr

    def policy_loss(self, new_lp: torch.Tensor, old_lp: torch.Tensor,
                    adv: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate: advantages normalised over the minibatch (norm_adv), ratio
        exp(new - old), loss mean(max(-A r, -A clamp(r, 1 - clip, 1 + clip)))."""
        if self.ppo.norm_adv and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        log_ratio = new_lp - old_lp
        ratio = log_ratio.exp()
        c = self.ppo.clip
        pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - c, 1 + c)).mean()
        with torch.no_grad():
            stats = {"approx_kl": ((ratio - 1) - log_ratio).mean(), "clipfrac": ((ratio - 1).abs() > c).float().mean(),
                     "ratio": ratio.mean()}
        return pg, stats

    def value_loss(self, v: torch.Tensor, returns: torch.Tensor, old_v: torch.Tensor) -> torch.Tensor:
        if self.ppo.value_clip is None:
            return 0.5 * ((v - returns) ** 2).mean()
        vc = old_v + (v - old_v).clamp(-self.ppo.value_clip, self.ppo.value_clip)
        return 0.5 * torch.max((v - returns) ** 2, (vc - returns) ** 2).mean()

    def bc_loss(self, obs, mean: torch.Tensor) -> torch.Tensor:
        """E over the frozen base policy's chunks of -log N(x; mean, std), per executed element,
        averaged (closed form): log s + log(2 pi)/2 + (s_b^2 + (mu_b - mu)^2) / (2 s^2)."""
        with torch.no_grad():
            mu_b, s_b = self.base.mean(obs), self.base.std()
        sl = slice(self.actor.cfg.exec_start, self.actor.cfg.exec_start + self.actor.act_steps)
        s = self.actor.std()
        nll = torch.log(s) + 0.5 * math.log(2 * math.pi) + (s_b ** 2 + (mu_b[:, sl] - mean[:, sl]) ** 2) / (2 * s ** 2)
        return nll.mean()

    def prepare(self, batch: Batch) -> Batch:
        if batch.old_log_probs is None:
            batch.old_log_probs = self.log_probs(batch.obs, batch.chains)
        return batch

    def update(self, batch: Batch, iteration: int, train_actor: bool = True) -> dict[str, float]:
        """PPO epochs over the env steps of `batch` (chains (M, 1, H, A)); mean metrics."""
        p = self.ppo
        batch = self.prepare(batch)
        a_lr, c_lr = self.set_learning_rates(iteration)
        train_actor = train_actor and iteration >= p.critic_warmup  # False: the critic only
        m = batch.chains.shape[0]
        sums: dict[str, float] = {}
        counts = skipped = 0
        stopped_early = False
        for _epoch in range(p.update_epochs):
            perm = torch.randperm(m, generator=self.generator).to(self.device)
            for start in range(0, m, p.batch_size):
                idx = perm[start:start + p.batch_size]
                stats = self._minibatch(batch, idx, train_actor)
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
                    "clip": float(p.clip), "std": float(self.actor.std().detach().mean())})
        return out

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
        if not torch.isfinite(loss):
            return self._skip("loss")
        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world_size > 1:
            self._all_reduce_grads(train_actor)
        actor_params = [q for q in self.actor.parameters() if q.requires_grad]
        a_norm = nn.utils.clip_grad_norm_(actor_params, p.max_grad_norm) if train_actor else torch.zeros(())
        c_norm = nn.utils.clip_grad_norm_(self.critic.parameters(), p.max_grad_norm)
        if not (torch.isfinite(a_norm) and torch.isfinite(c_norm)):
            self.actor_opt.zero_grad(set_to_none=True)
            self.critic_opt.zero_grad(set_to_none=True)
            return self._skip("gradient")
        if train_actor:
            self.actor_opt.step()
        self.critic_opt.step()
        self.nonfinite_streak = 0
        return {"policy_loss": float(pg.detach()), "value_loss": float(v_loss.detach()), "bc_loss": float(bc.detach()),
                "entropy": float(entropy.detach()), "approx_kl": float(stats["approx_kl"]),
                "clipfrac": float(stats["clipfrac"]), "ratio": float(stats["ratio"]),
                "actor_grad_norm": float(a_norm), "critic_grad_norm": float(c_norm)}

    def _all_reduce_grads(self, train_actor: bool) -> None:
        """Average gradients over the data-parallel ranks (as DPPOAgent)."""
        import torch.distributed as dist

        actor = [q for q in self.actor.parameters() if q.requires_grad] if train_actor else []
        for prm in (*actor, *self.critic.parameters()):
            if prm.grad is None:
                prm.grad = torch.zeros_like(prm)
            dist.all_reduce(prm.grad, op=dist.ReduceOp.SUM)
            prm.grad /= self.world_size

    def _mean_over_ranks(self, value: float) -> float:
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) / self.world_size

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
        """The fine-tuned actor in the policy checkpoint format (`load_policy` reads it as a
        GaussianPolicy), the training state beside it."""
        from policy.checkpoint import save_checkpoint

        return save_checkpoint(path, self.actor, train_state=train_state, schema=schema, meta=meta)

    def load_actor(self, payload: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(payload["model"])

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(), "critic_extra": self.critic.extra_state(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "generator": self.generator.get_state(), "nonfinite_streak": self.nonfinite_streak,
                "base": self.base.state_dict() if self.base is not None else None,
                "ppo": asdict(self.ppo), "gaussian": asdict(self.gauss)}

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
