"""The screw thread of `sim.tasks.one_leg.thread` for all worlds of a batched backend (torch).

Same state machine, same tests (tilt, depth, axis offset, phase) and the same constraint
writes, per world: `eq_active` rows in the simulator's Data and the weld's relative pose and
the coupling's phase in the per-world `eq_data` of its Model. Collision filters are never
touched (the design of thread.py), which is what lets every world share one model.

The follower's pose at engagement is computed from the free joints' qpos (the tabletop and the
leg are free bodies at the root, the follower's slide and hinge run along the top's y axis
through its origin), where the CPU thread runs `mj_kinematics`: the same numbers without a
kinematics pass over every world.
"""
from __future__ import annotations

import numpy as np
import torch

from sim.control.batched_ik import axis_angle, matrix_to_quat, quat_to_matrix
from sim.tasks.one_leg import geometry as G
from sim.tasks.one_leg.thread import ThreadConfig

_Y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)


class BatchedThread:
    """Engages/disengages the thread of N worlds; works on torch views of the simulator's arrays.

    qpos, qvel: (N, nq), (N, nv) views; eq_active: (N, neq) bool view; eq_data: (N, neq, 11)
    view of the per-world model field; xpos, xmat: (N, nbody, 3), (N, nbody, 3, 3) views.
    """

    def __init__(self, model, cfg: ThreadConfig, n: int, device):
        self.cfg = cfg
        self.top_id, self.leg_id = model.body("top").id, model.body("leg").id
        self.top_qadr = int(model.jnt_qposadr[model.joint("top_free").id])
        self.leg_qadr = int(model.jnt_qposadr[model.joint("leg_free").id])
        idx = lambda xs: torch.as_tensor(np.array(xs), device=device)  # noqa: E731
        self.slide_qadr = idx([model.jnt_qposadr[model.joint(f"thread_slide{h}").id] for h in range(4)])
        self.hinge_qadr = idx([model.jnt_qposadr[model.joint(f"thread_hinge{h}").id] for h in range(4)])
        self.slide_dadr = idx([model.jnt_dofadr[model.joint(f"thread_slide{h}").id] for h in range(4)])
        self.hinge_dadr = idx([model.jnt_dofadr[model.joint(f"thread_hinge{h}").id] for h in range(4)])
        self.coupling_eq = idx([model.equality(f"thread_coupling{h}").id for h in range(4)])
        self.weld_eq = idx([model.equality(f"thread_weld{h}").id for h in range(4)])
        self.lock_eq = idx([model.equality(f"thread_lock{h}").id for h in range(4)])
        # follower h's origin in the top frame at slide 0 (its body position: the hole centre)
        self.follower_pos = torch.as_tensor(np.stack([model.body_pos[model.body(f"follower{h}").id] for h in range(4)]),
                                            dtype=torch.float64, device=device)
        self.holes = torch.as_tensor(G.hole_centres_local(), dtype=torch.float64, device=device)
        self.c1 = 2 * np.pi / G.THREAD_PITCH
        self.rest_c0 = -self.c1 * G.LOCK_HEIGHT
        self.engaged_hole = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.device = device

    def slide(self, qpos: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) slide of each world's engaged hole (NaN where none is engaged), float64."""
        hole = self.engaged_hole if rows is None else self.engaged_hole[rows]
        q = qpos if rows is None else qpos[rows]
        adr = self.slide_qadr[hole.clamp(min=0)]
        value = q.gather(1, adr[:, None])[:, 0].to(torch.float64)
        return torch.where(hole >= 0, value, torch.full_like(value, float("nan")))

    def rest(self, rows: torch.Tensor, qpos, qvel, eq_active, eq_data, holes: torch.Tensor | None = None) -> None:
        """Followers of worlds `rows` locked (G.LOCK_HEIGHT), their welds off: every
        hole's (a reset) or, with `holes`, one per world (a release)."""
        if len(rows) == 0:
            return
        r = rows[:, None]
        pick = (lambda ids: ids) if holes is None else (lambda ids: ids[holes][:, None])  # noqa: E731
        eq_active[r, pick(self.weld_eq)] = False
        eq_active[r, pick(self.lock_eq)] = True
        eq_active[r, pick(self.coupling_eq)] = True
        eq_data[r, pick(self.coupling_eq), 0] = self.rest_c0
        qpos[r, pick(self.slide_qadr)] = G.LOCK_HEIGHT
        qpos[r, pick(self.hinge_qadr)] = 0.0
        qvel[r, pick(self.slide_dadr)] = 0.0
        qvel[r, pick(self.hinge_dadr)] = 0.0
        self.engaged_hole[rows] = -1

    def update(self, rows: torch.Tensor, qpos, qvel, eq_active, eq_data, xpos, xmat) -> torch.Tensor:
        """One control step's check for worlds `rows` (after physics); returns the (len(rows),)
        mask of worlds whose thread state changed (they need a forward pass before observing)."""
        cfg = self.cfg
        hole = self.engaged_hole[rows]
        engaged = hole >= 0
        slide = self.slide(qpos, rows)
        release = engaged & (slide > G.ENGAGE_HEIGHT + cfg.depth_tolerance)
        # the leg in the top frame, from the (one substep stale) body poses, as the CPU check
        r_top = xmat[rows, self.top_id].to(torch.float64)
        r_leg = xmat[rows, self.leg_id].to(torch.float64)
        d = (xpos[rows, self.leg_id] - xpos[rows, self.top_id]).to(torch.float64)
        pos = (r_top.transpose(-1, -2) @ d[..., None])[..., 0]
        rot = r_top.transpose(-1, -2) @ r_leg
        tilt = torch.rad2deg(torch.arccos(torch.clamp(rot[:, 1, 1], -1.0, 1.0)))
        depth = pos[:, 1] - G.SEATED_Y
        offsets = torch.hypot(self.holes[:, 0] - pos[:, :1], self.holes[:, 2] - pos[:, 2:3])  # (n, 4)
        best = offsets.argmin(-1)
        yaw = torch.atan2(-rot[:, 2, 0], rot[:, 0, 0])
        c0 = torch.remainder(yaw - self.c1 * depth + np.pi, 2 * np.pi) - np.pi
        catch = (~engaged & (tilt <= cfg.max_tilt_deg) & ((depth - G.ENGAGE_HEIGHT).abs() <= cfg.depth_tolerance)
                 & (offsets.gather(1, best[:, None])[:, 0] <= cfg.max_axis_offset)
                 & (c0.abs() <= np.radians(cfg.phase_tolerance_deg)))
        if bool(release.any()):
            self.rest(rows[release], qpos, qvel, eq_active, eq_data, holes=hole[release])
        if bool(catch.any()):
            self._engage(rows[catch], best[catch], depth[catch], c0[catch], qpos, qvel, eq_active, eq_data)
        return release | catch

    def _engage(self, rows, hole, depth, c0, qpos, qvel, eq_active, eq_data) -> None:
        hinge = c0 + self.c1 * depth
        qpos[rows, self.slide_qadr[hole]] = depth.to(qpos.dtype)
        qpos[rows, self.hinge_qadr[hole]] = hinge.to(qpos.dtype)
        qvel[rows, self.slide_dadr[hole]] = 0.0
        qvel[rows, self.hinge_dadr[hole]] = 0.0
        # poses from qpos (the CPU thread's mj_kinematics): top and leg are free bodies at the root
        q = qpos[rows].to(torch.float64)
        top_p, top_r = q[:, self.top_qadr:self.top_qadr + 3], quat_to_matrix(q[:, self.top_qadr + 3:self.top_qadr + 7])
        leg_p, leg_r = q[:, self.leg_qadr:self.leg_qadr + 3], quat_to_matrix(q[:, self.leg_qadr + 3:self.leg_qadr + 7])
        y = _Y.to(self.device)
        local = self.follower_pos[hole] + depth[:, None] * y
        fol_p = top_p + (top_r @ local[..., None])[..., 0]
        fol_r = top_r @ axis_angle(y, hinge)
        rel_pos = (fol_r.transpose(-1, -2) @ (leg_p - fol_p)[..., None])[..., 0]
        rel_quat = matrix_to_quat(fol_r.transpose(-1, -2) @ leg_r)
        weld = self.weld_eq[hole]
        # the columns thread.py writes (anchor, relative pose, torque scale); the rest keep the model's
        row = torch.zeros(len(rows), 11, dtype=torch.float64, device=self.device)
        row[:, 3:6], row[:, 6:10], row[:, 10] = rel_pos, rel_quat, 1.0
        eq_data[rows, weld, :11] = row.to(eq_data.dtype)
        eq_data[rows, self.coupling_eq[hole], 0] = c0.to(eq_data.dtype)
        eq_active[rows, self.lock_eq[hole]] = False
        eq_active[rows, weld] = True
        self.engaged_hole[rows] = hole
