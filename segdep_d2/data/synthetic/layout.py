"""Scene layout: street cross-section, camera mount, sun, and the static things along the street.

One :class:`SceneLayout` is drawn per (scene name, seed, profile) by :func:`build_scene`; frames, cameras and
appearance variations of a scene all share it, so their geometry and labels agree.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Optional, Tuple

import numpy as np

from .constants import (
    CITYSCAPES_BASELINE,
    CLASS_INDEX,
    MAT_FACADE,
    MAT_FOLIAGE,
    MAT_ROUGH,
    MAT_SIGN,
    MAT_TRAFFIC_LIGHT,
    MAX_FRAMES,
    VKITTI2_BASELINE,
)
from .primitives import PrimitiveBuilder, Primitives, jitter_color
from .vehicles import Vehicle, build_vehicles


@dataclasses.dataclass
class SceneLayout:
    """Everything about a scene that does not change with the frame, camera or appearance variation.

    One layout is drawn per (scene name, seed, profile), so appearance variations share geometry and labels.
    """

    name: str
    seed: int
    profile: str           # "vkitti2" | "cityscapes"
    style: str             # "urban" | "suburban" | "rural" | "highway"
    camera_height: float   # metres above the ground
    pitch: float           # radians, > 0 looks down
    ego_x: float           # lateral position of Camera_0
    ego_speed: float       # metres per frame
    stereo_baseline: float
    ego_hood: bool         # Cityscapes frames show the recording car's bonnet
    lane_width: float
    lanes_right: int
    lanes_left: int
    median: float          # half width of the central strip (0: a painted centre line)
    parking: Tuple[float, float]   # parking strip width (left, right)
    sidewalk: Tuple[float, float]  # sidewalk width (left, right)
    road_color: np.ndarray
    sidewalk_color: np.ndarray
    terrain_color: np.ndarray
    sun: np.ndarray        # unit vector towards the sun (world frame)
    zebra_z: np.ndarray    # Z where crosswalks start
    prims: Primitives
    vehicles: Tuple[Vehicle, ...]

    @property
    def road_edges(self) -> Tuple[float, float]:
        """X of the left / right edge of the paved road (parking strips included)."""
        return (-self.median - self.lanes_left * self.lane_width - self.parking[0],
                self.median + self.lanes_right * self.lane_width + self.parking[1])


# The four training scenes of the default split cover every street type; the held-out Scene20 is
# another urban street (new layout, colours and traffic), so validation measures generalisation
# to unseen scenes rather than to a street type never trained on.
_STYLE_OF_SCENE = {"Scene01": "suburban", "Scene02": "urban", "Scene06": "highway",
                   "Scene18": "rural", "Scene20": "urban"}


def stable_seed(*items) -> np.random.SeedSequence:
    """Seed from strings / ints that is stable across processes (Python's hash() is salted)."""
    ints = [zlib.crc32(str(x).encode()) if not isinstance(x, (int, np.integer)) else int(x) & 0xFFFFFFFF
            for x in items]
    return np.random.SeedSequence(ints)


# --------------------------------------------------------------------------------------------------
# The layout as a whole
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def build_scene(name: str, seed: int = 0, *, profile: str = "vkitti2", style: Optional[str] = None) -> SceneLayout:
    """Draw the static layout and all vehicle tracks of scene ``name`` (cached; deterministic).

    ``profile`` picks camera mount conventions ("vkitti2": 1.5-1.7 m, no bonnet; "cityscapes": ~1.22 m,
    bonnet visible). ``style`` overrides the street type chosen from the name.
    """
    if profile not in ("vkitti2", "cityscapes"):
        raise ValueError(f"unknown profile {profile!r}")
    # Every draw below comes from this one generator, in a fixed order: reordering draws changes the scene.
    rng = np.random.default_rng(stable_seed(seed, name, profile))
    if style is None:
        style = _STYLE_OF_SCENE.get(name) or str(rng.choice(["urban", "suburban", "rural", "highway"],
                                                            p=[0.4, 0.3, 0.2, 0.1]))
    if profile == "cityscapes":
        camera_height, pitch = rng.uniform(1.18, 1.26), np.deg2rad(rng.uniform(1.6, 2.6))
        baseline = CITYSCAPES_BASELINE
    else:
        camera_height, pitch = rng.uniform(1.5, 1.7), np.deg2rad(rng.uniform(0.3, 1.5))
        baseline = VKITTI2_BASELINE

    lane_width = rng.uniform(3.2, 3.6)
    lanes_right, lanes_left, median, parking, sidewalk, ego_speed = _cross_section(style, rng)
    ego_lane = int(rng.integers(0, lanes_right))
    ego_x = median + (ego_lane + 0.5) * lane_width

    sun_azimuth, sun_elevation = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(30, 55))
    sun = np.array([np.cos(sun_elevation) * np.sin(sun_azimuth), -np.sin(sun_elevation),
                    np.cos(sun_elevation) * np.cos(sun_azimuth)])

    # The street extends from behind the first frame to well beyond what the last frame can see.
    z_lo, z_hi = -60.0, ego_speed * MAX_FRAMES + 320.0
    zebra = np.array([], float)
    if style in ("urban", "suburban"):
        zebra = np.sort(rng.uniform(z_lo + 40, z_hi, int((z_hi - z_lo) / rng.uniform(90, 160))))

    layout = SceneLayout(
        name=name, seed=seed, profile=profile, style=style, camera_height=float(camera_height),
        pitch=float(pitch), ego_x=float(ego_x), ego_speed=float(ego_speed), stereo_baseline=baseline,
        ego_hood=profile == "cityscapes", lane_width=float(lane_width), lanes_right=lanes_right,
        lanes_left=lanes_left, median=float(median), parking=parking, sidewalk=sidewalk,
        road_color=jitter_color(rng, (0.30, 0.30, 0.31), 0.06),
        sidewalk_color=jitter_color(rng, rng.choice([(0.55, 0.54, 0.52), (0.55, 0.42, 0.38), (0.48, 0.48, 0.5)]),
                                    0.05),
        terrain_color=jitter_color(rng, (0.30, 0.40, 0.16), 0.06),
        sun=sun, zebra_z=zebra, prims=Primitives.empty(), vehicles=(),
    )
    layout.prims = _build_static(layout, rng, z_lo, z_hi)
    layout.vehicles = build_vehicles(layout, rng)
    return layout


def _cross_section(style: str, rng):
    """(lanes right, lanes left, median half width, parking widths, sidewalk widths, ego speed) of a street type."""
    if style == "highway":
        lanes_right, lanes_left, median = int(rng.integers(2, 4)), int(rng.integers(2, 4)), rng.uniform(0.8, 1.4)
        parking, sidewalk = (0.0, 0.0), (0.0, 0.0)
        ego_speed = rng.uniform(1.3, 1.9)
    elif style == "rural":
        lanes_right = lanes_left = 1
        median, parking, sidewalk = 0.0, (0.0, 0.0), (0.0, 0.0)
        ego_speed = rng.uniform(0.9, 1.3)
    else:
        lanes_right, lanes_left = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if style == "urban" else (1, 1)
        median = 0.0
        parking = tuple(float(rng.uniform(2.1, 2.5)) if rng.random() < 0.7 else 0.0 for _ in range(2))
        sidewalk = tuple(float(rng.uniform(2.0, 4.0)) for _ in range(2))
        ego_speed = rng.uniform(0.6, 1.0)
    return lanes_right, lanes_left, median, parking, sidewalk, ego_speed


def ground_zones(layout: SceneLayout, X):
    """Boolean masks (road, sidewalk) for ground points at lateral position X."""
    x_left, x_right = layout.road_edges
    road = (X > x_left) & (X < x_right) & (np.abs(X) >= layout.median)
    sidewalk = (((X >= x_right) & (X < x_right + layout.sidewalk[1]))
                | ((X <= x_left) & (X > x_left - layout.sidewalk[0])))
    return road, sidewalk


def ground_label(layout: SceneLayout, X):
    """Internal class (road / sidewalk / terrain) of ground points at lateral position X."""
    road, sidewalk = ground_zones(layout, X)
    return np.where(road, CLASS_INDEX["road"],
                    np.where(sidewalk, CLASS_INDEX["sidewalk"], CLASS_INDEX["terrain"])).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# Static things along the street
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _StreetSide:
    """One side of the street: lateral distances from the centre line map to world X by ``sign``."""

    sign: int              # -1 left, +1 right
    edge: float            # distance of the road edge from X = 0
    sidewalk: float        # sidewalk width on this side (0: none)

    def x(self, distance):
        return self.sign * distance

    def x_interval(self, d0, d1):
        """Lateral interval [d0, d1] from the centre -> (lo_x, hi_x)."""
        return (min(self.x(d0), self.x(d1)), max(self.x(d0), self.x(d1)))


def _build_static(layout: SceneLayout, rng, z_lo, z_hi) -> Primitives:
    builder = PrimitiveBuilder()
    x_left, x_right = layout.road_edges
    for sign in (-1, 1):
        side = _StreetSide(sign, x_right if sign > 0 else -x_left, layout.sidewalk[1 if sign > 0 else 0])
        # The order of these calls is the order of their random draws.
        if layout.style != "highway":
            _add_buildings(builder, rng, layout, side, z_lo, z_hi)
        _add_poles(builder, rng, side, z_lo, z_hi)
        _add_signs(builder, rng, side, z_lo, z_hi)
        _add_traffic_lights(builder, rng, layout, side)
        _add_trees(builder, rng, layout, side, z_lo, z_hi)
        if side.sidewalk > 0:
            _add_sidewalk_clutter(builder, rng, side, z_lo, z_hi)
        if layout.style in ("rural", "highway"):
            _add_roadside_guard_rails(builder, rng, layout, side, z_lo, z_hi)
    if layout.median > 0:  # central barrier
        z = z_lo
        while z < z_hi:
            _guard_rail(builder, 0.0, z, z + 60.0)
            z += 60.0
    return builder.freeze()


_FACADE_COLORS = [(0.75, 0.72, 0.65), (0.62, 0.45, 0.35), (0.8, 0.78, 0.74), (0.55, 0.55, 0.57),
                  (0.72, 0.62, 0.45), (0.5, 0.32, 0.25), (0.85, 0.85, 0.8), (0.45, 0.5, 0.52)]


def _add_buildings(builder: PrimitiveBuilder, rng, layout: SceneLayout, side: _StreetSide, z_lo, z_hi):
    """Facades along the street, some set back, alleys between them."""
    z = z_lo + rng.uniform(0, 10)
    while z < z_hi:
        if layout.style == "urban":
            length, height = rng.uniform(8, 26), rng.uniform(7, 24)
            setback, gap = rng.uniform(0, 2.5), (rng.uniform(2, 7) if rng.random() < 0.25 else 0.0)
        elif layout.style == "suburban":
            length, height = rng.uniform(8, 16), rng.uniform(5, 10)
            setback, gap = rng.uniform(3, 10), rng.uniform(4, 14)
        else:  # rural: the odd farm house far from the road
            length, height = rng.uniform(8, 18), rng.uniform(4, 9)
            setback, gap = rng.uniform(15, 40), rng.uniform(40, 160)
            if rng.random() < 0.5:
                z += length + gap
                continue
        front = side.edge + side.sidewalk + setback
        lo_x, hi_x = side.x_interval(front, front + rng.uniform(8, 14))
        color = jitter_color(rng, rng.choice(_FACADE_COLORS), 0.08)
        floor_height = rng.uniform(2.9, 3.6)
        # Facade parameters: floor height, window spacing, window width fraction, style (0: shop front).
        param = (floor_height, rng.uniform(1.6, 3.2), rng.uniform(0.35, 0.7), float(rng.integers(0, 3)))
        builder.box((lo_x, -height, z), (hi_x, 0.0, z + length), "building", MAT_FACADE, color, param)
        # Suburban front yards are fenced by a hedge along the sidewalk.
        if layout.style == "suburban" and rng.random() < 0.6:
            hedge_lo_x, hedge_hi_x = side.x_interval(side.edge + side.sidewalk + 0.3, side.edge + side.sidewalk + 1.0)
            hedge_height = rng.uniform(0.8, 1.6)
            builder.box((hedge_lo_x, -hedge_height, z - gap * 0.5), (hedge_hi_x, 0.0, z + length + gap * 0.4),
                        "vegetation", MAT_FOLIAGE, jitter_color(rng, (0.16, 0.32, 0.10), 0.05))
        z += length + gap


def _add_poles(builder: PrimitiveBuilder, rng, side: _StreetSide, z_lo, z_hi):
    """Lamp / utility poles on the sidewalk or the verge."""
    z = z_lo + rng.uniform(0, 20)
    while z < z_hi:
        distance = side.edge + (0.45 if side.sidewalk > 0 else rng.uniform(0.8, 2.0))
        _pole(builder, rng, side.x(distance), z, rng.uniform(5.0, 8.0))
        z += rng.uniform(22, 40)


def _add_signs(builder: PrimitiveBuilder, rng, side: _StreetSide, z_lo, z_hi):
    """Signs facing oncoming traffic of this side's lanes."""
    z = z_lo + rng.uniform(0, 40)
    while z < z_hi:
        distance = side.edge + (0.6 if side.sidewalk > 0 else rng.uniform(0.6, 1.5))
        _sign(builder, rng, side.x(distance), z)
        z += rng.uniform(35, 90)


def _add_traffic_lights(builder: PrimitiveBuilder, rng, layout: SceneLayout, side: _StreetSide):
    """Traffic lights guard each crosswalk, before it as seen by this side's traffic."""
    for zebra_z in layout.zebra_z:
        distance = side.edge + (0.5 if side.sidewalk > 0 else 1.0)
        _traffic_light(builder, rng, side.x(distance), zebra_z - 1.0 if side.sign > 0 else zebra_z + 5.0)


def _add_trees(builder: PrimitiveBuilder, rng, layout: SceneLayout, side: _StreetSide, z_lo, z_hi):
    """A row along urban sidewalks, irregular clumps and bushes in the countryside."""
    if layout.style in ("urban", "suburban"):
        z = z_lo + rng.uniform(0, 10)
        while z < z_hi:
            if rng.random() < 0.7:
                _tree(builder, rng, side.x(side.edge + max(side.sidewalk - 0.9, 0.9)), z, scale=rng.uniform(0.7, 1.1))
            z += rng.uniform(8, 16)
        return
    z = z_lo
    while z < z_hi:
        distance = side.edge + rng.uniform(3.5, 30.0) + (1.5 if layout.style == "highway" else 0.0)
        if rng.random() < 0.75:
            _tree(builder, rng, side.x(distance), z, scale=rng.uniform(0.8, 1.5))
        else:
            radius = rng.uniform(0.6, 1.6)
            builder.sphere((side.x(distance), -radius * 0.55, z), radius, "vegetation", MAT_FOLIAGE,
                           jitter_color(rng, (0.2, 0.35, 0.1), 0.07))
        z += rng.uniform(3.0, 9.0)


_CLUTTER_COLORS = [(0.2, 0.3, 0.2), (0.5, 0.5, 0.5), (0.3, 0.2, 0.15)]


def _add_sidewalk_clutter(builder: PrimitiveBuilder, rng, side: _StreetSide, z_lo, z_hi):
    """Bins, boxes and benches near the outer edge of the sidewalk."""
    z = z_lo + rng.uniform(0, 30)
    while z < z_hi:
        width, height, length = rng.uniform(0.5, 1.2), rng.uniform(0.6, 1.3), rng.uniform(0.5, 1.8)
        distance = side.edge + side.sidewalk - rng.uniform(0.2, 0.8) - width
        lo_x, hi_x = side.x_interval(distance, distance + width)
        builder.box((lo_x, -height, z), (hi_x, 0.0, z + length), "misc", MAT_ROUGH,
                    jitter_color(rng, rng.choice(_CLUTTER_COLORS), 0.1))
        z += rng.uniform(25, 70)


def _add_roadside_guard_rails(builder: PrimitiveBuilder, rng, layout: SceneLayout, side: _StreetSide, z_lo, z_hi):
    """Guard rails in stretches: continuous on highways, with gaps (and some stretches left out) on rural roads."""
    z = z_lo
    while z < z_hi:
        length = rng.uniform(40, 160)
        if layout.style == "highway" or rng.random() < 0.5:
            _guard_rail(builder, side.x(side.edge + 0.5), z, z + length)
        z += length + (0.0 if layout.style == "highway" else rng.uniform(10, 60))


def _pole(builder: PrimitiveBuilder, rng, x, z, height):
    thickness = rng.uniform(0.12, 0.2)
    builder.box((x - thickness / 2, -height, z - thickness / 2), (x + thickness / 2, 0.0, z + thickness / 2), "pole",
                MAT_ROUGH, jitter_color(rng, (0.45, 0.46, 0.47), 0.08))


_SIGN_COLORS = [(0.8, 0.1, 0.1), (0.1, 0.25, 0.7), (0.9, 0.75, 0.1), (0.15, 0.35, 0.75)]  # per design


def _sign(builder: PrimitiveBuilder, rng, x, z):
    mount_height = rng.uniform(2.0, 2.8)
    _pole(builder, rng, x, z, mount_height + 0.3)
    plate_width = rng.uniform(0.55, 0.9)
    plate_height = plate_width * rng.uniform(0.9, 1.1)
    design = int(rng.integers(0, 4))
    # Plate thin along Z, in front of the pole (-Z side), so its front faces the approaching camera.
    builder.box((x - plate_width / 2, -mount_height - plate_height / 2, z - 0.15),
                (x + plate_width / 2, -mount_height + plate_height / 2, z - 0.1), "traffic_sign", MAT_SIGN,
                _SIGN_COLORS[design], (design, 0, 0, 0))


def _traffic_light(builder: PrimitiveBuilder, rng, x, z):
    mount_height = rng.uniform(2.4, 3.2)
    _pole(builder, rng, x, z, mount_height + 0.9)
    housing_width = rng.uniform(0.3, 0.4)
    lit_lamp = int(rng.integers(0, 3))  # 0 red, 1 amber, 2 green
    builder.box((x - housing_width / 2, -mount_height - 0.9, z - 0.35), (x + housing_width / 2, -mount_height, z - 0.1),
                "traffic_light", MAT_TRAFFIC_LIGHT, (0.08, 0.08, 0.08), (lit_lamp, 0, 0, 0))


def _tree(builder: PrimitiveBuilder, rng, x, z, scale=1.0):
    trunk_height, trunk_width = rng.uniform(2.0, 3.5) * scale, rng.uniform(0.2, 0.35) * scale
    bark = jitter_color(rng, (0.3, 0.22, 0.15), 0.05)
    # The trunk reaches 0.3 m into the crown so no gap shows under it.
    builder.box((x - trunk_width / 2, -trunk_height - 0.3, z - trunk_width / 2),
                (x + trunk_width / 2, 0.0, z + trunk_width / 2), "tree", MAT_ROUGH, bark)
    leaf = jitter_color(rng, (0.17, 0.33, 0.09), 0.07)
    radius = rng.uniform(1.6, 2.8) * scale
    builder.sphere((x, -trunk_height - radius * 0.7, z), radius, "tree", MAT_FOLIAGE, leaf)
    if rng.random() < 0.6:  # a second, smaller crown off-centre
        radius2 = radius * rng.uniform(0.55, 0.8)
        builder.sphere((x + rng.uniform(-0.6, 0.6) * radius, -trunk_height - radius * 1.3,
                        z + rng.uniform(-0.6, 0.6) * radius), radius2,
                       "tree", MAT_FOLIAGE, np.clip(leaf * rng.uniform(0.85, 1.15), 0, 1))


def _guard_rail(builder: PrimitiveBuilder, x, z0, z1):
    builder.box((x - 0.05, -0.78, z0), (x + 0.05, -0.45, z1), "guard_rail", MAT_ROUGH, (0.62, 0.63, 0.64))
