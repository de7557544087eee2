"""What stands between a policy's actions and the arm: limits on every chunk, and a watchdog.

Every chunk goes through `SafetyLayer.check_chunk` before real/robot.py sees it:
* a NaN/Inf anywhere stops the robot (`SafetyStop`): a broken output is never "clipped" into
  a valid-looking target;
* each target goes through the action clip shared with the simulator (`data.action_clip`:
  workspace box, per-action distance from the previous target, gripper width range), so the
  policy meets the same limits in rehearsal, in simulation and on the arm; with
  `on_workspace_violation: stop` a target outside the box stops the robot instead;
* the translational and rotational speed implied by consecutive targets (dt apart) is capped
  (`max_speed_m_s`, `max_rot_speed_rad_s`) by shortening the step toward the previous target.
Every change is an event, counted by kind and logged, and shown by the controller.

`Watchdog` holds heartbeats (inference, each camera, the robot state) and calls `on_trip` once
when one is older than its timeout: the deploy loop stops the robot there. The arm must
never keep executing stale actions because a thread died.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from data.action_clip import ActionLimits, clip_action
from data.rotation import angle_between, matrix_to_rot6d, rotation_error, rotvec_to_matrix

log = logging.getLogger("real.safety")


class SafetyStop(RuntimeError):
    """A violation that must stop the robot (the caller stops it)."""


@dataclass
class SafetyConfig:
    # furniture-bench's EE workspace in the robot base frame (data.action_clip's defaults)
    workspace_low: list[float] = field(default_factory=lambda: list(ActionLimits.workspace_low))
    workspace_high: list[float] = field(default_factory=lambda: list(ActionLimits.workspace_high))
    max_pos_step: float = ActionLimits.max_pos_step  # m between consecutive targets (the sim's clip)
    gripper_max_width: float = ActionLimits.gripper_max_width
    # implied by consecutive targets dt apart. The state BC policy commands up to 0.27 m/s and
    # 2.6 rad/s (p99 0.22 m/s, 1.8 rad/s: the screwing) in the simulator; Franka's Cartesian limits
    # are 1.7 m/s and 2.5 rad/s. Caps below what the policy needs would change the task.
    max_speed_m_s: float = 0.3
    max_rot_speed_rad_s: float = 2.5
    on_workspace_violation: str = "clip"  # clip | stop
    inference_timeout_s: float = 1.0  # watchdog: no new chunk for this long
    robot_state_timeout_s: float = 0.2  # watchdog: no robot state for this long

    def __post_init__(self) -> None:
        if self.on_workspace_violation not in ("clip", "stop"):
            raise ValueError(f"on_workspace_violation must be 'clip' or 'stop', got '{self.on_workspace_violation}'")
        if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high)):
            raise ValueError(f"workspace_low {self.workspace_low} must be below workspace_high {self.workspace_high}")

    @property
    def limits(self) -> ActionLimits:
        return ActionLimits(tuple(self.workspace_low), tuple(self.workspace_high), self.max_pos_step,
                            self.gripper_max_width)


@dataclass(frozen=True)
class SafetyEvent:
    host_s: float
    kind: str  # non_finite | outside_workspace | step_limited | speed_limited | rot_speed_limited | gripper_clipped | watchdog
    detail: str


def _slerp_toward(r0: np.ndarray, r1: np.ndarray, fraction: float) -> np.ndarray:
    """`fraction` of the way from r0 to r1 along the geodesic."""
    return r0 @ rotvec_to_matrix(fraction * rotation_error(r0.T @ r1, np.eye(3)))


class SafetyLayer:
    def __init__(self, cfg: SafetyConfig, max_events: int = 10_000):
        self.cfg = cfg
        self.counts: collections.Counter[str] = collections.Counter()
        self.events: collections.deque[SafetyEvent] = collections.deque(maxlen=max_events)
        self._lock = threading.Lock()

    def record(self, kind: str, detail: str) -> None:
        with self._lock:
            self.counts[kind] += 1
            self.events.append(SafetyEvent(time.monotonic(), kind, detail))
        (log.error if kind in ("non_finite", "watchdog") else log.warning)("safety: %s: %s", kind, detail)

    def check_chunk(self, actions: np.ndarray, ee_pos: np.ndarray, ee_rot: np.ndarray, dt: float) -> np.ndarray:
        """(n, 10) absolute targets -> the limited targets (float64), each step checked against
        the previous target (the current EE pose before the first). SafetyStop on NaN/Inf, or
        on a target outside the workspace with `on_workspace_violation: stop`."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != 10:
            raise SafetyStop(f"a chunk is (n, 10) actions, got shape {actions.shape}")
        if not np.all(np.isfinite(actions)):
            self.record("non_finite", f"NaN/Inf in {int((~np.isfinite(actions)).sum())} action entries")
            raise SafetyStop("the policy produced NaN/Inf actions: robot stopped")
        out = np.empty_like(actions)
        prev_pos, prev_rot = np.asarray(ee_pos, float), np.asarray(ee_rot, float)
        limits = self.cfg.limits
        for i, a in enumerate(actions):
            c = clip_action(a, prev_pos, limits)
            if c.outside_workspace:
                msg = f"target {i} at {np.round(a[:3], 3).tolist()} outside the workspace"
                self.record("outside_workspace", msg)
                if self.cfg.on_workspace_violation == "stop":
                    raise SafetyStop(msg + ": robot stopped")
            if c.step_limited:
                self.record("step_limited", f"target {i} more than {limits.max_pos_step} m from the previous")
            if c.gripper_clipped:
                self.record("gripper_clipped", f"target {i} gripper width {a[9]:.3f} m")
            pos, rot = c.pos, c.rot
            step = np.linalg.norm(pos - prev_pos)
            max_step = self.cfg.max_speed_m_s * dt
            if step > max_step:
                pos = prev_pos + (pos - prev_pos) * (max_step / step)
                self.record("speed_limited", f"target {i}: {step / dt:.2f} m/s capped to {self.cfg.max_speed_m_s}")
            angle = angle_between(rot, prev_rot)
            max_angle = self.cfg.max_rot_speed_rad_s * dt
            if angle > max_angle:
                rot = _slerp_toward(prev_rot, rot, max_angle / angle)
                self.record("rot_speed_limited", f"target {i}: {angle / dt:.2f} rad/s capped to "
                                                 f"{self.cfg.max_rot_speed_rad_s}")
            out[i, :3], out[i, 3:9], out[i, 9] = pos, matrix_to_rot6d(rot), c.width
            prev_pos, prev_rot = pos, rot
        return out

    def summary(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class Watchdog:
    """Heartbeats with timeouts, checked by a thread at `hz`; `on_trip(name, age_s)` is called
    once per trip (a heartbeat that beats again re-arms it)."""

    def __init__(self, on_trip: Callable[[str, float], None], hz: float = 100.0,
                 safety: SafetyLayer | None = None):
        self.on_trip = on_trip
        self.period = 1.0 / hz
        self.safety = safety
        self._beats: dict[str, list[float]] = {}  # name -> [last beat, timeout]
        self._tripped: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.trips: list[tuple[str, float]] = []

    def watch(self, name: str, timeout_s: float) -> None:
        with self._lock:
            self._beats[name] = [time.monotonic(), float(timeout_s)]
            self._tripped.discard(name)

    def unwatch(self, name: str) -> None:
        with self._lock:
            self._beats.pop(name, None)
            self._tripped.discard(name)

    def beat(self, name: str, host_s: float | None = None) -> None:
        with self._lock:
            if name not in self._beats:
                raise KeyError(f"watchdog is not watching '{name}'")
            now = time.monotonic()
            beat = self._beats[name]
            beat[0] = now if host_s is None else host_s
            if now - beat[0] <= beat[1]:  # only a fresh sample re-arms a tripped heartbeat
                self._tripped.discard(name)

    def check(self, now: float | None = None) -> list[tuple[str, float]]:
        """Trip every stale heartbeat not tripped yet; returns what tripped now."""
        now = time.monotonic() if now is None else now
        fired = []
        with self._lock:
            for name, (last, timeout) in self._beats.items():
                if now - last > timeout and name not in self._tripped:
                    self._tripped.add(name)
                    fired.append((name, now - last))
        for name, age in fired:
            self.trips.append((name, age))
            if self.safety is not None:
                self.safety.record("watchdog", f"'{name}' silent for {age * 1e3:.0f} ms")
            self.on_trip(name, age)
        return fired

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 - the watchdog itself must not die silently
                log.error("watchdog trip handler failed: %s", e)

    def start(self) -> "Watchdog":
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
