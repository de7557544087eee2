"""Behaviour-cloning pretraining of the ViT diffusion policy on a zarr demo set.

    python policy/pretrain.py task=one_leg                   # default set, ViT + MLP denoiser
    python policy/pretrain.py policy=state_mlp obs=state     # state-only variant
    python policy/pretrain.py train.chunk_steps=2000         # a resumable chunk; run again to continue
    torchrun --nproc_per_node=N policy/pretrain.py ...       # multi-GPU (DDP)

Writes <out_dir>/last.pt (resume point), <out_dir>/step_<k>.pt, TensorBoard logs in
<out_dir>/tb, rollout videos and a learning-curve plot. Simulation evaluation is wired in by
config (`eval.evaluator`), so this module never imports sim/.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from data.device_batches import DeviceWindowBatches
from data.episodes import EpisodeDataset
from data.normalizer import Normalizer, load_or_fit
from data.sampler import SplitConfig, WindowConfig, select_and_split
from data.schema import ActionSchema
from data.torch_dataset import EpisodeWindowDataset, WindowDatasetConfig, make_loader
from policy import resolve_device
from policy.action_repr import RELATIVE, RELATIVE_KEY, relative_chunks
from policy.checkpoint import CheckpointError, checkpoint_weights, load_checkpoint, save_checkpoint
from policy.denoisers import MLPDenoiserConfig, UNetDenoiserConfig
from policy.diffusion import DiffusionConfig
from policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from policy.ema import EMA
from policy.frozen_features import cached_frame_features
from policy.train_log import TrainLog
from policy.obs_encoder import ObsEncoderConfig
from policy.vit import ViTConfig

log = logging.getLogger("pretrain")


def policy_config(cfg: DictConfig, state_dim: int) -> PolicyConfig:
    """`state_dim`: summed width of the policy's low-dim keys (policy.lowdim_keys)."""
    p = cfg.policy
    cameras = list(cfg.obs.cameras) if p.use_images else []
    return PolicyConfig(
        action_dim=ActionSchema().dim, horizon=int(p.horizon), act_steps=int(p.act_steps), denoiser=p.denoiser,
        action_repr=str(p.action_repr),
        obs_clip=float(p.obs_clip),
        mlp=MLPDenoiserConfig(**OmegaConf.to_container(p.mlp)),
        unet=UNetDenoiserConfig(**OmegaConf.to_container(p.unet)),
        diffusion=DiffusionConfig(**OmegaConf.to_container(p.diffusion)),
        obs=ObsEncoderConfig(cameras=cameras, image_hw=list(cfg.obs.image_hw), state_dim=state_dim,
                             obs_history=int(p.obs_history), share_vit=bool(p.share_vit),
                             lowdim_keys=list(p.lowdim_keys),
                             vit=ViTConfig(**OmegaConf.to_container(p.vit)), state_hidden=int(p.state_hidden),
                             augment_shift=bool(p.augment_shift), backbone=str(p.backbone),
                             timm_model=str(p.timm.model), timm_weights=p.timm.weights,
                             freeze_backbone=bool(p.timm.freeze)),
    )


def with_relative_action_stats(normalizer: Normalizer, train_set: EpisodeWindowDataset, mode: str) -> Normalizer:
    """Add statistics of the training windows' chunks relative to their latest EE pose.

    They depend on the window geometry (horizon, obs_history), not just on frames, so they are
    computed here from the windows rather than cached next to the dataset; it takes well under
    a second for 100 demos.
    """
    w = train_set.windows
    idx = np.arange(len(w))
    rel = relative_chunks(train_set.lowdim["state"], train_set.lowdim["action"], w.obs_indices(idx),
                          w.action_indices(idx))
    extra = Normalizer.from_arrays({RELATIVE_KEY: rel}, {RELATIVE_KEY: mode})
    return Normalizer({**normalizer.keys, **extra.keys})


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))
    return f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1:
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        self.device = resolve_device(cfg.device) if self.world == 1 or not torch.cuda.is_available() else \
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        seed_everything(int(cfg.seed) + self.rank)

        ds = EpisodeDataset(cfg.dataset)
        lowdim_keys = list(cfg.policy.lowdim_keys)
        ds.check_compatible(task=cfg.task.name, required_keys=[*lowdim_keys, "action"])
        self.train_eps, self.val_eps = select_and_split(
            ds, SplitConfig(val_ratio=cfg.data.val_ratio, seed=int(cfg.seed), success_only=bool(cfg.data.success_only)))
        modes = {k: cfg.data.norm[k] for k in (*lowdim_keys, "action")}
        self.normalizer = load_or_fit(ds, modes, episodes=self.train_eps)
        state_dim = sum(ds.array(k).shape[1] for k in lowdim_keys)
        self.pcfg = policy_config(cfg, state_dim)
        obs_keys = (*lowdim_keys, *[f"rgb/{c}" for c in self.pcfg.obs.cameras])
        wcfg = WindowDatasetConfig(obs_keys=obs_keys, window=WindowConfig(obs_history=self.pcfg.obs.obs_history,
                                                                          horizon=self.pcfg.horizon),
                                   image_layout="hwc", cache_images=cfg.data.cache_images)
        self.train_set = EpisodeWindowDataset(cfg.dataset, self.train_eps, wcfg)
        self.val_set = EpisodeWindowDataset(cfg.dataset, self.val_eps, wcfg) if len(self.val_eps) else None
        if self.pcfg.action_repr == RELATIVE:
            self.normalizer = with_relative_action_stats(self.normalizer, self.train_set, cfg.data.norm.action)
        self.schema = {"obs": {"cameras": self.pcfg.obs.cameras, "image_hw": list(cfg.obs.image_hw),
                               "state_dim": state_dim}, "action": ActionSchema().to_dict(),
                       "dataset": str(cfg.dataset), "task": cfg.task.name}

        self.policy = DiffusionPolicy(self.pcfg, self.normalizer)
        resuming = bool(cfg.resume) and (self.out / "last.pt").exists()
        if not resuming and self.policy.encoder.load_pretrained_backbones():
            log.info("image backbones initialised from %s", self.pcfg.obs.timm_weights)
        if not resuming and cfg.train.init_from:
            self._init_weights(Path(cfg.train.init_from))
        self.frozen_cameras = bool(cfg.train.freeze_image_encoders)
        if self.frozen_cameras:
            if not self.pcfg.obs.cameras:
                raise ValueError("train.freeze_image_encoders needs a policy with cameras (policy.use_images=true)")
            if not (resuming or cfg.train.init_from or self.pcfg.obs.timm_weights):
                log.warning("image encoders frozen at their random initialisation (no train.init_from)")
            self.policy.encoder.freeze_cameras()
        self.policy.to(self.device)
        self.model = self.policy
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.policy)
        self.ema = EMA(self.policy, power=float(cfg.train.ema_power))
        self.opt = torch.optim.AdamW([q for q in self.policy.parameters() if q.requires_grad], lr=float(cfg.train.lr),
                                     weight_decay=float(cfg.train.weight_decay))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(int(cfg.train.warmup_steps),
                                                                           int(cfg.train.steps)))
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._on_device: dict[int, DeviceWindowBatches | None] = {}
        if resuming:
            self._resume(self.out / "last.pt")

    # --- persistence -------------------------------------------------------------------------
    def _train_state(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(), "history": json.dumps(self.history)}

    def save(self, name: str) -> Path:
        return save_checkpoint(self.out / name, self.policy, ema=self.ema, train_state=self._train_state(),
                               schema=self.schema, meta={"config": json.dumps(OmegaConf.to_container(self.cfg,
                                                                                                 resolve=True))})

    def _init_weights(self, path: Path) -> None:
        """Start from another run's weights (its EMA weights when it has them) with a fresh
        optimiser, schedule and step count: a warm start, unlike `resume`."""
        payload = load_checkpoint(path)
        try:
            self.policy.load_state_dict(checkpoint_weights(payload))
        except RuntimeError as e:
            raise CheckpointError(f"cannot initialise from {path}: its policy differs from this config ({e})") from e
        log.info("weights initialised from %s", path)

    def _resume(self, path: Path) -> None:
        payload = load_checkpoint(path, map_location=self.device)
        if payload.get("train") is None:
            raise CheckpointError(f"{path} has no training state to resume from")
        try:
            self.policy.load_state_dict(payload["model"])
        except RuntimeError as e:
            raise CheckpointError(f"cannot resume from {path}: the policy config changed ({e})") from e
        self.ema.load_state_dict(payload["ema"])
        tr = payload["train"]
        self.opt.load_state_dict(tr["optimizer"])
        self.sched.load_state_dict(tr["scheduler"])
        torch.set_rng_state(tr["torch_rng"].cpu())
        self.step = int(tr["step"])
        self.history = json.loads(tr["history"])
        log.info("resumed from %s at step %d", path, self.step)

    # --- loop -------------------------------------------------------------------------------
    def _device_batches(self, dataset) -> DeviceWindowBatches | None:
        """The dataset as device-resident batches, when `data.on_device` asks for it (auto: on CUDA,
        with the image cache built and room to spare on the GPU), or always with frozen image
        encoders (features in place of images); built once per dataset."""
        if self.frozen_cameras:
            return self._feature_batches(dataset)
        mode = self.cfg.data.on_device
        if mode not in (True, False, "auto"):
            raise ValueError(f"data.on_device must be true, false or auto, got {mode!r}")
        if mode is False or (mode == "auto" and (self.device.type != "cuda" or
                                                 (dataset.image_keys and not dataset.cached))):
            return None
        key = id(dataset)
        if key not in self._on_device:
            if mode == "auto":
                need = sum(t.numel() for t in dataset.cache.values())
                if need > 0.5 * torch.cuda.mem_get_info(self.device)[0]:
                    log.info("batches from the DataLoader: the image cache (%.1f GB) would take over half the free "
                             "GPU memory", need / 1e9)
                    self._on_device[key] = None
                    return None
            self._on_device[key] = DeviceWindowBatches(dataset, self.device)
            log.info("batches gathered on %s from %.1f MB of cached windows", self.device,
                     self._on_device[key].nbytes() / 2**20)
        return self._on_device[key]

    def _feature_batches(self, dataset) -> DeviceWindowBatches:
        """Batches carrying the frozen encoders' features, computed once per frame (augmented
        views for training, the plain view for validation)."""
        key = id(dataset)
        if key not in self._on_device:
            if not dataset.cached:
                raise ValueError("train.freeze_image_encoders computes features from the image cache; "
                                 "set data.cache_images=true (it did not fit the memory budget)")
            views = int(self.cfg.data.feature_views) if dataset is self.train_set else 1
            feats = cached_frame_features(self.policy.encoder, dataset, self.out / "features", views=views,
                                          seed=int(self.cfg.seed), device=self.device)
            self._on_device[key] = DeviceWindowBatches(dataset, self.device, image_features=feats)
            log.info("frozen image encoders: batches from %.1f MB of cached features (%d views)",
                     self._on_device[key].nbytes() / 2**20, views)
        return self._on_device[key]

    def _batches(self, dataset, shuffle: bool, seed: int):
        on_device = self._device_batches(dataset)
        if on_device is not None:
            yield from on_device.epochs(int(self.cfg.train.batch_size), shuffle=shuffle, seed=seed, drop_last=shuffle)
            return
        loader = make_loader(dataset, batch_size=int(self.cfg.train.batch_size), shuffle=shuffle,
                             num_workers=int(self.cfg.data.num_workers), drop_last=shuffle, seed=seed,
                             multiprocessing_context="spawn" if int(self.cfg.data.num_workers) > 0 else None)
        while True:
            for batch in loader:
                yield batch
            if not shuffle:
                return

    def train_batches(self):
        """Endless shuffled training batches from the current step on. Every rank draws its own
        shuffle (the seed includes the rank), so DDP ranks do not train on the same windows."""
        return self._batches(self.train_set, shuffle=True, seed=int(self.cfg.seed) + self.step + 7919 * self.rank)

    def _to_device(self, batch):
        obs = {k: v.to(self.device, non_blocking=True) for k, v in batch["obs"].items()}
        return obs, batch["action"].to(self.device, non_blocking=True)

    def _loss(self, batch) -> torch.Tensor:
        obs, action = self._to_device(batch)
        use_amp = bool(self.cfg.train.amp) and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            return self.model(obs, action)  # through the DDP wrapper when distributed

    @torch.no_grad()
    def validate(self, max_batches: int = 20) -> float | None:
        if self.val_set is None:
            return None
        self.policy.eval()
        losses = []
        gen_state = torch.get_rng_state()
        torch.manual_seed(1234)  # same noise every validation: comparable numbers
        for i, batch in enumerate(self._batches(self.val_set, shuffle=False, seed=0)):
            if i >= max_batches:
                break
            losses.append(self._loss(batch).item())
        torch.set_rng_state(gen_state)
        self.policy.train()
        return float(np.mean(losses)) if losses else None

    def evaluate(self) -> dict[str, Any] | None:
        e = self.cfg.eval
        if not e.every or self.rank != 0:
            return None
        evaluator = hydra.utils.get_method(e.evaluator.replace(":", "."))
        video_dir = self.out / "videos" / f"step_{self.step}" if e.video else None
        self.ema.model.eval()
        return evaluator(self.ema.model, self.cfg, episodes=int(e.episodes), n_envs=int(e.n_envs),
                         n_workers=int(e.n_workers), ddim_steps=int(e.ddim_steps), video_dir=video_dir)

    def train(self) -> dict[str, Any]:
        from tqdm import tqdm

        tc = self.cfg.train
        total = int(tc.steps)
        stop = total if tc.chunk_steps is None else min(total, self.step + int(tc.chunk_steps))
        writer = TrainLog(self.out, self.cfg.wandb, OmegaConf.to_container(self.cfg, resolve=True)) \
            if self.rank == 0 else None
        batches = self.train_batches()
        self.policy.train()
        bar = tqdm(total=stop, initial=self.step, desc="pretrain", unit="step", disable=self.rank != 0)
        t0, running = time.perf_counter(), []
        while self.step < stop:
            loss = self._loss(next(batches))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), float(tc.grad_clip))
            self.opt.step()
            self.sched.step()
            self.ema.update(self.policy)
            self.step += 1
            running.append(loss.item())
            bar.update(1)
            if self.step % int(tc.log_every) == 0 and writer is not None:
                rate = len(running) * int(tc.batch_size) / (time.perf_counter() - t0)
                writer.scalar("train/loss", np.mean(running), self.step)
                writer.scalar("train/lr", self.sched.get_last_lr()[0], self.step)
                writer.scalar("train/grad_norm", float(grad_norm), self.step)
                writer.scalar("train/samples_per_s", rate, self.step)
                self.history.append({"step": self.step, "train_loss": float(np.mean(running))})
                bar.set_postfix(loss=f"{np.mean(running):.4f}", samples_s=f"{rate:.0f}")
                running, t0 = [], time.perf_counter()
            if self.step % int(tc.val_every) == 0 or self.step == total:
                val = self.validate()
                if val is not None and writer is not None:
                    writer.scalar("val/loss", val, self.step)
                    self.history.append({"step": self.step, "val_loss": val})
            if self.cfg.eval.every and (self.step % int(self.cfg.eval.every) == 0 or self.step == total):
                res = self.evaluate()
                if res is not None:
                    writer.scalar("eval/success_rate", res["success_rate"], self.step)
                    rates = dict(res.get("milestone_rates", {}))
                    for name, rate in rates.items():
                        writer.scalar(f"eval/milestone/{name}", rate, self.step)
                    self.history.append({"step": self.step, "success_rate": res["success_rate"], "milestones": rates})
                    log.info("step %d: success %.2f over %d episodes; milestones %s", self.step,
                             res["success_rate"], len(res["episodes"]),
                             ", ".join(f"{k} {v:.2f}" for k, v in rates.items()))
            if self.rank == 0 and (self.step % int(tc.save_every) == 0 or self.step == stop):
                self.save("last.pt")
                if self.step % int(tc.save_every) == 0:
                    self.save(f"step_{self.step}.pt")
        bar.close()
        if writer is not None:
            plot_history(self.history, self.out / "learning_curve.png")
            writer.image("learning_curve", self.out / "learning_curve.png", self.step)
            writer.close()
        return {"step": self.step, "history": self.history}


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, style in (("train_loss", "-"), ("val_loss", "o-")):
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            ax[0].plot(*zip(*pts), style, label=key.replace("_", " "))
    ax[0].set_yscale("log")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("diffusion loss")
    ax[0].legend()
    evals = [h for h in history if "success_rate" in h]
    names = [m for m in (evals[-1].get("milestones") or {}) if m != "success"] if evals else []
    for name in names:  # partial progress: how far the episodes got
        pts = [(h["step"], h["milestones"][name]) for h in evals if name in (h.get("milestones") or {})]
        ax[1].plot(*zip(*pts), ".--", alpha=0.7, label=name.replace("_", " "))
    if evals:
        ax[1].plot([h["step"] for h in evals], [h["success_rate"] for h in evals], "ko-", label="success")
        ax[1].legend(fontsize=7)
    ax[1].set_ylim(-0.05, 1.05)
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("sim rollout rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@hydra.main(config_path="../configs", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = Trainer(cfg).train()
    print(f"pretraining at step {result['step']}/{cfg.train.steps}; checkpoint {Path(cfg.out_dir) / 'last.pt'}")


if __name__ == "__main__":
    main()
