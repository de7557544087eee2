import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.episodes import DatasetError, EpisodeDataset, EpisodeWriter
from data.recorder import EpisodeRecorder
from tests.crash_writer import episode

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_metadata_and_filters(tmp_path):
    path = tmp_path / "ds.zarr"
    w = EpisodeWriter.create(path, attrs={"task": "one_leg", "control_hz": 10.0})
    for i in range(4):
        w.add_episode(episode(i, length=10 + i), success=i % 2 == 0, source="scripted" if i < 3 else "teleop",
                      seed=100 + i, operator="op", notes=f"n{i}")
    ds = EpisodeDataset(path)
    assert len(ds) == 4 and ds.n_frames == 10 + 11 + 12 + 13
    np.testing.assert_array_equal(ds.episode_ends, [10, 21, 33, 46])
    for i in range(4):
        ep = ds.episode(i)
        ref = episode(i, length=10 + i)
        for k in ref:
            np.testing.assert_array_equal(ep[k], ref[k])
        meta = ds.info(i).meta
        assert meta["seed"] == 100 + i and meta["operator"] == "op" and meta["notes"] == f"n{i}"
    np.testing.assert_array_equal(ds.select(success_only=True), [0, 2])
    np.testing.assert_array_equal(ds.select(sources=["teleop"]), [3])
    assert ds.keys == ["action", "rgb/front", "state"]
    assert ds.array("rgb/front").chunks == (1, 16, 16, 3)  # one frame per chunk
    assert ds.attrs["task"] == "one_leg"


def test_appending_never_rewrites_earlier_image_chunks(tmp_path):
    path = tmp_path / "ds.zarr"
    w = EpisodeWriter.create(path)
    w.add_episode(episode(0), success=True, source="scripted")
    chunk_dir = path / "data" / "rgb" / "front" / "c"
    before = {p: p.stat().st_mtime_ns for p in chunk_dir.rglob("*") if p.is_file()}
    w.add_episode(episode(1), success=True, source="scripted")
    after = {p: p.stat().st_mtime_ns for p in chunk_dir.rglob("*") if p.is_file()}
    assert all(after[p] == t for p, t in before.items())
    assert len(after) == 2 * len(before)


def test_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        EpisodeDataset(tmp_path / "missing.zarr")
    path = tmp_path / "ds.zarr"
    w = EpisodeWriter.create(path, attrs={"task": "one_leg"})
    w.add_episode(episode(0), success=True, source="scripted")
    with pytest.raises(DatasetError, match="rgb/front"):  # schema mismatch: other image size
        bad = episode(1)
        bad["rgb/front"] = np.zeros((12, 8, 8, 3), np.uint8)
        w.add_episode(bad, success=True, source="scripted")
    with pytest.raises(DatasetError, match="keys"):
        w.add_episode({"state": episode(1)["state"]}, success=True, source="scripted")
    with pytest.raises(ValueError, match="source"):
        w.add_episode(episode(1), success=True, source="dream")
    ds = EpisodeDataset(path)
    with pytest.raises(DatasetError, match="no key 'rgb/wrist'"):
        ds.array("rgb/wrist")
    with pytest.raises(DatasetError, match="task 'one_leg', not 'lamp'"):
        ds.check_compatible(task="lamp")
    with pytest.raises(DatasetError, match="lacks keys"):
        ds.check_compatible(required_keys=["rgb/wrist"])
    with pytest.raises(DatasetError, match="expected 'lamp'"):
        EpisodeWriter.append_to(path, expect={"task": "lamp"})
    # unknown format version
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="format_version 99"):
        EpisodeDataset(path)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError):
        EpisodeDataset(tmp_path / "plain")


def _run_writer(path, n_full, mode, wait_for):
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "crash_writer.py"), str(path), str(n_full), mode],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if wait_for(lines):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return lines


def test_killed_writer_loses_no_finished_episode(tmp_path):
    path = tmp_path / "ds.zarr"
    _run_writer(path, 3, "partial", lambda lines: lines[-1] == "partial")
    ds = EpisodeDataset(path)
    assert len(ds) == 3  # the half-written 4th episode is invisible
    for i in range(3):
        np.testing.assert_array_equal(ds.episode(i)["rgb/front"], episode(i)["rgb/front"])
    assert ds.array("state").shape[0] > ds.n_frames  # the orphan frames are on disk ...
    w = EpisodeWriter.append_to(path)  # ... and cut when reopened for appending
    assert EpisodeDataset(path).array("state").shape[0] == ds.n_frames
    w.add_episode(episode(7), success=False, source="scripted", seed=7)
    ds = EpisodeDataset(path)
    assert len(ds) == 4 and ds.info(3).meta["seed"] == 7
    np.testing.assert_array_equal(ds.episode(3)["state"], episode(7)["state"])


def test_writer_killed_at_an_arbitrary_moment(tmp_path):
    path = tmp_path / "ds.zarr"
    lines = _run_writer(path, 0, "loop", lambda lines: sum(ln.startswith("committed") for ln in lines) >= 5)
    committed = sum(ln.startswith("committed") for ln in lines)
    ds = EpisodeDataset(path)
    assert committed <= len(ds) <= committed + 1  # killed while writing the next one, or right after it
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds.episode(i)["state"], episode(i)["state"])


def test_recorder_stacks_steps(tmp_path):
    w = EpisodeWriter.create(tmp_path / "ds.zarr")
    rec = EpisodeRecorder(w)
    for t in range(5):
        rec.add({"state": np.full(10, t, np.float32)}, np.full(10, -t, np.float32), reward=float(t == 4))
    assert rec.finish(success=True, source="teleop", seed=3) == 0
    rec.add({"state": np.zeros(10, np.float32)}, np.zeros(10, np.float32))
    rec.discard()
    assert rec.finish(success=True, source="teleop") is None
    ep = EpisodeDataset(tmp_path / "ds.zarr").episode(0)
    np.testing.assert_array_equal(ep["state"][:, 0], np.arange(5))
    np.testing.assert_array_equal(ep["reward"], [0, 0, 0, 0, 1])
