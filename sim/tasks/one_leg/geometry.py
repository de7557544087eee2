"""Measured geometry and layout of furniture-bench's one_leg, in metres.

Part frames are those of the furniture-bench meshes: each part's +y is its own axis
(the tabletop's holes open toward +y; a leg's peg points to -y). World layout follows
furniture-bench's simulator: table centre (0, 0, 0.4), Franka base at (-0.3, 0, 0.43).
"""
from __future__ import annotations

import numpy as np

# --- world layout --------------------------------------------------------------------
TABLE_POS = np.array([0.0, 0.0, 0.4])
TABLE_HALF = np.array([0.65, 0.4, 0.015])
TABLE_Z = TABLE_POS[2] + TABLE_HALF[2]  # 0.415, table surface
ROBOT_BASE_POS = np.array([-0.3, 0.0, 0.43])

# Obstacle fixture: a U open toward the robot. Half sizes already rotated into world axes.
OBSTACLE_FRONT_POS = np.array([0.3815, 0.0, 0.43])
OBSTACLE_FRONT_HALF = np.array([0.01, 0.175, 0.015])
OBSTACLE_SIDE_POS = (np.array([0.3065, 0.175, 0.43]), np.array([0.3065, -0.175, 0.43]))
OBSTACLE_SIDE_HALF = np.array([0.085, 0.01, 0.015])

# --- tabletop (local frame: y = hole axis, holes open to +y) ---------------------------
TOP_HALF_XZ = 0.08125
TOP_Y_MIN, TOP_Y_MAX = -0.01568, 0.01556
HOLE_XZ = 0.05625  # holes at (+-, +-) in (x, z)
HOLE_BOTTOM_Y = -0.009375  # 25 mm deep blind holes
BORE_RADIUS = 0.0125  # upper plain bore
THREAD_RADIUS = 0.011  # threaded section (collision radius)
BORE_DEPTH = 0.0064
TOP_MASS = 0.151

# --- leg (local frame: y = leg axis, peg at -y) ----------------------------------------
LEG_HALF_XZ = 0.015
LEG_BODY_Y = (-0.03125, 0.03125)
PEG_Y = (-0.05625, -0.03125)
PEG_RADIUS = 0.0105
STOP_DISC_RADIUS = 0.0145
STOP_DISC_HALF_THICK = 0.0005
LEG_MASS = 0.0231

# --- assembly and thread ---------------------------------------------------------------
SEATED_Y = 0.046875  # leg origin above the top origin when assembled (top frame)
THREAD_PITCH = 0.0094
ENGAGE_HEIGHT = 0.0124  # thread engages this far above the seat
THREAD_TRAVEL = 0.02  # slide range of the thread follower

# The stop disc rests on the top surface exactly when the leg is ENGAGE_HEIGHT above the seat.
STOP_DISC_Y = TOP_Y_MAX - (SEATED_Y + ENGAGE_HEIGHT) + STOP_DISC_HALF_THICK

# The follower's stop under the leg's stop plate: as wide as the plate, below the top surface.
STOP_HALF_XZ = STOP_DISC_RADIUS
STOP_HALF_THICK = 0.001
# The lock holds an idle follower this much above the engagement height, its geoms as much lower
# in its own frame: at rest they are where the leg needs them; engaging moves the follower to the
# leg's depth, which drops its stop this far clear of the leg's plate. A stop left touching the
# welded leg carried the gripper's push (~5 N) as a leg-follower contact the weld fought, and
# DPPO learnt nothing from thread-engaged starts (the weak-policy test 15 -> 8 %). The weld's
# give under a 5 N push is ~0.5 mm, so 1 mm keeps them apart; it must stay under
# ThreadConfig.depth_tolerance (a leg lifted out re-locks its follower below itself).
STOP_CLEARANCE = 0.001
LOCK_HEIGHT = ENGAGE_HEIGHT + STOP_CLEARANCE

PART_FRICTION = 0.15


def hole_centres_local() -> np.ndarray:
    """(4, 3) hole centres at the seated leg height, in the tabletop frame."""
    s = HOLE_XZ
    return np.array([[x, SEATED_Y, z] for x in (-s, s) for z in (-s, s)])


# Rotations taking part frames to the resting world orientation.
# Tabletop lies with its holes up: local +y -> world +z (rotation of +90 deg about x).
TOP_REST_ROT = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
# Leg lies on a face with its axis along world x, peg away from the robot (+x, toward the
# tabletop): local +y (toward its top end) -> world -x, local z -> world z.
LEG_REST_ROT = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

TOP_REST_POS = np.array([0.2415, 0.0, TABLE_Z - TOP_Y_MIN])
LEG_REST_POS = np.array([0.0715, 0.20, TABLE_Z + LEG_HALF_XZ])

# Where the tabletop sits when pushed into the fixture corner (the -y side of the U).
TOP_CORNER_POS = np.array(
    [
        OBSTACLE_FRONT_POS[0] - OBSTACLE_FRONT_HALF[0] - TOP_HALF_XZ,
        OBSTACLE_SIDE_POS[1][1] + OBSTACLE_SIDE_HALF[1] + TOP_HALF_XZ,
        TOP_REST_POS[2],
    ]
)
