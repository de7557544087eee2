#!/usr/bin/env bash
# The GPU measurement of issue 14 in one prepared script: mujoco-warp state and pixel env-steps/s
# at 256 / 1024 / 4096 worlds beside the CPU backend, and a DPPO iteration at the paper's scale.
#
# Written for the lent H200 machine (Python 3.12 with torch, numpy, no network; see
# /work/.library/device). NOT RUN YET: no session has been lent a GPU. Two phases:
#
#   bash tools/bench/device_check.sh prepare      # here: wheels + compiled scene into ignored folders
#   bash tools/bench/device_check.sh run          # there: install, compile, measure, JSON to $OUT
#
# warp-lang's wheel is 149 MB and a call carries 64 MiB, so `prepare` splits it into parts of
# 60 MiB under .whl/parts/; the machine stays warm for 30 s after a call, so carry one part per
# call in quick succession (`run` with CHECK_PHASE=stage only copies the carried parts to
# /tmp/parts and returns), the last call carrying the rest and running the measurement.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY312=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
       --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
       --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64)
# what our sim and policy code imports that the device image lacks (it has torch, numpy, tqdm, imageio...)
PACKAGES=(mujoco==4.0.0 mujoco-warp==4.0.0 warp-lang==1.19.0 gymnasium farama-notifications hydra-core
          omegaconf antlr4-python3-runtime==4.9.3 zarr numcodecs donfig crc32c cloudpickle fast-simplification)

prepare() {
  grep -qxF "/.whl/" .git/info/exclude || echo "/.whl/" >> .git/info/exclude
  grep -qxF "/.device_cache/" .git/info/exclude || echo "/.device_cache/" >> .git/info/exclude
  rm -rf .whl && mkdir -p .whl/parts .device_cache
  python3 -m pip download --no-deps "${PY312[@]}" -d .whl "${PACKAGES[@]}"
  for w in .whl/*.whl; do
    if [ "$(stat -c %s "$w")" -gt $((60 * 1024 * 1024)) ]; then
      split -b 60M "$w" ".whl/parts/$(basename "$w")."; rm "$w"
    fi
  done
  # the compiled one_leg scenes (MJB, keyed by options + MuJoCo version + scene code): the
  # device needs neither robosuite nor furniture-bench to run them
  export PIXEL_DPPO_CACHE="$ROOT/.device_cache/pixel_dppo"
  python3 -c "from sim.backends.mujoco_one_leg import OneLegMujocoEnv as E; from sim.config import EnvConfig as C
E(C()).close(); E(C(obs_mode='pixel')).close()"
  du -sh .whl .whl/parts .device_cache
  echo "carry .whl (without parts), .device_cache, and one .whl/parts file per call"
}

run() {
  : "${OUT:?set by the device tool}"
  mkdir -p /tmp/parts
  [ -d .whl/parts ] && cp .whl/parts/* /tmp/parts/ 2>/dev/null || true
  if [ "${CHECK_PHASE:-measure}" = "stage" ]; then ls -la /tmp/parts; exit 0; fi
  for first in /tmp/parts/*.aa; do
    [ -e "$first" ] || continue
    cat "${first%.aa}".* > ".whl/$(basename "${first%.aa}")"
  done
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$ROOT" PYTHONUNBUFFERED=1 MUJOCO_GL=egl
  export PIXEL_DPPO_CACHE="$ROOT/.device_cache/pixel_dppo"  # compiled scenes: no robosuite/furniture-bench needed
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
  python3 -c "import warp as wp; wp.init(); print(wp.get_cuda_device_count(), 'CUDA devices')"
  set -o pipefail
  python3 tools/bench/sim_throughput.py --backends mujoco mujoco_warp --envs 16 --workers 16 \
    --warp-worlds 256 1024 4096 --modes state pixel --steps 50 --no-robosuite \
    --out "$OUT/sim_throughput_gpu.json" 2>&1 | tee "$OUT/sim_throughput.log"
  python3 tools/bench/finetune.py --sim mujoco_warp --device cuda --modes state pixel-frozen --envs 1000 \
    --steps 88 --iterations 2 --out "$OUT/finetune_gpu.json" 2>&1 | tee "$OUT/finetune.log" \
    || echo "finetune bench failed (see log)"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
