"""Vehicle tracks: models, colours, per-lane placement and the boxes a vehicle is drawn with at a frame."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, List, NamedTuple, Sequence, Tuple

import numpy as np

from .constants import MAT_VEHICLE_BODY, MAT_VEHICLE_CABIN, MAT_VEHICLE_CARGO, MAX_FRAMES
from .primitives import PrimitiveBuilder, Primitives, jitter_color

if TYPE_CHECKING:
    from .layout import SceneLayout

NAMED_COLORS = {  # VKITTI2's info.txt names a body colour; keep the name and jitter the value
    "Black": (0.05, 0.05, 0.06), "White": (0.88, 0.88, 0.86), "Silver": (0.66, 0.67, 0.69),
    "Grey": (0.38, 0.39, 0.40), "Red": (0.62, 0.06, 0.05), "Blue": (0.08, 0.18, 0.55),
    "Green": (0.10, 0.35, 0.15), "Yellow": (0.85, 0.72, 0.10), "Orange": (0.85, 0.38, 0.06),
    "Brown": (0.35, 0.22, 0.12),
}
COLOR_NAMES = tuple(NAMED_COLORS)
COLOR_PROBABILITIES = np.array([0.2, 0.18, 0.17, 0.13, 0.09, 0.09, 0.04, 0.03, 0.03, 0.04])
# kind -> [(model, width range, height range, length range)], drawn uniformly within the kind
VEHICLE_MODELS = {
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
VKITTI2_LABEL_OF_KIND = {"car": "Car", "van": "Van", "truck": "Truck"}

# A vehicle is "near" the camera while its Z relative to the camera is within this window (metres).
_NEAR_BEHIND, _NEAR_AHEAD = -40.0, 260.0
# An 8-bit instance PNG stores trackID + 1 (0 = none), so at most 254 tracks fit.
_MAX_TRACKS = 254


@dataclasses.dataclass(frozen=True)
class Vehicle:
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


class _Lane(NamedTuple):
    x: float          # lateral centre
    speed: float      # metres per frame (0: parking strip)
    heading: int
    is_ego: bool      # the lane Camera_0 drives in
    parked: bool


class _Draft(NamedTuple):
    """A vehicle before it gets its track id."""

    z_center: float   # centre Z at frame 0
    kind: str
    model: str
    color_name: str
    color: tuple
    dims: tuple
    x: float
    speed: float
    heading: int


def build_vehicles(layout: "SceneLayout", rng: np.random.Generator) -> Tuple[Vehicle, ...]:
    """Place vehicles per lane so that the ego camera sees traffic during all MAX_FRAMES frames."""
    lanes = _traffic_lanes(layout, rng)
    drafts = []
    for lane in lanes:
        drafts += _fill_lane(layout, rng, lane)
    return _number_tracks(drafts, layout.ego_speed)


def _traffic_lanes(layout: "SceneLayout", rng) -> List[_Lane]:
    ego_speed = layout.ego_speed
    lane_speed = lambda: rng.uniform(0.8, 1.25) * ego_speed  # noqa: E731
    lanes = []
    for i in range(layout.lanes_right):
        x = layout.median + (i + 0.5) * layout.lane_width
        is_ego = abs(x - layout.ego_x) < 1e-6
        # Same-direction traffic in the ego lane is a bit faster, so it never runs into the camera.
        lanes.append(_Lane(x, ego_speed * rng.uniform(1.03, 1.15) if is_ego else lane_speed(), 1, is_ego, False))
    for i in range(layout.lanes_left):
        lanes.append(_Lane(-layout.median - (i + 0.5) * layout.lane_width, -lane_speed(), -1, False, False))
    x_left, x_right = layout.road_edges
    if layout.parking[1] > 0:
        lanes.append(_Lane(x_right - layout.parking[1] / 2, 0.0, 1, False, True))
    if layout.parking[0] > 0:
        lanes.append(_Lane(x_left + layout.parking[0] / 2, 0.0, -1, False, True))
    return lanes


def _fill_lane(layout: "SceneLayout", rng, lane: _Lane) -> List[_Draft]:
    """Vehicles one after another along ``lane``, spread over every Z that comes near the camera."""
    truck_probability = 0.25 if layout.style == "highway" else 0.06
    # Z at frame 0 for which the vehicle is near the camera at some frame in [0, MAX_FRAMES].
    drift = (layout.ego_speed - lane.speed) * MAX_FRAMES
    z_min, z_max = _NEAR_BEHIND + min(0.0, drift), _NEAR_AHEAD + max(0.0, drift)
    if lane.is_ego:
        z_min = 14.0  # start ahead of the camera
    drafts = []
    z = z_min + rng.uniform(0, 15)
    while z < z_max:
        kind = "car"
        u = rng.random()
        if not lane.is_ego and not lane.parked and u < truck_probability:
            kind = "truck"
        elif u < truck_probability + 0.15:
            kind = "van"
        model, width_range, height_range, length_range = VEHICLE_MODELS[kind][
            int(rng.integers(0, len(VEHICLE_MODELS[kind])))]
        width, height, length = rng.uniform(*width_range), rng.uniform(*height_range), rng.uniform(*length_range)
        color_name = COLOR_NAMES[int(rng.choice(len(COLOR_NAMES), p=COLOR_PROBABILITIES / COLOR_PROBABILITIES.sum()))]
        color = tuple(jitter_color(rng, NAMED_COLORS[color_name], 0.04))
        # Parked cars mostly face the way of their side's traffic.
        heading = lane.heading if not lane.parked else (1 if rng.random() < 0.7 else -1) * lane.heading
        x = lane.x + (rng.uniform(-0.25, 0.25) if not lane.parked else rng.uniform(-0.1, 0.1))
        if lane.parked and rng.random() < 0.4:  # leave parking gaps
            z += rng.uniform(5, 30)
            continue
        drafts.append(_Draft(z + length / 2, kind, model, color_name, color, (width, height, length), x,
                             lane.speed, heading))
        if lane.parked:
            gap = rng.uniform(1.0, 3.0)
        else:
            gap = rng.uniform(6.0, 45.0) * (1.6 if layout.style == "highway" else 1)
        z += length + gap
    return drafts


def _number_tracks(drafts: List[_Draft], ego_speed: float) -> Tuple[Vehicle, ...]:
    """IDs in the order vehicles enter the camera's neighbourhood, so a sequence's first frames get small ids.

    Vehicles that never come near are dropped, and so are late extras beyond the 254 an 8-bit instance PNG holds.
    """
    def enters(draft: _Draft) -> float:  # first frame at which the vehicle is near the camera, inf = never
        z_rel, speed = draft.z_center, draft.speed
        if _NEAR_BEHIND <= z_rel <= _NEAR_AHEAD or speed == ego_speed:
            return 0.0 if _NEAR_BEHIND <= z_rel <= _NEAR_AHEAD else np.inf
        if z_rel > _NEAR_AHEAD:
            t = (z_rel - _NEAR_AHEAD) / (ego_speed - speed)
        else:
            t = (_NEAR_BEHIND - z_rel) / (speed - ego_speed)
        return t if t >= 0 else np.inf

    drafts = sorted(drafts, key=lambda d: (enters(d), abs(d.z_center), d.x))
    drafts = [d for d in drafts if np.isfinite(enters(d))][:_MAX_TRACKS]
    return tuple(Vehicle(track_id, d.kind, d.model, d.color_name, d.color, d.dims, float(d.x), float(d.z_center),
                         float(d.speed), int(d.heading))
                 for track_id, d in enumerate(drafts))


def vehicle_primitives(vehicles: Sequence[Vehicle], frame_index: int) -> Primitives:
    """Two boxes per vehicle (body + cabin, or cab + cargo) at the given frame."""
    builder = PrimitiveBuilder()
    tracks = []
    for vehicle in vehicles:
        if vehicle.kind == "truck":
            _add_truck(builder, vehicle, frame_index)
        else:
            _add_car_or_van(builder, vehicle, frame_index)
        tracks += [vehicle.track_id] * 2
    prims = builder.freeze()
    prims.track = np.array(tracks, np.int32)
    return prims


def _z_span(vehicle: Vehicle, z: float, a: float, c: float) -> Tuple[float, float]:
    """Vehicle-local interval [a, c] along its heading -> world Z interval."""
    return (z + a, z + c) if vehicle.heading > 0 else (z - c, z - a)


def _add_truck(builder: PrimitiveBuilder, vehicle: Vehicle, frame_index: int):
    width, height, length = vehicle.dims
    z = vehicle.z_at(frame_index)
    x0, x1 = vehicle.x - width / 2, vehicle.x + width / 2
    cab_length = 2.1
    za, zb = _z_span(vehicle, z, length / 2 - cab_length, length / 2)
    builder.box((x0, -0.82 * height, za), (x1, 0.0, zb), vehicle.kind, MAT_VEHICLE_BODY, vehicle.color,
                (vehicle.heading, 1.0, 0, 0))  # param 1: this body is a truck cab
    za, zb = _z_span(vehicle, z, -length / 2, length / 2 - cab_length - 0.25)
    cargo_color = (0.9, 0.9, 0.88) if vehicle.track_id % 3 else vehicle.color
    builder.box((x0, -height, za), (x1, 0.0, zb), vehicle.kind, MAT_VEHICLE_CARGO, cargo_color,
                (vehicle.heading, 0, 0, 0))


def _add_car_or_van(builder: PrimitiveBuilder, vehicle: Vehicle, frame_index: int):
    width, height, length = vehicle.dims
    z = vehicle.z_at(frame_index)
    x0, x1 = vehicle.x - width / 2, vehicle.x + width / 2
    is_van = vehicle.kind == "van"
    body_height = (0.45 if is_van else 0.55) * height
    za, zb = _z_span(vehicle, z, -length / 2, length / 2)
    builder.box((x0, -body_height, za), (x1, 0.0, zb), vehicle.kind, MAT_VEHICLE_BODY, vehicle.color,
                (vehicle.heading, 0.0, 0, 0))
    cabin_length = (0.82 if is_van else 0.52) * length
    cabin_back = -length / 2 + (0.05 if is_van else 0.18) * length
    za, zb = _z_span(vehicle, z, cabin_back, cabin_back + cabin_length)
    inset = 0.04 * width
    builder.box((x0 + inset, -height, za), (x1 - inset, -body_height, zb), vehicle.kind, MAT_VEHICLE_CABIN,
                vehicle.color, (vehicle.heading, 0, 0, 0))
