"""Pretraining loop: chunks resume the step count, LR schedule and EMA where they stopped."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from data.episodes import EpisodeWriter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "policy"))

from pretrain import Trainer  # noqa: E402


def tiny_dataset(path):
    w = EpisodeWriter.create(path, attrs={"task": "one_leg"})
    rng = np.random.default_rng(0)
    for i in range(4):
        t = 20
        w.add_episode({"state": rng.normal(size=(t, 10)).astype(np.float32),
                       "parts": rng.normal(size=(t, 18)).astype(np.float32),
                       "action": rng.normal(size=(t, 10)).astype(np.float32)}, success=True, source="scripted", seed=i)
    return path


def cfg_for(tmp_path, out, extra=()):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="pretrain", overrides=[
            f"dataset={tmp_path / 'tiny.zarr'}", f"out_dir={out}", "policy=state_mlp", "obs=state",
            "policy.mlp.hidden=64", "policy.mlp.blocks=1", "train.steps=8", "train.batch_size=8",
            "train.warmup_steps=2", "train.log_every=2", "train.val_every=4", "train.save_every=4",
            "eval.every=0", "data.num_workers=0", "data.val_ratio=0.25", "device=cpu", *extra])


def assert_identical(a, b, path="state"):
    """Nested dicts/lists of tensors and scalars equal bit for bit (dtype and shape too)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs (max abs diff {(a.double() - b.double()).abs().max().item()})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, sorted(a), sorted(b))
        for k in a:
            assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def training_state(trainer):
    return {"model": trainer.policy.state_dict(), "ema": trainer.ema.state_dict(),
            "optimizer": trainer.opt.state_dict(), "scheduler": trainer.sched.state_dict()}


def test_resumed_chunks_match_an_uninterrupted_run(tmp_path):
    """A run cut into chunks (3 steps, then resumed from last.pt for 5) ends bit for bit where an
    uninterrupted 8-step run ends: weights, EMA weights, optimiser and scheduler state, RNG states,
    history. For that, resume restores all of them and continues the data order mid-epoch (60
    training windows / batch 8: epoch 0 has 7 batches, so the resumed chunk crosses into epoch 1)."""
    tiny_dataset(tmp_path / "tiny.zarr")
    peek = Trainer(cfg_for(tmp_path, tmp_path / "peek"))
    assert peek.data_order.per_epoch == 7
    expected = [b for b, _ in zip(peek.train_batches(), range(8))]  # what an uninterrupted run draws
    assert not torch.equal(expected[0]["action"], expected[1]["action"])
    full = Trainer(cfg_for(tmp_path, tmp_path / "full"))
    full.train()
    first = Trainer(cfg_for(tmp_path, tmp_path / "chunks", ["train.chunk_steps=3"]))
    assert first.train()["step"] == 3
    second = Trainer(cfg_for(tmp_path, tmp_path / "chunks"))  # resume=true by default
    assert second.step == 3
    # the resumed run draws exactly the batches the uninterrupted one drew from step 3 on
    for i, (want, got) in enumerate(zip(expected[3:], second.train_batches())):
        assert_identical(want, got, f"batch {3 + i}")
    assert second.train()["step"] == 8
    assert_identical(training_state(second), training_state(full))
    assert second.history == full.history and [h["step"] for h in full.history if "train_loss" in h] == [2, 4, 6, 8]
    saved = {name: torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("full", "chunks")}
    for key in ("model", "ema", "normalizer", "schema", "config"):
        assert_identical(saved["chunks"][key], saved["full"][key], key)
    assert_identical(saved["chunks"]["train"], saved["full"]["train"], "train")  # rng, data position, ...
    assert saved["full"]["train"]["data"] == {"batch": 8, "epoch": 1, "position": 1, "windows": 60, "batch_size": 8,
                                              "seed": 0}
    assert (tmp_path / "chunks" / "last.pt").exists() and (tmp_path / "chunks" / "learning_curve.png").exists()


def test_a_changed_dataset_restarts_the_data_order_on_resume(tmp_path, caplog):
    """A resume whose training set no longer has the windows the order was drawn over cannot
    continue it: it starts a fresh order (and says so) instead of silently mixing two."""
    tiny_dataset(tmp_path / "tiny.zarr")
    Trainer(cfg_for(tmp_path, tmp_path / "run", ["train.chunk_steps=3"])).train()
    with caplog.at_level("WARNING", logger="pretrain"):
        resumed = Trainer(cfg_for(tmp_path, tmp_path / "run", ["train.batch_size=4"]))
    assert resumed.step == 3 and "data order starts afresh" in caplog.text
    fresh = Trainer(cfg_for(tmp_path, tmp_path / "fresh", ["train.batch_size=4"]))
    assert_identical(next(resumed.train_batches()), next(fresh.train_batches()))


def test_rollout_evaluation_runs_chunks_in_sim_and_reports_milestones(tmp_path):
    """The trainer's sim evaluation: episodes of a (barely trained) relative-action policy in
    the real one_leg env, chunked, with per-episode milestones and their rates."""
    tiny_dataset(tmp_path / "tiny.zarr")
    cfg = cfg_for(tmp_path, tmp_path / "ev", ["eval.every=8", "eval.episodes=3", "eval.n_envs=2", "eval.n_workers=0",
                                              "eval.video=false", "task.max_episode_steps=10",
                                              "policy.obs.obs_history=2", "policy.act_steps=3"])
    trainer = Trainer(cfg)
    assert trainer.pcfg.action_repr == "relative"
    trainer.train()
    res = trainer.evaluate()
    assert len(res["episodes"]) == 3 and res["success_rate"] == 0.0
    # truncated at the task's step limit, or earlier if the random arm knocked a part off the table
    assert all(1 <= e["length"] <= 10 for e in res["episodes"])
    assert set(res["milestone_rates"]) == {"top_in_corner", "leg_lifted", "leg_upright", "thread_engaged",
                                           "success"}
    assert res["milestone_rates"]["thread_engaged"] == 0.0
    again = trainer.evaluate()  # same env seeds and denoising noise: the same episodes
    assert again["episodes"] == res["episodes"]
    evals = [h for h in trainer.history if "success_rate" in h]
    assert evals and evals[-1]["milestones"] == res["milestone_rates"]


def test_eval_policy_tool_takes_the_obs_setup_from_the_checkpoint(tmp_path):
    """tools/eval_policy.py: a checkpoint in, success and milestone rates + summary.json out."""
    from tests.conftest import compose_config
    from tools.eval_policy import run

    tiny_dataset(tmp_path / "tiny.zarr")
    Trainer(cfg_for(tmp_path, tmp_path / "run")).train()
    cfg = compose_config("eval_policy", [f"checkpoint={tmp_path / 'run' / 'last.pt'}", "episodes=2", "env.n_envs=2",
                                         "env.n_workers=0", "task.max_episode_steps=6", "video.enabled=false",
                                         "obs=pixel"])  # the checkpoint is state-only: overridden
    summary = run(cfg, tmp_path)
    assert summary["obs"] == "state"
    assert summary["n_episodes"] == 2 and summary["success_rate"] == 0.0
    assert [e["seed"] for e in summary["episodes"]] == [cfg.seed, cfg.seed + 1]
    assert set(summary["milestone_rates"]) >= {"leg_lifted", "thread_engaged"}
    assert (tmp_path / "summary.json").exists()


def _ddp_worker(rank, world, tmp, port, queue):
    import os

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(cfg_for(Path(tmp), Path(tmp) / "ddp", ["train.steps=3", "train.val_every=100"]))
    first = next(trainer.train_batches())["action"].numpy()
    trainer.train()
    flat = torch.cat([p.detach().flatten() for p in trainer.policy.parameters()])
    queue.put((rank, (flat.numpy(), first)))
    torch.distributed.destroy_process_group()


def test_ddp_on_cpu_keeps_the_ranks_identical(tmp_path):
    """torchrun-style DDP (gloo on CPU): two ranks with different data order end each step with
    the same weights, because gradients are all-reduced through the DDP-wrapped forward."""
    import socket

    import torch.multiprocessing as mp

    tiny_dataset(tmp_path / "tiny.zarr")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path), port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    np.testing.assert_array_equal(got[0][0], got[1][0])
    assert got[0][1].shape == got[1][1].shape and not np.array_equal(got[0][1], got[1][1])  # own data per rank
    assert (tmp_path / "ddp" / "last.pt").exists()  # written by rank 0 only


def test_data_on_device_selects_device_batches(tmp_path):
    import pytest

    from data.device_batches import DeviceWindowBatches

    tiny_dataset(tmp_path / "tiny.zarr")
    picks = {}
    with pytest.raises(ValueError, match=r"^data\.on_device: expected bool or 'auto', got str 'sometimes'$"):
        Trainer(cfg_for(tmp_path, tmp_path / "sometimes", ["data.on_device=sometimes"]))
    for mode in ("true", "false", "auto"):
        trainer = Trainer(cfg_for(tmp_path, tmp_path / mode, [f"data.on_device={mode}"]))
        picks[mode] = trainer._device_batches(trainer.train_set)
        batch = next(trainer.train_batches())
        assert batch["action"].shape == (8, 8, 10) and torch.isfinite(batch["action"]).all()
    assert isinstance(picks["true"], DeviceWindowBatches)
    assert picks["false"] is None and picks["auto"] is None  # auto: only on CUDA
    trainer = Trainer(cfg_for(tmp_path, tmp_path / "dev_run", ["data.on_device=true"]))
    trainer.train()
    assert trainer.step == 8 and np.isfinite([h["train_loss"] for h in trainer.history if "train_loss" in h]).all()


def tiny_pixel_dataset(path, hw=(16, 16), parts=False):
    w = EpisodeWriter.create(path, attrs={"task": "one_leg"})
    rng = np.random.default_rng(1)
    for i in range(4):
        t = 12
        frames = {"state": rng.normal(size=(t, 10)).astype(np.float32),
                  "action": rng.normal(size=(t, 10)).astype(np.float32),
                  "rgb/front": rng.integers(0, 256, (t, *hw, 3), dtype=np.uint8),
                  "rgb/wrist": rng.integers(0, 256, (t, *hw, 3), dtype=np.uint8)}
        if parts:
            frames["parts"] = rng.normal(size=(t, 18)).astype(np.float32)
        w.add_episode(frames, success=True, source="scripted", seed=i)
    return path


def pixel_cfg_for(tmp_path, out, extra=()):
    return cfg_for(tmp_path, out, ["policy=vit_mlp", "obs=pixel", "obs.image_hw=[16,16]", f"dataset={tmp_path / 'px.zarr'}",
                                   "policy.obs.vit.dim=32", "policy.obs.vit.heads=2", "policy.obs.vit.base_grid=2",
                                   "policy.obs.vit.out_dim=16", "policy.obs.obs_history=2", "policy.act_steps=4",
                                   "data.cache_images=true", *extra])


def test_frozen_image_encoders_train_the_rest_from_cached_features(tmp_path, monkeypatch):
    """Warm start + frozen cameras: the encoders keep the initial weights, batches carry their
    cached features (augmented views in training), and those features give the policy exactly the
    conditioning its images give it."""
    from policy.checkpoint import CheckpointError

    tiny_pixel_dataset(tmp_path / "px.zarr")
    first = Trainer(pixel_cfg_for(tmp_path, tmp_path / "e2e", ["train.steps=4"]))
    first.train()
    init = torch.load(tmp_path / "e2e" / "last.pt", weights_only=True)["ema"]["model"]

    frozen = Trainer(pixel_cfg_for(tmp_path, tmp_path / "frozen", ["train.steps=6", f"train.init_from={tmp_path / 'e2e' / 'last.pt'}",
                                                                   "train.freeze_image_encoders=true", "data.feature_views=3"]))
    assert frozen.step == 0 and frozen.sched.last_epoch == 0  # a warm start, not a resume
    batch = next(frozen.train_batches())
    assert set(batch["obs"]) == {"state", "feat/front", "feat/wrist"}
    assert batch["obs"]["feat/front"].shape == (8, 2, 16)
    feats = frozen._feature_batches(frozen.train_set).features["rgb/front"]  # (rows, views, D)
    assert feats.shape[1:] == (3, 16) and not torch.allclose(feats[:, 0], feats[:, 1])  # shifted views differ
    drawn = batch["obs"]["feat/front"].reshape(-1, 16)
    assert all(any(torch.equal(f, v) for v in feats.reshape(-1, 16)) for f in drawn)  # each is a cached view

    frozen.train()
    sd = frozen.policy.state_dict()
    for name, value in sd.items():
        if name.startswith("encoder.vits."):
            torch.testing.assert_close(value, init[name], rtol=0, atol=0)
    assert any(not torch.equal(v, init[k]) for k, v in sd.items() if k.startswith("denoiser."))  # the rest trained

    # view 0 is the unshifted image: features and images condition the policy identically
    val = next(frozen._val_batches())
    rows = frozen.val_set.cache_rows[frozen.val_set.windows.obs_indices(np.arange(len(val["action"])))]
    images = {k: frozen.val_set.cache[k][torch.as_tensor(rows)] for k in ("rgb/front", "rgb/wrist")}
    frozen.policy.eval()
    with torch.no_grad():
        from_images = frozen.policy.condition({"state": val["obs"]["state"], **images})
        from_features = frozen.policy.condition(val["obs"])
    torch.testing.assert_close(from_features, from_images, rtol=1e-5, atol=1e-5)

    # a resumed chunk reads the features back from the run directory instead of recomputing them
    import policy.frozen_features as ff

    def recompute(*a, **k):
        raise AssertionError("features recomputed")

    monkeypatch.setattr(ff, "frame_features", recompute)
    resumed = Trainer(pixel_cfg_for(tmp_path, tmp_path / "frozen", ["train.steps=8", "train.freeze_image_encoders=true",
                                                                    "data.feature_views=3"]))
    assert resumed.step == 6
    torch.testing.assert_close(resumed._feature_batches(resumed.train_set).features["rgb/front"], feats, rtol=0, atol=0)
    with pytest.raises(AssertionError, match="recomputed"):  # other views: other features, not the cached ones
        Trainer(pixel_cfg_for(tmp_path, tmp_path / "frozen", ["train.freeze_image_encoders=true",
                                                             "data.feature_views=2"])).train_batches().__next__()
    monkeypatch.undo()

    tiny_dataset(tmp_path / "tiny.zarr")
    state_run = Trainer(cfg_for(tmp_path, tmp_path / "state", ["train.steps=2"]))
    state_run.train()
    with pytest.raises(CheckpointError, match="cannot initialise"):
        Trainer(pixel_cfg_for(tmp_path, tmp_path / "bad", [f"train.init_from={tmp_path / 'state' / 'last.pt'}"]))


def test_wandb_mirrors_the_logs_offline_and_resumed_chunks_stay_one_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    tiny_dataset(tmp_path / "tiny.zarr")
    out = tmp_path / "wb"
    extra = ["wandb.enabled=true", "wandb.mode=offline", "wandb.project=tests", "train.chunk_steps=4"]
    Trainer(cfg_for(tmp_path, out, extra)).train()
    run_id = (out / "wandb_run_id").read_text()
    second = Trainer(cfg_for(tmp_path, out, extra))
    assert second.step == 4
    second.train()
    assert (out / "wandb_run_id").read_text() == run_id  # one W&B run across the chunks
    run_dirs = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert run_dirs
    logged = b"".join(f.read_bytes() for d in run_dirs for f in d.glob("*.wandb"))
    for key in (b"train/loss", b"train/lr", b"val/loss", b"learning_curve"):
        assert key in logged, key
    assert (out / "tb").is_dir()  # TensorBoard is written either way


def test_wandb_without_the_package_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    tiny_dataset(tmp_path / "tiny.zarr")
    trainer = Trainer(cfg_for(tmp_path, tmp_path / "nowb", ["wandb.enabled=true"]))
    with pytest.raises(ImportError, match=r"pip install -e '\.\[wandb\]'"):
        trainer.train()


def test_evaluation_env_observes_what_the_policy_was_trained_on(tmp_path):
    """A state policy is not rendered for; a pixel policy gets its own cameras and image size,
    whatever the obs group of the config says; the caller's config is left as it was."""
    from sim.evaluate import env_config_for

    tiny_dataset(tmp_path / "tiny.zarr")
    tiny_pixel_dataset(tmp_path / "px.zarr")
    state = Trainer(cfg_for(tmp_path, tmp_path / "s", ["obs=pixel"]))
    assert state.cfg.obs.mode == "pixel"
    env_cfg = env_config_for(state.policy, state.cfg)
    assert env_cfg.obs.mode == "state" and env_cfg.env.include_parts
    assert state.cfg.obs.mode == "pixel"  # not modified
    pixel = Trainer(pixel_cfg_for(tmp_path, tmp_path / "p", ["obs.cameras=[wrist,front]"]))
    pixel_env = env_config_for(pixel.policy, {**pixel.cfg, "obs": {"mode": "state", "cameras": [], "image_hw": [96, 96]}})
    assert pixel_env.obs.mode == "pixel" and list(pixel_env.obs.image_hw) == [16, 16]
    assert list(pixel_env.obs.cameras) == ["wrist", "front"]


def test_a_damaged_feature_cache_is_recomputed_not_trusted(tmp_path):
    from policy.frozen_features import cached_frame_features, features_key, frame_features

    tiny_pixel_dataset(tmp_path / "px.zarr")
    trainer = Trainer(pixel_cfg_for(tmp_path, tmp_path / "run"))
    enc, ds = trainer.policy.encoder, trainer.train_set
    path = tmp_path / "cache" / f"{features_key(enc, ds, 2, 0)}.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a torch file")
    got = cached_frame_features(enc, ds, tmp_path / "cache", views=2, seed=0)
    fresh = frame_features(enc, ds, views=2, seed=0)
    for k in fresh:
        torch.testing.assert_close(got[k], fresh[k], rtol=0, atol=0)
    assert torch.load(path, weights_only=True).keys() == fresh.keys()  # replaced by the good features


def test_checkpoint_stores_the_typed_schema_and_the_parts_statistics(tmp_path):
    """A pixel actor trained on a dataset that has part poses: the checkpoint's schema is the typed
    ObsSchema/ActionSchema of data/schema.py (dict form, versioned) and agrees with the policy; the
    normaliser holds the `parts` statistics (a privileged critic needs them) although the actor
    does not read parts, so its schema does not include them."""
    import policy as policy_pkg
    from data.schema import SCHEMA_VERSION, ActionSchema, ObsSchema

    tiny_pixel_dataset(tmp_path / "px.zarr", parts=True)
    trainer = Trainer(pixel_cfg_for(tmp_path, tmp_path / "run", ["train.steps=2"]))
    trainer.train()
    want = ObsSchema(cameras=("front", "wrist"), image_hw=(16, 16), include_joints=False, include_parts=False, n_parts=2)
    raw = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert raw["schema"]["version"] == SCHEMA_VERSION and raw["schema"]["task"] == "one_leg"
    assert raw["schema"]["obs"] == {"cameras": ["front", "wrist"], "image_hw": [16, 16], "include_joints": False,
                                    "include_parts": False, "n_parts": 2, "version": SCHEMA_VERSION}
    assert ActionSchema.from_dict(raw["schema"]["action"]) == ActionSchema()
    parts = raw["normalizer"]["keys"]["parts"]
    from data.episodes import EpisodeDataset

    ds = EpisodeDataset(tmp_path / "px.zarr")
    frames = np.concatenate([ds.episode(int(e), ["parts"])["parts"] for e in trainer.train_eps])
    np.testing.assert_allclose(parts["stats"]["min"], frames.min(0), rtol=1e-6)  # fitted on the train episodes
    np.testing.assert_allclose(parts["stats"]["max"], frames.max(0), rtol=1e-6)
    pi = policy_pkg.load(tmp_path / "run" / "last.pt")
    assert pi.obs_schema == want and pi.action_schema == ActionSchema() and "parts" in pi.normalizer
    assert pi.cfg.obs.lowdim_keys == ["state"] and pi.cfg.name == "vit_mlp"

    tiny_dataset(tmp_path / "tiny.zarr")  # a privileged state policy: its schema includes the parts
    state = Trainer(cfg_for(tmp_path, tmp_path / "state", ["train.steps=2"]))
    assert state.obs_schema == ObsSchema(cameras=(), image_hw=(96, 96), include_parts=True, n_parts=2)
    assert state.pcfg.obs.state_dim == 28 and state.pcfg.action_dim == 10


def test_a_schema_that_does_not_fit_the_policy_is_refused(tmp_path):
    """On load (a CheckpointError naming the mismatch) and already on save."""
    import policy as policy_pkg
    from data.schema import ObsSchema
    from policy.checkpoint import CheckpointError, save_checkpoint

    tiny_pixel_dataset(tmp_path / "px.zarr")
    trainer = Trainer(pixel_cfg_for(tmp_path, tmp_path / "run", ["train.steps=1"]))
    trainer.train()
    good = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for field, value, msg in (("cameras", ["front"], "schema cameras"), ("image_hw", [32, 32], "schema image_hw"),
                              ("include_joints", True, r"schema widths \{.state.: 17\} sum to 17")):
        bad = {**good, "schema": {**good["schema"], "obs": {**good["schema"]["obs"], field: value}}}
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=f"does not match its policy config: {msg}"):
            policy_pkg.load(tmp_path / "bad.pt")
    bad = {**good, "schema": {**good["schema"], "action": {**good["schema"]["action"], "dim": 7}}}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="action dim 7"):
        policy_pkg.load(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="schema cameras"):
        save_checkpoint(tmp_path / "never.pt", trainer.policy, schema={"obs": ObsSchema(cameras=("wrist",))})
    assert not (tmp_path / "never.pt").exists()


def test_checkpoints_with_the_loose_schema_dict_are_converted_on_load(tmp_path):
    """Checkpoints written before the typed schema (the reference ones among them) load with typed
    `obs_schema` / `action_schema` worked out from their loose dict and config."""
    import policy as policy_pkg
    from data.schema import ActionSchema, ObsSchema

    refs = ROOT / "checkpoints"
    state = policy_pkg.load(refs / "one_leg_state_bc.pt")
    assert state.obs_schema == ObsSchema(cameras=(), image_hw=(96, 96), include_joints=False, include_parts=True,
                                         n_parts=2)
    assert state.action_schema == ActionSchema() and state.schema["task"] == "one_leg"
    pixel = policy_pkg.load(refs / "one_leg_pixel_bc.pt")
    assert pixel.obs_schema == ObsSchema(cameras=("front", "wrist"), image_hw=(96, 96), include_parts=False)
    assert "parts" not in pixel.normalizer  # made before pretraining always fitted them (not regenerated)

    tiny_dataset(tmp_path / "tiny.zarr")
    trainer = Trainer(cfg_for(tmp_path, tmp_path / "run", ["train.steps=1"]))
    trainer.train()
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    payload["schema"] = {"obs": {"cameras": [], "image_hw": [96, 96], "state_dim": 28},
                         "action": ActionSchema().to_dict(), "dataset": "x.zarr", "task": "one_leg"}
    torch.save(payload, tmp_path / "old.pt")
    old = policy_pkg.load(tmp_path / "old.pt")
    assert old.obs_schema == trainer.obs_schema and old.schema["dataset"] == "x.zarr"
    from policy.checkpoint import export_weights

    export_weights(tmp_path / "old.pt", tmp_path / "exported.pt")  # written in the typed form
    assert torch.load(tmp_path / "exported.pt", weights_only=True)["schema"]["obs"]["include_parts"] is True


def test_config_files_match_the_typed_configs_field_for_field(tmp_path):
    """configs/pretrain.yaml and every configs/policy/*.yaml hold exactly the fields of
    TrainConfig / PolicyConfig (no dead keys, none missing but the two set from the dataset), and
    a typo in a config is an error naming its dotted path, its dataclass and the known keys."""
    import dataclasses

    from omegaconf import open_dict

    from pretrain import TrainConfig

    def keys_of(cls, prefix=""):
        out = set()
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                out |= keys_of(type(default), f"{prefix}{f.name}.")
            else:
                out.add(prefix + f.name)
        return out

    def keys_in(d, prefix=""):
        out = set()
        for k, v in d.items():
            out |= keys_in(v, f"{prefix}{k}.") if isinstance(v, dict) and k not in ("norm",) else {prefix + k}
        return out

    from omegaconf import OmegaConf

    for preset in sorted(p.stem for p in (ROOT / "configs" / "policy").glob("*.yaml")):
        cfg = cfg_for(tmp_path, tmp_path / "x", [f"policy={preset}"])
        plain = OmegaConf.to_container(cfg, resolve=True)
        groups = {k: v for k, v in plain.items() if k not in ("task", "sim", "env", "obs")}
        sim_groups = {"task", "sim", "env", "obs"}
        assert keys_in(groups) | sim_groups == keys_of(TrainConfig) - {"policy.action_dim", "policy.obs.state_dim"}, preset
        assert TrainConfig.from_hydra(cfg).policy.name == preset

    cfg = cfg_for(tmp_path, tmp_path / "typo")
    with open_dict(cfg):
        cfg.policy.mlp.widht = 512
    with pytest.raises(KeyError) as e:
        Trainer(cfg)
    assert str(e.value) == "unknown key 'policy.mlp.widht' for MLPDenoiserConfig; known: blocks, hidden, layer_norm, time_dim"
    cfg = cfg_for(tmp_path, tmp_path / "typo")
    with open_dict(cfg):
        cfg.train.stpes = 5
    with pytest.raises(KeyError, match=r"unknown key 'train\.stpes' for TrainLoopConfig; known: amp, batch_size"):
        Trainer(cfg)
    with pytest.raises(ValueError, match=r"policy\.obs\.state_dim is set from the dataset"):
        Trainer(cfg_for(tmp_path, tmp_path / "derived", ["+policy.obs.state_dim=12"]))
    with pytest.raises(TypeError, match=r"train\.lr: expected float, got str 'fast'"):
        Trainer(cfg_for(tmp_path, tmp_path / "bad", ["train.lr=fast"]))
