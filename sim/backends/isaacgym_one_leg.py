"""one_leg on IsaacGym: an adapter over furniture-bench's `FurnitureRLSimEnv` (the DPPO code's env).

The paper fine-tuned in the furniture-bench fork the DPPO code installs
(github.com/ankile/furniture-bench, `furniture_bench/envs/furniture_rl_sim_env.py`; IsaacGym
Preview 4, Python 3.8). This backend drives that environment through our `VectorEnv` protocol,
with our observation and action schema, so a checkpoint trained here runs there and back.

What the adapter has to translate (read from that fork's source at 52e7c686, 2024-10-31; the
DPPO code at 7b10df69 builds the env with `act_rot_repr="rot_6d", action_type="pos",
ctrl_mode="diffik"`, which this adapter uses too):

* **Frames.** Both measure positions from the Franka base, axes of the world (Z up, the base is
  not rotated). Their base stands on the table surface (z 0.415, `ROBOT_HEIGHT = 0`); ours 15 mm
  higher (0.43, furniture-bench's original bench clamp): the same physical point is 15 mm lower
  in our base frame (`FrameMap.base_offset`).
* **The end effector.** Theirs is `k_ee_link`: panda_link7, turned -45 deg about z (the hand
  joint) and 0.1034 m along it, 0.2104 m from link 7 in all. Ours is robosuite's grip site:
  -135 deg and 0.2035 m (tests/test_isaacgym_adapter.py derives both from the models). So
  R_ours = R_theirs @ Rz(-90 deg) and our point is 6.9 mm short of theirs along the approach axis.
* **Rotations.** Their quaternions are xyzw (real last); their 6D rotation is the first two rows
  of the matrix, as ours (`rotation_6d_to_matrix` / `matrix_to_rotation_6d`).
* **Parts.** `parts_poses` is 7 numbers (position, xyzw quaternion) per part, the furniture's
  parts then the obstacle; one_leg is square_table's parts: index 0 the tabletop, 4 the leg it
  assembles (`pairs_to_assemble = [(0, 4)]`). Our part frames are the same furniture-bench mesh
  frames. The adapter builds the env with `parts_poses_in_robot_frame=True` (the default is the
  AprilTag base-tag frame).
* **Gripper.** Ours is an absolute finger-gap target in metres; theirs a sign (negative open,
  positive close; it switches only on a sign change with |g| > 0.019): a target below
  `close_below` (half their 65 mm maximum by default) closes.
* **Images.** `color_image1` is the wrist camera, `color_image2` the front one, (N, H, W, 3) at
  224x224 by default: resized to our `image_hw` by area averaging. Their front camera does not
  stand where ours does: pixel policies see a different view there.
* **Episodes.** `step` returns a (N, 1) reward that is 1 at the step the pair becomes assembled
  and `done` once it is; there is no auto-reset and no time limit (the DPPO wrapper counts
  steps). The adapter counts steps, ends an episode at success (`terminated`) or at
  `max_episode_steps` (`truncated`), and resets those envs with `reset(env_idxs)`.

IsaacGym cannot run on this project's Python (3.11) nor without an NVIDIA GPU, so only the pure
mapping functions below are tested here (against our own models and rotation code); the
environment class is written against the fork's documented interface and is untested.
docs/isaacgym.md has the install route.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from data.schema import RGB_PREFIX

# furniture-bench's camera names, by our camera names
ISAAC_IMAGE_KEYS = {"wrist": "color_image1", "front": "color_image2"}
ISAAC_TOP_INDEX, ISAAC_LEG_INDEX = 0, 4  # square_table_top, square_table_leg4
ISAAC_BASE_POS = (-0.3, 0.0, 0.415)  # 0.5 * -table_pos.x + 0.1, 0, table surface + ROBOT_HEIGHT (0)
ISAAC_EE_FROM_LINK7 = (-45.0, 0.107 + 0.103399)  # panda_hand_joint yaw (deg), link7 -> k_ee_link (m)
ISAAC_MAX_GRIPPER_WIDTH = 0.065  # config["robot"]["max_gripper_width"]["one_leg"]
ISAAC_GRASP_MARGIN = 0.019  # |g| a gripper command must exceed to switch


def rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class FrameMap:
    """How a pose in furniture-bench's robot frame becomes one in ours.

    base_offset: added to their base-frame positions (their base minus ours, same table).
    ee_rot: R_ours = R_theirs @ ee_rot for the end effector.
    ee_shift: our EE point = theirs - ee_shift * (the approach axis, z of either EE frame).
    """

    base_offset: tuple[float, float, float] = (0.0, 0.0, -0.015)
    ee_rot: tuple[tuple[float, ...], ...] = tuple(map(tuple, rot_z(-90.0)))
    ee_shift: float = 0.0069

    @classmethod
    def from_models(cls, our_base: Sequence[float], our_ee_from_link7: tuple[float, float],
                    their_base: Sequence[float] = ISAAC_BASE_POS,
                    their_ee_from_link7: tuple[float, float] = ISAAC_EE_FROM_LINK7) -> "FrameMap":
        """From each side's base position and EE frame on link 7 (yaw about link 7's z in degrees,
        distance along it in metres)."""
        off = tuple(float(t - o) for t, o in zip(their_base, our_base))
        rot = rot_z(our_ee_from_link7[0] - their_ee_from_link7[0])
        return cls(off, tuple(map(tuple, rot)), float(their_ee_from_link7[1] - our_ee_from_link7[1]))


# --- pure mappings (torch, batched; tested in tests/test_isaacgym_adapter.py) ---------------------
def _t(x, like):
    import torch

    return torch.as_tensor(np.asarray(x), dtype=like.dtype, device=like.device)


def quat_xyzw_to_matrix(q):
    from sim.control.batched_ik import quat_to_matrix

    return quat_to_matrix(q[..., [3, 0, 1, 2]])


def matrix_to_rot6d(r):
    """(..., 3, 3) -> (..., 6): the first two rows (ours and theirs)."""
    return r[..., :2, :].reshape(*r.shape[:-2], 6)


def ee_from_isaac(ee_pos, ee_quat_xyzw, fm: FrameMap):
    """Their EE position (base frame) and xyzw quaternion -> our EE position and rotation matrix."""
    r_theirs = quat_xyzw_to_matrix(ee_quat_xyzw)
    r_ours = r_theirs @ _t(fm.ee_rot, r_theirs)
    pos = ee_pos + _t(fm.base_offset, ee_pos) - fm.ee_shift * r_theirs[..., :, 2]
    return pos, r_ours


def state_from_isaac(robot_state: Mapping[str, Any], fm: FrameMap, include_joints: bool = False):
    """Their robot_state dict (ee_pos, ee_quat, gripper_width[, joint_positions]) -> our (N, 10|17)
    state: EE position in the base frame, 6D rotation, finger gap[, arm joints]."""
    import torch

    pos, rot = ee_from_isaac(robot_state["ee_pos"], robot_state["ee_quat"], fm)
    width = robot_state["gripper_width"].reshape(pos.shape[0], 1)
    parts = [pos, matrix_to_rot6d(rot), width.to(pos.dtype)]
    if include_joints:
        parts.append(robot_state["joint_positions"][:, :7].to(pos.dtype))
    return torch.cat(parts, dim=-1).to(torch.float32)


def parts_from_isaac(parts_poses, fm: FrameMap, top: int = ISAAC_TOP_INDEX, leg: int = ISAAC_LEG_INDEX):
    """Their (N, 7 * (parts + 1)) robot-frame part poses -> our (N, 18) parts vector (tabletop and
    leg: base-frame position and 6D rotation each)."""
    import torch

    out = []
    for i in (top, leg):
        p = parts_poses[:, 7 * i:7 * i + 7]
        out += [p[:, :3] + _t(fm.base_offset, p), matrix_to_rot6d(quat_xyzw_to_matrix(p[:, 3:7]))]
    return torch.cat(out, dim=-1).to(torch.float32)


def images_from_isaac(obs: Mapping[str, Any], cameras: Sequence[str], image_hw: tuple[int, int]) -> dict[str, Any]:
    """Their color_image1/2 (N, H, W, 3|4) -> our rgb/<camera> (N, h, w, 3) uint8, area-resized."""
    import torch
    import torch.nn.functional as F

    out = {}
    for cam in cameras:
        if cam not in ISAAC_IMAGE_KEYS:
            raise ValueError(f"furniture-bench has no '{cam}' camera; it has {sorted(ISAAC_IMAGE_KEYS)}")
        img = obs[ISAAC_IMAGE_KEYS[cam]][..., :3]
        x = img.permute(0, 3, 1, 2).to(torch.float32)
        if tuple(x.shape[-2:]) != tuple(image_hw):
            x = F.interpolate(x, size=tuple(image_hw), mode="area")
        out[RGB_PREFIX + cam] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return out


def action_to_isaac(actions, fm: FrameMap, close_below: float):
    """Our (N, 10) absolute actions (base-frame EE position, 6D rotation, finger-gap target) ->
    theirs for act_rot_repr='rot_6d', action_type='pos': their EE position and 6D rotation, and
    a gripper sign (+1 close, -1 open) well past their switching margin."""
    import torch

    from sim.control.batched_ik import rot6d_to_matrix

    r_ours = rot6d_to_matrix(actions[:, 3:9].to(torch.float64))
    r_theirs = r_ours @ _t(fm.ee_rot, r_ours).transpose(-1, -2)
    pos = actions[:, :3].to(torch.float64) - _t(fm.base_offset, r_ours) + fm.ee_shift * r_theirs[..., :, 2]
    grip = torch.where(actions[:, 9] < close_below, 1.0, -1.0).to(torch.float64)[:, None]
    return torch.cat([pos, matrix_to_rot6d(r_theirs), grip], dim=-1).to(actions.dtype)


# --- the environment (needs IsaacGym and the fork: untested here) --------------------------------
class IsaacGymOneLegVectorEnv:
    """`VectorEnv` over one `FurnitureRLSimEnv` of N envs (sim.api), our schema in and out.

    Chunks run through `sim.chunk.execute_chunk` as on the other backends. IsaacGym steps every
    env; an env outside `active` is sent a hold action (its observed EE pose and finger gap),
    since the fork offers no per-env pause, and keeps its last observation until it is stepped
    again. Observations are torch tensors on IsaacGym's device. The fork reports success only:
    the other milestones read False. Its resets draw from the global torch/numpy generators (the
    run's seed); per-episode seeds are not supported (`episode_seed` is -1).
    """

    metadata = {"render_modes": [], "render_fps": 10, "autoreset_mode": "same_step"}

    def __init__(self, cfg, n_envs: int, obs_history: int = 1, frames: FrameMap | None = None):
        # IsaacGym must be imported before torch: sim/finetune.py does it for sim=isaacgym
        import furniture_bench  # noqa: F401
        import torch
        from furniture_bench.envs.furniture_rl_sim_env import FurnitureRLSimEnv

        from data.history import ObsHistory
        from data.schema import ActionSchema, ObsSchema
        from sim.backends.mujoco_one_leg import action_space_for, observation_space_for

        unsupported = {"task.reward=dense": cfg.reward != "sparse", "task.start_states": cfg.start_states is not None,
                       "task.terminate_on_success=false": not cfg.terminate_on_success}
        if any(unsupported.values()):
            raise NotImplementedError(f"sim.backend=isaacgym does not support {[k for k, v in unsupported.items() if v]}"
                                      " (the fork's sparse reward and resets only)")
        self.cfg, self.icfg, self.frames = cfg, cfg.isaacgym, frames or FrameMap()
        self.num_envs, self.obs_history = int(n_envs), int(obs_history)
        cameras = tuple(cfg.render.cameras) if cfg.obs_mode == "pixel" else ()
        obs_keys = ["robot_state/ee_pos", "robot_state/ee_quat", "robot_state/gripper_width", "parts_poses"]
        if cfg.include_joints:
            obs_keys.append("robot_state/joint_positions")
        obs_keys += [ISAAC_IMAGE_KEYS[c] for c in cameras]
        self.env = FurnitureRLSimEnv(
            furniture="one_leg", num_envs=self.num_envs, obs_keys=obs_keys, concat_robot_state=False,
            act_rot_repr="rot_6d", action_type="pos", ctrl_mode="diffik", headless=self.icfg.headless,
            randomness=cfg.randomness, max_env_steps=10**9, resize_img=True, np_step_out=False,
            channel_first=False, parts_poses_in_robot_frame=True, compute_device_id=self.icfg.compute_device_id,
            graphics_device_id=self.icfg.graphics_device_id)
        self.device = str(self.env.device) if hasattr(self.env, "device") else f"cuda:{self.icfg.compute_device_id}"
        self.obs_schema = ObsSchema(cameras=cameras, image_hw=tuple(cfg.render.image_hw),
                                    include_joints=cfg.include_joints, include_parts=cfg.include_parts, n_parts=2)
        self.action_schema = ActionSchema(control_hz=cfg.control_hz)
        self.single_observation_space = observation_space_for(self.obs_schema)
        self.single_action_space = action_space_for(cfg)
        self.history = ObsHistory(self.obs_history, self._obs_keys())
        self.final_history = ObsHistory(self.obs_history, self._obs_keys())
        self.steps = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self.returns = torch.zeros(self.num_envs, dtype=torch.float64, device=self.device)
        self.latest: dict[str, Any] = {}
        self._raw: Mapping[str, Any] | None = None
        self._closed = False

    def _obs_keys(self) -> list[str]:
        keys = ["state"] + (["parts"] if self.cfg.include_parts else [])
        return keys + [RGB_PREFIX + c for c in self.obs_schema.cameras]

    def _convert(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        fm = self.frames
        obs = {"state": state_from_isaac(raw["robot_state"], fm, self.cfg.include_joints)}
        if self.cfg.include_parts:
            obs["parts"] = parts_from_isaac(raw["parts_poses"], fm)
        obs.update(images_from_isaac(raw, self.obs_schema.cameras, self.obs_schema.image_hw))
        return obs

    def reset(self, seed: int | None = None, options: dict | None = None, seeds=None):
        import torch

        self._raw = self.env.reset()
        self.latest = self._convert(self._raw)
        self.steps.zero_()
        self.returns.zero_()
        self.history.reset(self.latest)
        self.final_history.reset(self.latest)
        return {k: v.clone() for k, v in self.history.buffers.items()}, self._infos(torch.zeros_like(self.steps).bool())

    def step_masked(self, actions, active, reset_seeds):
        """One control step of every env (`sim.chunk.MaskedStepper`); idle envs hold."""
        import torch

        from sim.chunk import StepOut

        a = torch.as_tensor(actions, device=self.device, dtype=torch.float32)
        active = torch.as_tensor(active, device=self.device).bool()
        if not bool(torch.isfinite(a[active]).all()):
            raise ValueError("action contains NaN/Inf")
        a = torch.where(active[:, None], a, self.latest["state"][:, :10])  # idle: hold pose and gap
        self._raw, reward, done, _ = self.env.step(action_to_isaac(a, self.frames, self.icfg.close_below))
        obs = self._convert(self._raw)
        self.steps += active.long()
        success = done.reshape(-1).bool()
        term = success & active
        trunc = (self.steps >= self.cfg.max_episode_steps) & ~term & active
        reward = reward.reshape(-1).to(torch.float32) * active
        self.returns += reward
        infos = self._infos(success & active)
        final = {k: v.clone() for k, v in obs.items()}
        ended = torch.nonzero(term | trunc)[:, 0]
        if len(ended):
            self._raw = self.env.reset(env_idxs=ended)
            fresh = self._convert(self._raw)
            for k in obs:
                obs[k][ended] = fresh[k][ended]
            self.steps[ended] = 0
            self.returns[ended] = 0.0
        for k in obs:
            self.latest[k] = torch.where(active.reshape(-1, *([1] * (obs[k].dim() - 1))), obs[k], self.latest[k]) \
                if k in self.latest else obs[k]
        return StepOut(self.latest, reward, term, trunc, final, infos)

    def _infos(self, success):
        """The VectorEnv info keys (sim.api), (N,) tensors on the device."""
        import torch

        from sim.tasks.one_leg.task import MILESTONES

        none = torch.full_like(self.steps, -1)
        out = {"success": success, "diverged": torch.zeros_like(success), "episode_return": self.returns.clone(),
               "episode_length": self.steps.clone(), "episode_seed": none, "next_episode_seed": none.clone()}
        out.update({f"milestones/{m}": success.clone() if m == "success" else torch.zeros_like(success)
                    for m in MILESTONES})
        return out

    def step(self, actions, active=None, reset_seeds=None):
        import torch

        from sim.chunk import execute_chunk, package_tensor_chunk

        n = self.num_envs
        chunk = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        chunk = chunk[:, None] if chunk.dim() == 2 else chunk
        active = torch.ones(n, dtype=torch.bool, device=self.device) if active is None else \
            torch.as_tensor(active, device=self.device).bool()
        reset_seeds = torch.full((n,), -1, dtype=torch.int64, device=self.device) if reset_seeds is None else \
            torch.as_tensor(reset_seeds, device=self.device).long()
        reward, terminated, truncated, infos = execute_chunk(self, self.history, self.final_history, chunk, active,
                                                             reset_seeds)
        for k, v in self._infos(torch.zeros_like(active)).items():  # a chunk no env stepped
            infos.setdefault(k, v)
        return package_tensor_chunk(self.history, self.final_history, reward, terminated, truncated, infos)

    def call(self, name: str, *args, **kwargs):
        raise NotImplementedError(f"call('{name}') is not available on sim.backend=isaacgym")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self.env, "close", None)
            if close is not None:
                close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
