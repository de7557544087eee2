"""one_leg reset distribution, success test and rewards (backend-independent maths)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data.rotation import angle_between, rot_z
from sim.tasks.one_leg import geometry as G

# Part position (m, uniform +-) and yaw (deg, uniform +-) ranges per randomness level.
# low/med follow furniture-bench; `high` has no faithful MuJoCo equivalent of its three
# hand-picked poses (given in an AprilTag frame), so it widens the ranges instead.
RANDOMNESS = {
    "none": dict(pos=0.0, yaw=0.0, joint_deg=0.0),
    "low": dict(pos=0.015, yaw=15.0, joint_deg=5.0),
    "med": dict(pos=0.05, yaw=45.0, joint_deg=10.0),
    "high": dict(pos=0.08, yaw=90.0, joint_deg=13.0),
}


@dataclass
class SuccessConfig:
    max_pos_error: float = 0.0075  # m, leg vs assembled pose in the top frame
    max_angle_deg: float = 15.0


@dataclass
class ResetSample:
    top_pos: np.ndarray
    top_rot: np.ndarray
    leg_pos: np.ndarray
    leg_rot: np.ndarray
    joint_noise: np.ndarray = field(default_factory=lambda: np.zeros(7))


def _footprint_ok(top_xy: np.ndarray, top_yaw: float, leg_xy: np.ndarray, leg_yaw: float, margin: float) -> bool:
    """Conservative (circle) overlap tests between the parts and the fixture, 1 cm margins."""
    top_r = G.TOP_HALF_XZ * np.sqrt(2)
    # fixture: inside of the U along x is bounded by the front obstacle's inner face
    front_inner = G.OBSTACLE_FRONT_POS[0] - G.OBSTACLE_FRONT_HALF[0]
    side_inner = G.OBSTACLE_SIDE_POS[0][1] - G.OBSTACLE_SIDE_HALF[1]
    # exact box extent of the rotated top along x and y
    c, s = abs(np.cos(top_yaw)), abs(np.sin(top_yaw))
    ext = G.TOP_HALF_XZ * (c + s)
    if top_xy[0] + ext > front_inner - margin or abs(top_xy[1]) + ext > side_inner - margin:
        return False
    leg_half_len = (G.LEG_BODY_Y[1] - G.PEG_Y[0]) / 2
    leg_r = np.hypot(leg_half_len, G.LEG_HALF_XZ)
    if np.linalg.norm(top_xy - leg_xy) < top_r + leg_r + margin:
        return False
    return True


def sample_reset(rng: np.random.Generator, level: str, max_tries: int = 100) -> ResetSample:
    if level not in RANDOMNESS:
        raise ValueError(f"unknown randomness level '{level}'; choose from {sorted(RANDOMNESS)}")
    r = RANDOMNESS[level]
    for _ in range(max_tries):
        dtop = rng.uniform(-r["pos"], r["pos"], 2)
        dleg = rng.uniform(-r["pos"], r["pos"], 2)
        yaw_top = np.radians(rng.uniform(-r["yaw"], r["yaw"]))
        yaw_leg = np.radians(rng.uniform(-r["yaw"], r["yaw"]))
        top_xy = G.TOP_REST_POS[:2] + dtop
        leg_xy = G.LEG_REST_POS[:2] + dleg
        if _footprint_ok(top_xy, yaw_top, leg_xy, yaw_leg, margin=0.01):
            break
    else:
        raise RuntimeError(f"could not sample a collision-free reset at level '{level}'")
    return ResetSample(
        top_pos=np.array([*top_xy, G.TOP_REST_POS[2]]),
        top_rot=rot_z(yaw_top) @ G.TOP_REST_ROT,
        leg_pos=np.array([*leg_xy, G.LEG_REST_POS[2]]),
        leg_rot=rot_z(yaw_leg) @ G.LEG_REST_ROT,
        joint_noise=np.radians(rng.uniform(-r["joint_deg"], r["joint_deg"], 7)),
    )


def assembly_error(top_pos, top_rot, leg_pos, leg_rot) -> tuple[float, float, int]:
    """(position error m, angle error deg, hole index) of the leg vs the closest assembled pose."""
    rel_pos = top_rot.T @ (np.asarray(leg_pos) - np.asarray(top_pos))
    rel_rot = top_rot.T @ leg_rot
    holes = G.hole_centres_local()
    errs = np.linalg.norm(holes - rel_pos, axis=1)
    h = int(np.argmin(errs))
    return float(errs[h]), float(np.degrees(angle_between(rel_rot, np.eye(3)))), h


def is_success(top_pos, top_rot, leg_pos, leg_rot, cfg: SuccessConfig = SuccessConfig()) -> bool:
    pos_err, ang_err, _ = assembly_error(top_pos, top_rot, leg_pos, leg_rot)
    return pos_err <= cfg.max_pos_error and ang_err <= cfg.max_angle_deg


def top_in_corner(top_pos: np.ndarray, tol: float = 0.01) -> bool:
    return bool(np.linalg.norm(top_pos[:2] - G.TOP_CORNER_POS[:2]) < tol)


MILESTONES = ("top_in_corner", "leg_lifted", "leg_upright", "thread_engaged", "success")


def milestones(top_pos, leg_pos, leg_rot, engaged: bool, success: bool) -> dict[str, bool]:
    """Physical sub-goals of one_leg, in task order, for partial-progress reports.

    Judged on the scene alone (not on any policy's internal phase), so the expert, a cloned
    policy and a fine-tuned one are measured with the same ruler.
    """
    axis = np.asarray(leg_rot)[:, 1]  # the leg's long axis is its body y; the peg is at -y
    peg_end_z = float(leg_pos[2] + axis[2] * G.PEG_Y[0])
    # standing peg-down on the table or on the tabletop (not merely hanging from the gripper)
    upright = axis[2] > np.cos(np.radians(15.0)) and peg_end_z < G.TABLE_Z + 0.03
    return {
        "top_in_corner": top_in_corner(np.asarray(top_pos), tol=0.01),
        "leg_lifted": bool(leg_pos[2] > G.LEG_REST_POS[2] + 0.05),
        "leg_upright": bool(upright),
        "thread_engaged": bool(engaged),
        "success": bool(success),
    }


def dense_reward(top_pos, top_rot, leg_pos, leg_rot, ee_pos, engaged: bool, slide: float, success: bool) -> float:
    """Optional per-phase shaping in [0, 1]: corner, reach, lift, insert, screw."""
    if success:
        return 1.0
    r = 0.0
    r += 0.1 * float(np.exp(-np.linalg.norm(top_pos[:2] - G.TOP_CORNER_POS[:2]) / 0.02))
    r += 0.1 * float(np.exp(-np.linalg.norm(ee_pos - leg_pos) / 0.05))
    r += 0.1 * float(np.clip((leg_pos[2] - G.LEG_REST_POS[2]) / 0.05, 0.0, 1.0))
    pos_err, _, _ = assembly_error(top_pos, top_rot, leg_pos, leg_rot)
    r += 0.2 * float(np.exp(-pos_err / 0.02))
    if engaged:
        r += 0.2 + 0.2 * float(np.clip(1.0 - slide / G.ENGAGE_HEIGHT, 0.0, 1.0))
    return r
