"""The embedded one_leg environment on MuJoCo (CPU), gymnasium API.

One env = one MjModel + MjData (the thread toggles per-env model fields, so models are
not shared). A control step: action (base frame) -> workspace clip -> IK (Python, once)
-> joint targets interpolated over `interp_chunks` slices of `mj_step(nstep=...)` (C)
-> thread engagement check -> observation.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import gymnasium as gym
import mujoco
import numpy as np

from data.action_clip import ActionLimits, clip_action
from data.rotation import matrix_to_rot6d, quat_to_matrix
from data.schema import RGB_PREFIX, ActionSchema, ObsSchema
from sim.config import EnvConfig
from sim.control.ik import DifferentialIK
from sim.tasks.one_leg import geometry as G
from sim.tasks.one_leg import scene as S
from sim.tasks.one_leg import task as T
from sim.tasks.one_leg.thread import ThreadModel

log = logging.getLogger(__name__)

_INSTABILITY_WARNINGS = (mujoco.mjtWarning.mjWARN_BADQACC, mujoco.mjtWarning.mjWARN_BADQPOS,
                         mujoco.mjtWarning.mjWARN_BADQVEL)

HOME_POS_BASE = np.array([0.45, 0.0, 0.20])  # TCP above the workspace, robot base frame
# TCP frame with the hand pointing down (site z = world -z) and the fingers closing along
# the site x axis = world y.
HAND_DOWN_ROT = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
REST_Q = np.array([0.0, 0.2, 0.0, -2.2, 0.0, 2.4, 0.785])
# Extra IK seeds: hand pitched toward the base (low, near), hand down reaching far.
IK_SEEDS = (np.array([0.2, 1.1, 0.2, -1.4, 0.0, 0.9, 0.9]), np.array([0.0, 0.6, 0.0, -1.8, 0.0, 2.4, 0.785]))
# MjData's share of a sim state: what mj_step integrates from (mjSTATE_INTEGRATION: time, qpos,
# qvel, act, the solver's warm start, ctrl, applied forces, eq_active, mocap, userdata, plugin
# state and, in MuJoCo 4, the delay history). Everything else in MjData is derived from these.
PHYSICS_FIELDS = tuple(f for f in ("time", "qpos", "qvel", "act", "qacc_warmstart", "ctrl", "qfrc_applied",
                                   "xfrc_applied", "eq_active", "mocap_pos", "mocap_quat", "userdata",
                                   "plugin_state", "history") if hasattr(mujoco.MjData, f))


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / max(np.linalg.norm(v), 1e-12)


def observation_space_for(schema: ObsSchema) -> gym.spaces.Dict:
    """One env's observation space for a schema (every backend's)."""
    spaces = {}
    for key, spec in schema.specs().items():
        if spec.dtype == "uint8":
            spaces[key] = gym.spaces.Box(0, 255, spec.shape, np.uint8)
        else:
            spaces[key] = gym.spaces.Box(-np.inf, np.inf, spec.shape, np.float32)
    return gym.spaces.Dict(spaces)


def action_space_for(cfg: EnvConfig) -> gym.spaces.Box:
    """Absolute EE targets: workspace box, 6D rotation, finger gap."""
    lo = np.array([*cfg.workspace_low, *[-1.0] * 6, 0.0], dtype=np.float32)
    hi = np.array([*cfg.workspace_high, *[1.0] * 6, cfg.gripper_max_width], dtype=np.float32)
    return gym.spaces.Box(lo, hi, dtype=np.float32)


class OneLegMujocoEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, cfg: EnvConfig | None = None, render_mode: str | None = "rgb_array",
                 observe_images: bool = True):
        """`observe_images=False` leaves the camera images out of the observations (the spaces
        keep them): a batched backend that resets its worlds through this env renders them
        itself, on its device."""
        self.cfg = cfg = cfg or EnvConfig()
        self.observe_images = bool(observe_images)
        if cfg.task != "one_leg":
            raise ValueError(f"the mujoco backend implements task 'one_leg', not '{cfg.task}'")
        if cfg.obs_mode not in ("state", "pixel"):
            raise ValueError(f"obs_mode must be 'state' or 'pixel', got '{cfg.obs_mode}'")
        if cfg.randomness not in T.RANDOMNESS:
            raise ValueError(f"unknown randomness '{cfg.randomness}'; choose from {sorted(T.RANDOMNESS)}")
        self.render_mode = render_mode
        rc = cfg.render
        opts = S.SceneOptions(
            timestep=cfg.timestep,
            image_hw=tuple(rc.image_hw),
            top_visual_faces=rc.top_visual_faces if rc.low_poly else None,
            leg_visual_faces=rc.leg_visual_faces if rc.low_poly else None,
        )
        self.model = S.build_model(opts)
        self.data = mujoco.MjData(self.model)
        self.substeps = cfg.substeps
        m = self.model
        self.arm_qadr = np.array([m.jnt_qposadr[m.joint(n).id] for n in S.ARM_JOINTS])
        self.arm_dadr = np.array([m.jnt_dofadr[m.joint(n).id] for n in S.ARM_JOINTS])
        self.finger_qadr = np.array([m.jnt_qposadr[m.joint(n).id] for n in S.FINGER_JOINTS])
        self.ee_site = m.site(S.EE_SITE).id
        self.top_qadr = m.jnt_qposadr[m.joint("top_free").id]
        self.leg_qadr = m.jnt_qposadr[m.joint("leg_free").id]
        self.top_id, self.leg_id = m.body("top").id, m.body("leg").id
        self.base_pos = G.ROBOT_BASE_POS.copy()
        self.ik = DifferentialIK(m, S.ARM_JOINTS, S.EE_SITE, REST_Q, cfg.ik, seeds=IK_SEEDS)
        self.thread = ThreadModel(m, self.data, cfg.thread)
        self.home_q = self._solve_home()
        if rc.calibration:
            self._apply_calibration(rc.calibration)
        self.obs_schema = ObsSchema(
            cameras=tuple(rc.cameras) if cfg.obs_mode == "pixel" else (),
            image_hw=tuple(rc.image_hw),
            include_joints=cfg.include_joints,
            include_parts=cfg.include_parts,
            n_parts=2,
        )
        self.action_schema = ActionSchema(control_hz=cfg.control_hz)
        self.observation_space = observation_space_for(self.obs_schema)
        self.action_space = action_space_for(cfg)
        self.limits = ActionLimits(tuple(cfg.workspace_low), tuple(cfg.workspace_high), cfg.max_pos_step,
                                   cfg.gripper_max_width)
        self._warning_counts = (0,) * len(_INSTABILITY_WARNINGS)
        self._renderer = None
        self._video_renderer = None
        self._nominal_vis = None
        self._nominal_phys = None
        self._delayed: list[dict[str, np.ndarray]] = []
        self._parts_delayed: list[np.ndarray] = []
        self._seed_stream = np.random.default_rng()
        self._rng = np.random.default_rng()
        self.episode_seed = -1
        self._q_target = self.home_q.copy()
        self.steps = 0
        self.start_state = -1  # index of the recorded start state this episode began from, -1: none
        self._start_states = None  # loaded at the first reset that needs them
        if cfg.start_states is not None and not 0.0 <= cfg.start_state_prob <= 1.0:
            raise ValueError(f"start_state_prob must be in [0, 1], got {cfg.start_state_prob}")
        self.timings = {"physics": 0.0, "ik": 0.0, "render": 0.0, "thread": 0.0}

    # --- setup -------------------------------------------------------------------------
    def _apply_calibration(self, path: str) -> None:
        """Place the model's cameras where a `data.calibration` file says the cell's stand: a
        base-mounted camera in the robot base frame, a wrist camera relative to the EE frame of
        the observations; the field of view of the region the policy sees (the centred crop to
        `image_hw`). Visual randomisation's camera jitter then varies around these poses."""
        from data.calibration import load_calibration, mujoco_camera_rotation
        from data.image import centred_crop
        from data.rotation import matrix_to_quat

        m, d = self.model, self.data
        cals = load_calibration(path)
        unknown = sorted(set(cals) - set(S.CAMERAS))
        if unknown:
            raise ValueError(f"{path}: cameras {unknown} are not in the model (it has {list(S.CAMERAS)})")
        d.qpos[self.arm_qadr] = self.home_q
        mujoco.mj_kinematics(m, d)
        for name, cal in cals.items():
            c = m.camera(name).id
            body = m.cam_bodyid[c]
            world = np.eye(4)  # the parent frame: the (unrotated) robot base, or the observation's EE frame
            if cal.parent == "base":
                world[:3, 3] = self.base_pos
            else:  # wherever the arm is: the camera rides on the hand
                world[:3, :3] = d.site_xmat[self.ee_site].reshape(3, 3)
                world[:3, 3] = d.site_xpos[self.ee_site]
            cam_world = world @ cal.transform
            r_body, p_body = d.xmat[body].reshape(3, 3), d.xpos[body]
            m.cam_pos[c] = r_body.T @ (cam_world[:3, 3] - p_body)
            m.cam_quat[c] = matrix_to_quat(r_body.T @ mujoco_camera_rotation(cam_world))
            crop = centred_crop((cal.image_wh[1], cal.image_wh[0]), self.cfg.render.image_hw)
            m.cam_fovy[c] = cal.fovy_deg(crop)
            off = cal.principal_offset_px(crop)
            if max(abs(off[0]), abs(off[1])) > 0.02 * crop[3]:
                log.warning("camera '%s': its principal point lies (%.1f, %.1f) px from the crop's centre, which "
                            "a simulated camera cannot copy", name, *off)
        mujoco.mj_forward(m, d)

    def _solve_home(self) -> np.ndarray:
        q, err = self.ik.solve(HOME_POS_BASE + self.base_pos, HAND_DOWN_ROT, REST_Q)
        for _ in range(5):
            q, err = self.ik.solve(HOME_POS_BASE + self.base_pos, HAND_DOWN_ROT, q)
        if err > 1e-3:
            raise RuntimeError(f"home pose IK did not converge (error {err:.4f})")
        return q

    @property
    def renderer(self):
        if self._renderer is None and self.obs_schema.cameras:
            from sim.render import CameraRenderer

            self._renderer = CameraRenderer(self.model, self.obs_schema.cameras, self.obs_schema.image_hw,
                                            self.cfg.render.low_poly)
        return self._renderer

    # --- poses ---------------------------------------------------------------------------
    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        bid = self.model.body(name).id
        return self.data.xpos[bid].copy(), self.data.xmat[bid].reshape(3, 3).copy()

    def ee_pose_world(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.site_xpos[self.ee_site].copy(), self.data.site_xmat[self.ee_site].reshape(3, 3).copy()

    def gripper_width(self) -> float:
        q = self.data.qpos[self.finger_qadr]
        return float(q[0] - q[1])

    def set_part_pose(self, part: str, pos: np.ndarray, rot: np.ndarray) -> None:
        """Place 'top' or 'leg' (world frame) and zero its velocity; for tests and scripted setups."""
        from data.rotation import matrix_to_quat

        adr = {"top": self.top_qadr, "leg": self.leg_qadr}[part]
        jid = self.model.joint(f"{part}_free").id
        dadr = self.model.jnt_dofadr[jid]
        self.data.qpos[adr:adr + 3] = pos
        self.data.qpos[adr + 3:adr + 7] = matrix_to_quat(np.asarray(rot))
        self.data.qvel[dadr:dadr + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def set_arm(self, q: np.ndarray, gripper_width: float | None = None) -> None:
        """Teleport the arm to joint positions q (and its servo targets), for setups."""
        self.data.qpos[self.arm_qadr] = q
        self.data.qvel[self.arm_dadr] = 0.0
        self.data.ctrl[:7] = q
        self._q_target = np.asarray(q, dtype=np.float64).copy()
        if gripper_width is not None:
            self._set_gripper_ctrl(gripper_width)
            self.data.qpos[self.finger_qadr] = [gripper_width / 2, -gripper_width / 2]
        mujoco.mj_forward(self.model, self.data)

    # --- gym API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # Every episode gets its own seed, recorded in info: reset(seed=episode_seed) replays it.
        if seed is not None:
            self._seed_stream = np.random.default_rng(seed)
            self.episode_seed = int(seed)
        else:
            self.episode_seed = int(self._seed_stream.integers(2**31 - 1))
        self._rng = np.random.default_rng(self.episode_seed)
        mujoco.mj_resetData(self.model, self.data)
        self.thread.reset()
        self.ik.reset()
        sample = T.sample_reset(self._rng, self.cfg.randomness)
        q0 = np.clip(self.home_q + sample.joint_noise, self.ik.lower, self.ik.upper)
        self.set_arm(q0, gripper_width=self.cfg.gripper_max_width)
        self.set_part_pose("top", sample.top_pos, sample.top_rot)
        self.set_part_pose("leg", sample.leg_pos, sample.leg_rot)
        self._randomize_visuals()
        push = self._randomize_physics()
        self.data.xfrc_applied[:] = push
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)  # let contacts settle
        self.data.xfrc_applied[:] = 0.0
        mujoco.mj_forward(self.model, self.data)
        self._warning_counts = tuple(int(self.data.warning[w].number) for w in _INSTABILITY_WARNINGS)
        self.steps = 0
        self.reached = {m: False for m in T.MILESTONES}  # latched over the episode
        self.start_state = -1
        if self.cfg.start_states is not None:
            self._reset_from_start_states()
        pr = self.cfg.physics_randomization
        obs = self._observe()
        self._parts_delayed = [obs["parts"]] * pr.parts_latency_steps if "parts" in obs else []
        obs = self._perceive(obs)
        self._delayed = [obs] * pr.obs_latency_steps
        return self._delay(obs), self._info(success=False)

    def _perceive(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The `parts` observation as a pose estimator would give it: late and noisy when the
        randomisation asks (drawn from the episode's generator; nothing drawn when off)."""
        pr = self.cfg.physics_randomization
        if "parts" not in obs or not (pr.parts_noise_pos > 0 or pr.parts_noise_rot_deg > 0 or self._parts_delayed):
            return obs
        parts = obs["parts"]
        if self._parts_delayed:
            self._parts_delayed.append(parts)
            parts = self._parts_delayed.pop(0)
        if pr.parts_noise_pos > 0 or pr.parts_noise_rot_deg > 0:
            parts = np.concatenate([self._jitter_pose(parts[i:i + 9].astype(np.float64), pr.parts_noise_pos,
                                                      pr.parts_noise_rot_deg) for i in range(0, len(parts), 9)])
            parts = parts.astype(np.float32)
        return {**obs, "parts": parts}

    def _delay(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """With obs_latency_steps = k, the observation of k control steps ago."""
        if not self._delayed:
            return obs
        self._delayed.append(obs)
        return self._delayed.pop(0)

    def _randomize_physics(self) -> np.ndarray:
        """This episode's part masses and frictions (from the nominal model) and the reset push
        (nbody, 6) to apply while the reset settles; draws nothing when all is off."""
        pr = self.cfg.physics_randomization
        m = self.model
        if self._nominal_phys is None:
            self._nominal_phys = {f: getattr(m, f).copy() for f in ("body_mass", "body_inertia", "geom_friction")}
        nom = self._nominal_phys
        for f, v in nom.items():
            getattr(m, f)[:] = v
        push = np.zeros((m.nbody, 6))
        rng = self._rng
        parts = (self.top_id, self.leg_id)
        if pr.part_mass_scale > 0:
            for b in parts:
                k = 1.0 + rng.uniform(-pr.part_mass_scale, pr.part_mass_scale)
                m.body_mass[b] = nom["body_mass"][b] * k
                m.body_inertia[b] = nom["body_inertia"][b] * k
        if pr.part_friction_scale > 0:
            for b in parts:
                geoms = np.flatnonzero(m.geom_bodyid == b)
                m.geom_friction[geoms, 0] = nom["geom_friction"][geoms, 0] * (
                    1.0 + rng.uniform(-pr.part_friction_scale, pr.part_friction_scale))
        if pr.reset_push_force > 0 or pr.reset_push_torque > 0:
            for b, scale in zip(parts, (pr.top_push_scale, 1.0)):
                push[b, :3] = _random_unit(rng) * pr.reset_push_force * scale
                push[b, 3:] = _random_unit(rng) * pr.reset_push_torque * scale
        return push

    def _reset_from_start_states(self) -> None:
        """With probability start_state_prob continue a recorded state instead (both draws from
        the episode's generator, after the standard reset's: the seed fixes the episode). The
        episode gets the full time limit (steps 0) and keeps the milestones the state had reached."""
        if self._start_states is None:
            from sim.start_states import StartStates

            states = StartStates.load(self.cfg.start_states)
            states.check_compatible(self.model)
            self._start_states = states
        if self._rng.random() < self.cfg.start_state_prob:
            index = int(self._rng.integers(len(self._start_states)))
            self.set_sim_state(self._start_states[index])
            self.steps = 0
            self.start_state = index

    # --- sim state: snapshot / restore ---------------------------------------------------
    def get_sim_state(self) -> dict[str, np.ndarray]:
        """Everything an episode continues from: MjData's integration state (PHYSICS_FIELDS), the
        servo target the next step interpolates from, the IK's cooldown, the thread (engaged hole,
        its eq_data rows, the free geoms' collision bits), the latched milestones and the step
        count. `set_sim_state` of it in another env of the same model replays the episode bit
        for bit. Visual randomisation is not part of it (it belongs to the episode's seed)."""
        d = self.data
        state = {f: np.array(getattr(d, f), copy=True) for f in PHYSICS_FIELDS}
        state["q_target"] = np.array(self._q_target, dtype=np.float64, copy=True)
        state["ik_cooldown"] = np.array(self.ik.get_state()["cooldown"], dtype=np.int64)
        state.update({f"thread_{k}": v for k, v in self.thread.get_state().items()})
        state["reached"] = np.array([self.reached[m] for m in T.MILESTONES], dtype=bool)
        state["steps"] = np.array(self.steps, dtype=np.int64)
        return state

    def set_sim_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore a `get_sim_state` snapshot (this env's seed stream and visuals stay its own)."""
        d = self.data
        for f in PHYSICS_FIELDS:
            if f not in state:
                raise KeyError(f"sim state lacks '{f}' (recorded with another MuJoCo version?)")
            value = np.asarray(state[f])
            if f == "time":
                d.time = float(value)
                continue
            target = getattr(d, f)
            if value.shape != target.shape:
                raise ValueError(f"sim state '{f}' has shape {value.shape}, this model's is {target.shape}")
            target[...] = value
        self._q_target = np.array(state["q_target"], dtype=np.float64, copy=True)
        self.ik.set_state({"cooldown": int(state["ik_cooldown"])})
        self.thread.set_state({k[len("thread_"):]: v for k, v in state.items() if k.startswith("thread_")})
        self.reached = {m: bool(v) for m, v in zip(T.MILESTONES, np.asarray(state["reached"]))}
        self.steps = int(state["steps"])
        mujoco.mj_forward(self.model, self.data)  # derived quantities (poses, contacts) for observing
        # the divergence check compares against the counts from here on
        self._warning_counts = tuple(int(d.warning[w].number) for w in _INSTABILITY_WARNINGS)

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (10,):
            raise ValueError(f"action must have shape (10,), got {action.shape}")
        t0 = time.perf_counter()
        pr = self.cfg.physics_randomization
        if pr.action_noise_pos > 0 or pr.action_noise_rot_deg > 0:  # the action as executed (not the gripper)
            action = np.concatenate([self._jitter_pose(action[:9], pr.action_noise_pos, pr.action_noise_rot_deg),
                                     action[9:]])
        pos_w, rot_w, width = self._clip_action(action)
        q_goal, ik_err = self.ik.solve(pos_w, rot_w, self._q_target)
        t1 = time.perf_counter()
        self._set_gripper_ctrl(width)
        q_start = self._q_target
        n = max(1, self.cfg.interp_chunks)
        per_chunk = self.substeps // n
        for i in range(n):
            alpha = (i + 1) / n
            self.data.ctrl[:7] = q_start + alpha * (q_goal - q_start)
            nstep = per_chunk if i < n - 1 else self.substeps - per_chunk * (n - 1)
            mujoco.mj_step(self.model, self.data, nstep=nstep)
        self._q_target = q_goal
        t2 = time.perf_counter()
        if self.thread.update():  # follower moved / constraints switched: refresh derived state
            mujoco.mj_forward(self.model, self.data)
        t3 = time.perf_counter()
        self.steps += 1
        self._check_divergence()
        success = self.is_success()
        lost = self.part_lost()
        obs = self._observe()
        reward = self._reward(success)
        # a part knocked off the table cannot be recovered: a failed terminal state
        terminated = bool((success and self.cfg.terminate_on_success) or lost)
        limit = self.cfg.max_episode_steps
        if self.start_state >= 0 and self.cfg.start_state_max_steps is not None:
            limit = self.cfg.start_state_max_steps  # what is left after a recorded start needs less time
        truncated = bool(self.steps >= limit and not terminated)
        self.timings["ik"] += t1 - t0
        self.timings["physics"] += t2 - t1
        self.timings["thread"] += t3 - t2
        info = self._info(success)
        info["ik_error"] = ik_err
        info["part_lost"] = lost
        return self._delay(self._perceive(obs)), reward, terminated, truncated, info

    def _check_divergence(self) -> None:
        """Raise FloatingPointError when the simulation blew up in this step: NaN/Inf state,
        MuJoCo's own instability warnings (it resets the data itself on a bad acceleration,
        which would otherwise pass for a fresh start), or velocities no real motion reaches
        (an exploding contact). The vector env ends the episode as truncated and goes on."""
        d = self.data
        if not (np.all(np.isfinite(d.qpos)) and np.all(np.isfinite(d.qvel))):
            raise FloatingPointError("simulation diverged: NaN/Inf in the state")
        counts = tuple(int(d.warning[w].number) for w in _INSTABILITY_WARNINGS)
        if counts != self._warning_counts:
            self._warning_counts = counts
            raise FloatingPointError("simulation diverged: MuJoCo reported an unstable state "
                                     f"(bad qacc/qpos/qvel warnings {counts})")
        vmax = float(np.max(np.abs(d.qvel)))
        if vmax > self.cfg.max_joint_velocity:
            raise FloatingPointError(f"simulation diverged: |qvel| reached {vmax:.3g} "
                                     f"(> env.max_joint_velocity {self.cfg.max_joint_velocity})")

    def _jitter_pose(self, pose: np.ndarray, pos_std: float, rot_std_deg: float) -> np.ndarray:
        """A (9,) position + 6D rotation with Gaussian noise: on the position, then a Gaussian
        rotation vector turning the orientation (from the episode's generator, in that order)."""
        from data.rotation import matrix_to_rot6d, rot6d_to_matrix, rotvec_to_matrix

        out = np.array(pose, dtype=np.float64)
        out[:3] += self._rng.normal(0.0, pos_std, 3)
        if rot_std_deg > 0:
            turn = rotvec_to_matrix(self._rng.normal(0.0, np.radians(rot_std_deg), 3))
            out[3:9] = matrix_to_rot6d(turn @ rot6d_to_matrix(pose[3:9]))
        return out

    def _clip_action(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        ee_b = self.data.site_xpos[self.ee_site] - self.base_pos
        c = clip_action(action, ee_b, self.limits)
        return c.pos + self.base_pos, c.rot, float(c.width)

    def _set_gripper_ctrl(self, width: float) -> None:
        half = float(np.clip(width / 2, 0.0, 0.04))
        self.data.ctrl[7] = half
        self.data.ctrl[8] = -half

    # --- observation / reward ----------------------------------------------------------
    def state_vector(self) -> np.ndarray:
        pos, rot = self.ee_pose_world()
        parts = [pos - self.base_pos, matrix_to_rot6d(rot), [self.gripper_width()]]
        if self.cfg.include_joints:
            parts.append(self.data.qpos[self.arm_qadr])
        return np.concatenate(parts).astype(np.float32)

    def parts_vector(self) -> np.ndarray:
        out = []
        for name in ("top", "leg"):
            pos, rot = self.body_pose(name)
            out += [pos - self.base_pos, matrix_to_rot6d(rot)]
        return np.concatenate(out).astype(np.float32)

    def _observe(self) -> dict[str, np.ndarray]:
        obs = {"state": self.state_vector()}
        if self.cfg.include_parts:
            obs["parts"] = self.parts_vector()
        if self.obs_schema.cameras and self.observe_images:
            t = time.perf_counter()
            for cam in self.obs_schema.cameras:
                obs[RGB_PREFIX + cam] = self.renderer.render(self.data, cam).copy()
            self.timings["render"] += time.perf_counter() - t
        return obs

    def part_lost(self) -> bool:
        """A part fell off the table (or was flung away)."""
        for bid in (self.top_id, self.leg_id):
            p = self.data.xpos[bid]
            if p[2] < G.TABLE_Z - 0.05 or np.any(np.abs(p[:2] - G.TABLE_POS[:2]) > G.TABLE_HALF[:2] + 0.05):
                return True
        return False

    def is_success(self) -> bool:
        if self.thread.engaged_hole < 0:
            return False
        tp, tr = self.body_pose("top")
        lp, lr = self.body_pose("leg")
        return T.is_success(tp, tr, lp, lr, self.cfg.success)

    def assembly_error(self) -> tuple[float, float, int]:
        tp, tr = self.body_pose("top")
        lp, lr = self.body_pose("leg")
        return T.assembly_error(tp, tr, lp, lr)

    def _reward(self, success: bool) -> float:
        if self.cfg.reward == "sparse":
            return 1.0 if success else 0.0
        if self.cfg.reward != "dense":
            raise ValueError(f"reward must be 'sparse' or 'dense', got '{self.cfg.reward}'")
        tp, tr = self.body_pose("top")
        lp, lr = self.body_pose("leg")
        h = self.thread.engaged_hole
        slide = self.thread.slide(h) if h >= 0 else G.THREAD_TRAVEL
        return T.dense_reward(tp, tr, lp, lr, self.ee_pose_world()[0], h >= 0, slide, success)

    def _info(self, success: bool) -> dict[str, Any]:
        h = self.thread.engaged_hole
        tp, _ = self.body_pose("top")
        lp, lr = self.body_pose("leg")
        for name, now in T.milestones(tp, lp, lr, h >= 0, success).items():
            self.reached[name] |= now
        return {
            "milestones": dict(self.reached),
            "success": bool(success),
            "engaged": h >= 0,
            "thread_depth": self.thread.slide(h) if h >= 0 else float("nan"),
            "steps": self.steps,
            "episode_seed": self.episode_seed,
            "start_state": self.start_state,
        }

    def camera_info(self) -> dict[str, dict[str, Any]]:
        """Pinhole intrinsics (pixels) of the policy cameras, for dataset metadata."""
        h, w = self.obs_schema.image_hw
        out = {}
        for cam in self.obs_schema.cameras:
            fovy = float(self.model.cam_fovy[self.model.camera(cam).id])
            f = (h / 2) / np.tan(np.radians(fovy) / 2)
            out[cam] = {"image_hw": [h, w], "fovy_deg": fovy, "fx": f, "fy": f, "cx": w / 2, "cy": h / 2}
        return out

    # --- rendering / visual randomisation ----------------------------------------------
    def render(self, camera: str = "front", image_hw: tuple[int, int] = (240, 320)) -> np.ndarray:
        """A larger frame for videos (not a policy observation)."""
        from sim.render import CameraRenderer

        size = (self._video_renderer.renderer.height, self._video_renderer.renderer.width) \
            if self._video_renderer is not None else None
        if size != tuple(image_hw):
            if self._video_renderer is not None:
                self._video_renderer.close()
            self._video_renderer = CameraRenderer(self.model, S.CAMERAS, image_hw, self.cfg.render.low_poly)
        return self._video_renderer.render(self.data, camera).copy()

    def _randomize_visuals(self) -> None:
        vr = self.cfg.visual_randomization
        m = self.model
        if self._nominal_vis is None:
            self._nominal_vis = dict(
                rgba=m.geom_rgba.copy(), light_diffuse=m.light_diffuse.copy(), light_dir=m.light_dir.copy(),
                cam_pos=m.cam_pos.copy(), cam_quat=m.cam_quat.copy(),
            )
        nom = self._nominal_vis
        m.geom_rgba[:] = nom["rgba"]
        m.light_diffuse[:] = nom["light_diffuse"]
        m.light_dir[:] = nom["light_dir"]
        m.cam_pos[:] = nom["cam_pos"]
        m.cam_quat[:] = nom["cam_quat"]
        rng = self._rng
        if vr.lighting:
            m.light_diffuse[:] = np.clip(nom["light_diffuse"] * rng.uniform(0.5, 1.5), 0, 1)
            d = nom["light_dir"] + rng.uniform(-0.3, 0.3, nom["light_dir"].shape)
            m.light_dir[:] = d / np.linalg.norm(d, axis=-1, keepdims=True)
        if vr.colors:
            for name in ("table", "floor", "obstacle_front", "obstacle_side0", "obstacle_side1", "top_visual",
                         "leg_visual"):
                g = m.geom(name).id
                m.geom_rgba[g, :3] = np.clip(nom["rgba"][g, :3] + rng.uniform(-0.15, 0.15, 3), 0, 1)
        if vr.camera_jitter_pos > 0 or vr.camera_jitter_deg > 0:
            from data.rotation import axis_angle_to_matrix, matrix_to_quat

            c = m.camera("front").id
            m.cam_pos[c] = nom["cam_pos"][c] + rng.uniform(-vr.camera_jitter_pos, vr.camera_jitter_pos, 3)
            axis = rng.normal(size=3)
            jitter = axis_angle_to_matrix(axis, np.radians(rng.uniform(0, vr.camera_jitter_deg)))
            m.cam_quat[c] = matrix_to_quat(jitter @ quat_to_matrix(nom["cam_quat"][c]))

    def close(self) -> None:
        for r in (self._renderer, self._video_renderer):
            if r is not None:
                r.close()
        self._renderer = self._video_renderer = None
