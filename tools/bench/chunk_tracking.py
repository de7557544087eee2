"""How well each chunk-execution mode of real/robot.py tracks a policy's action stream, in franky-sim.

    python tools/bench/chunk_tracking.py            # -> docs/bench/chunk_tracking.json + a table

The stream is what the controller sends: a circle of radius 4 cm in the horizontal plane at
10 Hz (one revolution in 4 s, 6 cm/s), chunks of 8 targets sent every 4 control steps (receding
horizon: each chunk replaces the rest of the previous one), for 2 revolutions. Measured from
the robot state stream (200 Hz): position error against the commanded timed path (the targets
joined by the same C1 interpolation the impedance mode streams), the delay that best aligns
the two, peak speed/acceleration/jerk of the measured path (25 ms spans), and the error 1 s
after the last target. franky-sim runs slower than real time (~0.4-0.8x), so the waypoint mode
(planned in the simulator's time) lags in wall time by construction; the impedance mode
streams in wall time and the compliant arm trails its reference.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from data.rotation import matrix_to_rot6d
from real.franky_sim import FrankySim
from real.robot import ChunkSchedule, FrankaRobot, RobotConfig

ROOT = Path(__file__).resolve().parents[2]


def circle_targets(centre: np.ndarray, rot: np.ndarray, steps: int, dt: float, radius: float, period_s: float):
    t = dt * np.arange(1, steps + 1)
    a = 2 * np.pi * t / period_s
    pos = centre + np.stack([radius * (np.cos(a) - 1), radius * np.sin(a), 0 * a], axis=1)
    acts = np.zeros((steps, 10))
    acts[:, :3], acts[:, 3:9], acts[:, 9] = pos, matrix_to_rot6d(rot), 0.04
    return acts


def run_mode(mode: str, host: str, revolutions: int = 2, dt: float = 0.1, chunk: int = 8, every: int = 4) -> dict:
    with FrankaRobot(RobotConfig(host=host, chunk_motion=mode)) as robot:
        s = robot.latest_state()
        steps = int(round(revolutions * 4.0 / dt))
        acts = circle_targets(s.ee_pos, s.ee_rot, steps + chunk, dt, 0.04, 4.0)
        t0 = time.monotonic()
        for k in range(0, steps, every):
            due = t0 + k * dt
            time.sleep(max(0.0, due - time.monotonic()))
            robot.execute_chunk(acts[k:k + chunk], dt, start_s=t0 + k * dt)
        time.sleep(max(0.0, t0 + steps * dt - time.monotonic()))
        t_end = time.monotonic()
        time.sleep(1.0)
        settle = float(np.linalg.norm(robot.latest_state().ee_pos - acts[steps - 1 + chunk - every, :3]))
        states = robot.states_since(t0)
        robot.stop()
    times = np.concatenate([[t0], t0 + dt * np.arange(1, len(acts) + 1)])
    pos = np.concatenate([s.ee_pos[None], acts[:, :3]])
    vel = np.zeros_like(pos)
    vel[1:-1] = (pos[2:] - pos[:-2]) / (2 * dt)
    ref = ChunkSchedule(times, pos, np.repeat(s.ee_rot[None], len(pos), 0), vel)
    th = np.array([x.host_s for x in states])
    p = np.array([x.ee_pos for x in states])
    during = th <= t_end
    err = np.array([np.linalg.norm(p[i] - ref.at(th[i])[0]) for i in range(len(th))])[during]
    lags = np.arange(0.0, 1.0, 0.01)
    lag_err = [np.mean([np.linalg.norm(p[i] - ref.at(th[i] - lag)[0]) for i in np.flatnonzero(during)]) for lag in lags]
    best = int(np.argmin(lag_err))
    k = 5
    span = th[k:] - th[:-k]
    v = (p[k:] - p[:-k]) / span[:, None]
    a = (v[k:] - v[:-k]) / span[k:, None]
    j = (a[k:] - a[:-k]) / span[2 * k:, None]
    return {"mode": mode, "rms_error_mm": 1e3 * float(np.sqrt(np.mean(err ** 2))), "max_error_mm": 1e3 * float(err.max()),
            "best_lag_s": float(lags[best]), "error_at_best_lag_mm": 1e3 * float(lag_err[best]),
            "peak_speed_m_s": float(np.linalg.norm(v, axis=1).max()),
            "peak_accel_m_s2": float(np.linalg.norm(a, axis=1).max()),
            "peak_jerk_m_s3": float(np.linalg.norm(j, axis=1).max()),
            "settle_error_mm": 1e3 * settle, "chunks": int(np.ceil(steps / every)), "state_samples": len(th)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.41")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "chunk_tracking.json"))
    ap.add_argument("--revolutions", type=int, default=2)
    args = ap.parse_args(argv)
    rows = []
    with FrankySim(args.host) as sim:
        for mode in ("waypoints", "impedance"):
            rows.append(run_mode(mode, sim.host, args.revolutions))
    nominal = {"speed_m_s": 2 * np.pi * 0.04 / 4.0, "accel_m_s2": (2 * np.pi / 4.0) ** 2 * 0.04}
    out = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}), franky-sim 1.0.4 (mujoco)",
           "stream": "circle r 4 cm, 4 s per revolution, 10 Hz, chunks of 8 every 4 steps", "nominal": nominal,
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    cols = ["mode", "rms_error_mm", "max_error_mm", "best_lag_s", "error_at_best_lag_mm", "peak_speed_m_s",
            "peak_accel_m_s2", "peak_jerk_m_s3", "settle_error_mm"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    print(f"nominal: speed {nominal['speed_m_s']:.3f} m/s, acceleration {nominal['accel_m_s2']:.3f} m/s^2; -> {args.out}")
    return out


if __name__ == "__main__":
    main()
