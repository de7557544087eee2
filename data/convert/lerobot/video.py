"""mp4 writing and reading for LeRobot v3.0, where one file holds many episodes back to back.

Episodes are located by a time offset into a shared file, so the writer counts frames per file
and the reader decodes sequentially instead of seeking (seeking in short-GOP mp4s by timestamp
is where off-by-one frame errors come from).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from data.episodes import DatasetError

log = logging.getLogger(__name__)


class VideoWriter:
    """One mp4 per camera and data file, episodes appended back to back (LeRobot v3.0 layout)."""

    def __init__(self, path: Path, hw: tuple[int, int], fps: int, codec: str, pix_fmt: str, crf: int,
                 gop: int) -> None:
        import imageio_ffmpeg

        h, w = hw
        if pix_fmt == "yuv420p" and (h % 2 or w % 2):
            log.info("%s: odd image size %s, using yuv444p", path, hw)
            pix_fmt = "yuv444p"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.n_frames, self.hw, self.pix_fmt, self.codec = path, 0, hw, pix_fmt, codec
        self.gen = imageio_ffmpeg.write_frames(
            str(path), size=(w, h), fps=fps, codec=codec, pix_fmt_in="rgb24", pix_fmt_out=pix_fmt, quality=None,
            macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", str(crf), "-g", str(gop)])
        self.gen.send(None)

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            self.gen.send(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        self.n_frames += len(frames)

    def close(self) -> None:
        self.gen.close()


class VideoCursor:
    """Sequential reader of one mp4: episodes of a v3.0 file are read in order without re-decoding."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.gen = None
        self.pos = 0  # frames decoded so far; self.last is frame pos - 1
        self.last: bytes | None = None
        self.hw: tuple[int, int] = (0, 0)

    def _open(self, path: Path) -> None:
        import imageio_ffmpeg

        self.close()
        if not path.is_file():
            raise DatasetError(f"video not found: {path}")
        self.gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(self.gen)
        w, h = meta["size"]
        self.path, self.pos, self.last, self.hw = path, 0, None, (int(h), int(w))

    def read(self, path: Path, indices: np.ndarray) -> np.ndarray:
        """Frames at non-decreasing file frame indices (reopens the file to go back)."""
        if self.path != path or (len(indices) and indices[0] < self.pos - 1):
            self._open(path)
        out = []
        h, w = self.hw
        for idx in indices:
            if idx < self.pos - 1:
                raise DatasetError(f"{path}: video frames requested out of order ({idx} after {self.pos - 1})")
            while self.pos <= idx:
                try:
                    self.last = next(self.gen)
                except StopIteration:
                    raise DatasetError(f"{path}: video ends at frame {self.pos}, frame {idx} requested") from None
                self.pos += 1
            out.append(np.frombuffer(self.last, dtype=np.uint8).reshape(h, w, 3))
        return np.stack(out) if out else np.zeros((0, h, w, 3), np.uint8)

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()
        self.gen, self.path = None, None
