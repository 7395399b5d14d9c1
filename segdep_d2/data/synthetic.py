"""Procedural street scenes with exact metric depth, written in the real on-disk formats.

Tests and demos need data that looks like Virtual KITTI 2 and Cityscapes *on disk* (DESIGN.md §3) without
shipping either dataset. This module ray-casts simple 3D street scenes (ground plane, box buildings, poles,
signs, lights, trees, guard rails, moving vehicles) with numpy, so depth, classes and instance ids are exact
by construction, and writes them as the real datasets do:

* :func:`render_frame` renders one frame in memory (:class:`SyntheticFrame`);
* :func:`generate_vkitti2` writes the merged Virtual KITTI 2 layout;
* :func:`generate_cityscapes` writes leftImg8bit / gtFine / disparity / camera and runs cityscapesscripts'
  own panoptic conversion.

Conventions. World frame: X right, Y *down* (ground is Y = 0, things above it have Y < 0), Z along the road.
Cameras follow KITTI: x right, y down, z forward; a ray is ``C + s * D`` with ``D = R_cw @ [(u-cx)/fx,
(v-cy)/fy, 1]``, so the ray parameter ``s`` *is* the z-depth stored by Virtual KITTI 2. Pixel centres sit on
integer coordinates (KITTI's cx = 620.5 for 1242 columns).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import time
import zlib
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from segdep_d2.data.datasets.vkitti2_categories import VKITTI2_CATEGORIES

__all__ = [
    "VKITTI2_SCENES",
    "VKITTI2_VARIATIONS",
    "CITYSCAPES_DEFAULT_SPLITS",
    "SYNTHETIC_CLASSES",
    "SceneLayout",
    "SyntheticTrack",
    "SyntheticFrame",
    "build_scene",
    "vkitti2_intrinsics",
    "cityscapes_intrinsics",
    "camera_pose",
    "render_frame",
    "vkitti2_depth_png",
    "cityscapes_disparity_png",
    "generate_vkitti2",
    "generate_cityscapes",
]

# --------------------------------------------------------------------------------------------------
# Dataset constants
# --------------------------------------------------------------------------------------------------

VKITTI2_SCENES = ("Scene01", "Scene02", "Scene06", "Scene18", "Scene20")
VKITTI2_VARIATIONS = (
    "15-deg-left", "15-deg-right", "30-deg-left", "30-deg-right",
    "clone", "fog", "morning", "overcast", "rain", "sunset",
)
# Geometry variations rotate the camera; "left" turns the optical axis towards -X.
_VARIATION_YAW_DEG = {"15-deg-left": -15.0, "15-deg-right": 15.0, "30-deg-left": -30.0, "30-deg-right": 30.0}
_VKITTI2_SIZE = (375, 1242)  # height, width the intrinsics below refer to
_VKITTI2_K = (725.0087, 725.0087, 620.5, 187.0)  # fx, fy, cx, cy
_VKITTI2_BASELINE = 0.532725  # Camera_1 sits this far to the right of Camera_0

_CITYSCAPES_SIZE = (1024, 2048)
_CITYSCAPES_K = (2262.52, 2265.3017905988554, 1096.98, 513.137)
_CITYSCAPES_BASELINE = 0.209313
CITYSCAPES_DEFAULT_SPLITS = {"train": 2, "val": 1}
_CITYSCAPES_CITIES = {
    "train": ("aachen", "bochum", "bremen", "cologne"),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld", "bonn"),
}

MAX_FRAMES = 1000  # a scene layout covers this many frames (VKITTI2's longest scene has 837)
_NEAR = 0.05  # metres; nothing closer than this is drawn

# Internal classes: (name, Virtual KITTI 2 class or None = void, Cityscapes label name).
# VKITTI2 has no sidewalk class: pavements are drivable-looking ground there, so they become "Road".
SYNTHETIC_CLASSES = (
    ("road", "Road", "road"),
    ("sidewalk", "Road", "sidewalk"),
    ("terrain", "Terrain", "terrain"),
    ("building", "Building", "building"),
    ("pole", "Pole", "pole"),
    ("traffic_sign", "TrafficSign", "traffic sign"),
    ("traffic_light", "TrafficLight", "traffic light"),
    ("tree", "Tree", "vegetation"),
    ("vegetation", "Vegetation", "vegetation"),
    ("guard_rail", "GuardRail", "guard rail"),
    ("misc", "Misc", "static"),
    ("sky", "Sky", "sky"),
    ("car", "Car", "car"),
    ("van", "Van", "car"),
    ("truck", "Truck", "truck"),
    ("ego_vehicle", None, "ego vehicle"),
)
_C = {name: i for i, (name, _, _) in enumerate(SYNTHETIC_CLASSES)}
_VK_NAME_TO_TRAIN = {c["name"]: c["trainId"] for c in VKITTI2_CATEGORIES}
_TO_VKITTI2 = np.array(
    [255 if vk is None else _VK_NAME_TO_TRAIN[vk] for _, vk, _ in SYNTHETIC_CLASSES], dtype=np.uint8
)
_VK_COLORS = np.zeros((256, 3), np.uint8)  # trainId -> classgt colour; 255 (void) stays 0,0,0 = Undefined
for _c in VKITTI2_CATEGORIES:
    _VK_COLORS[_c["trainId"]] = _c["color"]
_VK_TRAIN_TO_NAME = {c["trainId"]: c["name"] for c in VKITTI2_CATEGORIES}


@functools.lru_cache(maxsize=1)
def _cityscapes_tables():
    """Internal class -> Cityscapes label id, plus id -> trainId / colour / hasInstances lookups."""
    from cityscapesscripts.helpers.labels import labels, name2label

    to_id = np.array([name2label[cs].id for _, _, cs in SYNTHETIC_CLASSES], dtype=np.uint8)
    train = np.full(256, 255, np.uint8)
    color = np.zeros((256, 3), np.uint8)
    has_inst = np.zeros(256, bool)
    names = {}
    for lab in labels:
        if 0 <= lab.id < 256:
            train[lab.id] = lab.trainId if 0 <= lab.trainId < 255 else 255
            color[lab.id] = lab.color
            has_inst[lab.id] = lab.hasInstances
            names[lab.id] = lab.name
    return to_id, train, color, has_inst, names


# Materials choose the texture function; ground, hood and sky are special primitive ids.
_M_FACADE, _M_ROUGH, _M_SIGN, _M_TLIGHT, _M_FOLIAGE, _M_BODY, _M_CABIN, _M_CARGO = range(8)
_PID_SKY, _PID_GROUND, _PID_HOOD = -1, -2, -3

_NAMED_COLORS = {  # VKITTI2's info.txt names a body colour; keep the name and jitter the value
    "Black": (0.05, 0.05, 0.06), "White": (0.88, 0.88, 0.86), "Silver": (0.66, 0.67, 0.69),
    "Grey": (0.38, 0.39, 0.40), "Red": (0.62, 0.06, 0.05), "Blue": (0.08, 0.18, 0.55),
    "Green": (0.10, 0.35, 0.15), "Yellow": (0.85, 0.72, 0.10), "Orange": (0.85, 0.38, 0.06),
    "Brown": (0.35, 0.22, 0.12),
}
_COLOR_NAMES = tuple(_NAMED_COLORS)
_COLOR_P = np.array([0.2, 0.18, 0.17, 0.13, 0.09, 0.09, 0.04, 0.03, 0.03, 0.04])
# (label, model, (width, height, length) ranges, probability within the class)
_VEHICLE_MODELS = {
    "car": [("Sedan4Door", (1.74, 1.86), (1.40, 1.50), (4.4, 4.9)),
            ("Sedan2Door", (1.70, 1.80), (1.35, 1.45), (4.2, 4.6)),
            ("Hatchback", (1.68, 1.80), (1.42, 1.55), (3.8, 4.3)),
            ("Hybrid", (1.72, 1.80), (1.45, 1.52), (4.3, 4.6)),
            ("SUV", (1.80, 1.95), (1.62, 1.80), (4.4, 4.9))],
    "van": [("Van", (1.90, 2.05), (1.95, 2.45), (4.9, 5.9)),
            ("Minivan", (1.85, 1.95), (1.70, 1.85), (4.7, 5.1))],
    "truck": [("BoxTruck", (2.40, 2.55), (3.1, 3.7), (7.0, 9.5)),
              ("Truck", (2.45, 2.55), (3.4, 3.9), (9.0, 11.5))],
}
_VK_LABEL = {"car": "Car", "van": "Van", "truck": "Truck"}


# --------------------------------------------------------------------------------------------------
# Scene layout
# --------------------------------------------------------------------------------------------------


class _PrimBuilder:
    """Collects static primitives (axis-aligned boxes and spheres) before freezing them into arrays."""

    def __init__(self):
        self.rows = []

    def box(self, lo, hi, label, material, color, param=(0, 0, 0, 0)):
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        self.rows.append((0, lo, hi, (lo + hi) / 2, 0.0, _C[label], material, color, param))

    def sphere(self, center, radius, label, material, color, param=(0, 0, 0, 0)):
        c = np.asarray(center, float)
        self.rows.append((1, c - radius, c + radius, c, float(radius), _C[label], material, color, param))

    def freeze(self) -> "_Prims":
        if not self.rows:
            return _Prims.empty()
        cols = list(zip(*self.rows))
        return _Prims(
            kind=np.array(cols[0], np.int8), lo=np.array(cols[1], float), hi=np.array(cols[2], float),
            center=np.array(cols[3], float), radius=np.array(cols[4], float),
            label=np.array(cols[5], np.int16), material=np.array(cols[6], np.int8),
            color=np.array(cols[7], np.float32), param=np.array(cols[8], np.float32),
            track=np.full(len(self.rows), -1, np.int32),
        )


@dataclasses.dataclass
class _Prims:
    kind: np.ndarray      # 0 box, 1 sphere
    lo: np.ndarray        # (N, 3) axis-aligned bounds (spheres: their bounding cube)
    hi: np.ndarray
    center: np.ndarray    # (N, 3)
    radius: np.ndarray    # (N,) spheres only
    label: np.ndarray     # internal class
    material: np.ndarray
    color: np.ndarray     # (N, 3) base colour in [0, 1]
    param: np.ndarray     # (N, 4) material parameters
    track: np.ndarray     # vehicle track id, -1 for static things

    @staticmethod
    def empty() -> "_Prims":
        z3 = np.zeros((0, 3))
        return _Prims(np.zeros(0, np.int8), z3, z3, z3, np.zeros(0), np.zeros(0, np.int16),
                      np.zeros(0, np.int8), np.zeros((0, 3), np.float32), np.zeros((0, 4), np.float32),
                      np.zeros(0, np.int32))

    def take(self, idx) -> "_Prims":
        return _Prims(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    @staticmethod
    def concat(parts: Sequence["_Prims"]) -> "_Prims":
        return _Prims(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                         for f in dataclasses.fields(_Prims)})


@dataclasses.dataclass(frozen=True)
class _Vehicle:
    track_id: int
    kind: str              # "car" | "van" | "truck"
    model: str
    color_name: str
    color: Tuple[float, float, float]
    dims: Tuple[float, float, float]  # width, height, length (metres)
    x: float               # lateral centre
    z0: float              # bottom-centre Z at frame 0
    speed: float           # metres per frame along +Z (negative: oncoming)
    heading: int           # +1 faces +Z, -1 faces -Z

    def z_at(self, frame: int) -> float:
        return self.z0 + self.speed * frame

    @property
    def moving(self) -> bool:
        return self.speed != 0.0


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
    prims: _Prims
    vehicles: Tuple[_Vehicle, ...]

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


def _stable_seed(*items) -> np.random.SeedSequence:
    """Seed from strings / ints that is stable across processes (Python's hash() is salted)."""
    ints = [zlib.crc32(str(x).encode()) if not isinstance(x, (int, np.integer)) else int(x) & 0xFFFFFFFF
            for x in items]
    return np.random.SeedSequence(ints)


def _jitter(rng, base, amount):
    return np.clip(np.asarray(base, float) + rng.uniform(-amount, amount, 3), 0.0, 1.0)


@functools.lru_cache(maxsize=16)
def build_scene(name: str, seed: int = 0, *, profile: str = "vkitti2", style: Optional[str] = None) -> SceneLayout:
    """Draw the static layout and all vehicle tracks of scene ``name`` (cached; deterministic).

    ``profile`` picks camera mount conventions ("vkitti2": 1.5-1.7 m, no bonnet; "cityscapes": ~1.22 m,
    bonnet visible). ``style`` overrides the street type chosen from the name.
    """
    if profile not in ("vkitti2", "cityscapes"):
        raise ValueError(f"unknown profile {profile!r}")
    rng = np.random.default_rng(_stable_seed(seed, name, profile))
    if style is None:
        style = _STYLE_OF_SCENE.get(name) or str(rng.choice(["urban", "suburban", "rural", "highway"],
                                                            p=[0.4, 0.3, 0.2, 0.1]))
    if profile == "cityscapes":
        cam_h, pitch = rng.uniform(1.18, 1.26), np.deg2rad(rng.uniform(1.6, 2.6))
        baseline = _CITYSCAPES_BASELINE
    else:
        cam_h, pitch = rng.uniform(1.5, 1.7), np.deg2rad(rng.uniform(0.3, 1.5))
        baseline = _VKITTI2_BASELINE

    lw = rng.uniform(3.2, 3.6)
    if style == "highway":
        lanes_r, lanes_l, median = int(rng.integers(2, 4)), int(rng.integers(2, 4)), rng.uniform(0.8, 1.4)
        parking, sidewalk = (0.0, 0.0), (0.0, 0.0)
        ego_speed = rng.uniform(1.3, 1.9)
    elif style == "rural":
        lanes_r = lanes_l = 1
        median, parking, sidewalk = 0.0, (0.0, 0.0), (0.0, 0.0)
        ego_speed = rng.uniform(0.9, 1.3)
    else:
        lanes_r, lanes_l = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if style == "urban" else (1, 1)
        median = 0.0
        parking = tuple(float(rng.uniform(2.1, 2.5)) if rng.random() < 0.7 else 0.0 for _ in range(2))
        sidewalk = tuple(float(rng.uniform(2.0, 4.0)) for _ in range(2))
        ego_speed = rng.uniform(0.6, 1.0)
    ego_lane = int(rng.integers(0, lanes_r))
    ego_x = median + (ego_lane + 0.5) * lw

    sun_az, sun_el = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(30, 55))
    sun = np.array([np.cos(sun_el) * np.sin(sun_az), -np.sin(sun_el), np.cos(sun_el) * np.cos(sun_az)])

    z_lo, z_hi = -60.0, ego_speed * MAX_FRAMES + 320.0
    zebra = np.array([], float)
    if style in ("urban", "suburban"):
        zebra = np.sort(rng.uniform(z_lo + 40, z_hi, int((z_hi - z_lo) / rng.uniform(90, 160))))

    layout = SceneLayout(
        name=name, seed=seed, profile=profile, style=style, camera_height=float(cam_h), pitch=float(pitch),
        ego_x=float(ego_x), ego_speed=float(ego_speed), stereo_baseline=baseline,
        ego_hood=profile == "cityscapes", lane_width=float(lw), lanes_right=lanes_r, lanes_left=lanes_l,
        median=float(median), parking=parking, sidewalk=sidewalk,
        road_color=_jitter(rng, (0.30, 0.30, 0.31), 0.06),
        sidewalk_color=_jitter(rng, rng.choice([(0.55, 0.54, 0.52), (0.55, 0.42, 0.38), (0.48, 0.48, 0.5)]), 0.05),
        terrain_color=_jitter(rng, (0.30, 0.40, 0.16), 0.06),
        sun=sun, zebra_z=zebra, prims=_Prims.empty(), vehicles=(),
    )
    layout.prims = _build_static(layout, rng, z_lo, z_hi)
    layout.vehicles = _build_vehicles(layout, rng)
    return layout


def _build_static(L: SceneLayout, rng, z_lo, z_hi) -> _Prims:
    b = _PrimBuilder()
    x_left, x_right = L.road_edges
    urban = L.style in ("urban", "suburban")
    for side in (-1, 1):
        edge = x_right if side > 0 else -x_left          # distance of the road edge from X = 0
        sw = L.sidewalk[1 if side > 0 else 0]
        X = lambda d: side * d                              # noqa: E731 - lateral distance -> world X

        def xbox(d0, d1):  # lateral interval [d0, d1] from the centre -> (lo_x, hi_x)
            return (min(X(d0), X(d1)), max(X(d0), X(d1)))

        # Buildings: facades along the street, some set back, alleys between them.
        if L.style != "highway":
            z = z_lo + rng.uniform(0, 10)
            while z < z_hi:
                if L.style == "urban":
                    length, height = rng.uniform(8, 26), rng.uniform(7, 24)
                    setback, gap = rng.uniform(0, 2.5), (rng.uniform(2, 7) if rng.random() < 0.25 else 0.0)
                elif L.style == "suburban":
                    length, height = rng.uniform(8, 16), rng.uniform(5, 10)
                    setback, gap = rng.uniform(3, 10), rng.uniform(4, 14)
                else:  # rural: the odd farm house far from the road
                    length, height = rng.uniform(8, 18), rng.uniform(4, 9)
                    setback, gap = rng.uniform(15, 40), rng.uniform(40, 160)
                    if rng.random() < 0.5:
                        z += length + gap
                        continue
                d0 = edge + sw + setback
                lx, hx = xbox(d0, d0 + rng.uniform(8, 14))
                color = _jitter(rng, rng.choice([(0.75, 0.72, 0.65), (0.62, 0.45, 0.35), (0.8, 0.78, 0.74),
                                                 (0.55, 0.55, 0.57), (0.72, 0.62, 0.45), (0.5, 0.32, 0.25),
                                                 (0.85, 0.85, 0.8), (0.45, 0.5, 0.52)]), 0.08)
                floor_h = rng.uniform(2.9, 3.6)
                param = (floor_h, rng.uniform(1.6, 3.2), rng.uniform(0.35, 0.7), float(rng.integers(0, 3)))
                b.box((lx, -height, z), (hx, 0.0, z + length), "building", _M_FACADE, color, param)
                # Suburban front yards are fenced by a hedge along the sidewalk.
                if L.style == "suburban" and rng.random() < 0.6:
                    hx0, hx1 = xbox(edge + sw + 0.3, edge + sw + 1.0)
                    hh = rng.uniform(0.8, 1.6)
                    b.box((hx0, -hh, z - gap * 0.5), (hx1, 0.0, z + length + gap * 0.4), "vegetation",
                          _M_FOLIAGE, _jitter(rng, (0.16, 0.32, 0.10), 0.05))
                z += length + gap

        # Street furniture on the sidewalk / verge.
        z = z_lo + rng.uniform(0, 20)
        while z < z_hi:  # lamp / utility poles
            d = edge + (0.45 if sw > 0 else rng.uniform(0.8, 2.0))
            _pole(b, rng, X(d), z, rng.uniform(5.0, 8.0))
            z += rng.uniform(22, 40)
        z = z_lo + rng.uniform(0, 40)
        while z < z_hi:  # signs facing oncoming traffic of this side's lanes
            d = edge + (0.6 if sw > 0 else rng.uniform(0.6, 1.5))
            _sign(b, rng, X(d), z)
            z += rng.uniform(35, 90)
        for zz in L.zebra_z:  # traffic lights guard each crosswalk
            d = edge + (0.5 if sw > 0 else 1.0)
            _traffic_light(b, rng, X(d), zz - 1.0 if side > 0 else zz + 5.0)
        # Trees: a row along urban sidewalks, irregular clumps in the countryside.
        if urban:
            z = z_lo + rng.uniform(0, 10)
            while z < z_hi:
                if rng.random() < 0.7:
                    _tree(b, rng, X(edge + max(sw - 0.9, 0.9)), z, scale=rng.uniform(0.7, 1.1))
                z += rng.uniform(8, 16)
        else:
            z = z_lo
            while z < z_hi:
                d = edge + rng.uniform(3.5, 30.0) + (1.5 if L.style == "highway" else 0.0)
                if rng.random() < 0.75:
                    _tree(b, rng, X(d), z, scale=rng.uniform(0.8, 1.5))
                else:
                    r = rng.uniform(0.6, 1.6)
                    b.sphere((X(d), -r * 0.55, z), r, "vegetation", _M_FOLIAGE, _jitter(rng, (0.2, 0.35, 0.1), 0.07))
                z += rng.uniform(3.0, 9.0)
        # Misc clutter on sidewalks: bins, boxes, benches.
        if sw > 0:
            z = z_lo + rng.uniform(0, 30)
            while z < z_hi:
                w, h, l = rng.uniform(0.5, 1.2), rng.uniform(0.6, 1.3), rng.uniform(0.5, 1.8)
                d = edge + sw - rng.uniform(0.2, 0.8) - w
                lx, hx = xbox(d, d + w)
                b.box((lx, -h, z), (hx, 0.0, z + l), "misc", _M_ROUGH,
                      _jitter(rng, rng.choice([(0.2, 0.3, 0.2), (0.5, 0.5, 0.5), (0.3, 0.2, 0.15)]), 0.1))
                z += rng.uniform(25, 70)
        # Guard rails on rural roads and highways, in stretches.
        if L.style in ("rural", "highway"):
            z = z_lo
            while z < z_hi:
                length = rng.uniform(40, 160)
                if L.style == "highway" or rng.random() < 0.5:
                    d = edge + 0.5
                    _guard_rail(b, X(d), z, z + length)
                z += length + (0.0 if L.style == "highway" else rng.uniform(10, 60))
    if L.median > 0:  # central barrier
        z = z_lo
        while z < z_hi:
            _guard_rail(b, 0.0, z, z + 60.0)
            z += 60.0
    return b.freeze()


def _pole(b: _PrimBuilder, rng, x, z, height):
    t = rng.uniform(0.12, 0.2)
    b.box((x - t / 2, -height, z - t / 2), (x + t / 2, 0.0, z + t / 2), "pole", _M_ROUGH,
          _jitter(rng, (0.45, 0.46, 0.47), 0.08))


def _sign(b: _PrimBuilder, rng, x, z):
    h = rng.uniform(2.0, 2.8)
    _pole(b, rng, x, z, h + 0.3)
    w = rng.uniform(0.55, 0.9)
    hh = w * rng.uniform(0.9, 1.1)
    design = int(rng.integers(0, 4))
    color = [(0.8, 0.1, 0.1), (0.1, 0.25, 0.7), (0.9, 0.75, 0.1), (0.15, 0.35, 0.75)][design]
    # Plate thin along Z, in front of the pole (-Z side), so its front faces the approaching camera.
    b.box((x - w / 2, -h - hh / 2, z - 0.15), (x + w / 2, -h + hh / 2, z - 0.1), "traffic_sign", _M_SIGN,
          color, (design, 0, 0, 0))


def _traffic_light(b: _PrimBuilder, rng, x, z):
    h = rng.uniform(2.4, 3.2)
    _pole(b, rng, x, z, h + 0.9)
    w = rng.uniform(0.3, 0.4)
    b.box((x - w / 2, -h - 0.9, z - 0.35), (x + w / 2, -h, z - 0.1), "traffic_light", _M_TLIGHT,
          (0.08, 0.08, 0.08), (int(rng.integers(0, 3)), 0, 0, 0))


def _tree(b: _PrimBuilder, rng, x, z, scale=1.0):
    trunk_h, t = rng.uniform(2.0, 3.5) * scale, rng.uniform(0.2, 0.35) * scale
    bark = _jitter(rng, (0.3, 0.22, 0.15), 0.05)
    b.box((x - t / 2, -trunk_h - 0.3, z - t / 2), (x + t / 2, 0.0, z + t / 2), "tree", _M_ROUGH, bark)
    leaf = _jitter(rng, (0.17, 0.33, 0.09), 0.07)
    r = rng.uniform(1.6, 2.8) * scale
    b.sphere((x, -trunk_h - r * 0.7, z), r, "tree", _M_FOLIAGE, leaf)
    if rng.random() < 0.6:
        r2 = r * rng.uniform(0.55, 0.8)
        b.sphere((x + rng.uniform(-0.6, 0.6) * r, -trunk_h - r * 1.3, z + rng.uniform(-0.6, 0.6) * r), r2,
                 "tree", _M_FOLIAGE, np.clip(leaf * rng.uniform(0.85, 1.15), 0, 1))


def _guard_rail(b: _PrimBuilder, x, z0, z1):
    b.box((x - 0.05, -0.78, z0), (x + 0.05, -0.45, z1), "guard_rail", _M_ROUGH, (0.62, 0.63, 0.64))


def _build_vehicles(L: SceneLayout, rng) -> Tuple[_Vehicle, ...]:
    """Place vehicles per lane so that the ego camera sees traffic during all MAX_FRAMES frames."""
    T, e = MAX_FRAMES, L.ego_speed
    truck_p = 0.25 if L.style == "highway" else 0.06
    lanes = []  # (x centre, speed m/frame, heading, is ego lane, parked)
    lane_speed = lambda: rng.uniform(0.8, 1.25) * e  # noqa: E731
    for i in range(L.lanes_right):
        x = L.median + (i + 0.5) * L.lane_width
        ego = abs(x - L.ego_x) < 1e-6
        # Same-direction traffic in the ego lane is a bit faster, so it never runs into the camera.
        lanes.append((x, e * rng.uniform(1.03, 1.15) if ego else lane_speed(), 1, ego, False))
    for i in range(L.lanes_left):
        lanes.append((-L.median - (i + 0.5) * L.lane_width, -lane_speed(), -1, False, False))
    x_left, x_right = L.road_edges
    if L.parking[1] > 0:
        lanes.append((x_right - L.parking[1] / 2, 0.0, 1, False, True))
    if L.parking[0] > 0:
        lanes.append((x_left + L.parking[0] / 2, 0.0, -1, False, True))

    drafts = []
    for x, v, heading, ego, parked in lanes:
        # Z at frame 0 for which the vehicle is near the camera at some frame in [0, T].
        rel = (e - v) * T
        z_min, z_max = -40.0 + min(0.0, rel), 260.0 + max(0.0, rel)
        if ego:
            z_min = 14.0
        z = z_min + rng.uniform(0, 15)
        while z < z_max:
            kind = "car"
            u = rng.random()
            if not ego and not parked and u < truck_p:
                kind = "truck"
            elif u < truck_p + 0.15:
                kind = "van"
            model, wr, hr, lr = _VEHICLE_MODELS[kind][int(rng.integers(0, len(_VEHICLE_MODELS[kind])))]
            w, h, l = rng.uniform(*wr), rng.uniform(*hr), rng.uniform(*lr)
            cname = _COLOR_NAMES[int(rng.choice(len(_COLOR_NAMES), p=_COLOR_P / _COLOR_P.sum()))]
            color = tuple(_jitter(rng, _NAMED_COLORS[cname], 0.04))
            hd = heading if not parked else (1 if rng.random() < 0.7 else -1) * heading
            xx = x + (rng.uniform(-0.25, 0.25) if not parked else rng.uniform(-0.1, 0.1))
            if parked and rng.random() < 0.4:  # leave parking gaps
                z += rng.uniform(5, 30)
                continue
            drafts.append((z + l / 2, kind, model, cname, color, (w, h, l), xx, v, hd))
            gap = rng.uniform(1.0, 3.0) if parked else rng.uniform(6.0, 45.0) * (1.6 if L.style == "highway" else 1)
            z += l + gap
    # IDs in the order vehicles enter the camera's neighbourhood, so a sequence's first frames get small
    # ids; an 8-bit instance PNG stores trackID + 1, hence at most 254 tracks (late extras are dropped).
    def enters(d):
        rel0, v = d[0], d[7]
        if -40.0 <= rel0 <= 260.0 or v == e:
            return 0.0 if -40.0 <= rel0 <= 260.0 else np.inf
        t = (rel0 - 260.0) / (e - v) if rel0 > 260.0 else (-40.0 - rel0) / (v - e)
        return t if t >= 0 else np.inf

    drafts.sort(key=lambda d: (enters(d), abs(d[0]), d[6]))
    drafts = [d for d in drafts if np.isfinite(enters(d))][:254]
    return tuple(_Vehicle(i, d[1], d[2], d[3], d[4], d[5], float(d[6]), float(d[0]), float(d[7]), int(d[8]))
                 for i, d in enumerate(drafts))


def _vehicle_prims(vehicles: Sequence[_Vehicle], frame: int) -> _Prims:
    """Two boxes per vehicle (body + cabin, or cab + cargo) at the given frame."""
    b = _PrimBuilder()
    tracks = []
    for v in vehicles:
        w, h, l = v.dims
        z = v.z_at(frame)
        x0, x1 = v.x - w / 2, v.x + w / 2

        def zspan(a, c):  # vehicle-local [a, c] along its heading -> world Z interval
            return (z + a, z + c) if v.heading > 0 else (z - c, z - a)

        lab = v.kind
        if v.kind == "truck":
            cab_l = 2.1
            za, zb = zspan(l / 2 - cab_l, l / 2)
            b.box((x0, -0.82 * h, za), (x1, 0.0, zb), lab, _M_BODY, v.color, (v.heading, 1.0, 0, 0))
            za, zb = zspan(-l / 2, l / 2 - cab_l - 0.25)
            cargo = (0.9, 0.9, 0.88) if v.track_id % 3 else v.color
            b.box((x0, -h, za), (x1, 0.0, zb), lab, _M_CARGO, cargo, (v.heading, 0, 0, 0))
        else:
            body_h = (0.45 if v.kind == "van" else 0.55) * h
            za, zb = zspan(-l / 2, l / 2)
            b.box((x0, -body_h, za), (x1, 0.0, zb), lab, _M_BODY, v.color, (v.heading, 0.0, 0, 0))
            cab_l = (0.82 if v.kind == "van" else 0.52) * l
            back = -l / 2 + (0.05 if v.kind == "van" else 0.18) * l
            za, zb = zspan(back, back + cab_l)
            inset = 0.04 * w
            b.box((x0 + inset, -h, za), (x1 - inset, -body_h, zb), lab, _M_CABIN, v.color, (v.heading, 0, 0, 0))
        tracks += [v.track_id] * 2
    p = b.freeze()
    p.track = np.array(tracks, np.int32)
    return p


# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def vkitti2_intrinsics(height: int, width: int) -> np.ndarray:
    """3x3 K of Virtual KITTI 2 (725.0087, 620.5, 187 at 1242x375) scaled to ``height`` x ``width``."""
    fx, fy, cx, cy = _VKITTI2_K
    sx, sy = width / _VKITTI2_SIZE[1], height / _VKITTI2_SIZE[0]
    return np.array([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1.0]])


def cityscapes_intrinsics(height: int, width: int) -> np.ndarray:
    """3x3 K of the Cityscapes camera (fx 2262.52 at 2048x1024) scaled to ``height`` x ``width``."""
    fx, fy, cx, cy = _CITYSCAPES_K
    sx, sy = width / _CITYSCAPES_SIZE[1], height / _CITYSCAPES_SIZE[0]
    return np.array([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1.0]])


def _variation_yaw(variation: str) -> float:
    if variation not in VKITTI2_VARIATIONS:
        raise ValueError(f"unknown variation {variation!r}; expected one of {VKITTI2_VARIATIONS}")
    return np.deg2rad(_VARIATION_YAW_DEG.get(variation, 0.0))


def camera_pose(layout: SceneLayout, frame_index: int, *, variation: str = "clone",
                camera: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """World->camera rotation ``R`` (3x3) and camera centre ``C`` (world, metres); ``x_cam = R (x - C)``."""
    R_cw = _rot_y(_variation_yaw(variation)) @ _rot_x(-layout.pitch)
    C = np.array([layout.ego_x, -layout.camera_height, layout.ego_speed * frame_index])
    if camera == 1:
        C = C + layout.stereo_baseline * R_cw[:, 0]  # the right camera of the stereo rig
    elif camera != 0:
        raise ValueError("camera must be 0 or 1")
    return R_cw.T, C


@dataclasses.dataclass(frozen=True)
class _Rays:
    """Per-pixel ray directions as separate (H, W) components (faster than (H, W, 3) for slab tests)."""

    d: Tuple[np.ndarray, np.ndarray, np.ndarray]    # D = R_cw @ [(u-cx)/fx, (v-cy)/fy, 1]
    inv: Tuple[np.ndarray, np.ndarray, np.ndarray]  # 1 / D (zeros nudged so that 0 * inf never happens)
    norm2: np.ndarray                               # |D|^2
    vignette: np.ndarray                            # (H, W) float32 lens fall-off used by the shader


@functools.lru_cache(maxsize=32)
def _rays(height, width, fx, fy, cx, cy, yaw, pitch) -> _Rays:
    R_cw = _rot_y(yaw) @ _rot_x(-pitch)
    x = ((np.arange(width) - cx) / fx)[None, :]
    y = ((np.arange(height) - cy) / fy)[:, None]
    d = tuple(np.ascontiguousarray(R_cw[k, 0] * x + R_cw[k, 1] * y + R_cw[k, 2] + np.zeros((height, width)))
              for k in range(3))
    inv = tuple(1.0 / np.where(np.abs(c) < 1e-12, 1e-12, c) for c in d)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2
    out = _Rays(d, inv, d[0] ** 2 + d[1] ** 2 + d[2] ** 2, (1.0 - 0.12 * r2).astype(np.float32))
    for a in (*out.d, *out.inv, out.norm2, out.vignette):
        a.flags.writeable = False
    return out


# --------------------------------------------------------------------------------------------------
# Geometry pass: ray casting into a G-buffer
# --------------------------------------------------------------------------------------------------

_CORNER_SEL = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], bool)
_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8)
                   if bin(a ^ b).count("1") == 1])  # the 12 box edges


def _projected_bounds(lo, hi, R_wc, C, K):
    """Image-plane extents (umin, umax, vmin, vmax), each (N,), of boxes clipped to z >= near.

    Boxes entirely behind the near plane get empty extents (umin > umax).
    """
    corners = np.where(_CORNER_SEL[None], hi[:, None, :], lo[:, None, :])
    pc = (corners - C) @ R_wc.T
    a, bb = pc[:, _EDGES[:, 0]], pc[:, _EDGES[:, 1]]
    za, zb = a[..., 2], bb[..., 2]
    straddle = (za - _NEAR) * (zb - _NEAR) < 0
    t = np.where(straddle, (_NEAR - za) / np.where(straddle, zb - za, 1.0), 0.0)
    pts = np.concatenate([pc, a + t[..., None] * (bb - a)], axis=1)
    valid = np.concatenate([pc[..., 2] >= _NEAR, straddle], axis=1)
    z = np.where(valid, pts[..., 2], 1.0)
    u = K[0, 0] * pts[..., 0] / z + K[0, 2]
    v = K[1, 1] * pts[..., 1] / z + K[1, 2]
    big = 1e9
    return (np.where(valid, u, big).min(1), np.where(valid, u, -big).max(1),
            np.where(valid, v, big).min(1), np.where(valid, v, -big).max(1))


def _screen_windows(lo, hi, R_wc, C, K, H, W):
    """Conservative pixel windows (r0, r1, c0, c1) covering each box's projection."""
    if len(lo) == 0:
        return np.zeros((0, 4), int)
    umin, umax, vmin, vmax = _projected_bounds(lo, hi, R_wc, C, K)
    win = np.stack([np.clip(np.floor(vmin), 0, H), np.clip(np.ceil(vmax) + 1, 0, H),
                    np.clip(np.floor(umin), 0, W), np.clip(np.ceil(umax) + 1, 0, W)], 1).astype(int)
    win[umin > umax] = 0
    return win


@dataclasses.dataclass
class _GBuffer:
    depth: np.ndarray      # (H, W) z-depth, inf = sky
    pid: np.ndarray        # (H, W) primitive index, or _PID_*
    face: np.ndarray       # (H, W) entering face: axis*2 + (D_axis > 0); 6 = sphere
    label: np.ndarray      # (H, W) internal class
    track: np.ndarray      # (H, W) track id, -1 none
    prims: _Prims
    rays: _Rays
    C: np.ndarray
    R_wc: np.ndarray
    K: np.ndarray
    unoccluded: Dict[int, int]   # track -> pixels it would cover with nothing in front (inside the image)
    extents: Dict[int, Tuple[float, float, float, float]]  # track -> projected 3D box (umin, umax, vmin, vmax)
    vehicles: Dict[int, _Vehicle]
    frame: int


def _slab(lo, hi, C, ix, iy, iz):
    """Ray/box slab test; lo, hi are (3,) or per-ray (3, n). Returns (s, tx_min, ty_min, tz_min), s = inf on a miss."""
    t1, t2 = (lo[0] - C[0]) * ix, (hi[0] - C[0]) * ix
    txn, txf = np.minimum(t1, t2), np.maximum(t1, t2)
    t1, t2 = (lo[1] - C[1]) * iy, (hi[1] - C[1]) * iy
    tyn, tyf = np.minimum(t1, t2), np.maximum(t1, t2)
    t1, t2 = (lo[2] - C[2]) * iz, (hi[2] - C[2]) * iz
    tzn, tzf = np.minimum(t1, t2), np.maximum(t1, t2)
    tn = np.maximum(np.maximum(txn, tyn), tzn)
    tf = np.minimum(np.minimum(txf, tyf), tzf)
    return np.where((tn <= tf) & (tn > _NEAR), tn, np.inf), txn, tyn, tzn


def _sphere(center, radius, C, dx, dy, dz, n2):
    """Ray/sphere: nearest s > near with |C + s D - c| = r, inf on a miss."""
    ox, oy, oz = C[0] - center[0], C[1] - center[1], C[2] - center[2]
    bh = dx * ox + dy * oy + dz * oz
    disc = bh * bh - n2 * (ox * ox + oy * oy + oz * oz - radius * radius)
    ok = disc >= 0
    tn = (-bh - np.sqrt(np.where(ok, disc, 0.0))) / n2
    return np.where(ok & (tn > _NEAR), tn, np.inf)


def _face_code(txn, tyn, tzn, dx, dy, dz):
    """Entering face of a box hit: axis * 2 + (D_axis > 0); the largest entry parameter names the axis."""
    ax = np.where((txn >= tyn) & (txn >= tzn), 0, np.where(tyn >= tzn, 1, 2))
    pos = np.where(ax == 0, dx > 0, np.where(ax == 1, dy > 0, dz > 0))
    return (ax * 2 + pos).astype(np.int8)


_BATCH_AREA = 1200  # primitives covering fewer pixels are ray-cast together in one vectorised batch


def _geometry(layout: SceneLayout, frame: int, K: np.ndarray, H: int, W: int, variation: str,
              camera: int) -> _GBuffer:
    if not 0 <= frame < MAX_FRAMES:
        raise ValueError(f"frame_index must be in [0, {MAX_FRAMES})")
    yaw = _variation_yaw(variation)
    R_wc, C = camera_pose(layout, frame, variation=variation, camera=camera)
    rays = _rays(H, W, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), float(yaw),
                 float(layout.pitch))
    dx, dy, dz = rays.d
    depth = np.full((H, W), np.inf)
    pid = np.full((H, W), _PID_SKY, np.int32)
    face = np.full((H, W), 3, np.int8)  # ground: entered from above, normal -Y

    # Ground plane Y = 0 (camera at Y = -h): s = h / D_y for rays pointing down.
    down = dy > 1e-12
    depth[down] = (0.0 - C[1]) / dy[down]
    pid[down] = _PID_GROUND
    if layout.ego_hood:
        # The bonnet: a plane 0.5 m below the camera reaching 2.4 m ahead, rounded towards the sides.
        s = np.where(down, 0.5 / np.where(down, dy, 1.0), np.inf)
        xr = s * dx + (C[0] - layout.ego_x)
        zr = s * dz
        hood = down & (np.abs(xr) < 1.0) & (zr > 0) & (zr < 2.4 - 0.6 * xr ** 2)
        depth[hood] = s[hood]
        pid[hood] = _PID_HOOD

    # Primitives near the camera: static scene + vehicles at this frame.
    zc = C[2]
    st = layout.prims
    keep = (st.hi[:, 2] > zc - 30.0) & (st.lo[:, 2] < zc + 330.0)
    vis_veh = [v for v in layout.vehicles if zc - 40.0 < v.z_at(frame) < zc + 330.0]
    prims = _Prims.concat([st.take(np.flatnonzero(keep)), _vehicle_prims(vis_veh, frame)])
    win = _screen_windows(prims.lo, prims.hi, R_wc, C, K, H, W)
    area = np.clip(win[:, 1] - win[:, 0], 0, None) * np.clip(win[:, 3] - win[:, 2], 0, None)
    track_pix: Dict[int, List[np.ndarray]] = {}

    # Large primitives one at a time, on views of their screen window (no gathers) ...
    for i in np.flatnonzero(area > _BATCH_AREA):
        r0, r1, c0, c1 = win[i]
        sl = (slice(r0, r1), slice(c0, c1))
        if prims.kind[i] == 0:
            s, txn, tyn, tzn = _slab(prims.lo[i], prims.hi[i], C, rays.inv[0][sl], rays.inv[1][sl], rays.inv[2][sl])
        else:
            s = _sphere(prims.center[i], prims.radius[i], C, dx[sl], dy[sl], dz[sl], rays.norm2[sl])
        if prims.track[i] >= 0:
            rr, cc = np.nonzero(np.isfinite(s))
            track_pix.setdefault(int(prims.track[i]), []).append((rr + r0) * W + cc + c0)
        zb = depth[sl]
        closer = s < zb
        if closer.any():
            zb[closer] = s[closer]
            pid[sl][closer] = i
            face[sl][closer] = (_face_code(txn[closer], tyn[closer], tzn[closer], dx[sl][closer], dy[sl][closer],
                                           dz[sl][closer]) if prims.kind[i] == 0 else 6)
    # ... small ones all together: one (primitive, pixel) pair per pixel of each window.
    small = np.flatnonzero((area > 0) & (area <= _BATCH_AREA))
    if small.size:
        a = area[small]
        ids = np.repeat(small, a)
        k = np.arange(a.sum()) - np.repeat(np.cumsum(a) - a, a)
        w = np.repeat(win[small, 3] - win[small, 2], a)
        pix = (np.repeat(win[small, 0], a) + k // w) * W + np.repeat(win[small, 2], a) + k % w
        s = np.full(len(pix), np.inf)
        txn = tyn = tzn = np.zeros(len(pix))
        box = prims.kind[ids] == 0
        g = lambda arr, m: np.take(arr.reshape(-1), pix[m])  # noqa: E731 - per-pair ray component
        if box.any():
            bi = ids[box]
            s[box], bx, by, bz = _slab(prims.lo[bi].T, prims.hi[bi].T, C, g(rays.inv[0], box), g(rays.inv[1], box),
                                       g(rays.inv[2], box))
            txn, tyn, tzn = (np.zeros(len(pix)) for _ in range(3))
            txn[box], tyn[box], tzn[box] = bx, by, bz
        sph = ~box
        if sph.any():
            si = ids[sph]
            s[sph] = _sphere(prims.center[si].T, prims.radius[si], C, g(dx, sph), g(dy, sph), g(dz, sph),
                             g(rays.norm2, sph))
        hit = np.flatnonzero(np.isfinite(s))
        tr = prims.track[ids[hit]]
        for t in np.unique(tr[tr >= 0]):
            track_pix.setdefault(int(t), []).append(pix[hit[tr == t]])
        dflat = depth.reshape(-1)
        cand = hit[s[hit] < dflat[pix[hit]]]
        cand = cand[np.argsort(s[cand], kind="stable")]
        cand = cand[np.unique(pix[cand], return_index=True)[1]]  # nearest candidate per pixel
        pc = pix[cand]
        dflat[pc] = s[cand]
        pid.reshape(-1)[pc] = ids[cand]
        fc = np.where(box[cand], _face_code(txn[cand], tyn[cand], tzn[cand], dx.reshape(-1)[pc],
                                            dy.reshape(-1)[pc], dz.reshape(-1)[pc]), 6)
        face.reshape(-1)[pc] = fc

    obj = pid >= 0
    label = np.empty((H, W), np.int16)
    label[obj] = prims.label[pid[obj]]
    label[pid == _PID_SKY] = _C["sky"]
    label[pid == _PID_HOOD] = _C["ego_vehicle"]
    gmask = pid == _PID_GROUND
    label[gmask] = _ground_label(layout, C[0] + depth[gmask] * dx[gmask])
    track = np.full((H, W), -1, np.int32)
    track[obj] = prims.track[pid[obj]]

    vmap = {v.track_id: v for v in vis_veh}
    extents = {}
    if track_pix:
        tids = sorted(track_pix)
        vs = [vmap[t] for t in tids]
        lo = np.array([[v.x - v.dims[0] / 2, -v.dims[1], v.z_at(frame) - v.dims[2] / 2] for v in vs])
        hi = np.array([[v.x + v.dims[0] / 2, 0.0, v.z_at(frame) + v.dims[2] / 2] for v in vs])
        ext = np.stack(_projected_bounds(lo, hi, R_wc, C, K), 1)
        extents = {t: tuple(float(x) for x in e) for t, e in zip(tids, ext)}
    unoccluded = {t: int(np.unique(np.concatenate(p)).size) for t, p in track_pix.items()}
    return _GBuffer(depth, pid, face, label, track, prims, rays, C, R_wc, K, unoccluded, extents, vmap, frame)


def _ground_zones(L: SceneLayout, X):
    """Boolean masks (road, sidewalk) for ground points at lateral position X."""
    x_left, x_right = L.road_edges
    road = (X > x_left) & (X < x_right) & (np.abs(X) >= L.median)
    side = ((X >= x_right) & (X < x_right + L.sidewalk[1])) | ((X <= x_left) & (X > x_left - L.sidewalk[0]))
    return road, side


def _ground_label(L: SceneLayout, X):
    road, side = _ground_zones(L, X)
    return np.where(road, _C["road"], np.where(side, _C["sidewalk"], _C["terrain"])).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# Appearance pass
# --------------------------------------------------------------------------------------------------

_U32 = np.uint32


_HASH_PRIMES = (0x8DA6B343, 0xD8163841, 0xCB1AB31F)


def _hash(*coords, salt=0):
    """Integer lattice hash -> float32 in [0, 1). Deterministic, vectorised, platform independent."""
    h = np.uint32((salt * 0x27D4EB2F + 0x165667B1) & 0xFFFFFFFF)
    for k, c in enumerate(coords):
        h = h + np.asarray(c).astype(np.int32).view(np.uint32) * _U32(_HASH_PRIMES[k])
    h = (h ^ (h >> _U32(15))) * _U32(0x2C1B3C6D)
    h = (h ^ (h >> _U32(12))) * _U32(0x297A2D39)
    h = h ^ (h >> _U32(15))
    return (h >> _U32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def _value_noise(x, y, salt=0):
    """Smooth 2D value noise in [0, 1) (bilinear interpolation of lattice hashes)."""
    ix, iy = np.floor(x), np.floor(y)
    fx, fy = (x - ix).astype(np.float32), (y - iy).astype(np.float32)
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    a, b = _hash(ix, iy, salt=salt), _hash(ix + 1, iy, salt=salt)
    c, d = _hash(ix, iy + 1, salt=salt), _hash(ix + 1, iy + 1, salt=salt)
    return (a + (b - a) * fx) + ((c + (d - c) * fx) - (a + (b - a) * fx)) * fy


_APPEARANCE = {
    # gain, tint, ambient, diffuse, saturation, haze distance (m), fog distance (m) or 0,
    # sky zenith / horizon colours, cloud cover, sun elevation override (deg) + azimuth offset, rain
    "clone": dict(gain=1.0, tint=(1.0, 1.0, 1.0), amb=0.5, dif=0.6, sat=1.0, haze=900.0, fog=0.0,
                  top=(0.30, 0.52, 0.85), hor=(0.74, 0.84, 0.94), clouds=0.35, sun=None, rain=False),
    "morning": dict(gain=0.95, tint=(1.08, 0.98, 0.84), amb=0.42, dif=0.75, sat=1.05, haze=450.0, fog=0.0,
                    top=(0.42, 0.58, 0.82), hor=(0.98, 0.84, 0.66), clouds=0.25, sun=(14.0, 1.2), rain=False),
    "sunset": dict(gain=0.78, tint=(1.2, 0.82, 0.6), amb=0.38, dif=0.7, sat=1.1, haze=500.0, fog=0.0,
                   top=(0.25, 0.27, 0.5), hor=(1.0, 0.58, 0.3), clouds=0.3, sun=(5.0, 3.1), rain=False),
    "overcast": dict(gain=0.92, tint=(0.97, 1.0, 1.04), amb=0.85, dif=0.12, sat=0.55, haze=450.0, fog=0.0,
                     top=(0.58, 0.6, 0.64), hor=(0.78, 0.79, 0.8), clouds=0.9, sun=None, rain=False),
    "fog": dict(gain=0.95, tint=(1.0, 1.0, 1.02), amb=0.85, dif=0.1, sat=0.6, haze=450.0, fog=45.0,
                top=(0.74, 0.75, 0.77), hor=(0.76, 0.77, 0.78), clouds=0.0, sun=None, rain=False),
    "rain": dict(gain=0.7, tint=(0.95, 0.98, 1.05), amb=0.8, dif=0.1, sat=0.6, haze=220.0, fog=0.0,
                 top=(0.42, 0.44, 0.48), hor=(0.62, 0.64, 0.67), clouds=0.95, sun=None, rain=True),
}


def _appearance(variation: str) -> dict:
    return _APPEARANCE.get(variation, _APPEARANCE["clone"])


def _shade(layout: SceneLayout, gb: _GBuffer, variation: str, rng: np.random.Generator) -> np.ndarray:
    """Colour every pixel from the G-buffer; only appearance (never labels or depth) depends on variation."""
    ap = _appearance(variation)
    H, W = gb.depth.shape
    n = H * W
    pid = gb.pid.reshape(-1)
    depth = gb.depth.reshape(-1)
    face = gb.face.reshape(-1)
    dx, dy, dz = (c.reshape(-1) for c in gb.rays.d)
    dfin = np.where(np.isfinite(depth), depth, 0.0)
    Px, Py, Pz = gb.C[0] + dfin * dx, gb.C[1] + dfin * dy, gb.C[2] + dfin * dz  # hit points (world)
    col = np.zeros((n, 3), np.float32)

    sun = layout.sun
    if ap["sun"] is not None:
        el, az_off = np.deg2rad(ap["sun"][0]), ap["sun"][1]
        az = np.arctan2(sun[0], sun[2]) + az_off
        sun = np.array([np.cos(el) * np.sin(az), -np.sin(el), np.cos(el) * np.cos(az)])
    # Lambert term per box face code (axis * 2 + entered-along-+axis => normal -axis).
    ndl_face = np.clip(np.array([sun[0], -sun[0], sun[1], -sun[1], sun[2], -sun[2], 0.0], np.float32), 0, None)
    amb, dif = np.float32(ap["amb"]), np.float32(ap["dif"])

    g = np.flatnonzero(pid == _PID_GROUND)
    if g.size:
        c = _ground_colors(layout, Px[g], Pz[g]) * (amb + dif * ndl_face[3])
        if ap["rain"]:  # wet streets reflect the sky
            puddle = _value_noise(Px[g] * 0.7, Pz[g] * 0.35, salt=9)
            c = c * 0.55 + (0.12 + 0.25 * puddle)[:, None] * np.array(ap["hor"], np.float32)
        col[g] = c
    obj = np.flatnonzero(pid >= 0)
    if obj.size:
        pr = gb.prims
        cols = _prim_columns(pr)
        mat = pr.material[pid[obj]]
        for m in np.unique(mat):
            idx = obj[mat == m]
            f = face[idx]
            c, nrm_s, emi = _material_colors(int(m), Px[idx].astype(np.float32), Py[idx].astype(np.float32),
                                             Pz[idx].astype(np.float32), f, pr, cols, pid[idx], layout)
            ndl = ndl_face[f]
            if nrm_s is not None:
                sph = f == 6
                ndl[sph] = np.clip(nrm_s[sph] @ sun.astype(np.float32), 0, None)
            sh = amb + dif * ndl
            if emi is not None:
                sh[emi] = 1.0  # lamps keep their colour
            col[idx] = c * sh[:, None]
    hd = np.flatnonzero(pid == _PID_HOOD)
    if hd.size:  # the bonnet: dark paint mirroring the sky
        zr = Pz[hd] - gb.C[2]
        c = (0.1 + 0.12 * np.clip(zr / 2.4, 0, 1))[:, None] * np.array([1.0, 1.0, 1.1], np.float32)
        c += 0.08 * _value_noise(Px[hd] * 3, zr * 3, salt=5)[:, None]
        col[hd] = c * (amb + dif * ndl_face[3])

    # Aerial perspective (and fog) by Euclidean distance.
    hor = np.array(ap["hor"], np.float32)
    dist = (dfin * np.sqrt(gb.rays.norm2.reshape(-1))).astype(np.float32)
    a = 1.0 - np.exp(-dist / np.float32(ap["haze"]))
    if ap["fog"] > 0:
        a = 1.0 - (1.0 - a) * np.exp(-dist / np.float32(ap["fog"]))
    col += (hor - col) * a[:, None]

    # Sky: gradient by elevation, clouds on a plane 1.5 km up (they stay put in the world).
    sk = np.flatnonzero(pid == _PID_SKY)
    if sk.size:
        ddx, ddy, ddz = dx[sk], dy[sk], dz[sk]
        el = np.clip(-ddy / np.sqrt(gb.rays.norm2.reshape(-1)[sk]), 0.0, 1.0)
        t = (np.clip(el / 0.6, 0, 1) ** 0.6).astype(np.float32)[:, None]
        top = np.array(ap["top"], np.float32)
        sky = hor * (1 - t) + top * t
        if ap["clouds"] > 0:
            k = 1500.0 / np.maximum(-ddy, 0.02)
            cu, cv = (gb.C[0] + ddx * k) / 500.0, (gb.C[2] + ddz * k) / 500.0
            dens = _value_noise(cu.astype(np.float32), cv.astype(np.float32), salt=layout.seed + 11)
            amt = (np.clip((dens - (1.0 - ap["clouds"]) * 0.75) * 2.5, 0, 1) * np.clip(el * 10, 0, 1))[:, None]
            cloud = np.clip(0.55 + 0.48 * dens[:, None] * hor, 0, 1)
            sky = sky * (1 - amt) + cloud * amt
        if ap["fog"] > 0:
            sky = sky * 0.1 + hor * 0.9
        col[sk] = sky

    col *= np.array(ap["tint"], np.float32) * np.float32(ap["gain"])
    if ap["sat"] != 1.0:
        grey = col.mean(1, keepdims=True)
        col = grey + np.float32(ap["sat"]) * (col - grey)
    img = col.reshape(H, W, 3)
    if ap["rain"]:
        img = _rain_streaks(img, rng)
    # Vignetting and sensor noise keep flat regions from being a single colour.
    img = img * (gb.rays.vignette[..., None] * np.float32(255.0))
    img += rng.integers(-3, 4, img.shape, dtype=np.int8)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _rain_streaks(img, rng):
    H, W, _ = img.shape
    layer = np.zeros((H, W), np.float32)
    count = max(1, H * W // 350)
    length = max(3, H // 14)
    y0 = rng.integers(-length, H, count)
    x0 = rng.integers(0, W, count)
    for k in range(length):  # one step along all streaks at once
        y, x = y0 + k, x0 + int(k * 0.3)
        ok = (y >= 0) & (y < H) & (x < W)
        np.add.at(layer, (y[ok], x[ok]), 0.18)
    layer = np.clip(layer, 0, 0.5)[..., None]
    return img * (1 - layer) + 0.85 * layer


def _marking_lines(L: SceneLayout):
    """(X, dash period, painted length) of each longitudinal marking; period 0 = solid line."""
    lw = L.lane_width
    lines = [(L.median + L.lanes_right * lw, 0.0, 0.0), (-L.median - L.lanes_left * lw, 0.0, 0.0)]
    if L.median > 0:
        lines += [(L.median, 0.0, 0.0), (-L.median, 0.0, 0.0)]
    else:
        lines.append((0.0, 12.0, 6.0) if L.style == "rural" else (0.0, 0.0, 0.0))
    lines += [(L.median + i * lw, 9.0, 3.0) for i in range(1, L.lanes_right)]
    lines += [(-L.median - i * lw, 9.0, 3.0) for i in range(1, L.lanes_left)]
    return lines


def _ground_colors(L: SceneLayout, X, Z):
    road, side = _ground_zones(L, X)
    col = np.empty((len(X), 3), np.float32)
    fine = _hash(np.floor(X * 12), np.floor(Z * 12), salt=L.seed + 1)
    r = np.flatnonzero(road)
    if r.size:  # asphalt: grain + patches, white markings, zebra crossings
        Xr, Zr = X[r], Z[r]
        coarse = _value_noise(Xr * 0.4, Zr * 0.25, salt=L.seed + 2)
        col[r] = L.road_color.astype(np.float32) * (0.8 + 0.12 * fine[r] + 0.16 * coarse)[:, None]
        half = 0.065
        mark = np.zeros(r.size, bool)
        for x, period, on in _marking_lines(L):
            m = np.abs(Xr - x) < half
            if period:
                m &= (Zr % period) < on
            mark |= m
        zmin, zmax = Zr.min(), Zr.max()
        for zz in L.zebra_z[(L.zebra_z > zmin - 4.0) & (L.zebra_z < zmax)]:
            mark |= (Zr > zz) & (Zr < zz + 4.0) & ((Xr % 1.0) < 0.5)
        rm = r[mark]
        col[rm] = (0.78 + 0.12 * fine[rm])[:, None] * np.array([1.0, 1.0, 0.97], np.float32)
    if side.any():  # sidewalk: tiles with joints, kerb stones along the road
        sx, sz = X[side] / 0.5, Z[side] / 0.5
        tile = _hash(np.floor(sx), np.floor(sz), salt=L.seed + 3)
        joint = ((sx % 1.0) < 0.06) | ((sz % 1.0) < 0.06)
        c = L.sidewalk_color.astype(np.float32) * (0.85 + 0.2 * tile - 0.25 * joint)[:, None]
        x_left, x_right = L.road_edges
        kerb = (np.abs(X[side] - x_right) < 0.25) | (np.abs(X[side] - x_left) < 0.25)
        c[kerb] = 0.62 + 0.05 * tile[kerb, None]
        col[side] = c
    ter = ~(road | side)
    if ter.any():  # grass and dirt
        blotch = _value_noise(X[ter] * 0.3, Z[ter] * 0.3, salt=L.seed + 4)[:, None] * 0.6
        dirt = np.array([0.40, 0.33, 0.22], np.float32)
        col[ter] = (L.terrain_color.astype(np.float32) * (1 - blotch) + dirt * blotch) * (0.75 + 0.4 * fine[ter])[:, None]
    return col


def _prim_columns(pr: _Prims) -> Dict[str, np.ndarray]:
    """Per-primitive attributes as contiguous 1D arrays: 1D gathers are ~10x faster than row gathers."""
    cols = {f"lo{k}": np.ascontiguousarray(pr.lo[:, i], np.float32) for i, k in enumerate("xyz")}
    cols.update({f"hi{k}": np.ascontiguousarray(pr.hi[:, i], np.float32) for i, k in enumerate("xyz")})
    cols.update({f"p{i}": np.ascontiguousarray(pr.param[:, i]) for i in range(4)})
    cols.update({f"c{k}": np.ascontiguousarray(pr.center[:, i], np.float32) for i, k in enumerate("xyz")})
    cols["r"] = pr.radius.astype(np.float32)
    return cols


def _material_colors(m, X, Y, Z, face, pr: _Prims, cols, pi, L: SceneLayout):
    """Base colours (n, 3), sphere normals (or None) and emissive flags (or None) for one material group.

    X, Y, Z are float32 world hit points; ``cols`` comes from :func:`_prim_columns`.
    """
    at = lambda key: cols[key][pi]  # noqa: E731 - per-pixel value of a per-primitive attribute
    base = np.take(pr.color, pi, axis=0)
    ax = face // 2
    n = len(pi)
    grain = _hash(np.floor(X * 9), np.floor(Y * 9), np.floor(Z * 9), salt=m + 31)
    vert = -Y  # height above ground
    nrm_s, emissive = None, None
    k = 0.86 + 0.2 * grain  # brightness multiplier applied at the end
    if m == _M_FACADE:
        horiz = ax != 1
        lo_u = np.where(ax == 0, at("loz"), at("lox"))
        u = np.where(ax == 0, Z, X) - lo_u
        u_len = np.where(ax == 0, at("hiz"), at("hix")) - lo_u
        height = -at("loy")
        floor_h, spacing, wfrac, style = at("p0"), at("p1"), at("p2"), at("p3")
        cu, cv = u / spacing, vert / floor_h
        fu, fv = cu % 1.0, cv % 1.0
        iu, iv = np.floor(cu), np.floor(cv)
        inner = horiz & (u > 0.4) & (u < u_len - 0.4)
        cu_off = np.abs(fu - 0.5)
        win = inner & (cu_off < wfrac / 2) & (fv > 0.3) & (fv < 0.78) & (iv >= 1) & (vert < height - 0.7)
        shop = inner & (style == 0) & (iv == 0) & (fv > 0.12) & (fv < 0.8) & (cu_off < 0.42)
        ledge = horiz & (cu_off < wfrac / 2 + 0.05) & (fv > 0.25) & (fv <= 0.3) & (iv >= 1)
        k = k * np.where(ledge, 0.7, 1.0) * np.where(horiz & (vert > height - 0.35), 0.6, 1.0)  # sills, cornice
        base *= k[:, None]
        glass = np.flatnonzero(win | shop)
        if glass.size:
            r = _hash(iu[glass], iv[glass], pi[glass], salt=77)
            g_col = np.stack([0.10 + 0.25 * r, 0.13 + 0.27 * r, 0.18 + 0.3 * r], 1)
            g_col[r > 0.93] = (0.9, 0.8, 0.5)  # a few lit rooms
            base[glass] = g_col
        roof = np.flatnonzero(ax == 1)
        base[roof] = (0.25 + 0.1 * grain[roof])[:, None] * np.array([1.0, 0.95, 0.9], np.float32)
    elif m == _M_ROUGH:
        base *= (0.8 + 0.3 * grain)[:, None]
    elif m == _M_FOLIAGE:
        leaf = _hash(np.floor(X * 5), np.floor(Y * 5), np.floor(Z * 5), salt=41)
        base *= (0.55 + 0.6 * leaf)[:, None]
        base[:, 0] += 0.06 * (grain - 0.5)
        sph = face == 6
        if sph.any():
            nrm_s = np.zeros((n, 3), np.float32)
            ps, r = pi[sph], cols["r"][pi[sph]]
            nrm_s[sph, 0] = (X[sph] - cols["cx"][ps]) / r
            nrm_s[sph, 1] = (Y[sph] - cols["cy"][ps]) / r
            nrm_s[sph, 2] = (Z[sph] - cols["cz"][ps]) / r
    elif m == _M_SIGN:
        front = face == 5  # entered through the -Z face: the side facing the approaching camera
        lox, hix, loy, hiy = at("lox"), at("hix"), at("loy"), at("hiy")
        du = (X - (lox + hix) / 2) / ((hix - lox) / 2)
        dv = (Y - (loy + hiy) / 2) / ((hiy - loy) / 2)
        r = np.sqrt(du ** 2 + dv ** 2)
        design = at("p0")
        white = np.array([0.92, 0.92, 0.9], np.float32)
        base[(design == 0) & (r < 0.68)] = white
        base[(design == 1) & (np.abs(du) < 0.15) & (np.abs(dv) < 0.6)] = white
        base[((design == 0) | (design == 1)) & (r > 1.0)] = 0.55
        base[(design == 2) & (np.abs(du) + np.abs(dv) > 0.75)] = white
        base[(design == 3) & ((np.abs(du) > 0.85) | (np.abs(dv) > 0.85))] = white
        base[~front] = 0.5
    elif m == _M_TLIGHT:
        front = face == 5
        lox, hix, loy, hiy = at("lox"), at("hix"), at("loy"), at("hiy")
        hh = hiy - loy
        rel = (Y - loy) / hh  # 0 at the top
        lamp_i = np.clip(np.floor(rel * 3), 0, 2)
        dv = (rel * 3 - lamp_i - 0.5) * hh / 3
        du = X - (lox + hix) / 2
        lamp = front & (du ** 2 + dv ** 2 < (0.33 * (hix - lox)) ** 2)
        on = lamp & (lamp_i == at("p0"))
        lamp_cols = np.array([[1.0, 0.15, 0.1], [1.0, 0.7, 0.1], [0.2, 1.0, 0.45]], np.float32)
        base *= (0.8 + 0.4 * grain)[:, None]
        base[lamp] = 0.12
        base[on] = lamp_cols[lamp_i[on].astype(int)]
        emissive = on
    elif m in (_M_BODY, _M_CABIN, _M_CARGO):
        heading = at("p0")
        loz, hiz, lox, hix, h_top = at("loz"), at("hiz"), at("lox"), at("hix"), -at("loy")
        zc, half_l = (loz + hiz) / 2, (hiz - loz) / 2
        side_f, endf, top = ax == 0, ax == 2, ax == 1
        # Entered through the -Z face (code 5) = face normal -Z; the front face's normal is the heading.
        front = endf & (np.where(face == 5, -1.0, 1.0) == heading)
        base *= k[:, None]  # metallic flakes
        base[top] = base[top] * 0.8 + 0.15  # glossy roof mirrors the sky
        if m == _M_BODY:
            is_cab = at("p1") > 0
            base[vert < 0.28] = 0.06  # bumpers, sills
            wz = np.minimum(np.abs(Z - (zc + 0.62 * half_l)), np.abs(Z - (zc - 0.62 * half_l)))
            wheel = side_f & (wz ** 2 + (vert - 0.33) ** 2 < 0.33 ** 2)
            base[wheel] = (0.04 + 0.05 * grain[wheel])[:, None]
            band = (vert > 0.55 * h_top) & (vert < 0.8 * h_top) & (np.abs(X - (lox + hix) / 2) > 0.55 * (hix - lox) / 2)
            base[front & band & ~is_cab] = (0.95, 0.95, 0.85)  # headlights
            base[endf & ~front & band] = (0.7, 0.04, 0.04)  # tail lights
            cabwin = np.flatnonzero(is_cab & (vert > 0.6 * h_top) & (vert < 0.93 * h_top) & ~top)
            base[cabwin] = (0.12 + 0.15 * (vert[cabwin] / h_top[cabwin]))[:, None]
        elif m == _M_CABIN:
            h_lo = -at("hiy")
            frame_ = (vert > h_top - 0.07) | (vert < h_lo + 0.05)
            pillar = side_f & ((np.abs(Z - loz) < 0.12) | (np.abs(Z - hiz) < 0.12) | (np.abs(Z - zc) < 0.06))
            glass = np.flatnonzero(~top & ~frame_ & ~pillar)
            refl = np.clip((vert[glass] - h_lo[glass]) / np.maximum(h_top[glass] - h_lo[glass], 1e-3), 0, 1)
            base[glass] = (0.08 + 0.22 * refl)[:, None] * np.array([0.9, 1.0, 1.1], np.float32)
        else:  # cargo box: ribbed panels
            base[side_f & ((Z % 0.6) < 0.06)] *= 0.75
            base[vert < 0.25] = 0.06
    return np.clip(base, 0, 1.5), nrm_s, emissive


# --------------------------------------------------------------------------------------------------
# Public in-memory API
# --------------------------------------------------------------------------------------------------


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


def _euler_yxz(M):
    """(ry, rx, rz) with M = Ry(ry) Rx(rx) Rz(rz) - the order VKITTI2 lists rotations in."""
    rx = float(np.arcsin(np.clip(-M[1, 2], -1.0, 1.0)))
    ry = float(np.arctan2(M[0, 2], M[2, 2]))
    rz = float(np.arctan2(M[1, 0], M[1, 1]))
    return ry, rx, rz


def _wrap(a):
    return float((a + np.pi) % (2 * np.pi) - np.pi)


def _tracks(gb: _GBuffer, H: int, W: int) -> List[SyntheticTrack]:
    tr = gb.track
    ys, xs = np.nonzero(tr >= 0)
    if ys.size == 0:
        return []
    uniq, inv, counts = np.unique(tr[ys, xs], return_inverse=True, return_counts=True)
    left, right = np.full(len(uniq), W), np.full(len(uniq), -1)
    top, bottom = np.full(len(uniq), H), np.full(len(uniq), -1)
    np.minimum.at(left, inv, xs)
    np.maximum.at(right, inv, xs)
    np.minimum.at(top, inv, ys)
    np.maximum.at(bottom, inv, ys)
    res = []
    for k, t in enumerate(uniq):
        v = gb.vehicles[int(t)]
        w, h, l = v.dims
        # KITTI convention: ry = 0 faces +x, so heading +Z is ry = -pi/2.
        ry_w = -np.pi / 2 if v.heading > 0 else np.pi / 2
        rot_c = _euler_yxz(gb.R_wc @ _rot_y(ry_w))
        pw = np.array([v.x, 0.0, v.z_at(gb.frame)])  # bottom centre
        pc = gb.R_wc @ (pw - gb.C)
        umin, umax, vmin, vmax = gb.extents[int(t)]
        full = max((umax - umin) * (vmax - vmin), 1e-9)
        inside = max(0.0, min(umax, W - 0.5) - max(umin, -0.5)) * max(0.0, min(vmax, H - 0.5) - max(vmin, -0.5))
        npx = int(counts[k])
        res.append(SyntheticTrack(
            track_id=int(t), label=_VK_LABEL[v.kind], model=v.model, color=v.color_name,
            width=w, height=h, length=l, world_xyz=tuple(float(x) for x in pw), rotation_world=(ry_w, 0.0, 0.0),
            camera_xyz=tuple(float(x) for x in pc), rotation_camera=rot_c,
            alpha=_wrap(rot_c[0] - np.arctan2(pc[0], pc[2])),
            bbox=(int(left[k]), int(right[k]), int(top[k]), int(bottom[k])), number_pixels=npx,
            truncation_ratio=float(np.clip(1.0 - inside / full, 0.0, 1.0)),
            occupancy_ratio=float(min(npx / max(gb.unoccluded.get(int(t), npx), 1), 1.0)),
            is_moving=v.moving))
    return res


def _resolve(scene, seed, profile="vkitti2") -> SceneLayout:
    if isinstance(scene, SceneLayout):
        return scene
    return build_scene(str(scene), seed, profile=profile)


def _frame_rng(layout: SceneLayout, frame: int, camera: int, variation: str) -> np.random.Generator:
    return np.random.default_rng(_stable_seed(layout.seed, layout.name, layout.profile, frame, camera, variation))


def render_frame(scene: Union[str, SceneLayout], frame_index: int, *, height: int = 188, width: int = 621,
                 variation: str = "clone", camera: int = 0, seed: int = 0,
                 intrinsics: Optional[np.ndarray] = None) -> SyntheticFrame:
    """Render frame ``frame_index`` of ``scene`` (a name, laid out with ``seed``, or a :class:`SceneLayout`).

    ``intrinsics`` defaults to Virtual KITTI 2's K scaled to the image size (Cityscapes' for layouts built
    with ``profile="cityscapes"``). Appearance variations change only ``rgb``; ``N-deg-left/right`` yaw the camera.
    """
    layout = _resolve(scene, seed)
    if intrinsics is None:
        intrinsics = (cityscapes_intrinsics if layout.profile == "cityscapes" else vkitti2_intrinsics)(height, width)
    K = np.asarray(intrinsics, float)
    gb = _geometry(layout, frame_index, K, height, width, variation, camera)
    return _finish(layout, gb, frame_index, variation, camera)


def _finish(layout: SceneLayout, gb: _GBuffer, frame_index: int, variation: str, camera: int) -> SyntheticFrame:
    H, W = gb.depth.shape
    rgb = _shade(layout, gb, variation, _frame_rng(layout, frame_index, camera, variation))
    cs_id = _cityscapes_tables()[0][gb.label]
    ext = np.eye(4)
    ext[:3, :3] = gb.R_wc
    ext[:3, 3] = -gb.R_wc @ gb.C
    return SyntheticFrame(
        rgb=rgb, depth=gb.depth.astype(np.float32), category=_TO_VKITTI2[gb.label], track_id=gb.track,
        label=gb.label, cityscapes_id=cs_id, intrinsics=gb.K.copy(), extrinsic=ext, tracks=_tracks(gb, H, W),
        scene=layout.name, frame_index=frame_index, camera=camera, variation=variation)


# --------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------


def vkitti2_depth_png(depth: np.ndarray) -> np.ndarray:
    """Metres -> Virtual KITTI 2 depth (uint16 centimetres, clipped at 65535 = 655.35 m, sky included)."""
    d = np.where(np.isfinite(depth), np.asarray(depth, np.float64) * 100.0, 65535.0)
    return np.clip(np.round(d), 0, 65535).astype(np.uint16)


def cityscapes_disparity_png(depth: np.ndarray, baseline: float, fx: float,
                             invalid: Optional[np.ndarray] = None) -> np.ndarray:
    """Metres -> Cityscapes disparity PNG values: ``round(baseline * fx / depth * 256) + 1``; 0 = invalid.

    Invalid: sky / non-finite depth, ``invalid`` pixels (e.g. the bonnet), and disparities that uint16
    cannot hold (too far: below 1/256 px; too close: above 255.996 px).
    """
    depth = np.asarray(depth, np.float64)
    ok = np.isfinite(depth) & (depth > 0)
    disp = np.where(ok, baseline * fx / np.where(ok, depth, 1.0), 0.0)
    p = np.round(disp * 256.0) + 1.0
    ok &= (p >= 2) & (p <= 65535)
    if invalid is not None:
        ok &= ~invalid
    return np.where(ok, p, 0).astype(np.uint16)


def _save_png(arr: np.ndarray, path: str, mode: Optional[str] = None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if mode == "P":
        im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr, np.uint8).tobytes())
        im.putpalette(_instance_palette())
    else:
        im = Image.fromarray(arr)
    im.save(path, format="PNG", compress_level=2)  # fast; the files stay lossless


@functools.lru_cache(maxsize=1)
def _instance_palette():
    rng = np.random.default_rng(1234)
    pal = rng.integers(40, 256, (256, 3)).astype(np.uint8)
    pal[0] = 0
    return pal.reshape(-1).tolist()


def _num(x) -> str:
    """Compact fixed-point text like VKITTI2's files (no exponent, no trailing zeros)."""
    s = f"{float(x):.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "", "-") else s


class _ClassStats:
    def __init__(self, names: Mapping[int, str]):
        self.names = dict(names)
        self.counts = np.zeros(256, np.int64)
        self.dmin, self.dmax = np.inf, 0.0

    def add(self, ids, depth):
        self.counts += np.bincount(ids.reshape(-1), minlength=256)[:256]
        fin = depth[np.isfinite(depth)]
        if fin.size:
            self.dmin, self.dmax = min(self.dmin, float(fin.min())), max(self.dmax, float(fin.max()))

    def fractions(self):
        tot = max(int(self.counts.sum()), 1)
        return {self.names.get(i, str(i)): float(c) / tot for i, c in enumerate(self.counts) if c}


# --------------------------------------------------------------------------------------------------
# Virtual KITTI 2 writer
# --------------------------------------------------------------------------------------------------


def _parse_cameras(cameras) -> List[int]:
    out = []
    for c in ([cameras] if isinstance(cameras, (int, str)) else cameras):
        c = str(c)
        out.append(int(c.split("_")[-1]) if c.lower().startswith("camera") else int(c))
    return out


def generate_vkitti2(out_dir: str, *, scenes: Sequence[str] = VKITTI2_SCENES,
                     variations: Sequence[str] = ("clone",), cameras: Sequence[Union[int, str]] = (0,),
                     frames: int = 10, height: int = 188, width: int = 621, seed: int = 0,
                     frame_step: int = 1) -> dict:
    """Write scenes in the merged Virtual KITTI 2 layout under ``out_dir``; return a summary dict.

    ``frames`` frames are written per scene, variation and camera: frame indices 0, ``frame_step``,
    2 ``frame_step``, ... of the drive (a step above 1 spreads few frames over a longer stretch of
    street, i.e. more distinct views for the same number of files).

    The summary has ``frames`` (one dict per written frame/camera with the paths of ``rgb``, ``depth``,
    ``class``, ``instance``), ``counts`` (scene -> variation -> frames), ``class_fractions``, ``depth_range``.
    """
    t0 = time.perf_counter()
    if frame_step < 1 or (frames - 1) * frame_step >= MAX_FRAMES:
        raise ValueError(f"frames={frames} x frame_step={frame_step} exceeds a scene's {MAX_FRAMES} frames")
    cams = _parse_cameras(cameras)
    K = vkitti2_intrinsics(height, width)
    stats = _ClassStats(_VK_TRAIN_TO_NAME)
    written, counts = [], {}
    for scene in scenes:
        layout = build_scene(scene, seed, profile="vkitti2")
        counts[scene] = {}
        for variation in variations:
            _variation_yaw(variation)  # validate early
        per_var = {v: dict(intr=[], extr=[], bbox=[], pose=[], tracks={}) for v in variations}
        for f in range(0, frames * frame_step, frame_step):
            for cam in cams:
                geo_cache = {}
                for variation in variations:
                    yaw = _variation_yaw(variation)
                    if yaw not in geo_cache:  # appearance variations share one geometry pass
                        geo_cache[yaw] = _geometry(layout, f, K, height, width, variation, cam)
                    fr = _finish(layout, geo_cache[yaw], f, variation, cam)
                    base = os.path.join(out_dir, scene, variation, "frames")
                    paths = _write_vkitti2_frame(fr, base, f, cam)
                    written.append(dict(scene=scene, variation=variation, camera=cam, frame=f, **paths))
                    stats.add(fr.category, fr.depth)
                    _collect_vkitti2_text(per_var[variation], fr, f, cam)
        for variation in variations:
            _write_vkitti2_text(os.path.join(out_dir, scene, variation), per_var[variation])
            counts[scene][variation] = frames
    return dict(format="vkitti2", root=os.path.abspath(out_dir), height=height, width=width, cameras=cams,
                frames=written, counts=counts, class_fractions=stats.fractions(),
                depth_range=(stats.dmin, stats.dmax), seconds=time.perf_counter() - t0)


def _write_vkitti2_frame(fr: SyntheticFrame, base: str, f: int, cam: int) -> Dict[str, str]:
    c = f"Camera_{cam}"
    p = dict(rgb=os.path.join(base, "rgb", c, f"rgb_{f:05d}.jpg"),
             depth=os.path.join(base, "depth", c, f"depth_{f:05d}.png"),
             **{"class": os.path.join(base, "classSegmentation", c, f"classgt_{f:05d}.png")},
             instance=os.path.join(base, "instanceSegmentation", c, f"instancegt_{f:05d}.png"))
    os.makedirs(os.path.dirname(p["rgb"]), exist_ok=True)
    Image.fromarray(fr.rgb).save(p["rgb"], format="JPEG", quality=92)
    _save_png(vkitti2_depth_png(fr.depth), p["depth"])
    _save_png(_VK_COLORS[fr.category], p["class"])
    _save_png((fr.track_id + 1).astype(np.uint8), p["instance"], mode="P")
    return p


def _collect_vkitti2_text(acc, fr: SyntheticFrame, f: int, cam: int):
    K, E = fr.intrinsics, fr.extrinsic
    acc["intr"].append(f"{f} {cam} {_num(K[0, 0])} {_num(K[1, 1])} {_num(K[0, 2])} {_num(K[1, 2])}")
    acc["extr"].append(f"{f} {cam} " + " ".join(_num(x) for x in E.reshape(-1)))
    for t in fr.tracks:
        acc["tracks"][t.track_id] = (t.label, t.model, t.color)
        mv = "True" if t.is_moving else "False"
        acc["bbox"].append(f"{f} {cam} {t.track_id} {t.bbox[0]} {t.bbox[1]} {t.bbox[2]} {t.bbox[3]} "
                           f"{t.number_pixels} {_num(t.truncation_ratio)} {_num(t.occupancy_ratio)} {mv}")
        vals = [t.alpha, t.width, t.height, t.length, *t.world_xyz, *t.rotation_world, *t.camera_xyz,
                *t.rotation_camera]
        acc["pose"].append(f"{f} {cam} {t.track_id} " + " ".join(_num(x) for x in vals) + f" {mv}")


def _write_vkitti2_text(root: str, acc):
    os.makedirs(root, exist_ok=True)

    def write(name, header, lines):
        with open(os.path.join(root, name), "w") as fh:
            fh.write(header + "\n" + "".join(line + "\n" for line in lines))

    write("colors.txt", "Category r g b",
          [f"{c['name']} {c['color'][0]} {c['color'][1]} {c['color'][2]}" for c in VKITTI2_CATEGORIES]
          + ["Undefined 0 0 0"])
    write("intrinsic.txt", "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]", acc["intr"])
    write("extrinsic.txt", "frame cameraID r1,1 r1,2 r1,3 t1 r2,1 r2,2 r2,3 t2 r3,1 r3,2 r3,3 t3 0 0 0 1",
          acc["extr"])
    write("info.txt", "trackID label model color",
          [f"{t} {lab} {model} {color}" for t, (lab, model, color) in sorted(acc["tracks"].items())])
    write("bbox.txt", "frame cameraID trackID left right top bottom number_pixels truncation_ratio "
                      "occupancy_ratio isMoving", acc["bbox"])
    write("pose.txt", "frame cameraID trackID alpha width height length world_space_X world_space_Y "
                      "world_space_Z rotation_world_space_y rotation_world_space_x rotation_world_space_z "
                      "camera_space_X camera_space_Y camera_space_Z rotation_camera_space_y "
                      "rotation_camera_space_x rotation_camera_space_z isMoving", acc["pose"])


# --------------------------------------------------------------------------------------------------
# Cityscapes writer
# --------------------------------------------------------------------------------------------------


def _parse_splits(splits) -> Dict[str, int]:
    if isinstance(splits, str):
        out = {}
        for part in filter(None, (p.strip() for p in splits.split(","))):
            name, _, n = part.partition(":")
            out[name] = int(n or 1)
        return out
    return dict(splits)


def generate_cityscapes(out_dir: str, *, splits: Union[str, Mapping[str, int]] = CITYSCAPES_DEFAULT_SPLITS,
                        frames: int = 3, height: int = 256, width: int = 512, seed: int = 0) -> dict:
    """Write Cityscapes-layout sequences under ``out_dir`` and convert them to panoptic with cityscapesscripts.

    ``splits`` maps split -> number of sequences ("train:2,val:1" also works); sequences are spread over the
    split's cities. The summary's ``frames`` lists, per frame, the paths of ``image``, ``label_ids``,
    ``instance_ids``, ``train_ids``, ``color``, ``disparity``, ``camera`` and ``panoptic``, plus ``layout``
    (the scene name to pass to :func:`build_scene` with ``profile="cityscapes"``).
    """
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    t0 = time.perf_counter()
    split_n = _parse_splits(splits)
    id_names = _cityscapes_tables()[4]
    K = cityscapes_intrinsics(height, width)
    stats = _ClassStats(id_names)
    written, counts = [], {}
    for split, n_seq in split_n.items():
        cities = _CITYSCAPES_CITIES.get(split, (split,))
        counts[split] = {}
        for s in range(n_seq):
            city, seq = cities[s % len(cities)], s // len(cities)
            name = f"{city}_{seq:06d}"
            layout = build_scene(name, seed, profile="cityscapes")
            counts[split][city] = counts[split].get(city, 0) + frames
            for f in range(frames):
                fr = render_frame(layout, f, height=height, width=width, intrinsics=K)
                prefix = f"{city}_{seq:06d}_{f:06d}"
                paths = _write_cityscapes_frame(fr, layout, out_dir, split, city, prefix, K)
                written.append(dict(split=split, city=city, sequence=seq, frame=f, prefix=prefix, layout=name,
                                    **paths))
                stats.add(fr.cityscapes_id, fr.depth)
    gt = os.path.join(out_dir, "gtFine")
    with contextlib.redirect_stdout(io.StringIO()):  # it reports progress on stdout
        convert2panoptic(cityscapesPath=gt, outputFolder=gt, useTrainId=False, setNames=list(split_n))
    for w in written:
        w["panoptic"] = os.path.join(gt, f"cityscapes_panoptic_{w['split']}", f"{w['prefix']}_gtFine_panoptic.png")
    return dict(format="cityscapes", root=os.path.abspath(out_dir), height=height, width=width, frames=written,
                counts=counts, class_fractions=stats.fractions(), depth_range=(stats.dmin, stats.dmax),
                panoptic_json={s: os.path.join(gt, f"cityscapes_panoptic_{s}.json") for s in split_n},
                seconds=time.perf_counter() - t0)


def _write_cityscapes_frame(fr: SyntheticFrame, layout: SceneLayout, out_dir, split, city, prefix, K):
    _, to_train, id_color, has_inst, _ = _cityscapes_tables()
    sub = os.path.join(split, city)
    gt = os.path.join(out_dir, "gtFine", sub, prefix + "_gtFine_")
    p = dict(image=os.path.join(out_dir, "leftImg8bit", sub, prefix + "_leftImg8bit.png"),
             label_ids=gt + "labelIds.png", instance_ids=gt + "instanceIds.png", train_ids=gt + "labelTrainIds.png",
             color=gt + "color.png", disparity=os.path.join(out_dir, "disparity", sub, prefix + "_disparity.png"),
             camera=os.path.join(out_dir, "camera", sub, prefix + "_camera.json"))
    ids = fr.cityscapes_id
    inst = ids.astype(np.uint16)
    thing = has_inst[ids] & (fr.track_id >= 0)
    inst[thing] = ids[thing].astype(np.uint16) * 1000 + fr.track_id[thing].astype(np.uint16)
    rgba = np.concatenate([id_color[ids], np.full(ids.shape + (1,), 255, np.uint8)], -1)
    _save_png(fr.rgb, p["image"])
    _save_png(ids, p["label_ids"])
    _save_png(inst, p["instance_ids"])
    _save_png(to_train[ids], p["train_ids"])
    _save_png(rgba, p["color"])
    hood = fr.label == _C["ego_vehicle"]
    _save_png(cityscapes_disparity_png(fr.depth, layout.stereo_baseline, K[0, 0], invalid=hood), p["disparity"])
    cam = {"extrinsic": {"baseline": layout.stereo_baseline, "pitch": round(layout.pitch, 6), "roll": 0.0,
                         "x": 1.7, "y": 0.0, "yaw": 0.0, "z": round(layout.camera_height, 6)},
           "intrinsic": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "u0": float(K[0, 2]), "v0": float(K[1, 2])}}
    os.makedirs(os.path.dirname(p["camera"]), exist_ok=True)
    with open(p["camera"], "w") as fh:
        json.dump(cam, fh, indent=4)
    return p
