"""Geometry pass: ray-cast ground, bonnet and primitives into a G-buffer (depth, hit primitive, face, labels).

World frame: X right, Y *down* (ground is Y = 0, things above it have Y < 0), Z along the road.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

import numpy as np

from .camera import Rays, camera_pose, camera_rays, variation_yaw
from .constants import CLASS_INDEX, MAX_FRAMES, NEAR, PRIM_GROUND, PRIM_HOOD, PRIM_SKY
from .layout import SceneLayout, ground_label
from .primitives import Primitives
from .vehicles import Vehicle, vehicle_primitives

SPHERE_FACE = 6  # face code of sphere hits; box faces are 0..5
_GROUND_FACE = 3  # the ground is entered from above (along +Y), so its normal is -Y
_BATCH_AREA = 1200  # primitives covering fewer pixels are ray-cast together in one vectorised batch
# Static primitives and vehicles this far behind / ahead of the camera (metres along Z) are candidates.
_STATIC_BEHIND, _VEHICLES_BEHIND, _AHEAD = 30.0, 40.0, 330.0

_CORNER_SELECT = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], bool)
_BOX_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8)
                       if bin(a ^ b).count("1") == 1])  # the 12 box edges, as corner index pairs


@dataclasses.dataclass
class GBuffer:
    depth: np.ndarray      # (H, W) z-depth, inf = sky
    prim_index: np.ndarray  # (H, W) primitive index, or PRIM_*
    face: np.ndarray       # (H, W) entering face: axis*2 + (D_axis > 0); SPHERE_FACE = sphere
    label: np.ndarray      # (H, W) internal class
    track: np.ndarray      # (H, W) track id, -1 none
    prims: Primitives
    rays: Rays
    C: np.ndarray
    R_wc: np.ndarray
    K: np.ndarray
    unoccluded: Dict[int, int]   # track -> pixels it would cover with nothing in front (inside the image)
    extents: Dict[int, Tuple[float, float, float, float]]  # track -> projected 3D box (umin, umax, vmin, vmax)
    vehicles: Dict[int, Vehicle]
    frame_index: int


@dataclasses.dataclass
class _ZBuffer:
    """The nearest hit so far per pixel; casting writes into these arrays in place."""

    depth: np.ndarray
    prim_index: np.ndarray
    face: np.ndarray

    @staticmethod
    def sky(height: int, width: int) -> "_ZBuffer":
        return _ZBuffer(np.full((height, width), np.inf), np.full((height, width), PRIM_SKY, np.int32),
                        np.full((height, width), _GROUND_FACE, np.int8))


# --------------------------------------------------------------------------------------------------
# Projection of boxes to the image
# --------------------------------------------------------------------------------------------------


def projected_bounds(lo, hi, R_wc, C, K):
    """Image-plane extents (umin, umax, vmin, vmax), each (N,), of boxes clipped to z >= near.

    Boxes entirely behind the near plane get empty extents (umin > umax).
    """
    corners = np.where(_CORNER_SELECT[None], hi[:, None, :], lo[:, None, :])
    corners_cam = (corners - C) @ R_wc.T
    a, b = corners_cam[:, _BOX_EDGES[:, 0]], corners_cam[:, _BOX_EDGES[:, 1]]
    za, zb = a[..., 2], b[..., 2]
    # Edges crossing the near plane contribute their crossing point, so clipped boxes keep their extent.
    straddle = (za - NEAR) * (zb - NEAR) < 0
    t = np.where(straddle, (NEAR - za) / np.where(straddle, zb - za, 1.0), 0.0)
    points = np.concatenate([corners_cam, a + t[..., None] * (b - a)], axis=1)
    valid = np.concatenate([corners_cam[..., 2] >= NEAR, straddle], axis=1)
    z = np.where(valid, points[..., 2], 1.0)
    u = K[0, 0] * points[..., 0] / z + K[0, 2]
    v = K[1, 1] * points[..., 1] / z + K[1, 2]
    big = 1e9
    return (np.where(valid, u, big).min(1), np.where(valid, u, -big).max(1),
            np.where(valid, v, big).min(1), np.where(valid, v, -big).max(1))


def _screen_windows(lo, hi, R_wc, C, K, height, width):
    """Conservative pixel windows (r0, r1, c0, c1) covering each box's projection."""
    if len(lo) == 0:
        return np.zeros((0, 4), int)
    umin, umax, vmin, vmax = projected_bounds(lo, hi, R_wc, C, K)
    windows = np.stack([np.clip(np.floor(vmin), 0, height), np.clip(np.ceil(vmax) + 1, 0, height),
                        np.clip(np.floor(umin), 0, width), np.clip(np.ceil(umax) + 1, 0, width)], 1).astype(int)
    windows[umin > umax] = 0
    return windows


# --------------------------------------------------------------------------------------------------
# Ray / primitive intersection
# --------------------------------------------------------------------------------------------------


def _slab(lo, hi, C, ix, iy, iz):
    """Ray/box slab test; lo, hi are (3,) or per-ray (3, n). Returns (s, tx_min, ty_min, tz_min), s = inf on a miss."""
    t1, t2 = (lo[0] - C[0]) * ix, (hi[0] - C[0]) * ix
    tx_near, tx_far = np.minimum(t1, t2), np.maximum(t1, t2)
    t1, t2 = (lo[1] - C[1]) * iy, (hi[1] - C[1]) * iy
    ty_near, ty_far = np.minimum(t1, t2), np.maximum(t1, t2)
    t1, t2 = (lo[2] - C[2]) * iz, (hi[2] - C[2]) * iz
    tz_near, tz_far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near = np.maximum(np.maximum(tx_near, ty_near), tz_near)
    t_far = np.minimum(np.minimum(tx_far, ty_far), tz_far)
    return np.where((t_near <= t_far) & (t_near > NEAR), t_near, np.inf), tx_near, ty_near, tz_near


def _sphere(center, radius, C, dx, dy, dz, norm2):
    """Ray/sphere: nearest s > near with |C + s D - c| = r, inf on a miss."""
    ox, oy, oz = C[0] - center[0], C[1] - center[1], C[2] - center[2]
    half_b = dx * ox + dy * oy + dz * oz
    discriminant = half_b * half_b - norm2 * (ox * ox + oy * oy + oz * oz - radius * radius)
    hit = discriminant >= 0
    t_near = (-half_b - np.sqrt(np.where(hit, discriminant, 0.0))) / norm2
    return np.where(hit & (t_near > NEAR), t_near, np.inf)


def _face_code(tx_near, ty_near, tz_near, dx, dy, dz):
    """Entering face of a box hit: axis * 2 + (D_axis > 0); the largest entry parameter names the axis."""
    axis = np.where((tx_near >= ty_near) & (tx_near >= tz_near), 0, np.where(ty_near >= tz_near, 1, 2))
    positive = np.where(axis == 0, dx > 0, np.where(axis == 1, dy > 0, dz > 0))
    return (axis * 2 + positive).astype(np.int8)


# --------------------------------------------------------------------------------------------------
# The geometry pass
# --------------------------------------------------------------------------------------------------


def cast_geometry(layout: SceneLayout, frame_index: int, K: np.ndarray, height: int, width: int, variation: str,
                  camera: int) -> GBuffer:
    """Ray-cast one frame: nearest surface, class and track per pixel, plus per-track visibility numbers."""
    if not 0 <= frame_index < MAX_FRAMES:
        raise ValueError(f"frame_index must be in [0, {MAX_FRAMES})")
    yaw = variation_yaw(variation)
    R_wc, C = camera_pose(layout, frame_index, variation=variation, camera=camera)
    rays = camera_rays(height, width, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), float(yaw),
                       float(layout.pitch))
    zbuffer = _ZBuffer.sky(height, width)
    _cast_ground_and_hood(layout, C, rays, zbuffer)

    prims, visible_vehicles = _primitives_near_camera(layout, frame_index, C[2])
    windows = _screen_windows(prims.lo, prims.hi, R_wc, C, K, height, width)
    area = np.clip(windows[:, 1] - windows[:, 0], 0, None) * np.clip(windows[:, 3] - windows[:, 2], 0, None)
    track_pixels: Dict[int, List[np.ndarray]] = {}  # track -> flat pixel indices its rays hit, occluded or not
    _cast_large_primitives(prims, np.flatnonzero(area > _BATCH_AREA), windows, C, rays, zbuffer, track_pixels)
    _cast_small_primitives(prims, np.flatnonzero((area > 0) & (area <= _BATCH_AREA)), windows, area, C, rays,
                           zbuffer, track_pixels)

    label, track = _label_pixels(layout, prims, zbuffer, C, rays)
    vehicles_by_track = {v.track_id: v for v in visible_vehicles}
    extents = _track_extents(track_pixels, vehicles_by_track, frame_index, R_wc, C, K)
    unoccluded = {t: int(np.unique(np.concatenate(p)).size) for t, p in track_pixels.items()}
    return GBuffer(zbuffer.depth, zbuffer.prim_index, zbuffer.face, label, track, prims, rays, C, R_wc, K,
                   unoccluded, extents, vehicles_by_track, frame_index)


def _cast_ground_and_hood(layout: SceneLayout, C, rays: Rays, zbuffer: _ZBuffer):
    dx, dy, dz = rays.d
    # Ground plane Y = 0 (camera at Y = -h): s = h / D_y for rays pointing down.
    down = dy > 1e-12
    zbuffer.depth[down] = (0.0 - C[1]) / dy[down]
    zbuffer.prim_index[down] = PRIM_GROUND
    if layout.ego_hood:
        # The bonnet: a plane 0.5 m below the camera reaching 2.4 m ahead, rounded towards the sides.
        s = np.where(down, 0.5 / np.where(down, dy, 1.0), np.inf)
        x_rel = s * dx + (C[0] - layout.ego_x)
        z_rel = s * dz
        hood = down & (np.abs(x_rel) < 1.0) & (z_rel > 0) & (z_rel < 2.4 - 0.6 * x_rel ** 2)
        zbuffer.depth[hood] = s[hood]
        zbuffer.prim_index[hood] = PRIM_HOOD


def _primitives_near_camera(layout: SceneLayout, frame_index: int, camera_z: float):
    """The static primitives and the vehicles (as primitives, and the list of them) near the camera's Z."""
    static = layout.prims
    keep = (static.hi[:, 2] > camera_z - _STATIC_BEHIND) & (static.lo[:, 2] < camera_z + _AHEAD)
    visible_vehicles = [v for v in layout.vehicles
                        if camera_z - _VEHICLES_BEHIND < v.z_at(frame_index) < camera_z + _AHEAD]
    prims = Primitives.concat([static.take(np.flatnonzero(keep)), vehicle_primitives(visible_vehicles, frame_index)])
    return prims, visible_vehicles


def _cast_large_primitives(prims: Primitives, indices, windows, C, rays: Rays, zbuffer: _ZBuffer, track_pixels):
    """One primitive at a time, on views of its screen window (no gathers)."""
    dx, dy, dz = rays.d
    width = zbuffer.depth.shape[1]
    for i in indices:
        r0, r1, c0, c1 = windows[i]
        window = (slice(r0, r1), slice(c0, c1))
        is_box = prims.kind[i] == 0
        if is_box:
            s, tx_near, ty_near, tz_near = _slab(prims.lo[i], prims.hi[i], C, rays.inv[0][window],
                                                 rays.inv[1][window], rays.inv[2][window])
        else:
            s = _sphere(prims.center[i], prims.radius[i], C, dx[window], dy[window], dz[window], rays.norm2[window])
        if prims.track[i] >= 0:
            rows, cols = np.nonzero(np.isfinite(s))
            track_pixels.setdefault(int(prims.track[i]), []).append((rows + r0) * width + cols + c0)
        depth_window = zbuffer.depth[window]
        closer = s < depth_window
        if closer.any():
            depth_window[closer] = s[closer]
            zbuffer.prim_index[window][closer] = i
            zbuffer.face[window][closer] = (
                _face_code(tx_near[closer], ty_near[closer], tz_near[closer], dx[window][closer],
                           dy[window][closer], dz[window][closer]) if is_box else SPHERE_FACE)


def _cast_small_primitives(prims: Primitives, indices, windows, area, C, rays: Rays, zbuffer: _ZBuffer,
                           track_pixels):
    """All small primitives together: one (primitive, pixel) pair per pixel of each primitive's window."""
    if not indices.size:
        return
    dx, dy, dz = rays.d
    width = zbuffer.depth.shape[1]
    pair_prim, pair_pixel = _window_pixel_pairs(indices, windows, area, width)
    n_pairs = len(pair_pixel)
    s = np.full(n_pairs, np.inf)
    tx_near = ty_near = tz_near = np.zeros(n_pairs)
    is_box = prims.kind[pair_prim] == 0
    at_pixel = lambda array, mask: np.take(array.reshape(-1), pair_pixel[mask])  # noqa: E731 - per-pair ray value
    if is_box.any():
        box_prims = pair_prim[is_box]
        s[is_box], bx, by, bz = _slab(prims.lo[box_prims].T, prims.hi[box_prims].T, C, at_pixel(rays.inv[0], is_box),
                                      at_pixel(rays.inv[1], is_box), at_pixel(rays.inv[2], is_box))
        tx_near, ty_near, tz_near = (np.zeros(n_pairs) for _ in range(3))
        tx_near[is_box], ty_near[is_box], tz_near[is_box] = bx, by, bz
    is_sphere = ~is_box
    if is_sphere.any():
        sphere_prims = pair_prim[is_sphere]
        s[is_sphere] = _sphere(prims.center[sphere_prims].T, prims.radius[sphere_prims], C, at_pixel(dx, is_sphere),
                               at_pixel(dy, is_sphere), at_pixel(dz, is_sphere), at_pixel(rays.norm2, is_sphere))
    hit = np.flatnonzero(np.isfinite(s))
    hit_tracks = prims.track[pair_prim[hit]]
    for t in np.unique(hit_tracks[hit_tracks >= 0]):
        track_pixels.setdefault(int(t), []).append(pair_pixel[hit[hit_tracks == t]])
    depth_flat = zbuffer.depth.reshape(-1)
    nearer = hit[s[hit] < depth_flat[pair_pixel[hit]]]
    nearer = nearer[np.argsort(s[nearer], kind="stable")]
    nearer = nearer[np.unique(pair_pixel[nearer], return_index=True)[1]]  # nearest candidate per pixel
    pixels = pair_pixel[nearer]
    depth_flat[pixels] = s[nearer]
    zbuffer.prim_index.reshape(-1)[pixels] = pair_prim[nearer]
    faces = np.where(is_box[nearer], _face_code(tx_near[nearer], ty_near[nearer], tz_near[nearer],
                                                dx.reshape(-1)[pixels], dy.reshape(-1)[pixels],
                                                dz.reshape(-1)[pixels]), SPHERE_FACE)
    zbuffer.face.reshape(-1)[pixels] = faces


def _window_pixel_pairs(indices, windows, area, width):
    """(primitive index, flat pixel index) for every pixel of every listed primitive's window, window by window."""
    pair_area = area[indices]
    pair_prim = np.repeat(indices, pair_area)
    k = np.arange(pair_area.sum()) - np.repeat(np.cumsum(pair_area) - pair_area, pair_area)  # index within window
    window_width = np.repeat(windows[indices, 3] - windows[indices, 2], pair_area)
    pair_pixel = ((np.repeat(windows[indices, 0], pair_area) + k // window_width) * width
                  + np.repeat(windows[indices, 2], pair_area) + k % window_width)
    return pair_prim, pair_pixel


def _label_pixels(layout: SceneLayout, prims: Primitives, zbuffer: _ZBuffer, C, rays: Rays):
    """Internal class and track id per pixel from what each pixel's ray hit."""
    prim_index, depth = zbuffer.prim_index, zbuffer.depth
    dx = rays.d[0]
    on_prim = prim_index >= 0
    label = np.empty(prim_index.shape, np.int16)
    label[on_prim] = prims.label[prim_index[on_prim]]
    label[prim_index == PRIM_SKY] = CLASS_INDEX["sky"]
    label[prim_index == PRIM_HOOD] = CLASS_INDEX["ego_vehicle"]
    on_ground = prim_index == PRIM_GROUND
    label[on_ground] = ground_label(layout, C[0] + depth[on_ground] * dx[on_ground])
    track = np.full(prim_index.shape, -1, np.int32)
    track[on_prim] = prims.track[prim_index[on_prim]]
    return label, track


def _track_extents(track_pixels, vehicles_by_track: Dict[int, Vehicle], frame_index: int, R_wc, C, K):
    """Projected 3D bounding box (umin, umax, vmin, vmax) of every track some ray hit."""
    if not track_pixels:
        return {}
    track_ids = sorted(track_pixels)
    vehicles = [vehicles_by_track[t] for t in track_ids]
    lo = np.array([[v.x - v.dims[0] / 2, -v.dims[1], v.z_at(frame_index) - v.dims[2] / 2] for v in vehicles])
    hi = np.array([[v.x + v.dims[0] / 2, 0.0, v.z_at(frame_index) + v.dims[2] / 2] for v in vehicles])
    extents = np.stack(projected_bounds(lo, hi, R_wc, C, K), 1)
    return {t: tuple(float(x) for x in e) for t, e in zip(track_ids, extents)}
