"""Policy cameras of N batched worlds through mujoco-warp's ray tracer, as uint8 torch images.

The OpenGL renderer (sim.render) draws one MjData at a time on the host; this draws every world
of a mujoco-warp Data in one launch on its device and hands the images over without a copy to
the host or a float round trip: the tracer packs each pixel as one uint32 (byte 0 blue, 1
green, 2 red), so a uint8 view of that buffer is the image, channels reversed.

It draws what CameraRenderer draws (geom group 0, the part visuals and the robot's collision or
visual meshes; no shadows, reflections or skybox), so a policy sees the same scene from either
backend: images agree with the OpenGL renders to a few 1/255 per pixel on average
(tests/test_mujoco_warp.py states the measured figures). Per-world model fields carry the visual
randomisation: the tracer reads geom_rgba and light_diffuse by world, and mujoco-warp's camlight
pass turns each world's cam_pos/cam_quat/light_dir into its camera and light poses.
"""
from __future__ import annotations

from typing import Any

import mujoco

from sim.tasks.one_leg.scene import GROUP_PART_VIS, GROUP_ROBOT_COL, GROUP_ROBOT_VIS

# model fields that visual randomisation changes per episode (OneLegMujocoEnv._randomize_visuals),
# batched per world on the device so that each world keeps its own
VISUAL_FIELDS = ("geom_rgba", "light_diffuse", "light_dir", "cam_pos", "cam_quat")


def render_groups(low_poly: bool) -> list[int]:
    """The geom groups a policy camera draws (CameraRenderer's choice)."""
    return [0, GROUP_PART_VIS, GROUP_ROBOT_COL if low_poly else GROUP_ROBOT_VIS]


class BatchedCameras:
    """Renders `cameras` of all worlds of (m, d) at `image_hw`; `render()` -> {camera: (N, H, W, 3) uint8}."""

    def __init__(self, mjm: mujoco.MjModel, nworld: int, cameras: tuple[str, ...], image_hw: tuple[int, int],
                 low_poly: bool, device: str):
        import torch
        import warp as wp
        import mujoco_warp as mjw

        for cam in cameras:
            if mujoco.mj_name2id(mjm, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                names = [mjm.camera(i).name for i in range(mjm.ncam)]
                raise ValueError(f"camera '{cam}' does not exist; available: {names}")
        self.cameras = tuple(cameras)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        h, w = self.image_hw
        self._mjw = mjw
        with wp.ScopedDevice(device):
            self.rc = mjw.create_render_context(
                mjm, nworld=nworld, cam_res=(w, h), render_rgb=True, render_depth=False, render_seg=False,
                cam_active=list(self.cameras), enabled_geom_groups=render_groups(low_poly), use_shadows=False,
                render_skybox=False)
        packed = wp.to_torch(self.rc.rgb_data)  # (N, pixels of all cameras) 32-bit
        self._bytes = packed.view(torch.uint8).reshape(nworld, -1, 4)
        adr = self.rc.rgb_adr.numpy()
        self._slices = {cam: slice(int(adr[i]), int(adr[i]) + h * w) for i, cam in enumerate(self.cameras)}
        self._bgr_to_rgb = torch.tensor([2, 1, 0], device=self._bytes.device)

    def render(self, m: Any, d: Any) -> dict[str, Any]:
        """Every world's images from d's current poses (fresh tensors: the channel reorder copies)."""
        self._mjw.refit_bvh(m, d, self.rc)
        self._mjw.render(m, d, self.rc)
        h, w = self.image_hw
        n = self._bytes.shape[0]
        return {cam: self._bytes[:, s].reshape(n, h, w, 4).index_select(-1, self._bgr_to_rgb)
                for cam, s in self._slices.items()}
