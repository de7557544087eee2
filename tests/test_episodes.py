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
    arr_dir = path / "data" / "rgb" / "front"
    before = {p: p.stat().st_mtime_ns for p in arr_dir.rglob("c*") if p.is_file()}
    assert len(before) == 12  # one chunk file per frame
    w.add_episode(episode(1), success=True, source="scripted")
    after = {p: p.stat().st_mtime_ns for p in arr_dir.rglob("c*") if p.is_file()}
    assert all(after[p] == t for p, t in before.items())
    assert len(after) == 2 * len(before)



def _write(path, episodes):
    w = EpisodeWriter.create(path)
    for i, ep in enumerate(episodes):
        w.add_episode(ep, success=True, source="scripted", seed=i)


def test_chunk_file_writer_matches_zarrs_own_writer(tmp_path, monkeypatch):
    import zarr

    from data import chunk_files

    eps = [episode(0), episode(1, length=7), episode(2)]
    eps[1]["rgb/front"][3] = 0  # an all-fill frame: no chunk file, as zarr does
    _write(tmp_path / "fast.zarr", eps)
    monkeypatch.setattr(chunk_files, "fast_layout", lambda arr: (None, "forced off"))
    _write(tmp_path / "zarr.zarr", eps)
    fast, ref = zarr.open_group(str(tmp_path / "fast.zarr"), mode="r"), zarr.open_group(str(tmp_path / "zarr.zarr"),
                                                                                         mode="r")
    for key in ("rgb/front", "state", "action"):
        np.testing.assert_array_equal(np.asarray(fast["data"][key][:]), np.asarray(ref["data"][key][:]))
    np.testing.assert_array_equal(np.asarray(fast["data/rgb/front"][:]),
                                  np.concatenate([e["rgb/front"] for e in eps]))
    files = lambda root: sorted(p.relative_to(root) for p in root.rglob("c*") if p.is_file())  # noqa: E731
    written = files(tmp_path / "fast.zarr" / "data/rgb/front")
    assert written == files(tmp_path / "zarr.zarr" / "data/rgb/front") and len(written) == 12 + 7 + 12 - 1
    monkeypatch.undo()
    layout, _ = chunk_files.fast_layout(EpisodeDataset(tmp_path / "fast.zarr").array("rgb/front"))
    assert Path(chunk_files.chunk_path(layout, 12 + 2)).is_file()
    assert not Path(chunk_files.chunk_path(layout, 12 + 3)).exists()  # the all-fill frame


def test_chunk_file_writer_falls_back_when_zarr_reads_back_something_else(tmp_path, monkeypatch, caplog):
    from data import chunk_files

    real = chunk_files.write_frames
    monkeypatch.setattr(chunk_files, "write_frames",
                        lambda layout, params, start, frames, fill=0: real(layout, params, start, frames[::-1], fill))
    eps = [episode(0), episode(1)]
    _write(tmp_path / "ds.zarr", eps)
    assert "do not read back through zarr" in caplog.text
    ds = EpisodeDataset(tmp_path / "ds.zarr")
    np.testing.assert_array_equal(np.asarray(ds.array("rgb/front")[:]), np.concatenate([e["rgb/front"] for e in eps]))


def test_stale_chunk_file_never_shadows_an_empty_frame(tmp_path):
    """A killed writer can leave a chunk file past the array's end; a later all-zero frame there must read 0."""
    from data import chunk_files

    path = tmp_path / "ds.zarr"
    _write(path, [episode(0)])
    arr = EpisodeDataset(path).array("rgb/front")
    layout, _ = chunk_files.fast_layout(arr)
    # mid-episode (frame 17), where the writer's read-back check of first and last frame cannot see it
    chunk_files.write_frames(layout, chunk_files.blosc_params(arr), 17, np.full((1, 16, 16, 3), 9, np.uint8))
    assert Path(chunk_files.chunk_path(layout, 17)).is_file()
    nxt = episode(1)
    nxt["rgb/front"][5] = 0
    EpisodeWriter.append_to(path).add_episode(nxt, success=True, source="scripted")
    frames = np.asarray(EpisodeDataset(path).array("rgb/front")[12:])
    np.testing.assert_array_equal(frames, nxt["rgb/front"])
    assert not Path(chunk_files.chunk_path(layout, 17)).exists()


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
