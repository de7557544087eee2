"""one_leg reset distribution, success test, milestones and rewards: the task maths.

Every formula works on batches - arrays over envs, (N, 3) positions and (N, 3, 3) rotations -
and on numpy arrays or torch tensors alike (`sim.tasks.ops`), so the CPU backend (one env at a
time, N = 1) and a GPU backend (all worlds at once) compute the same task.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.tasks import ops
from sim.tasks.one_leg import geometry as G

Array = Any

# Part position (m, uniform +-) and yaw (deg, uniform +-) ranges per randomness level.
# low/med follow furniture-bench; `high` has no faithful MuJoCo equivalent of its three
# hand-picked poses (given in an AprilTag frame), so it widens the ranges instead.
RANDOMNESS = {
    "none": dict(pos=0.0, yaw=0.0, joint_deg=0.0),
    "low": dict(pos=0.015, yaw=15.0, joint_deg=5.0),
    "med": dict(pos=0.05, yaw=45.0, joint_deg=10.0),
    "high": dict(pos=0.08, yaw=90.0, joint_deg=13.0),
}
FOOTPRINT_MARGIN = 0.01


@dataclass
class SuccessConfig:
    max_pos_error: float = 0.0075  # m, leg vs assembled pose in the top frame
    max_angle_deg: float = 15.0


@dataclass
class ResetSample:
    """Initial part poses (world frame) and arm joint offsets; (3,) / (3, 3) / (7,) for one env
    or with a leading env axis for a batch."""

    top_pos: np.ndarray
    top_rot: np.ndarray
    leg_pos: np.ndarray
    leg_rot: np.ndarray
    joint_noise: np.ndarray = field(default_factory=lambda: np.zeros(7))


# --- reset sampling ------------------------------------------------------------------------
def footprint_ok(top_xy: Array, top_yaw: Array, leg_xy: Array, margin: float = FOOTPRINT_MARGIN) -> Array:
    """(N,) bool: the parts clear the fixture and each other (conservative circles, 1 cm margins)."""
    top_r = G.TOP_HALF_XZ * np.sqrt(2)
    # fixture: inside of the U along x is bounded by the front obstacle's inner face
    front_inner = G.OBSTACLE_FRONT_POS[0] - G.OBSTACLE_FRONT_HALF[0]
    side_inner = G.OBSTACLE_SIDE_POS[0][1] - G.OBSTACLE_SIDE_HALF[1]
    # exact box extent of the rotated top along x and y
    ext = G.TOP_HALF_XZ * (abs(ops.cos(top_yaw)) + abs(ops.sin(top_yaw)))
    inside = (top_xy[..., 0] + ext <= front_inner - margin) & (abs(top_xy[..., 1]) + ext <= side_inner - margin)
    leg_half_len = (G.LEG_BODY_Y[1] - G.PEG_Y[0]) / 2
    leg_r = np.hypot(leg_half_len, G.LEG_HALF_XZ)
    apart = ops.norm(top_xy - leg_xy) >= top_r + leg_r + margin
    return inside & apart


def reset_poses(top_xy: Array, top_yaw: Array, leg_xy: Array, leg_yaw: Array) -> tuple[Array, ...]:
    """(N, 2) / (N,) offsets from the rest poses -> world poses (N, 3) and (N, 3, 3)."""
    top_pos = ops.stack([top_xy[..., 0], top_xy[..., 1], top_xy[..., 0] * 0 + G.TOP_REST_POS[2]], -1)
    leg_pos = ops.stack([leg_xy[..., 0], leg_xy[..., 1], leg_xy[..., 0] * 0 + G.LEG_REST_POS[2]], -1)
    top_rot = ops.rot_z(top_yaw) @ ops.const(G.TOP_REST_ROT, top_pos)
    leg_rot = ops.rot_z(leg_yaw) @ ops.const(G.LEG_REST_ROT, leg_pos)
    return top_pos, top_rot, leg_pos, leg_rot


def sample_reset(rng: np.random.Generator, level: str, max_tries: int = 100) -> ResetSample:
    """One env's reset from its own generator: rejection sampling, one candidate per try."""
    if level not in RANDOMNESS:
        raise ValueError(f"unknown randomness level '{level}'; choose from {sorted(RANDOMNESS)}")
    r = RANDOMNESS[level]
    for _ in range(max_tries):
        dtop = rng.uniform(-r["pos"], r["pos"], 2)
        dleg = rng.uniform(-r["pos"], r["pos"], 2)
        yaw = np.radians([rng.uniform(-r["yaw"], r["yaw"]), rng.uniform(-r["yaw"], r["yaw"])])
        top_xy, leg_xy = (G.TOP_REST_POS[:2] + dtop)[None], (G.LEG_REST_POS[:2] + dleg)[None]
        if footprint_ok(top_xy, yaw[:1], leg_xy)[0]:
            break
    else:
        raise RuntimeError(f"could not sample a collision-free reset at level '{level}'")
    top_pos, top_rot, leg_pos, leg_rot = reset_poses(top_xy, yaw[:1], leg_xy, yaw[1:])
    return ResetSample(top_pos[0], top_rot[0], leg_pos[0], leg_rot[0],
                       joint_noise=np.radians(rng.uniform(-r["joint_deg"], r["joint_deg"], 7)))


def sample_reset_batch(generator, n: int, level: str, max_tries: int = 64, device=None) -> ResetSample:
    """N resets at once on torch (a GPU backend): `max_tries` candidates per env, the first
    collision-free one taken. The same distribution and formulas as `sample_reset`."""
    import torch

    if level not in RANDOMNESS:
        raise ValueError(f"unknown randomness level '{level}'; choose from {sorted(RANDOMNESS)}")
    r = RANDOMNESS[level]

    def uniform(*shape, half):
        return (torch.rand(*shape, generator=generator, dtype=torch.float64, device=device) * 2 - 1) * half

    dtop, dleg = uniform(n, max_tries, 2, half=r["pos"]), uniform(n, max_tries, 2, half=r["pos"])
    yaw = torch.deg2rad(uniform(n, max_tries, 2, half=r["yaw"]))
    top_xy = torch.as_tensor(G.TOP_REST_POS[:2], device=device) + dtop
    leg_xy = torch.as_tensor(G.LEG_REST_POS[:2], device=device) + dleg
    ok = footprint_ok(top_xy, yaw[..., 0], leg_xy)
    if not ok.any(dim=1).all():
        raise RuntimeError(f"could not sample a collision-free reset at level '{level}' in {max_tries} tries")
    first = ok.to(torch.int8).argmax(dim=1)
    rows = torch.arange(n, device=device)
    pick = lambda x: x[rows, first]  # noqa: E731
    top_pos, top_rot, leg_pos, leg_rot = reset_poses(pick(top_xy), pick(yaw)[:, 0], pick(leg_xy), pick(yaw)[:, 1])
    return ResetSample(top_pos, top_rot, leg_pos, leg_rot, joint_noise=torch.deg2rad(uniform(n, 7, half=r["joint_deg"])))


# --- success, milestones, reward ------------------------------------------------------------
def assembly_error(top_pos: Array, top_rot: Array, leg_pos: Array, leg_rot: Array) -> tuple[Array, Array, Array]:
    """(N,) position error (m), angle error (deg) and hole index of the leg vs the closest
    assembled pose, in the tabletop frame."""
    top_t = ops.transpose(top_rot)
    rel_pos = (top_t @ (leg_pos - top_pos)[..., None])[..., 0]
    rel_rot = top_t @ leg_rot
    holes = ops.const(G.hole_centres_local(), rel_pos)
    errs = ops.norm(holes - rel_pos[..., None, :])  # (N, 4)
    h = ops.argmin(errs)
    angle = ops.arccos(ops.clip((ops.trace(rel_rot) - 1.0) / 2.0, -1.0, 1.0))
    return ops.take_last(errs, h), angle * (180.0 / np.pi), h


def is_success(top_pos: Array, top_rot: Array, leg_pos: Array, leg_rot: Array,
               cfg: SuccessConfig = SuccessConfig()) -> Array:
    pos_err, ang_err, _ = assembly_error(top_pos, top_rot, leg_pos, leg_rot)
    return (pos_err <= cfg.max_pos_error) & (ang_err <= cfg.max_angle_deg)


def top_in_corner(top_pos: Array, tol: float = 0.01) -> Array:
    return ops.norm(top_pos[..., :2] - ops.const(G.TOP_CORNER_POS[:2], top_pos)) < tol


MILESTONES = ("top_in_corner", "leg_lifted", "leg_upright", "thread_engaged", "success")


def milestones(top_pos: Array, leg_pos: Array, leg_rot: Array, engaged: Array, success: Array) -> dict[str, Array]:
    """(N,) bools per physical sub-goal of one_leg, in task order, for partial-progress reports.

    Judged on the scene alone (not on any policy's internal phase), so the expert, a cloned
    policy and a fine-tuned one are measured with the same ruler.
    """
    axis = leg_rot[..., :, 1]  # the leg's long axis is its body y; the peg is at -y
    peg_end_z = leg_pos[..., 2] + axis[..., 2] * G.PEG_Y[0]
    # standing peg-down on the table or on the tabletop (not merely hanging from the gripper)
    upright = (axis[..., 2] > np.cos(np.radians(15.0))) & (peg_end_z < G.TABLE_Z + 0.03)
    return {
        "top_in_corner": top_in_corner(top_pos, tol=0.01),
        "leg_lifted": leg_pos[..., 2] > G.LEG_REST_POS[2] + 0.05,
        "leg_upright": upright,
        "thread_engaged": engaged,
        "success": success,
    }


def dense_reward(top_pos: Array, top_rot: Array, leg_pos: Array, leg_rot: Array, ee_pos: Array, engaged: Array,
                 slide: Array, success: Array) -> Array:
    """(N,) optional per-phase shaping in [0, 1]: corner, reach, lift, insert, screw."""
    r = 0.1 * ops.exp(-ops.norm(top_pos[..., :2] - ops.const(G.TOP_CORNER_POS[:2], top_pos)) / 0.02)
    r = r + 0.1 * ops.exp(-ops.norm(ee_pos - leg_pos) / 0.05)
    r = r + 0.1 * ops.clip((leg_pos[..., 2] - G.LEG_REST_POS[2]) / 0.05, 0.0, 1.0)
    pos_err, _, _ = assembly_error(top_pos, top_rot, leg_pos, leg_rot)
    r = r + 0.2 * ops.exp(-pos_err / 0.02)
    screw = 0.2 + 0.2 * ops.clip(1.0 - slide / G.ENGAGE_HEIGHT, 0.0, 1.0)
    r = r + ops.where(engaged, screw, screw * 0)
    return ops.where(success, r * 0 + 1.0, r)
