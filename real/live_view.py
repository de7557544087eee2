"""The operator's live view during a deployment: camera frames, the predicted chunk, timing.

One window, drawn by its own thread at `hz` (OpenCV's GUI calls stay on that thread; the
control loop only hands over references to what it already has), so the view can never slow
the arm. Where no display exists (a headless box, CI, an SSH session without X forwarding)
the view is off and says so once. `q` or Esc in the window asks the deployment to stop.

The chunk is drawn top-down (x forward, y left, in the robot base frame) in an inset beside the
frames: projecting it into the images needs the camera extrinsics of the calibration (issue 15).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger("real.live_view")


def display_available() -> bool:
    """Whether a window can open: an X11/Wayland display on Linux; macOS and Windows always."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


@dataclass
class ViewState:
    """What the view shows; the controller's side replaces fields, the view thread reads them."""

    frames: dict[str, np.ndarray] = field(default_factory=dict)  # camera name -> (H, W, 3) uint8 RGB
    ee_pos: np.ndarray | None = None  # (3,) the measured EE position
    chunk: np.ndarray | None = None  # (n, >=3) the newest chunk's targets (after the safety layer)
    step: int = 0
    latency_ms: float = float("nan")
    dropped: int = 0
    safety_events: int = 0
    status: str = ""


def draw_chunk_inset(size: int, ee_pos: np.ndarray | None, chunk: np.ndarray | None,
                     span_m: float = 0.1) -> np.ndarray:
    """A (size, size, 3) top-down plot centred on the EE: grid every 2 cm, the chunk's targets
    as a polyline of dots (yellow, the first one larger), the EE as a cross."""
    import cv2

    img = np.full((size, size, 3), 32, np.uint8)
    c = size // 2
    px = size / (2 * span_m)
    for g in np.arange(-span_m, span_m + 1e-9, 0.02):
        v = int(round(c + g * px))
        cv2.line(img, (v, 0), (v, size - 1), (60, 60, 60), 1)
        cv2.line(img, (0, v), (size - 1, v), (60, 60, 60), 1)
    if ee_pos is None:
        return img
    cv2.drawMarker(img, (c, c), (0, 255, 0), cv2.MARKER_CROSS, 12, 2)
    if chunk is not None and len(chunk):
        # x forward -> up, y left -> left
        pts = [(int(round(c - (p[1] - ee_pos[1]) * px)), int(round(c - (p[0] - ee_pos[0]) * px))) for p in chunk[:, :3]]
        cv2.polylines(img, [np.array(pts, np.int32)], False, (255, 200, 0), 1, cv2.LINE_AA)
        for i, p in enumerate(pts):
            cv2.circle(img, p, 4 if i == 0 else 2, (255, 255, 0), -1, cv2.LINE_AA)
    cv2.putText(img, f"top-down {100 * span_m:.0f} cm", (4, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                (200, 200, 200), 1, cv2.LINE_AA)
    return img


def compose(state: ViewState, height: int = 240) -> np.ndarray:
    """The window's image (RGB): each camera scaled to `height`, the chunk inset, a status line."""
    import cv2

    tiles = []
    for name in sorted(state.frames):
        f = state.frames[name]
        w = max(1, int(round(f.shape[1] * height / f.shape[0])))
        t = cv2.resize(f, (w, height), interpolation=cv2.INTER_AREA)
        cv2.putText(t, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(t)
    tiles.append(draw_chunk_inset(height, state.ee_pos, state.chunk))
    img = np.concatenate(tiles, axis=1)
    bar = np.zeros((24, img.shape[1], 3), np.uint8)
    text = (f"step {state.step}  inference {state.latency_ms:.0f} ms  dropped {state.dropped}  "
            f"safety {state.safety_events}  {state.status}")
    cv2.putText(bar, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
    return np.concatenate([img, bar], axis=0)


class LiveView:
    """`start()` opens the window thread (a no-op without a display); `update(**fields)` from any
    thread; `close()`. `on_quit` runs when the operator presses q / Esc in the window."""

    def __init__(self, title: str = "deploy", hz: float = 15.0, enabled: bool | None = None,
                 on_quit: Callable[[], None] | None = None):
        self.title, self.period = title, 1.0 / hz
        self.enabled = display_available() if enabled is None else bool(enabled and display_available())
        self.on_quit = on_quit
        self.state = ViewState()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_drawn = 0

    def start(self) -> "LiveView":
        if not self.enabled:
            log.info("live view off: no display (DISPLAY / WAYLAND_DISPLAY unset)")
            return self
        self._thread = threading.Thread(target=self._loop, name="live-view", daemon=True)
        self._thread.start()
        return self

    def update(self, **fields) -> None:
        with self._lock:
            for k, v in fields.items():
                setattr(self.state, k, v)

    def _loop(self) -> None:
        import cv2

        try:
            while not self._stop.is_set():
                with self._lock:
                    snapshot = ViewState(**vars(self.state))
                cv2.imshow(self.title, compose(snapshot)[:, :, ::-1])  # OpenCV shows BGR
                self.frames_drawn += 1
                key = cv2.waitKey(max(1, int(1e3 * self.period))) & 0xFF
                if key in (ord("q"), 27) and self.on_quit is not None:
                    log.warning("live view: quit pressed, stopping")
                    self.on_quit()
            cv2.destroyWindow(self.title)
        except Exception as e:  # noqa: BLE001 - the view is a convenience: it never ends a deployment
            log.error("live view failed and is off: %s", e)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def __enter__(self) -> "LiveView":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
