"""Converters: robomimic hdf5, furniture-bench pkl, LeRobot (both ways) -> values, not just runs.

Every source file is built here with known poses, so expected rotations, widths and absolute
targets are written out by hand (not recomputed with the converter's own helpers).
"""
from __future__ import annotations

import gzip
import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data.convert import DatasetFormatError, main
from data.episodes import DatasetError, EpisodeDataset, EpisodeWriter
from data.schema import ActionSchema, ObsSchema

h5py = pytest.importorskip("h5py")


def arrow():
    """pyarrow comes with the `convert` extra; only the LeRobot tests need it."""
    return pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[1]


def rz6d(theta: np.ndarray) -> np.ndarray:
    """First two rows of a rotation about z by theta: [c, -s, 0, s, c, 0]."""
    c, s, z = np.cos(theta), np.sin(theta), np.zeros_like(theta)
    return np.stack([c, -s, z, s, c, z], axis=-1)


def quat_z_xyzw(theta: np.ndarray) -> np.ndarray:
    theta = np.asarray(theta, dtype=np.float64)
    z = np.zeros_like(theta)
    return np.stack([z, z, np.sin(theta / 2), np.cos(theta / 2)], axis=-1)


# ------------------------------------------------------------------------------------------
# robomimic
# ------------------------------------------------------------------------------------------
DEMO_LENGTHS = (10, 8)
N_OPEN = 5  # gripper command: -1 for the first 5 steps, then +1


def rm_pos(t: np.ndarray) -> np.ndarray:
    return np.stack([0.1 * t, np.full_like(t, 0.2), 1.0 + 0.01 * t], axis=-1)


def rm_image(t_len: int, demo: int, offset: int) -> np.ndarray:
    img = np.zeros((t_len, 16, 16, 3), np.uint8)
    img[..., 0] = (np.arange(t_len) + 10 * demo + offset)[:, None, None]
    img[..., 1] = np.arange(16)[None, :, None]  # rows differ: catches flips
    return img


def make_robomimic(path: Path, with_abs: bool = False, drop: str | None = None) -> Path:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}})
        for i, t_len in enumerate(DEMO_LENGTHS):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = t_len
            t = np.arange(t_len, dtype=np.float64)
            half = 0.04 - 0.002 * t
            obs = {
                "robot0_eef_pos": rm_pos(t),
                "robot0_eef_quat": quat_z_xyzw(0.1 * t),  # robosuite order: x y z w
                "robot0_gripper_qpos": np.stack([half, -half], -1),
                "robot0_joint_pos": np.tile(np.arange(7) * 0.1, (t_len, 1)) + t[:, None],
                "agentview_image": rm_image(t_len, i, 0),
                "robot0_eye_in_hand_image": rm_image(t_len, i, 100),
            }
            for k, v in obs.items():
                if k != drop or i != 1:
                    g.create_dataset(f"obs/{k}", data=v)
            g.create_dataset("next_obs/robot0_eef_pos", data=rm_pos(t + 1))
            g.create_dataset("next_obs/robot0_eef_quat", data=quat_z_xyzw(0.1 * (t + 1)))
            grip = np.where(t < N_OPEN, -1.0, 1.0)
            g.create_dataset("actions", data=np.concatenate([np.zeros((t_len, 6)), grip[:, None]], -1))
            if with_abs:
                absa = np.concatenate([rm_pos(t) + [0, 0, 0.05], np.stack([0 * t, 0 * t, 0.1 * t + 0.05], -1),
                                       grip[:, None]], -1)
                g.create_dataset("actions_abs", data=absa)
            rew = np.zeros(t_len)
            rew[-1] = 1.0
            g.create_dataset("rewards", data=rew)
        f.create_dataset("mask/failed", data=np.array([b"demo_1"]))
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_1"]))
    return path


def test_robomimic_next_pose_targets(tmp_path, caplog):
    src = make_robomimic(tmp_path / "lift.hdf5")
    with caplog.at_level(logging.WARNING):
        assert main([str(src), str(tmp_path / "out"), "--from", "robomimic"]) == 0
    assert any("next observed EE pose" in r.message for r in caplog.records)
    ds = EpisodeDataset(tmp_path / "out")
    assert len(ds) == 2 and [ds.info(i).length for i in range(2)] == list(DEMO_LENGTHS)
    assert sorted(ds.keys) == ["action", "reward", "rgb/front", "rgb/wrist", "state"]
    for i, t_len in enumerate(DEMO_LENGTHS):
        ep = ds.episode(i)
        t = np.arange(t_len, dtype=np.float64)
        assert ep["state"].dtype == np.float32 and ep["state"].shape == (t_len, 10)
        np.testing.assert_allclose(ep["state"][:, :3], rm_pos(t), atol=1e-6)
        np.testing.assert_allclose(ep["state"][:, 3:9], rz6d(0.1 * t), atol=1e-6)  # xyzw read correctly
        np.testing.assert_allclose(ep["state"][:, 9], 0.08 - 0.004 * t, atol=1e-6)  # q0 - q1
        # absolute target = next observed pose; the last one comes from next_obs
        np.testing.assert_allclose(ep["action"][:, :3], rm_pos(t + 1), atol=1e-6)
        np.testing.assert_allclose(ep["action"][:, 3:9], rz6d(0.1 * (t + 1)), atol=1e-6)
        np.testing.assert_allclose(ep["action"][:, 9], np.where(t < N_OPEN, 0.08, 0.0), atol=1e-7)
        np.testing.assert_array_equal(ep["rgb/front"], rm_image(t_len, i, 0))
        np.testing.assert_array_equal(ep["rgb/wrist"], rm_image(t_len, i, 100))
        assert ep["reward"][-1] == 1.0 and ep["reward"][:-1].sum() == 0
    # success from the "failed" mask, provenance per episode
    assert ds.success.tolist() == [True, False]
    m0, m1 = ds.episodes_meta
    assert m0["source"] == m1["source"] == "converted"
    assert m0["origin"]["demo"] == "demo_0" and m1["origin"]["demo"] == "demo_1"
    assert m0["origin"]["file"] == str(src.resolve()) and m0["origin"]["format"] == "robomimic"
    assert m1["filter_keys"] == ["failed", "train"] and m0["num_samples"] == 10
    a = ds.attrs
    assert a["task"] == "Lift" and a["control_hz"] == 20.0 and a["source_format"] == "robomimic"
    assert a["cameras"]["front"] == {"image_hw": [16, 16], "source_key": "agentview_image"}
    assert ObsSchema.from_dict(a["schema"]["obs"]) == ObsSchema(cameras=("front", "wrist"), image_hw=(16, 16),
                                                                include_joints=False, include_parts=False, n_parts=0)
    assert a["schema"]["action"] == json.loads(json.dumps(ActionSchema(control_hz=20.0).to_dict()))
    assert any("next observed EE pose" in n for n in a["conversion"]["notes"])
    assert a["frame"] == "robomimic_world"


def test_robomimic_abs_actions_base_frame_and_joints(tmp_path):
    src = make_robomimic(tmp_path / "lift.hdf5", with_abs=True)
    c = np.cos(np.pi / 4)
    main([str(src), str(tmp_path / "out"), "--from", "robomimic", "--base-pos", "-0.56", "0", "0.912",
          "--base-quat", str(c), "0", "0", str(c), "--joints", "--task", "lift_abs",
          "--camera", "agentview_image=front"])
    ds = EpisodeDataset(tmp_path / "out")
    assert ds.keys == ["action", "reward", "rgb/front", "state"] and ds.attrs["task"] == "lift_abs"
    ep = ds.episode(0)
    t = np.arange(10, dtype=np.float64)
    # base rotated +90 deg about z at (-0.56, 0, 0.912): x_base = R^T (x - p) = (dy, -dx, dz)
    d = rm_pos(t) - [-0.56, 0.0, 0.912]
    np.testing.assert_allclose(ep["state"][:, :3], np.stack([d[:, 1], -d[:, 0], d[:, 2]], -1), atol=1e-6)
    np.testing.assert_allclose(ep["state"][:, 3:9], rz6d(0.1 * t - np.pi / 2), atol=1e-6)
    np.testing.assert_allclose(ep["state"][:, 10:], np.tile(np.arange(7) * 0.1, (10, 1)) + t[:, None], atol=1e-6)
    # actions_abs used as is (pos + 5 cm up, axis-angle about z by 0.1 t + 0.05), then moved to the base frame
    da = rm_pos(t) + [0, 0, 0.05] - [-0.56, 0.0, 0.912]
    np.testing.assert_allclose(ep["action"][:, :3], np.stack([da[:, 1], -da[:, 0], da[:, 2]], -1), atol=1e-6)
    np.testing.assert_allclose(ep["action"][:, 3:9], rz6d(0.1 * t + 0.05 - np.pi / 2), atol=1e-6)
    np.testing.assert_allclose(ep["action"][:, 9], np.where(t < N_OPEN, 0.08, 0.0), atol=1e-7)
    assert ds.attrs["schema"]["obs"]["include_joints"] is True and ds.attrs["frame"] == "robot_base"
    notes = ds.attrs["conversion"]["notes"]
    assert not any("approximated by the next" in n for n in notes)
    # the test targets sit 5 cm above a fast-moving EE, so the frame-mismatch diagnostic fires
    assert any("controller frame may differ" in n for n in notes)


def test_robomimic_stride_and_filter_key(tmp_path):
    src = make_robomimic(tmp_path / "lift.hdf5")
    main([str(src), str(tmp_path / "s2"), "--from", "robomimic", "--stride", "2"])
    ds = EpisodeDataset(tmp_path / "s2")
    assert [ds.info(i).length for i in range(2)] == [5, 4] and ds.attrs["control_hz"] == 10.0
    ep = ds.episode(0)
    k = np.arange(0, 10, 2, dtype=np.float64)
    np.testing.assert_allclose(ep["state"][:, :3], rm_pos(k), atol=1e-6)
    np.testing.assert_allclose(ep["action"][:, :3], rm_pos(k + 2), atol=1e-6)  # pose at the end of the window
    np.testing.assert_allclose(ep["action"][:, 9], [0.08, 0.08, 0.0, 0.0, 0.0], atol=1e-7)  # command at t+1
    np.testing.assert_array_equal(ep["rgb/front"], rm_image(10, 0, 0)[::2])
    np.testing.assert_allclose(ep["reward"], [0, 0, 0, 0, 1])  # summed over each window
    main([str(src), str(tmp_path / "f"), "--from", "robomimic", "--filter-key", "failed"])
    ds = EpisodeDataset(tmp_path / "f")
    assert len(ds) == 1 and ds.episodes_meta[0]["origin"]["demo"] == "demo_1" and ds.success.tolist() == [False]


def test_robomimic_missing_key_is_a_clear_error(tmp_path):
    src = make_robomimic(tmp_path / "bad.hdf5", drop="robot0_eef_quat")
    with pytest.raises(DatasetError, match="robot0_eef_quat"):
        main([str(src), str(tmp_path / "out"), "--from", "robomimic"])
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))  # no staging leftovers
    with pytest.raises(DatasetError, match="already exists"):
        (tmp_path / "exists").mkdir()
        main([str(make_robomimic(tmp_path / "ok.hdf5")), str(tmp_path / "exists"), "--from", "robomimic"])


def test_cli_runs_as_module(tmp_path):
    src = make_robomimic(tmp_path / "lift.hdf5")
    proc = subprocess.run([sys.executable, "-m", "data.convert", str(src), str(tmp_path / "out"), "--from",
                           "robomimic", "--camera", "robot0_eye_in_hand_image=wrist"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ds = EpisodeDataset(tmp_path / "out")
    assert len(ds) == 2 and "rgb/wrist" in ds.keys and "rgb/front" not in ds.keys


# ------------------------------------------------------------------------------------------
# furniture-bench
# ------------------------------------------------------------------------------------------
FB_T = 6
FB_GRASP = [-1.0, 0.01, 1.0, 0.005, -0.5, 0.0]  # 0.01 / 0.005 / 0.0 are inside the 0.019 margin
FB_WIDTH = [0.065, 0.065, 0.0, 0.0, 0.065, 0.065]  # one_leg opens to 0.065 m
S45 = np.sin(np.pi / 4)
C5, S5 = np.cos(np.radians(5.0)), np.sin(np.radians(5.0))


def fb_ee_pos(t: int) -> np.ndarray:
    return np.array([0.5 + 0.01 * t, 0.0, 0.2])


def make_fb(path: Path, success: bool = True, drop: str | None = None, compress: bool = False) -> Path:
    observations = []
    for t in range(FB_T + 1):  # the collector stores the final observation too
        rs = {"ee_pos": fb_ee_pos(t), "ee_quat": np.array([S45, 0.0, 0.0, S45]),  # +90 deg about x, xyzw
              "ee_pos_vel": np.zeros(3), "ee_ori_vel": np.zeros(3),
              "joint_positions": np.arange(7) * 0.1 + t, "joint_velocities": np.zeros(7),
              "joint_torques": np.zeros(7), "gripper_width": np.array([0.05 - 0.001 * t], np.float32)}
        rs.pop(drop, None)
        img = np.full((16, 16, 3), t, np.uint8)
        observations.append({"robot_state": rs, "color_image1": img, "color_image2": img + 50,
                             "parts_poses": np.zeros(35, np.float32)})
    dquat = [0.0, 0.0, S5, C5]  # +10 deg about z, xyzw
    actions = np.array([[0.01, -0.02, 0.005, *dquat, g] for g in FB_GRASP], np.float32)
    data = {"observations": observations, "actions": list(actions), "rewards": [0.0] * (FB_T - 1) + [1.0],
            "skills": [0, 0, 1, 0, 0, 1], "success": success, "furniture": "one_leg", "error": False,
            "error_description": ""}
    with (gzip.open if compress else open)(path, "wb") as fh:
        pickle.dump(data, fh)
    return path


def test_furniture_bench_folder(tmp_path):
    folder = tmp_path / "demos"
    (folder / "2024-01-01-00:00:00").mkdir(parents=True)
    (folder / "2024-01-01-00:05:00").mkdir(parents=True)
    make_fb(folder / "2024-01-01-00:00:00" / "a.pkl")
    make_fb(folder / "2024-01-01-00:05:00" / "b.pkl.gz", success=False, compress=True)
    main([str(folder), str(tmp_path / "out"), "--from", "furniture_bench", "--joints"])
    ds = EpisodeDataset(tmp_path / "out")
    assert len(ds) == 2 and [ds.info(i).length for i in range(2)] == [FB_T, FB_T]  # final obs dropped
    assert ds.success.tolist() == [True, False]
    ep = ds.episode(0)
    t = np.arange(FB_T)
    assert ep["state"].shape == (FB_T, 17)
    np.testing.assert_allclose(ep["state"][:, :3], [fb_ee_pos(i) for i in t], atol=1e-6)
    # +90 deg about x: rows [1,0,0], [0,0,-1] (a wxyz misread would give a different matrix)
    np.testing.assert_allclose(ep["state"][:, 3:9], np.tile([1, 0, 0, 0, 0, -1], (FB_T, 1)), atol=1e-6)
    np.testing.assert_allclose(ep["state"][:, 9], 0.05 - 0.001 * t, atol=1e-6)
    np.testing.assert_allclose(ep["state"][:, 10:], np.arange(7) * 0.1 + t[:, None], atol=1e-6)
    # absolute target: ee_pos + d, R = Rx(90) @ Rz(10) = [[c,-s,0],[0,0,-1],[s,c,0]]
    c10, s10 = np.cos(np.radians(10)), np.sin(np.radians(10))
    np.testing.assert_allclose(ep["action"][:, :3], [fb_ee_pos(i) + [0.01, -0.02, 0.005] for i in t], atol=1e-6)
    np.testing.assert_allclose(ep["action"][:, 3:9], np.tile([c10, -s10, 0, 0, 0, -1], (FB_T, 1)), atol=1e-6)
    np.testing.assert_allclose(ep["action"][:, 9], FB_WIDTH, atol=1e-7)
    np.testing.assert_array_equal(ep["rgb/wrist"][:, 0, 0, 0], t)  # color_image1 = wrist
    np.testing.assert_array_equal(ep["rgb/front"][:, 0, 0, 0], t + 50)  # color_image2 = front
    np.testing.assert_allclose(ep["reward"], [0, 0, 0, 0, 0, 1])
    m = ds.episodes_meta[0]
    assert m["source"] == "converted" and m["furniture"] == "one_leg" and m["skill_steps"] == [2, 5]
    assert m["origin"]["format"] == "furniture_bench" and m["origin"]["file"].endswith("a.pkl")
    assert ds.episodes_meta[1]["origin"]["file"].endswith("b.pkl.gz")
    a = ds.attrs
    assert a["task"] == "one_leg" and a["control_hz"] == 10.0 and a["source_format"] == "furniture_bench"
    assert a["schema"]["obs"]["cameras"] == ["wrist", "front"] and a["schema"]["obs"]["include_joints"] is True
    assert a["cameras"]["wrist"]["source_key"] == "color_image1"


def test_furniture_bench_missing_key(tmp_path):
    make_fb(tmp_path / "bad.pkl", drop="ee_quat")
    with pytest.raises(DatasetError, match="ee_quat"):
        main([str(tmp_path / "bad.pkl"), str(tmp_path / "out"), "--from", "furniture_bench"])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# LeRobot
# ------------------------------------------------------------------------------------------
H, W = 24, 32  # not square: catches height/width swaps
OURS_LENGTHS = (7, 5)


def gradient(t_len: int, phase: int) -> np.ndarray:
    """Smooth images (codec-friendly) that still differ per frame."""
    y, x = np.mgrid[0:H, 0:W]
    frames = [np.stack([x * 6 + 10 * t + phase, y * 8 + 20, np.full_like(x, 120 + 10 * t)], -1) for t in range(t_len)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def make_ours(path: Path) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    attrs = {"task": "one_leg", "control_hz": 10.0, "cameras": {"front": {"image_hw": [H, W]}},
             "schema": {"obs": ObsSchema(cameras=("front", "wrist"), image_hw=(H, W), n_parts=2).to_dict(),
                        "action": ActionSchema().to_dict()}, "backend": "mujoco"}
    w = EpisodeWriter.create(path, attrs)
    eps = {}
    for i, n in enumerate(OURS_LENGTHS):
        frames = {"state": rng.normal(size=(n, 10)).astype(np.float32),
                  "action": rng.normal(size=(n, 10)).astype(np.float32),
                  "parts": rng.normal(size=(n, 18)).astype(np.float32),
                  "reward": rng.random(n).astype(np.float32),
                  "rgb/front": gradient(n, 5 * i), "rgb/wrist": gradient(n, 40 + 5 * i)[:, ::-1].copy()}
        w.add_episode(frames, success=i == 0, source="scripted", seed=100 + i, operator="alice")
        eps[i] = frames
    return eps


def test_lerobot_export_layout(tmp_path):
    pa, pq = arrow()
    make_ours(tmp_path / "ours")
    main([str(tmp_path / "ours"), str(tmp_path / "lr"), "--to", "lerobot"])
    root = tmp_path / "lr"
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert info["total_episodes"] == 2 and info["total_frames"] == 12 and info["total_tasks"] == 1
    f = info["features"]
    assert f["observation.state"] == {"dtype": "float32", "shape": [10],
                                      "names": ["x", "y", "z", "r11", "r12", "r13", "r21", "r22", "r23",
                                                "gripper_width"]}
    assert f["observation.environment_state"]["shape"] == [18] and f["next.reward"]["shape"] == [1]
    assert f["observation.images.front"]["dtype"] == "video" and f["observation.images.front"]["shape"] == [H, W, 3]
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in f
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert table.schema.field("observation.state").type == pa.list_(pa.float32(), 10)
    assert table.column("episode_index").to_pylist() == [0] * 7 + [1] * 5
    assert table.column("frame_index").to_pylist() == list(range(7)) + list(range(5))
    assert table.column("index").to_pylist() == list(range(12))
    np.testing.assert_allclose(table.column("timestamp").to_numpy(), np.r_[np.arange(7), np.arange(5)] / 10)
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in eps] == [7, 5] and [e["dataset_from_index"] for e in eps] == [0, 7]
    assert [e["dataset_to_index"] for e in eps] == [7, 12] and eps[0]["tasks"] == ["one_leg"]
    assert eps[1]["videos/observation.images.front/from_timestamp"] == pytest.approx(0.7)
    assert eps[1]["videos/observation.images.front/to_timestamp"] == pytest.approx(1.2)
    assert (root / "videos/observation.images.wrist/chunk-000/file-000.mp4").is_file()
    import pandas as pd

    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert tasks.index.name == "task" and int(tasks.loc["one_leg"].task_index) == 0
    stats = json.loads((root / "meta/stats.json").read_text())
    assert stats["observation.state"]["count"] == [12]
    assert np.array(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)


def test_lerobot_round_trip_video(tmp_path):
    arrow()
    eps = make_ours(tmp_path / "ours")
    main([str(tmp_path / "ours"), str(tmp_path / "lr"), "--to", "lerobot"])
    main([str(tmp_path / "lr"), str(tmp_path / "back"), "--from", "lerobot"])
    ds = EpisodeDataset(tmp_path / "back")
    assert sorted(ds.keys) == ["action", "parts", "reward", "rgb/front", "rgb/wrist", "state"]
    assert [ds.info(i).length for i in range(2)] == list(OURS_LENGTHS)
    for i, frames in eps.items():
        ep = ds.episode(i)
        for k in ("state", "action", "parts", "reward"):
            assert ep[k].dtype == np.float32
            np.testing.assert_array_equal(ep[k], frames[k])  # low-dim: bit exact
        for k in ("rgb/front", "rgb/wrist"):
            diff = np.abs(ep[k].astype(int) - frames[k].astype(int))
            assert ep[k].shape == frames[k].shape and diff.mean() < 5.0 and diff.max() < 40, (k, diff.mean())
    assert ds.success.tolist() == [True, False]
    m = ds.episodes_meta
    assert [x["seed"] for x in m] == [100, 101] and m[0]["operator"] == "alice"
    assert m[0]["source"] == "converted" and m[0]["original_source"] == "scripted"
    assert m[0]["origin"]["format"] == "lerobot" and m[1]["origin"]["episode_index"] == 1
    a = ds.attrs
    assert a["task"] == "one_leg" and a["control_hz"] == 10.0 and a["source_format"] == "lerobot"
    assert a["schema"]["obs"]["cameras"] == ["front", "wrist"] and a["schema"]["obs"]["include_parts"] is True
    assert a["schema"]["obs"]["image_hw"] == [H, W] and a["backend"] == "mujoco"


def test_lerobot_round_trip_png_is_lossless(tmp_path):
    arrow()
    eps = make_ours(tmp_path / "ours")
    main([str(tmp_path / "ours"), str(tmp_path / "lr"), "--to", "lerobot", "--images", "image"])
    assert not (tmp_path / "lr/videos").exists()
    main([str(tmp_path / "lr"), str(tmp_path / "back"), "--from", "lerobot"])
    ds = EpisodeDataset(tmp_path / "back")
    for i, frames in eps.items():
        ep = ds.episode(i)
        for k, v in frames.items():
            np.testing.assert_array_equal(ep[k], v)


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    gen = imageio_ffmpeg.write_frames(str(path), size=(frames.shape[2], frames.shape[1]), fps=fps, codec="libx264",
                                      quality=None, macro_block_size=1, ffmpeg_log_level="error",
                                      output_params=["-crf", "10"])
    gen.send(None)
    for fr in frames:
        gen.send(fr.tobytes())
    gen.close()


V21_LENGTHS = (4, 6)


def make_lerobot_v21(root: Path) -> None:
    """A LeRobot v2.1 dataset as documented: per-episode parquet + mp4, jsonl metadata, foreign layouts."""
    pa, pq = arrow()
    info = {
        "codebase_version": "v2.1", "robot_type": "panda", "total_episodes": 2, "total_frames": sum(V21_LENGTHS),
        "total_tasks": 1, "total_videos": 2, "total_chunks": 1, "chunks_size": 1000, "fps": 10,
        "splits": {"train": "0:2"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {
            "observation.images.top": {"dtype": "video", "shape": [16, 16, 3],
                                       "names": ["height", "width", "channels"]},
            "observation.state": {"dtype": "float32", "shape": [8], "names": ["x", "y", "z", "qx", "qy", "qz", "qw",
                                                                              "gripper"]},
            "action": {"dtype": "float32", "shape": [7], "names": ["x", "y", "z", "rx", "ry", "rz", "grip"]},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "stack the cube"}) + "\n")
    (root / "meta/episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "tasks": ["stack the cube"], "length": n}) + "\n"
        for e, n in enumerate(V21_LENGTHS)))
    index = 0
    for e, n in enumerate(V21_LENGTHS):
        t = np.arange(n, dtype=np.float64)
        state = np.concatenate([np.stack([t, 2 * t, 3 * t], -1) * 0.01, quat_z_xyzw(0.2 * t),
                                np.full((n, 1), 0.04)], -1).astype(np.float32)
        grip = np.where(t < 2, -1.0, 1.0)
        action = np.concatenate([np.stack([t, t, t], -1) * 0.02, np.stack([0 * t, 0 * t, 0.3 * t], -1),
                                 grip[:, None]], -1).astype(np.float32)
        table = pa.table({
            "observation.state": pa.array(list(state), type=pa.list_(pa.float32())),  # variable-size lists
            "action": pa.array(list(action), type=pa.list_(pa.float32())),
            "timestamp": pa.array((t / 10).astype(np.float32)), "frame_index": pa.array(np.arange(n)),
            "episode_index": pa.array(np.full(n, e)), "index": pa.array(np.arange(index, index + n)),
            "task_index": pa.array(np.zeros(n, np.int64)),
        })
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"data/chunk-000/episode_{e:06d}.parquet")
        frames = np.stack([np.full((16, 16, 3), 20 + 40 * k + 10 * e, np.uint8) for k in range(n)])
        write_video(root / f"videos/chunk-000/observation.images.top/episode_{e:06d}.mp4", frames)
        index += n


def test_lerobot_v21_handmade_with_layouts(tmp_path):
    make_lerobot_v21(tmp_path / "v21")
    main([str(tmp_path / "v21"), str(tmp_path / "out"), "--from", "lerobot", "--camera", "top=front",
          "--state-layout", "pos=0:3,quat_xyzw=3:7,gripper=7:8",
          "--action-layout", "pos=0:3,rotvec=3:6,gripper_cmd=6:7"])
    ds = EpisodeDataset(tmp_path / "out")
    assert [ds.info(i).length for i in range(2)] == list(V21_LENGTHS)
    assert sorted(ds.keys) == ["action", "rgb/front", "state"]
    for e, n in enumerate(V21_LENGTHS):
        ep = ds.episode(e)
        t = np.arange(n, dtype=np.float64)
        np.testing.assert_allclose(ep["state"][:, :3], np.stack([t, 2 * t, 3 * t], -1) * 0.01, atol=1e-6)
        np.testing.assert_allclose(ep["state"][:, 3:9], rz6d(0.2 * t), atol=1e-6)
        np.testing.assert_allclose(ep["state"][:, 9], 0.04, atol=1e-7)
        np.testing.assert_allclose(ep["action"][:, :3], np.stack([t, t, t], -1) * 0.02, atol=1e-6)
        np.testing.assert_allclose(ep["action"][:, 3:9], rz6d(0.3 * t), atol=1e-6)
        np.testing.assert_allclose(ep["action"][:, 9], np.where(t < 2, 0.08, 0.0), atol=1e-7)
        # frame k of episode e is grey 20 + 40k + 10e: right frames, right episode, right file
        np.testing.assert_allclose(ep["rgb/front"].mean(axis=(1, 2, 3)), 20 + 40 * t + 10 * e, atol=2.0)
    a = ds.attrs
    assert a["task"] == "stack the cube" and a["control_hz"] == 10.0 and a["source_format"] == "lerobot"
    assert a["cameras"]["front"]["source_key"] == "observation.images.top"
    assert a["lerobot_codebase_version"] == "v2.1"
    assert ds.success.tolist() == [True, True]
    assert ds.episodes_meta[1]["origin"] == {"format": "lerobot", "path": str((tmp_path / "v21").resolve()),
                                             "episode_index": 1}


def test_lerobot_foreign_layout_needs_description(tmp_path):
    make_lerobot_v21(tmp_path / "v21")
    with pytest.raises(DatasetError, match="--state-layout"):
        main([str(tmp_path / "v21"), str(tmp_path / "out"), "--from", "lerobot"])
    with pytest.raises(ValueError, match="exactly one rotation"):
        main([str(tmp_path / "v21"), str(tmp_path / "out"), "--from", "lerobot", "--state-layout",
              "pos=0:3,gripper=7:8", "--action-layout", "pos=0:3,rotvec=3:6,gripper_cmd=6:7"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="meta/info.json"):
        main([str(tmp_path / "empty"), str(tmp_path / "out"), "--from", "lerobot"])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# malformed LeRobot metadata: one error type, naming the file and what is wrong
# ------------------------------------------------------------------------------------------
INFO_VARIANTS: dict[str, tuple[Any, str]] = {  # name -> (raw text, or an edit of the valid info; phrase)
    "null": ("null", "got null"),
    "top_level_list": ("[]", "should hold a JSON object"),
    "invalid_json": ('{"codebase_version": "v2.1",', "not valid JSON"),
    "empty_file": ("", "not valid JSON"),
    "missing_fps": (lambda i: i.pop("fps"), "missing required key 'fps'"),
    "missing_all": (lambda i: i.clear(), "missing required keys 'codebase_version', 'fps', 'features'"),
    "features_list": (lambda i: i.update(features=list(i["features"].values())),
                      "'features' should be an object"),
    "feature_not_object": (lambda i: i["features"].update(action="float32"),
                           "features['action'] should be an object"),
    "feature_without_dtype": (lambda i: i["features"]["observation.images.top"].pop("dtype"),
                              "features['observation.images.top'] has no string 'dtype'"),
    "state_shape_string": (lambda i: i["features"]["observation.state"].update(shape="8"),
                           "features['observation.state']['shape'] should be a list of one positive integer"),
    "action_missing": (lambda i: i["features"].pop("action"), "features lack required key 'action'"),
    "fps_string": (lambda i: i.update(fps="10"), "'fps' should be a positive number"),
    "version_number": (lambda i: i.update(codebase_version=2.1), "'codebase_version' should be a string"),
    "version_unknown": (lambda i: i.update(codebase_version="v1.6"), "v1.6 is not supported"),
    "video_path_number": (lambda i: i.update(video_path=5), "'video_path' should be a path template"),
}


def break_info(root: Path, change: Any) -> Path:
    path = root / "meta/info.json"
    if isinstance(change, str):
        path.write_text(change)
    else:
        info = json.loads(path.read_text())
        change(info)
        path.write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("case", sorted(INFO_VARIANTS))
def test_lerobot_malformed_info_is_one_clear_error(tmp_path, case):
    change, phrase = INFO_VARIANTS[case]
    make_lerobot_v21(tmp_path / "v21")
    path = break_info(tmp_path / "v21", change)
    with pytest.raises(DatasetFormatError) as exc:
        main([str(tmp_path / "v21"), str(tmp_path / "out"), "--from", "lerobot", "--camera", "top=front",
              "--state-layout", "pos=0:3,quat_xyzw=3:7,gripper=7:8",
              "--action-layout", "pos=0:3,rotvec=3:6,gripper_cmd=6:7"])
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and phrase in msg, msg
    assert isinstance(exc.value, DatasetError) and isinstance(exc.value, ValueError)  # old handlers still catch it
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["null", "invalid_json", "features_list"])
def test_cli_malformed_info_prints_one_line_and_fails(tmp_path, case):
    change, phrase = INFO_VARIANTS[case]
    make_lerobot_v21(tmp_path / "v21")
    path = break_info(tmp_path / "v21", change)
    proc = subprocess.run([sys.executable, "-m", "data.convert", str(tmp_path / "v21"), str(tmp_path / "out"),
                           "--from", "lerobot"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if "error" in x.lower()]
    assert len(lines) == 1 and str(path) in lines[0] and phrase in lines[0], proc.stderr


def test_lerobot_malformed_jsonl_and_our_meta_name_the_file(tmp_path):
    make_lerobot_v21(tmp_path / "v21")
    root = tmp_path / "v21"
    args = [str(root), str(tmp_path / "out"), "--from", "lerobot", "--camera", "top=front",
            "--state-layout", "pos=0:3,quat_xyzw=3:7,gripper=7:8",
            "--action-layout", "pos=0:3,rotvec=3:6,gripper_cmd=6:7"]
    good_tasks = (root / "meta/tasks.jsonl").read_text()
    (root / "meta/tasks.jsonl").write_text(good_tasks + '{"task_index": 1\n')
    with pytest.raises(DatasetFormatError, match=r"tasks\.jsonl: line 2 is not valid JSON"):
        main(args)
    (root / "meta/tasks.jsonl").write_text(good_tasks)
    (root / "meta/episodes.jsonl").write_text('{"tasks": ["stack the cube"], "length": 4}\n')
    with pytest.raises(DatasetFormatError, match=r"episodes\.jsonl: line 1 has no integer 'episode_index'"):
        main(args)
    make_lerobot_v21(tmp_path / "v21b")
    (tmp_path / "v21b/meta/pixel_dppo.json").write_text("[1, 2")
    with pytest.raises(DatasetFormatError, match=r"pixel_dppo\.json: not valid JSON"):
        main([str(tmp_path / "v21b")] + args[1:])


# ------------------------------------------------------------------------------------------
# per-episode tasks through LeRobot import and export
# ------------------------------------------------------------------------------------------
MT_LENGTHS = (3, 4, 2)
MT_TASKS = ("pick the cube", "stack the cube", "pick the cube")  # episode -> task
MT_TASK_INDEX = {"stack the cube": 0, "pick the cube": 1}  # not the order of first use: catches positional lookups


def make_lerobot_v30_multitask(root: Path, with_task_index: bool = True) -> dict[int, np.ndarray]:
    """A LeRobot v3.0 folder as LeRobot writes it (one data file, tasks.parquet indexed by the task text)."""
    import pandas as pd

    pa, pq = arrow()
    rng = np.random.default_rng(7)
    states = {e: rng.normal(size=(n, 10)).astype(np.float32) for e, n in enumerate(MT_LENGTHS)}
    feats = {"observation.state": {"dtype": "float32", "shape": [10], "names": None},
             "action": {"dtype": "float32", "shape": [10], "names": None}}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        feats[k] = {"dtype": "int64", "shape": [1], "names": None}
    feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    info = {"codebase_version": "v3.0", "robot_type": "panda", "total_episodes": 3, "total_frames": sum(MT_LENGTHS),
            "total_tasks": 2, "chunks_size": 1000, "fps": 10, "splits": {"train": "0:3"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "video_path": None,
            "features": feats}
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    pd.DataFrame({"task_index": list(MT_TASK_INDEX.values())},
                 index=pd.Index(list(MT_TASK_INDEX), name="task")).to_parquet(root / "meta/tasks.parquet")
    ep_col = np.concatenate([np.full(n, e) for e, n in enumerate(MT_LENGTHS)])
    columns = {
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(list(states.values())).ravel()),
                                                               10),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(sum(MT_LENGTHS) * 10, np.float32)), 10),
        "timestamp": pa.array(np.concatenate([np.arange(n) / 10 for n in MT_LENGTHS]).astype(np.float32)),
        "frame_index": pa.array(np.concatenate([np.arange(n) for n in MT_LENGTHS])),
        "episode_index": pa.array(ep_col), "index": pa.array(np.arange(sum(MT_LENGTHS))),
    }
    if with_task_index:
        columns["task_index"] = pa.array(np.array([MT_TASK_INDEX[MT_TASKS[e]] for e in ep_col], np.int64))
    pq.write_table(pa.table(columns), root / "data/chunk-000/file-000.parquet")
    starts = np.r_[0, np.cumsum(MT_LENGTHS)]
    pq.write_table(pa.table({
        "episode_index": list(range(3)), "tasks": [[t] for t in MT_TASKS], "length": list(MT_LENGTHS),
        "data/chunk_index": [0] * 3, "data/file_index": [0] * 3,
        "dataset_from_index": starts[:-1].tolist(), "dataset_to_index": starts[1:].tolist(),
    }), root / "meta/episodes/chunk-000/file-000.parquet")
    return states


def exported_frame_tasks(root: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """(task text of every frame via its task_index, each episode record's tasks, the tasks table) of an export."""
    import pandas as pd

    _, pq = arrow()
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    by_index = {int(i): t for t, i in zip(tasks.index, tasks["task_index"])}
    frames = [by_index[i] for i in pq.read_table(root / "data/chunk-000/file-000.parquet")["task_index"].to_pylist()]
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").column("tasks").to_pylist()
    return frames, episodes, list(tasks.index)


def test_lerobot_per_episode_tasks_survive_import_export_import(tmp_path):
    states = make_lerobot_v30_multitask(tmp_path / "lr")
    main([str(tmp_path / "lr"), str(tmp_path / "ours"), "--from", "lerobot"])
    ds = EpisodeDataset(tmp_path / "ours")
    assert [m["task"] for m in ds.episodes_meta] == list(MT_TASKS)  # import keeps each episode's task
    assert ds.attrs["lerobot_tasks"] == ["stack the cube", "pick the cube"]  # ordered by task_index
    for e, s in states.items():
        np.testing.assert_array_equal(ds.episode(e)["state"], s)

    main([str(tmp_path / "ours"), str(tmp_path / "lr2"), "--to", "lerobot"])
    root = tmp_path / "lr2"
    frames, episodes, table = exported_frame_tasks(root)
    assert frames == [MT_TASKS[e] for e, n in enumerate(MT_LENGTHS) for _ in range(n)]  # each frame's task_index
    assert episodes == [[t] for t in MT_TASKS]  # episodes metadata lists its task
    assert sorted(table) == ["pick the cube", "stack the cube"]  # each task once
    assert json.loads((root / "meta/info.json").read_text())["total_tasks"] == 2

    main([str(root), str(tmp_path / "back"), "--from", "lerobot"])
    back = EpisodeDataset(tmp_path / "back")
    assert [m["task"] for m in back.episodes_meta] == list(MT_TASKS)
    for e, s in states.items():
        np.testing.assert_array_equal(back.episode(e)["state"], s)


def test_lerobot_tasks_from_episode_records_and_task_text_override(tmp_path):
    make_lerobot_v30_multitask(tmp_path / "lr", with_task_index=False)  # no per-frame task_index column
    main([str(tmp_path / "lr"), str(tmp_path / "ours"), "--from", "lerobot"])
    assert [m["task"] for m in EpisodeDataset(tmp_path / "ours").episodes_meta] == list(MT_TASKS)
    main([str(tmp_path / "ours"), str(tmp_path / "one"), "--to", "lerobot", "--task-text", "assemble"])
    frames, episodes, table = exported_frame_tasks(tmp_path / "one")
    assert table == ["assemble"] and set(frames) == {"assemble"} and episodes == [["assemble"]] * 3


def test_lerobot_unknown_task_index_names_the_tasks_file(tmp_path):
    import pandas as pd

    make_lerobot_v30_multitask(tmp_path / "lr")
    pd.DataFrame({"task_index": [0]}, index=pd.Index(["stack the cube"], name="task")).to_parquet(
        tmp_path / "lr/meta/tasks.parquet")
    with pytest.raises(DatasetFormatError, match=r"episode 0 uses task_index \[1\]"):
        main([str(tmp_path / "lr"), str(tmp_path / "ours"), "--from", "lerobot"])
