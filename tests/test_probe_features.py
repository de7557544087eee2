"""tools/probe_features.py: the linear probe of image features against part positions."""
import numpy as np
import pytest

from data.episodes import EpisodeWriter
from tests.conftest import compose_config
from tests.test_pretrain import Trainer, pixel_cfg_for
from tools.probe_features import probe, ridge_fit_predict


def test_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) * [1, 10, 0.1, 1, 1, 1]
    y = x @ rng.normal(size=(6, 3)) + [0.3, -1.0, 2.0]
    np.testing.assert_allclose(ridge_fit_predict(x[:400], y[:400], x[400:], alpha=1e-9), y[400:], atol=1e-5)


def test_probe_tells_what_the_inputs_hold(tmp_path):
    """The leg sits exactly at the EE (the probe from state finds it to well under a mm); the top
    moves at random, which no input shows (the error stays at the spread)."""
    rng = np.random.default_rng(0)
    w = EpisodeWriter.create(tmp_path / "px.zarr", attrs={"task": "one_leg"})
    for i in range(10):
        t = 12
        state = rng.normal(size=(t, 10)).astype(np.float32) * 0.1
        parts = np.zeros((t, 18), np.float32)
        parts[:, :3] = rng.normal(size=(t, 3)) * 0.1  # top: independent of everything observed
        parts[:, 9:12] = state[:, :3] + [0.0, 0.0, 0.05]  # leg: held 5 cm above the EE
        w.add_episode({"state": state, "parts": parts, "action": rng.normal(size=(t, 10)).astype(np.float32),
                       "rgb/front": rng.integers(0, 256, (t, 16, 16, 3), dtype=np.uint8),
                       "rgb/wrist": rng.integers(0, 256, (t, 16, 16, 3), dtype=np.uint8)},
                      success=True, source="scripted", seed=i)
    Trainer(pixel_cfg_for(tmp_path, tmp_path / "run", ["train.steps=2"])).train()
    res = probe(compose_config("probe_features", [f"checkpoint={tmp_path / 'run' / 'last.pt'}",
                                                  f"dataset={tmp_path / 'px.zarr'}", "val_ratio=0.3", "device=cpu"]))
    assert res["feature_dim"] == 32 and res["train_frames"] + res["val_frames"] == 120
    top, leg = res["parts"]
    assert (top["part"], leg["part"]) == ("top", "leg")
    assert leg["spread_mm"] > 50 and leg["EE state only"]["mean_mm"] < 0.02 * leg["spread_mm"]
    assert top["EE state only"]["mean_mm"] > 0.8 * top["spread_mm"]
    assert top["image features + EE state"]["mean_mm"] > 0.8 * top["spread_mm"]


def test_probe_refuses_a_state_policy(tmp_path):
    from tests.test_pretrain import cfg_for, tiny_dataset

    tiny_dataset(tmp_path / "tiny.zarr")
    Trainer(cfg_for(tmp_path, tmp_path / "s", ["train.steps=2"])).train()
    with pytest.raises(ValueError, match="state-only"):
        probe(compose_config("probe_features", [f"checkpoint={tmp_path / 's' / 'last.pt'}",
                                                f"dataset={tmp_path / 'tiny.zarr'}"]))
