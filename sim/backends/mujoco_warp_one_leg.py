"""one_leg on mujoco-warp: all worlds of a vector env batched on one device (GPU, or CPU for tests).

The `VectorEnv` protocol of sim.api over N worlds of one mujoco-warp Model/Data, observations
and actions as torch tensors on the device (zero-copy views of warp's arrays). It implements
the masked sub-step (`sim.chunk.MaskedStepper`) and reuses `sim.chunk.execute_chunk`, so chunk
semantics (early stop, reward sums, histories, `final_obs`) are the CPU backend's by
construction. Per control step, for the stepped worlds at once: action clip -> batched IK
(torch, float64: `sim.control.batched_ik`) -> joint targets interpolated over `interp_chunks`
slices of `mjw.step` -> the batched thread (`sim.tasks.one_leg.thread_batched`) -> the task
maths of `sim.tasks.one_leg.task` on torch -> with obs=pixel, every world's camera images from
mujoco-warp's batched ray tracer (`sim.render_warp`), per-world visual randomisation included.

Worlds not stepped (their episode ended earlier in the chunk) are stepped along by mujoco-warp,
which has no per-world mask, and their integration state is put back afterwards.

Resets run the CPU env's own reset on the host (`OneLegMujocoEnv`: the same seed streams,
sampling, start states and contact settling) and upload the resulting state into the reset
worlds' rows: an episode's first state is the CPU backend's to the bit, which is what makes the
two backends comparable, and resets are rare beside steps (one per ~500 control steps per
world). The host settle costs ~3 ms per reset; moving it onto the device is the next
optimisation for thousands of worlds (docs/benchmarks.md).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np

from data.history import ObsHistory
from data.schema import RGB_PREFIX, ActionSchema
from sim.assets import MissingDependencyError
from sim.chunk import ChunkStep, StepOut, execute_chunk, package_tensor_chunk
from sim.config import EnvConfig
from sim.render_warp import VISUAL_FIELDS, BatchedCameras
from sim.tasks.one_leg import geometry as G
from sim.tasks.one_leg import scene as S
from sim.tasks.one_leg import task as T

log = logging.getLogger(__name__)

# buffer overflows that make a step's physics wrong (ITERATIONS / LS_ITERATIONS are not)
_OVERFLOW_NAMES = ("NEFC", "NJMAX_NNZ", "BROADPHASE", "NARROWPHASE", "CCD", "EPA_HORIZON")
# MjData fields of a sim state the device holds (sim.backends.mujoco_one_leg.PHYSICS_FIELDS)
_DEVICE_FIELDS = ("qpos", "qvel", "act", "qacc_warmstart", "ctrl", "qfrc_applied", "xfrc_applied", "eq_active",
                  "mocap_pos", "mocap_quat", "userdata")
# what a masked sub-step puts back in the worlds it did not step
_RESTORED = ("time", "qpos", "qvel", "act", "qacc_warmstart", "ctrl")


def _import_warp():
    try:
        import mujoco_warp as mjw
        import warp as wp
    except ImportError as exc:
        raise MissingDependencyError(
            "sim.backend=mujoco_warp needs mujoco-warp==4.0.0 and warp-lang (pip install -e .[gpu]); "
            f"import failed: {exc}") from exc
    return wp, mjw


def resolve_device(name: str | None) -> str:
    """'auto'/None: the first CUDA device when torch and warp both see one, else 'cpu'."""
    import torch

    if name not in (None, "auto"):
        return str(name)
    wp, _ = _import_warp()
    if torch.cuda.is_available() and wp.is_cuda_available():
        return "cuda:0"
    return "cpu"


class OneLegWarpVectorEnv:
    """N one_leg worlds on one device; see the module doc and `sim.api.VectorEnv`."""

    metadata = {"render_modes": [], "render_fps": 10, "autoreset_mode": "same_step"}

    def __init__(self, cfg: EnvConfig, n_envs: int, obs_history: int = 1):
        import torch

        wp, mjw = _import_warp()
        from sim.backends.mujoco_one_leg import IK_SEEDS, REST_Q, OneLegMujocoEnv
        from sim.control.batched_ik import BatchedDifferentialIK
        from sim.tasks.one_leg.thread_batched import BatchedThread

        if obs_history < 1:
            raise ValueError(f"obs_history must be >= 1, got {obs_history}")
        self.cfg, self.num_envs, self.obs_history = cfg, int(n_envs), int(obs_history)
        wcfg = cfg.warp
        self.device = resolve_device(wcfg.device)
        self.torch_device = torch.device(self.device)
        wp.init()
        # the host env: the model both backends share, and every reset (module doc); the device
        # renders the images (a first observation's too), so the host needs no OpenGL
        self.host = OneLegMujocoEnv(cfg, render_mode=None, observe_images=False)
        mjm = self.host.model
        pixels = bool(self.host.obs_schema.cameras)
        self.single_observation_space = self.host.observation_space
        self.single_action_space = self.host.action_space
        self.obs_schema = self.host.obs_schema
        self.action_schema = ActionSchema(control_hz=cfg.control_hz)
        n = self.num_envs
        pr = cfg.physics_randomization
        if pr.per_step_settings:
            raise NotImplementedError(f"sim.backend=mujoco_warp does not implement action noise or observation latency "
                                      f"and noise (sim.physics_randomization.{pr.per_step_settings}): use "
                                      f"sim.backend=mujoco")
        # per-world model rows: the thread's equalities, with cameras each episode's visuals, and
        # the physics fields a randomisation changes (written from each world's host reset)
        randomised = (*(VISUAL_FIELDS if pixels else ()), *pr.model_fields)
        batched = ("eq_data", *randomised)
        with wp.ScopedDevice(self.device):
            self.m = mjw.put_model(mjm, batch_sizes={f: n for f in batched})
            self.d = mjw.make_data(mjm, nworld=n, nconmax=wcfg.nconmax, njmax=wcfg.njmax)
        self._wp, self._mjw = wp, mjw
        t = lambda a: wp.to_torch(a)  # noqa: E731  zero-copy views
        d = self.d
        self._per_world = {f: t(getattr(self.m, f)) for f in randomised}  # each world's episode draws
        self.cameras = None
        self._pose_views = [t(getattr(d, f)) for f in ("xpos", "xmat", "site_xpos", "site_xmat")]
        if pixels:
            rc = cfg.render
            self.cameras = BatchedCameras(mjm, n, self.host.obs_schema.cameras, tuple(rc.image_hw), rc.low_poly,
                                          self.device)
            # what the tracer draws too: a thread switch in one world must not move another's geoms
            self._pose_views += [t(getattr(d, f)) for f in ("geom_xpos", "geom_xmat", "cam_xpos", "cam_xmat",
                                                            "light_xpos", "light_xdir")]
        self.qpos, self.qvel, self.ctrl = t(d.qpos), t(d.qvel), t(d.ctrl)
        self.eq_active, self.eq_data = t(d.eq_active), t(self.m.eq_data)
        self.xpos, self.xmat = t(d.xpos), t(d.xmat)
        self.site_xpos, self.site_xmat = t(d.site_xpos), t(d.site_xmat)
        self._views = {f: t(getattr(d, f)) for f in ("time", *_DEVICE_FIELDS) if getattr(d, f, None) is not None}
        self._overflow = t(d.overflow)
        overflow = mjw.OverflowType
        self._overflow_mask = int(sum(int(getattr(overflow, name)) for name in _OVERFLOW_NAMES))
        dev = self.torch_device
        f64 = dict(dtype=torch.float64, device=dev)
        h = self.host
        self.base = torch.as_tensor(h.base_pos, **f64)
        self.arm_qadr = torch.as_tensor(h.arm_qadr, device=dev)
        self.finger_qadr = torch.as_tensor(h.finger_qadr, device=dev)
        self.ee_site, self.top_id, self.leg_id = h.ee_site, h.top_id, h.leg_id
        self.ik = BatchedDifferentialIK(mjm, S.ARM_JOINTS, S.EE_SITE, REST_Q, n, cfg.ik, IK_SEEDS, device=dev)
        self.thread = BatchedThread(mjm, cfg.thread, n, dev)
        self.thread_eqs = torch.cat([self.thread.weld_eq, self.thread.coupling_eq])  # get_state's eq_data rows
        self.ws_low = torch.as_tensor(cfg.workspace_low, **f64)
        self.ws_high = torch.as_tensor(cfg.workspace_high, **f64)
        # per-world episode state (the CPU env keeps these in Python attributes)
        self.q_target = torch.zeros(n, 7, **f64)
        self.ee_pos = torch.zeros(n, 3, **f64)  # the EE position the next action is clipped against
        self.steps = torch.zeros(n, dtype=torch.int64, device=dev)
        self.reached = torch.zeros(n, len(T.MILESTONES), dtype=torch.bool, device=dev)
        self.start_state = torch.full((n,), -1, dtype=torch.int64, device=dev)
        self.seeds = torch.full((n,), -1, dtype=torch.int64, device=dev)
        self.returns = torch.zeros(n, dtype=torch.float64, device=dev)
        self.lengths = torch.zeros(n, dtype=torch.int64, device=dev)
        self._seed_streams = [np.random.default_rng() for _ in range(n)]
        keys = list(self.single_observation_space.spaces)
        self.latest = {k: torch.zeros((n, *s.shape), dtype=getattr(torch, str(s.dtype)), device=dev)
                       for k, s in self.single_observation_space.spaces.items()}
        self.history = ObsHistory(self.obs_history, keys)
        self.final_history = ObsHistory(self.obs_history, keys)
        self.host.reset(seed=0)  # a snapshot's layout (reset() draws every world's episode anew)
        self._state_template = {k: v for k, v in self.host.get_sim_state().items()
                                if k in ("time", *_DEVICE_FIELDS, "plugin_state", "history")}
        self.timings = {"physics": 0.0, "ik": 0.0, "reset": 0.0, "thread": 0.0, "task": 0.0, "render": 0.0}
        self._needs_reset = True
        self._closed = False
        # CUDA graphs of the substep loop, by step count (None: plain launches, as on CPU)
        self._graphs = {} if wcfg.cuda_graphs and self.device.startswith("cuda") else None

    # --- resets (host) ---------------------------------------------------------------------
    def _next_seed(self, i: int, seed: int | None) -> int:
        """The CPU env's seed rule: an explicit seed restarts env i's stream, else the next draw."""
        if seed is not None:
            self._seed_streams[i] = np.random.default_rng(int(seed))
            return int(seed)
        return int(self._seed_streams[i].integers(2**31 - 1))

    def _reset_worlds(self, rows: Sequence[int], seeds: Sequence[int | None]) -> list[dict[str, Any]]:
        """Reset worlds `rows` on the host and upload their states; returns their reset infos
        (and fills `latest` with their first observations)."""
        import torch

        t0, rendered = time.perf_counter(), self.timings["render"]
        infos, states, obs_rows, starts, ee = [], [], [], [], []
        for i, seed in zip(rows, seeds):
            episode_seed = self._next_seed(int(i), seed)
            obs, info = self.host.reset(seed=episode_seed)
            for f, view in self._per_world.items():  # this episode's randomised model rows
                view[int(i)] = torch.as_tensor(getattr(self.host.model, f), device=self.torch_device)
            states.append(self.host.get_sim_state())
            starts.append(self.host.start_state)
            obs_rows.append(obs)
            ee.append(self.host.data.site_xpos[self.host.ee_site].copy())
            infos.append(info)
        self.set_sim_states(rows, states, observe=False)  # the host's observations and EE below
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.torch_device)
        self.start_state[idx] = torch.as_tensor(starts, device=self.torch_device)
        for k in obs_rows[0]:
            self.latest[k][idx] = torch.as_tensor(np.stack([o[k] for o in obs_rows]), device=self.torch_device)
        if self.cameras is not None:  # the first images, rendered on the device from the uploaded state
            self._refresh_poses(idx)
            for k, img in self._render(idx).items():
                self.latest[k][idx] = img
        self.ee_pos[idx] = torch.as_tensor(np.stack(ee), dtype=torch.float64, device=self.torch_device)
        self.seeds[idx] = torch.as_tensor([int(inf["episode_seed"]) for inf in infos], device=self.torch_device)
        self.returns[idx] = 0.0
        self.lengths[idx] = 0
        self.timings["reset"] += time.perf_counter() - t0 - (self.timings["render"] - rendered)
        return infos

    def set_sim_states(self, rows: Sequence[int], states: Sequence[Mapping[str, np.ndarray]],
                       observe: bool = True) -> None:
        """Load `OneLegMujocoEnv.get_sim_state()` snapshots into worlds `rows`; with `observe`,
        also their poses, latest observations and clip positions (a kinematics pass over all
        worlds: resets skip it, they take those from the host)."""
        import torch

        dev = self.torch_device
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=dev)
        for f, view in self._views.items():
            if f not in states[0]:
                raise KeyError(f"sim state lacks '{f}' (recorded with another MuJoCo version?)")
            value = np.stack([np.asarray(s[f]) for s in states])
            view[idx] = torch.as_tensor(value, device=dev).to(view.dtype).reshape(view[idx].shape)
        eq = np.stack([np.asarray(s["thread_eq_data"]) for s in states])
        self.eq_data[idx[:, None], self.thread_eqs] = torch.as_tensor(eq, device=dev).to(self.eq_data.dtype)
        self.q_target[idx] = torch.as_tensor(np.stack([s["q_target"] for s in states]), dtype=torch.float64,
                                             device=dev)
        self.ik.cooldown[idx] = torch.as_tensor([int(s["ik_cooldown"]) for s in states], device=dev)
        self.thread.engaged_hole[idx] = torch.as_tensor([int(s["thread_engaged_hole"]) for s in states], device=dev)
        self.reached[idx] = torch.as_tensor(np.stack([s["reached"] for s in states]), device=dev)
        self.steps[idx] = torch.as_tensor([int(s["steps"]) for s in states], device=dev)
        self.start_state[idx] = -1
        if not observe:
            return
        self._refresh_poses(idx)
        obs = self._observe(idx)
        for k in self.latest:
            self.latest[k][idx] = obs[k]
        self.ee_pos[idx] = self.site_xpos[idx, self.ee_site].to(torch.float64)

    def get_sim_state(self, i: int) -> dict[str, np.ndarray]:
        """World i's state in the CPU env's snapshot format (`OneLegMujocoEnv.set_sim_state`
        takes it; float32 on the device, so a round trip keeps float32 precision)."""
        state = {}
        for f, template in self._state_template.items():
            if f in self._views:
                view = self._views[f][i]
                state[f] = view.detach().cpu().numpy().astype(template.dtype).reshape(template.shape)
            else:  # fields the device does not hold (empty in this model)
                state[f] = template.copy()
        state["q_target"] = self.q_target[i].cpu().numpy().copy()
        state["ik_cooldown"] = np.array(int(self.ik.cooldown[i]), dtype=np.int64)
        state["thread_engaged_hole"] = np.array(int(self.thread.engaged_hole[i]), dtype=np.int64)
        state["thread_eq_data"] = self.eq_data[i, self.thread_eqs].cpu().numpy().astype(np.float64)
        state["reached"] = self.reached[i].cpu().numpy().copy()
        state["steps"] = np.array(int(self.steps[i]), dtype=np.int64)
        return state

    # --- the masked sub-step ---------------------------------------------------------------
    def step_masked(self, actions, active, reset_seeds) -> StepOut:
        import torch

        dev = self.torch_device
        n = self.num_envs
        rows = torch.nonzero(active)[:, 0]
        reward = torch.zeros(n, dtype=torch.float32, device=dev)
        terminated = torch.zeros(n, dtype=torch.bool, device=dev)
        truncated = torch.zeros(n, dtype=torch.bool, device=dev)
        infos = self._default_infos()
        if len(rows) == 0:
            return StepOut(self.latest, reward, terminated, truncated, self.latest, infos)
        a = actions[rows].to(torch.float64)
        if not bool(torch.isfinite(a).all()):
            bad = rows[~torch.isfinite(a).all(-1)].tolist()
            raise ValueError(f"action contains NaN/Inf in worlds {bad}")
        t0 = time.perf_counter()
        pos_w, rot_w, width = self._clip(a, rows)
        q_goal, ik_err = self.ik.solve(pos_w, rot_w, self.q_target[rows], rows)
        t1 = time.perf_counter()
        self._physics(rows, active, q_goal, width)
        self.q_target[rows] = q_goal
        t2 = time.perf_counter()
        changed = self.thread.update(rows, self.qpos, self.qvel, self.eq_active, self.eq_data, self.xpos, self.xmat)
        t3 = time.perf_counter()
        if bool(changed.any()):
            self._refresh_poses(rows[changed])
        rendered = self.timings["render"]
        obs = self._observe(rows)
        rendered = self.timings["render"] - rendered  # counted under render, not task
        self.ee_pos[rows] = self.site_xpos[rows, self.ee_site].to(torch.float64)
        self.steps[rows] += 1
        diverged = self._diverged(rows)
        success, lost, rew, info_rows = self._task(rows, ik_err)
        t4 = time.perf_counter()
        limit = torch.full_like(self.steps[rows], self.cfg.max_episode_steps)
        if self.cfg.start_state_max_steps is not None:
            limit = torch.where(self.start_state[rows] >= 0, self.cfg.start_state_max_steps, limit)
        term = ((success & self.cfg.terminate_on_success) | lost) & ~diverged
        trunc = ((self.steps[rows] >= limit) & ~term) | diverged
        rew = torch.where(diverged, torch.zeros_like(rew), rew)
        reward[rows], terminated[rows], truncated[rows] = rew.to(torch.float32), term, trunc
        self.returns[rows] += rew
        self.lengths[rows] += 1
        for k, v in info_rows.items():
            infos[k][rows] = v.to(infos[k].dtype)
        infos["diverged"][rows] = diverged
        infos["episode_seed"][rows] = self.seeds[rows]
        # the new observations of the stepped worlds (diverged ones keep their last finite one)
        keep = ~diverged
        for k in self.latest:
            self.latest[k][rows[keep]] = obs[k][keep].to(self.latest[k].dtype)
        done = rows[term | trunc]
        final = self.latest
        if len(done):
            final = {k: v.clone() for k, v in self.latest.items()}
            infos["episode_return"][done] = self.returns[done]
            infos["episode_length"][done] = self.lengths[done]
            seeds = [int(s) if int(s) >= 0 else None for s in reset_seeds[done].tolist()]
            if bool(diverged.any()):
                for i in rows[diverged].tolist():
                    log.warning("world %d diverged at step %d of its episode (seed %d); truncating the episode",
                                i, int(self.lengths[i]), int(self.seeds[i]))
            self._reset_worlds(done.tolist(), seeds)
        infos["next_episode_seed"][rows] = self.seeds[rows]
        self.timings["ik"] += t1 - t0
        self.timings["physics"] += t2 - t1
        self.timings["thread"] += t3 - t2
        self.timings["task"] += t4 - t3 - rendered
        return StepOut(self.latest, reward, terminated, truncated, final, infos)

    def _clip(self, a, rows):
        """`data.action_clip.clip_action` on torch: workspace box, step limit, 6D -> matrix."""
        import torch

        from sim.control.batched_ik import rot6d_to_matrix

        cfg = self.cfg
        ee_b = self.ee_pos[rows] - self.base
        pos = torch.minimum(torch.maximum(a[:, :3], self.ws_low), self.ws_high)
        delta = pos - ee_b
        dist = torch.linalg.norm(delta, dim=-1)
        limited = dist > cfg.max_pos_step
        scale = torch.where(limited, cfg.max_pos_step / torch.clamp(dist, min=1e-12), torch.ones_like(dist))
        pos = torch.where(limited[:, None], ee_b + delta * scale[:, None], pos)
        width = torch.clamp(a[:, 9], 0.0, cfg.gripper_max_width)
        return pos + self.base, rot6d_to_matrix(a[:, 3:9]), width

    def _physics(self, rows, active, q_goal, width) -> None:
        """One control step of physics for worlds `rows`; the others are put back as they were."""
        import torch

        idle = ~active
        saved = {f: self._views[f][idle].clone() for f in _RESTORED} if bool(idle.any()) else None
        half = torch.clamp(width / 2, 0.0, 0.04).to(self.ctrl.dtype)
        self.ctrl[rows, 7] = half
        self.ctrl[rows, 8] = -half
        q_start = self.q_target[rows]
        n_slices = max(1, self.cfg.interp_chunks)
        per = self.cfg.substeps // n_slices
        for s in range(n_slices):
            alpha = (s + 1) / n_slices
            self.ctrl[rows, :7] = (q_start + alpha * (q_goal - q_start)).to(self.ctrl.dtype)
            nstep = per if s < n_slices - 1 else self.cfg.substeps - per * (n_slices - 1)
            self._substeps(nstep)
        if saved is not None:
            for f, value in saved.items():
                self._views[f][idle] = value
        overflow = self._overflow[rows] & self._overflow_mask
        if bool(overflow.any()):
            worlds = rows[overflow != 0].tolist()
            raise RuntimeError(
                f"mujoco-warp's contact/constraint buffers overflowed in worlds {worlds[:8]} (bitmask "
                f"{int(overflow.max())}: mjw.OverflowType); raise sim.warp.nconmax (now {self.cfg.warp.nconmax}) "
                f"and sim.warp.njmax (now {self.cfg.warp.njmax})")

    def _substeps(self, nstep: int) -> None:
        """`nstep` mujoco-warp steps of every world. On a CUDA device (`sim.warp.cuda_graphs`)
        they are captured once per nstep as a CUDA graph and replayed: one launch instead of
        hundreds of kernel launches per slice (the buffers are fixed, so new controls and states
        written into them are what a replay reads)."""
        if self._graphs is None:
            for _ in range(nstep):
                self._mjw.step(self.m, self.d)
            return
        graph = self._graphs.get(nstep)
        if graph is None:
            with self._wp.ScopedDevice(self.device), self._wp.ScopedCapture() as capture:
                for _ in range(nstep):
                    self._mjw.step(self.m, self.d)
            graph = self._graphs[nstep] = capture.graph
        self._wp.capture_launch(graph)

    def _refresh_poses(self, worlds) -> None:
        """Body and site poses from the current qpos for `worlds` only, as the CPU env's
        mj_forward after a thread switch: the kinematics pass runs over all worlds, so the
        others get their (one substep stale, as on the CPU) poses back."""
        import torch

        views = self._pose_views
        saved = [v.clone() for v in views]
        self._mjw.kinematics(self.m, self.d)
        if self.cameras is not None:
            self._mjw.camlight(self.m, self.d)
        keep = torch.ones(self.num_envs, dtype=torch.bool, device=self.torch_device)
        keep[worlds] = False
        for v, old in zip(views, saved):
            v[keep] = old[keep]

    def _diverged(self, rows):
        """NaN/Inf state or a velocity no real motion reaches (the CPU env's checks; mujoco-warp
        has no instability warnings to read)."""
        import torch

        qpos, qvel = self.qpos[rows], self.qvel[rows]
        finite = torch.isfinite(qpos).all(-1) & torch.isfinite(qvel).all(-1)
        too_fast = torch.nan_to_num(qvel.abs(), nan=0.0).amax(-1) > self.cfg.max_joint_velocity
        return ~finite | too_fast

    # --- observations and task maths ------------------------------------------------------------
    def _observe(self, rows) -> dict[str, Any]:
        import torch

        base = self.base.to(torch.float32)
        ee_p = self.site_xpos[rows, self.ee_site]
        ee_r = self.site_xmat[rows, self.ee_site]
        q = self.qpos[rows]
        width = q[:, self.finger_qadr[0]] - q[:, self.finger_qadr[1]]
        parts = [ee_p - base, ee_r[:, :2, :].reshape(-1, 6), width[:, None]]
        if self.cfg.include_joints:
            parts.append(q[:, self.arm_qadr])
        obs = {"state": torch.cat(parts, dim=-1).to(torch.float32)}
        if self.cfg.include_parts:
            out = []
            for b in (self.top_id, self.leg_id):
                out += [self.xpos[rows, b] - base, self.xmat[rows, b][:, :2, :].reshape(-1, 6)]
            obs["parts"] = torch.cat(out, dim=-1).to(torch.float32)
        if self.cameras is not None:
            obs.update(self._render(rows))
        return obs

    def _render(self, rows) -> dict[str, Any]:
        """Camera images of worlds `rows` from the current poses (the tracer draws every world)."""
        t0 = time.perf_counter()
        images = self.cameras.render(self.m, self.d)
        out = {RGB_PREFIX + cam: img[rows] for cam, img in images.items()}
        self.timings["render"] += time.perf_counter() - t0
        return out

    def _task(self, rows, ik_err):
        """Success, part loss, reward and infos of the stepped worlds (float64, as the CPU env)."""
        import torch

        f64 = torch.float64
        tp, tr = self.xpos[rows, self.top_id].to(f64), self.xmat[rows, self.top_id].to(f64)
        lp, lr = self.xpos[rows, self.leg_id].to(f64), self.xmat[rows, self.leg_id].to(f64)
        hole = self.thread.engaged_hole[rows]
        engaged = hole >= 0
        success = engaged & T.is_success(tp, tr, lp, lr, self.cfg.success)
        table = torch.as_tensor(G.TABLE_POS, dtype=f64, device=self.torch_device)
        half = torch.as_tensor(G.TABLE_HALF, dtype=f64, device=self.torch_device)
        lost = torch.zeros_like(success)
        for p in (tp, lp):
            lost |= (p[:, 2] < G.TABLE_Z - 0.05) | ((p[:, :2] - table[:2]).abs() > half[:2] + 0.05).any(-1)
        slide = self.thread.slide(self.qpos, rows)
        if self.cfg.reward == "sparse":
            rew = success.to(f64)
        elif self.cfg.reward == "dense":
            ee = self.site_xpos[rows, self.ee_site].to(f64)
            s = torch.where(engaged, slide, torch.full_like(slide, G.THREAD_TRAVEL))
            rew = T.dense_reward(tp, tr, lp, lr, ee, engaged, s, success)
        else:
            raise ValueError(f"reward must be 'sparse' or 'dense', got '{self.cfg.reward}'")
        now = T.milestones(tp, lp, lr, engaged, success)
        for j, name in enumerate(T.MILESTONES):
            self.reached[rows, j] |= now[name]
        info = {f"milestones/{name}": self.reached[rows, j] for j, name in enumerate(T.MILESTONES)}
        info.update(success=success, engaged=engaged, thread_depth=slide, steps=self.steps[rows],
                    start_state=self.start_state[rows], ik_error=ik_err, part_lost=lost)
        return success, lost, rew, info

    def _default_infos(self) -> dict[str, Any]:
        """(N,) info arrays with the CPU vector env's defaults for worlds that did not step."""
        import torch

        dev, n = self.torch_device, self.num_envs
        b = lambda: torch.zeros(n, dtype=torch.bool, device=dev)  # noqa: E731
        i = lambda v=0: torch.full((n,), v, dtype=torch.int64, device=dev)  # noqa: E731
        f = lambda v=0.0: torch.full((n,), v, dtype=torch.float64, device=dev)  # noqa: E731
        out = {"success": b(), "diverged": b(), "episode_return": f(), "episode_length": i(), "episode_seed": i(-1),
               "next_episode_seed": i(-1)}
        out.update({f"milestones/{m}": b() for m in T.MILESTONES})
        out.update(engaged=b(), thread_depth=f(float("nan")), steps=i(), start_state=i(), ik_error=f(float("nan")),
                   part_lost=b())
        return out

    # --- VectorEnv -----------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None,
              seeds: Sequence[int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        import torch

        self._check_open()
        if seeds is not None:
            if len(seeds) != self.num_envs:
                raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
            per_env = [int(s) for s in seeds]
        else:
            per_env = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
        infos = self._reset_worlds(list(range(self.num_envs)), per_env)
        self.history.reset(self.latest)
        self.final_history.reset(self.latest)
        self._needs_reset = False
        dev = self.torch_device
        out = self._default_infos()
        for k, v in out.items():
            if k.startswith("milestones/"):
                v[:] = torch.as_tensor([inf["milestones"][k.split("/", 1)[1]] for inf in infos], device=dev)
            elif k in infos[0] and not isinstance(infos[0][k], dict):
                v[:] = torch.as_tensor([inf[k] for inf in infos], device=dev).to(v.dtype)
        out["next_episode_seed"] = self.seeds.clone()
        out["episode_seed"] = self.seeds.clone()
        return {k: v.clone() for k, v in self.history.buffers.items()}, out

    def step(self, actions, active=None, reset_seeds=None) -> ChunkStep:
        import torch

        self._check_open()
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        dev, n = self.torch_device, self.num_envs
        chunk = torch.as_tensor(np.asarray(actions, dtype=np.float32) if not torch.is_tensor(actions) else actions,
                                dtype=torch.float32, device=dev)
        act_dim = int(np.prod(self.single_action_space.shape))
        if chunk.shape == (n, act_dim):
            chunk = chunk[:, None]
        if chunk.dim() != 3 or chunk.shape[0] != n or chunk.shape[2] != act_dim or chunk.shape[1] < 1:
            raise ValueError(f"actions must have shape ({n}, {act_dim}) or ({n}, Ta, {act_dim}), got {tuple(chunk.shape)}")
        active = torch.ones(n, dtype=torch.bool, device=dev) if active is None else \
            torch.as_tensor(np.asarray(active) if not torch.is_tensor(active) else active, device=dev).bool().reshape(-1)
        reset_seeds = torch.full((n,), -1, dtype=torch.int64, device=dev) if reset_seeds is None else \
            torch.as_tensor(np.asarray(reset_seeds) if not torch.is_tensor(reset_seeds) else reset_seeds,
                            device=dev).long().reshape(-1)
        if active.shape != (n,) or reset_seeds.shape != (n,):
            raise ValueError(f"active and reset_seeds need shape ({n},)")
        try:
            reward, terminated, truncated, infos = execute_chunk(self, self.history, self.final_history, chunk,
                                                                 active, reset_seeds)
        except Exception:
            self._needs_reset = True
            raise
        for k, v in self._default_infos().items():  # a chunk no world stepped
            infos.setdefault(k, v)
        idle = infos["executed"] == 0
        infos["episode_seed"][idle] = self.seeds[idle]
        infos["next_episode_seed"][idle] = self.seeds[idle]
        return package_tensor_chunk(self.history, self.final_history, reward, terminated, truncated, infos)

    def call(self, name: str, *args: Any, **kwargs: Any) -> list[Any]:
        """The CPU vector env's per-env calls that make sense here: the shared model's schema and
        camera info, `get_sim_state` (one snapshot per world) and `timings`."""
        self._check_open()
        if name == "get_sim_state":
            return [self.get_sim_state(i) for i in range(self.num_envs)]
        if name == "timings":
            return [dict(self.timings)] * self.num_envs
        if name in ("obs_schema", "action_schema", "model", "camera_info", "cfg"):
            attr = getattr(self.host, name)
            value = attr(*args, **kwargs) if callable(attr) else attr
            return [value] * self.num_envs
        raise NotImplementedError(f"call('{name}') is not available on sim.backend=mujoco_warp (per-env "
                                  "wrappers such as video recording run on the CPU backend)")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("OneLegWarpVectorEnv is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self.host.close()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OneLegWarpVectorEnv(num_envs={self.num_envs}, device={self.device!r})"
