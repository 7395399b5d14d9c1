"""Ground textures: asphalt with lane markings and crosswalks, tiled sidewalks with kerbs, grass and dirt."""

from __future__ import annotations

import numpy as np

from .layout import SceneLayout, ground_zones
from .noise import lattice_hash, value_noise

_MARKING_HALF_WIDTH = 0.065  # metres
_ZEBRA_LENGTH = 4.0  # metres along Z


def marking_lines(layout: SceneLayout):
    """(X, dash period, painted length) of each longitudinal marking; period 0 = solid line."""
    lane_width = layout.lane_width
    lines = [(layout.median + layout.lanes_right * lane_width, 0.0, 0.0),
             (-layout.median - layout.lanes_left * lane_width, 0.0, 0.0)]
    if layout.median > 0:
        lines += [(layout.median, 0.0, 0.0), (-layout.median, 0.0, 0.0)]
    else:
        lines.append((0.0, 12.0, 6.0) if layout.style == "rural" else (0.0, 0.0, 0.0))
    lines += [(layout.median + i * lane_width, 9.0, 3.0) for i in range(1, layout.lanes_right)]
    lines += [(-layout.median - i * lane_width, 9.0, 3.0) for i in range(1, layout.lanes_left)]
    return lines


def ground_colors(layout: SceneLayout, X, Z) -> np.ndarray:
    """Base colours (n, 3) float32 of ground points at (X, Z), before lighting."""
    road, sidewalk = ground_zones(layout, X)
    colors = np.empty((len(X), 3), np.float32)
    fine = lattice_hash(np.floor(X * 12), np.floor(Z * 12), salt=layout.seed + 1)  # grain shared by all zones
    road_index = np.flatnonzero(road)
    if road_index.size:
        colors[road_index] = _asphalt_colors(layout, X[road_index], Z[road_index], fine[road_index])
    if sidewalk.any():
        colors[sidewalk] = _sidewalk_colors(layout, X[sidewalk], Z[sidewalk])
    terrain = ~(road | sidewalk)
    if terrain.any():
        colors[terrain] = _terrain_colors(layout, X[terrain], Z[terrain], fine[terrain])
    return colors


def _asphalt_colors(layout: SceneLayout, X, Z, fine):
    """Grain and patches, white lane markings and zebra crossings."""
    coarse = value_noise(X * 0.4, Z * 0.25, salt=layout.seed + 2)
    colors = layout.road_color.astype(np.float32) * (0.8 + 0.12 * fine + 0.16 * coarse)[:, None]
    painted = np.zeros(X.size, bool)
    for x, period, painted_length in marking_lines(layout):
        on_line = np.abs(X - x) < _MARKING_HALF_WIDTH
        if period:
            on_line &= (Z % period) < painted_length
        painted |= on_line
    z_min, z_max = Z.min(), Z.max()
    for zebra_z in layout.zebra_z[(layout.zebra_z > z_min - _ZEBRA_LENGTH) & (layout.zebra_z < z_max)]:
        painted |= (Z > zebra_z) & (Z < zebra_z + _ZEBRA_LENGTH) & ((X % 1.0) < 0.5)
    colors[painted] = (0.78 + 0.12 * fine[painted])[:, None] * np.array([1.0, 1.0, 0.97], np.float32)
    return colors


def _sidewalk_colors(layout: SceneLayout, X, Z):
    """Half-metre tiles with joints, kerb stones along the road."""
    tile_x, tile_z = X / 0.5, Z / 0.5
    tile = lattice_hash(np.floor(tile_x), np.floor(tile_z), salt=layout.seed + 3)
    joint = ((tile_x % 1.0) < 0.06) | ((tile_z % 1.0) < 0.06)
    colors = layout.sidewalk_color.astype(np.float32) * (0.85 + 0.2 * tile - 0.25 * joint)[:, None]
    x_left, x_right = layout.road_edges
    kerb = (np.abs(X - x_right) < 0.25) | (np.abs(X - x_left) < 0.25)
    colors[kerb] = 0.62 + 0.05 * tile[kerb, None]
    return colors


def _terrain_colors(layout: SceneLayout, X, Z, fine):
    """Grass with blotches of dirt."""
    blotch = value_noise(X * 0.3, Z * 0.3, salt=layout.seed + 4)[:, None] * 0.6
    dirt = np.array([0.40, 0.33, 0.22], np.float32)
    return (layout.terrain_color.astype(np.float32) * (1 - blotch) + dirt * blotch) * (0.75 + 0.4 * fine)[:, None]
