#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian/Ubuntu machine (CPU is enough):
# system GL libraries for headless rendering (when run as root), a virtual environment in
# .venv with the project installed in editable mode, and furniture-bench's meshes.
#
#   source tools/setup.sh     # set up and activate .venv in this shell (README quick start)
#   bash tools/setup.sh       # set up only (CI); then: source .venv/bin/activate
_PIXEL_DPPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_pixel_dppo_setup() (
  # a subshell: strict mode and cd do not leak into a shell that sourced this file
  set -euo pipefail
  cd "$_PIXEL_DPPO_ROOT"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "[setup] apt: headless OpenGL (EGL / OSMesa), libusb for pyrealsense2"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libgles2 libosmesa6 libglib2.0-0 libusb-1.0-0 >/dev/null
  else
    echo "[setup] not root or no apt-get: make sure libegl1/libegl-mesa0 or libosmesa6 are installed"
  fi
  PYTHON="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  echo "[setup] pip install -e .[dev,gpu] (mujoco-warp runs on CPU for the parity tests)"
  .venv/bin/python -m pip install -q -e ".[dev,gpu]"
  # A .venv made before the MuJoCo 4 move holds the monolithic 3.x wheel; pip's upgrade to the
  # split 4.x packages (mujoco + mujoco-core + mujoco-studio) can leave the bindings missing.
  if ! .venv/bin/python -c "import mujoco" >/dev/null 2>&1; then
    echo "[setup] repairing the MuJoCo install (3.x -> 4.x upgrade)"
    .venv/bin/python -m pip install -q --force-reinstall --no-deps "mujoco==4.0.0" "mujoco-core==4.0.0" \
      "mujoco-studio==4.0.0"
  fi
  # furniture-bench ships the square_table meshes; its own dependencies need gym 0.21.
  .venv/bin/python -m pip install -q --no-deps furniture-bench==0.1
  # franky-sim (a MuJoCo Franka behind the libfranka protocol: the robot peer of the tests and of
  # real/deploy.py --rehearse) needs numpy >= 2, the project numpy < 2: its own venv (~660 MB).
  if [ ! -x .venv-franky-sim/bin/franky-sim ]; then
    echo "[setup] .venv-franky-sim (franky-sim 1.0.4)"
    "$PYTHON" -m venv .venv-franky-sim
    .venv-franky-sim/bin/python -m pip install -q "franky-sim==1.0.4" || echo "[setup] franky-sim could not be installed: the robot tests will be skipped"
  fi
  .venv/bin/python -c "import mujoco, sim.assets as a; print('[setup] ok: mujoco', mujoco.__version__, '| furniture-bench assets at', a.furniture_bench_asset_dir())"
)

if _pixel_dppo_setup; then
  if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # shellcheck disable=SC1091
    source "$_PIXEL_DPPO_ROOT/.venv/bin/activate"
    echo "[setup] .venv is active in this shell"
  fi
else
  echo "[setup] failed" >&2
  return 1 2>/dev/null || exit 1
fi
