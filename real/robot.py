"""The Franka arm through franky: a connect timeout, a high-rate state stream, smooth execution
of timestamped action chunks, a force-limited gripper, stop and recovery.

Why these shapes:
* franky's `Robot(...)` blocks forever on a silent peer, so the connection is made in a thread
  with our own timeout, and an unreachable robot is a clear error naming the address.
* The controller reads the robot state without talking to the robot: a thread polls franky's
  state at `state_hz` into a ring buffer with host timestamps (observation alignment takes the
  last sample before a time, as for the cameras).
* A chunk of absolute EE targets is one `CartesianWaypointMotion` (franky plans it with
  Ruckig under velocity, acceleration and jerk limits scaled by `dynamics_factor`): each target
  carries the velocity that passes through it at the chunk's pace (central differences, zero
  at the last) and a minimum time (its scheduled time), so the arm moves through the chunk
  without stopping at every action, and a new chunk sent asynchronously replaces the old one at
  the next 1 kHz tick. One blocking move per action would stop the arm 10 times a second.
  (Measured in franky-sim: waypoint chunks track sub-mm; re-targeting single Cartesian motions
  diverged at 50-100 Hz; DESIGN.md, stack facts.)
* The gripper's target width is the chunk's first one; closing is a force-limited grasp
  (`gripper_force`), opening a move; widths within `gripper_deadband` of the last command are
  not re-sent (a gripper command takes ~0.5 s and blocks the gripper).

Nothing here decides whether an action is safe: real/safety.py clips and checks first.
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from data.rotation import matrix_to_rot6d, rot6d_to_matrix, rotation_error, rotvec_to_matrix

log = logging.getLogger("real.robot")


class RobotError(RuntimeError):
    """The robot cannot be reached, refused a motion, or is in an error state."""


class RobotUnreachableError(RobotError):
    pass


def _franky():
    try:
        import franky
    except ImportError as e:
        raise RobotError(f"franky cannot be imported ({e}): pip install 'franky-control==2.0.*'") from e
    return franky


@dataclass
class RobotConfig:
    host: str = "172.16.0.2"
    connect_timeout_s: float = 5.0
    dynamics_factor: float = 0.15  # of Franka's velocity/acceleration/jerk limits, for chunks
    home_dynamics_factor: float = 0.05
    home_joints: list[float] = field(default_factory=lambda: [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
    realtime: bool = False  # enforce a real-time kernel (the real arm wants one; franky-sim and CI do not)
    gripper: bool = True
    gripper_speed: float = 0.05  # m/s
    gripper_force: float = 20.0  # N: the grasp's force limit
    gripper_deadband: float = 0.005  # m: smaller width changes are not re-sent
    gripper_epsilon: float = 0.08  # m: a grasp counts whatever the object's width (force-limited)
    state_hz: float = 200.0
    state_ring: int = 2000
    waypoint_min_time: bool = True  # pace the waypoints at their scheduled times
    # the policy's EE frame relative to franky's (its configured TCP): a translation in franky's
    # EE frame (m) and a rotation about its tool axis (deg). States are reported and targets
    # taken in the policy's frame (e.g. the simulator's grip site: docs/deploy.md).
    tcp_offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    tcp_rot_z_deg: float = 0.0
    # the policy's base-frame origin in franky's base frame (m); non-zero only to rehearse above
    # franky-sim's floor, which lies where the simulator's table is
    base_offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    chunk_motion: str = "impedance"  # impedance: our own C1 interpolation streamed to franky's
    #   CartesianImpedanceTracker | waypoints: one CartesianWaypointMotion per chunk (steps back
    #   along the path by up to ~1 mm in franky-sim; docs/benchmarks.md, chunk tracking)
    stream_hz: float = 100.0  # impedance mode: reference updates per second
    stream_log: int = 6000  # impedance mode: reference updates remembered (time, chunk) for timing reports
    translational_stiffness: float = 2000.0  # impedance mode, N/m
    rotational_stiffness: float = 50.0  # impedance mode, Nm/rad

    def __post_init__(self) -> None:
        if not 0 < self.dynamics_factor <= 1 or not 0 < self.home_dynamics_factor <= 1:
            raise ValueError("dynamics factors must be in (0, 1]")
        if self.gripper_force <= 0 or self.gripper_force > 70:
            raise ValueError(f"gripper_force {self.gripper_force} N is outside (0, 70] (the Franka Hand's range)")
        if len(self.home_joints) != 7:
            raise ValueError(f"home_joints needs 7 angles, got {len(self.home_joints)}")
        if self.chunk_motion not in ("waypoints", "impedance"):
            raise ValueError(f"chunk_motion must be 'waypoints' or 'impedance', got '{self.chunk_motion}'")


@dataclass(frozen=True)
class RobotState:
    host_s: float  # time.monotonic() when read
    ee_pos: np.ndarray  # (3,) base frame, m
    ee_rot: np.ndarray  # (3, 3)
    ee_lin_vel: np.ndarray  # (3,) m/s
    ee_ang_vel: np.ndarray  # (3,) rad/s
    q: np.ndarray  # (7,)
    dq: np.ndarray  # (7,)
    gripper_width: float

    def state_vector(self) -> np.ndarray:
        """The observation schema's `state`: EE position, EE rotation 6D, gripper width (float32)."""
        return np.concatenate([self.ee_pos, matrix_to_rot6d(self.ee_rot), [self.gripper_width]]).astype(np.float32)


def pose_matrix(pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = rot, pos
    return t


def rotation_vector(r: np.ndarray) -> np.ndarray:
    """Axis * angle of a rotation matrix (for angular velocities between targets)."""
    return rotation_error(r, np.eye(3))


def chunk_velocities(pos: np.ndarray, rot: np.ndarray, dt: float, start_pos: np.ndarray,
                     start_rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear and angular velocities through each target of a chunk paced at `dt`: central
    differences between neighbours (the current pose before the first), zero at the last."""
    n = len(pos)
    p = np.concatenate([start_pos[None], pos])
    r = np.concatenate([start_rot[None], rot])
    lin, ang = np.zeros((n, 3)), np.zeros((n, 3))
    for i in range(n - 1):  # target i is p[i + 1]; neighbours p[i] and p[i + 2]
        lin[i] = (p[i + 2] - p[i]) / (2 * dt)
        ang[i] = r[i] @ rotation_vector(r[i].T @ r[i + 2]) / (2 * dt)  # in the base frame
    return lin, ang


class ChunkSchedule:
    """A C1 reference through timestamped poses: cubic Hermite in position (tangents: central
    differences, the reference's own velocity at the first knot, zero at the last), rotation
    interpolated along the geodesic between knots. Evaluated by the impedance streamer."""

    def __init__(self, times: np.ndarray, pos: np.ndarray, rot: np.ndarray, vel: np.ndarray):
        self.t, self.p, self.r, self.v = np.asarray(times, float), np.asarray(pos, float), np.asarray(rot, float), \
            np.asarray(vel, float)
        self.w = [rotation_vector(self.r[j].T @ self.r[j + 1]) for j in range(len(self.t) - 1)]

    @classmethod
    def hold(cls, t: float, pos: np.ndarray, rot: np.ndarray) -> "ChunkSchedule":
        return cls(np.array([t]), pos[None], rot[None], np.zeros((1, 3)))

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(position, rotation, linear velocity, angular velocity in the base frame) at host time t."""
        if t <= self.t[0] or len(self.t) == 1:
            return self.p[0], self.r[0], (self.v[0] if len(self.t) > 1 and t == self.t[0] else np.zeros(3)), np.zeros(3)
        if t >= self.t[-1]:
            return self.p[-1], self.r[-1], np.zeros(3), np.zeros(3)
        j = int(np.searchsorted(self.t, t, side="right") - 1)
        h = self.t[j + 1] - self.t[j]
        u = (t - self.t[j]) / h
        p0, p1, v0, v1 = self.p[j], self.p[j + 1], self.v[j], self.v[j + 1]
        pos = (2 * u**3 - 3 * u**2 + 1) * p0 + (u**3 - 2 * u**2 + u) * h * v0 + (-2 * u**3 + 3 * u**2) * p1 \
            + (u**3 - u**2) * h * v1
        vel = (6 * u**2 - 6 * u) / h * p0 + (3 * u**2 - 4 * u + 1) * v0 + (6 * u - 6 * u**2) / h * p1 \
            + (3 * u**2 - 2 * u) * v1
        rot = self.r[j] @ rotvec_to_matrix(u * self.w[j])
        return pos, rot, vel, self.r[j] @ self.w[j] / h


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class FrankaRobot:
    """One Franka arm (and hand) at `cfg.host`. Use as a context manager: connected, streaming
    its state, and stopped on exit whatever happened."""

    def __init__(self, cfg: RobotConfig):
        self.cfg = cfg
        self.robot = None
        self.gripper = None
        self._states: collections.deque[RobotState] = collections.deque(maxlen=cfg.state_ring)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._width = float("nan")
        self._gripper_target = None
        self._gripper_busy = threading.Lock()
        self._error: BaseException | None = None
        self.chunks_sent = 0
        self._off_p = np.asarray(cfg.tcp_offset, dtype=np.float64)
        self._base = np.asarray(cfg.base_offset, dtype=np.float64)
        self._off_r = _rot_z(cfg.tcp_rot_z_deg)
        self._tracker = None
        self._schedule: ChunkSchedule | None = None
        self._schedule_lock = threading.RLock()  # execute_chunk holds it around _stream_chunk's own uses
        self._streamer: threading.Thread | None = None
        self._stream_stop = threading.Event()
        # impedance mode: (time, chunk number) of each reference update sent to the arm, for the
        # stream's rate and jitter and each chunk's camera-to-command latency (a minute at 100 Hz)
        self.stream_log: collections.deque[tuple[float, int]] = collections.deque(maxlen=cfg.stream_log)

    # --- connection ----------------------------------------------------------------------------
    def connect(self) -> "FrankaRobot":
        fr = _franky()
        box: dict = {}

        def attempt():
            try:
                rt = fr.RealtimeConfig.Enforce if self.cfg.realtime else fr.RealtimeConfig.Ignore
                box["robot"] = fr.Robot(self.cfg.host, realtime_config=rt)
                if self.cfg.gripper:
                    box["gripper"] = fr.Gripper(self.cfg.host)
            except BaseException as e:  # noqa: BLE001 - reported below
                box["error"] = e

        t = threading.Thread(target=attempt, name="franky-connect", daemon=True)
        t.start()
        t.join(self.cfg.connect_timeout_s)
        if t.is_alive():  # franky blocks on a silent peer: leave the thread, report
            raise RobotUnreachableError(f"no answer from the robot at {self.cfg.host} within "
                                        f"{self.cfg.connect_timeout_s} s: is it on, FCI enabled, the cable in, "
                                        f"and the address right?")
        if "error" in box:
            raise RobotUnreachableError(f"cannot connect to the robot at {self.cfg.host}: {box['error']}") from box["error"]
        self.robot, self.gripper = box["robot"], box.get("gripper")
        self.robot.relative_dynamics_factor = self.cfg.dynamics_factor
        self._width = float(self.gripper.width) if self.gripper is not None else 0.0
        self._start_threads()
        if not self._wait_state(2.0):
            raise RobotError(f"the robot at {self.cfg.host} connected but its state cannot be read")
        log.info("connected to the robot at %s (gripper %s)", self.cfg.host, "yes" if self.gripper else "no")
        return self

    def _wait_state(self, timeout: float) -> bool:
        t = time.monotonic()
        while not self._states:
            if time.monotonic() - t > timeout or self._error is not None:
                return False
            time.sleep(0.005)
        return True

    def __enter__(self) -> "FrankaRobot":
        return self.connect() if self.robot is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.robot is not None:
                self.stop()
        finally:
            self._stop.set()
            for t in self._threads:
                t.join(timeout=1.0)
            self._threads = []
            # drop franky's objects: libfranka closes the connection when they go, and a robot
            # (or franky-sim) serves one client at a time
            self.robot = self.gripper = None

    # --- state ---------------------------------------------------------------------------------
    def _start_threads(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._state_loop, name="robot-state", daemon=True)]
        if self.gripper is not None:
            self._threads.append(threading.Thread(target=self._gripper_loop, name="gripper-state", daemon=True))
        for t in self._threads:
            t.start()

    def to_franky(self, pos: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A pose of the policy's EE frame -> the franky EE pose that realises it."""
        r = rot @ self._off_r.T
        return pos + self._base - r @ self._off_p, r

    def from_franky(self, pos: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return pos - self._base + rot @ self._off_p, rot @ self._off_r

    @property
    def gripper_target(self) -> float:
        """The last commanded gripper width (the current width before any command)."""
        return self._gripper_target if self._gripper_target is not None else self._width

    def read_state(self) -> RobotState:
        """One state read from franky now (what the stream thread does at `state_hz`), in the
        policy's EE frame (`tcp_offset`, `tcp_rot_z_deg`)."""
        cart = self.robot.current_cartesian_state
        joints = self.robot.current_joint_state
        t = np.asarray(cart.pose.end_effector_pose.matrix)
        tw = cart.velocity.end_effector_twist
        lin, ang = np.asarray(tw.linear, float), np.asarray(tw.angular, float)
        pos, rot = self.from_franky(t[:3, 3], t[:3, :3])
        lin = lin + np.cross(ang, t[:3, :3] @ self._off_p)  # the offset point's velocity
        return RobotState(time.monotonic(), pos, rot, lin, ang, np.asarray(joints.position, float),
                          np.asarray(joints.velocity, float), self._width)

    def _state_loop(self) -> None:
        period = 1.0 / self.cfg.state_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                s = self.read_state()
            except BaseException as e:  # noqa: BLE001 - surfaced by latest_state()
                self._error = e
                log.error("robot state stream stopped: %s", e)
                return
            with self._lock:
                self._states.append(s)
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))

    def _gripper_loop(self) -> None:
        while not self._stop.is_set():
            if not self._gripper_busy.locked():  # a moving gripper answers when it is done
                try:
                    self._width = float(self.gripper.width)
                except BaseException as e:  # noqa: BLE001
                    log.warning("gripper width unreadable: %s", e)
            time.sleep(0.05)

    def latest_state(self) -> RobotState:
        if self._error is not None:
            raise RobotError(f"the robot state stream failed: {self._error}") from self._error
        with self._lock:
            if not self._states:
                raise RobotError("no robot state yet (not connected?)")
            return self._states[-1]

    def state_before(self, host_s: float) -> RobotState:
        """The newest state read at or before `host_s` (the oldest kept if all are later)."""
        with self._lock:
            for s in reversed(self._states):
                if s.host_s <= host_s:
                    return s
            if not self._states:
                raise RobotError("no robot state yet (not connected?)")
            return self._states[0]

    def states_since(self, host_s: float) -> list[RobotState]:
        with self._lock:
            return [s for s in self._states if s.host_s >= host_s]

    # --- motion --------------------------------------------------------------------------------
    def execute_chunk(self, actions: np.ndarray, dt: float, start_s: float | None = None) -> int:
        """Track `actions` (n, 10: absolute EE pos, rot6d, gripper width; already checked by the
        safety layer), target i at `start_s + (i + 1) dt` (default start: now), without blocking.
        Returns the chunk's number (1, 2, ...): `stream_log` entries carry the number of the
        chunk whose reference they sent."""
        fr = _franky()
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != 10 or len(actions) == 0:
            raise ValueError(f"a chunk is (n, 10) actions, got shape {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("refusing a chunk with NaN/Inf targets")
        now = time.monotonic()
        start_s = now if start_s is None else start_s
        pos, rot = actions[:, :3].copy(), rot6d_to_matrix(actions[:, 3:9])
        for i in range(len(pos)):  # franky's EE frame from here on
            pos[i], rot[i] = self.to_franky(pos[i], rot[i])
        if self.cfg.chunk_motion == "impedance":
            with self._schedule_lock:
                self.chunks_sent += 1
                self._stream_chunk(pos, rot, dt, start_s, now)
            self.command_gripper(float(actions[0, 9]))
            return self.chunks_sent
        cur = self.latest_state()
        lin, ang = chunk_velocities(pos, rot, dt, *self.to_franky(cur.ee_pos, cur.ee_rot))
        waypoints = []
        for i in range(len(actions)):
            pose = fr.RobotPose(fr.Affine(pose_matrix(pos[i], rot[i])))
            state = fr.CartesianState(pose, fr.RobotVelocity(fr.Twist(lin[i], ang[i])))
            # a waypoint's minimum time is its own segment's: dt, the first one until its due time
            due = (start_s + dt - now) if i == 0 else dt
            min_time = fr.Duration(max(1, int(round(1e3 * due)))) if self.cfg.waypoint_min_time and due > 0 else None
            waypoints.append(fr.CartesianWaypoint(state, fr.ReferenceType.Absolute, minimum_time=min_time))
        try:
            self.robot.move(fr.CartesianWaypointMotion(waypoints), asynchronous=True)
        except Exception as e:  # franky's exceptions: ControlException, InvalidOperationException, ...
            raise RobotError(f"the robot refused the chunk: {e}") from e
        self.chunks_sent += 1
        self.command_gripper(float(actions[0, 9]))
        return self.chunks_sent

    # --- impedance mode: our reference, streamed ------------------------------------------------
    def _stream_chunk(self, pos: np.ndarray, rot: np.ndarray, dt: float, start_s: float, now: float) -> None:
        """Replace the reference from now on: it continues from where the current reference is
        (position and velocity: no jump), then through the chunk's targets at their times."""
        with self._schedule_lock:
            if self._schedule is None:
                s = self.latest_state()
                (p0, r0), v0 = self.to_franky(s.ee_pos, s.ee_rot), np.zeros(3)
            else:
                p0, r0, v0, _ = self._schedule.at(now)
        times = np.concatenate([[now], start_s + dt * np.arange(1, len(pos) + 1)])
        keep = times > now
        keep[0] = True
        p = np.concatenate([p0[None], pos])[keep]
        r = np.concatenate([r0[None], rot])[keep]
        times = times[keep]
        vel = np.zeros_like(p)
        vel[0] = v0
        for i in range(1, len(p) - 1):
            vel[i] = (p[i + 1] - p[i - 1]) / (times[i + 1] - times[i - 1])
        with self._schedule_lock:
            self._schedule = ChunkSchedule(times, p, r, vel)
        if self._streamer is None or not self._streamer.is_alive():
            self._start_streamer()

    def _start_streamer(self) -> None:
        fr = _franky()
        try:
            self._tracker = fr.CartesianImpedanceTracker(self.robot, translational_stiffness=self.cfg.translational_stiffness,
                                                         rotational_stiffness=self.cfg.rotational_stiffness,
                                                         period=1.0 / self.cfg.stream_hz)
        except Exception as e:
            raise RobotError(f"the impedance tracker could not start: {e}") from e
        self._stream_stop.clear()
        self._streamer = threading.Thread(target=self._stream_loop, name="impedance-stream", daemon=True)
        self._streamer.start()

    def _stream_loop(self) -> None:
        fr = _franky()
        try:
            while not self._stream_stop.is_set():
                if self._tracker.tick() is None:
                    raise RobotError("the impedance tracker lost control of the robot")
                with self._schedule_lock:
                    pos, rot, lin, ang = self._schedule.at(time.monotonic())
                    chunk = self.chunks_sent
                self._tracker.set_target(fr.Affine(pose_matrix(pos, rot)), fr.Twist(lin, ang))
                self.stream_log.append((time.monotonic(), chunk))
        except BaseException as e:  # noqa: BLE001 - surfaced by latest_state()
            if not self._stream_stop.is_set():
                self._error = e
                log.error("impedance streaming stopped: %s", e)

    def _stop_streamer(self) -> None:
        self._stream_stop.set()
        if self._streamer is not None:
            self._streamer.join(timeout=1.0)
            self._streamer = None
        if self._tracker is not None:
            try:
                self._tracker.stop()
            except Exception as e:  # noqa: BLE001
                log.error("impedance tracker stop failed: %s", e)
            self._tracker = None
        self._schedule = None

    def command_gripper(self, width: float) -> None:
        """Non-blocking: close with a force-limited grasp, open with a move; small changes ignored."""
        if self.gripper is None:
            return
        last = self._gripper_target if self._gripper_target is not None else self._width
        if abs(width - last) < self.cfg.gripper_deadband or not self._gripper_busy.acquire(blocking=False):
            return
        self._gripper_target = width
        closing = width < last

        def run():
            try:
                t = time.monotonic()
                if closing:
                    ok = self.gripper.grasp(width, self.cfg.gripper_speed, self.cfg.gripper_force,
                                            epsilon_inner=self.cfg.gripper_epsilon,
                                            epsilon_outer=self.cfg.gripper_epsilon)
                else:
                    ok = self.gripper.move(width, self.cfg.gripper_speed)
                log.debug("gripper %s to %.3f m: %s in %.2f s", "grasp" if closing else "move", width, ok,
                          time.monotonic() - t)
            except Exception as e:  # noqa: BLE001 - a failed grasp is not a robot fault
                log.warning("gripper command to %.3f m failed: %s", width, e)
            finally:
                try:  # the first state read after a command still holds the width before it
                    self.gripper.width
                    self._width = float(self.gripper.width)
                except Exception:  # noqa: BLE001
                    pass
                self._gripper_busy.release()

        threading.Thread(target=run, name="gripper-cmd", daemon=True).start()

    def wait_gripper(self, timeout: float = 5.0) -> bool:
        """Wait until no gripper command is running."""
        if not self._gripper_busy.acquire(timeout=timeout):
            return False
        self._gripper_busy.release()
        return True

    def wait_motion(self, timeout: float = 10.0) -> bool:
        """Wait for the current motion to finish (True) or time out (False)."""
        if self._tracker is not None:  # a streamed reference never "finishes": wait for its last knot
            with self._schedule_lock:
                end = self._schedule.t[-1] if self._schedule is not None else time.monotonic()
            left = end - time.monotonic()
            time.sleep(max(0.0, min(left, timeout)))
            return left <= timeout
        try:
            return bool(self.robot.join_motion(timeout=float(timeout)))
        except Exception as e:
            raise RobotError(f"the motion ended in an error: {e}") from e

    def stop(self) -> None:
        """Stop the current motion (the arm decelerates within its limits and holds)."""
        if self._tracker is not None:
            self._stop_streamer()
        try:
            self.robot.stop()
        except Exception as e:  # noqa: BLE001 - stopping must not raise past the caller's cleanup
            log.error("robot stop failed: %s", e)
        if self.gripper is not None and self._gripper_busy.locked():
            try:
                self.gripper.stop()
            except Exception:  # noqa: BLE001
                pass

    def recover(self) -> None:
        """Clear a reflex/error state so motions are accepted again."""
        try:
            self.robot.recover_from_errors()
        except Exception as e:
            raise RobotError(f"error recovery failed: {e}") from e

    def move_home(self, joints: Sequence[float] | None = None) -> None:
        """Blocking, slow joint motion to the home pose (`home_joints`)."""
        fr = _franky()
        target = fr.JointState(list(joints if joints is not None else self.cfg.home_joints))
        try:
            self.robot.move(fr.JointMotion(target, relative_dynamics_factor=fr.RelativeDynamicsFactor(
                self.cfg.home_dynamics_factor)))
        except Exception as e:
            raise RobotError(f"moving home failed: {e}") from e
