"""Scripted one_leg expert: a state machine on the privileged observation.

It reads only `state` (EE pose, gripper width) and `parts` (tabletop and leg poses), all
in the robot base frame, and outputs absolute EE pose actions: the same interface a
learned policy has, so its demos can be replayed and it runs inside vector envs.

Phases: push the tabletop against the fixture's front wall, then sideways into the
corner; grasp the lying leg near its top end; turn it peg-down (hand horizontal), carry
it over the free hole and lower it until its thread stop rests on the rim; release;
then grasp from above and twist clockwise in 90-degree strokes (release, turn back,
regrasp) until the thread engages and the leg is seated. Waypoints get small random
offsets and speeds vary per episode, so demos are diverse.

An episode's first action picks the phase from the scene (`_phase_start`): the standard reset
(leg lying) starts with the pushing; an episode started from a state recorded mid-task
(`sim.start_states`, e.g. the leg standing upright or engaged in the thread) picks up where the
expert was when it was recorded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.rotation import axis_angle_to_matrix, rot6d_to_matrix, rot_z, rotation_error
from data.schema import make_action
from sim.tasks.one_leg import geometry as G

BASE = G.ROBOT_BASE_POS
DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # fingers along world y
OPEN = 0.065
CLOSED = 0.0


def hand_down(yaw: float) -> np.ndarray:
    """Hand pointing down with the finger axis at angle `yaw` from world x."""
    return rot_z(yaw - np.pi / 2) @ DOWN


def finger_yaw(rot: np.ndarray) -> float:
    x = rot[:, 0]
    return float(np.arctan2(x[1], x[0]))


def wrap(a: float) -> float:
    return (a + np.pi) % (2 * np.pi) - np.pi


@dataclass
class ExpertConfig:
    max_speed: float = 0.03  # m per control step
    max_rot_speed_deg: float = 15.0
    noise_pos: float = 0.002  # std of waypoint offsets, m
    speed_jitter: float = 0.2  # relative speed variation per episode
    twist_deg: float = 90.0
    twist_step_deg: float = 9.0


class OneLegExpert:
    """One instance per env. Call `reset(seed)` at episode start, then `act(obs)`."""

    def __init__(self, cfg: ExpertConfig = ExpertConfig()):
        self.cfg = cfg
        self.reset(0)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.phase = "start"
        self.sub = 0
        self.t_phase = 0
        self.hold = None
        self.speed = self.cfg.max_speed * (1 + self.rng.uniform(-self.cfg.speed_jitter, self.cfg.speed_jitter))
        self.offset = self.rng.normal(0, self.cfg.noise_pos, 3)
        self.home_yaw = np.pi / 2

    # --- helpers -------------------------------------------------------------------------
    def _parse(self, obs):
        s = np.asarray(obs["state"], dtype=np.float64)
        p = np.asarray(obs["parts"], dtype=np.float64)
        self.ee = s[:3] + BASE
        self.ee_rot = rot6d_to_matrix(s[3:9])
        self.width = s[9]
        self.top_pos, self.top_rot = p[:3] + BASE, rot6d_to_matrix(p[3:9])
        self.leg_pos, self.leg_rot = p[9:12] + BASE, rot6d_to_matrix(p[12:18])

    def _goto(self, pos, rot, width, speed=None):
        """Action toward (pos, rot) limited in speed; returns (action, reached distance)."""
        speed = speed or self.speed
        delta = pos - self.ee
        dist = np.linalg.norm(delta)
        step_pos = self.ee + (delta if dist <= speed else delta * speed / dist)
        err = rotation_error(rot, self.ee_rot)
        ang = np.linalg.norm(err)
        max_rot = np.radians(self.cfg.max_rot_speed_deg)
        step_rot = rot if ang <= max_rot else axis_angle_to_matrix(err, max_rot) @ self.ee_rot
        return make_action(step_pos - BASE, step_rot, width), dist, np.degrees(ang)

    def _next(self, phase: str, sub: int = 0) -> None:
        self.phase, self.sub, self.t_phase = phase, sub, 0

    def _advance(self, reached: bool, timeout: int = 40) -> None:
        if reached or self.t_phase > timeout:
            self.sub += 1
            self.t_phase = 0

    def _leg_axis(self) -> np.ndarray:
        return self.leg_rot[:, 1]

    def _leg_lying(self) -> bool:
        return abs(self._leg_axis()[2]) < 0.5 and self.leg_pos[2] < G.TABLE_Z + 0.03

    # --- policy --------------------------------------------------------------------------
    def act(self, obs) -> np.ndarray:
        self._parse(obs)
        self.t_phase += 1
        return getattr(self, f"_phase_{self.phase}")()

    def _phase_start(self) -> np.ndarray:
        """The first action: continue in the phase that fits the scene (t_phase and sub as a
        phase's first call sees them, so a standard reset's episode is the push_x one)."""
        self.phase = self._entry_phase()
        return getattr(self, f"_phase_{self.phase}")()

    def _entry_phase(self) -> str:
        if self._leg_lying():
            return "push_x"  # the standard reset; the pushes skip a top already in its corner
        upright = self._leg_axis()[2] > np.cos(np.radians(15.0))
        in_hand = self._leg_in_hand()
        if not upright:  # lifted or tilted: turn it peg-down, or let go and start over
            return "reorient" if in_hand else "recover"
        if self._leg_in_hole():
            return "twist" if in_hand else "twist_grasp"
        if in_hand:  # being stood up: lower it onto the table, let go, regrasp from above
            self.reorient_rot = self.ee_rot.copy()
            return "stand"
        self.sub = 2  # standing free on the table: hand up, then regrasp and insert
        return "stand"

    def _leg_in_hole(self) -> bool:
        """The peg is in a hole of the top, at most a little above the thread's engagement height."""
        rel = self.top_rot.T @ (self.leg_pos - self.top_pos)
        holes = G.hole_centres_local()
        lateral = np.hypot(holes[:, 0] - rel[0], holes[:, 2] - rel[2]).min()
        return bool(lateral < 0.005 and rel[1] - G.SEATED_Y < G.ENGAGE_HEIGHT + 0.01)

    def _push(self, axis: int, sign: float, next_phase: str) -> np.ndarray:
        """Push the top along world `axis` (0 x, 1 y) in direction `sign` to its corner coordinate."""
        cfg_z_high = G.TABLE_Z + 0.07
        z_push = G.TABLE_Z + 0.016
        goal = G.TOP_CORNER_POS[axis]
        behind = self.top_pos.copy()
        behind[axis] -= sign * (G.TOP_HALF_XZ * 1.42 + 0.02)
        yaw = np.pi / 2 if axis == 0 else 0.0  # finger axis across the pushing direction
        rot = hand_down(yaw)
        done = sign * (self.top_pos[axis] - goal) > -0.002
        if self.sub == 0:  # above the start point
            if done:
                self._next(next_phase)
                return self.act_hold()
            self.hold = behind.copy()
            self.hold[2] = cfg_z_high
            a, d, ang = self._goto(self.hold, rot, 0.05)
            self._advance(d < 0.01 and ang < 5)
            return a
        if self.sub == 1:  # down next to the table edge
            target = self.hold.copy()
            target[2] = z_push
            a, d, _ = self._goto(target, rot, 0.05, speed=0.02)
            self._advance(d < 0.004)
            return a
        if self.sub == 2:  # push until the top is in place
            target = self.ee.copy()
            target[axis] += sign * 0.015
            target[2] = z_push
            # steer the contact point toward the top's centre line
            other = 1 - axis
            target[other] += np.clip(self.top_pos[other] - self.ee[other], -0.005, 0.005)
            a, _, _ = self._goto(target, rot, 0.05, speed=0.015)
            if done or self.t_phase > 60:
                self._advance(True)
            return a
        # retreat up
        target = self.ee.copy()
        target[axis] -= sign * 0.02
        target[2] = cfg_z_high
        a, d, _ = self._goto(target, rot, 0.05)
        if d < 0.01 or self.t_phase > 15:
            self._next(next_phase)
        return a

    def act_hold(self) -> np.ndarray:
        return make_action(self.ee - BASE, self.ee_rot, self.width)

    def _phase_push_x(self) -> np.ndarray:
        return self._push(0, +1.0, "push_y")

    def _phase_push_y(self) -> np.ndarray:
        return self._push(1, -1.0, "grasp_leg")

    def _grasp_frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Grasp point near the leg's top end and a hand-down rotation across the leg."""
        axis = self._leg_axis()
        axis_h = axis.copy()
        axis_h[2] = 0.0
        axis_h /= np.linalg.norm(axis_h)
        point = self.leg_pos + axis * 0.012
        # finger axis perpendicular to the leg; of the two choices take the one that ends
        # nearest the home yaw after the reorientation's yaw step (joint 7 stays in range)
        d = point[:2] - BASE[:2]
        delta = wrap(np.arctan2(-d[1], -d[0]) - np.arctan2(axis_h[1], axis_h[0]))
        yaw = float(np.arctan2(axis_h[1], axis_h[0])) + np.pi / 2
        if abs(wrap(yaw + delta - self.home_yaw)) > np.pi / 2:
            yaw += np.pi
        return point, hand_down(wrap(yaw))

    def _phase_grasp_leg(self) -> np.ndarray:
        point, rot = self._grasp_frame()
        point = point + np.array([self.offset[0], self.offset[1], 0.0])
        if self.sub == 0:
            a, d, ang = self._goto(point + [0, 0, 0.08], rot, OPEN)
            self._advance(d < 0.01 and ang < 4)
            return a
        if self.sub == 1:
            a, d, _ = self._goto(point + [0, 0, 0.001], rot, OPEN, speed=0.02)
            self._advance(d < 0.003)
            return a
        if self.sub == 2:
            a = make_action(self.ee - BASE, self.ee_rot, CLOSED)
            self._advance(self.t_phase >= 5)
            return a
        # lift
        target = self.ee.copy()
        target[2] = G.TABLE_Z + 0.14
        a, d, _ = self._goto(target, self.ee_rot, CLOSED)
        if d < 0.01:
            if self.leg_pos[2] < G.TABLE_Z + 0.05:  # dropped it: try again
                self._next("grasp_leg")
            else:
                self._next("reorient")
        return a

    def _phase_recover(self) -> np.ndarray:
        """Open, go up, then grasp again (lying leg) or twist (standing leg)."""
        target = self.ee.copy()
        target[2] = max(target[2], G.TABLE_Z + 0.15)
        a, d, _ = self._goto(target, self.ee_rot, OPEN)
        if d < 0.01 or self.t_phase > 15:
            self._next("grasp_leg" if self._leg_lying() or self.leg_pos[2] < G.TABLE_Z + 0.03 else "twist")
        return a

    def _phase_reorient(self) -> np.ndarray:
        """Turn the leg peg-down, the hand pitching toward the robot base.

        Pointing the hand back toward the base keeps the Panda in its natural elbow-up,
        wrist-centred configuration (pitching outward needs a wrist flip at this reach),
        so the leg is first yawed until its top end points at the base, then pitched
        about the finger axis (mostly the Panda's joint 6).
        """
        d = self.ee[:2] - BASE[:2]
        d /= np.linalg.norm(d)
        if self.sub == 0:
            axis = self._leg_axis()
            heading = np.arctan2(axis[1], axis[0])
            delta = wrap(np.arctan2(-d[1], -d[0]) - heading)
            self.reorient_rot = rot_z(delta) @ self.ee_rot
            self.reorient_pos = self.ee + np.array([0.0, 0.0, 0.02])
            self.sub = 1
        if self.sub == 1:
            a, dist, ang = self._goto(self.reorient_pos, self.reorient_rot, CLOSED)
            if (ang < 3 and dist < 0.01) or self.t_phase > 20:
                self.sub, self.t_phase = 2, 0
            return a
        if self.sub == 2:
            axis_in_hand = self.ee_rot.T @ self._leg_axis()
            z = np.array([-d[0], -d[1], 0.0])
            best = None
            for sign in (1.0, -1.0):
                x = sign * np.array([-d[1], d[0], 0.0])
                rot = np.stack([x, np.cross(z, x), z], axis=1)
                score = (rot @ axis_in_hand)[2]
                if best is None or score > best[0]:
                    best = (score, rot)
            self.reorient_rot = best[1]
            self.sub = 3
        a, dist, ang = self._goto(self.reorient_pos, self.reorient_rot, CLOSED)
        if not self._leg_in_hand():
            self._next("recover")
        elif (ang < 3 and dist < 0.01) or self.t_phase > 30:
            self._next("stand")
        return a

    def _peg_bottom(self) -> np.ndarray:
        return self.leg_pos + self._leg_axis() * G.PEG_Y[0]

    def _phase_stand(self) -> np.ndarray:
        """Stand the leg on its peg on the table, let go, and move the hand clear above it."""
        if self.sub == 0:  # lower until the peg is just above the table
            if not self._leg_in_hand():
                self._next("recover")
                return self.act_hold()
            gap = self._peg_bottom()[2] - (G.TABLE_Z + 0.002)
            target = self.ee - np.array([0.0, 0.0, gap])
            a, _, _ = self._goto(target, self.reorient_rot, CLOSED, speed=0.02)
            self._advance(abs(gap) < 0.0015, timeout=30)
            return a
        if self.sub == 1:
            a = make_action(self.ee - BASE, self.ee_rot, OPEN)
            self._advance(self.t_phase >= 4)
            return a
        target = self.ee.copy()
        target[2] = self.leg_pos[2] + 0.12
        a, d, _ = self._goto(target, self.ee_rot, OPEN)
        if d < 0.01 or self.t_phase > 20:
            self._next("recover" if self._leg_lying() else "regrasp")
        return a

    def _face_yaw(self, want: float) -> float:
        """Finger yaw aligned with a face of the standing leg, closest to `want`."""
        leg_x = self.leg_rot[:, 0]
        face = float(np.arctan2(leg_x[1], leg_x[0]))
        k = np.round((want - face) / (np.pi / 2))
        return face + k * np.pi / 2

    def _grasp_top(self, next_phase: str, lift: float, approach: float = 0.06) -> np.ndarray:
        """Grasp the standing leg near its top end from above; then lift by `lift`."""
        up = np.array([0.0, 0.0, 1.0])
        grasp = self.leg_pos + self._leg_axis() * 0.015
        if self.sub == 0:
            self.grasp_yaw = self._face_yaw(self.home_yaw + np.radians(self.cfg.twist_deg) / 2)
            self.sub = 1
        rot = hand_down(self.grasp_yaw)
        if self.sub == 1:
            a, d, ang = self._goto(grasp + up * approach, rot, OPEN)
            self._advance(d < 0.008 and ang < 4)
            return a
        if self.sub == 2:
            a, d, ang = self._goto(grasp, rot, OPEN, speed=0.015)
            self._advance(d < 0.003 and ang < 3)
            return a
        if self.sub == 3:
            a = make_action(grasp - BASE, rot, CLOSED)
            self._advance(self.t_phase >= 4)
            self.lift_target = grasp + up * lift
            return a
        a, d, _ = self._goto(self.lift_target, rot, CLOSED)
        if d < 0.008:
            self._next(next_phase)
        return a

    def _phase_regrasp(self) -> np.ndarray:
        if self._leg_lying():
            self._next("recover")
            return self.act_hold()
        return self._grasp_top("insert", lift=0.06)

    def _phase_insert(self) -> np.ndarray:
        if self.sub <= 2 and not self._leg_in_hand():
            self._next("recover")
            return self.act_hold()
        hole = self._choose_hole()
        up = self.top_rot[:, 1]
        rest = hole + up * G.ENGAGE_HEIGHT  # leg origin when its stop disc sits on the rim
        if self.sub == 0:  # high above the hole
            a, d, tilt = self._leg_correction(rest + up * 0.05, self.speed)
            self._advance(d < 0.004 and tilt < 2, timeout=60)
            return a
        if self.sub == 1:  # just above the bore, fine alignment
            goal = rest + up * 0.009
            a, d, tilt = self._leg_correction(goal, 0.01)
            lateral = np.linalg.norm((goal - self.leg_pos) - up * ((goal - self.leg_pos) @ up))
            self._advance(lateral < 0.0004 and d < 0.002 and tilt < 1.5, timeout=40)
            return a
        # lower onto the rim, then start twisting without letting go
        goal = rest - up * 0.001
        a, d, _ = self._leg_correction(goal, 0.004)
        if d < 0.002 or self.t_phase > 20:
            self._next("twist")
        return a

    def _leg_in_hand(self) -> bool:
        return bool(np.linalg.norm(self.leg_pos - self.ee) < 0.06 and self.width > 0.02)

    def _choose_hole(self) -> np.ndarray:
        """World position of the hole nearest the robot and away from the side wall."""
        holes = (self.top_rot @ G.hole_centres_local().T).T + self.top_pos
        score = holes[:, 0] - 0.5 * holes[:, 1]
        return holes[int(np.argmin(score))]

    def _leg_correction(self, leg_goal: np.ndarray, speed: float):
        """Action moving the hand so the *leg* goes to leg_goal with its axis along the top's axis."""
        up = self.top_rot[:, 1]
        axis = self._leg_axis()
        v = np.cross(axis, up)
        s = np.linalg.norm(v)
        tilt = np.arctan2(s, axis @ up)
        corr = axis_angle_to_matrix(v / s, tilt) if s > 1e-6 else np.eye(3)
        target_rot = corr @ self.ee_rot
        # the grasped leg moves rigidly with the hand: shift the hand by the leg's error
        target_pos = self.ee + (leg_goal - self.leg_pos)
        a, _, _ = self._goto(target_pos, target_rot, CLOSED, speed=speed)
        return a, float(np.linalg.norm(leg_goal - self.leg_pos)), float(np.degrees(tilt))

    def _phase_twist_grasp(self) -> np.ndarray:
        if self._leg_lying():
            self._next("recover")
            return self.act_hold()
        return self._grasp_top("twist", lift=-0.0005, approach=0.02)

    def _phase_twist(self) -> np.ndarray:
        """Clockwise strokes (seen from above): the thread, once caught, pulls the leg down."""
        if self._leg_lying():
            self._next("recover")
            return self.act_hold()
        if self.sub == 0:
            if self.t_phase == 1:
                self.twist_done = 0.0
                self.grip_offset = self.ee - self.leg_pos
                self.twist_yaw = finger_yaw(self.ee_rot)
            self.twist_done += np.radians(self.cfg.twist_step_deg)
            target = self.leg_pos + self.grip_offset
            target[2] -= 0.001  # press lightly so the leg stays on the rim / follows the thread
            a = make_action(target - BASE, hand_down(self.twist_yaw - self.twist_done), CLOSED)
            if self.twist_done >= np.radians(self.cfg.twist_deg) - 1e-6:
                self._advance(True)
            return a
        if self.sub == 1:
            a = make_action(self.ee - BASE, self.ee_rot, OPEN)
            self._advance(self.t_phase >= 3)
            return a
        target = self.ee + np.array([0.0, 0.0, 0.02])
        a, d, _ = self._goto(target, self.ee_rot, OPEN)
        if d < 0.01 or self.t_phase > 4:
            self._next("twist_grasp")
        return a


class ExpertPool:
    """One expert per env of a vector env; acts on batched observations."""

    def __init__(self, n_envs: int, cfg: ExpertConfig = ExpertConfig(), seed: int = 0):
        self.experts = [OneLegExpert(cfg) for _ in range(n_envs)]
        self.seed = seed
        self.episode = np.zeros(n_envs, dtype=np.int64)
        for i in range(n_envs):
            self.reset(i)

    def reset(self, i: int, seed: int | None = None) -> None:
        """Start env i's next episode; noise seeded by `seed` (e.g. the env's episode seed) or
        else by (pool seed, env, episode index)."""
        if seed is None:
            seed = int(np.random.SeedSequence([self.seed, i, int(self.episode[i])]).generate_state(1)[0])
        self.experts[i].reset(int(seed))
        self.episode[i] += 1

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        n = len(self.experts)
        return np.stack([self.experts[i].act({"state": obs["state"][i], "parts": obs["parts"][i]})
                         for i in range(n)])


class ExpertPolicy:
    """The scripted expert behind the chunk-policy interface (`sim.api.ChunkPolicy`), so it
    runs in the same rollout loop as learned policies: one action per query (act_steps 1),
    no history, per-episode noise seeded by the episode seed (a demo is replayable from it)."""

    obs_keys = ("state", "parts")
    obs_history = 1
    act_steps = 1

    def __init__(self, n_envs: int, cfg: ExpertConfig = ExpertConfig()):
        self.pool = ExpertPool(n_envs, cfg)

    def begin_episodes(self, mask: np.ndarray, seeds: np.ndarray) -> None:
        for i in np.flatnonzero(mask):
            self.pool.reset(int(i), seed=int(seeds[i]))

    def act(self, obs: dict[str, np.ndarray], generator=None) -> np.ndarray:
        """(N, 1, ...) observations -> (N, 1, 10) actions."""
        return self.pool.act({k: obs[k][:, -1] for k in self.obs_keys})[:, None]
