"""Material textures of primitives: facades, rough surfaces, foliage, signs, traffic lights and vehicles.

Each material turns world hit points into base colours (before lighting); foliage also yields sphere normals
and traffic lights flag their lit lamp as emissive.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np

from .constants import (
    MAT_FACADE,
    MAT_FOLIAGE,
    MAT_ROUGH,
    MAT_SIGN,
    MAT_TRAFFIC_LIGHT,
    MAT_VEHICLE_BODY,
    MAT_VEHICLE_CABIN,
    MAT_VEHICLE_CARGO,
)
from .noise import lattice_hash
from .primitives import Primitives
from .raycast import SPHERE_FACE

_FRONT_FACE = 5  # entered through the -Z face: the side facing the approaching camera
_WHITE = (0.92, 0.92, 0.9)

MaterialResult = Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]  # colours, normals, emissive


def primitive_columns(prims: Primitives) -> Dict[str, np.ndarray]:
    """Per-primitive attributes as contiguous 1D arrays: 1D gathers are ~10x faster than row gathers."""
    columns = {f"lo{k}": np.ascontiguousarray(prims.lo[:, i], np.float32) for i, k in enumerate("xyz")}
    columns.update({f"hi{k}": np.ascontiguousarray(prims.hi[:, i], np.float32) for i, k in enumerate("xyz")})
    columns.update({f"p{i}": np.ascontiguousarray(prims.param[:, i]) for i in range(4)})
    columns.update({f"c{k}": np.ascontiguousarray(prims.center[:, i], np.float32) for i, k in enumerate("xyz")})
    columns["r"] = prims.radius.astype(np.float32)
    return columns


@dataclasses.dataclass
class _Surface:
    """The hit points of one material group and what every material texture starts from."""

    X: np.ndarray          # float32 world hit points
    Y: np.ndarray
    Z: np.ndarray
    face: np.ndarray       # entering face code per point
    axis: np.ndarray       # face // 2: 0 X, 1 Y (top / bottom), 2 Z
    prim_index: np.ndarray
    columns: Dict[str, np.ndarray]
    base: np.ndarray       # (n, 3) primitive base colour, modified in place by the texture
    grain: np.ndarray      # per-point hash in [0, 1) on a 1/9 m lattice
    height: np.ndarray     # above the ground (-Y)
    brightness: np.ndarray  # 0.86 + 0.2 * grain, the default grain multiplier

    def attribute(self, key: str) -> np.ndarray:
        """Per-point value of a per-primitive attribute (see :func:`primitive_columns`)."""
        return self.columns[key][self.prim_index]


def material_colors(material: int, X, Y, Z, face, prims: Primitives, columns, prim_index) -> MaterialResult:
    """Base colours (n, 3), sphere normals (or None) and emissive flags (or None) for one material group.

    X, Y, Z are float32 world hit points; ``columns`` comes from :func:`primitive_columns`.
    """
    grain = lattice_hash(np.floor(X * 9), np.floor(Y * 9), np.floor(Z * 9), salt=material + 31)
    surface = _Surface(X=X, Y=Y, Z=Z, face=face, axis=face // 2, prim_index=prim_index, columns=columns,
                       base=np.take(prims.color, prim_index, axis=0), grain=grain, height=-Y,
                       brightness=0.86 + 0.2 * grain)
    normals, emissive = None, None
    if material == MAT_FACADE:
        _facade(surface)
    elif material == MAT_ROUGH:
        surface.base *= (0.8 + 0.3 * grain)[:, None]
    elif material == MAT_FOLIAGE:
        normals = _foliage(surface)
    elif material == MAT_SIGN:
        _sign(surface)
    elif material == MAT_TRAFFIC_LIGHT:
        emissive = _traffic_light(surface)
    elif material in (MAT_VEHICLE_BODY, MAT_VEHICLE_CABIN, MAT_VEHICLE_CARGO):
        _vehicle(surface, material)
    return np.clip(surface.base, 0, 1.5), normals, emissive


# --------------------------------------------------------------------------------------------------
# Buildings
# --------------------------------------------------------------------------------------------------


def _facade(surface: _Surface):
    """Rows of windows per floor (a shop front on some ground floors), sills, a dark cornice, a grey roof."""
    at, axis, height = surface.attribute, surface.axis, surface.height
    wall = axis != 1
    # u runs along the facade from its start, whichever axis the wall faces.
    lo_u = np.where(axis == 0, at("loz"), at("lox"))
    u = np.where(axis == 0, surface.Z, surface.X) - lo_u
    u_length = np.where(axis == 0, at("hiz"), at("hix")) - lo_u
    building_height = -at("loy")
    floor_height, spacing, window_fraction, style = at("p0"), at("p1"), at("p2"), at("p3")
    cell_u, cell_v = u / spacing, height / floor_height
    frac_u, frac_v = cell_u % 1.0, cell_v % 1.0
    column, floor = np.floor(cell_u), np.floor(cell_v)
    inner = wall & (u > 0.4) & (u < u_length - 0.4)
    off_centre = np.abs(frac_u - 0.5)
    window = (inner & (off_centre < window_fraction / 2) & (frac_v > 0.3) & (frac_v < 0.78) & (floor >= 1)
              & (height < building_height - 0.7))
    shop = inner & (style == 0) & (floor == 0) & (frac_v > 0.12) & (frac_v < 0.8) & (off_centre < 0.42)
    sill = wall & (off_centre < window_fraction / 2 + 0.05) & (frac_v > 0.25) & (frac_v <= 0.3) & (floor >= 1)
    cornice = wall & (height > building_height - 0.35)
    brightness = surface.brightness * np.where(sill, 0.7, 1.0) * np.where(cornice, 0.6, 1.0)
    base = surface.base
    base *= brightness[:, None]
    glass = np.flatnonzero(window | shop)
    if glass.size:
        base[glass] = _window_glass(column[glass], floor[glass], surface.prim_index[glass])
    roof = np.flatnonzero(axis == 1)
    base[roof] = (0.25 + 0.1 * surface.grain[roof])[:, None] * np.array([1.0, 0.95, 0.9], np.float32)


def _window_glass(column, floor, prim_index):
    """Dark glass, one shade per window, and a few lit rooms."""
    shade = lattice_hash(column, floor, prim_index, salt=77)
    colors = np.stack([0.10 + 0.25 * shade, 0.13 + 0.27 * shade, 0.18 + 0.3 * shade], 1)
    colors[shade > 0.93] = (0.9, 0.8, 0.5)
    return colors


# --------------------------------------------------------------------------------------------------
# Vegetation and street furniture
# --------------------------------------------------------------------------------------------------


def _foliage(surface: _Surface) -> Optional[np.ndarray]:
    """Leafy speckle; returns unit normals for sphere hits (crowns), so they are lit as round."""
    X, Y, Z = surface.X, surface.Y, surface.Z
    leaf = lattice_hash(np.floor(X * 5), np.floor(Y * 5), np.floor(Z * 5), salt=41)
    surface.base *= (0.55 + 0.6 * leaf)[:, None]
    surface.base[:, 0] += 0.06 * (surface.grain - 0.5)
    on_sphere = surface.face == SPHERE_FACE
    if not on_sphere.any():
        return None
    normals = np.zeros((len(surface.prim_index), 3), np.float32)
    sphere_prims = surface.prim_index[on_sphere]
    radius = surface.columns["r"][sphere_prims]
    normals[on_sphere, 0] = (X[on_sphere] - surface.columns["cx"][sphere_prims]) / radius
    normals[on_sphere, 1] = (Y[on_sphere] - surface.columns["cy"][sphere_prims]) / radius
    normals[on_sphere, 2] = (Z[on_sphere] - surface.columns["cz"][sphere_prims]) / radius
    return normals


def _sign(surface: _Surface):
    """Four plate designs (param 0) painted on the front; the back is plain grey."""
    at, base = surface.attribute, surface.base
    front = surface.face == _FRONT_FACE
    lox, hix, loy, hiy = at("lox"), at("hix"), at("loy"), at("hiy")
    # Plate coordinates in [-1, 1] from its centre.
    du = (surface.X - (lox + hix) / 2) / ((hix - lox) / 2)
    dv = (surface.Y - (loy + hiy) / 2) / ((hiy - loy) / 2)
    radius = np.sqrt(du ** 2 + dv ** 2)
    design = at("p0")
    white = np.array(_WHITE, np.float32)
    base[(design == 0) & (radius < 0.68)] = white  # red ring
    base[(design == 1) & (np.abs(du) < 0.15) & (np.abs(dv) < 0.6)] = white  # white bar
    base[((design == 0) | (design == 1)) & (radius > 1.0)] = 0.55  # round designs: grey plate corners
    base[(design == 2) & (np.abs(du) + np.abs(dv) > 0.75)] = white  # diamond
    base[(design == 3) & ((np.abs(du) > 0.85) | (np.abs(dv) > 0.85))] = white  # white frame
    base[~front] = 0.5


_LAMP_COLORS = np.array([[1.0, 0.15, 0.1], [1.0, 0.7, 0.1], [0.2, 1.0, 0.45]], np.float32)  # red, amber, green


def _traffic_light(surface: _Surface) -> np.ndarray:
    """Three round lamps on the front face; the lit one (param 0) is emissive. Returns the emissive mask."""
    at, base = surface.attribute, surface.base
    front = surface.face == _FRONT_FACE
    lox, hix, loy, hiy = at("lox"), at("hix"), at("loy"), at("hiy")
    housing_height = hiy - loy
    rel = (surface.Y - loy) / housing_height  # 0 at the top
    lamp_index = np.clip(np.floor(rel * 3), 0, 2)
    dv = (rel * 3 - lamp_index - 0.5) * housing_height / 3
    du = surface.X - (lox + hix) / 2
    lamp = front & (du ** 2 + dv ** 2 < (0.33 * (hix - lox)) ** 2)
    lit = lamp & (lamp_index == at("p0"))
    base *= (0.8 + 0.4 * surface.grain)[:, None]
    base[lamp] = 0.12
    base[lit] = _LAMP_COLORS[lamp_index[lit].astype(int)]
    return lit


# --------------------------------------------------------------------------------------------------
# Vehicles
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _VehicleBox:
    """Where on a vehicle box each hit point lies."""

    loz: np.ndarray
    hiz: np.ndarray
    lox: np.ndarray
    hix: np.ndarray
    top_height: np.ndarray  # the box top above the ground
    z_center: np.ndarray
    half_length: np.ndarray
    on_side: np.ndarray     # X faces
    on_end: np.ndarray      # Z faces
    on_top: np.ndarray
    on_front: np.ndarray    # the end the vehicle drives towards


def _vehicle(surface: _Surface, material: int):
    at, axis, face = surface.attribute, surface.axis, surface.face
    heading = at("p0")
    loz, hiz = at("loz"), at("hiz")
    on_end = axis == 2
    box = _VehicleBox(
        loz=loz, hiz=hiz, lox=at("lox"), hix=at("hix"), top_height=-at("loy"), z_center=(loz + hiz) / 2,
        half_length=(hiz - loz) / 2, on_side=axis == 0, on_end=on_end, on_top=axis == 1,
        # Entered through the -Z face (code 5) = face normal -Z; the front face's normal is the heading.
        on_front=on_end & (np.where(face == _FRONT_FACE, -1.0, 1.0) == heading),
    )
    base = surface.base
    base *= surface.brightness[:, None]  # metallic flakes
    base[box.on_top] = base[box.on_top] * 0.8 + 0.15  # glossy roof mirrors the sky
    if material == MAT_VEHICLE_BODY:
        _vehicle_body(surface, box)
    elif material == MAT_VEHICLE_CABIN:
        _vehicle_cabin(surface, box)
    else:
        _vehicle_cargo(surface, box)


def _vehicle_body(surface: _Surface, box: _VehicleBox):
    """Bumpers, wheels, head / tail lights; a truck cab (param 1) also gets its windows here."""
    base, height, grain = surface.base, surface.height, surface.grain
    is_truck_cab = surface.attribute("p1") > 0
    base[height < 0.28] = 0.06  # bumpers, sills
    axle_distance = np.minimum(np.abs(surface.Z - (box.z_center + 0.62 * box.half_length)),
                               np.abs(surface.Z - (box.z_center - 0.62 * box.half_length)))
    wheel = box.on_side & (axle_distance ** 2 + (height - 0.33) ** 2 < 0.33 ** 2)
    base[wheel] = (0.04 + 0.05 * grain[wheel])[:, None]
    top = box.top_height
    light_band = ((height > 0.55 * top) & (height < 0.8 * top)
                  & (np.abs(surface.X - (box.lox + box.hix) / 2) > 0.55 * (box.hix - box.lox) / 2))
    base[box.on_front & light_band & ~is_truck_cab] = (0.95, 0.95, 0.85)  # headlights
    base[box.on_end & ~box.on_front & light_band] = (0.7, 0.04, 0.04)  # tail lights
    cab_window = np.flatnonzero(is_truck_cab & (height > 0.6 * top) & (height < 0.93 * top) & ~box.on_top)
    base[cab_window] = (0.12 + 0.15 * (height[cab_window] / top[cab_window]))[:, None]


def _vehicle_cabin(surface: _Surface, box: _VehicleBox):
    """Glass all round, between the roof frame, the waist line and the pillars."""
    base, height, Z = surface.base, surface.height, surface.Z
    bottom_height = -surface.attribute("hiy")
    frame = (height > box.top_height - 0.07) | (height < bottom_height + 0.05)
    pillar = box.on_side & ((np.abs(Z - box.loz) < 0.12) | (np.abs(Z - box.hiz) < 0.12)
                            | (np.abs(Z - box.z_center) < 0.06))
    glass = np.flatnonzero(~box.on_top & ~frame & ~pillar)
    reflection = np.clip((height[glass] - bottom_height[glass])
                         / np.maximum(box.top_height[glass] - bottom_height[glass], 1e-3), 0, 1)
    base[glass] = (0.08 + 0.22 * reflection)[:, None] * np.array([0.9, 1.0, 1.1], np.float32)


def _vehicle_cargo(surface: _Surface, box: _VehicleBox):
    """Ribbed panels on a truck's cargo box."""
    base = surface.base
    base[box.on_side & ((surface.Z % 0.6) < 0.06)] *= 0.75
    base[surface.height < 0.25] = 0.06
