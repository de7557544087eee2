#!/usr/bin/env bash
# The GPU measurement of issue 14 in one prepared script: mujoco-warp state and pixel env-steps/s
# at 256 / 1024 / 4096 worlds beside the CPU backend, and a DPPO iteration at the paper's scale.
#
# Written for the lent H200 machine (Python 3.12 with torch and numpy, no network; see
# /work/.library/device). NOT RUN YET: no session has been lent a GPU. Two phases:
#
#   bash tools/bench/device_check.sh prepare      # here: a payload of wheels + compiled scenes
#   bash tools/bench/device_check.sh run          # there: stage / install, compile, measure -> $OUT
#
# What the device image lacks travels as Python 3.12 wheels (warp-lang's alone is 149 MB) with
# the compiled one_leg scene (37 MB MJB: no robosuite or furniture-bench needed there). A call
# carries 64 MiB with the tracked tree (34 MiB, the checkpoints), so `prepare` tars the payload
# (~220 MB) into 25 MiB parts under .device/parts/ and prints
# the calls: one part per call in quick succession while the machine stays warm (30 s), each
# with CHECK_PHASE=stage (it only copies its part to /tmp/stage), the last without it (it
# unpacks, installs and measures).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY312=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
       --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
       --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64)
# what our sim and policy code imports that the device image lacks (it has torch, numpy, absl-py,
# etils, tqdm, imageio, pyyaml...), at the versions this machine runs
PACKAGES=(mujoco==4.0.0 mujoco-core==4.0.0 mujoco-studio==4.0.0 glfw==2.11.0 pyopengl==3.1.10 websockets
          mujoco-warp==4.0.0 warp-lang==1.19.0 gymnasium==1.4.0 farama-notifications==0.0.6 hydra-core==1.3.8
          omegaconf==2.3.1 zarr==3.1.5 numcodecs==0.16.6 donfig==0.8.1.post1 crc32c cloudpickle==3.1.3)

prepare() {
  grep -qxF "/.device/" .git/info/exclude || echo "/.device/" >> .git/info/exclude
  rm -rf .device && mkdir -p .device/payload/wheels .device/parts
  python3 -m pip download -q --no-deps "${PY312[@]}" -d .device/payload/wheels "${PACKAGES[@]}"
  python3 -m pip wheel -q --no-deps -w .device/payload/wheels antlr4-python3-runtime==4.9.3  # an sdist only
  PIXEL_DPPO_CACHE="$ROOT/.device/payload/cache" python3 -c "
from sim.backends.mujoco_one_leg import OneLegMujocoEnv as E; from sim.config import EnvConfig as C
E(C()).close(); E(C(obs_mode='pixel')).close()"
  tar -cf - -C .device payload | split -b 25M - .device/parts/payload.tar.
  (cd .device/parts && sha256sum payload.tar.* > ../manifest.sha256) && cp .device/manifest.sha256 .device/parts/
  du -sh .device/payload .device/parts/*
  local parts=(.device/parts/payload.tar.*) last=$((${#parts[@]} - 1))
  echo "device calls, in quick succession:"
  for i in "${!parts[@]}"; do
    if [ "$i" -lt "$last" ]; then
      echo "  run(command='CHECK_PHASE=stage bash tools/bench/device_check.sh run', carry=['${parts[$i]}'])"
    else
      echo "  run(command='bash tools/bench/device_check.sh run', carry=['${parts[$i]}'], timeout_s=600)"
    fi
  done
}

run() {
  : "${OUT:?set by the device tool}"
  mkdir -p /tmp/stage
  cp .device/parts/* /tmp/stage/ 2>/dev/null || true
  ls -la /tmp/stage
  if [ "${CHECK_PHASE:-measure}" = "stage" ]; then exit 0; fi
  (cd /tmp/stage && sha256sum -c manifest.sha256) || { echo "payload parts missing or corrupt (a cold machine between calls?)"; exit 3; }
  cat /tmp/stage/payload.tar.* | tar -xf - -C /tmp
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/payload/wheels/*.whl
  export PYTHONPATH="/tmp/site:$ROOT" PYTHONUNBUFFERED=1 MUJOCO_GL=egl PIXEL_DPPO_CACHE=/tmp/payload/cache
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
  python3 -c "import warp as wp; wp.init(); print(wp.get_cuda_device_count(), 'CUDA devices')"
  # kernels compile on the first step of each configuration (cached under ~/.cache/warp); the
  # warp rows first and in their own process, so an EGL failure of the CPU pixel rows costs nothing
  timeout 300 python3 tools/bench/sim_throughput.py --backends mujoco_warp --warp-worlds 256 1024 4096 \
    --modes state pixel --steps 50 --no-robosuite --out "$OUT/sim_throughput_gpu.json" 2>&1 \
    | tee "$OUT/sim_throughput.log" || echo "warp bench failed or timed out"
  timeout 60 python3 tools/bench/sim_throughput.py --backends mujoco --envs 16 --workers 16 --modes state pixel \
    --steps 50 --no-robosuite --out "$OUT/sim_throughput_cpu.json" 2>&1 | tee "$OUT/sim_throughput_cpu.log" \
    || echo "CPU bench failed or timed out"
  timeout 180 python3 tools/bench/finetune.py --sim mujoco_warp --device cuda --modes state --envs 1000 \
    --steps 88 --iterations 2 --out "$OUT/finetune_gpu.json" 2>&1 | tee "$OUT/finetune.log" \
    || echo "finetune bench failed or timed out (see log)"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
