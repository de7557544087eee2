"""EpisodeWindowDataset: sample values, fast-path image decode, cache, workers (spawn)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.chunk_files import chunk_path
from data.episodes import EpisodeDataset, EpisodeWriter
from data.normalizer import Normalizer, NormalizerError
from data.sampler import SplitConfig, WindowConfig
from data.torch_dataset import (EpisodeWindowDataset, FrameReader, WindowDatasetConfig, collate_windows,
                                fast_layout, make_datasets, make_loader)

LENGTHS = (5, 3, 7, 6)
KEYS = ("state", "rgb/front", "rgb/wrist")


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory):
    """state[:, 0] = global frame index, action[:, 0] = index + 0.5; random 12x10 images, with an
    all-zero frame (zarr writes no chunk for it) and an episode of differently-sized values."""
    path = tmp_path_factory.mktemp("torchds") / "tiny.zarr"
    rng = np.random.default_rng(0)
    w = EpisodeWriter.create(path, {"task": "test"})
    start = 0
    for e, n in enumerate(LENGTHS):
        idx = np.arange(start, start + n, dtype=np.float32)
        front = rng.integers(0, 256, (n, 12, 10, 3), dtype=np.uint8)
        if e == 0:
            front[2] = 0  # no chunk file on disk
        w.add_episode({"state": np.stack([idx, rng.normal(size=n).astype(np.float32), np.zeros(n, np.float32)], 1),
                       "action": np.repeat(idx[:, None] + 0.5, 10, axis=1),
                       "rgb/front": front,
                       "rgb/wrist": rng.integers(0, 256, (n, 12, 10, 3), dtype=np.uint8)},
                      success=e != 1, source="scripted", seed=e)
        start += n
    return path


def cfg(**kw) -> WindowDatasetConfig:
    kw.setdefault("window", WindowConfig(obs_history=2, horizon=4))
    kw.setdefault("cache_images", False)
    return WindowDatasetConfig(obs_keys=KEYS, **kw)


def all_batches(loader) -> dict[str, torch.Tensor]:
    out: dict[str, list] = {}
    for batch in loader:
        for k, v in {**batch["obs"], "action": batch["action"]}.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


def test_sample_values_and_padding(ds_path):
    ds = EpisodeWindowDataset(ds_path, None, cfg())
    assert len(ds) == sum(LENGTHS)
    s = ds[0]  # first step of episode 0: obs history repeats frame 0
    assert s["obs"]["state"].shape == (2, 3) and s["obs"]["state"].dtype == torch.float32
    assert s["obs"]["state"][:, 0].tolist() == [0.0, 0.0]
    assert s["action"].shape == (4, 10) and s["action"][:, 0].tolist() == [0.5, 0.5, 1.5, 2.5]
    s = ds[4]  # last step of episode 0: actions repeat the last one
    assert s["obs"]["state"][:, 0].tolist() == [3.0, 4.0]
    assert s["action"][:, 0].tolist() == [3.5, 4.5, 4.5, 4.5]
    s = ds[6]  # episode 1 (frames 5..7), shorter than the horizon
    assert s["obs"]["state"][:, 0].tolist() == [5.0, 6.0] and s["action"][:, 0].tolist() == [5.5, 6.5, 7.5, 7.5]
    img = s["obs"]["rgb/front"]
    assert img.dtype == torch.uint8 and img.shape == (2, 3, 12, 10)  # (To, C, H, W)
    ref = np.asarray(EpisodeDataset(ds_path).array("rgb/front")[5:7])
    np.testing.assert_array_equal(img.permute(0, 2, 3, 1).numpy(), ref)
    assert ds[-1]["obs"]["state"][-1, 0] == sum(LENGTHS) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_getitems_equals_getitem_and_default_collate(ds_path):
    ds = EpisodeWindowDataset(ds_path, [0, 2, 3], cfg())
    idx = [3, 0, 11, 7, 7]
    batch = ds.__getitems__(idx).stacked
    for j, i in enumerate(idx):
        single = ds[i]
        for k in KEYS:
            assert torch.equal(batch["obs"][k][j], single["obs"][k])
        assert torch.equal(batch["action"][j], single["action"])
    # A plain DataLoader (default collate) gives the same batches as make_loader.
    plain = all_batches(DataLoader(ds, batch_size=4, shuffle=False))
    ours = all_batches(make_loader(ds, batch_size=4, shuffle=False))
    assert plain.keys() == ours.keys() and all(torch.equal(plain[k], ours[k]) for k in plain)


def test_fast_path_decode_equals_zarr(ds_path):
    arr = EpisodeDataset(ds_path).array("rgb/front")
    fast = FrameReader(ds_path, "rgb/front", fast_path=True)
    slow = FrameReader(ds_path, "rgb/front", fast_path=False)
    assert fast.fast and not slow.fast
    frames = np.array([2, 0, 20, 2, 13, 7])  # includes the unwritten all-zero frame 2, repeats, unsorted
    ref = np.asarray(arr[:])[frames]
    np.testing.assert_array_equal(fast.read(frames), ref)
    np.testing.assert_array_equal(slow.read(frames), ref)
    assert not os.path.exists(chunk_path(fast.layout, 2)) and not ref[0].any()
    assert os.path.exists(chunk_path(fast.layout, 0))


def test_fast_path_refuses_other_layouts(tmp_path):
    import zarr
    from zarr.codecs import BloscCodec

    g = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    two = g.create_array("two", shape=(4, 8, 8, 3), chunks=(2, 8, 8, 3), dtype="uint8", compressors=BloscCodec())
    assert fast_layout(two)[0] is None and "one frame" in fast_layout(two)[1]
    gz = g.create_array("gz", shape=(4, 8, 8, 3), chunks=(1, 8, 8, 3), dtype="uint8",
                        compressors=zarr.codecs.GzipCodec())
    assert fast_layout(gz)[0] is None and "BloscCodec" in fast_layout(gz)[1]
    ok = g.create_array("ok", shape=(4, 8, 8, 3), chunks=(1, 8, 8, 3), dtype="uint8", compressors=BloscCodec())
    assert fast_layout(ok)[0] is not None


def test_normalizer_applied(ds_path):
    norm = Normalizer.fit(EpisodeDataset(ds_path), {"state": "minmax", "action": "minmax"})
    ds = EpisodeWindowDataset(ds_path, None, cfg(), normalizer=norm)
    raw = EpisodeWindowDataset(ds_path, None, cfg())
    s, r = ds[9], raw[9]
    assert float(s["action"].min()) >= -1.0 and float(s["action"].max()) <= 1.0
    np.testing.assert_allclose(norm.unnormalize("action", s["action"]).numpy(), r["action"].numpy(), atol=1e-5)
    np.testing.assert_allclose(norm.unnormalize("state", s["obs"]["state"]).numpy(), r["obs"]["state"].numpy(),
                               atol=1e-5)
    assert torch.equal(s["obs"]["rgb/front"], r["obs"]["rgb/front"])  # images untouched
    with pytest.raises(NormalizerError, match="'state'"):
        EpisodeWindowDataset(ds_path, None, cfg(), normalizer=Normalizer({"action": norm.keys["action"]}))


def test_cache_modes_and_layouts(ds_path):
    disk = EpisodeWindowDataset(ds_path, [0, 3], cfg())
    cached = EpisodeWindowDataset(ds_path, [0, 3], cfg(cache_images=True))
    auto_small = EpisodeWindowDataset(ds_path, [0, 3], cfg(cache_images="auto"))
    auto_none = EpisodeWindowDataset(ds_path, [0, 3], cfg(cache_images="auto", cache_budget_fraction=1e-12))
    assert not disk.cached and cached.cached and auto_small.cached and not auto_none.cached
    assert cached.cache["rgb/front"].shape[0] == 5 + 6  # only the frames of the used episodes
    hwc = EpisodeWindowDataset(ds_path, [0, 3], cfg(image_layout="hwc"))
    idx = list(range(len(disk)))
    a, b, c = disk.__getitems__(idx).stacked, cached.__getitems__(idx).stacked, hwc.__getitems__(idx).stacked
    for k in KEYS:
        assert torch.equal(a["obs"][k], b["obs"][k])
    d = EpisodeWindowDataset(ds_path, [0, 3], cfg(image_layout="hwc", cache_images=True)).__getitems__(idx).stacked
    assert c["obs"]["rgb/wrist"].shape[-1] == 3
    for k in ("rgb/front", "rgb/wrist"):
        assert torch.equal(c["obs"][k].permute(0, 1, 4, 2, 3), a["obs"][k])
        assert torch.equal(d["obs"][k], c["obs"][k])


def test_workers_spawn_identical_with_and_without_cache(ds_path):
    ref = all_batches(make_loader(EpisodeWindowDataset(ds_path, None, cfg()), batch_size=5, shuffle=False))
    for cache in (False, True):
        ds = EpisodeWindowDataset(ds_path, None, cfg(cache_images=cache))
        loader = make_loader(ds, batch_size=5, shuffle=False, num_workers=2, multiprocessing_context="spawn",
                             persistent_workers=False)
        got = all_batches(loader)
        assert got.keys() == ref.keys()
        for k in ref:
            assert torch.equal(got[k], ref[k]), (cache, k)


def test_one_worker_shuffle_is_seeded_permutation(ds_path):
    ds = EpisodeWindowDataset(ds_path, None, cfg())
    runs = [all_batches(make_loader(ds, batch_size=4, shuffle=True, num_workers=1, seed=7, persistent_workers=False))
            for _ in range(2)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])  # same seed, same order
    current = runs[0]["state"][:, -1, 0]  # = global frame index of the window's current step, unique
    order = torch.argsort(current)
    ref = ds.__getitems__(list(range(len(ds)))).stacked
    assert not torch.equal(current, ref["obs"]["state"][:, -1, 0])  # shuffled ...
    assert torch.equal(runs[0]["action"][order], ref["action"])  # ... a permutation of all windows
    assert torch.equal(runs[0]["rgb/front"][order], ref["obs"]["rgb/front"])


def test_make_datasets_split_and_stats(ds_path, tmp_path):
    train, val, norm = make_datasets(ds_path, cfg(), SplitConfig(val_ratio=0.25, seed=1),
                                     norm_modes={"state": "meanstd", "action": "minmax"},
                                     stats_file=tmp_path / "stats.json")
    assert val is not None and set(train.episodes) | set(val.episodes) == set(range(len(LENGTHS)))
    assert not set(train.episodes) & set(val.episodes)
    assert (tmp_path / "stats.json").exists() and norm is train.normalizer is val.normalizer
    train_frames = sum(LENGTHS[e] for e in train.episodes)
    assert norm.keys["action"].stats["count"] == train_frames  # fitted on train episodes only


def test_missing_key(ds_path):
    with pytest.raises(KeyError, match="rgb/rear"):
        EpisodeWindowDataset(ds_path, None, WindowDatasetConfig(obs_keys=("state", "rgb/rear")))


@pytest.mark.parametrize("layout", ["chw", "hwc"])
def test_device_batches_hold_the_datasets_windows(ds_path, layout):
    from data.device_batches import DeviceWindowBatches

    ds = EpisodeWindowDataset(ds_path, None, cfg(cache_images=True, image_layout=layout))
    dev = DeviceWindowBatches(ds, "cpu")
    assert len(dev) == len(ds) and dev.nbytes() > 0
    idx = np.random.default_rng(0).permutation(len(ds))[:9]
    ref = collate_windows(ds.__getitems__(idx))
    got = dev.batch(idx)
    for k in KEYS:
        assert got["obs"][k].dtype == ref["obs"][k].dtype
        torch.testing.assert_close(got["obs"][k], ref["obs"][k], rtol=0, atol=0)
    torch.testing.assert_close(got["action"], ref["action"], rtol=0, atol=0)
    # every epoch visits each window once (drop_last cuts the remainder), in a new order
    stream = dev.epochs(4, shuffle=True, seed=3)
    per_epoch = len(ds) // 4
    epochs = [torch.cat([next(stream)["action"][:, 1, 0] for _ in range(per_epoch)]) for _ in range(2)]
    assert not torch.equal(epochs[0], epochs[1])
    ordered = torch.cat([b["action"][:, 1, 0] for b in dev.epochs(5, shuffle=False, drop_last=False)])
    torch.testing.assert_close(ordered, all_batches(make_loader(ds, 5, shuffle=False))["action"][:, 1, 0])
    assert len(ordered) == len(ds)


def test_device_batches_need_the_image_cache(ds_path):
    from data.device_batches import DeviceWindowBatches

    with pytest.raises(ValueError, match="image cache"):
        DeviceWindowBatches(EpisodeWindowDataset(ds_path, None, cfg(cache_images=False)), "cpu")
