"""Damped-least-squares differential IK on a scratch MjData, once per control step.

Why a scratch MjData: iterating IK on the live state would need forward passes that
also recompute contacts; kinematics alone on a copy costs ~20 us per iteration, so a
few warm-started iterations give an accurate joint target while the position servos in
the MJCF do the tracking inside the physics substeps. A null-space pull toward a rest
posture keeps the redundant Panda away from its joint limits.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from data.rotation import rotation_error


@dataclass
class IKConfig:
    iterations: int = 4
    damping: float = 0.03
    rot_weight: float = 0.5  # metres per radian in the error norm
    nullspace_gain: float = 0.1
    max_joint_step: float = 0.6  # rad per iteration
    tolerance: float = 1e-4
    fallback_error: float = 0.005  # above this, retry from the seed postures (branch switch)
    fallback_iterations: int = 40
    fallback_cooldown: int = 5  # control steps without retries after a retry that did not help


_BLAS_LIMITED = False


def single_threaded_blas() -> None:
    """Keep numpy's OpenBLAS on one thread in processes that step simulators.

    The IK solves 6x6 systems every control step; OpenBLAS's worker threads spin on such tiny
    problems and, next to another busy process (a trainer, a second env worker), made a control
    step 10-20x slower (measured). torch's own thread pool (OpenMP) is left alone.
    """
    global _BLAS_LIMITED
    if _BLAS_LIMITED:
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits={"openblas": 1})
    except ImportError:  # optional: the vector env also sets OPENBLAS_NUM_THREADS for workers
        pass
    _BLAS_LIMITED = True


class DifferentialIK:
    def __init__(self, model: mujoco.MjModel, joint_names: tuple[str, ...], site_name: str,
                 rest_q: np.ndarray, cfg: IKConfig = IKConfig(), seeds: tuple[np.ndarray, ...] = ()):
        single_threaded_blas()
        self.model = model
        self.cfg = cfg
        self.data = mujoco.MjData(model)
        ids = [model.joint(n).id for n in joint_names]
        self.qpos_idx = np.array([model.jnt_qposadr[i] for i in ids])
        self.dof_idx = np.array([model.jnt_dofadr[i] for i in ids])
        self.lower = model.jnt_range[ids, 0].copy()
        self.upper = model.jnt_range[ids, 1].copy()
        self.site_id = model.site(site_name).id
        self.rest_q = np.asarray(rest_q, dtype=np.float64)
        # Local DLS follows one IK branch; poses such as "hand pitched toward the base" live
        # on another one, so when the warm start fails we retry from these postures.
        self.seeds = [self.rest_q] + [np.asarray(s, dtype=np.float64) for s in seeds]
        self._cooldown = 0
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Site position (3,) and rotation (3,3) in world for arm joints q."""
        self.data.qpos[self.qpos_idx] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site_id].copy(), self.data.site_xmat[self.site_id].reshape(3, 3).copy()

    def solve(self, target_pos: np.ndarray, target_rot: np.ndarray, q_init: np.ndarray) -> tuple[np.ndarray, float]:
        """Joint targets reaching (target_pos, target_rot) from q_init; returns (q, residual error)."""
        q, err = self._solve_from(target_pos, target_rot, q_init, self.cfg.iterations)
        if err <= self.cfg.fallback_error:
            return q, err
        if self._cooldown > 0:  # an unreachable target: do not pay for retries every step
            self._cooldown -= 1
            return q, err
        improved = False
        for seed in self.seeds:
            q2, err2 = self._solve_from(target_pos, target_rot, seed, self.cfg.fallback_iterations)
            if err2 < err - 1e-4:
                q, err, improved = q2, err2, True
        if not improved or err > self.cfg.fallback_error:
            self._cooldown = self.cfg.fallback_cooldown
        return q, err

    def reset(self) -> None:
        self._cooldown = 0

    def get_state(self) -> dict[str, int]:
        """What the solver carries from one control step to the next (the retry cooldown); the
        scratch MjData holds nothing across solves (every solve sets the arm joints it reads)."""
        return {"cooldown": int(self._cooldown)}

    def set_state(self, state: dict[str, int]) -> None:
        self._cooldown = int(state["cooldown"])

    def _solve_from(self, target_pos, target_rot, q_init, iterations: int) -> tuple[np.ndarray, float]:
        cfg = self.cfg
        q = np.clip(np.asarray(q_init, dtype=np.float64).copy(), self.lower, self.upper)
        err_norm = np.inf
        for _ in range(iterations):
            pos, rot = self.forward(q)
            err = np.concatenate([target_pos - pos, rotation_error(target_rot, rot)])
            err_norm = float(np.linalg.norm(err[:3]) + cfg.rot_weight * np.linalg.norm(err[3:]))
            if err_norm < cfg.tolerance:
                break
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site_id)
            jac = np.vstack([self._jacp[:, self.dof_idx], self._jacr[:, self.dof_idx]])
            j_pinv = jac.T @ np.linalg.inv(jac @ jac.T + (cfg.damping**2) * np.eye(6))  # damped pseudo-inverse
            dq = j_pinv @ err
            if cfg.nullspace_gain > 0:
                null = np.eye(len(q)) - j_pinv @ jac
                dq += null @ (cfg.nullspace_gain * (self.rest_q - q))
            step = np.max(np.abs(dq))
            if step > cfg.max_joint_step:
                dq *= cfg.max_joint_step / step
            q = np.clip(q + dq, self.lower, self.upper)
        return q, err_norm
