"""Normaliser: round trips, constant dims, streaming stats, persistence, errors."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from data.episodes import EpisodeDataset, EpisodeWriter
from data.normalizer import (KeyStats, Normalizer, NormalizerError, compute_stats, load_or_fit, modes_to_fit,
                             stats_path)


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory):
    """6 episodes of random low-dim data with different scales; dim 2 of state is constant."""
    path = tmp_path_factory.mktemp("norm") / "demo.zarr"
    rng = np.random.default_rng(0)
    w = EpisodeWriter.create(path, {"task": "test"})
    for e in range(6):
        n = int(rng.integers(300, 600))
        state = (rng.normal(size=(n, 4)) * [1.0, 100.0, 0.0, 1e-3] + [0.0, -5.0, 0.25, 3.0]).astype(np.float32)
        action = rng.uniform(-3, 7, size=(n, 10)).astype(np.float32)
        img = np.zeros((n, 4, 4, 3), np.uint8)
        w.add_episode({"state": state, "action": action, "rgb/front": img}, success=True, source="scripted", seed=e)
    return path


def test_streaming_stats_equal_numpy(ds_path):
    ds = EpisodeDataset(ds_path)
    full = np.asarray(ds.array("state")[:], dtype=np.float64)
    stats = compute_stats(ds, ["state"], block_rows=97)["state"]  # many odd-sized blocks
    np.testing.assert_allclose(stats.mean, full.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.std, full.std(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(stats.min, full.min(0))
    np.testing.assert_array_equal(stats.max, full.max(0))
    assert stats.count == len(full)
    # Only some episodes.
    eps = [1, 4]
    sel = np.concatenate([full[ds.episode_starts[e]:ds.episode_ends[e]] for e in eps])
    sub = compute_stats(ds, ["state"], episodes=eps, block_rows=128)["state"]
    assert sub.count == len(sel)
    np.testing.assert_allclose(sub.mean, sel.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sub.std, sel.std(0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["minmax", "meanstd", "identity"])
def test_round_trip_numpy_and_torch(ds_path, mode):
    ds = EpisodeDataset(ds_path)
    norm = Normalizer.fit(ds, {"action": mode})
    x = np.asarray(ds.array("action")[:])
    y = norm.normalize("action", x)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(norm.unnormalize("action", y), x, atol=1e-5)
    yt = norm.normalize("action", torch.from_numpy(x).reshape(-1, 2, 10))  # any leading dims
    assert yt.dtype == torch.float32
    np.testing.assert_allclose(yt.reshape(-1, 10).numpy(), y, atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize("action", yt).reshape(-1, 10).numpy(), x, atol=1e-5)
    if mode == "minmax":
        np.testing.assert_allclose(y.min(0), -1.0, atol=1e-6)
        np.testing.assert_allclose(y.max(0), 1.0, atol=1e-6)
    if mode == "meanstd":
        np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(y.std(0), 1.0, atol=1e-4)
    if mode == "identity":
        np.testing.assert_array_equal(y, x)


def test_float64_kept():
    norm = Normalizer.from_arrays({"a": np.array([[0.0], [4.0]])}, {"a": "minmax"})
    y = norm.normalize("a", np.array([[1.0]]))
    assert y.dtype == np.float64 and y[0, 0] == pytest.approx(-0.5)
    assert norm.normalize("a", torch.tensor([[1.0]], dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("mode", ["minmax", "meanstd"])
def test_constant_and_tiny_dims_are_centred_not_scaled(ds_path, mode):
    norm = Normalizer.fit(EpisodeDataset(ds_path), {"state": mode})
    kn = norm.keys["state"]
    assert kn.scale[2] == 1.0  # constant dim: unscaled
    assert kn.scale[3] > 100.0  # small (std 1e-3) but above eps: scaled
    x = np.array([[0.0, 0.0, 0.25, 3.0], [0.0, 0.0, 0.26, 3.0]], np.float32)
    y = norm.normalize("state", x)
    assert np.all(np.isfinite(y))
    assert y[0, 2] == pytest.approx(0.0, abs=1e-6) and y[1, 2] == pytest.approx(0.01, abs=1e-6)
    np.testing.assert_allclose(norm.unnormalize("state", y), x, atol=1e-6)


def test_eps_controls_small_dims():
    x = np.stack([np.linspace(0, 1e-3, 50), np.linspace(0, 1, 50)], axis=1)
    loose = Normalizer.from_arrays({"a": x}, {"a": "minmax"}, eps=1e-2)
    tight = Normalizer.from_arrays({"a": x}, {"a": "minmax"}, eps=1e-6)
    assert loose.keys["a"].scale[0] == 1.0 and tight.keys["a"].scale[0] == pytest.approx(2000.0)
    np.testing.assert_allclose(loose.normalize("a", x)[:, 0], x[:, 0] - 5e-4, atol=1e-12)


def test_state_dict_through_torch_weights_only(ds_path):
    norm = Normalizer.fit(EpisodeDataset(ds_path), {"state": "meanstd", "action": "minmax"})
    buf = io.BytesIO()
    torch.save({"normalizer": norm.state_dict()}, buf)
    buf.seek(0)
    loaded = Normalizer.from_state_dict(torch.load(buf, weights_only=True)["normalizer"])
    x = np.random.default_rng(1).normal(size=(7, 10)).astype(np.float32)
    np.testing.assert_array_equal(loaded.normalize("action", x), norm.normalize("action", x))
    assert loaded.keys["state"].stats == norm.keys["state"].stats
    json.dumps(norm.state_dict())  # plain JSON types only


def test_errors(ds_path):
    norm = Normalizer.fit(EpisodeDataset(ds_path), {"action": "minmax"})
    with pytest.raises(NormalizerError, match="no statistics for key 'state'"):
        norm.normalize("state", np.zeros((2, 4)))
    with pytest.raises(NormalizerError, match="fitted on 10 dims"):
        norm.normalize("action", np.zeros((2, 9)))
    with pytest.raises(NormalizerError, match="fitted on 10 dims"):
        norm.unnormalize("action", torch.zeros(3, 4, 7))
    with pytest.raises(NormalizerError, match="image"):
        compute_stats(EpisodeDataset(ds_path), ["rgb/front"])
    with pytest.raises(ValueError, match="mode"):
        Normalizer.fit(EpisodeDataset(ds_path), {"action": "zscore"})
    with pytest.raises(ValueError, match="version"):
        Normalizer.from_state_dict({"version": 99, "keys": {}})


def test_sidecar_file_and_staleness(tmp_path, ds_path):
    import shutil

    path = tmp_path / "copy.zarr"
    shutil.copytree(ds_path, path)
    modes = {"state": "minmax", "action": "minmax"}
    ds = EpisodeDataset(path)
    norm = load_or_fit(ds, modes)
    side = stats_path(path)
    assert side == tmp_path / "copy.zarr.stats.json" and side.exists()
    doc = json.loads(side.read_text())
    assert doc["fingerprint"]["n_frames"] == ds.n_frames
    again = load_or_fit(EpisodeDataset(path), modes)  # read back, identical
    x = np.ones((1, 10), np.float32)
    np.testing.assert_array_equal(again.normalize("action", x), norm.normalize("action", x))
    # Appending an episode makes the sidecar stale: recomputed, with the new range.
    w = EpisodeWriter.append_to(path)
    w.add_episode({"state": np.zeros((5, 4), np.float32), "action": np.full((5, 10), 100.0, np.float32),
                   "rgb/front": np.zeros((5, 4, 4, 3), np.uint8)}, success=True, source="scripted")
    grown = load_or_fit(EpisodeDataset(path), modes)
    assert grown.keys["action"].stats["max"][0] == 100.0
    assert json.loads(side.read_text())["fingerprint"]["n_frames"] == ds.n_frames + 5
    assert Normalizer.load(side).keys["action"].stats["max"][0] == 100.0


def test_keystats_merge_matches_single_pass():
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(1000, 3)) + 1e6  # large offset: naive sum of squares would lose digits
    s = KeyStats()
    for part in np.array_split(x, 13):
        s.update(part)
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(s.std, x.std(0), rtol=1e-8)


def test_modes_to_fit_takes_every_configured_key_the_dataset_has():
    """A pixel actor reads only `state`, but its normaliser also gets the dataset's `parts` (a
    privileged critic needs them); configured keys the dataset lacks are skipped, required keys
    must have a mode and exist."""
    modes = {"state": "minmax", "parts": "meanstd", "action": "minmax", "joints": "minmax"}
    got = modes_to_fit(["action", "parts", "rgb/front", "state"], modes, ["state", "action"])
    assert got == {"state": "minmax", "action": "minmax", "parts": "meanstd"}
    assert modes_to_fit(["action", "state"], modes, ["state", "action"]) == {"state": "minmax", "action": "minmax"}
    with pytest.raises(NormalizerError, match=r"data\.norm has no normalisation mode for \['parts'\]"):
        modes_to_fit(["state", "parts", "action"], {"state": "minmax", "action": "minmax"}, ["state", "parts"],
                     where="data.norm")
    with pytest.raises(NormalizerError, match=r"the dataset has no keys \['parts'\]"):
        modes_to_fit(["state", "action"], modes, ["parts"])
