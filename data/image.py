"""The one crop-and-resize from a camera image to a policy image, shared by sim and real.

A policy trained on 96x96 simulator images must see real frames framed the same way: the
RealSense delivers 1280x720, the policy wants a square. Both sides go through `fit_image`:
crop a region (by default the largest centred one with the output's aspect ratio, so nothing
is stretched), then resize with area averaging (the anti-aliased downscale that matches a
renderer's supersampled pixels best). The rehearsal mode renders the simulator at the real
camera's resolution and applies this same function.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def centred_crop(image_hw: Sequence[int], out_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the largest centred region of an image of `image_hw` with the aspect
    ratio of `out_hw`."""
    h, w = int(image_hw[0]), int(image_hw[1])
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if min(h, w, oh, ow) <= 0:
        raise ValueError(f"image sizes must be positive, got {image_hw} -> {out_hw}")
    if w * oh > h * ow:  # wider than the output: crop the sides
        cw, ch = round(h * ow / oh), h
    else:
        cw, ch = w, round(w * oh / ow)
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def fit_image(image: np.ndarray, out_hw: Sequence[int], crop: Sequence[int] | None = None) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (out_h, out_w, 3): crop `crop` = (x, y, w, h) (default: centred,
    the output's aspect ratio), then area-resize. A no-op copy when the sizes already match."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) colour image, got shape {image.shape}")
    x, y, w, h = crop if crop is not None else centred_crop(image.shape[:2], out_hw)
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > image.shape[1] or y + h > image.shape[0]:
        raise ValueError(f"crop {tuple(crop or ())} lies outside the {image.shape[1]}x{image.shape[0]} image")
    region = image[y:y + h, x:x + w]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if region.shape[:2] == (oh, ow):
        return np.ascontiguousarray(region)
    interp = cv2.INTER_AREA if (w >= ow and h >= oh) else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(region), (ow, oh), interpolation=interp)
