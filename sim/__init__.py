"""Simulation: environment API, backends, tasks, scripted experts, vector envs."""
import os

# MuJoCo picks its GL backend at first import; headless machines need EGL (or OSMesa).
os.environ.setdefault("MUJOCO_GL", "egl")
