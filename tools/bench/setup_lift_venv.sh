#!/usr/bin/env bash
# A small venv for the robosuite Lift yardstick of tools/bench/sim_throughput.py: robosuite's own
# environments break on MuJoCo 4.0 (which the project pins), so it gets mujoco 3.9 of its own.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
[ -x .venv-lift/bin/python ] || "$PYTHON" -m venv .venv-lift
.venv-lift/bin/python -m pip install -q "mujoco==3.9.0" "robosuite==1.5.2" "numpy<2" "opencv-python-headless==4.11.0.86"
.venv-lift/bin/python -c "import robosuite, mujoco; print('[lift venv] mujoco', mujoco.__version__, 'robosuite', robosuite.__version__)"
