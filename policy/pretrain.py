"""Behaviour-cloning pretraining of the ViT diffusion policy on a zarr demo set.

    python policy/pretrain.py task=one_leg                   # default set, ViT + MLP denoiser
    python policy/pretrain.py policy=state_mlp obs=state     # state-only variant
    python policy/pretrain.py train.chunk_steps=2000         # a resumable chunk; run again to continue
    torchrun --nproc_per_node=N policy/pretrain.py ...       # multi-GPU (DDP)

Writes <out_dir>/last.pt (resume point), <out_dir>/step_<k>.pt, TensorBoard logs in
<out_dir>/tb, rollout videos and a learning-curve plot. Simulation evaluation is wired in by
config (`eval.evaluator`), so this module never imports sim/.

The Hydra config is read through `TrainConfig` (and `PolicyConfig` for the policy group) with
`data.typed_config.from_mapping`: the YAML matches the dataclasses field for field, and a
typo'd key fails with its dotted path. A resumed chunk continues the run exactly (weights, EMA,
optimiser, schedule, RNG states and the position in the data order: `DataOrder`).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from data.device_batches import DeviceWindowBatches
from data.episodes import EpisodeDataset
from data.normalizer import Normalizer, load_or_fit, modes_to_fit
from data.sampler import SplitConfig, WindowConfig, select_and_split
from data.schema import ActionSchema, ObsSchema
from data.torch_dataset import EpisodeWindowDataset, WindowDatasetConfig, make_loader
from data.typed_config import from_mapping, to_plain
from policy import resolve_device
from policy.action_repr import RELATIVE, RELATIVE_KEY, relative_chunks
from policy.checkpoint import (PART_DIM, CheckpointError, checkpoint_weights, load_checkpoint, obs_schema_for,
                               save_checkpoint, schema_mismatch)
from policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from policy.ema import EMA
from policy.frozen_features import cached_frame_features
from policy.train_log import TrainLog, WandbConfig

log = logging.getLogger("pretrain")


# --- the typed config (configs/pretrain.yaml and configs/policy/*.yaml, field for field) -------
@dataclass
class DataConfig:
    """`data`: which episodes train, how windows are read, how low-dim keys are normalised."""

    val_ratio: float = 0.1  # episodes held out for the validation loss
    success_only: bool = True
    num_workers: int = 2  # DataLoader workers (batches not gathered on the device)
    cache_images: bool | Literal["auto"] = "auto"  # decoded images in RAM (auto: if they fit the budget)
    on_device: bool | Literal["auto"] = "auto"  # gather batches on the training device (auto: on CUDA)
    feature_views: int = 4  # frozen image encoders: augmented views of each frame's features
    # modes of the low-dim keys; every listed key the dataset has is fitted (parts too, for critics)
    norm: dict[str, str] = field(default_factory=lambda: {"state": "minmax", "parts": "minmax",
                                                          "action": "minmax"})


@dataclass
class TrainLoopConfig:
    """`train`: optimisation, schedule, chunked runs, warm starts, logging and saving cadence."""

    steps: int = 30000
    batch_size: int = 256
    lr: float = 3.0e-4
    weight_decay: float = 1.0e-6
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_power: float = 0.75
    amp: bool = True  # bf16 autocast on CUDA
    chunk_steps: int | None = None  # stop after this many steps in this run (resumable chunks)
    init_from: str | None = None  # warm start from this checkpoint's (EMA) weights
    freeze_image_encoders: bool = False
    log_every: int = 50
    val_every: int = 1000
    save_every: int = 1000


@dataclass
class EvalConfig:
    """`eval`: rollout evaluation in the simulator, wired by config (policy/ never imports sim/)."""

    every: int = 5000  # 0: off
    episodes: int = 8
    n_envs: int = 4
    n_workers: int = 2
    ddim_steps: int | None = 5  # None: the policy's diffusion.ddim_steps
    video: bool = True
    # a factory (hydra cfg, n_envs, n_workers) -> callable(policy, episodes, ddim_steps, video_dir) -> dict
    # with close(); wired by config so policy/ never imports sim/
    evaluator: str = "sim.evaluate:SimEvaluation"


@dataclass
class TrainConfig:
    """Everything pretraining reads from the Hydra config (configs/pretrain.yaml).

    The simulation groups (`task`, `sim`, `env`, `obs`) are handed to `eval.evaluator` as they
    are, which builds (and validates) its env config from them; pretraining itself reads
    `task.name` (the dataset must be for it), and the policy group takes its cameras and image
    size from `obs` by interpolation.
    """

    dataset: str
    out_dir: str
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    seed: int = 0
    resume: bool = True  # continue from <out_dir>/last.pt if it exists
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    task: dict[str, Any] = field(default_factory=dict)
    sim: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    obs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hydra(cls, cfg) -> "TrainConfig":
        """From the composed Hydra config (interpolations resolved; a typo'd key is a KeyError
        naming its dotted path, e.g. `policy.mlp.widht`)."""
        plain = to_plain(cfg)
        plain.pop("hydra", None)
        policy = plain.get("policy") or {}
        derived = {"policy.action_dim": policy.get("action_dim"),
                   "policy.obs.state_dim": (policy.get("obs") or {}).get("state_dim")}
        for key, value in derived.items():  # they would be silently overridden
            if value is not None:
                raise ValueError(f"{key} is set from the dataset (its action schema, the widths of "
                                 f"policy.obs.lowdim_keys); leave it out of the config")
        return from_mapping(cls, plain)


def dataset_schemas(ds: EpisodeDataset, pcfg: PolicyConfig) -> tuple[ObsSchema, ActionSchema, int]:
    """The typed obs/action schema of a policy trained on `ds`, and its low-dim width."""
    lowdim_keys = list(pcfg.obs.lowdim_keys)
    state_dim = sum(int(ds.array(k).shape[1]) for k in lowdim_keys)
    n_parts = int(ds.array("parts").shape[1]) // PART_DIM if "parts" in ds.keys else None
    obs = obs_schema_for(pcfg.obs.cameras, pcfg.obs.image_hw, lowdim_keys, state_dim, n_parts=n_parts)
    stored = (ds.attrs.get("schema") or {}).get("action")
    action = ActionSchema.from_dict(stored) if stored else ActionSchema()
    width = int(ds.array("action").shape[1])
    if width != action.dim:
        raise ValueError(f"dataset {ds.path}: actions have {width} dims, the action schema {action.dim}")
    return obs, action, state_dim


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


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and python RNG states, as tensors and plain containers
    (readable with `torch.load(weights_only=True)`)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "state": [int(v) for v in py_state], "gauss": gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if state.get("cuda") is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class DataOrder:
    """The order of the training batches, as a pure function of the batch number.

    Epoch e is a permutation of the n training windows drawn from a generator seeded by
    (seed, e), cut into n // batch_size batches (the remainder is dropped, as `drop_last`);
    batch g of a run is batch g % per_epoch of epoch g // per_epoch. A resumed run therefore
    continues mid-epoch with exactly the batches the uninterrupted run would have seen (the
    checkpoint stores g and what the order depends on). Frozen-feature batches draw their
    augmented views from a generator seeded by (seed, g).
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size < 1 or n < batch_size:
            raise ValueError(f"the training set has {n} windows, fewer than train.batch_size={batch_size}")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.per_epoch = self.n // self.batch_size
        self._perm: tuple[int, torch.Tensor] | None = None

    def _seed(self, *parts: int) -> int:
        entropy = [self.seed & 0xFFFFFFFFFFFFFFFF, *parts]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self._seed(0, epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=gen))
        return self._perm[1]

    def batch_indices(self, g: int) -> torch.Tensor:
        """Window indices of batch `g` of the run."""
        epoch, pos = divmod(int(g), self.per_epoch)
        return self.permutation(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size]

    def views_generator(self, g: int) -> torch.Generator:
        return torch.Generator().manual_seed(self._seed(1, int(g)))

    def indices(self, start: int) -> Iterator[int]:
        """Endless window indices from batch `start` on (a DataLoader sampler)."""
        for g in itertools.count(start):
            yield from self.batch_indices(g).tolist()


class _IndexStream(torch.utils.data.Sampler):
    def __init__(self, order: DataOrder, start: int):
        self.order, self.start = order, start

    def __iter__(self):
        return self.order.indices(self.start)


class Trainer:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg  # the Hydra config: eval.evaluator reads its simulation groups
        self._evaluator = None
        self.config = c = TrainConfig.from_hydra(cfg)
        self.out = Path(c.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1:
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        self.device = resolve_device(c.device) if self.world == 1 or not torch.cuda.is_available() else \
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        seed_everything(c.seed + self.rank)

        ds = EpisodeDataset(c.dataset)
        lowdim_keys = list(c.policy.obs.lowdim_keys)
        ds.check_compatible(task=c.task["name"], required_keys=[*lowdim_keys, "action"])
        self.train_eps, self.val_eps = select_and_split(
            ds, SplitConfig(val_ratio=c.data.val_ratio, seed=c.seed, success_only=c.data.success_only))
        # the privileged part poses are always fitted when the dataset has them (critics need them)
        required = [*lowdim_keys, "action", *(["parts"] if "parts" in ds.keys else [])]
        modes = modes_to_fit(ds.keys, c.data.norm, required, where="data.norm")
        self.normalizer = load_or_fit(ds, modes, episodes=self.train_eps)
        self.obs_schema, self.action_schema, state_dim = dataset_schemas(ds, c.policy)
        self.pcfg = dataclasses.replace(c.policy, action_dim=self.action_schema.dim,
                                        obs=dataclasses.replace(c.policy.obs, state_dim=state_dim))
        reason = schema_mismatch(self.pcfg, self.obs_schema, self.action_schema)
        if reason:  # a bug if it happens: the schema is built from this config
            raise ValueError(f"the dataset's obs/action schema does not fit the policy config: {reason}")
        obs_keys = (*lowdim_keys, *[f"rgb/{cam}" for cam in self.pcfg.obs.cameras])
        wcfg = WindowDatasetConfig(obs_keys=obs_keys, window=WindowConfig(obs_history=self.pcfg.obs.obs_history,
                                                                          horizon=self.pcfg.horizon),
                                   image_layout="hwc", cache_images=c.data.cache_images)
        self.train_set = EpisodeWindowDataset(c.dataset, self.train_eps, wcfg)
        self.val_set = EpisodeWindowDataset(c.dataset, self.val_eps, wcfg) if len(self.val_eps) else None
        if self.pcfg.action_repr == RELATIVE:
            self.normalizer = with_relative_action_stats(self.normalizer, self.train_set, c.data.norm["action"])
        self.schema = {"obs": self.obs_schema, "action": self.action_schema, "dataset": str(c.dataset),
                       "task": c.task["name"]}

        self.policy = DiffusionPolicy(self.pcfg, self.normalizer)
        self.policy.obs_schema, self.policy.action_schema = self.obs_schema, self.action_schema
        resuming = c.resume and (self.out / "last.pt").exists()
        if not resuming and self.policy.encoder.load_pretrained_backbones():
            log.info("image backbones initialised from %s", self.pcfg.obs.timm_weights)
        if not resuming and c.train.init_from:
            self._init_weights(Path(c.train.init_from))
        self.frozen_cameras = c.train.freeze_image_encoders
        if self.frozen_cameras:
            if not self.pcfg.obs.cameras:
                raise ValueError("train.freeze_image_encoders needs a policy with cameras (policy.obs.cameras)")
            if not (resuming or c.train.init_from or self.pcfg.obs.timm_weights):
                log.warning("image encoders frozen at their random initialisation (no train.init_from)")
            self.policy.encoder.freeze_cameras()
        self.policy.to(self.device)
        self.model = self.policy
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.policy)
        self.ema = EMA(self.policy, power=c.train.ema_power)
        self.opt = torch.optim.AdamW([q for q in self.policy.parameters() if q.requires_grad], lr=c.train.lr,
                                     weight_decay=c.train.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(c.train.warmup_steps, c.train.steps))
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._running: list[float] = []  # losses since the last log line (kept across chunks)
        self._on_device: dict[int, DeviceWindowBatches | None] = {}
        # every rank draws its own order (the seed includes the rank): DDP ranks see other windows
        self.data_order = DataOrder(len(self.train_set), c.train.batch_size, c.seed + 7919 * self.rank)
        self._batch_offset = 0  # batch number of the run = step + offset (see DataOrder)
        if resuming:
            self._resume(self.out / "last.pt")

    # --- persistence -------------------------------------------------------------------------
    def _data_state(self) -> dict[str, Any]:
        g = self.step + self._batch_offset
        return {"batch": g, "epoch": g // self.data_order.per_epoch, "position": g % self.data_order.per_epoch,
                "windows": self.data_order.n, "batch_size": self.data_order.batch_size, "seed": self.config.seed}

    def _train_state(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "rng": rng_state(), "data": self._data_state(), "running_losses": list(self._running),
                "history": json.dumps(self.history)}

    def save(self, name: str) -> Path:
        return save_checkpoint(self.out / name, self.policy, ema=self.ema, train_state=self._train_state(),
                               schema=self.schema, meta={"config": json.dumps(to_plain(self.cfg))})

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
        """Continue the run of `path` exactly: weights, EMA, optimiser, schedule, step, RNG
        states and the position in the data order."""
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
        self.step = int(tr["step"])
        self.history = json.loads(tr["history"])
        self._running = [float(v) for v in tr.get("running_losses", [])]
        if self.rank == 0 and "rng" in tr:
            set_rng_state(tr["rng"])
        elif self.rank == 0 and "torch_rng" in tr:  # checkpoints before the full RNG state
            torch.set_rng_state(tr["torch_rng"].cpu())
        else:  # only rank 0's states are saved: the other ranks draw fresh ones of their own
            seed_everything(self.config.seed + self.rank + 104729 * self.step)
        d, order = tr.get("data"), self.data_order
        if d and (d["windows"], d["batch_size"], d["seed"]) == (order.n, order.batch_size, self.config.seed):
            self._batch_offset = int(d["batch"]) - self.step
        else:
            log.warning("resume: the data order starts afresh at step %d (%s)", self.step,
                        "the checkpoint has no data-order state" if not d else
                        f"windows/batch size/seed were {d['windows']}/{d['batch_size']}/{d['seed']}, "
                        f"now {order.n}/{order.batch_size}/{self.config.seed}")
            self._batch_offset = -self.step
        log.info("resumed from %s at step %d", path, self.step)

    # --- loop -------------------------------------------------------------------------------
    def _device_batches(self, dataset) -> DeviceWindowBatches | None:
        """The dataset as device-resident batches, when `data.on_device` asks for it (auto: on CUDA,
        with the image cache built and room to spare on the GPU), or always with frozen image
        encoders (features in place of images); built once per dataset."""
        if self.frozen_cameras:
            return self._feature_batches(dataset)
        mode = self.config.data.on_device
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
            views = self.config.data.feature_views if dataset is self.train_set else 1
            feats = cached_frame_features(self.policy.encoder, dataset, self.out / "features", views=views,
                                          seed=self.config.seed, device=self.device)
            self._on_device[key] = DeviceWindowBatches(dataset, self.device, image_features=feats)
            log.info("frozen image encoders: batches from %.1f MB of cached features (%d views)",
                     self._on_device[key].nbytes() / 2**20, views)
        return self._on_device[key]

    def _loader(self, dataset, **kw):
        workers = self.config.data.num_workers
        return make_loader(dataset, batch_size=self.config.train.batch_size, num_workers=workers,
                           multiprocessing_context="spawn" if workers > 0 else None, **kw)

    def _val_batches(self):
        """One ordered pass over the validation windows."""
        on_device = self._device_batches(self.val_set)
        if on_device is not None:
            return on_device.epochs(self.config.train.batch_size, shuffle=False, drop_last=False)
        return iter(self._loader(self.val_set, shuffle=False, drop_last=False, seed=0))

    def train_batches(self):
        """Endless training batches from the current step on, in the run's data order
        (`DataOrder`): a resumed run continues exactly where the interrupted one stopped."""
        start, order = self.step + self._batch_offset, self.data_order
        on_device = self._device_batches(self.train_set)
        if on_device is not None:
            views = bool(on_device.features)
            for g in itertools.count(start):
                yield on_device.batch(order.batch_indices(g), views=order.views_generator(g) if views else None)
        else:
            yield from self._loader(self.train_set, shuffle=False, drop_last=False, seed=order.seed,
                                    sampler=_IndexStream(order, start))

    def _to_device(self, batch):
        obs = {k: v.to(self.device, non_blocking=True) for k, v in batch["obs"].items()}
        return obs, batch["action"].to(self.device, non_blocking=True)

    def _loss(self, batch) -> torch.Tensor:
        obs, action = self._to_device(batch)
        use_amp = self.config.train.amp and self.device.type == "cuda"
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
        for i, batch in enumerate(self._val_batches()):
            if i >= max_batches:
                break
            losses.append(self._loss(batch).item())
        torch.set_rng_state(gen_state)
        self.policy.train()
        return float(np.mean(losses)) if losses else None

    def evaluate(self) -> dict[str, Any] | None:
        e = self.config.eval
        if not e.every or self.rank != 0:
            return None
        if self._evaluator is None:  # built once: its envs (and GL contexts) serve every evaluation
            factory = hydra.utils.get_method(e.evaluator.replace(":", "."))
            self._evaluator = factory(self.cfg, n_envs=e.n_envs, n_workers=e.n_workers)
        video_dir = self.out / "videos" / f"step_{self.step}" if e.video else None
        self.ema.model.eval()
        return self._evaluator(self.ema.model, episodes=e.episodes, ddim_steps=e.ddim_steps, video_dir=video_dir)

    def close(self) -> None:
        """Release the evaluation envs (worker processes); `train` does it when it returns."""
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    def train(self) -> dict[str, Any]:
        from tqdm import tqdm

        tc, ec = self.config.train, self.config.eval
        total = tc.steps
        stop = total if tc.chunk_steps is None else min(total, self.step + tc.chunk_steps)
        writer = TrainLog(self.out, self.config.wandb, to_plain(self.cfg)) if self.rank == 0 else None
        batches = self.train_batches()
        self.policy.train()
        bar = tqdm(total=stop, initial=self.step, desc="pretrain", unit="step", disable=self.rank != 0)
        t0, timed = time.perf_counter(), 0
        while self.step < stop:
            loss = self._loss(next(batches))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), tc.grad_clip)
            self.opt.step()
            self.sched.step()
            self.ema.update(self.policy)
            self.step += 1
            self._running.append(loss.item())
            timed += 1
            bar.update(1)
            if self.step % tc.log_every == 0 and writer is not None:
                rate = timed * tc.batch_size / (time.perf_counter() - t0)
                mean = float(np.mean(self._running))
                writer.scalar("train/loss", mean, self.step)
                writer.scalar("train/lr", self.sched.get_last_lr()[0], self.step)
                writer.scalar("train/grad_norm", float(grad_norm), self.step)
                writer.scalar("train/samples_per_s", rate, self.step)
                self.history.append({"step": self.step, "train_loss": mean})
                bar.set_postfix(loss=f"{mean:.4f}", samples_s=f"{rate:.0f}")
                self._running, t0, timed = [], time.perf_counter(), 0
            if self.step % tc.val_every == 0 or self.step == total:
                val = self.validate()
                if val is not None and writer is not None:
                    writer.scalar("val/loss", val, self.step)
                    self.history.append({"step": self.step, "val_loss": val})
            if ec.every and (self.step % ec.every == 0 or self.step == total):
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
            if self.rank == 0 and (self.step % tc.save_every == 0 or self.step == stop):
                self.save("last.pt")
                if self.step % tc.save_every == 0:
                    self.save(f"step_{self.step}.pt")
        bar.close()
        self.close()
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
