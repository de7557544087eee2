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


def test_resumed_chunks_match_an_uninterrupted_run(tmp_path):
    tiny_dataset(tmp_path / "tiny.zarr")
    full = Trainer(cfg_for(tmp_path, tmp_path / "full"))
    full.train()
    first = Trainer(cfg_for(tmp_path, tmp_path / "chunks", ["train.chunk_steps=3"]))
    assert first.train()["step"] == 3
    second = Trainer(cfg_for(tmp_path, tmp_path / "chunks"))  # resume=true by default
    assert second.step == 3
    assert second.train()["step"] == 8
    assert second.sched.get_last_lr() == full.sched.get_last_lr()
    assert second.sched.last_epoch == full.sched.last_epoch == 8
    assert second.ema.step == full.ema.step == 8
    # the weights continued from the chunk, not from scratch (data order after a resume is
    # reseeded from the step, so they are not bit-identical to the uninterrupted run)
    resumed_from = torch.load(tmp_path / "chunks" / "step_4.pt", weights_only=True)["train"]["step"]
    assert resumed_from == 4
    assert (tmp_path / "chunks" / "last.pt").exists() and (tmp_path / "chunks" / "learning_curve.png").exists()


def test_rollout_evaluation_runs_chunks_in_sim_and_reports_milestones(tmp_path):
    """The trainer's sim evaluation: episodes of a (barely trained) relative-action policy in
    the real one_leg env, chunked, with per-episode milestones and their rates."""
    tiny_dataset(tmp_path / "tiny.zarr")
    cfg = cfg_for(tmp_path, tmp_path / "ev", ["eval.every=8", "eval.episodes=3", "eval.n_envs=2", "eval.n_workers=0",
                                              "eval.video=false", "task.max_episode_steps=10",
                                              "policy.obs_history=2", "policy.act_steps=3"])
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
    assert summary["episodes"] == 2 and summary["success_rate"] == 0.0
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
    for mode in ("true", "false", "auto", "sometimes"):
        trainer = Trainer(cfg_for(tmp_path, tmp_path / mode, [f"data.on_device={mode}"]))
        if mode == "sometimes":
            with pytest.raises(ValueError, match="on_device"):
                next(trainer.train_batches())
            continue
        picks[mode] = trainer._device_batches(trainer.train_set)
        batch = next(trainer.train_batches())
        assert batch["action"].shape == (8, 8, 10) and torch.isfinite(batch["action"]).all()
    assert isinstance(picks["true"], DeviceWindowBatches)
    assert picks["false"] is None and picks["auto"] is None  # auto: only on CUDA
    trainer = Trainer(cfg_for(tmp_path, tmp_path / "dev_run", ["data.on_device=true"]))
    trainer.train()
    assert trainer.step == 8 and np.isfinite([h["train_loss"] for h in trainer.history if "train_loss" in h]).all()


def tiny_pixel_dataset(path, hw=(16, 16)):
    w = EpisodeWriter.create(path, attrs={"task": "one_leg"})
    rng = np.random.default_rng(1)
    for i in range(4):
        t = 12
        w.add_episode({"state": rng.normal(size=(t, 10)).astype(np.float32),
                       "action": rng.normal(size=(t, 10)).astype(np.float32),
                       "rgb/front": rng.integers(0, 256, (t, *hw, 3), dtype=np.uint8),
                       "rgb/wrist": rng.integers(0, 256, (t, *hw, 3), dtype=np.uint8)},
                      success=True, source="scripted", seed=i)
    return path


def pixel_cfg_for(tmp_path, out, extra=()):
    return cfg_for(tmp_path, out, ["policy=vit_mlp", "obs=pixel", "obs.image_hw=[16,16]", f"dataset={tmp_path / 'px.zarr'}",
                                   "policy.vit.dim=32", "policy.vit.heads=2", "policy.vit.base_grid=2",
                                   "policy.vit.out_dim=16", "policy.obs_history=2", "policy.act_steps=4",
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
    val = next(frozen._batches(frozen.val_set, shuffle=False, seed=0))
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
    env_cfg = env_config_for(state.pcfg, state.cfg)
    assert env_cfg.obs.mode == "state" and env_cfg.env.include_parts
    assert state.cfg.obs.mode == "pixel"  # not modified
    pixel = Trainer(pixel_cfg_for(tmp_path, tmp_path / "p", ["obs.cameras=[wrist,front]"]))
    pixel_env = env_config_for(pixel.pcfg, {**pixel.cfg, "obs": {"mode": "state", "cameras": [], "image_hw": [96, 96]}})
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
