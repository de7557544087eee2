"""RealSense cameras for the real-time controller: one reader thread per camera, a ring buffer of
timestamped frames, device timestamps mapped onto the host clock, stale/dropped-frame checks.

Why a thread per camera: `wait_for_frames` blocks; the control loop must never wait on a
camera, only read the freshest frame (or the last one before a given time, which is how
observations from several cameras and the robot are aligned, as in diffusion_policy's real
stack). Why map timestamps: the RealSense stamps a frame at exposure on its own clock, and
the host sees it a few ms later; the controller needs "when was this seen" on one clock with the
robot state. `ClockMap` estimates the device-to-host offset as the smallest (arrival - device
time) over a sliding window: transport delay is never negative, so the minimum is the delay
of the fastest frame, which bounds the error of every mapped timestamp by the jitter above it.

Sources: `RealSenseCamera` (a device by serial, or a recorded file for playback) and
`SoftwareCamera` (pyrealsense2's `software_device`, fed frames by any callable: the rehearsal
mode's rendered simulator, or tests). Both deliver frames through librealsense itself, so
the reader code is the same for a physical camera and a simulated one.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from data.image import fit_image

log = logging.getLogger("real.cameras")


class CameraError(RuntimeError):
    """A camera is missing, stopped delivering frames, or failed."""


class CameraNotFoundError(CameraError):
    pass


class CameraStalledError(CameraError):
    pass


def _rs():
    try:
        import pyrealsense2 as rs
    except ImportError as e:  # the wheel needs libusb: apt install libusb-1.0-0
        raise CameraError(f"pyrealsense2 cannot be imported ({e}): pip install 'pyrealsense2==2.59.*' and "
                          f"apt install libusb-1.0-0") from e
    return rs


@dataclass
class CameraConfig:
    """One colour camera (optionally with depth) as the policy will see it."""

    name: str = "front"
    serial: str | None = None  # None: the only connected RealSense (an error if there are several)
    width: int = 1280
    height: int = 720
    fps: int = 30
    depth: bool = False
    exposure_us: float | None = None  # fixed exposure (auto exposure off); None: auto
    white_balance_k: float | None = None  # fixed white balance; None: auto
    crop: list[int] | None = None  # (x, y, w, h) of the colour image before the resize; None: centred
    out_hw: list[int] = field(default_factory=lambda: [96, 96])  # the policy image
    stale_after_s: float = 0.2  # the newest frame older than this: the camera is stale
    ring: int = 64  # frames kept per camera
    clock_window: int = 300  # frames over which the device-to-host offset is estimated

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            raise ValueError(f"camera '{self.name}': width, height and fps must be positive")
        if self.stale_after_s <= 1.0 / self.fps:
            raise ValueError(f"camera '{self.name}': stale_after_s {self.stale_after_s} is within one frame period "
                             f"({1.0 / self.fps:.3f} s at {self.fps} fps)")


@dataclass(frozen=True)
class Frame:
    color: np.ndarray  # (H, W, 3) uint8 RGB, as delivered
    device_s: float  # the device's timestamp (s)
    host_s: float  # the same instant on the host clock (time.monotonic)
    arrival_s: float  # when the reader thread received it (time.monotonic)
    number: int  # the device's frame counter
    depth: np.ndarray | None = None  # (H, W) uint16, device depth units


class ClockMap:
    """Device timestamps -> host clock: offset = min(arrival - device) over a sliding window."""

    def __init__(self, window: int = 300):
        self._offsets: collections.deque[float] = collections.deque(maxlen=window)

    def update(self, device_s: float, arrival_s: float) -> float:
        self._offsets.append(arrival_s - device_s)
        return self.to_host(device_s)

    @property
    def offset(self) -> float:
        if not self._offsets:
            raise CameraError("no frame yet: the clock offset is unknown")
        return min(self._offsets)

    def to_host(self, device_s: float) -> float:
        return device_s + self.offset


class FrameRing:
    """The last `capacity` frames of one camera, safe between the reader and the controller."""

    def __init__(self, capacity: int):
        self._frames: collections.deque[Frame] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()

    def push(self, frame: Frame) -> None:
        with self._lock:
            self._frames.append(frame)

    def latest(self) -> Frame | None:
        with self._lock:
            return self._frames[-1] if self._frames else None

    def before(self, host_s: float) -> Frame | None:
        """The newest frame seen at or before `host_s` (None if all are later)."""
        with self._lock:
            for frame in reversed(self._frames):
                if frame.host_s <= host_s:
                    return frame
        return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)


@dataclass
class CameraStats:
    received: int = 0
    dropped: int = 0  # gaps in the device's frame counter
    timeouts: int = 0  # waits that returned no frame
    max_gap_s: float = 0.0  # longest interval between two received frames


class Camera:
    """A reader thread over a started `rs.pipeline`; subclasses say how the pipeline starts."""

    def __init__(self, cfg: CameraConfig):
        self.cfg = cfg
        self.ring = FrameRing(cfg.ring)
        self.clock = ClockMap(cfg.clock_window)
        self.stats = CameraStats()
        self._pipe = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._first = threading.Event()

    # --- lifecycle -----------------------------------------------------------------------------
    def _start_pipeline(self):
        raise NotImplementedError

    def start(self, first_frame_timeout_s: float | None = 5.0) -> "Camera":
        """Start reading; wait for the first frame (None: do not wait, e.g. frames pushed later)."""
        self._pipe = self._start_pipeline()
        self._thread = threading.Thread(target=self._read_loop, name=f"camera-{self.cfg.name}", daemon=True)
        self._thread.start()
        if first_frame_timeout_s is not None and not self._first.wait(first_frame_timeout_s):
            self.stop()
            raise CameraStalledError(f"camera '{self.cfg.name}' delivered no frame within {first_frame_timeout_s} s "
                                     f"of starting")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._pipe is not None:
            try:
                self._pipe.stop()
            except RuntimeError:  # already stopped (device gone)
                pass
            self._pipe = None

    def __enter__(self) -> "Camera":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the reader thread ---------------------------------------------------------------------
    def _read_loop(self) -> None:
        rs = _rs()
        timeout_ms = int(max(50, 2000 / self.cfg.fps))
        last_number, last_arrival = None, None
        try:
            while not self._stop.is_set():
                ok, frames = self._pipe.try_wait_for_frames(timeout_ms)
                if not ok:
                    self.stats.timeouts += 1
                    continue
                arrival = time.monotonic()
                color = frames.get_color_frame()
                if not color:
                    continue
                number = int(color.get_frame_number())
                device_s = float(color.get_timestamp()) / 1e3
                depth = None
                if self.cfg.depth:
                    d = frames.get_depth_frame()
                    depth = np.asanyarray(d.get_data()).copy() if d else None
                image = np.asanyarray(color.get_data())
                if color.get_profile().format() == rs.format.bgr8:
                    image = image[..., ::-1]
                frame = Frame(np.ascontiguousarray(image).copy(), device_s, self.clock.update(device_s, arrival),
                              arrival, number, depth)
                if last_number is not None and number > last_number + 1:
                    self.stats.dropped += number - last_number - 1
                if last_arrival is not None:
                    self.stats.max_gap_s = max(self.stats.max_gap_s, arrival - last_arrival)
                last_number, last_arrival = number, arrival
                self.stats.received += 1
                self.ring.push(frame)
                self._first.set()
        except BaseException as e:  # noqa: BLE001 - the controller sees it on its next read
            self._error = e
            log.error("camera '%s' reader stopped: %s", self.cfg.name, e)

    # --- what the controller reads -------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._error is not None:
            raise CameraError(f"camera '{self.cfg.name}' failed: {self._error}") from self._error
        if self._thread is None:
            raise CameraError(f"camera '{self.cfg.name}' is not started")

    def latest(self) -> Frame:
        self._check_alive()
        frame = self.ring.latest()
        if frame is None:
            raise CameraStalledError(f"camera '{self.cfg.name}' has delivered no frame")
        return frame

    def age_s(self, now: float | None = None) -> float:
        """Host seconds since the newest frame was seen (its mapped timestamp)."""
        return (time.monotonic() if now is None else now) - self.latest().host_s

    def is_stale(self, now: float | None = None) -> bool:
        return self.age_s(now) > self.cfg.stale_after_s

    def frame_before(self, host_s: float) -> Frame:
        """The newest frame seen at or before `host_s` (observation alignment); the oldest kept
        frame if all are later."""
        self._check_alive()
        frame = self.ring.before(host_s)
        return frame if frame is not None else self.latest()

    def policy_image(self, frame: Frame) -> np.ndarray:
        """The frame as the policy sees it: the crop/resize the simulator's images share."""
        return fit_image(frame.color, self.cfg.out_hw, self.cfg.crop)


class RealSenseCamera(Camera):
    """A connected RealSense by serial (or `playback`: a recorded .bag/.db3 file)."""

    def __init__(self, cfg: CameraConfig, playback: str | None = None):
        super().__init__(cfg)
        self.playback = playback

    def _start_pipeline(self):
        rs = _rs()
        config = rs.config()
        if self.playback is not None:
            config.enable_device_from_file(str(self.playback), repeat_playback=False)
        else:
            serials = connected_serials()
            serial = self.cfg.serial
            if serial is None:
                if len(serials) != 1:
                    raise CameraNotFoundError(f"camera '{self.cfg.name}' has no serial configured and "
                                              f"{len(serials)} RealSense devices are connected {serials}: set "
                                              f"its serial")
                serial = serials[0]
            elif serial not in serials:
                raise CameraNotFoundError(f"camera '{self.cfg.name}': RealSense serial {serial} is not connected "
                                          f"(connected: {serials or 'none'}); check the cable/USB 3 port or the "
                                          f"serial in the camera config")
            config.enable_device(serial)
        config.enable_stream(rs.stream.color, self.cfg.width, self.cfg.height, rs.format.rgb8, self.cfg.fps)
        if self.cfg.depth:
            config.enable_stream(rs.stream.depth, self.cfg.width, self.cfg.height, rs.format.z16, self.cfg.fps)
        pipe = rs.pipeline()
        try:
            profile = pipe.start(config)
        except RuntimeError as e:
            raise CameraError(f"camera '{self.cfg.name}' could not start {self.cfg.width}x{self.cfg.height}@"
                              f"{self.cfg.fps}: {e}") from e
        if self.playback is None:
            self._fix_options(profile.get_device().first_color_sensor())
        return pipe

    def _fix_options(self, sensor) -> None:
        rs = _rs()
        if self.cfg.exposure_us is not None:
            sensor.set_option(rs.option.enable_auto_exposure, 0)
            sensor.set_option(rs.option.exposure, float(self.cfg.exposure_us))
        if self.cfg.white_balance_k is not None:
            sensor.set_option(rs.option.enable_auto_white_balance, 0)
            sensor.set_option(rs.option.white_balance, float(self.cfg.white_balance_k))


def connected_serials() -> list[str]:
    rs = _rs()
    return [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]


class SoftwareCamera(Camera):
    """A librealsense `software_device` whose colour frames come from `push` (or from `source`, a
    callable returning (H, W, 3) uint8 images, polled by a feeder thread at the camera's fps).

    The device timestamps are the feeder's: `device_clock` (default time.monotonic shifted by
    `device_offset_s`, so the clock mapping has something to find) at the moment of the push.
    """

    def __init__(self, cfg: CameraConfig, source: Callable[[], np.ndarray] | None = None,
                 device_offset_s: float = 1000.0, intrinsics: Mapping[str, float] | None = None):
        super().__init__(cfg)
        self.source = source
        self.device_offset_s = device_offset_s
        self.intrinsics = dict(intrinsics or {})
        self._number = 0
        self._feeder: threading.Thread | None = None
        self._push_lock = threading.Lock()
        self._paused = threading.Event()
        rs = _rs()
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.serial_number, cfg.serial or f"software-{cfg.name}")
        self.device.register_info(rs.camera_info.name, f"software camera {cfg.name}")
        self.sensor = self.device.add_sensor("Color")
        w, h = cfg.width, cfg.height
        intr = rs.intrinsics()
        intr.width, intr.height = w, h
        intr.fx = float(self.intrinsics.get("fx", w))
        intr.fy = float(self.intrinsics.get("fy", w))
        intr.ppx = float(self.intrinsics.get("cx", w / 2))
        intr.ppy = float(self.intrinsics.get("cy", h / 2))
        intr.model = rs.distortion.none
        intr.coeffs = [0.0] * 5
        stream = rs.video_stream()
        stream.type, stream.index, stream.uid = rs.stream.color, 0, 1
        stream.width, stream.height, stream.fps, stream.bpp = w, h, cfg.fps, 3
        stream.fmt, stream.intrinsics = rs.format.rgb8, intr
        self._profile = self.sensor.add_video_stream(stream).as_video_stream_profile()

    def device_clock(self) -> float:
        return time.monotonic() + self.device_offset_s

    def _start_pipeline(self):
        rs = _rs()
        pipe = rs.pipeline()
        pipe.set_device(self.device)
        config = rs.config()
        config.enable_stream(rs.stream.color, self.cfg.width, self.cfg.height, rs.format.rgb8, self.cfg.fps)
        pipe.start(config)
        if self.source is not None:
            self._feeder = threading.Thread(target=self._feed_loop, name=f"feeder-{self.cfg.name}", daemon=True)
            self._feeder.start()
        return pipe

    def push(self, image: np.ndarray, device_s: float | None = None, number: int | None = None) -> None:
        """Deliver one frame through librealsense (its timestamp: now on the device clock)."""
        rs = _rs()
        if image.shape != (self.cfg.height, self.cfg.width, 3) or image.dtype != np.uint8:
            raise ValueError(f"software camera '{self.cfg.name}' expects uint8 ({self.cfg.height}, {self.cfg.width}, 3) "
                             f"frames, got {image.dtype} {image.shape}")
        with self._push_lock:
            frame = rs.software_video_frame()
            frame.pixels = np.ascontiguousarray(image)
            frame.stride, frame.bpp = self.cfg.width * 3, 3
            frame.timestamp = 1e3 * (self.device_clock() if device_s is None else device_s)
            frame.domain = rs.timestamp_domain.hardware_clock
            frame.frame_number = self._number if number is None else int(number)
            frame.profile = self._profile
            self._number = frame.frame_number + 1
            self.sensor.on_video_frame(frame)

    def pause(self, paused: bool = True) -> None:
        """Stop (or resume) the feeder: a camera that stops delivering, for watchdog tests."""
        (self._paused.set if paused else self._paused.clear)()

    def _feed_loop(self) -> None:
        period = 1.0 / self.cfg.fps
        next_t = time.monotonic()
        while not self._stop.is_set():
            if not self._paused.is_set():
                try:
                    self.push(self.source())
                except BaseException as e:  # noqa: BLE001 - a failing source is a failing camera
                    self._error = e
                    log.error("software camera '%s' source failed: %s", self.cfg.name, e)
                    return
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(timeout=2.0)
            self._feeder = None
        super().stop()


class CameraSet:
    """All cameras of a cell, started together; `observe` gives the policy's images at a time."""

    def __init__(self, cameras: Sequence[Camera]):
        names = [c.cfg.name for c in cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        self.cameras = {c.cfg.name: c for c in cameras}

    def start(self, first_frame_timeout_s: float = 5.0) -> "CameraSet":
        started = []
        try:
            for cam in self.cameras.values():
                started.append(cam.start(first_frame_timeout_s))
        except BaseException:
            for cam in started:
                cam.stop()
            raise
        return self

    def stop(self) -> None:
        for cam in self.cameras.values():
            cam.stop()

    def __enter__(self) -> "CameraSet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def check(self, now: float | None = None) -> None:
        """CameraStalledError naming every camera whose newest frame is too old (the watchdog's test)."""
        now = time.monotonic() if now is None else now
        stale = {n: c.age_s(now) for n, c in self.cameras.items() if c.is_stale(now)}
        if stale:
            raise CameraStalledError("stale camera(s): " + ", ".join(
                f"'{n}' last frame {age * 1e3:.0f} ms ago (limit {self.cameras[n].cfg.stale_after_s * 1e3:.0f} ms)"
                for n, age in stale.items()))

    def observe(self, host_s: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """`rgb/<name>` policy images of the newest frames seen at or before `host_s` (default:
        now), and each frame's host timestamp."""
        images, stamps = {}, {}
        for name, cam in self.cameras.items():
            frame = cam.frame_before(time.monotonic() if host_s is None else host_s)
            images[f"rgb/{name}"] = cam.policy_image(frame)
            stamps[name] = frame.host_s
        return images, stamps
