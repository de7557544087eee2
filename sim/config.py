"""Environment configuration shared by every backend (filled from Hydra's `env`/`sim`/`task`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from sim.control.ik import IKConfig
from sim.tasks.one_leg.task import SuccessConfig
from sim.tasks.one_leg.thread import ThreadConfig


@dataclass
class RenderConfig:
    cameras: tuple[str, ...] = ("front", "wrist")
    image_hw: tuple[int, int] = (96, 96)
    low_poly: bool = True  # decimated part meshes, robot drawn with its collision meshes
    top_visual_faces: int = 1500
    leg_visual_faces: int = 800
    calibration: str | None = None  # a data.calibration file: cameras placed (and fovy set) as the cell's


@dataclass
class VisualRandomization:
    lighting: bool = False
    colors: bool = False
    camera_jitter_pos: float = 0.0  # m, uniform +- on the front camera position
    camera_jitter_deg: float = 0.0  # deg, random rotation of the front camera


@dataclass
class PhysicsRandomization:
    """Per-episode physics and interface randomisation for transfer (all off by default). Drawn
    from the episode's generator after the reset and visual draws, so a seed fixes them too."""

    part_mass_scale: float = 0.0  # +- fraction on the tabletop's and leg's mass and inertia
    part_friction_scale: float = 0.0  # +- fraction on the parts' sliding friction
    reset_push_force: float = 0.0  # N: a random push on each part while the reset settles (the fork's 0.2)
    reset_push_torque: float = 0.0  # N m (the fork's 0.007)
    top_push_scale: float = 25.0  # the tabletop's push multiplier (the fork's one_leg: 25, the leg's 1)
    action_noise_pos: float = 0.0  # m: Gaussian noise on each executed action's position target
    action_noise_rot_deg: float = 0.0  # deg: Gaussian rotation-vector noise on its orientation target
    obs_latency_steps: int = 0  # observations arrive this many control steps late
    # the part poses of the `parts` observation as a tag-based estimator would report them (issue 16):
    parts_noise_pos: float = 0.0  # m: Gaussian noise on each part position, per step
    parts_noise_rot_deg: float = 0.0  # deg: Gaussian rotation-vector noise on each part orientation
    parts_latency_steps: int = 0  # part poses this many control steps late (on top of obs_latency_steps)

    def __post_init__(self) -> None:
        if min(self.part_mass_scale, self.part_friction_scale, self.reset_push_force, self.reset_push_torque,
               self.action_noise_pos, self.action_noise_rot_deg, self.obs_latency_steps, self.parts_noise_pos,
               self.parts_noise_rot_deg, self.parts_latency_steps) < 0:
            raise ValueError("physics_randomization values must be >= 0")
        if max(self.part_mass_scale, self.part_friction_scale) >= 1:
            raise ValueError("part_mass_scale and part_friction_scale must be < 1 (a fraction of the nominal)")

    @property
    def per_step_settings(self) -> list[str]:
        """The settings in use that act on each step's actions and observations (not on the model)."""
        names = ("action_noise_pos", "action_noise_rot_deg", "obs_latency_steps", "parts_noise_pos",
                 "parts_noise_rot_deg", "parts_latency_steps")
        return [n for n in names if getattr(self, n) > 0]

    @property
    def model_fields(self) -> tuple[str, ...]:
        """The model fields it changes per episode (a batched backend keeps them per world)."""
        return (("body_mass", "body_inertia") if self.part_mass_scale > 0 else ()) + \
            (("geom_friction",) if self.part_friction_scale > 0 else ())


@dataclass
class WarpConfig:
    """sim.backend=mujoco_warp only: where the worlds live and how big their buffers are."""

    device: str = "auto"  # "auto" (first CUDA device, else cpu) | "cuda:0" | "cpu"
    nconmax: int = 64  # contacts allocated per world (one_leg uses ~10-20)
    njmax: int = 256  # constraint rows per world (one_leg uses ~60-120)
    cuda_graphs: bool = True  # on CUDA, capture the substep loop once and replay it (no effect on CPU)


@dataclass
class IsaacGymConfig:
    """sim.backend=isaacgym only (furniture-bench's FurnitureRLSimEnv; sim/backends/isaacgym_one_leg.py)."""

    close_below: float = 0.0325  # m: an action's finger-gap target under this closes the gripper (half its 65 mm)
    compute_device_id: int = 0
    graphics_device_id: int = 0
    headless: bool = True


@dataclass
class EnvConfig:
    task: str = "one_leg"
    obs_mode: str = "state"  # "state" | "pixel" (pixel adds rgb/<camera>)
    randomness: str = "low"
    max_episode_steps: int = 700
    control_hz: float = 10.0
    timestep: float = 0.005
    interp_chunks: int = 4  # joint targets are interpolated over this many slices of a control step
    reward: str = "sparse"  # "sparse" | "dense"
    terminate_on_success: bool = True
    include_joints: bool = False
    include_parts: bool = True
    max_pos_step: float = 0.10  # m, EE target clipped to this distance from the current EE
    workspace_low: tuple[float, float, float] = (0.3, -0.55, -0.02)  # robot base frame
    workspace_high: tuple[float, float, float] = (0.8, 0.55, 0.4)
    gripper_max_width: float = 0.08
    max_joint_velocity: float = 1000.0  # rad/s or m/s on any dof: beyond it the simulation has blown up
    # (the thread follower turns 668 rad per m of travel, so a fast legitimate screw reaches ~100)
    start_states: str | None = None  # .npz of recorded sim states (sim.start_states) episodes may start from
    start_state_prob: float = 1.0  # probability an episode starts from one of them instead of the standard reset
    start_state_max_steps: int | None = None  # time limit of episodes from a start state (None: max_episode_steps)
    render: RenderConfig = field(default_factory=RenderConfig)
    visual_randomization: VisualRandomization = field(default_factory=VisualRandomization)
    physics_randomization: PhysicsRandomization = field(default_factory=PhysicsRandomization)
    ik: IKConfig = field(default_factory=IKConfig)
    thread: ThreadConfig = field(default_factory=ThreadConfig)
    success: SuccessConfig = field(default_factory=SuccessConfig)
    warp: WarpConfig = field(default_factory=WarpConfig)
    isaacgym: IsaacGymConfig = field(default_factory=IsaacGymConfig)

    @property
    def substeps(self) -> int:
        n = round(1.0 / (self.control_hz * self.timestep))
        if abs(n * self.timestep * self.control_hz - 1.0) > 1e-6:
            raise ValueError(f"timestep {self.timestep} does not divide the control period 1/{self.control_hz}")
        return n


def from_mapping(cls, data: Mapping[str, Any] | None):
    """Build a (nested) dataclass from a plain mapping or OmegaConf container, rejecting unknown
    keys (typos) with their dotted path: the project's one typed-config loader,
    `data.typed_config.from_mapping`."""
    from data.typed_config import from_mapping as typed_from_mapping

    return typed_from_mapping(cls, data)
