"""Run a policy on the Franka: `python real/deploy.py --ckpt PATH`.

    python real/deploy.py --ckpt checkpoints/one_leg_pixel_bc.pt --robot-host 172.16.0.2
    python real/deploy.py --ckpt policy.onnx --dry-run                 # no motion: logs what would be sent
    python real/deploy.py --ckpt PATH --config my_cell.yaml robot.dynamics_factor=0.1 cameras.0.serial=123

The checkpoint (or an exported artefact, policy/export.py) says what the policy reads; the
cameras it names are opened from the config (`cameras`: name, serial, resolution, fixed
exposure, crop), the robot through franky (connect timeout, state stream, streamed chunk
execution), every chunk through the safety layer, a watchdog on inference, cameras and robot
state, Ctrl-C / SIGTERM end the episode with the arm stopped. Every rollout is written to a
zarr dataset (data/'s writer: observations, executed actions, timestamps, latencies, safety
events) and a video with the timing overlaid, so it can be replayed and inspected.

Configuration: `DeployConfig` below, from an optional YAML (`--config`) and `key=value`
overrides (unknown keys are errors naming them); the flags set the common ones.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python real/deploy.py` from a checkout
    sys.path.insert(0, str(ROOT))

from data.rotation import matrix_to_rot6d  # noqa: E402
from data.typed_config import from_mapping  # noqa: E402
from real.cameras import CameraConfig, CameraError, CameraSet, RealSenseCamera  # noqa: E402
from real.controller import Controller, ControllerConfig, EpisodeResult  # noqa: E402
from real.live_view import LiveView  # noqa: E402
from real.robot import FrankaRobot, RobotConfig, RobotError  # noqa: E402
from real.safety import SafetyConfig, SafetyLayer, Watchdog  # noqa: E402

log = logging.getLogger("deploy")


def _default_cameras() -> list[CameraConfig]:
    return [CameraConfig(name="front"), CameraConfig(name="wrist")]


@dataclass
class RehearsalConfig:
    seed: int = 100_000  # episode e runs the simulator's standard reset with seed + e
    randomness: str = "low"
    host: str = "127.0.0.2"  # franky-sim's loopback address
    camera_width: int = 320  # rendered frames, cropped/resized to the policy's images like a camera's
    camera_height: int = 240
    approach_s: float = 3.0  # time to bring franky-sim's arm to the episode's start pose
    # franky-sim's floor lies at the simulator's table height: its arm works this much higher
    # (the world follows it shifted back), so its fingers never meet a floor the world has not
    franky_z_offset: float = 0.15
    world_hz: float = 50.0  # the world follows franky-sim's arm at this rate (its lag: one period)
    start_tolerance_m: float = 0.01
    approach_retries: int = 1  # further approaches (recover first, each slower) when the start pose is missed


@dataclass
class DeployConfig:
    ckpt: str = ""
    use_ema: bool = True
    episodes: int = 1  # episodes to run (the operator resets the scene between them)
    robot: RobotConfig = field(default_factory=RobotConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    cameras: list[CameraConfig] = field(default_factory=_default_cameras)
    home_before_episode: bool = True
    out_dir: str = "runs/deploy/{now}"
    record: bool = True
    video: bool = True
    wait_for_operator: bool = True  # ask before each episode (reset the scene, then Enter)
    view: str = "auto"  # live OpenCV window (frames, predicted chunk, timing): auto (where a display exists) | on | off
    rehearsal: RehearsalConfig = field(default_factory=RehearsalConfig)  # --rehearse only

    def __post_init__(self) -> None:
        if self.view not in ("auto", "on", "off"):
            raise ValueError(f"view must be auto, on or off, got '{self.view}'")


def load_config(path: str | None, overrides: list[str]) -> DeployConfig:
    from omegaconf import OmegaConf

    base = OmegaConf.create(dataclasses.asdict(DeployConfig()))
    if path:
        base = OmegaConf.merge(base, OmegaConf.load(path))
    import yaml

    for item in overrides:  # key=value, list items by index (cameras.0.serial=123)
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override '{item}' is not key=value")
        parsed = value if key.endswith(".serial") else yaml.safe_load(value)  # serials are digit strings
        OmegaConf.update(base, key, parsed, merge=True)
    return from_mapping(DeployConfig, OmegaConf.to_container(base, resolve=True), where="deploy")


class EpisodeLog:
    """Per control step: the newest observation, the action executing, timestamps, latency and
    cumulative safety events; written as one dataset episode (and a video) when it ends."""

    def __init__(self, controller: Controller, safety: SafetyLayer):
        self.controller, self.safety = controller, safety
        self.rows: list[dict[str, np.ndarray]] = []
        self.t0 = time.monotonic()

    def __call__(self, k: int, obs: dict[str, np.ndarray], action: np.ndarray | None) -> None:
        chunks = self.controller.chunks()
        row = {key: np.asarray(v[0, -1]) for key, v in obs.items()}
        row["action"] = np.full(10, np.nan, np.float32) if action is None else np.asarray(action, np.float32)
        row["timestamp"] = np.float64(time.monotonic() - self.t0)
        row["latency"] = np.float32(chunks[-1].latency_s if chunks else np.nan)
        row["safety_events"] = np.int32(sum(self.safety.summary().values()))
        self.rows.append(row)

    def frames(self) -> dict[str, np.ndarray]:
        return {k: np.stack([r[k] for r in self.rows]) for k in self.rows[0]} if self.rows else {}


def write_video(path: Path, frames: dict[str, np.ndarray], fps: float) -> Path | None:
    """The episode's camera frames side by side with step, latency and safety events overlaid."""
    cams = sorted(k for k in frames if k.startswith("rgb/"))
    if not cams:
        return None
    import cv2
    import imageio.v2 as imageio

    with imageio.get_writer(str(path), fps=fps, macro_block_size=1) as w:
        for i in range(len(frames[cams[0]])):
            img = np.concatenate([cv2.resize(frames[c][i], (192, 192), interpolation=cv2.INTER_NEAREST)
                                  for c in cams], axis=1)
            text = f"step {i}  lat {1e3 * float(frames['latency'][i]):.0f} ms  safety {int(frames['safety_events'][i])}"
            cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
            w.append_data(img)
    return path


def open_cameras(cfg: DeployConfig, policy) -> CameraSet | None:
    needed = [k[len("rgb/"):] for k in policy.obs_keys if k.startswith("rgb/")]
    if not needed:
        return None
    by_name = {c.name: c for c in cfg.cameras}
    missing = [n for n in needed if n not in by_name]
    if missing:
        raise CameraError(f"the policy reads cameras {needed}; the config has {sorted(by_name)}: add {missing}")
    cams = []
    for name in needed:
        c = dataclasses.replace(by_name[name], out_hw=list(policy.image_hw))
        cams.append(RealSenseCamera(c))
    return CameraSet(cams)


def resolve_out_dir(cfg: DeployConfig) -> str:
    return cfg.out_dir.replace("{now}", _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))


def run(cfg: DeployConfig, policy, robot: FrankaRobot, cameras: CameraSet | None = None,
        extra_obs=None, done=None, judge=None, operator=input, source: str = "real",
        first_episode: int = 0, describe=None) -> list[dict[str, Any]]:
    """The episodes: the caller owns the connected robot and the started cameras. `done()` ends
    an episode early (e.g. the simulator's success in rehearsal), `judge()` says whether it
    succeeded (None: unknown on hardware), `describe()` adds the caller's fields to each episode's
    summary (the rehearsal: seed, the simulator's milestones)."""
    out = Path(resolve_out_dir(cfg))
    out.mkdir(parents=True, exist_ok=True)
    safety = SafetyLayer(cfg.safety)
    controller: Controller | None = None

    def trip(name: str, age: float) -> None:
        log.error("watchdog: %s silent for %.0f ms: stopping", name, 1e3 * age)
        if controller is not None:
            controller.request_stop()

    writer = None
    if cfg.record:
        from data.episodes import EpisodeWriter

        path = out / "rollouts.zarr"
        writer = EpisodeWriter.append_to(path) if path.exists() else EpisodeWriter.create(
            path, attrs={"task": "deploy", "checkpoint": cfg.ckpt, "schema": getattr(policy, "schema", None) or {}})
    summaries = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop_all = {"requested": False}

    def on_signal(signum, frame):
        log.warning("signal %d: stopping the episode (the arm stops)", signum)
        stop_all["requested"] = True
        if controller is not None:
            controller.request_stop()

    def on_quit():  # q / Esc in the live view: as Ctrl-C
        on_signal(signal.SIGINT, None)

    for s in previous:
        signal.signal(s, on_signal)
    view = LiveView(title=f"deploy {Path(cfg.ckpt).name}", enabled=None if cfg.view == "auto" else cfg.view == "on",
                    on_quit=on_quit)
    if cfg.view == "on" and not view.enabled:
        log.warning("view=on but no display exists: the live view is off")
    try:
        with Watchdog(trip, safety=safety) as dog, view:
            for ep in range(first_episode, first_episode + cfg.episodes):
                if stop_all["requested"]:
                    break
                if cfg.wait_for_operator and operator is not None:
                    operator(f"episode {ep + 1}/{cfg.episodes}: reset the scene, then press Enter (Ctrl-C quits) ")
                if cfg.home_before_episode and not cfg.controller.dry_run:
                    robot.move_home()
                controller = Controller(policy, robot, safety, cfg.controller, cameras=cameras, extra_obs=extra_obs,
                                        watchdog=dog)
                elog = EpisodeLog(controller, safety)

                def on_step(k, obs, action, elog=elog, ctrl=controller):
                    elog(k, obs, action)
                    if view.enabled:  # references only: the view thread draws
                        chunks = ctrl.chunks()
                        last = chunks[-1] if chunks else None
                        view.update(step=k, chunk=None if last is None else last.actions,
                                    latency_ms=1e3 * last.latency_s if last else float("nan"),
                                    ee_pos=robot.latest_state().ee_pos, safety_events=int(elog.rows[-1]["safety_events"]),
                                    dropped=sum(c.dropped for c in chunks), status=f"episode {ep + 1}",
                                    frames={n: c.latest().color for n, c in cameras.cameras.items()} if cameras else {})

                result: EpisodeResult = controller.run_episode(done=done, on_step=on_step)
                success = judge() if judge is not None else None
                frames = elog.frames()
                summary = {"episode": ep, **result.summary(), "success": success, **(describe() if describe else {})}
                if writer is not None and frames:
                    summary["dataset_index"] = writer.add_episode(
                        frames, success=bool(success), source=source, outcome="unjudged" if success is None else
                        ("success" if success else "failure"), end_reason=result.reason, checkpoint=cfg.ckpt,
                        safety=result.safety, dropped_actions=result.dropped_actions)
                if cfg.video and frames:
                    v = write_video(out / f"episode_{ep:03d}.mp4", frames, cfg.controller.control_hz)
                    summary["video"] = str(v) if v else None
                summaries.append(summary)
                log.info("episode %d: %s", ep, json.dumps(summary))
                if result.reason in ("safety", "error"):
                    robot.recover()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        old = json.loads((out / "summary.json").read_text()) if first_episode and (out / "summary.json").exists() else []
        (out / "summary.json").write_text(json.dumps(old + summaries, indent=2, default=str))
    return summaries


# The simulator's grip site relative to franky's default hand TCP (measured at franky-sim's ready
# pose, docs/deploy.md): 6.9 mm nearer the flange, rotated -90 degrees about the tool axis.
SIM_TCP_OFFSET = ([0.0, 0.0, -0.0069], -90.0)


class Rehearsal:
    """The embedded one_leg simulator as the world around franky-sim: a thread steps it at the
    control rate following franky-sim's EE pose and commanded gripper width, renders the policy's
    cameras into software RealSense devices, and answers part poses and success."""

    def __init__(self, rcfg: RehearsalConfig, robot: FrankaRobot, camera_names, control_hz: float):
        from real.cameras import SoftwareCamera
        from sim.config import EnvConfig
        from sim.follower import FollowerWorld

        self.rcfg, self.robot, self.dt = rcfg, robot, 1.0 / rcfg.world_hz
        self.frame_every = max(1, int(round(rcfg.world_hz / control_hz)))  # camera frames at the control rate
        self.world = FollowerWorld(EnvConfig(randomness=rcfg.randomness, control_hz=rcfg.world_hz,
                                             max_episode_steps=10**9))
        self.cameras = None
        if camera_names:
            cams = [SoftwareCamera(CameraConfig(name=n, width=rcfg.camera_width, height=rcfg.camera_height,
                                                fps=int(round(control_hz)), stale_after_s=3.0 / control_hz))
                    for n in camera_names]
            self.cameras = CameraSet(cams)
        self._stop = threading.Event()
        # every simulator call that renders runs on this one thread: an EGL context is current
        # on the thread that made it
        from concurrent.futures import ThreadPoolExecutor

        self._exec = ThreadPoolExecutor(1, thread_name_prefix="rehearsal-world")
        self._loop_future = None
        self.error: BaseException | None = None

    def with_policy_images(self, image_hw) -> None:
        for cam in (self.cameras.cameras.values() if self.cameras is not None else ()):
            cam.cfg.out_hw = list(image_hw)

    def _push_frames(self) -> None:
        for name, cam in (self.cameras.cameras.items() if self.cameras is not None else ()):
            cam.push(self.world.render(name, self.rcfg.camera_height, self.rcfg.camera_width))

    def start_episode(self, episode: int) -> None:
        pos, rot, width = self._exec.submit(self.world.reset, self.rcfg.seed + episode).result()
        target = np.concatenate([pos, matrix_to_rot6d(rot), [width]])
        # a previous episode can end with the arm pressed into the world or franky-sim starved
        # of CPU: recover and approach again, slower, before giving the rehearsal up
        for attempt in range(1 + self.rcfg.approach_retries):
            approach_s = self.rcfg.approach_s * (1 + attempt)
            if attempt:
                log.warning("franky-sim's arm is %.1f mm from episode %d's start pose: recovering and "
                            "approaching again (%.0f s)", 1e3 * err, episode, approach_s)
                self.robot.stop()
                self.robot.recover()
            self.robot.execute_chunk(target[None], dt=approach_s)
            self.robot.wait_motion(approach_s + 5.0)
            time.sleep(0.5)
            err = float(np.linalg.norm(self.robot.latest_state().ee_pos - pos))
            if err <= self.rcfg.start_tolerance_m:
                break
        else:
            raise RobotError(f"franky-sim's arm did not reach episode {episode}'s start pose ({1e3 * err:.1f} mm off "
                             f"after {1 + self.rcfg.approach_retries} approaches)")
        if self.cameras is not None:
            self._exec.submit(self._push_frames).result()
        self._stop.clear()
        self._loop_future = self._exec.submit(self._loop)

    def _loop(self) -> None:
        next_t = time.monotonic()
        k = 0
        try:
            while not self._stop.is_set():
                s = self.robot.latest_state()
                self.world.follow(s.ee_pos, s.ee_rot, self.robot.gripper_target)
                k += 1
                if k % self.frame_every == 0:
                    self._push_frames()
                next_t += self.dt
                time.sleep(max(0.0, next_t - time.monotonic()))
        except BaseException as e:  # noqa: BLE001 - the episode ends on it
            self.error = e
            log.exception("rehearsal world failed")

    def end_episode(self) -> None:
        self._stop.set()
        if self._loop_future is not None:
            self._loop_future.result(timeout=5.0)
            self._loop_future = None

    def close(self) -> None:
        self.end_episode()
        self._exec.submit(self.world.close).result()
        self._exec.shutdown()

    def extra_obs(self, t: float) -> dict[str, np.ndarray]:
        """What the cell measures besides the arm: part poses, and the gripper width the world
        measures (its fingers stop on the leg; franky-sim's close on nothing). The EE pose is the
        robot's (franky-sim's), as on hardware: with the world's own EE pose instead, the policy
        saw the follower's lag and failed earlier (leg never upright on seed 100003)."""
        state = self.robot.state_before(t).state_vector()
        state[9] = self.world.gripper_width()
        return {"state": state, "parts": self.world.parts()}

    def done(self) -> bool:
        return self.world.success or self.world.terminated or self.error is not None


def rehearsal_outcome(s: dict[str, Any]) -> str:
    """One rehearsal episode's outcome as the simulator judged it, for the log and the console."""
    reason = "a part knocked off the table" if s["part_lost"] else s["reason"]
    reached = [k for k, v in s["milestones"].items() if v]
    return f"{'success' if s['success'] else 'failure'} ({reason} after {s['steps']} steps; milestones {reached})"


@contextlib.contextmanager
def rehearsal_session(cfg: DeployConfig, rcfg: RehearsalConfig, camera_names, image_hw):
    """franky-sim started, the robot connected to it, the simulator world around it: (robot, world)."""
    from real.franky_sim import FrankySim

    with FrankySim(rcfg.host) as sim:
        rcfg_robot = dataclasses.replace(cfg.robot, host=sim.host, tcp_offset=list(SIM_TCP_OFFSET[0]),
                                         tcp_rot_z_deg=SIM_TCP_OFFSET[1], base_offset=[0.0, 0.0, rcfg.franky_z_offset])
        with FrankaRobot(rcfg_robot) as robot:
            reh = Rehearsal(rcfg, robot, list(camera_names), cfg.controller.control_hz)
            reh.with_policy_images(image_hw)
            if reh.cameras is not None:
                reh.cameras.start(first_frame_timeout_s=None)
            try:
                yield robot, reh
            finally:
                if reh.cameras is not None:
                    reh.cameras.stop()
                reh.close()


def rehearse_episode(cfg: DeployConfig, rcfg: RehearsalConfig, pi, robot: FrankaRobot, reh: "Rehearsal", ep: int,
                     out_dir: str, judge=None) -> dict[str, Any]:
    """One rehearsal episode on the simulator's reset of seed rcfg.seed + ep; `judge` (default: the
    simulator's success) says how it went."""
    reh.start_episode(ep)
    one = dataclasses.replace(cfg, episodes=1, home_before_episode=False, wait_for_operator=False, out_dir=out_dir)

    def describe():
        return {"seed": rcfg.seed + ep, "milestones": reh.world.milestones, "sim_steps": reh.world.steps,
                "part_lost": reh.world.part_lost}

    try:
        s = run(one, pi, robot, reh.cameras, extra_obs=reh.extra_obs, done=reh.done,
                judge=judge or (lambda: reh.world.success), source="policy", first_episode=ep, describe=describe)[0]
    finally:
        reh.end_episode()
    log.info("rehearsal episode %d (seed %d): %s", ep, s["seed"], rehearsal_outcome(s))
    return s


def policy_cameras(pi) -> list[str]:
    return [k[len("rgb/"):] for k in pi.obs_keys if k.startswith("rgb/")]


def keys_without_a_sensor(pi) -> list[str]:
    """Observation keys the cell cannot measure yet (part poses: issue 16)."""
    return [k for k in pi.obs_keys if k != "state" and not k.startswith("rgb/")]


def rehearse(cfg: DeployConfig, rcfg: RehearsalConfig, pi) -> list[dict[str, Any]]:
    """`--rehearse`: franky-sim as the arm, the simulator as the world, the unchanged deploy stack."""
    out_dir = resolve_out_dir(cfg)
    with rehearsal_session(cfg, rcfg, policy_cameras(pi), getattr(pi, "image_hw", (96, 96))) as (robot, reh):
        return [rehearse_episode(cfg, rcfg, pi, robot, reh, ep, out_dir) for ep in range(cfg.episodes)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python real/deploy.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="policy checkpoint (.pt) or exported artefact (.onnx/.ts/.pt2)")
    ap.add_argument("--config", default=None, help="YAML with DeployConfig keys")
    ap.add_argument("--robot-host", default=None)
    ap.add_argument("--episodes", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=None, help="control steps per episode")
    ap.add_argument("--dry-run", action="store_true", help="no motion: log what would be sent")
    ap.add_argument("--rehearse", action="store_true",
                    help="no hardware: franky-sim as the arm, the embedded one_leg simulator as the world")
    ap.add_argument("--seed", type=int, default=None, help="--rehearse: first episode seed (rehearsal.seed)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of DeployConfig (e.g. robot.dynamics_factor=0.1)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    flags = [f"ckpt={args.ckpt}"]
    if args.robot_host:
        flags.append(f"robot.host={args.robot_host}")
    if args.episodes is not None:
        flags.append(f"episodes={args.episodes}")
    if args.max_steps is not None:
        flags.append(f"controller.max_steps={args.max_steps}")
    if args.dry_run:
        flags.append("controller.dry_run=true")
    if args.seed is not None:
        flags.append(f"rehearsal.seed={args.seed}")
    cfg = load_config(args.config, flags + list(args.overrides))
    import policy as policy_pkg

    pi = policy_pkg.load(cfg.ckpt, use_ema=cfg.use_ema)
    if args.rehearse:
        try:
            summaries = rehearse(cfg, cfg.rehearsal, pi)
        except (RobotError, CameraError, RuntimeError) as e:
            print(f"deploy --rehearse: {e}", file=sys.stderr)
            return 1
        for s in summaries:
            print(f"episode {s['episode']} (seed {s['seed']}): {rehearsal_outcome(s)}, latency "
                  f"{s['latency_ms_median']:.0f} ms median, {s['dropped_actions']} actions dropped, safety "
                  f"{s['safety'] or 'clean'}")
        n = len(summaries)
        print(f"rehearsal: {sum(bool(s['success']) for s in summaries)}/{n} successes (judged by the simulator)")
        return 0
    extra = keys_without_a_sensor(pi)
    if extra:
        print(f"{cfg.ckpt} reads {extra}, which only the simulator provides for now (part poses from AprilTags "
              f"are issue 16): use a pixel policy, or --rehearse", file=sys.stderr)
        return 2
    cameras = None
    try:
        cameras = open_cameras(cfg, pi)
        if cameras is not None:  # before the robot: a missing camera is named before anything moves
            cameras.start()
        with FrankaRobot(cfg.robot) as robot:
            summaries = run(cfg, pi, robot, cameras)
    except (RobotError, CameraError) as e:
        print(f"deploy: {e}", file=sys.stderr)
        return 1
    finally:
        if cameras is not None:
            cameras.stop()
    for s in summaries:
        print(f"episode {s['episode']}: {s['reason']} after {s['steps']} steps, latency {s['latency_ms_median']:.0f} ms "
              f"median, {s['dropped_actions']} actions dropped, safety {s['safety'] or 'clean'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
