"""DPPO fine-tuning of a pretrained diffusion policy in parallel simulation.

    python sim/finetune.py task=one_leg                    # state policy (checkpoints/one_leg_state_bc.pt)
    python sim/finetune.py task=one_leg obs=pixel          # pixel policy, privileged critic
    python sim/finetune.py policy.ckpt=PATH train.iterations=50 env.n_envs=8
    python sim/finetune.py task.start_states=start_states/one_leg_low_leg_upright.npz   # cheap curriculum
    python sim/finetune.py experiment=paper                # the reference's one_leg scale (GPU)
    torchrun --nproc_per_node=2 sim/finetune.py ...         # data-parallel ranks, own envs and seeds

One iteration, read top to bottom (as CleanRL's PPO): reset every env with fresh seeds, roll
`n_steps` chunk steps into preallocated tensors (the env auto-resets finished episodes from
the seed stream), value the observations, scale rewards, GAE, PPO epochs over (env step,
denoising step) pairs, log, evaluate now and then, checkpoint. Resetting at each iteration
makes an iteration a function of the saved state alone, so resuming from a checkpoint
reproduces the next iteration bit for bit on CPU.

The entry script is where the simulator (sim/) and the learner (policy/rl) meet; neither
imports the other.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

if __package__ in (None, ""):  # `python sim/finetune.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _isaacgym_first() -> None:
    """IsaacGym refuses to load once torch is imported (docs/isaacgym.md): with sim=isaacgym on
    the command line, load it (and the furniture-bench fork) before anything imports torch."""
    if any(a.partition("=")[0] in ("sim", "sim.backend") and a.partition("=")[2] == "isaacgym" for a in sys.argv[1:]):
        try:
            import isaacgym  # noqa: F401
            import furniture_bench  # noqa: F401
        except ImportError:
            pass  # sim.make names what is missing


_isaacgym_first()

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from data.typed_config import from_mapping
from policy import resolve_device
from policy.checkpoint import CheckpointError, load_checkpoint, load_policy
from policy.rl.buffer import RolloutBuffer, obs_specs, reference_float64_nbytes
from policy.rl.critic import Critic, CriticConfig, observation_widths
from policy.rl.dppo import Batch, ChainConfig, DPPOAgent, NonFiniteError, PPOConfig
from policy.rl.gae import gae, next_values
from policy.rl.gaussian_ppo import GaussianPPOAgent, GaussianPPOConfig
from policy.rl.reward_scaler import RunningRewardScaler
from policy.train_log import TrainLog, WandbConfig
from sim.api import to_numpy, to_torch

log = logging.getLogger("finetune")


# --- configuration -------------------------------------------------------------------------
@dataclass
class PolicySource:
    ckpt: str = "checkpoints/one_leg_state_bc.pt"
    use_ema: bool = True


@dataclass
class LoopConfig:
    iterations: int = 100  # total PPO iterations of the run (schedules span these)
    chunk_iterations: int | None = None  # stop after this many in this invocation (resumable chunks)
    n_steps: int = 175  # chunk steps per env per iteration (175 x 4 actions = one 700-step episode)
    train_seed: int = 1_000_000  # training episodes take seeds from here (evaluation: eval.seed ...)
    reward_scale: bool = True  # running reward scaling (DPPO)
    reward_scale_gamma: float = 0.99
    reward_clip: float = 10.0
    save_every: int = 5  # iterations
    keep_every: int = 0  # also keep iter_<n>.pt every this many iterations (0: only last.pt)
    rollout_threads: int = 1  # torch threads while the envs step (0: unchanged); idle OpenMP threads
    # spinning beside the sim workers slowed small-batch inference ~30x on 2 cores
    actor_needs_reward: bool = True  # a rollout without any reward updates only the critic: with a sparse
    # reward its advantages are the critic's noise, and Adam's normalised steps then move the policy anyway
    freeze_image_encoders: bool = False  # pixel actors: keep the camera encoders fixed; their features are
    # computed once per observation while sampling and stored in place of the images, so the update costs what
    # the state policy's does (the pixel BC checkpoint's encoders were trained frozen-after-4k-steps too)
    update_threads: int = 1  # torch threads in the PPO update (0: unchanged); 1 was 2.6x faster than 2 on
    # a loaded 2-core machine; raise it on a machine with cores to spare


@dataclass
class FinetuneEvalConfig:
    every: int = 10  # iterations (0: off)
    at_start: bool = True  # evaluate the pretrained weights first (the "before" figure)
    episodes: int = 50
    seed: int = 100_000  # fixed unseen seeds seed .. seed + episodes - 1
    n_envs: int = 16
    n_workers: int = 2
    video: bool = True
    video_episodes: int = 1
    reset: str = "standard"  # standard: the headline figure | train: the training resets (start states too)

    def __post_init__(self) -> None:
        if self.reset not in ("standard", "train"):
            raise ValueError(f"eval.reset must be 'standard' or 'train', got '{self.reset}'")


@dataclass
class FinetuneConfig:
    """configs/finetune.yaml, field for field (unknown keys are errors naming them)."""

    seed: int = 0
    out_dir: str = "runs/finetune/one_leg_state"
    resume: bool = True
    device: str = "auto"
    method: str = "dppo"  # dppo | gaussian (the Gaussian-policy PPO baseline)
    policy: PolicySource = field(default_factory=PolicySource)
    train: LoopConfig = field(default_factory=LoopConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    gaussian: GaussianPPOConfig = field(default_factory=GaussianPPOConfig)  # method=gaussian only
    eval: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


SIM_GROUPS = ("task", "sim", "env", "obs")


def typed_config(cfg: Mapping[str, Any]) -> FinetuneConfig:
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    own = {k: v for k, v in plain.items() if k not in SIM_GROUPS + ("experiment", "hydra")}
    return from_mapping(FinetuneConfig, own)


# --- seeds and ranks -------------------------------------------------------------------------
class SeedStream:
    """Episode seeds handed out in order: the only state training episodes depend on."""

    def __init__(self, start: int):
        self.next = int(start)

    def take(self, n: int) -> np.ndarray:
        out = np.arange(self.next, self.next + n, dtype=np.int64)
        self.next += int(n)
        return out


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch threads (0: leave the setting alone), restored after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def dist_info() -> tuple[int, int]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# --- one rollout -------------------------------------------------------------------------------
@dataclass
class RolloutStats:
    episodes: int = 0
    successes: int = 0
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    diverged: int = 0
    env_steps: int = 0
    sim_s: float = 0.0
    policy_s: float = 0.0

    def summary(self) -> dict[str, float]:
        return {"success_rate": self.successes / self.episodes if self.episodes else float("nan"),
                "episodes": self.episodes, "episode_return": float(np.mean(self.returns)) if self.returns else 0.0,
                "episode_length": float(np.mean(self.lengths)) if self.lengths else 0.0,
                "diverged": self.diverged, "env_steps": self.env_steps, "sim_s": self.sim_s,
                "policy_s": self.policy_s}


def _rows(x, rows: np.ndarray):
    """x[rows] on x's own side (a device tensor is indexed there, before anything is copied)."""
    return x[torch.as_tensor(rows, device=x.device)] if isinstance(x, torch.Tensor) else x[rows]


def collect(envs, agent, buf: RolloutBuffer, seeds: SeedStream, generator: torch.Generator):
    """Fill `buf` with one iteration's rollout from freshly reset envs; returns the last
    observation's values (bootstrap) and the rollout's episode statistics."""
    n = envs.num_envs
    stats = RolloutStats()
    t0 = time.perf_counter()
    obs, _ = envs.reset(seeds=seeds.take(n).tolist())
    next_seeds = seeds.take(n)
    stats.sim_s += time.perf_counter() - t0
    actor_keys = agent.actor_input_keys
    buf.final_values.zero_()
    finals = []
    for t in range(buf.n_steps):
        t0 = time.perf_counter()
        stored = buf.put_obs(t, {**obs, **agent.input_features(obs)})
        actions, chain, logp = agent.explore({k: stored[k] for k in actor_keys}, generator)
        buf.chains[t].copy_(chain)
        buf.sample_log_probs[t].copy_(logp)
        t1 = time.perf_counter()
        step = envs.step(actions, reset_seeds=next_seeds)
        t2 = time.perf_counter()
        inf = step.infos
        buf.rewards[t] = to_torch(step.reward, buf.device, torch.float32)
        buf.terminated[t] = to_torch(step.terminated, buf.device, torch.bool)
        buf.truncated[t] = to_torch(step.truncated, buf.device, torch.bool)
        done = np.flatnonzero(to_numpy(inf["done"]))
        trunc = np.flatnonzero(to_numpy(step.truncated).astype(bool))
        if trunc.size:  # bootstrap from the true final observation, not the next episode's first
            finals.append((t, trunc, {k: to_torch(_rows(inf["final_obs"][k], trunc), buf.device)
                                      for k in agent.critic.obs_keys}))
        ended = {k: to_numpy(inf[k]) for k in ("success", "episode_return", "episode_length", "diverged")} \
            if done.size else {}
        for i in done:
            stats.episodes += 1
            stats.successes += int(bool(ended["success"][i]))
            stats.returns.append(float(ended["episode_return"][i]))
            stats.lengths.append(int(ended["episode_length"][i]))
            stats.diverged += int(bool(ended["diverged"][i]))
        if done.size:
            next_seeds[done] = seeds.take(done.size)
        stats.env_steps += int(to_numpy(inf["executed"]).sum())
        obs = step.obs
        t3 = time.perf_counter()
        stats.policy_s += (t1 - t0) + (t3 - t2)
        stats.sim_s += t2 - t1
    if agent.critic.needs_fit:  # inputs the actor's checkpoint has no statistics for: from this rollout
        fitted = agent.critic.fit_missing(buf.flat_obs())
        log.info("critic input statistics fitted on the first rollout: %s", fitted)
    for t, rows, final in finals:
        buf.final_values[t, torch.as_tensor(rows)] = agent.value(final)
    last = {k: to_torch(obs[k], buf.device) for k in agent.critic.obs_keys}
    return agent.value(last), stats


def advantages(agent, buf: RolloutBuffer, last_value: torch.Tensor, scaler: RunningRewardScaler | None,
               gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, advantages, returns), each (T, N), with rewards scaled when a scaler is given."""
    t, n = buf.n_steps, buf.n_envs
    values = agent.values(buf.flat_obs()).view(t, n)
    done = buf.done
    rewards = scaler(buf.rewards, done) if scaler is not None else buf.rewards
    nv = next_values(values, last_value, buf.final_values, done)
    adv, ret = gae(rewards, values, nv, buf.terminated, done, gamma, lam)
    return values, adv, ret


# --- the workspace -----------------------------------------------------------------------------
class Finetuner:
    def __init__(self, cfg: DictConfig):
        self.hcfg = cfg
        self.cfg = c = typed_config(cfg)
        self.rank, self.world = dist_info()
        self.out = Path(c.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(c.device)
        torch.manual_seed(c.seed)  # the same initial critic on every rank
        self.iteration, self.env_steps, self.history = 0, 0, []
        self.seeds = SeedStream(c.train.train_seed + self.rank * 10_000_000)
        self.rollout_gen = torch.Generator().manual_seed(c.seed * 1000 + self.rank)
        self.agent = self._build_agent()
        torch.manual_seed(c.seed + self.rank)
        np.random.seed(c.seed + self.rank)
        self.scaler = RunningRewardScaler(int(cfg.env.n_envs), c.train.reward_scale_gamma, c.train.reward_clip) \
            if c.train.reward_scale else None
        self._resume()
        self.envs = None
        self.evaluator = None

    # --- construction ---
    def _build_agent(self):
        c = self.cfg
        if c.method not in ("dppo", "gaussian"):
            raise ValueError(f"method must be 'dppo' or 'gaussian', got '{c.method}'")
        if c.method == "gaussian":
            try:
                agent = GaussianPPOAgent.from_checkpoint(
                    c.policy.ckpt, c.critic, c.ppo, c.gaussian, c.train.iterations, seed=c.seed + self.rank,
                    world_size=self.world, device=self.device, lowdim_widths=None, use_ema=c.policy.use_ema)
            except CheckpointError as e:
                raise SystemExit(f"policy.ckpt (method=gaussian): {e}") from e
            self.base_schema = agent.actor.schema
            return agent
        try:
            actor = load_policy(c.policy.ckpt, use_ema=c.policy.use_ema, device=self.device)
        except CheckpointError as e:
            raise SystemExit(f"policy.ckpt: {e}") from e
        from policy.diffusion_policy import DiffusionPolicy

        if not isinstance(actor, DiffusionPolicy):
            raise SystemExit(f"policy.ckpt {c.policy.ckpt} holds a {type(actor).__name__}; DPPO fine-tunes diffusion "
                             "policies (method=gaussian for Gaussian ones, e.g. experiment=gaussian_ppo)")
        if c.chain.ddim_steps > actor.schedule.steps:
            raise ValueError(f"chain.ddim_steps {c.chain.ddim_steps} > the policy's {actor.schedule.steps} DDPM steps")
        self.base_schema = actor.schema
        critic = Critic(c.critic, actor.lowdim_keys, actor.cameras, actor.image_hw, actor.obs_history,
                        actor.normalizer, observation_widths(actor.obs_schema)).to(self.device)
        if c.train.freeze_image_encoders and not actor.cameras:
            raise SystemExit(f"train.freeze_image_encoders=true needs a pixel policy; {c.policy.ckpt} reads "
                             f"{list(actor.obs_keys)}")
        return DPPOAgent(actor, critic, c.chain, c.ppo, c.train.iterations, seed=c.seed + self.rank,
                         world_size=self.world, freeze_image_encoders=c.train.freeze_image_encoders)

    def _resume(self) -> None:
        path = self.out / "last.pt"
        if not (self.cfg.resume and path.exists()):
            if self.rank == 0 and (self.out / "history.jsonl").exists():  # a fresh run: a fresh log
                (self.out / "history.jsonl").unlink()
            return
        payload = load_checkpoint(path, map_location=self.device)
        train = payload.get("train") or {}
        if train.get("kind") != "finetune":
            raise CheckpointError(f"{path} is not a fine-tuning checkpoint (no fine-tuning state to resume)")
        self.agent.load_actor(payload)
        self.agent.load_state_dict(train["agent"])
        if self.scaler is not None and train.get("scaler") is not None:
            self.scaler.load_state_dict(train["scaler"])
        self.iteration, self.env_steps = int(train["iteration"]), int(train["env_steps"])
        self.seeds.next = int(train["seed_next"])
        self.rollout_gen.set_state(train["rollout_gen"])
        torch.set_rng_state(train["torch_rng"])
        self.history = json.loads(train["history"])
        log.info("resumed %s at iteration %d (%d env steps)", path, self.iteration, self.env_steps)

    def _make_envs(self):
        from sim.evaluate import env_config_for
        from sim.make import make_from_hydra

        env_cfg = env_config_for(self.agent.actor, self.hcfg)
        if self.agent.critic.kind == "privileged":
            env_cfg.env.include_parts = True
        return make_from_hydra(env_cfg, obs_history=self.agent.actor.obs_history)

    # --- persistence ---
    def check_ranks_agree(self) -> None:
        """Data-parallel ranks must hold identical weights (same initial weights, averaged
        gradients, same optimiser steps); a fingerprint of every parameter is compared."""
        if self.world == 1:
            return
        import torch.distributed as dist

        params = [*self.agent.actor.parameters(), *self.agent.critic.parameters()]
        mine = torch.stack([torch.stack([p.double().sum(), (p.double() ** 2).sum()]) for p in params]).flatten()
        gathered = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine)
        if not all(torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError("data-parallel ranks hold different weights")
        log.info("all %d ranks hold identical weights (iteration %d)", self.world, self.iteration)

    def save(self, name: str = "last.pt") -> Path | None:
        self.check_ranks_agree()
        if self.rank != 0:
            return None
        if not self.agent.weights_finite():
            raise NonFiniteError("non-finite weights: refusing to overwrite the checkpoint")
        train = {"kind": "finetune", "iteration": self.iteration, "env_steps": self.env_steps,
                 "agent": self.agent.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                 "seed_next": self.seeds.next, "rollout_gen": self.rollout_gen.get_state(),
                 "torch_rng": torch.get_rng_state(), "history": json.dumps(self.history)}
        meta = {"config": json.dumps(OmegaConf.to_container(self.hcfg, resolve=True)),
                "note": f"{'DPPO' if self.cfg.method == 'dppo' else 'Gaussian PPO'} fine-tuned from {self.cfg.policy.ckpt}: iteration {self.iteration}, "
                        f"{self.env_steps} env steps"}
        return self.agent.save(self.out / name, train, self.base_schema, meta)

    # --- evaluation ---
    def evaluate(self) -> dict[str, Any]:
        from sim.evaluate import evaluate, make_evaluator

        e = self.cfg.eval
        if self.evaluator is None:  # the headline figure: always from the standard reset
            eval_cfg = self.hcfg.copy()
            if e.reset == "standard":
                with open_dict(eval_cfg):
                    eval_cfg.task.start_states = None
            self.evaluator = make_evaluator(self.agent.actor, eval_cfg, min(e.n_envs, e.episodes), e.n_workers)
        video = self.out / "videos" / f"iter_{self.iteration:04d}" if e.video else None
        t0 = time.perf_counter()
        with torch_threads(self.cfg.train.rollout_threads):
            res = evaluate(self.evaluator, self.agent.actor, e.episodes, e.seed, self.cfg.chain.ddim_steps,
                           video_dir=video, video_episodes=e.video_episodes)
        out = res.summary()
        out.pop("episodes")
        out["eval_s"] = time.perf_counter() - t0
        return out

    # --- the loop ---
    def train(self) -> dict[str, Any]:
        from tqdm import tqdm

        c = self.cfg
        self.envs = self._make_envs()
        obs0, _ = self.envs.reset(seed=0)
        features = self.agent.feature_specs(self.agent.actor.obs_history)
        # what the envs observe (the reference layout's yardstick), then what the rollout stores
        env_keys = [k for k in self.agent.obs_keys if k not in features]
        self.env_obs_specs = obs_specs(obs0, env_keys + [f"rgb/{k.removeprefix('feat/')}" for k in features])
        specs = self.buffer_specs = {**obs_specs(obs0, env_keys), **features}
        chain_shape = self.agent.sample_shape
        buf = RolloutBuffer(c.train.n_steps, self.envs.num_envs, specs, chain_shape, self.device,
                            n_log_probs=self.agent.n_log_probs)
        log.info("rollout buffer %.1f MB (the reference's float64 layout: %.1f MB)", buf.nbytes() / 2**20,
                 reference_float64_nbytes(c.train.n_steps, self.envs.num_envs, self.env_obs_specs, chain_shape) / 2**20)
        tlog = TrainLog(self.out, c.wandb, OmegaConf.to_container(self.hcfg, resolve=True)) if self.rank == 0 else None
        last_eval = None
        if c.eval.every and c.eval.at_start and self.iteration == 0 and self.rank == 0 and not self.history:
            last_eval = self.evaluate()
            self._record({"iteration": 0, "env_steps": 0, "eval": last_eval}, tlog)
            log.info("before fine-tuning: eval success %.3f over %d episodes", last_eval["success_rate"],
                     c.eval.episodes)
        stop = c.train.iterations if c.train.chunk_iterations is None else \
            min(c.train.iterations, self.iteration + c.train.chunk_iterations)
        bar = tqdm(total=c.train.iterations, initial=self.iteration, desc=c.method, unit="it",
                   disable=self.rank != 0)
        try:
            while self.iteration < stop:
                row = self.iterate(buf)
                self.iteration += 1
                if c.eval.every and self.iteration % c.eval.every == 0 and self.rank == 0:
                    last_eval = row["eval"] = self.evaluate()
                self._record(row, tlog)
                bar.update(1)
                sr = row["rollout"]["success_rate"]
                bar.set_postfix(success=f"{sr:.2f}" if sr == sr else "n/a",
                                ret=f"{row['rollout']['episode_return']:.2f}",
                                sps=f"{row['env_steps_per_s']:.0f}",
                                **({"eval": f"{last_eval['success_rate']:.2f}"} if last_eval else {}))
                if self.iteration % c.train.save_every == 0 or self.iteration == stop:
                    self.save()
                    if c.train.keep_every and self.iteration % c.train.keep_every == 0:
                        self.save(f"iter_{self.iteration:04d}.pt")
        finally:
            bar.close()
            self.close()
            if tlog is not None:
                tlog.close()
        if self.rank == 0:
            self.plot()
        return {"iteration": self.iteration, "env_steps": self.env_steps, "last_eval": last_eval}

    def iterate(self, buf: RolloutBuffer) -> dict[str, Any]:
        c = self.cfg
        t0 = time.perf_counter()
        if self.scaler is not None:
            self.scaler.reset_returns()
        with torch_threads(c.train.rollout_threads):
            last_value, stats = collect(self.envs, self.agent, buf, self.seeds, self.rollout_gen)
        t1 = time.perf_counter()
        values, adv, ret = advantages(self.agent, buf, last_value, self.scaler, c.ppo.gamma, c.ppo.gae_lambda)
        batch = Batch(obs=buf.flat_obs(), chains=buf.chains.reshape(-1, *buf.chains.shape[2:]),
                      advantages=adv.reshape(-1), returns=ret.reshape(-1), values=values.reshape(-1))
        t2 = time.perf_counter()
        with torch_threads(c.train.update_threads):
            self.agent.prepare(batch)
            t3 = time.perf_counter()
            informative = bool(buf.rewards.abs().sum() > 0) or not c.train.actor_needs_reward
            if not informative:
                log.info("iteration %d: no reward in the rollout, critic-only update", self.iteration + 1)
            metrics = self.agent.update(batch, self.iteration, train_actor=informative)
        lp_err = float((batch.old_log_probs - buf.sample_log_probs.reshape(batch.old_log_probs.shape)).abs().max())
        t4 = time.perf_counter()
        steps = stats.env_steps * self.world
        self.env_steps += steps
        roll = stats.summary()
        return {"iteration": self.iteration + 1, "env_steps": self.env_steps, "rollout": roll, "update": metrics,
                "logprob_recompute_max_err": lp_err, "reward_std": self.scaler.std if self.scaler else 1.0,
                "time": {"rollout_sim_s": roll["sim_s"], "rollout_policy_s": roll["policy_s"],
                         "values_gae_s": t2 - t1, "logprob_s": t3 - t2, "update_s": t4 - t3, "total_s": t4 - t0},
                "env_steps_per_s": steps / (t4 - t0)}

    def _record(self, row: dict[str, Any], tlog: TrainLog | None) -> None:
        self.history.append(row)
        if tlog is None:
            return
        step = int(row["env_steps"])
        for group in ("rollout", "update", "time", "eval"):
            for k, v in (row.get(group) or {}).items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    tlog.scalar(f"{group}/{k}", v, step)
                elif isinstance(v, dict):
                    for mk, mv in v.items():
                        tlog.scalar(f"{group}/{k}/{mk}", float(mv), step)
        for k in ("logprob_recompute_max_err", "reward_std", "env_steps_per_s"):
            if k in row:
                tlog.scalar(f"train/{k}", row[k], step)
        with open(self.out / "history.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self) -> Path | None:
        evals = [h for h in self.history if "eval" in h]
        rolls = [h for h in self.history if "rollout" in h]
        if not evals and not rolls:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        if rolls:
            ax[0].plot([h["env_steps"] for h in rolls], [h["rollout"]["success_rate"] for h in rolls], ".-",
                       alpha=0.6, label="training episodes (eta 1)")
        if evals:
            ax[0].plot([h["env_steps"] for h in evals], [h["eval"]["success_rate"] for h in evals], "ko-",
                       label=f"evaluation (eta 0, {self.cfg.eval.episodes} fixed seeds)")
        ax[0].set_xlabel("env steps")
        ax[0].set_ylabel("success rate")
        ax[0].set_ylim(-0.02, 1.02)
        ax[0].legend(fontsize=7)
        if rolls:
            ax[1].plot([h["env_steps"] for h in rolls], [h["update"].get("value_loss", np.nan) for h in rolls],
                       label="value loss")
            ax[1].plot([h["env_steps"] for h in rolls], [h["update"].get("explained_variance", np.nan)
                                                         for h in rolls], label="explained variance")
            ax[1].set_xlabel("env steps")
            ax[1].legend(fontsize=7)
        fig.tight_layout()
        path = self.out / "curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None
        if self.evaluator is not None:
            self.evaluator.close()
            self.evaluator = None


@hydra.main(config_path="../configs", config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    ft = Finetuner(cfg)
    result = ft.train()
    if ft.rank == 0:
        evals = [(h["iteration"], h["eval"]["success_rate"]) for h in ft.history if "eval" in h]
        print(json.dumps({"iteration": result["iteration"], "env_steps": result["env_steps"],
                          "eval_success": (result["last_eval"] or {}).get("success_rate")}))
        if evals:
            e = ft.cfg.eval
            print(f"evaluation success ({e.episodes} episodes, seeds {e.seed}..{e.seed + e.episodes - 1}, {e.reset} "
                  f"reset, eta 0): " + " -> ".join(f"{s:.0%} (iteration {i})" for i, s in evals))
        print(f"checkpoint: {ft.out / 'last.pt'}  (curves: {ft.out / 'curves.png'})")


if __name__ == "__main__":
    main()
