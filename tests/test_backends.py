import importlib.util

import pytest
from hydra import compose, initialize_config_dir

from sim.assets import MissingDependencyError
from sim.config import EnvConfig, from_mapping
from sim.make import BACKENDS, env_config_from_hydra, make_env

from pathlib import Path

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def compose_cfg(overrides=()):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="rollout_expert", overrides=list(overrides))


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="mujoco_warp"):
        make_env("bullet", EnvConfig())


@pytest.mark.parametrize("backend,package", [("mujoco_warp", "mujoco-warp"), ("isaacgym", "isaacgym")])
def test_missing_backend_dependency_is_named(backend, package):
    module = {"mujoco_warp": "mujoco_warp", "isaacgym": "isaacgym"}[backend]
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(MissingDependencyError, match=package):
        make_env(backend, EnvConfig())


def test_hydra_config_maps_onto_env_config():
    cfg = compose_cfg(["obs=pixel", "task.randomness=med", "obs.image_hw=[64,80]", "sim.timestep=0.004"])
    ec = env_config_from_hydra(cfg)
    assert ec.obs_mode == "pixel" and ec.randomness == "med"
    assert ec.render.image_hw == (64, 80) and ec.substeps == 25
    assert ec.ik.fallback_iterations == cfg.sim.ik.fallback_iterations
    assert set(BACKENDS) == {"mujoco", "mujoco_warp", "isaacgym"}
    for backend in ("mujoco_warp", "isaacgym"):
        assert compose_cfg([f"sim={backend}"]).sim.backend == backend
    warp = env_config_from_hydra(compose_cfg(["sim=mujoco_warp", "sim.warp.nconmax=99", "sim.warp.device=cpu",
                                              "sim.warp.cuda_graphs=false"]))
    assert warp.warp.nconmax == 99 and warp.warp.device == "cpu" and warp.warp.njmax == 256
    assert warp.warp.cuda_graphs is False


def test_unknown_config_keys_are_rejected():
    with pytest.raises(KeyError, match="randomnes"):
        from_mapping(EnvConfig, {"randomnes": "low"})
    with pytest.raises(ValueError, match="does not divide"):
        EnvConfig(timestep=0.003).substeps


def test_auto_backend_picks_the_batched_one_only_with_a_gpu(monkeypatch):
    import importlib.util

    import torch

    from sim.make import resolve_backend

    assert resolve_backend("mujoco") == "mujoco"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto") == "mujoco"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    has_warp = importlib.util.find_spec("mujoco_warp") is not None
    assert resolve_backend("auto") == ("mujoco_warp" if has_warp else "mujoco")
