"""Offscreen camera rendering for MuJoCo envs, tuned for small policy images.

Shadows, reflections and MSAA are off and the robot can be drawn with its collision
meshes: at 96x96 the difference is invisible to a policy, and on a CPU-only machine
(llvmpipe) it is the difference between ~350 ms and a few ms per step.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

try:  # triton (pulled in by torch's CUDA wheels) bundles its own LLVM; imported after Mesa's
    # llvmpipe has loaded libLLVM for an EGL context it segfaults (measured: any torch.export or
    # torch.compile after a render). Loaded first, both work.
    import triton.runtime  # noqa: F401, E402
except Exception:  # noqa: BLE001 - absent or broken triton: nothing to protect
    pass
import atexit  # noqa: E402
import weakref  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from sim.tasks.one_leg.scene import GROUP_PART_VIS, GROUP_ROBOT_COL, GROUP_ROBOT_VIS  # noqa: E402


_LIVE: "weakref.WeakSet[CameraRenderer]" = weakref.WeakSet()
_HOOKED = False


def _close_all() -> None:
    # Free GL contexts while EGL is still initialised; otherwise their destructors run during
    # interpreter teardown and print spurious EGL errors. Registered after the first renderer
    # exists, so it runs before mujoco.egl's own atexit hook terminates the display.
    for r in list(_LIVE):
        try:
            r.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class CameraRenderer:
    def __init__(self, model: mujoco.MjModel, cameras: tuple[str, ...], image_hw: tuple[int, int], low_poly: bool):
        h, w = image_hw
        for cam in cameras:
            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                names = [model.camera(i).name for i in range(model.ncam)]
                raise ValueError(f"camera '{cam}' does not exist; available: {names}")
        model.vis.quality.offsamples = 0
        self.cameras = tuple(cameras)
        self.renderer = mujoco.Renderer(model, h, w)
        self.option = mujoco.MjvOption()
        groups = np.zeros(6, dtype=np.uint8)
        groups[0] = 1
        groups[GROUP_PART_VIS] = 1
        groups[GROUP_ROBOT_COL if low_poly else GROUP_ROBOT_VIS] = 1
        self.option.geomgroup[:] = groups
        self.option.sitegroup[:] = 0  # robosuite's grip-site markers are not part of the scene
        self._closed = False
        _LIVE.add(self)
        global _HOOKED
        if not _HOOKED:
            atexit.register(_close_all)
            _HOOKED = True

    def render(self, data: mujoco.MjData, camera: str, out: np.ndarray | None = None) -> np.ndarray:
        self.renderer.update_scene(data, camera=camera, scene_option=self.option)
        flags = self.renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        return self.renderer.render(out=out)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.renderer.close()
