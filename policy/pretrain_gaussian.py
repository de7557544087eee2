"""Behaviour-cloning pretraining of the Gaussian MLP policy (the DPPO paper's Gaussian baseline).

    python policy/pretrain_gaussian.py dataset=datasets/one_leg_low_scripted_dart_state.zarr
    python policy/pretrain_gaussian.py train.steps=20000 eval.every=5000 eval.episodes=16

The same data path as the diffusion policy's pretraining (policy/pretrain.py): the episode
split, the normaliser (every configured key the dataset has, `parts` included, for critics),
the relative-chunk statistics, the typed obs/action schema, windows of obs_history
observations and a horizon-long chunk, and the batch order (`DataOrder`, a pure function of
the step, so a resumed run continues exactly: the MSE step has no randomness of its own).
The loss is the MSE of the Gaussian mean (policy.gaussian_policy); the std is left at
`policy.init_std` for fine-tuning. Writes <out_dir>/last.pt in the policy checkpoint format
(with EMA weights; `load_policy` and tools/eval_policy.py read it).

A separate entry rather than a `policy=` choice of policy/pretrain.py: that Trainer's policy
group is the diffusion `PolicyConfig` and it carries the image paths (frozen features, image
caches, DDP, AMP) a state-only MLP does not need; this one reuses its helpers instead.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from data.device_batches import DeviceWindowBatches
from data.episodes import EpisodeDataset
from data.normalizer import load_or_fit, modes_to_fit
from data.sampler import SplitConfig, WindowConfig, select_and_split
from data.torch_dataset import EpisodeWindowDataset, WindowDatasetConfig
from data.typed_config import from_mapping, to_plain
from policy import resolve_device
from policy.action_repr import RELATIVE
from policy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, schema_mismatch
from policy.ema import EMA
from policy.gaussian_policy import GaussianPolicy, GaussianPolicyConfig
from policy.pretrain import DataOrder, dataset_schemas, lr_lambda, seed_everything, with_relative_action_stats

log = logging.getLogger("pretrain_gaussian")


@dataclass
class GaussianDataConfig:
    val_ratio: float = 0.1
    success_only: bool = True
    norm: dict[str, str] = field(default_factory=lambda: {"state": "minmax", "parts": "minmax", "action": "minmax"})


@dataclass
class GaussianTrainLoop:
    steps: int = 50000
    batch_size: int = 256
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-6
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_power: float = 0.75
    chunk_steps: int | None = None  # stop after this many steps in this invocation (resumable)
    log_every: int = 100
    val_every: int = 1000
    save_every: int = 5000


@dataclass
class GaussianEvalConfig:
    every: int = 0  # rollout evaluation in the simulator every this many steps (0: off)
    episodes: int = 16
    n_envs: int = 4
    n_workers: int = 2
    video: bool = False
    evaluator: str = "sim.evaluate:SimEvaluation"  # wired by config: policy/ never imports sim/


@dataclass
class GaussianPretrainConfig:
    """configs/pretrain_gaussian.yaml, field for field."""

    dataset: str
    out_dir: str
    policy: GaussianPolicyConfig = field(default_factory=GaussianPolicyConfig)
    seed: int = 0
    resume: bool = True
    device: str = "auto"
    data: GaussianDataConfig = field(default_factory=GaussianDataConfig)
    train: GaussianTrainLoop = field(default_factory=GaussianTrainLoop)
    eval: GaussianEvalConfig = field(default_factory=GaussianEvalConfig)
    task: dict[str, Any] = field(default_factory=dict)
    sim: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    obs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hydra(cls, cfg) -> "GaussianPretrainConfig":
        plain = to_plain(cfg)
        plain.pop("hydra", None)
        return from_mapping(cls, plain)


class GaussianTrainer:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.config = c = GaussianPretrainConfig.from_hydra(cfg)
        self.out = Path(c.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(c.device)
        seed_everything(c.seed)
        ds = EpisodeDataset(c.dataset)
        keys = list(c.policy.lowdim_keys)
        ds.check_compatible(task=c.task["name"], required_keys=[*keys, "action"])
        self.train_eps, self.val_eps = select_and_split(
            ds, SplitConfig(val_ratio=c.data.val_ratio, seed=c.seed, success_only=c.data.success_only))
        required = [*keys, "action", *(["parts"] if "parts" in ds.keys else [])]
        normalizer = load_or_fit(ds, modes_to_fit(ds.keys, c.data.norm, required, where="data.norm"),
                                 episodes=self.train_eps)
        self.obs_schema, self.action_schema, state_dim = dataset_schemas(ds, c.policy)
        self.pcfg = dataclasses.replace(c.policy, action_dim=self.action_schema.dim, state_dim=state_dim)
        reason = schema_mismatch(self.pcfg, self.obs_schema, self.action_schema)
        if reason:
            raise ValueError(f"the dataset's obs/action schema does not fit the policy config: {reason}")
        wcfg = WindowDatasetConfig(obs_keys=tuple(keys), window=WindowConfig(obs_history=self.pcfg.obs_history,
                                                                             horizon=self.pcfg.horizon))
        self.train_set = EpisodeWindowDataset(c.dataset, self.train_eps, wcfg)
        self.val_set = EpisodeWindowDataset(c.dataset, self.val_eps, wcfg) if len(self.val_eps) else None
        if self.pcfg.action_repr == RELATIVE:
            normalizer = with_relative_action_stats(normalizer, self.train_set, c.data.norm["action"])
        self.schema = {"obs": self.obs_schema, "action": self.action_schema, "dataset": str(c.dataset),
                       "task": c.task["name"]}
        self.policy = GaussianPolicy(self.pcfg, normalizer)
        self.policy.obs_schema, self.policy.action_schema = self.obs_schema, self.action_schema
        self.policy.log_std.requires_grad_(False)  # BC trains the mean; the std is fine-tuning's
        self.policy.to(self.device)
        self.ema = EMA(self.policy, power=c.train.ema_power)
        self.opt = torch.optim.AdamW([q for q in self.policy.parameters() if q.requires_grad], lr=c.train.lr,
                                     weight_decay=c.train.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(c.train.warmup_steps, c.train.steps))
        self.batches = DeviceWindowBatches(self.train_set, self.device)
        self.val_batches = DeviceWindowBatches(self.val_set, self.device) if self.val_set is not None else None
        self.order = DataOrder(len(self.train_set), c.train.batch_size, c.seed)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._evaluator = None
        if c.resume and (self.out / "last.pt").exists():
            self._resume(self.out / "last.pt")

    # --- persistence ---
    def save(self, name: str = "last.pt") -> Path:
        train = {"kind": "pretrain_gaussian", "step": self.step, "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "history": json.dumps(self.history),
                 "data": {"windows": self.order.n, "batch_size": self.order.batch_size, "seed": self.order.seed}}
        return save_checkpoint(self.out / name, self.policy, ema=self.ema, train_state=train, schema=self.schema,
                               meta={"config": json.dumps(to_plain(self.cfg))})

    def _resume(self, path: Path) -> None:
        payload = load_checkpoint(path, map_location=self.device)
        tr = payload.get("train") or {}
        if tr.get("kind") != "pretrain_gaussian":
            raise CheckpointError(f"{path} is not a Gaussian pretraining checkpoint")
        try:
            self.policy.load_state_dict(payload["model"])
        except RuntimeError as e:
            raise CheckpointError(f"cannot resume from {path}: the policy config changed ({e})") from e
        self.ema.load_state_dict(payload["ema"])
        self.opt.load_state_dict(tr["optimizer"])
        self.sched.load_state_dict(tr["scheduler"])
        self.step = int(tr["step"])
        self.history = json.loads(tr["history"])
        d = tr["data"]
        if (d["windows"], d["batch_size"], d["seed"]) != (self.order.n, self.order.batch_size, self.order.seed):
            log.warning("resume: the data changed (windows/batch size/seed); the batch order is not the same run's")
        log.info("resumed from %s at step %d", path, self.step)

    # --- loop ---
    @torch.no_grad()
    def validate(self) -> float | None:
        if self.val_batches is None:
            return None
        self.ema.model.eval()
        losses, n = 0.0, 0
        for b in self.val_batches.epochs(self.config.train.batch_size, shuffle=False, drop_last=False):
            k = b["action"].shape[0]
            losses += float(self.ema.model.loss(b["obs"], b["action"])) * k
            n += k
        return losses / max(n, 1)

    def evaluate(self) -> dict[str, Any] | None:
        e = self.config.eval
        if self._evaluator is None:
            factory = hydra.utils.get_method(e.evaluator.replace(":", "."))
            self._evaluator = factory(self.cfg, n_envs=e.n_envs, n_workers=e.n_workers)
        video = self.out / "videos" / f"step_{self.step}" if e.video else None
        return self._evaluator(self.ema.model, episodes=e.episodes, video_dir=video)

    def close(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    def train(self) -> dict[str, Any]:
        tc, ec = self.config.train, self.config.eval
        stop = tc.steps if tc.chunk_steps is None else min(tc.steps, self.step + tc.chunk_steps)
        self.policy.train()
        running, t0 = [], time.perf_counter()
        try:
            while self.step < stop:
                b = self.batches.batch(self.order.batch_indices(self.step))
                loss = self.policy.loss(b["obs"], b["action"])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), tc.grad_clip)
                self.opt.step()
                self.sched.step()
                self.ema.update(self.policy)
                self.step += 1
                running.append(loss.item())
                if self.step % tc.log_every == 0:
                    row = {"step": self.step, "train_loss": float(np.mean(running)),
                           "lr": self.sched.get_last_lr()[0], "wall_s": time.perf_counter() - t0}
                    self.history.append(row)
                    log.info("step %d: loss %.5f (%.0f steps/s)", self.step, row["train_loss"],
                             len(running) / max(1e-9, row["wall_s"]))
                    running, t0 = [], time.perf_counter()
                if self.step % tc.val_every == 0 or self.step == tc.steps:
                    val = self.validate()
                    if val is not None:
                        self.history.append({"step": self.step, "val_loss": val})
                        log.info("step %d: val loss (EMA) %.5f", self.step, val)
                if ec.every and (self.step % ec.every == 0 or self.step == tc.steps):
                    res = self.evaluate()
                    self.history.append({"step": self.step, "success_rate": res["success_rate"],
                                         "milestones": dict(res.get("milestone_rates", {}))})
                    log.info("step %d: success %.2f over %d episodes", self.step, res["success_rate"],
                             len(res["episodes"]))
                if self.step % tc.save_every == 0 or self.step == stop:
                    self.save()
        finally:
            self.close()
            (self.out / "history.json").write_text(json.dumps(self.history))
        return {"step": self.step, "history": self.history}


@hydra.main(config_path="../configs", config_name="pretrain_gaussian", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    result = GaussianTrainer(cfg).train()
    print(f"Gaussian BC at step {result['step']}/{cfg.train.steps}; checkpoint {Path(cfg.out_dir) / 'last.pt'}")


if __name__ == "__main__":
    main()
