"""The PPO update both fine-tuning agents share (`DPPOAgent`, `GaussianPPOAgent`).

`PPOAgentBase` holds what does not depend on the policy: the optimisers and their learning-rate
schedules, the epoch/minibatch loop over a rollout's PPO samples (one `torch.randperm` draw of
the agent's generator per epoch), the target-KL early stop, the metric averages, the clipped
surrogate and value losses, the optimiser step with its non-finite guard (a non-finite loss or
gradient skips the minibatch on every rank; `max_nonfinite` in a row raise `NonFiniteError`),
the data-parallel gradient averaging, and the persistence of the critic and training state.

A subclass says what a PPO sample is and how one minibatch's loss is built:
`_n_samples(batch)` (DPPO: (env step, denoising step) pairs, Gaussian: env steps),
`_minibatch(batch, idx, train_actor)` (its metrics, or None when `_step` skipped it),
`_log_prob_rows`, `_extra_metrics` and `_config_state`, and the rollout side
(`sample_shape`, `n_log_probs`, `explore`).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from policy.rl.critic import Critic
from policy.rl.schedules import warmup_cosine

if TYPE_CHECKING:
    from policy.rl.dppo import Batch, PPOConfig

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """Losses or gradients were NaN/Inf in too many consecutive minibatches."""


class PPOAgentBase:
    """An actor, its critic and their optimisers; the PPO update over a rollout `Batch`."""

    def __init__(self, actor: nn.Module, critic: Critic, ppo: PPOConfig, total_iterations: int, seed: int,
                 world_size: int, base: nn.Module | None):
        """`base`: the frozen pretrained policy where the subclass uses one (else None); the
        actor's trainable parameters must be final here (the optimiser is built from them)."""
        self.actor, self.critic, self.ppo, self.base = actor, critic, ppo, base
        self.world_size = int(world_size)  # > 1: torch.distributed is initialised; gradients are averaged
        self.total_iterations = int(total_iterations)
        self.device = next(actor.parameters()).device
        self.actor.eval()  # no augmentation/dropout: sampling-time and update-time log-probs agree
        self.actor_params = [p for p in self.actor.parameters() if p.requires_grad]
        self.actor_opt = torch.optim.AdamW(self.actor_params, lr=ppo.actor_lr, weight_decay=ppo.weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=ppo.critic_lr, weight_decay=ppo.weight_decay)
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.nonfinite_streak = 0

    # --- what a subclass defines -----------------------------------------------------------
    def _n_samples(self, batch: Batch) -> int:
        """How many PPO samples `batch` holds (the range a minibatch's indices come from)."""
        raise NotImplementedError

    def _minibatch(self, batch: Batch, idx: torch.Tensor, train_actor: bool) -> dict[str, float] | None:
        """One minibatch of samples `idx`: its loss through `_step`; its metrics or None (skipped)."""
        raise NotImplementedError

    def _log_prob_rows(self, obs: Mapping[str, torch.Tensor], samples: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (n, n_log_probs) of n rows of a rollout's samples."""
        raise NotImplementedError

    def _extra_metrics(self) -> dict[str, float]:
        """Metrics appended to `update`'s."""
        return {}

    def _config_state(self) -> dict[str, Any]:
        """The settings recorded in `state_dict` (asdict of the configs)."""
        return {}

    # --- rollouts ------------------------------------------------------------------------
    @property
    def actor_input_keys(self) -> tuple[str, ...]:
        """What a rollout stores for the actor: its observation keys (agents with frozen camera
        encoders store `feat/<camera>` features in place of images)."""
        return tuple(self.actor.obs_keys)

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """Every key a rollout stores: the actor's inputs, then what only the critic reads."""
        keys = list(self.actor_input_keys)
        keys += [k for k in self.critic.obs_keys if k not in keys]
        return tuple(keys)

    def input_features(self, obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Features computed once per observation for the rollout to store (none by default)."""
        return {}

    def feature_specs(self, obs_history: int) -> dict[str, Any]:
        """`ObsSpec`s of `input_features`' outputs, for the rollout buffer."""
        return {}

    @torch.no_grad()
    def value(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.critic(obs).float()

    @torch.no_grad()
    def values(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """V of M observations (M,), in batches of `ppo.logprob_batch` rows."""
        keys = self.critic.obs_keys
        m = next(iter(obs.values())).shape[0]
        step = self.ppo.logprob_batch
        return torch.cat([self.value({k: obs[k][i:i + step] for k in keys}) for i in range(0, m, step)])

    @torch.no_grad()
    def log_probs(self, obs: Mapping[str, torch.Tensor], samples: torch.Tensor) -> torch.Tensor:
        """Old log-probabilities (M, n_log_probs) of a rollout's samples, recomputed in batches."""
        out = []
        for i in range(0, samples.shape[0], self.ppo.logprob_batch):
            sl = slice(i, i + self.ppo.logprob_batch)
            out.append(self._log_prob_rows({k: v[sl] for k, v in obs.items()}, samples[sl]))
        return torch.cat(out)

    def prepare(self, batch: Batch) -> Batch:
        if batch.old_log_probs is None:
            batch.old_log_probs = self.log_probs(batch.obs, batch.chains)
        return batch

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

    def update(self, batch: Batch, iteration: int, train_actor: bool = True) -> dict[str, float]:
        """PPO epochs over the samples of `batch` (`_n_samples`); returns mean metrics."""
        p = self.ppo
        batch = self.prepare(batch)
        a_lr, c_lr = self.set_learning_rates(iteration)
        train_actor = train_actor and iteration >= p.critic_warmup  # False: the critic only
        n = self._n_samples(batch)
        sums: dict[str, float] = {}
        counts = skipped = 0
        stopped_early = False
        for _epoch in range(p.update_epochs):
            perm = torch.randperm(n, generator=self.generator).to(self.device)
            for start in range(0, n, p.batch_size):
                stats = self._minibatch(batch, perm[start:start + p.batch_size], train_actor)
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
                    if var_r > 0 else float("nan")})
        out.update(self._extra_metrics())
        return out

    def normalised_advantages(self, adv: torch.Tensor) -> torch.Tensor:
        """Advantages normalised over the minibatch when `norm_adv` (and it has more than one)."""
        if self.ppo.norm_adv and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        return adv

    @staticmethod
    def clipped_surrogate(new_lp: torch.Tensor, old_lp: torch.Tensor, adv: torch.Tensor,
                          clip: float | torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """mean(max(-A r, -A clamp(r, 1 - clip, 1 + clip))) with r = exp(new - old); `clip` a
        number or one per sample; approx KL, clip fraction and mean ratio beside it."""
        log_ratio = new_lp - old_lp
        ratio = log_ratio.exp()
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

    def _step(self, loss: torch.Tensor, train_actor: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Backward and one optimiser step (the critic's; the actor's too when `train_actor`):
        the clipped gradient norms (actor, critic), or None when a non-finite loss or gradient
        skipped it (on every rank together)."""
        p = self.ppo
        if not self._all_ranks_true(bool(torch.isfinite(loss))):
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
        return a_norm, c_norm

    @staticmethod
    def _metrics(pg: torch.Tensor, v_loss: torch.Tensor, bc: torch.Tensor, stats: Mapping[str, torch.Tensor],
                 norms: tuple[torch.Tensor, torch.Tensor], **extra: float) -> dict[str, float]:
        """A minibatch's metrics as floats; `extra` between the losses and the ratio statistics."""
        return {"policy_loss": float(pg.detach()), "value_loss": float(v_loss.detach()), "bc_loss": float(bc.detach()),
                **extra, "approx_kl": float(stats["approx_kl"]), "clipfrac": float(stats["clipfrac"]),
                "ratio": float(stats["ratio"]), "actor_grad_norm": float(norms[0]), "critic_grad_norm": float(norms[1])}

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
        """The fine-tuned actor in the policy checkpoint format (`load_policy`,
        `tools/eval_policy.py` and `real/deploy.py` read it), the training state beside it."""
        from policy.checkpoint import save_checkpoint

        return save_checkpoint(path, self.actor, train_state=train_state, schema=schema, meta=meta)

    def load_actor(self, payload: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(payload["model"])

    def state_dict(self) -> dict[str, Any]:
        # a base kept inside the actor (DPPO's frozen early steps) is saved with the actor's weights
        own_base = self.base is not None and self.base is not getattr(self.actor, "frozen_base", None)
        return {"critic": self.critic.state_dict(), "critic_extra": self.critic.extra_state(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "generator": self.generator.get_state(), "nonfinite_streak": self.nonfinite_streak,
                "base": self.base.state_dict() if own_base else None, **self._config_state()}

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
