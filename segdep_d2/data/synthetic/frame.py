"""Rendering one frame in memory: :func:`render_frame`, :class:`SyntheticFrame` and its visible tracks."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple, Union

import numpy as np

from .camera import cityscapes_intrinsics, rot_y, vkitti2_intrinsics
from .constants import CLASS_TO_VKITTI2_TRAIN_ID, cityscapes_tables
from .layout import SceneLayout, build_scene, stable_seed
from .raycast import GBuffer, cast_geometry
from .shading import shade
from .vehicles import VKITTI2_LABEL_OF_KIND


@dataclasses.dataclass
class SyntheticTrack:
    """One vehicle visible in a frame, with the numbers Virtual KITTI 2 writes to bbox.txt / pose.txt."""

    track_id: int
    label: str                 # "Car" | "Van" | "Truck"
    model: str
    color: str
    width: float
    height: float
    length: float
    world_xyz: Tuple[float, float, float]    # bottom centre, world frame
    rotation_world: Tuple[float, float, float]  # (ry, rx, rz)
    camera_xyz: Tuple[float, float, float]   # bottom centre, camera frame
    rotation_camera: Tuple[float, float, float]
    alpha: float
    bbox: Tuple[int, int, int, int]          # left, right, top, bottom (inclusive pixels)
    number_pixels: int
    truncation_ratio: float
    occupancy_ratio: float
    is_moving: bool


@dataclasses.dataclass
class SyntheticFrame:
    """A rendered frame. ``depth`` is z-depth in metres (``inf`` = sky); ``category`` indexes
    ``VKITTI2_CATEGORIES`` (trainId, 255 = void); ``track_id`` is -1 off vehicles."""

    rgb: np.ndarray            # (H, W, 3) uint8
    depth: np.ndarray          # (H, W) float32 metres
    category: np.ndarray       # (H, W) uint8 VKITTI2 trainId
    track_id: np.ndarray       # (H, W) int32
    label: np.ndarray          # (H, W) int16 index into SYNTHETIC_CLASSES
    cityscapes_id: np.ndarray  # (H, W) uint8 Cityscapes label id
    intrinsics: np.ndarray     # (3, 3)
    extrinsic: np.ndarray      # (4, 4) world -> camera
    tracks: List[SyntheticTrack]
    scene: str
    frame_index: int
    camera: int
    variation: str


def render_frame(scene: Union[str, SceneLayout], frame_index: int, *, height: int = 188, width: int = 621,
                 variation: str = "clone", camera: int = 0, seed: int = 0,
                 intrinsics: Optional[np.ndarray] = None) -> SyntheticFrame:
    """Render frame ``frame_index`` of ``scene`` (a name, laid out with ``seed``, or a :class:`SceneLayout`).

    ``intrinsics`` defaults to Virtual KITTI 2's K scaled to the image size (Cityscapes' for layouts built
    with ``profile="cityscapes"``). Appearance variations change only ``rgb``; ``N-deg-left/right`` yaw the camera.
    """
    layout = scene if isinstance(scene, SceneLayout) else build_scene(str(scene), seed, profile="vkitti2")
    if intrinsics is None:
        intrinsics = (cityscapes_intrinsics if layout.profile == "cityscapes" else vkitti2_intrinsics)(height, width)
    K = np.asarray(intrinsics, float)
    gbuffer = cast_geometry(layout, frame_index, K, height, width, variation, camera)
    return finish_frame(layout, gbuffer, frame_index, variation, camera)


def finish_frame(layout: SceneLayout, gbuffer: GBuffer, frame_index: int, variation: str,
                 camera: int) -> SyntheticFrame:
    """Shade a G-buffer and assemble the frame (appearance variations of one geometry share the G-buffer)."""
    height, width = gbuffer.depth.shape
    rgb = shade(layout, gbuffer, variation, _frame_rng(layout, frame_index, camera, variation))
    cityscapes_id = cityscapes_tables().class_to_id[gbuffer.label]
    extrinsic = np.eye(4)
    extrinsic[:3, :3] = gbuffer.R_wc
    extrinsic[:3, 3] = -gbuffer.R_wc @ gbuffer.C
    return SyntheticFrame(
        rgb=rgb, depth=gbuffer.depth.astype(np.float32), category=CLASS_TO_VKITTI2_TRAIN_ID[gbuffer.label],
        track_id=gbuffer.track, label=gbuffer.label, cityscapes_id=cityscapes_id, intrinsics=gbuffer.K.copy(),
        extrinsic=extrinsic, tracks=_visible_tracks(gbuffer, height, width), scene=layout.name,
        frame_index=frame_index, camera=camera, variation=variation)


def _frame_rng(layout: SceneLayout, frame_index: int, camera: int, variation: str) -> np.random.Generator:
    """Per-frame noise generator, seeded independently of render order."""
    return np.random.default_rng(stable_seed(layout.seed, layout.name, layout.profile, frame_index, camera,
                                             variation))


def _euler_yxz(M):
    """(ry, rx, rz) with M = Ry(ry) Rx(rx) Rz(rz) - the order VKITTI2 lists rotations in."""
    rx = float(np.arcsin(np.clip(-M[1, 2], -1.0, 1.0)))
    ry = float(np.arctan2(M[0, 2], M[2, 2]))
    rz = float(np.arctan2(M[1, 0], M[1, 1]))
    return ry, rx, rz


def _wrap_angle(angle):
    """Angle in [-pi, pi)."""
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def _visible_tracks(gbuffer: GBuffer, height: int, width: int) -> List[SyntheticTrack]:
    """One :class:`SyntheticTrack` per track with visible pixels, in track id order."""
    track = gbuffer.track
    ys, xs = np.nonzero(track >= 0)
    if ys.size == 0:
        return []
    track_ids, inverse, counts = np.unique(track[ys, xs], return_inverse=True, return_counts=True)
    left, right = np.full(len(track_ids), width), np.full(len(track_ids), -1)
    top, bottom = np.full(len(track_ids), height), np.full(len(track_ids), -1)
    np.minimum.at(left, inverse, xs)
    np.maximum.at(right, inverse, xs)
    np.minimum.at(top, inverse, ys)
    np.maximum.at(bottom, inverse, ys)
    return [_track(gbuffer, int(track_id), (int(left[k]), int(right[k]), int(top[k]), int(bottom[k])),
                   int(counts[k]), height, width)
            for k, track_id in enumerate(track_ids)]


def _track(gbuffer: GBuffer, track_id: int, bbox, number_pixels: int, height: int, width: int) -> SyntheticTrack:
    vehicle = gbuffer.vehicles[track_id]
    vehicle_width, vehicle_height, vehicle_length = vehicle.dims
    # KITTI convention: ry = 0 faces +x, so heading +Z is ry = -pi/2.
    ry_world = -np.pi / 2 if vehicle.heading > 0 else np.pi / 2
    rotation_camera = _euler_yxz(gbuffer.R_wc @ rot_y(ry_world))
    bottom_world = np.array([vehicle.x, 0.0, vehicle.z_at(gbuffer.frame_index)])
    bottom_camera = gbuffer.R_wc @ (bottom_world - gbuffer.C)
    return SyntheticTrack(
        track_id=track_id, label=VKITTI2_LABEL_OF_KIND[vehicle.kind], model=vehicle.model, color=vehicle.color_name,
        width=vehicle_width, height=vehicle_height, length=vehicle_length,
        world_xyz=tuple(float(x) for x in bottom_world), rotation_world=(ry_world, 0.0, 0.0),
        camera_xyz=tuple(float(x) for x in bottom_camera), rotation_camera=rotation_camera,
        alpha=_wrap_angle(rotation_camera[0] - np.arctan2(bottom_camera[0], bottom_camera[2])),
        bbox=bbox, number_pixels=number_pixels,
        truncation_ratio=_truncation_ratio(gbuffer.extents[track_id], height, width),
        occupancy_ratio=float(min(number_pixels / max(gbuffer.unoccluded.get(track_id, number_pixels), 1), 1.0)),
        is_moving=vehicle.moving)


def _truncation_ratio(extent, height: int, width: int) -> float:
    """Share of the projected 3D box (umin, umax, vmin, vmax) outside the image."""
    umin, umax, vmin, vmax = extent
    full = max((umax - umin) * (vmax - vmin), 1e-9)
    inside = (max(0.0, min(umax, width - 0.5) - max(umin, -0.5))
              * max(0.0, min(vmax, height - 0.5) - max(vmin, -0.5)))
    return float(np.clip(1.0 - inside / full, 0.0, 1.0))
