"""The differential IK of `sim.control.ik`, for all worlds of a batched backend at once (torch).

Why not mujoco-warp's own kinematics: the CPU IK iterates forward kinematics of the arm alone
on a scratch copy, several times per control step; on a batched simulator a scratch Data per
iteration would cost a full kinematics pass over every body of every world. The Panda's chain
is 7 hinges, so its forward kinematics and site Jacobian are a few small matrix products per
world in torch. Same maths as `DifferentialIK` (damped least squares, null-space pull toward
the rest posture, per-iteration step limit, warm start from the previous target, retries from
seed postures with a cooldown), in float64 so the batched and the CPU backends agree to far
below the physics' own float32 noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np
import torch

from sim.control.ik import IKConfig


# --- rotation helpers (torch, batched over leading dims) ------------------------------------
def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) wxyz -> (..., 3, 3), normalised first (MuJoCo's convention)."""
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def rot6d_to_matrix(r6: torch.Tensor) -> torch.Tensor:
    """(N, 6) -> (N, 3, 3): Gram-Schmidt on the two rows (`data.rotation.rot6d_to_matrix`); a
    degenerate pair (zero or parallel rows) is an error, not a silent identity."""
    a1, a2 = r6[:, :3], r6[:, 3:6]
    n1 = torch.linalg.norm(a1, dim=-1, keepdim=True)
    b1 = a1 / n1
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    n2 = torch.linalg.norm(b2, dim=-1, keepdim=True)
    if bool((n1 < 1e-8).any()) or bool((n2 < 1e-8).any()):
        raise ValueError("degenerate 6D rotation in an action (zero or parallel rows)")
    b2 = b2 / n2
    return torch.stack([b1, b2, torch.linalg.cross(b1, b2, dim=-1)], dim=-2)


def matrix_to_quat(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 4) wxyz with w >= 0: the branches of `data.rotation.matrix_to_quat`."""
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    tr = m00 + m11 + m22
    cands = []
    s = torch.sqrt(torch.clamp(tr + 1.0, min=1e-12)) * 2
    cands.append(torch.stack([0.25 * s, (m[..., 2, 1] - m[..., 1, 2]) / s, (m[..., 0, 2] - m[..., 2, 0]) / s,
                              (m[..., 1, 0] - m[..., 0, 1]) / s], -1))
    s = torch.sqrt(torch.clamp(1.0 + m00 - m11 - m22, min=1e-12)) * 2
    cands.append(torch.stack([(m[..., 2, 1] - m[..., 1, 2]) / s, 0.25 * s, (m[..., 0, 1] + m[..., 1, 0]) / s,
                              (m[..., 0, 2] + m[..., 2, 0]) / s], -1))
    s = torch.sqrt(torch.clamp(1.0 + m11 - m00 - m22, min=1e-12)) * 2
    cands.append(torch.stack([(m[..., 0, 2] - m[..., 2, 0]) / s, (m[..., 0, 1] + m[..., 1, 0]) / s, 0.25 * s,
                              (m[..., 1, 2] + m[..., 2, 1]) / s], -1))
    s = torch.sqrt(torch.clamp(1.0 + m22 - m00 - m11, min=1e-12)) * 2
    cands.append(torch.stack([(m[..., 1, 0] - m[..., 0, 1]) / s, (m[..., 0, 2] + m[..., 2, 0]) / s,
                              (m[..., 1, 2] + m[..., 2, 1]) / s, 0.25 * s], -1))
    branch = torch.where(tr > 0, 0, torch.where((m00 > m11) & (m00 > m22), 1, torch.where(m11 > m22, 2, 3)))
    q = torch.stack(cands, -2).gather(-2, branch[..., None, None].expand(*branch.shape, 1, 4))[..., 0, :]
    return torch.where(q[..., :1] < 0, -q, q)


def axis_angle(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Unit axis (3,) or (..., 3) and angles (...,) -> (..., 3, 3) (Rodrigues)."""
    x, y, z = torch.broadcast_to(axis, (*angle.shape, 3)).unbind(-1)
    c, s = torch.cos(angle), torch.sin(angle)
    t = 1 - c
    return torch.stack([
        torch.stack([t * x * x + c, t * x * y - s * z, t * x * z + s * y], -1),
        torch.stack([t * x * y + s * z, t * y * y + c, t * y * z - s * x], -1),
        torch.stack([t * x * z - s * y, t * y * z + s * x, t * z * z + c], -1),
    ], -2)


def rotation_error(r_target: torch.Tensor, r_current: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle of r_target @ r_current^T (`data.rotation.rotation_error`, batched)."""
    r = r_target @ r_current.transpose(-1, -2)
    cos = torch.clamp((r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2] - 1.0) / 2.0, -1.0, 1.0)
    angle = torch.arccos(cos)
    v = torch.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = torch.sin(angle)
    generic = v / (2.0 * torch.where(sin.abs() < 1e-12, torch.ones_like(sin), sin))[..., None] * angle[..., None]
    # near 180 degrees the skew part vanishes: the axis from the symmetric part
    diag = torch.sqrt(torch.clamp((torch.diagonal(r, dim1=-2, dim2=-1) + 1.0) / 2.0, min=0.0))
    i = diag.argmax(-1)
    sym = r + r.transpose(-1, -2)
    row = sym.gather(-2, i[..., None, None].expand(*i.shape, 1, 3))[..., 0, :]  # sym[i, :]
    sign = torch.where(row < 0, -1.0, 1.0).to(r.dtype)
    sign = sign.scatter(-1, i[..., None], 1.0)
    flipped = diag * sign
    flipped = flipped / torch.linalg.norm(flipped, dim=-1, keepdim=True) * angle[..., None]
    out = torch.where((np.pi - angle < 1e-6)[..., None], flipped, generic)
    return torch.where((angle < 1e-9)[..., None], torch.zeros_like(out), out)


# --- the arm chain ----------------------------------------------------------------------------
@dataclass
class _Link:
    pos: torch.Tensor  # body position in its parent (3,)
    rot: torch.Tensor  # body orientation in its parent (3, 3)
    joint: int  # index into the arm joints of this body's hinge, -1: a fixed body
    axis: torch.Tensor | None = None  # joint axis in the body frame
    anchor: torch.Tensor | None = None  # joint position in the body frame
    q0: float = 0.0  # qpos0 of the joint (MuJoCo rotates by q - qpos0)


class ArmChain:
    """Forward kinematics and site Jacobian of a serial hinge chain read from an MjModel."""

    def __init__(self, model: mujoco.MjModel, joint_names: tuple[str, ...], site_name: str,
                 device: torch.device | str = "cpu"):
        f64 = dict(dtype=torch.float64, device=device)
        joint_ids = [model.joint(n).id for n in joint_names]
        site = model.site(site_name).id
        bodies = []
        b = int(model.site_bodyid[site])
        while b != 0:
            bodies.append(b)
            b = int(model.body_parentid[b])
        self.links: list[_Link] = []
        seen = []
        for b in reversed(bodies):
            link = _Link(torch.as_tensor(model.body_pos[b], **f64),
                         quat_to_matrix(torch.as_tensor(model.body_quat[b], **f64)), -1)
            jnum, jadr = int(model.body_jntnum[b]), int(model.body_jntadr[b])
            if jnum > 1:
                raise ValueError(f"body {model.body(b).name} has {jnum} joints; the arm chain needs one hinge per body")
            if jnum == 1:
                if model.jnt_type[jadr] != mujoco.mjtJoint.mjJNT_HINGE or jadr not in joint_ids:
                    raise ValueError(f"joint {model.joint(jadr).name} on the chain to {site_name} is not an arm hinge")
                link.joint = joint_ids.index(jadr)
                link.axis = torch.as_tensor(model.jnt_axis[jadr], **f64)
                link.anchor = torch.as_tensor(model.jnt_pos[jadr], **f64)
                link.q0 = float(model.qpos0[model.jnt_qposadr[jadr]])
                seen.append(jadr)
            self.links.append(link)
        if sorted(seen) != sorted(joint_ids):
            raise ValueError(f"the chain to {site_name} does not pass through all of {joint_names}")
        self.site_pos = torch.as_tensor(model.site_pos[site], **f64)
        self.site_rot = quat_to_matrix(torch.as_tensor(model.site_quat[site], **f64))
        self.n_joints = len(joint_ids)

    def forward(self, q: torch.Tensor, jacobian: bool = False):
        """q (N, 7) -> site position (N, 3), rotation (N, 3, 3) [, Jacobian (N, 6, 7): rows
        linear then angular, as `mj_jacSite`]."""
        n = q.shape[0]
        p = q.new_zeros(n, 3)
        r = torch.eye(3, dtype=q.dtype, device=q.device).expand(n, 3, 3)
        axes, anchors = [None] * self.n_joints, [None] * self.n_joints
        for link in self.links:
            p = p + (r @ link.pos)
            r = r @ link.rot
            if link.joint >= 0:
                anchor = p + r @ link.anchor
                r = r @ axis_angle(link.axis, q[:, link.joint] - link.q0)
                p = anchor - r @ link.anchor
                axes[link.joint] = r @ link.axis
                anchors[link.joint] = anchor
        site_p = p + r @ self.site_pos
        site_r = r @ self.site_rot
        if not jacobian:
            return site_p, site_r
        ax = torch.stack(axes, -1)  # (N, 3, 7)
        lin = torch.linalg.cross(ax, (site_p[:, :, None] - torch.stack(anchors, -1)), dim=1)
        return site_p, site_r, torch.cat([lin, ax], dim=1)


class BatchedDifferentialIK:
    """`DifferentialIK` for N worlds: per-world cooldowns, the same retries and tolerances."""

    def __init__(self, model: mujoco.MjModel, joint_names: tuple[str, ...], site_name: str, rest_q: np.ndarray,
                 n: int, cfg: IKConfig = IKConfig(), seeds: tuple[np.ndarray, ...] = (),
                 device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.chain = ArmChain(model, joint_names, site_name, device)
        ids = [model.joint(name).id for name in joint_names]
        f64 = dict(dtype=torch.float64, device=device)
        self.lower = torch.as_tensor(model.jnt_range[ids, 0], **f64)
        self.upper = torch.as_tensor(model.jnt_range[ids, 1], **f64)
        self.rest_q = torch.as_tensor(rest_q, **f64)
        self.seeds = [self.rest_q] + [torch.as_tensor(s, **f64) for s in seeds]
        self.cooldown = torch.zeros(n, dtype=torch.int64, device=device)
        self._eye6 = torch.eye(6, **f64)
        self._eye7 = torch.eye(len(ids), **f64)

    def solve(self, target_pos: torch.Tensor, target_rot: torch.Tensor, q_init: torch.Tensor,
              rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint targets (N', 7) and residual errors (N',) for the worlds `rows` (default all);
        their cooldowns advance as `DifferentialIK.solve`'s would."""
        cfg = self.cfg
        rows = torch.arange(len(self.cooldown), device=q_init.device) if rows is None else rows
        q, err = self._solve_from(target_pos, target_rot, q_init, cfg.iterations)
        bad = err > cfg.fallback_error
        cooling = bad & (self.cooldown[rows] > 0)
        self.cooldown[rows[cooling]] -= 1
        retry = bad & ~cooling
        if bool(retry.any()):
            idx = torch.nonzero(retry)[:, 0]
            tp, tr = target_pos[idx], target_rot[idx]
            q_r, err_r = q[idx], err[idx]
            improved = torch.zeros_like(err_r, dtype=torch.bool)
            for seed in self.seeds:
                q2, err2 = self._solve_from(tp, tr, seed.expand_as(q_r), cfg.fallback_iterations)
                better = err2 < err_r - 1e-4
                q_r = torch.where(better[:, None], q2, q_r)
                err_r = torch.where(better, err2, err_r)
                improved |= better
            q[idx], err[idx] = q_r, err_r
            cool = ~improved | (err_r > cfg.fallback_error)
            self.cooldown[rows[idx[cool]]] = cfg.fallback_cooldown
        return q, err

    def _solve_from(self, target_pos, target_rot, q_init, iterations: int):
        cfg = self.cfg
        q = torch.minimum(torch.maximum(q_init.to(torch.float64), self.lower), self.upper).clone()
        err_norm = torch.full(q.shape[:1], float("inf"), dtype=torch.float64, device=q.device)
        done = torch.zeros(q.shape[0], dtype=torch.bool, device=q.device)
        for _ in range(iterations):
            pos, rot, jac = self.chain.forward(q, jacobian=True)
            err = torch.cat([target_pos - pos, rotation_error(target_rot, rot)], dim=-1)
            norm = torch.linalg.norm(err[:, :3], dim=-1) + cfg.rot_weight * torch.linalg.norm(err[:, 3:], dim=-1)
            err_norm = torch.where(done, err_norm, norm)
            done = done | (norm < cfg.tolerance)  # the CPU solver stops iterating there
            jt = jac.transpose(-1, -2)
            j_pinv = jt @ torch.linalg.inv(jac @ jt + (cfg.damping ** 2) * self._eye6)
            dq = (j_pinv @ err[..., None])[..., 0]
            if cfg.nullspace_gain > 0:
                null = self._eye7 - j_pinv @ jac
                dq = dq + (null @ (cfg.nullspace_gain * (self.rest_q - q))[..., None])[..., 0]
            step = dq.abs().amax(-1)
            dq = torch.where((step > cfg.max_joint_step)[:, None], dq * (cfg.max_joint_step / step)[:, None], dq)
            q_new = torch.minimum(torch.maximum(q + dq, self.lower), self.upper)
            q = torch.where(done[:, None], q, q_new)
        return q, err_norm
