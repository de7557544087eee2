"""policy/export.py: artefacts reproduce the eager policy, run as policies, and fail clearly."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import policy as policy_pkg
from policy.checkpoint import load_policy
from policy.export import ExportError, ExportedPolicy, export_policy, example_inputs, main, sidecar_path

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "checkpoints" / "one_leg_state_bc.pt"
PIXEL = ROOT / "checkpoints" / "one_leg_pixel_bc.pt"
GAUSSIAN = ROOT / "checkpoints" / "one_leg_state_gaussian_bc.pt"


@pytest.fixture(scope="module")
def state_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "state.onnx"
    meta = export_policy(STATE, "onnx", out, latency_runs=3)
    return out, meta


def _obs(policy, batch, seed):
    inputs = example_inputs(policy, batch, seed=seed)
    return dict(zip(policy.obs_keys, inputs[:-1])), inputs[-1]


def test_onnx_export_parity_and_sidecar(state_onnx):
    out, meta = state_onnx
    side = json.loads(sidecar_path(out).read_text())
    assert side["format"] == "onnx" and side["obs_keys"] == ["state", "parts"] and side["dynamic_batch"]
    assert side["input_shapes"] == {"state": [2, 10], "parts": [2, 18], "noise": [8, 10]}
    assert side["ddim_steps"] == 5 and side["act_steps"] == 4 and side["schema"]["obs"]
    assert 0 < meta.parity["max_abs_action_diff"] <= 1e-4 and set(meta.parity["per_batch"]) == {"1", "3"}
    assert len(side["source_sha256"]) == 64 and side["latency_ms"]["onnx"]["median"] > 0


def test_exported_policy_acts_like_the_checkpoint(state_onnx):
    """Same observations and per-row generators -> the same actions as the eager policy, for a
    batch size the export never saw, and the rotation part orthonormal."""
    out, _ = state_onnx
    eager, art = load_policy(STATE), policy_pkg.load(out)
    assert isinstance(art, ExportedPolicy) and art.obs_keys == eager.obs_keys and art.act_steps == eager.act_steps
    obs, _ = _obs(eager, 5, seed=3)
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(5)]  # noqa: E731
    a = eager.act(obs, eta=0.0, generator=gens())
    b = art.act({k: v.numpy() for k, v in obs.items()}, eta=0.0, generator=gens())
    assert a.shape == b.shape == (5, 7, 10) and np.abs(a - b).max() < 1e-4
    assert np.abs(a - art.act(obs, generator=[torch.Generator().manual_seed(9)] * 5)).max() > 1e-3  # noise matters
    r = b[..., 3:9]
    assert np.allclose(np.linalg.norm(r[..., :3], axis=-1), 1, atol=1e-5) and np.allclose((r[..., :3] * r[..., 3:]).sum(-1), 0, atol=1e-5)


def test_exported_policy_rejects_bad_input(state_onnx, tmp_path):
    out, _ = state_onnx
    art = ExportedPolicy(out)
    obs, noise = _obs(load_policy(STATE), 2, seed=4)
    with pytest.raises(KeyError, match="reads 'parts'"):
        art.act({"state": obs["state"]}, noise=noise)
    with pytest.raises(ValueError, match=r"per-sample shape \[3, 10\]"):
        art.act({**obs, "state": torch.zeros(2, 3, 10)}, noise=noise)
    with pytest.raises(ValueError, match="exported with 5 DDIM steps"):
        art.act(obs, steps=10, noise=noise)
    with pytest.raises(ValueError, match="eta 0"):
        art.act(obs, eta=1.0, noise=noise)
    with pytest.raises(FloatingPointError, match="NaN"):
        art.act({**obs, "state": torch.full((2, 2, 10), math.nan)}, noise=noise)
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(out.read_bytes())
    with pytest.raises(ExportError, match="sidecar"):
        ExportedPolicy(lonely)
    sidecar_path(lonely).write_text("{\"format\": \"onnx\"}")
    with pytest.raises(ExportError, match="not an export sidecar"):
        ExportedPolicy(lonely)


def test_parity_failure_is_an_error_and_keeps_the_artefact(tmp_path):
    out = tmp_path / "strict.ts"
    with pytest.raises(ExportError, match="differ from the eager policy"):
        export_policy(STATE, "torchscript", out, tol=0.0, latency_runs=1)
    assert out.exists() and json.loads(sidecar_path(out).read_text())["parity"]["tol"] == 0.0


def test_pixel_torchscript_cli(tmp_path, capsys):
    out = tmp_path / "pixel.ts"
    meta = main(["--ckpt", str(PIXEL), "--format", "torchscript", "--out", str(out), "--latency-runs", "3"])
    assert meta.input_dtypes["rgb_front"] == "uint8" and meta.input_shapes["rgb_wrist"] == [2, 96, 96, 3]
    assert meta.parity["max_abs_action_diff"] <= 1e-4
    assert "max |action diff|" in capsys.readouterr().out
    eager, art = load_policy(PIXEL), ExportedPolicy(out)
    obs, noise = _obs(eager, 2, seed=5)
    assert np.abs(eager.act(obs, eta=0.0, noise=noise) - art.act(obs, noise=noise)).max() < 1e-4


def test_what_cannot_be_exported(tmp_path):
    with pytest.raises(ExportError, match="GaussianPolicy"):
        export_policy(GAUSSIAN, "onnx", tmp_path / "g.onnx")
    with pytest.raises(ExportError, match="unknown export format"):
        export_policy(STATE, "tflite", tmp_path / "x.tflite")
    with pytest.raises(ExportError, match=r"named \*\.pt2"):
        export_policy(STATE, "aoti", tmp_path / "x.aoti")


@pytest.mark.slow
def test_aoti_export(tmp_path):
    """AOTInductor compiles C++ (about a minute on 2 cores)."""
    meta = export_policy(STATE, "aoti", tmp_path / "state.pt2", latency_runs=3)
    assert meta.parity["max_abs_action_diff"] <= 1e-4 and meta.dynamic_batch
