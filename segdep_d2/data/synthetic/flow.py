"""Exact optical flow of a rendered frame, from the scene's own motion model.

The scene is rigid except for the vehicles: the camera translates along +Z at ``ego_speed`` metres per frame
(its orientation is fixed per variation), static things stay put, and every vehicle translates along Z at its
own ``speed`` (no rotation). A pixel's surface point ``P = C + s D`` (``s`` = z-depth) therefore sits at
``P + (0, 0, speed * (target - frame))`` in the target frame if it lies on a vehicle, at ``P`` otherwise (the
Cityscapes bonnet moves with the camera), and its flow is the projection there minus the pixel.

Validity follows Virtual KITTI 2, whose flow comes from the renderer's motion of every visible surface point:
occluded points and points that leave the image keep their (geometric) flow, and only pixels with no flow
are invalid: the sky (nothing at finite depth), points behind the target camera, and flows too large for the
PNG encoding (|flow| beyond W-1 / H-1 pixels, see :mod:`segdep_d2.data.flow_io`).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .camera import camera_pose
from .constants import NEAR, PRIM_HOOD
from .layout import SceneLayout
from .raycast import GBuffer


def frame_flow(layout: SceneLayout, gbuffer: GBuffer, target_frame: int, *, variation: str = "clone",
               camera: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Flow (H, W, 2) float64 pixels from ``gbuffer``'s frame to ``target_frame``, and its (H, W) validity.

    ``variation`` and ``camera`` must be the ones ``gbuffer`` was cast with (they fix the target camera pose).
    """
    height, width = gbuffer.depth.shape
    dx, dy, dz = gbuffer.rays.d
    depth = gbuffer.depth
    finite = np.isfinite(depth)
    s = np.where(finite, depth, 0.0)
    C = gbuffer.C
    points = [C[0] + s * dx, C[1] + s * dy, C[2] + s * dz]  # world X, Y, Z of every pixel's surface

    # Vehicles move along Z; the bonnet moves with the camera.
    frames = target_frame - gbuffer.frame_index
    speed = np.zeros(max(gbuffer.vehicles, default=-1) + 2)  # index track + 1, so -1 (no track) reads 0
    for track_id, vehicle in gbuffer.vehicles.items():
        speed[track_id + 1] = vehicle.speed
    points[2] = points[2] + speed[gbuffer.track + 1] * frames
    R_target, C_target = camera_pose(layout, target_frame, variation=variation, camera=camera)
    hood = gbuffer.prim_index == PRIM_HOOD
    if hood.any():
        for axis in range(3):
            points[axis] = np.where(hood, points[axis] + (C_target[axis] - C[axis]), points[axis])

    relative = [points[k] - C_target[k] for k in range(3)]
    x, y, z = (R_target[k, 0] * relative[0] + R_target[k, 1] * relative[1] + R_target[k, 2] * relative[2]
               for k in range(3))
    valid = finite & (z > NEAR)
    z = np.where(valid, z, 1.0)
    K = gbuffer.K
    u = K[0, 0] * x / z + K[0, 2]
    v = K[1, 1] * y / z + K[1, 2]
    columns, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    flow = np.stack([np.where(valid, u - columns, 0.0), np.where(valid, v - rows, 0.0)], axis=-1)
    return flow, valid
