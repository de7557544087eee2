"""Build the one_leg MJCF: Panda (robosuite's model) + table + fixture + tabletop + leg.

Why primitives for collision: convex decomposition intrudes into the 0.3-0.9 mm
clearance of the holes and MuJoCo's mesh SDF is too coarse (see shared notes), so the
tabletop is a plate, a cross, edge strips and a ring of boxes around each hole, and the
leg is a box plus a peg cylinder plus a thin stop disc. Meshes are only drawn.

Why position servos: the arm's torque motors are replaced by joint position actuators
(with gravity compensation), so the physics substeps run entirely in C and Python only
solves IK once per 10 Hz control step.

Collision bits: 1 = static (table, fixture), 2 = parts, 4 = robot hand.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from data.rotation import matrix_to_quat
from sim import assets
from sim.assets import MissingDependencyError, cache_dir, visual_mesh
from sim.tasks.one_leg import geometry as G

log = logging.getLogger(__name__)

STATIC_BITS = dict(contype="1", conaffinity="6")
PART_BITS = dict(contype="2", conaffinity="7")
ROBOT_BITS = dict(contype="4", conaffinity="3")
NO_COLLISION = dict(contype="0", conaffinity="0")
# The thread's own contact layer: the follower-carried stops (bit 8) touch only the leg's stop
# plate, the follower-carried thread guides (bit 16) only the peg. Fixed at build time: a batched
# simulator shares contype/conaffinity across its worlds, so engaging the thread in one world
# must not need a collision change (see sim/tasks/one_leg/thread.py).
STOP_BITS = dict(contype="8", conaffinity="8")
GUIDE_BITS = dict(contype="16", conaffinity="16")
PEG_BITS = dict(contype="18", conaffinity="23")  # PART_BITS + the guide layer

# Geom groups: 0 static, 1 robot visual meshes, 2 part visuals, 3 part collision (hidden),
# 4 robot collision (drawn instead of group 1 in low-poly mode).
GROUP_ROBOT_VIS, GROUP_PART_VIS, GROUP_PART_COL, GROUP_ROBOT_COL = 1, 2, 3, 4

ARM_KP = (4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 2000.0, 2000.0)
ARM_KD = (450.0, 450.0, 350.0, 350.0, 200.0, 200.0, 200.0)
ARM_FORCE = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)

ARM_JOINTS = tuple(f"robot0_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("gripper0_finger_joint1", "gripper0_finger_joint2")
EE_SITE = "gripper0_grip_site"
CAMERAS = ("front", "wrist")


@dataclass(frozen=True)
class SceneOptions:
    timestep: float = 0.005
    image_hw: tuple[int, int] = (96, 96)
    top_visual_faces: int | None = 1500  # None: original meshes
    leg_visual_faces: int | None = 800
    front_camera_pos: tuple[float, float, float] = (0.72, -0.22, 0.74)
    front_camera_target: tuple[float, float, float] = (0.18, 0.02, 0.43)
    camera_fovy: float = 45.0


def _fmt(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in np.atleast_1d(v))


def lookat_xyaxes(pos: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """MuJoCo camera `xyaxes` looking from pos to target (camera looks along its -z)."""
    fwd = np.asarray(target, float) - np.asarray(pos, float)
    fwd /= np.linalg.norm(fwd)
    x = np.cross(fwd, up)
    x /= np.linalg.norm(x)
    y = np.cross(x, fwd)
    return np.concatenate([x, y])


def _sub(parent: ET.Element, tag: str, **attrs) -> ET.Element:
    return ET.SubElement(parent, tag, {k: (v if isinstance(v, str) else _fmt(v)) for k, v in attrs.items()})


@contextlib.contextmanager
def quiet_robosuite():
    """Silence robosuite's warnings below ERROR (import-time macro-file advice, controller notes).

    They are advice for robosuite's own users and would otherwise greet every run here.
    """
    logger = logging.getLogger("robosuite_logs")

    def at_least_error(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    logger.addFilter(at_least_error)
    try:
        yield
    finally:
        logger.removeFilter(at_least_error)


def quiet_robosuite_import() -> None:
    with quiet_robosuite():
        import robosuite  # noqa: F401


def _robot_model():
    try:
        quiet_robosuite_import()
        from robosuite.models.grippers import PandaGripper
        from robosuite.models.robots import Panda
    except ImportError as e:  # pragma: no cover - robosuite is a core dependency
        raise MissingDependencyError("package 'robosuite==1.5.2' is required for the Panda model") from e
    robot = Panda()
    robot.add_gripper(PandaGripper())
    return robot


def _convert_robot(robot_root: ET.Element) -> None:
    """Position servos + gravity compensation; only the hand and fingers collide."""
    worldbody = robot_root.find("worldbody")
    for body in worldbody.iter("body"):
        body.set("gravcomp", "1")
    for geom in worldbody.iter("geom"):
        name = geom.get("name") or ""
        is_visual = geom.get("group") == "1" or (geom.get("contype") == "0" and geom.get("conaffinity") == "0")
        if is_visual:
            geom.set("group", str(GROUP_ROBOT_VIS))
            continue
        geom.set("group", str(GROUP_ROBOT_COL))
        geom.set("rgba", "0.85 0.85 0.85 1" if "gripper" not in name else "0.35 0.35 0.38 1")
        if name.startswith("gripper0_"):
            geom.attrib.update(ROBOT_BITS)
        else:
            geom.attrib.update(NO_COLLISION)
    for cam in list(worldbody.iter("camera")):
        if cam.get("name") == "robot0_eye_in_hand":
            cam.set("name", "wrist")
    actuator = robot_root.find("actuator")
    for act in list(actuator):
        if act.tag == "motor":
            actuator.remove(act)
    # Arm servos first so ctrl[:7] are the arm, ctrl[7:9] the fingers.
    fingers = list(actuator)
    for act in fingers:
        actuator.remove(act)
    for i, joint in enumerate(ARM_JOINTS):
        kp, kd, f = ARM_KP[i], ARM_KD[i], ARM_FORCE[i]
        _sub(actuator, "general", name=f"servo_j{i + 1}", joint=joint, gaintype="fixed", biastype="affine",
             gainprm=_fmt([kp]), biasprm=_fmt([0, -kp, -kd]), ctrllimited="false",
             forcerange=_fmt([-f, f]), forcelimited="true")
    for act in fingers:
        actuator.append(act)
    sensor = robot_root.find("sensor")
    if sensor is not None:
        robot_root.remove(sensor)


def _add_top(worldbody: ET.Element, asset: ET.Element, opts: SceneOptions) -> None:
    verts, faces = visual_mesh("square_table/square_table_top", opts.top_visual_faces)
    _sub(asset, "mesh", name="top_vis", vertex=_fmt(verts.ravel()), face=" ".join(map(str, faces.ravel())))
    top = _sub(worldbody, "body", name="top", pos=G.TOP_REST_POS, quat=matrix_to_quat(G.TOP_REST_ROT))
    _sub(top, "freejoint", name="top_free")
    _sub(top, "inertial", pos="0 0 0", mass=G.TOP_MASS,
         diaginertia=_fmt(G.TOP_MASS / 12 * np.array([2 * 0.1625**2, 2 * 0.1625**2, 2 * 0.1625**2])))
    _sub(top, "geom", name="top_visual", type="mesh", mesh="top_vis", group=str(GROUP_PART_VIS),
         rgba="0.93 0.93 0.9 1", mass="0", **NO_COLLISION)
    col = dict(group=str(GROUP_PART_COL), friction=_fmt([G.PART_FRICTION, 0.005, 0.0001]), mass="0",
               rgba="0.2 0.6 0.2 0.5", **PART_BITS)
    a, ylo, yhi = G.TOP_HALF_XZ, G.TOP_Y_MIN, G.TOP_Y_MAX
    hb = G.HOLE_BOTTOM_Y
    inner = G.HOLE_XZ - G.BORE_RADIUS  # 0.04375: hole squares start here
    outer = G.HOLE_XZ + G.BORE_RADIUS  # 0.06875
    # bottom plate below the blind holes
    _sub(top, "geom", name="top_plate", type="box", size=[a, (hb - ylo) / 2, a], pos=[0, (hb + ylo) / 2, 0], **col)
    ymid, yh = (hb + yhi) / 2, (yhi - hb) / 2
    _sub(top, "geom", name="top_cross_x", type="box", size=[inner, yh, a], pos=[0, ymid, 0], **col)
    _sub(top, "geom", name="top_cross_z", type="box", size=[a, yh, inner], pos=[0, ymid, 0], **col)
    k = 0
    for sx in (-1, 1):
        for sz in (-1, 1):
            # edge strips outside each hole square
            _sub(top, "geom", name=f"top_strip{k}a", type="box", size=[(a - outer) / 2, yh, (a - inner) / 2],
                 pos=[sx * (a + outer) / 2, ymid, sz * (a + inner) / 2], **col)
            _sub(top, "geom", name=f"top_strip{k}b", type="box", size=[(outer - inner) / 2, yh, (a - outer) / 2],
                 pos=[sx * G.HOLE_XZ, ymid, sz * (a + outer) / 2], **col)
            # the hole's walls (plain bore, then threaded section) belong to its follower
            k += 1
    # Thread followers: carried by the top, slide + hinge along the hole axis. At rest (thread
    # not engaged) a lock holds each STOP_CLEARANCE above the engagement height, where its stop
    # carries the leg's stop plate at the engagement height and its guide and bore rings centre
    # the peg: the frame of follower h at slide s is the frame a leg screwed to depth s in hole h
    # has, and its geoms sit STOP_CLEARANCE lower than the leg's (engaging moves the follower to
    # the leg's depth, dropping them clear). Engaged, the leg is welded to the follower and both
    # descend along the helix together: nothing of the thread collides with anything that moves
    # relative to it, and the peg, which the welded thread holds centred, touches no wall (as
    # when the thread was a collision switch: a peg rubbing the bore while screwing is friction
    # the real thread lacks).
    # The stop's friction is the parts' (a default-friction stop resisted the policies' twisting
    # strokes six times harder than the tabletop the stop plate used to rest on).
    rest_y = G.SEATED_Y + G.LOCK_HEIGHT  # follower origin at rest, top frame
    for h, centre in enumerate(G.hole_centres_local()):
        fol = _sub(top, "body", name=f"follower{h}", pos=centre)
        _sub(fol, "inertial", pos="0 0 0", mass="0.01", diaginertia="1e-6 1e-6 1e-6")
        _sub(fol, "joint", name=f"thread_slide{h}", type="slide", axis="0 1 0",
             range=_fmt([0.0, G.THREAD_TRAVEL]), limited="true", damping="0.5")
        _sub(fol, "joint", name=f"thread_hinge{h}", type="hinge", axis="0 1 0", frictionloss="0.01", damping="0.001")
        # the stop plate's underside at rest, in the follower's frame (STOP_CLEARANCE above the leg's)
        stop_top = G.STOP_DISC_Y - G.STOP_DISC_HALF_THICK - G.STOP_CLEARANCE
        _sub(fol, "geom", name=f"follower{h}_stop", type="box",
             size=[G.STOP_HALF_XZ, G.STOP_HALF_THICK, G.STOP_HALF_XZ],
             pos=[0, stop_top - G.STOP_HALF_THICK, 0], group=str(GROUP_PART_COL), mass="0",
             friction=_fmt([G.PART_FRICTION, 0.005, 0.0001]), rgba="0.8 0.4 0.1 0.5", **STOP_BITS)
        guide = dict(col, **GUIDE_BITS)
        _add_ring(fol, f"follower{h}_guide", G.THREAD_RADIUS, hb - rest_y, yhi - G.BORE_DEPTH - rest_y,
                  (0.0, 0.0), guide)
        _add_ring(fol, f"follower{h}_bore", G.BORE_RADIUS, yhi - G.BORE_DEPTH - rest_y, yhi - rest_y,
                  (0.0, 0.0), guide)


def _add_ring(body: ET.Element, name: str, radius: float, y0: float, y1: float, centre_xz: tuple[float, float],
              attrs: dict) -> None:
    """Eight boxes around the y axis through `centre_xz` (body frame), inner faces `radius` from
    it, spanning y0..y1: a polygonal hole wall that primitive colliders handle robustly."""
    n, t = 8, 0.0075
    half_len = (radius + t) * np.tan(np.pi / n)
    for j in range(n):
        ang = 2 * np.pi * j / n
        c, s = np.cos(ang), np.sin(ang)
        pos = [centre_xz[0] + (radius + t / 2) * c, (y0 + y1) / 2, centre_xz[1] + (radius + t / 2) * s]
        quat = [np.cos(-ang / 2), 0, np.sin(-ang / 2), 0]  # box local x = radial direction, about +y
        _sub(body, "geom", name=f"{name}_{j}", type="box", size=[t / 2, (y1 - y0) / 2, half_len], pos=pos,
             quat=quat, **attrs)


def _add_leg(worldbody: ET.Element, asset: ET.Element, opts: SceneOptions) -> None:
    verts, faces = visual_mesh("square_table/square_table_leg4", opts.leg_visual_faces)
    _sub(asset, "mesh", name="leg_vis", vertex=_fmt(verts.ravel()), face=" ".join(map(str, faces.ravel())))
    leg = _sub(worldbody, "body", name="leg", pos=G.LEG_REST_POS, quat=matrix_to_quat(G.LEG_REST_ROT))
    _sub(leg, "freejoint", name="leg_free")
    length = G.LEG_BODY_Y[1] - G.PEG_Y[0]
    _sub(leg, "inertial", pos=[0, (G.LEG_BODY_Y[1] + G.PEG_Y[0]) / 2 + 0.008, 0], mass=G.LEG_MASS,
         diaginertia=_fmt(G.LEG_MASS / 12 * np.array([length**2 + 0.03**2, 2 * 0.03**2, length**2 + 0.03**2])))
    _sub(leg, "geom", name="leg_visual", type="mesh", mesh="leg_vis", group=str(GROUP_PART_VIS),
         rgba="0.93 0.93 0.9 1", mass="0", **NO_COLLISION)
    col = dict(group=str(GROUP_PART_COL), friction=_fmt([G.PART_FRICTION, 0.005, 0.0001]), mass="0",
               rgba="0.2 0.2 0.8 0.5", **PART_BITS)
    y0, y1 = G.LEG_BODY_Y
    _sub(leg, "geom", name="leg_body", type="box", size=[G.LEG_HALF_XZ, (y1 - y0) / 2, G.LEG_HALF_XZ],
         pos=[0, (y0 + y1) / 2, 0], **col)
    p0, p1 = G.PEG_Y
    peg = dict(col, **PEG_BITS)
    _sub(leg, "geom", name="leg_peg", type="cylinder", size=[G.PEG_RADIUS, (p1 - p0) / 2], pos=[0, (p0 + p1) / 2, 0],
         zaxis="0 1 0", **peg)
    # the thread-stop plate: rests on the hole's follower stop until the thread engages; a box
    # so that box-box contact gives it a stable multi-point support (it touches nothing else)
    stop = dict(col, **STOP_BITS)
    _sub(leg, "geom", name="leg_stop_disc", type="box",
         size=[G.STOP_DISC_RADIUS, G.STOP_DISC_HALF_THICK, G.STOP_DISC_RADIUS], pos=[0, G.STOP_DISC_Y, 0], **stop)


def _add_static(worldbody: ET.Element) -> None:
    common = dict(friction=_fmt([G.PART_FRICTION, 0.005, 0.0001]), group="0", **STATIC_BITS)
    _sub(worldbody, "geom", name="floor", type="plane", size="3 3 0.1", rgba="0.35 0.33 0.3 1", material="floor_mat",
         **NO_COLLISION)
    _sub(worldbody, "geom", name="table", type="box", size=G.TABLE_HALF, pos=G.TABLE_POS, rgba="0.62 0.5 0.38 1",
         **common)
    _sub(worldbody, "geom", name="obstacle_front", type="box", size=G.OBSTACLE_FRONT_HALF, pos=G.OBSTACLE_FRONT_POS,
         rgba="0.15 0.15 0.17 1", **common)
    for i, pos in enumerate(G.OBSTACLE_SIDE_POS):
        _sub(worldbody, "geom", name=f"obstacle_side{i}", type="box", size=G.OBSTACLE_SIDE_HALF, pos=pos,
             rgba="0.15 0.15 0.17 1", **common)


def build_xml(opts: SceneOptions = SceneOptions()) -> str:
    robot = _robot_model()
    robot_root = robot.root
    _convert_robot(robot_root)

    root = ET.Element("mujoco", model="one_leg")
    _sub(root, "compiler", angle="radian", autolimits="true")
    _sub(root, "option", timestep=_fmt(opts.timestep), integrator="implicitfast", cone="pyramidal",
         impratio="10")  # high impratio: grasped parts do not creep out of the fingers
    h, w = opts.image_hw
    visual = _sub(root, "visual")
    _sub(visual, "global", offwidth=str(max(w, 640)), offheight=str(max(h, 480)))
    _sub(visual, "quality", shadowsize="0", offsamples="0")
    _sub(visual, "map", znear="0.01")
    _sub(visual, "headlight", ambient="0.35 0.35 0.35", diffuse="0.35 0.35 0.35", specular="0 0 0")
    asset = _sub(root, "asset")
    _sub(asset, "texture", name="floor_tex", type="2d", builtin="checker", rgb1="0.32 0.3 0.28",
         rgb2="0.38 0.36 0.33", width="64", height="64")
    _sub(asset, "material", name="floor_mat", texture="floor_tex", texrepeat="6 6")
    for child in robot_root.find("asset"):
        asset.append(child)
    worldbody = _sub(root, "worldbody")
    _sub(worldbody, "light", name="key_light", pos="0.3 -0.5 1.6", dir="-0.2 0.35 -1", directional="true",
         diffuse="0.55 0.55 0.55", specular="0.1 0.1 0.1", castshadow="false")
    cam_pos = np.array(opts.front_camera_pos)
    _sub(worldbody, "camera", name="front", pos=cam_pos,
         xyaxes=lookat_xyaxes(cam_pos, np.array(opts.front_camera_target)), fovy=_fmt(opts.camera_fovy))
    _add_static(worldbody)
    # robot: robosuite's body tree, placed at the furniture-bench base pose
    for body in robot_root.find("worldbody"):
        if body.tag == "body":
            body.set("pos", _fmt(G.ROBOT_BASE_POS))
        worldbody.append(body)
    for cam in worldbody.iter("camera"):
        if cam.get("name") == "wrist":
            cam.set("fovy", _fmt(75.0))
    _add_top(worldbody, asset, opts)
    _add_leg(worldbody, asset, opts)
    actuator = _sub(root, "actuator")
    for act in robot_root.find("actuator"):
        actuator.append(act)
    contact = _sub(root, "contact")
    for c in robot_root.find("contact") if robot_root.find("contact") is not None else []:
        contact.append(c)
    equality = _sub(root, "equality")
    c1 = 2 * np.pi / G.THREAD_PITCH
    for h in range(4):
        # hinge = c0 + c1 * slide, always active; at rest c0 puts the hinge at 0 at the lock height
        _sub(equality, "joint", name=f"thread_coupling{h}", joint1=f"thread_hinge{h}", joint2=f"thread_slide{h}",
             polycoef=_fmt([-c1 * G.LOCK_HEIGHT, c1, 0, 0, 0]), active="true", solimp="0.99 0.9999 0.001")
        _sub(equality, "weld", name=f"thread_weld{h}", body1=f"follower{h}", body2="leg", active="false",
             solimp="0.99 0.9999 0.001")
    for h in range(4):  # after the thread's pairs, so their ids stay 2h, 2h + 1
        # Near-hard and fast: a soft constraint's give under a load scales with 1 / the mass it
        # holds, and the follower weighs 10 g, so the default-soft lock let a leg pressed with
        # 5 N sink 0.64 mm (a 25 deg shift of the thread phase it engages at); this one
        # gives 9 um (the tabletop the stop plate used to rest on: ~1 um).
        _sub(equality, "joint", name=f"thread_lock{h}", joint1=f"thread_slide{h}",
             polycoef=_fmt([G.LOCK_HEIGHT, 0, 0, 0, 0]), active="true", solimp="0.9999 0.9999 0.001",
             solref="0.01 1")
    return ET.tostring(root, encoding="unicode")


def scene_cache_key(opts: SceneOptions) -> str:
    """What a compiled scene depends on: the options, MuJoCo's version and the code that writes the MJCF.

    robosuite and furniture-bench are pinned, so their versions are not part of the key; a
    change to this module, the geometry or the mesh loader invalidates every cached scene.
    """
    h = hashlib.sha256(repr(opts).encode())
    h.update(mujoco.__version__.encode())
    for module in (__file__, G.__file__, assets.__file__):
        h.update(Path(module).read_bytes())
    return h.hexdigest()[:16]


def build_model(opts: SceneOptions = SceneOptions(), use_cache: bool = True) -> mujoco.MjModel:
    """The compiled one_leg model, from a binary (MJB) cache when these options built it before.

    Why a cache: writing the MJCF imports robosuite and reads furniture-bench's meshes, and
    compiling it takes ~1.4 s per env on a 2-core machine, paid again by every worker process;
    loading the MJB takes ~0.04 s. It also lets a machine without robosuite or furniture-bench
    (a GPU node, say) run the simulator from a copied $PIXEL_DPPO_CACHE/scenes folder.
    """
    path = cache_dir("scenes") / f"one_leg_{scene_cache_key(opts)}.mjb"
    if use_cache and path.is_file():
        try:
            return mujoco.MjModel.from_binary_path(str(path))
        except Exception as e:  # a truncated or foreign file: rebuild it
            log.warning("ignoring unreadable scene cache %s (%s); rebuilding", path, e)
    model = mujoco.MjModel.from_xml_string(build_xml(opts))
    if use_cache:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        mujoco.mj_saveModel(model, str(tmp))
        os.replace(tmp, path)  # atomic: concurrent workers never read a half-written file
    return model
