"""Referring expressions for the vehicles of a Virtual KITTI 2 frame, generated from its textgt.

:func:`referring_expressions` turns the objects of one (frame, camera) (:class:`~segdep_d2.data.datasets.
vkitti2_textgt.VKITTI2Object`, or anything with the same attributes) into expressions that are each true of
exactly one object, deterministically for a seed. Three kinds:

* ``"colour_type"``  "the black sedan", "the silver car"  (colour from info.txt; type = the model's noun or
  the label's noun, and a noun names every object whose model *or* label it is)
* ``"spatial"``      "the van on the left", "the leftmost car", "the second car from the right"  (by box
  centre x among objects of the same label)
* ``"distance"``     "the nearest car", "the farthest vehicle", "the truck more than 30 metres away",
  "the car less than 15 metres away", "the car about 12 metres ahead"

Definitions (what each phrase *means*; a test re-derives them independently):

* **Present** objects are every vehicle with pixels in the frame and in front of the camera
  (``number_pixels > 0`` and depth > 0). Expressions are evaluated over all present objects, so a vehicle too
  small to be a target still counts as a distractor.
* **Referable** objects (possible targets) are present objects that are clearly visible
  (:class:`VisibilityRule`: enough pixels, not mostly occluded, not mostly truncated).
* **Depth** is ``camera_space_Z`` (metres ahead along the optical axis, the quantity of the depth maps); every
  distance phrase ("nearest", "more than N metres away", "about N metres ahead") uses it, and a query's
  ``target_distance`` is it.
* **Side**: an object is on the left if its box centre x < W / 2, on the right if > W / 2.
* "the second car from the right": exactly one other present car has a box centre strictly to its right.
* "more than N metres away": depth > N; "less than N metres away": depth < N; "about N metres ahead":
  |depth - N| <= :func:`about_tolerance` (N) = max(1, 0.15 N) metres.
* "nearest / farthest": strictly smallest / largest depth.

A candidate expression is kept only if its predicate, evaluated over all present objects, selects exactly its
target; on top of that, phrases a person could misread are left out (a target within 5 % of the image centre
for "on the left/right", neighbours closer than 2 % of the width for ordinals, a runner-up within 1 m for
"nearest/farthest" or thresholds, other objects within twice the tolerance of "about").
"""
from __future__ import annotations

import dataclasses
import math
import re
import zlib
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "VisibilityRule",
    "REFERRING_KINDS",
    "referring_expressions",
    "record_seed",
    "label_noun",
    "model_noun",
    "about_tolerance",
]

REFERRING_KINDS = ("colour_type", "spatial", "distance")

_LABEL_NOUNS = {"Car": "car", "Van": "van", "Truck": "truck"}
# info.txt model -> what a person calls it (models seen in VKITTI2 and in the synthetic generator)
_MODEL_NOUNS = {
    "Sedan4Door": "sedan", "Sedan2Door": "coupe", "Hatchback": "hatchback", "Hybrid": "hybrid",
    "SUV": "SUV", "Van": "van", "Minivan": "minivan", "BoxTruck": "box truck", "Truck": "truck",
    "Firetruck_small_eu": "fire truck",
}
_ORDINALS = {2: "second", 3: "third"}

# clarity margins (generation only; they never change what a phrase means)
_SIDE_MARGIN = 0.05       # fraction of the width around the centre where "left/right" is not used
_ORDINAL_GAP = 0.02       # fraction of the width between neighbours for ordinals / leftmost / rightmost
_DEPTH_GAP = 1.0          # metres between the target and the runner-up for nearest / farthest / thresholds
_THRESHOLD_STEP = 5       # "more / less than N metres": N is a multiple of this


def label_noun(label: str) -> str:
    """info.txt label -> noun ("Car" -> "car")."""
    return _LABEL_NOUNS.get(label, label.lower())


def model_noun(model: str, label: str) -> str:
    """info.txt model -> noun ("Sedan4Door" -> "sedan"); unknown models fall back to the label's noun."""
    return _MODEL_NOUNS.get(model, label_noun(label))


def about_tolerance(metres: float) -> float:
    """"about N metres" holds within max(1, 0.15 N) metres."""
    return max(1.0, 0.15 * metres)


def _about_value(depth: float) -> int:
    """The N of "about N metres": whole metres below 20 m, multiples of 5 beyond."""
    return int(round(depth)) if depth < 20 else int(5 * round(depth / 5))


def _colour_word(color: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", color).lower()  # "DarkBlue" -> "dark blue"


@dataclasses.dataclass(frozen=True)
class VisibilityRule:
    """Which present objects may be targets: enough pixels (``max(min_pixels, min_pixel_fraction * W * H)``),
    ``occupancy_ratio`` (visible share of its box) at least ``min_occupancy``, ``truncation_ratio`` at most
    ``max_truncation``, in front of the camera."""

    min_pixels: int = 16
    min_pixel_fraction: float = 5e-4
    min_occupancy: float = 0.15
    max_truncation: float = 0.5

    def pixel_threshold(self, image_width: int, image_height: int) -> float:
        return max(self.min_pixels, self.min_pixel_fraction * image_width * image_height)

    def referable(self, obj, image_width: int, image_height: int) -> bool:
        return (_present(obj) and obj.number_pixels >= self.pixel_threshold(image_width, image_height)
                and obj.occupancy_ratio >= self.min_occupancy and obj.truncation_ratio <= self.max_truncation)


def _present(obj) -> bool:
    return obj.number_pixels > 0 and _depth(obj) > 0


def _depth(obj) -> float:
    return float(obj.camera_xyz[2])


def _center_x(obj) -> float:
    return 0.5 * (obj.bbox[0] + obj.bbox[1])


@dataclasses.dataclass
class _Candidate:
    kind: str
    text: str
    target: object
    predicate: Callable[[object], bool]


def record_seed(seed: int, key: str) -> int:
    """A per-record seed from a global seed and a stable key (e.g. the image id), independent of order."""
    return zlib.crc32(f"{seed}/{key}".encode()) & 0xFFFFFFFF


def referring_expressions(objects: Sequence, image_width: int, image_height: int, *, seed: int = 0,
                          rng: Optional[np.random.Generator] = None, max_queries: Optional[int] = 8,
                          visibility: VisibilityRule = VisibilityRule()) -> List[Dict]:
    """Referring expressions for ``objects`` (one frame's vehicles), each true of exactly one present object.

    Returns at most ``max_queries`` (None: all) query dicts ``{"text", "kind", "track_id", "instance_id",
    "target_distance"}`` (``instance_id`` = trackID + 1, the value in VKITTI2's instancegt PNG;
    ``target_distance`` = the target's depth in metres). Which ones are kept, and their order, depend only on
    the objects and ``seed`` (or ``rng``, which takes precedence): the kinds are taken in turn, each in a
    shuffled order.
    """
    present = [o for o in objects if _present(o)]
    referable = [o for o in present if visibility.referable(o, image_width, image_height)]
    candidates = []
    for target in sorted(referable, key=lambda o: o.track_id):
        candidates += _colour_type(target, present)
        candidates += _spatial(target, present, image_width)
        candidates += _distance(target, present)
    # keep a phrase only if it selects exactly its target among all present objects (and say it once)
    seen, unique = set(), []
    for c in candidates:
        if c.text in seen:
            continue
        matches = [o for o in present if c.predicate(o)]
        if len(matches) == 1 and matches[0] is c.target:
            seen.add(c.text)
            unique.append(c)
    rng = rng if rng is not None else np.random.default_rng(seed)
    by_kind = {kind: [c for c in unique if c.kind == kind] for kind in REFERRING_KINDS}
    queues = {kind: [cs[i] for i in rng.permutation(len(cs))] for kind, cs in by_kind.items()}
    limit = len(unique) if max_queries is None else min(max_queries, len(unique))
    chosen = []
    while len(chosen) < limit:
        for kind in REFERRING_KINDS:
            if queues[kind] and len(chosen) < limit:
                chosen.append(queues[kind].pop(0))
    return [dict(text=c.text, kind=c.kind, track_id=int(c.target.track_id), instance_id=int(c.target.track_id) + 1,
                 target_distance=_depth(c.target)) for c in chosen]


# --------------------------------------------------------------------------------------------------
# Candidate phrases per kind (each with the predicate that defines it)
# --------------------------------------------------------------------------------------------------


def _is_a(obj, noun: str) -> bool:
    """Whether ``noun`` names ``obj``: its model's noun or its label's ("the white truck" covers every
    Truck-labelled vehicle and every model called a truck)."""
    return model_noun(obj.model, obj.label) == noun or label_noun(obj.label) == noun


def _colour_type(target, present) -> List[_Candidate]:
    colour = _colour_word(target.color)
    nouns = dict.fromkeys((model_noun(target.model, target.label), label_noun(target.label)))  # ordered set
    return [_Candidate("colour_type", f"the {colour} {noun}", target,
                       lambda o, noun=noun: _colour_word(o.color) == colour and _is_a(o, noun))
            for noun in nouns]


def _same_label(target, present):
    return [o for o in present if o.label == target.label]


def _spatial(target, present, image_width: int) -> List[_Candidate]:
    noun, label = label_noun(target.label), target.label
    group = _same_label(target, present)
    others = [o for o in group if o is not target]
    x = _center_x(target)
    half = image_width / 2.0
    out = []
    if abs(x - half) >= _SIDE_MARGIN * image_width:
        side = "left" if x < half else "right"
        on_side = (lambda o: _center_x(o) < half) if side == "left" else (lambda o: _center_x(o) > half)
        out.append(_Candidate("spatial", f"the {noun} on the {side}", target,
                              lambda o, on_side=on_side: o.label == label and on_side(o)))
    if not others or min(abs(_center_x(o) - x) for o in others) < _ORDINAL_GAP * image_width:
        return out
    from_left = 1 + sum(_center_x(o) < x for o in others)
    from_right = 1 + sum(_center_x(o) > x for o in others)
    for rank, direction in ((from_left, "left"), (from_right, "right")):
        if direction == "left":
            beyond = lambda o, c: _center_x(o) < _center_x(c)  # noqa: E731 - o lies on c's left
        else:
            beyond = lambda o, c: _center_x(o) > _center_x(c)  # noqa: E731

        def ranked(o, rank=rank, beyond=beyond):  # exactly rank - 1 objects of the label lie beyond o
            others_beyond = sum(beyond(p, o) for p in present if p.label == label and p is not o)
            return o.label == label and others_beyond == rank - 1

        if rank == 1:
            out.append(_Candidate("spatial", f"the {direction}most {noun}", target, ranked))
        elif rank in _ORDINALS:
            out.append(_Candidate("spatial", f"the {_ORDINALS[rank]} {noun} from the {direction}", target, ranked))
    return out


def _distance(target, present) -> List[_Candidate]:
    out = []
    depth = _depth(target)
    for noun, group in ((label_noun(target.label), _same_label(target, present)), ("vehicle", list(present))):
        label = None if noun == "vehicle" else target.label
        in_group = (lambda o: True) if label is None else (lambda o, label=label: o.label == label)
        other_depths = sorted(_depth(o) for o in group if o is not target)
        nearer = [d for d in other_depths if d < depth]
        farther = [d for d in other_depths if d > depth]
        def nearest(o, in_group=in_group):
            return in_group(o) and all(_depth(o) < _depth(p) for p in present if in_group(p) and p is not o)

        def farthest(o, in_group=in_group):
            return in_group(o) and all(_depth(o) > _depth(p) for p in present if in_group(p) and p is not o)

        if other_depths:
            if not nearer and farther[0] - depth >= _DEPTH_GAP:
                out.append(_Candidate("distance", f"the nearest {noun}", target, nearest))
            if not farther and depth - nearer[-1] >= _DEPTH_GAP:
                out.append(_Candidate("distance", f"the farthest {noun}", target, farthest))
        if noun == "vehicle":
            continue  # thresholds and "about" use the type's noun
        # "more than N metres away": the farthest, N a round number between the runner-up and the target
        if not farther:
            n = _THRESHOLD_STEP * math.floor((depth - _DEPTH_GAP) / _THRESHOLD_STEP)
            if n >= 10 and (not nearer or nearer[-1] <= n - _DEPTH_GAP):
                out.append(_Candidate("distance", f"the {noun} more than {n} metres away", target,
                                      lambda o, n=n, in_group=in_group: in_group(o) and _depth(o) > n))
        if not nearer:
            n = _THRESHOLD_STEP * math.ceil((depth + _DEPTH_GAP) / _THRESHOLD_STEP)
            if not farther or farther[0] >= n + _DEPTH_GAP:
                out.append(_Candidate("distance", f"the {noun} less than {n} metres away", target,
                                      lambda o, n=n, in_group=in_group: in_group(o) and _depth(o) < n))
        n = _about_value(depth)
        tolerance = about_tolerance(n)
        if abs(depth - n) <= tolerance and all(abs(d - n) > 2 * tolerance for d in other_depths):
            out.append(_Candidate("distance", f"the {noun} about {n} metres ahead", target,
                                  lambda o, n=n, tolerance=tolerance, in_group=in_group: in_group(o)
                                  and abs(_depth(o) - n) <= tolerance))
    return out
