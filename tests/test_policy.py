"""Policy: ViT shapes, diffusion sampling, overfitting, checkpoints, resume."""
import numpy as np
import pytest
import torch

import policy as policy_pkg
from data.normalizer import Normalizer
from policy.checkpoint import CheckpointError, save_checkpoint
from policy.denoisers import MLPDenoiserConfig, UNetDenoiser
from data.history import ObsHistory
from policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from policy.ema import EMA
from policy.obs_encoder import ObsEncoderConfig
from policy.vit import ViTConfig, ViTEncoder, random_shift, shift_pad_for


def small_cfg(cameras=("front",), hw=(32, 32), denoiser="mlp", horizon=8):
    return PolicyConfig(horizon=horizon, act_steps=4, denoiser=denoiser, mlp=MLPDenoiserConfig(hidden=128, blocks=2),
                        obs=ObsEncoderConfig(cameras=list(cameras), image_hw=list(hw),
                                             vit=ViTConfig(dim=32, heads=2, out_dim=32, base_grid=4)))


def normalizer(seed=0):
    rng = np.random.default_rng(seed)
    return Normalizer.from_arrays({"state": rng.normal(size=(64, 10)), "action": rng.normal(size=(64, 10))},
                                  {"state": "minmax", "action": "minmax"})


def batch(b=3, t=1, hw=(32, 32), cams=("front",), seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = {"state": torch.randn(b, t, 10, generator=g)}
    for c in cams:
        obs[f"rgb/{c}"] = torch.randint(0, 256, (b, t, *hw, 3), generator=g, dtype=torch.uint8)
    return obs


@pytest.mark.parametrize("hw", [(96, 96), (64, 128), (128, 96), (32, 32)])
def test_vit_any_resolution(hw):
    vit = ViTEncoder(ViTConfig(dim=32, heads=2, out_dim=24))
    assert vit(torch.rand(2, 3, *hw)).shape == (2, 24)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        vit(torch.rand(1, 3, 30, 32))


def test_random_shift_is_a_bounded_translation():
    x = torch.zeros(4, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    y = random_shift(x, 3, torch.Generator().manual_seed(0))
    for i in range(4):
        r, c = (y[i, 0] == 1).nonzero()[0].tolist()
        assert abs(r - 8) <= 3 and abs(c - 8) <= 3
    assert not torch.equal(y[0], y[1]) or not torch.equal(y[1], y[2])
    assert shift_pad_for((96, 96)) == 4 and shift_pad_for((192, 192)) == 8


def test_unet_denoiser_shapes_and_horizon_check():
    u = UNetDenoiser(10, 16, 8)
    assert u(torch.randn(2, 16, 10), torch.tensor([1, 50]), torch.randn(2, 8)).shape == (2, 16, 10)
    with pytest.raises(ValueError, match="divisible"):
        UNetDenoiser(10, 6, 8)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    p = DiffusionPolicy(small_cfg(), normalizer()).eval()
    obs = batch()
    a = p.sample(obs, steps=5, eta=0.0, generator=torch.Generator().manual_seed(0))
    b = p.sample(obs, steps=5, eta=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (3, 8, 10) and a.abs().max() <= 1.0
    # the same start noise with different generators: eta=0 draws nothing after x_T, eta=1 does
    x_t = torch.randn(3, 8, 10, generator=torch.Generator().manual_seed(9))
    c1 = p.sample(obs, steps=5, eta=0.0, noise=x_t, generator=torch.Generator().manual_seed(1))
    c2 = p.sample(obs, steps=5, eta=0.0, noise=x_t, generator=torch.Generator().manual_seed(2))
    assert torch.equal(c1, c2)
    d1 = p.sample(obs, steps=5, eta=1.0, noise=x_t, generator=torch.Generator().manual_seed(1))
    d2 = p.sample(obs, steps=5, eta=1.0, noise=x_t, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(d1, d2)
    assert not torch.allclose(d1, c1)  # the step noise is not multiplied away


def test_per_row_generators_make_each_sample_independent_of_the_batch():
    """Evaluation draws each env's noise from its own generator: a row's noise does not depend on
    which other envs are in the batch (its chunk then differs only by float32 batched-matmul
    rounding, ~1e-7 here), and different rows get different noise."""
    p = DiffusionPolicy(small_cfg(), normalizer()).eval()
    obs = batch(b=3)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12, 13)]  # noqa: E731
    noise = p._randn((3, 8, 10), "cpu", gens())
    assert torch.equal(noise[1], p._randn((1, 8, 10), "cpu", [torch.Generator().manual_seed(12)])[0])
    full = p.act(obs, generator=gens())
    alone = p.act({k: v[1:2] for k, v in obs.items()}, generator=[torch.Generator().manual_seed(12)])
    np.testing.assert_allclose(full[1:2], alone, atol=1e-5)
    assert not np.allclose(full[0], full[1], atol=1e-3)
    with pytest.raises(ValueError, match="generators"):
        p.act(obs, generator=gens()[:2])


def test_given_start_noise_fixes_the_ddim_chunk():
    p = DiffusionPolicy(small_cfg(), normalizer()).eval()
    obs = batch()
    g = torch.Generator().manual_seed(5)
    a = p.sample(obs, steps=5, eta=0.0, generator=g)
    noise = torch.randn(3, 8, 10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(p.sample(obs, steps=5, eta=0.0, noise=noise), a)  # same draw as the generator made
    other = p.sample(obs, steps=5, eta=0.0, noise=torch.randn(3, 8, 10, generator=torch.Generator().manual_seed(6)))
    assert not torch.allclose(other, a)
    with pytest.raises(ValueError, match="noise must have shape"):
        p.sample(obs, steps=5, noise=torch.zeros(1, 8, 10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_sampler_matches_eager_sampling():
    from policy.cuda_graph import GraphedSampler

    torch.manual_seed(0)
    p = DiffusionPolicy(small_cfg(cameras=("front", "wrist")), normalizer()).cuda().eval()
    obs = {k: v.cuda() for k, v in batch(b=1, cams=("front", "wrist")).items()}
    sampler = GraphedSampler(p, obs, steps=5)
    for seed in range(3):
        o = {k: v.cuda() for k, v in batch(b=1, cams=("front", "wrist"), seed=seed + 1).items()}
        noise = torch.randn(1, 8, 10, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        with torch.no_grad():
            eager = p.sample(o, steps=5, eta=0.0, noise=noise)
        torch.testing.assert_close(sampler(o, noise=noise), eager, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="captured for"):
        sampler({k: v.cuda() for k, v in batch(b=2, cams=("front", "wrist")).items()})


def test_cuda_graph_sampler_refuses_a_cpu_policy():
    from policy.cuda_graph import GraphedSampler

    p = DiffusionPolicy(small_cfg(), normalizer()).eval()
    with pytest.raises(RuntimeError, match="CUDA"):
        GraphedSampler(p, batch(b=1))

def test_overfits_a_tiny_dataset():
    """Action chunks are a per-sample function of the state: sampling must follow the condition."""
    torch.manual_seed(0)
    cfg = small_cfg(cameras=())
    norm = normalizer()
    p = DiffusionPolicy(cfg, norm)
    obs = batch(b=24, cams=())
    target = (0.8 * torch.tanh(obs["state"][:, 0, :])).unsqueeze(1).expand(24, 8, 10)  # normalised space
    raw = norm.unnormalize("action", target)
    opt = torch.optim.AdamW(p.parameters(), lr=1e-3)
    losses = []
    for step in range(1500):
        loss = p.loss(obs, raw)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    first, last = np.mean(losses[:20]), np.mean(losses[-50:])
    assert last < 0.3 * first, (first, last)
    p.eval()
    pred = p.sample(obs, steps=10, eta=0.0, generator=torch.Generator().manual_seed(0))
    err = (pred - target).abs().mean().item()
    baseline = (target.mean(0, keepdim=True) - target).abs().mean().item()  # ignoring the state
    assert err < 0.6 * baseline, (err, baseline)


def test_checkpoint_round_trip_reproduces_actions(tmp_path):
    p = DiffusionPolicy(small_cfg(cameras=("front", "wrist")), normalizer())
    ema = EMA(p)
    ema.update(p)
    path = save_checkpoint(tmp_path / "p.pt", p, ema=ema, schema={"task": "one_leg"})
    raw = torch.load(path, weights_only=True)  # plain data: no pickled classes
    assert raw["format"] == "pixel-dppo-policy" and raw["schema"]["task"] == "one_leg"
    q = policy_pkg.load(path, use_ema=False)
    p.eval()
    obs = {k: v.numpy() for k, v in batch(cams=("front", "wrist")).items()}
    a = p.act(obs, generator=torch.Generator().manual_seed(3))
    b = q.act(obs, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 8, 10) and a.dtype == np.float32
    r = a[..., 3:9].reshape(-1, 2, 3)  # rotation rows are orthonormal
    np.testing.assert_allclose(np.linalg.norm(r, axis=-1), 1.0, atol=1e-5)


def test_exported_weights_act_like_the_training_checkpoints_ema(tmp_path):
    from policy.checkpoint import export_weights

    p = DiffusionPolicy(small_cfg(cameras=("front",)), normalizer())
    ema = EMA(p)
    for _ in range(3):  # EMA weights now differ from the model's
        with torch.no_grad():
            for q in p.parameters():
                q.add_(0.01)
        ema.update(p)
    full = save_checkpoint(tmp_path / "full.pt", p, ema=ema, train_state={"step": 3}, meta={"config": "{}"})
    small = export_weights(full, tmp_path / "small.pt", note="test export")
    raw = torch.load(small, weights_only=True)
    assert raw["ema"] is None and raw["train"] is None and raw["meta"] == {"config": "{}", "note": "test export"}
    assert small.stat().st_size < 0.6 * full.stat().st_size
    obs = {k: v.numpy() for k, v in batch(cams=("front",)).items()}
    from_ema = policy_pkg.load(full).act(obs, generator=torch.Generator().manual_seed(1))
    exported = policy_pkg.load(small).act(obs, generator=torch.Generator().manual_seed(1))
    raw_model = policy_pkg.load(full, use_ema=False).act(obs, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(exported, from_ema)
    assert not np.array_equal(exported, raw_model)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        policy_pkg.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        policy_pkg.load(bad)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pixel-dppo-policy"):
        policy_pkg.load(tmp_path / "other.pt")
    p = DiffusionPolicy(small_cfg(), normalizer())
    path = save_checkpoint(tmp_path / "p.pt", p)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 42
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 42"):
        policy_pkg.load(tmp_path / "future.pt")
    payload["version"] = 1
    payload["config"]["horizon"] = 16  # weights no longer fit the config
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        policy_pkg.load(tmp_path / "mismatch.pt")


def test_obs_history_pads_new_episodes():
    h = ObsHistory(2, ["state"])
    h.reset({"state": np.array([[1.0], [10.0]])})
    s = h.add({"state": np.array([[2.0], [11.0]])})
    np.testing.assert_array_equal(s["state"][:, :, 0], [[1, 2], [10, 11]])
    h.reset({"state": np.array([[3.0], [99.0]])}, mask=np.array([False, True]))
    np.testing.assert_array_equal(h.stacked()["state"][:, :, 0], [[1, 2], [99, 99]])
    h.add({"state": np.array([[4.0], [5.0]])}, mask=np.array([True, False]))  # only env 0 stepped
    np.testing.assert_array_equal(h.stacked()["state"][:, :, 0], [[2, 4], [99, 99]])
    t = ObsHistory(3, ["state"])  # the same code on torch tensors (GPU backends)
    t.reset({"state": torch.tensor([[1.0], [2.0]])})
    t.add({"state": torch.tensor([[5.0], [6.0]])}, mask=torch.tensor([False, True]))
    assert t.stacked()["state"][:, :, 0].tolist() == [[1, 1, 1], [2, 2, 6]]


def random_poses(n, seed):
    from data.rotation import axis_angle_to_matrix, matrix_to_rot6d

    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    rots = np.stack([axis_angle_to_matrix(a / np.linalg.norm(a), rng.uniform(0, np.pi)) for a in axes])
    return np.concatenate([rng.uniform(-0.5, 0.5, (n, 3)), matrix_to_rot6d(rots), rng.uniform(0, 0.08, (n, 1))], -1)


def test_relative_actions_round_trip_and_are_relative_to_the_ee():
    from policy.action_repr import to_absolute, to_relative

    ee = torch.tensor(random_poses(4, 0), dtype=torch.float64)
    chunk = torch.tensor(random_poses(4 * 6, 1), dtype=torch.float64).view(4, 6, 10)
    rel = to_relative(chunk, ee)
    torch.testing.assert_close(to_absolute(rel, ee), chunk, atol=1e-9, rtol=0)
    torch.testing.assert_close(rel[..., 9], chunk[..., 9])  # gripper width stays absolute
    # a target equal to the EE pose is the identity: zero translation, rotation rows e1, e2
    same = to_relative(ee[:, None], ee)[:, 0]
    torch.testing.assert_close(same[:, :9], torch.tensor([0, 0, 0, 1, 0, 0, 0, 1, 0.0], dtype=torch.float64)
                               .expand(4, 9), atol=1e-9, rtol=0)


def test_relative_policy_acts_from_the_current_step_in_absolute_coordinates():
    """With obs_history 2 the chunk's first action belongs to the previous step: `act` drops it
    and returns absolute targets decoded against the latest EE pose."""
    from policy.action_repr import RELATIVE_KEY

    rng = np.random.default_rng(0)
    h = 6
    norm = normalizer()
    rel = Normalizer.from_arrays({RELATIVE_KEY: rng.normal(scale=0.01, size=(64, h * 10))}, {RELATIVE_KEY: "minmax"})
    norm = Normalizer({**norm.keys, **rel.keys})
    cfg = small_cfg(cameras=(), horizon=h)
    cfg.obs.obs_history, cfg.action_repr = 2, "relative"
    p = DiffusionPolicy(PolicyConfig.from_dict(cfg.to_dict()), norm).eval()
    state = random_poses(2 * 2, 3).reshape(2, 2, 10).astype(np.float32)
    a = p.act({"state": state}, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, h - 1, 10)
    # every target is within the relative statistics' range (~3 cm) of the *latest* EE position
    assert np.abs(a[..., :3] - state[:, -1:, :3]).max() < 0.05
    with pytest.raises(ValueError, match="exceeds"):
        PolicyConfig(horizon=4, act_steps=4, obs=ObsEncoderConfig(obs_history=2))
    with pytest.raises(ValueError, match="needs 'state'"):
        PolicyConfig(action_repr="relative", obs=ObsEncoderConfig(lowdim_keys=["parts"]))


def test_timm_backbone_from_a_local_weight_file(tmp_path):
    """A timm backbone takes its weights from a local file (classifier ignored), never from the
    network; any resolution works; the trained weights then travel in the policy checkpoint."""
    timm = pytest.importorskip("timm")
    from policy.backbones import TimmEncoder

    torch.manual_seed(0)
    donor = timm.create_model("resnet18", pretrained=False, num_classes=10)  # "pretrained" net with a head
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "r18.pth")
    cfg = small_cfg(cameras=("front",), hw=(40, 56))
    cfg.obs.backbone, cfg.obs.timm_model, cfg.obs.timm_weights = "timm", "resnet18", str(tmp_path / "r18.pth")
    p = DiffusionPolicy(PolicyConfig.from_dict(cfg.to_dict()), normalizer())
    assert p.encoder.load_pretrained_backbones()
    enc = p.encoder.vits[0]
    assert isinstance(enc, TimmEncoder)
    torch.testing.assert_close(enc.net.conv1.weight, donor.conv1.weight)
    assert enc(torch.rand(2, 3, 40, 56)).shape == (2, 32) and enc(torch.rand(1, 3, 96, 96)).shape == (1, 32)

    ema = EMA(p)
    path = save_checkpoint(tmp_path / "p.pt", p, ema=ema)
    (tmp_path / "r18.pth").unlink()  # deployment does not need the original file
    q = policy_pkg.load(path, use_ema=False)
    p.eval()
    obs = {k: v.numpy() for k, v in batch(hw=(40, 56)).items()}
    np.testing.assert_array_equal(p.act(obs, generator=torch.Generator().manual_seed(1)),
                                  q.act(obs, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        p.encoder.load_pretrained_backbones()
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="does not fit"):
        enc.load_weights(tmp_path / "r34.pth")


def test_frozen_backbone_is_not_trained():
    pytest.importorskip("timm")
    cfg = small_cfg(cameras=("front",))
    cfg.obs.backbone, cfg.obs.timm_model, cfg.obs.freeze_backbone = "timm", "resnet18", True
    p = DiffusionPolicy(PolicyConfig.from_dict(cfg.to_dict()), normalizer()).train()
    enc = p.encoder.vits[0]
    assert not any(q.requires_grad for q in enc.net.parameters()) and enc.proj.weight.requires_grad
    assert not enc.net.training  # batch-norm statistics stay as loaded


def test_reference_checkpoint_still_loads_and_acts_near_the_hand():
    """checkpoints/one_leg_state_bc.pt is what later stages start from: a format change must
    keep it loadable (or ship a converted copy)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "checkpoints" / "one_leg_state_bc.pt"
    pi = policy_pkg.load(path)
    assert pi.cfg.action_repr == "relative" and pi.cfg.obs.obs_history == 2
    state = np.array([0.45, 0.0, 0.1, 0, 1, 0, 1, 0, 0, 0.08], np.float32)  # hand down, open, above the table
    parts = np.array([0.53, 0, 0, 1, 0, 0, 0, 0, 1, 0.39, 0.2, 0, 0, -1, 0, 1, 0, 0], np.float32)
    obs = {"state": np.tile(state, (1, 2, 1)), "parts": np.tile(parts, (1, 2, 1))}
    a = pi.act(obs, generator=torch.Generator().manual_seed(0))
    assert a.shape == (1, 7, 10) and np.isfinite(a).all()
    # the first target is a small step from the current hand position (the expert moves <= 3 cm)
    assert np.linalg.norm(a[0, 0, :3] - state[:3]) < 0.05


def test_pixel_reference_checkpoint_loads_and_acts_from_rendered_images():
    """checkpoints/one_leg_pixel_bc.pt acts from real renders of the one_leg scene."""
    from pathlib import Path

    from sim.backends.mujoco_one_leg import OneLegMujocoEnv
    from sim.config import EnvConfig, RenderConfig

    pi = policy_pkg.load(Path(__file__).resolve().parents[1] / "checkpoints" / "one_leg_pixel_bc.pt")
    assert pi.cfg.obs.cameras == ["front", "wrist"] and pi.cfg.obs.lowdim_keys == ["state"]
    env = OneLegMujocoEnv(EnvConfig(randomness="low", obs_mode="pixel",
                                    render=RenderConfig(cameras=("front", "wrist"), image_hw=tuple(pi.cfg.obs.image_hw))))
    try:
        obs, _ = env.reset(seed=100000)
    finally:
        env.close()
    batch = {k: np.repeat(np.asarray(obs[k])[None, None], 2, axis=1) for k in ("state", "rgb/front", "rgb/wrist")}
    a = pi.act(batch, generator=torch.Generator().manual_seed(0))
    assert a.shape == (1, 7, 10) and np.isfinite(a).all()
    assert np.linalg.norm(a[0, 0, :3] - obs["state"][:3]) < 0.05  # a small first step from the hand
