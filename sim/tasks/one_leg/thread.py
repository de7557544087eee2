"""Kinematic screw thread between the leg and the tabletop holes.

A real M24-like thread is far below what a 5 ms rigid-body step can resolve, so the
thread is a constraint that switches on only when the geometry says it would catch:
each hole carries a follower body (slide + hinge along the hole axis, coupled at the
thread pitch). At rest a lock equality holds the follower where its stop carries the
leg's stop plate at the engagement height and its guide rings centre the peg. When the
peg rests there aligned (axis offset, tilt) and at the right thread phase, the lock is
released, the follower moves to the leg's depth (its stop drops G.STOP_CLEARANCE clear
of the plate) and the leg is welded to it: twisting the leg clockwise then
drives both down the helix to the seat, and unscrewing lifts them back out, where the
thread disengages and the lock takes the follower back. Nothing teleports that touches
anything: the follower is placed where the leg already is before the weld switches on.

Why this arrangement: the only per-env things it switches are equality constraints
(`eq_active` in MjData, the weld's relative pose and the coupling's phase in `eq_data`).
Collision filters never change (the thread's geoms only ever touch the leg, and while
engaged they move with it), so a batched simulator whose worlds share one model's
contype/conaffinity (mujoco-warp) runs the same design as the CPU backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from data.rotation import matrix_to_quat
from sim.tasks.one_leg import geometry as G


@dataclass
class ThreadConfig:
    max_axis_offset: float = 0.002  # m, peg axis to hole axis
    max_tilt_deg: float = 3.0
    depth_tolerance: float = 0.0015  # m around ENGAGE_HEIGHT
    phase_tolerance_deg: float = 10.0  # the seated leg ends up within this of the assembled yaw

    def __post_init__(self) -> None:
        if not self.depth_tolerance > G.STOP_CLEARANCE:
            raise ValueError(f"thread.depth_tolerance ({self.depth_tolerance} m) must exceed the follower's stop "
                             f"clearance ({G.STOP_CLEARANCE} m): a leg lifted out of the thread must be above the "
                             "stop its follower is locked back to")


def wrap_angle(a: float) -> float:
    return (a + np.pi) % (2 * np.pi) - np.pi


class ThreadModel:
    """Engages/disengages the thread of one leg in the four holes of one tabletop."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, cfg: ThreadConfig = ThreadConfig()):
        self.model, self.data, self.cfg = model, data, cfg
        self.top_id = model.body("top").id
        self.leg_id = model.body("leg").id
        self.follower_ids = [model.body(f"follower{h}").id for h in range(4)]
        self.slide_qadr = [model.jnt_qposadr[model.joint(f"thread_slide{h}").id] for h in range(4)]
        self.hinge_qadr = [model.jnt_qposadr[model.joint(f"thread_hinge{h}").id] for h in range(4)]
        self.slide_dadr = [model.jnt_dofadr[model.joint(f"thread_slide{h}").id] for h in range(4)]
        self.hinge_dadr = [model.jnt_dofadr[model.joint(f"thread_hinge{h}").id] for h in range(4)]
        self.coupling_eq = [model.equality(f"thread_coupling{h}").id for h in range(4)]
        self.weld_eq = [model.equality(f"thread_weld{h}").id for h in range(4)]
        self.lock_eq = [model.equality(f"thread_lock{h}").id for h in range(4)]
        self.holes = G.hole_centres_local()
        self.engaged_hole = -1
        self.c1 = 2 * np.pi / G.THREAD_PITCH
        self.rest_c0 = -self.c1 * G.LOCK_HEIGHT  # the coupling's phase at rest: hinge 0 at the lock height

    # --- geometry of the leg relative to the top ---------------------------------------
    def leg_in_top(self) -> tuple[np.ndarray, np.ndarray]:
        """Leg position (3,) and rotation (3,3) in the tabletop's frame."""
        d = self.data
        r_top = d.xmat[self.top_id].reshape(3, 3)
        r_leg = d.xmat[self.leg_id].reshape(3, 3)
        pos = r_top.T @ (d.xpos[self.leg_id] - d.xpos[self.top_id])
        return pos, r_top.T @ r_leg

    @staticmethod
    def yaw_about_axis(rot: np.ndarray) -> float:
        """Rotation angle about the top's +y axis of a (nearly y-aligned) relative rotation."""
        # rotation about y maps x -> (cos, 0, -sin)
        return float(np.arctan2(-rot[2, 0], rot[0, 0]))

    def slide(self, hole: int) -> float:
        return float(self.data.qpos[self.slide_qadr[hole]])

    # --- state machine ---------------------------------------------------------------
    def reset(self) -> None:
        for h in range(4):
            self._rest(h)
        self.engaged_hole = -1

    def _rest(self, h: int) -> None:
        """Follower h locked (hinge 0), its weld off."""
        m, d = self.model, self.data
        d.eq_active[self.weld_eq[h]] = 0
        d.eq_active[self.lock_eq[h]] = 1
        d.eq_active[self.coupling_eq[h]] = 1
        m.eq_data[self.coupling_eq[h], 0] = self.rest_c0
        d.qpos[self.slide_qadr[h]] = G.LOCK_HEIGHT
        d.qpos[self.hinge_qadr[h]] = 0.0
        d.qvel[self.slide_dadr[h]] = 0.0
        d.qvel[self.hinge_dadr[h]] = 0.0

    def get_state(self) -> dict[str, np.ndarray]:
        """The thread's state outside MjData: the engaged hole and the model fields `engage`
        writes (its equalities' eq_data rows: the weld's relative pose, the coupling's phase).
        eq_active lives in MjData and travels with its state."""
        eqs = self.weld_eq + self.coupling_eq
        return {"engaged_hole": np.array(self.engaged_hole, dtype=np.int64), "eq_data": self.model.eq_data[eqs].copy()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        eqs = self.weld_eq + self.coupling_eq
        eq_data = np.asarray(state["eq_data"], dtype=np.float64)
        want = self.model.eq_data[eqs].shape
        if eq_data.shape != want:
            raise ValueError(f"thread eq_data has shape {eq_data.shape}, the model's is {want}")
        self.model.eq_data[eqs] = eq_data
        self.engaged_hole = int(state["engaged_hole"])

    def update(self) -> bool:
        """Call once per control step after physics; returns True if the thread state changed."""
        if self.engaged_hole >= 0:
            if self.slide(self.engaged_hole) > G.ENGAGE_HEIGHT + self.cfg.depth_tolerance:
                self.disengage()
                return True
            return False
        pos, rot = self.leg_in_top()
        tilt = np.degrees(np.arccos(np.clip(rot[1, 1], -1.0, 1.0)))
        if tilt > self.cfg.max_tilt_deg:
            return False
        depth = pos[1] - G.SEATED_Y
        if abs(depth - G.ENGAGE_HEIGHT) > self.cfg.depth_tolerance:
            return False
        offsets = np.hypot(self.holes[:, 0] - pos[0], self.holes[:, 2] - pos[2])
        hole = int(np.argmin(offsets))
        if offsets[hole] > self.cfg.max_axis_offset:
            return False
        yaw = self.yaw_about_axis(rot)
        c0 = wrap_angle(yaw - self.c1 * depth)
        if abs(c0) > np.radians(self.cfg.phase_tolerance_deg):
            return False
        self.engage(hole, depth, c0)
        return True

    def engage(self, hole: int, depth: float, c0: float) -> None:
        m, d = self.model, self.data
        # the follower to the leg's depth and phase (it carries only what the leg rests on)
        d.qpos[self.slide_qadr[hole]] = depth
        d.qpos[self.hinge_qadr[hole]] = c0 + self.c1 * depth
        d.qvel[self.slide_dadr[hole]] = 0.0
        d.qvel[self.hinge_dadr[hole]] = 0.0
        mujoco.mj_kinematics(m, d)
        # weld's relative pose: the leg as it is now, seen from the follower
        fid = self.follower_ids[hole]
        r_f = d.xmat[fid].reshape(3, 3)
        r_l = d.xmat[self.leg_id].reshape(3, 3)
        rel_pos = r_f.T @ (d.xpos[self.leg_id] - d.xpos[fid])
        rel_quat = matrix_to_quat(r_f.T @ r_l)
        eq = self.weld_eq[hole]
        m.eq_data[eq, 0:3] = 0.0
        m.eq_data[eq, 3:6] = rel_pos
        m.eq_data[eq, 6:10] = rel_quat
        m.eq_data[eq, 10] = 1.0
        m.eq_data[self.coupling_eq[hole], 0] = c0
        d.eq_active[self.lock_eq[hole]] = 0
        d.eq_active[eq] = 1
        self.engaged_hole = hole

    def disengage(self) -> None:
        """The leg rose above the engagement height: the follower goes back to its lock (moving
        down and away from the leg's stop plate)."""
        self._rest(self.engaged_hole)
        self.engaged_hole = -1
