"""The compiled-scene cache must give the very model the MJCF compiles to, and survive a bad file."""
from __future__ import annotations

import mujoco
import numpy as np
import pytest

from sim.tasks.one_leg import scene as S


@pytest.fixture
def scene_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXEL_DPPO_CACHE", str(tmp_path))
    return tmp_path / "scenes"


def _rollout(model: mujoco.MjModel, steps: int = 200) -> np.ndarray:
    data = mujoco.MjData(model)
    data.ctrl[:] = 0.1
    mujoco.mj_step(model, data, nstep=steps)
    return np.concatenate([data.qpos, data.qvel])


def test_cached_scene_is_identical_and_skips_the_mjcf(scene_cache, monkeypatch):
    opts = S.SceneOptions()
    fresh = S.build_model(opts)
    files = list(scene_cache.glob("one_leg_*.mjb"))
    assert len(files) == 1

    def no_mjcf(*_):
        raise AssertionError("build_xml must not run on a cache hit")

    monkeypatch.setattr(S, "build_xml", no_mjcf)
    cached = S.build_model(opts)
    assert (cached.nq, cached.nv, cached.ngeom, cached.nmesh) == (fresh.nq, fresh.nv, fresh.ngeom, fresh.nmesh)
    np.testing.assert_array_equal(cached.geom_size, fresh.geom_size)
    np.testing.assert_array_equal(cached.mesh_vert, fresh.mesh_vert)
    np.testing.assert_array_equal(_rollout(cached), _rollout(fresh))


def test_other_options_get_their_own_entry(scene_cache):
    a = S.scene_cache_key(S.SceneOptions())
    b = S.scene_cache_key(S.SceneOptions(image_hw=(600, 800)))
    assert a != b
    model = S.build_model(S.SceneOptions(image_hw=(600, 800)))
    assert model.vis.global_.offwidth == 800  # the option reached the compiled model
    assert (scene_cache / f"one_leg_{b}.mjb").is_file()


def test_corrupt_cache_file_is_rebuilt(scene_cache, caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo logs the bad file to ./MUJOCO_LOG.TXT
    opts = S.SceneOptions()
    key = S.scene_cache_key(opts)
    scene_cache.mkdir(parents=True, exist_ok=True)
    bad = scene_cache / f"one_leg_{key}.mjb"
    bad.write_bytes(b"not a mujoco binary")
    model = S.build_model(opts)
    assert "ignoring unreadable scene cache" in caplog.text
    assert model.nq > 0
    assert mujoco.MjModel.from_binary_path(str(bad)).nq == model.nq  # replaced by a good file
