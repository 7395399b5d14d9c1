"""Cameras: intrinsics of the two datasets, the ego camera's pose per frame, and per-pixel ray directions.

Cameras follow KITTI: x right, y down, z forward. A pixel's ray is ``C + s * D`` with
``D = R_cw @ [(u-cx)/fx, (v-cy)/fy, 1]``, so the ray parameter ``s`` *is* the z-depth.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Tuple

import numpy as np

from .constants import (
    CITYSCAPES_K,
    CITYSCAPES_SIZE,
    VARIATION_YAW_DEG,
    VKITTI2_K,
    VKITTI2_SIZE,
    VKITTI2_VARIATIONS,
)
from .layout import SceneLayout


def rot_y(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _scaled_intrinsics(focal_and_centre, reference_size, height: int, width: int) -> np.ndarray:
    fx, fy, cx, cy = focal_and_centre
    sx, sy = width / reference_size[1], height / reference_size[0]
    return np.array([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1.0]])


def vkitti2_intrinsics(height: int, width: int) -> np.ndarray:
    """3x3 K of Virtual KITTI 2 (725.0087, 620.5, 187 at 1242x375) scaled to ``height`` x ``width``."""
    return _scaled_intrinsics(VKITTI2_K, VKITTI2_SIZE, height, width)


def cityscapes_intrinsics(height: int, width: int) -> np.ndarray:
    """3x3 K of the Cityscapes camera (fx 2262.52 at 2048x1024) scaled to ``height`` x ``width``."""
    return _scaled_intrinsics(CITYSCAPES_K, CITYSCAPES_SIZE, height, width)


def variation_yaw(variation: str) -> float:
    """Camera yaw (radians) of a VKITTI2 variation; also validates the variation name."""
    if variation not in VKITTI2_VARIATIONS:
        raise ValueError(f"unknown variation {variation!r}; expected one of {VKITTI2_VARIATIONS}")
    return np.deg2rad(VARIATION_YAW_DEG.get(variation, 0.0))


def camera_pose(layout: SceneLayout, frame_index: int, *, variation: str = "clone",
                camera: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """World->camera rotation ``R`` (3x3) and camera centre ``C`` (world, metres); ``x_cam = R (x - C)``."""
    R_cw = rot_y(variation_yaw(variation)) @ rot_x(-layout.pitch)
    C = np.array([layout.ego_x, -layout.camera_height, layout.ego_speed * frame_index])
    if camera == 1:
        C = C + layout.stereo_baseline * R_cw[:, 0]  # the right camera of the stereo rig
    elif camera != 0:
        raise ValueError("camera must be 0 or 1")
    return R_cw.T, C


@dataclasses.dataclass(frozen=True)
class Rays:
    """Per-pixel ray directions as separate (H, W) components (faster than (H, W, 3) for slab tests)."""

    d: Tuple[np.ndarray, np.ndarray, np.ndarray]    # D = R_cw @ [(u-cx)/fx, (v-cy)/fy, 1]
    inv: Tuple[np.ndarray, np.ndarray, np.ndarray]  # 1 / D (zeros nudged so that 0 * inf never happens)
    norm2: np.ndarray                               # |D|^2
    vignette: np.ndarray                            # (H, W) float32 lens fall-off used by the shader


@functools.lru_cache(maxsize=32)
def camera_rays(height, width, fx, fy, cx, cy, yaw, pitch) -> Rays:
    """The rays of one camera orientation (cached and read-only: every frame of a drive shares them)."""
    R_cw = rot_y(yaw) @ rot_x(-pitch)
    x = ((np.arange(width) - cx) / fx)[None, :]
    y = ((np.arange(height) - cy) / fy)[:, None]
    directions = tuple(
        np.ascontiguousarray(R_cw[k, 0] * x + R_cw[k, 1] * y + R_cw[k, 2] + np.zeros((height, width)))
        for k in range(3))
    inverse = tuple(1.0 / np.where(np.abs(c) < 1e-12, 1e-12, c) for c in directions)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2
    rays = Rays(directions, inverse, directions[0] ** 2 + directions[1] ** 2 + directions[2] ** 2,
                (1.0 - 0.12 * r2).astype(np.float32))
    for array in (*rays.d, *rays.inv, rays.norm2, rays.vignette):
        array.flags.writeable = False
    return rays
