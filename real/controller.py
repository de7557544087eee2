"""The real-time loop: observations aligned by timestamp, inference off the control thread,
actions scheduled at absolute times, stale ones dropped (diffusion_policy's real-robot timing).

Three clocks run at once, all on time.monotonic():
* the **arm** follows the streamed reference in real/robot.py's own thread (it never waits);
* the **control thread** ticks at `control_hz`: it records each step (the newest observation
  and the action due in that step), feeds the watchdog the robot's and the cameras' ages,
  triggers inference every `exec_steps` ticks, and ends the episode;
* the **inference thread** builds the observation history for the trigger time (for each of
  the To frames, the last camera frame and robot state at or before t - k dt), runs the policy,
  timestamps action i at t_obs + (i + 1 + action_offset) dt, drops the actions already due
  (latency ate them: counted), passes the rest through the safety layer and sends them. The
  next chunk replaces the rest of this one.

The policy is anything with the small interface sim/ drives too (`obs_keys`, `obs_history`,
`act_steps`, `act(obs)`): a checkpoint's policy or an exported artefact. Observation keys
come from the cameras (`rgb/<name>`), the robot (`state`) and an optional `extra_obs`
callable (e.g. part poses: from the simulator in rehearsal, from AprilTags on hardware).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from data.rotation import rot6d_to_matrix
from real.safety import SafetyLayer, SafetyStop, Watchdog

log = logging.getLogger("real.controller")


class ControllerError(RuntimeError):
    pass


@dataclass
class ControllerConfig:
    control_hz: float = 10.0
    exec_steps: int | None = None  # control steps between inferences (None: the policy's act_steps)
    action_offset: int = 0  # latency compensation: action i is due at t_obs + (i + 1 + offset) dt
    drop_margin_s: float = 0.01  # an action due sooner than now + this is dropped (diffusion_policy's)
    max_steps: int = 700  # control steps per episode
    dry_run: bool = False  # no motion: log what would be sent
    first_chunk_timeout_s: float = 10.0  # the first inference may compile/warm up
    # after an inference trigger, wait (at most one frame period and a half) for every camera's
    # next frame and observe at the last one's time. Without it the frames' age is set by the
    # phase between this loop and the camera clocks, up to a frame period (33 ms at 30 fps);
    # with it, by the phase between the cameras (the oldest camera's frame is never older than
    # without). Camera-to-command p99 18 ms against 46 ms at 30 fps (docs/benchmarks.md)
    sync_frames: bool = True

    def __post_init__(self) -> None:
        if self.control_hz <= 0 or self.max_steps <= 0:
            raise ValueError("control_hz and max_steps must be positive")
        if self.exec_steps is not None and self.exec_steps <= 0:
            raise ValueError(f"exec_steps must be positive, got {self.exec_steps}")

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz


@dataclass
class ChunkRecord:
    t_obs: float
    latency_s: float
    due_s: np.ndarray  # (n,) when each sent action is due
    actions: np.ndarray  # (n, 10) after the safety layer
    raw: np.ndarray  # (m, 10) what the policy returned
    dropped: int
    frames_s: dict[str, float] = field(default_factory=dict)  # capture time of each camera's newest frame used
    sent_s: float = float("nan")  # when the chunk was handed to the robot (after the safety layer)
    command: int | None = None  # the robot's number for it (FrankaRobot.stream_log names it)
    assembled_s: float = float("nan")  # when the observation was ready (the policy call began)


@dataclass
class EpisodeResult:
    steps: int
    reason: str  # done | max_steps | stopped | safety | watchdog | error
    chunks: list[ChunkRecord] = field(default_factory=list)
    dropped_actions: int = 0
    latencies_s: list[float] = field(default_factory=list)
    tick_lateness_s: list[float] = field(default_factory=list)
    safety: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s) if self.latencies_s else np.zeros(1)
        late = np.asarray(self.tick_lateness_s) if self.tick_lateness_s else np.zeros(1)
        return {"steps": self.steps, "reason": self.reason, "chunks": len(self.chunks),
                "dropped_actions": self.dropped_actions, "latency_ms_median": 1e3 * float(np.median(lat)),
                "latency_ms_max": 1e3 * float(lat.max()), "tick_lateness_ms_max": 1e3 * float(late.max()),
                "safety": dict(self.safety), "error": self.error}


class ObservationAssembler:
    """The policy's observation history at a time, from the cameras' and the robot's buffers."""

    def __init__(self, obs_keys, obs_history: int, dt: float, robot, cameras=None,
                 extra_obs: Callable[[float], Mapping[str, np.ndarray]] | None = None):
        self.obs_keys, self.history, self.dt = tuple(obs_keys), int(obs_history), dt
        self.robot, self.cameras, self.extra_obs = robot, cameras, extra_obs
        cams = {k[len("rgb/"):] for k in self.obs_keys if k.startswith("rgb/")}
        have = set(cameras.cameras) if cameras is not None else set()
        if cams - have:
            raise ControllerError(f"the policy reads cameras {sorted(cams)}; configured: {sorted(have) or 'none'}")
        self.cams = sorted(cams)

    def at(self, t: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """{key: (1, To, ...)} for frames at t - (To - 1 - k) dt, and the newest samples' times."""
        times = [t - (self.history - 1 - k) * self.dt for k in range(self.history)]
        frames: dict[str, list[np.ndarray]] = {k: [] for k in self.obs_keys}
        stamps: dict[str, float] = {}
        for tk in times:
            extra = dict(self.extra_obs(tk)) if self.extra_obs is not None else {}  # overrides the robot's
            state = self.robot.state_before(tk)
            if "state" in frames:
                frames["state"].append(np.asarray(extra.pop("state", state.state_vector())))
            stamps["robot"] = state.host_s
            for cam in self.cams:
                f = self.cameras.cameras[cam].frame_before(tk)
                frames[f"rgb/{cam}"].append(self.cameras.cameras[cam].policy_image(f))
                stamps[f"camera/{cam}"] = f.host_s
            for key, value in extra.items():
                if key in frames:
                    frames[key].append(np.asarray(value))
        missing = [k for k, v in frames.items() if len(v) != self.history]
        if missing:
            raise ControllerError(f"no source for observation keys {missing} (cameras, robot state, extra_obs)")
        return {k: np.stack(v)[None] for k, v in frames.items()}, stamps


class Controller:
    def __init__(self, policy, robot, safety: SafetyLayer, cfg: ControllerConfig, cameras=None,
                 extra_obs: Callable[[float], Mapping[str, np.ndarray]] | None = None,
                 watchdog: Watchdog | None = None, act_kwargs: Mapping[str, Any] | None = None):
        self.policy, self.robot, self.safety, self.cfg = policy, robot, safety, cfg
        self.cameras, self.watchdog = cameras, watchdog
        self.act_kwargs = dict(act_kwargs or {})
        self.exec_steps = int(cfg.exec_steps or policy.act_steps)
        self.obs = ObservationAssembler(policy.obs_keys, policy.obs_history, cfg.dt, robot, cameras, extra_obs)
        self._stop = threading.Event()
        self._trigger = threading.Event()
        self._chunks: list[ChunkRecord] = []
        self._lock = threading.Lock()
        self._failure: tuple[str, BaseException] | None = None
        self.would_send: list[np.ndarray] = []  # dry run: what would have gone to the arm

    def chunks(self) -> list[ChunkRecord]:
        """The episode's chunks so far (a copy: safe from any thread)."""
        with self._lock:
            return list(self._chunks)

    def request_stop(self) -> None:
        """From a signal handler or another thread: end the episode, robot stopped."""
        self._stop.set()
        self._trigger.set()

    def _fail(self, reason: str, error: BaseException) -> None:
        if self._failure is None:
            self._failure = (reason, error)
        self.request_stop()

    # --- the inference thread ----------------------------------------------------------------
    def _fresh_frames_time(self, t_trigger: float) -> float:
        """`t_trigger`, or with `sync_frames` the time of the cameras' first frames after it."""
        cams = [self.cameras.cameras[c] for c in self.obs.cams] if self.cameras is not None else []
        if not (self.cfg.sync_frames and cams):
            return t_trigger
        deadline = t_trigger + 1.5 / min(c.cfg.fps for c in cams)
        while not self._stop.is_set():
            newest = [c.latest().host_s for c in cams]
            if min(newest) >= t_trigger:
                return max(newest)
            if time.monotonic() > deadline:  # late frames: the newest there are (the watchdog judges stalls)
                return t_trigger
            time.sleep(0.0005)
        return t_trigger

    def _infer_once(self, t_trigger: float) -> None:
        dt = self.cfg.dt
        t_obs = self._fresh_frames_time(t_trigger)
        obs, stamps = self.obs.at(t_obs)
        frames_s = {k[len("camera/"):]: v for k, v in stamps.items() if k.startswith("camera/")}
        t0 = time.monotonic()
        raw = np.asarray(self.policy.act(obs, **self.act_kwargs))[0]
        latency = time.monotonic() - t0
        if self._stop.is_set():  # the episode ended while the policy thought: send nothing
            return
        if self.watchdog is not None:
            self.watchdog.beat("inference")
        due = t_obs + (np.arange(len(raw)) + 1 + self.cfg.action_offset) * dt
        keep = due > time.monotonic() + self.cfg.drop_margin_s
        if not keep.any():
            with self._lock:
                self._chunks.append(ChunkRecord(t_obs, latency, due[:0], raw[:0], raw, int(len(raw)), frames_s, assembled_s=t0))
            return
        ref_pos, ref_rot = self._reference_before(float(due[keep][0]))
        safe = self.safety.check_chunk(raw[keep], ref_pos, ref_rot, dt)
        command = None
        if self.cfg.dry_run:
            self.would_send.append(safe)
            log.info("dry run: would send %d actions, first %s", len(safe), np.round(safe[0, :3], 4).tolist())
        else:
            command = self.robot.execute_chunk(safe, dt, start_s=float(due[keep][0] - dt))
        with self._lock:
            self._chunks.append(ChunkRecord(t_obs, latency, due[keep], safe, raw, int((~keep).sum()), frames_s,
                                            time.monotonic(), command, t0))

    def _reference_before(self, due: float) -> tuple[np.ndarray, np.ndarray]:
        """The pose the arm is commanded to be at one step before `due`: the previous chunk's
        target due then (the measured pose lags the reference by tens of ms, which would read
        as speed), else the measured pose. The speed limits apply to the commanded path."""
        with self._lock:
            prev = next((c for c in reversed(self._chunks) if len(c.due_s)), None)
        if prev is not None:
            i = int(np.searchsorted(prev.due_s, due - self.cfg.dt + 1e-6, side="right")) - 1
            if 0 <= i < len(prev.actions) and prev.due_s[-1] >= due - self.cfg.dt - 1e-6:
                return prev.actions[i, :3], rot6d_to_matrix(prev.actions[i, 3:9])
        cur = self.robot.latest_state()
        return cur.ee_pos, cur.ee_rot

    def _inference_loop(self) -> None:
        while not self._stop.is_set():
            self._trigger.wait()
            self._trigger.clear()
            if self._stop.is_set():
                return
            try:
                self._infer_once(time.monotonic())
            except SafetyStop as e:
                self._fail("safety", e)
            except BaseException as e:  # noqa: BLE001 - the control thread stops the robot
                log.exception("inference failed")
                self._fail("error", e)

    # --- the control thread --------------------------------------------------------------------
    def run_episode(self, done: Callable[[], bool] | None = None,
                    on_step: Callable[[int, dict[str, np.ndarray], np.ndarray | None], None] | None = None
                    ) -> EpisodeResult:
        """Run until `done()` (checked every tick), `max_steps`, `request_stop`, a safety stop, a
        watchdog trip or an error; the robot is stopped at the end whatever ended it. `on_step(k,
        observation, action_due)` records each control step (e.g. to a dataset)."""
        cfg, dt = self.cfg, self.cfg.dt
        self._stop.clear()
        self._failure = None
        with self._lock:
            self._chunks = []
        result = EpisodeResult(0, "max_steps")
        worker = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        worker.start()
        if self.watchdog is not None:
            self.watchdog.watch("inference", max(cfg.first_chunk_timeout_s, 3 * self.exec_steps * dt))
            self.watchdog.watch("robot", self.safety.cfg.robot_state_timeout_s)
            for name, cam in (self.cameras.cameras.items() if self.cameras is not None else ()):
                self.watchdog.watch(f"camera/{name}", cam.cfg.stale_after_s)
        try:
            self._trigger.set()  # the first chunk
            t0 = time.monotonic()
            while len(self._chunks) == 0 and not self._stop.is_set():
                if time.monotonic() - t0 > cfg.first_chunk_timeout_s:
                    raise ControllerError(f"no first chunk within {cfg.first_chunk_timeout_s} s")
                time.sleep(0.002)
            if self.watchdog is not None:  # from now on the normal pace applies
                self.watchdog.watch("inference", 3 * self.exec_steps * dt)
            start = time.monotonic()
            for k in range(cfg.max_steps):
                tick = start + k * dt
                time.sleep(max(0.0, tick - time.monotonic()))
                result.tick_lateness_s.append(time.monotonic() - tick)
                if self._stop.is_set():
                    result.reason = "stopped"
                    break
                self._feed_watchdog()
                if k > 0 and k % self.exec_steps == 0:
                    self._trigger.set()
                if on_step is not None:
                    on_step(k, self.obs.at(time.monotonic())[0], self._action_due(time.monotonic()))
                result.steps = k + 1
                if done is not None and done():
                    result.reason = "done"
                    break
        except BaseException as e:  # noqa: BLE001 - stop the robot first, report after
            self._fail("error", e)
        finally:
            self.request_stop()
            if self.watchdog is not None:  # the episode's heartbeats end with it
                for name in ["inference", "robot"] + [f"camera/{n}" for n in (self.cameras.cameras if self.cameras
                                                                             is not None else ())]:
                    self.watchdog.unwatch(name)
            worker.join(timeout=5.0)
            if not cfg.dry_run:
                self.robot.stop()
        if self._failure is not None:
            result.reason, err = self._failure[0], self._failure[1]
            result.error = f"{type(err).__name__}: {err}"
            if self.watchdog is not None and self.watchdog.trips and result.reason == "stopped":
                result.reason = "watchdog"
        elif self.watchdog is not None and self.watchdog.trips:
            result.reason = "watchdog"
        with self._lock:
            result.chunks = list(self._chunks)
        result.dropped_actions = sum(c.dropped for c in result.chunks)
        result.latencies_s = [c.latency_s for c in result.chunks]
        result.safety = self.safety.summary()
        log.info("episode ended (%s) after %d steps: %d chunks, %d actions dropped", result.reason, result.steps,
                 len(result.chunks), result.dropped_actions)
        return result

    def _feed_watchdog(self) -> None:
        """Beat the robot's and each camera's heartbeat with the time of its newest sample, so a
        source that stops delivering trips the watchdog however often the loop runs."""
        if self.watchdog is None:
            return
        self.watchdog.beat("robot", self.robot.latest_state().host_s)
        for name, cam in (self.cameras.cameras.items() if self.cameras is not None else ()):
            self.watchdog.beat(f"camera/{name}", cam.latest().host_s)

    def _action_due(self, now: float) -> np.ndarray | None:
        """The action of the newest chunk due in the current control step (what is executing)."""
        with self._lock:
            for c in reversed(self._chunks):
                if len(c.due_s):
                    i = int(np.searchsorted(c.due_s, now, side="left"))
                    return c.actions[min(i, len(c.actions) - 1)]
        return None
