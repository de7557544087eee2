"""Window indices (padding, episode edges), the split by episode, and episode filters."""
from __future__ import annotations

import numpy as np
import pytest

from data.episodes import EpisodeDataset, EpisodeWriter
from data.sampler import SplitConfig, WindowConfig, make_windows, select_and_split, split_episodes

LENGTHS = (5, 3, 7)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 episodes (5, 3, 7 frames); state[:, 0] = global frame index; ep 1 failed; ep 2 teleop."""
    path = tmp_path_factory.mktemp("sampler") / "tiny.zarr"
    w = EpisodeWriter.create(path, {"task": "test"})
    start = 0
    for e, n in enumerate(LENGTHS):
        idx = np.arange(start, start + n, dtype=np.float32)
        w.add_episode({"state": np.repeat(idx[:, None], 4, axis=1), "action": np.repeat(idx[:, None], 10, axis=1)},
                      success=e != 1, source="teleop" if e == 2 else "scripted", seed=e)
        start += n
    return EpisodeDataset(path)


def reference_windows(lengths, cfg: WindowConfig):
    """Per-sample loop, written straight from the definition, to check the vectorised code."""
    obs, act, start = [], [], 0
    for n in lengths:
        for t in range(n):
            o = [t - cfg.obs_history + 1 + k for k in range(cfg.obs_history)]
            a = [t - cfg.obs_history + 1 + k for k in range(cfg.horizon)]
            before = sum(1 for i in a if i < 0)
            after = sum(1 for i in a if i >= n)
            if cfg.pad_before is not None and before > cfg.pad_before:
                continue
            if cfg.pad_after is not None and after > cfg.pad_after:
                continue
            obs.append([start + min(max(i, 0), n - 1) for i in o])
            act.append([start + min(max(i, 0), n - 1) for i in a])
        start += n
    return np.array(obs, dtype=np.int64).reshape(-1, cfg.obs_history), \
        np.array(act, dtype=np.int64).reshape(-1, cfg.horizon)


def test_padding_at_both_edges(tiny):
    w = make_windows(tiny.episode_starts, tiny.episode_ends, [0, 1, 2], WindowConfig(obs_history=2, horizon=4))
    assert len(w) == sum(LENGTHS)  # every step of every episode is a current step once
    state = np.asarray(tiny.array("state")[:])[:, 0]
    obs = state[w.obs_indices(np.arange(len(w)))]
    act = state[w.action_indices(np.arange(len(w)))]
    # Episode 0 (frames 0..4): first window repeats frame 0, last ones repeat frame 4.
    np.testing.assert_array_equal(obs[:5], [[0, 0], [0, 1], [1, 2], [2, 3], [3, 4]])
    np.testing.assert_array_equal(act[:5], [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 4], [3, 4, 4, 4]])
    # Episode 1 (frames 5..7), shorter than the horizon: padded on both sides at once.
    np.testing.assert_array_equal(obs[5:8], [[5, 5], [5, 6], [6, 7]])
    np.testing.assert_array_equal(act[5:8], [[5, 5, 6, 7], [5, 6, 7, 7], [6, 7, 7, 7]])
    # The current observation is always the window's frame t itself.
    np.testing.assert_array_equal(w.obs_indices(np.arange(len(w)))[:, -1], w.current)
    np.testing.assert_array_equal(w.current, np.arange(sum(LENGTHS)))


def test_pad_limits(tiny):
    eps = [0, 1, 2]
    inside = make_windows(tiny.episode_starts, tiny.episode_ends, eps, WindowConfig(2, 4, pad_before=0, pad_after=0))
    assert len(inside) == (5 - 4 + 1) + 0 + (7 - 4 + 1)  # only fully-inside windows; ep 1 is too short
    np.testing.assert_array_equal(inside.action_indices([0, 1]), [[0, 1, 2, 3], [1, 2, 3, 4]])
    assert set(inside.episodes.tolist()) == {0, 2}
    one = make_windows(tiny.episode_starts, tiny.episode_ends, eps, WindowConfig(2, 4, pad_before=1, pad_after=1))
    np.testing.assert_array_equal(one.current[one.episode == 0], [0, 1, 2, 3])  # t=4 would repeat frame 4 twice


@pytest.mark.parametrize("to,h,pb,pa", [(1, 8, None, None), (2, 16, 1, 7), (3, 4, 0, 0), (2, 1, None, 0),
                                        (4, 6, 2, None)])
def test_matches_reference_and_never_crosses_episodes(to, h, pb, pa):
    rng = np.random.default_rng(to * 100 + h)
    lengths = rng.integers(1, 30, size=40)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    cfg = WindowConfig(to, h, pb, pa)
    w = make_windows(starts, ends, np.arange(len(lengths)), cfg)
    ref_obs, ref_act = reference_windows(lengths, cfg)
    all_idx = np.arange(len(w))
    np.testing.assert_array_equal(w.obs_indices(all_idx), ref_obs)
    np.testing.assert_array_equal(w.action_indices(all_idx), ref_act)
    for frames in (w.obs_indices(all_idx), w.action_indices(all_idx)):
        assert np.all(frames >= starts[w.episode][:, None]) and np.all(frames < ends[w.episode][:, None])


def test_subset_of_episodes(tiny):
    w = make_windows(tiny.episode_starts, tiny.episode_ends, [2], WindowConfig(1, 2))
    assert len(w) == 7 and w.current[0] == 8 and set(w.episode.tolist()) == {2}
    np.testing.assert_array_equal(w.action_indices([6]), [[14, 14]])


def test_split_by_episode_disjoint_deterministic():
    eps = np.arange(50)
    train, val = split_episodes(eps, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert not set(train) & set(val) and set(train) | set(val) == set(eps)
    t2, v2 = split_episodes(eps[::-1], 0.2, seed=3)  # order of the input does not matter
    np.testing.assert_array_equal(v2, val)
    np.testing.assert_array_equal(t2, train)
    _, v3 = split_episodes(eps, 0.2, seed=4)
    assert set(v3) != set(val)
    # Appending episodes keeps most old assignments (each episode's score is its own).
    _, v_more = split_episodes(np.arange(55), 0.2, seed=3)
    assert len(set(val) & set(v_more)) >= 8


def test_split_edge_cases():
    assert [len(x) for x in split_episodes([7, 9], 0.1)] == [1, 1]  # at least one val episode
    assert [len(x) for x in split_episodes([7], 0.5)] == [1, 0]  # a single episode stays in train
    assert [len(x) for x in split_episodes(range(10), 0.0)] == [10, 0]
    assert [len(x) for x in split_episodes(range(3), 0.9)] == [1, 2]  # at least one train episode


def test_filters(tiny):
    train, val = select_and_split(tiny, SplitConfig(val_ratio=0.0, success_only=True))
    np.testing.assert_array_equal(train, [0, 2])
    assert len(val) == 0
    train, val = select_and_split(tiny, SplitConfig(val_ratio=0.0, sources=("teleop",)))
    np.testing.assert_array_equal(train, [2])
    train, val = select_and_split(tiny, SplitConfig(val_ratio=0.3))
    assert sorted([*train, *val]) == [0, 1, 2] and len(val) == 1
    with pytest.raises(ValueError, match="no episode"):
        select_and_split(tiny, SplitConfig(sources=("real",)))


def test_config_validation():
    with pytest.raises(ValueError):
        WindowConfig(obs_history=0)
    with pytest.raises(ValueError):
        WindowConfig(pad_after=-1)
    with pytest.raises(ValueError):
        SplitConfig(val_ratio=1.0)
