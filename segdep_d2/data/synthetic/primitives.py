"""Scene primitives: axis-aligned boxes and spheres stored column-wise, and the builder that collects them."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from .constants import CLASS_INDEX

NO_PARAMS = (0, 0, 0, 0)


@dataclasses.dataclass
class Primitives:
    """N primitives as parallel arrays, so that ray casting and shading can gather attributes vectorised."""

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
    def empty() -> "Primitives":
        zeros3 = np.zeros((0, 3))
        return Primitives(np.zeros(0, np.int8), zeros3, zeros3, zeros3, np.zeros(0), np.zeros(0, np.int16),
                          np.zeros(0, np.int8), np.zeros((0, 3), np.float32), np.zeros((0, 4), np.float32),
                          np.zeros(0, np.int32))

    def take(self, indices) -> "Primitives":
        return Primitives(**{f.name: getattr(self, f.name)[indices] for f in dataclasses.fields(self)})

    @staticmethod
    def concat(parts: Sequence["Primitives"]) -> "Primitives":
        return Primitives(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                             for f in dataclasses.fields(Primitives)})


class PrimitiveBuilder:
    """Collects primitives one by one (the layout code's natural order) before freezing them into arrays."""

    def __init__(self):
        self.rows = []

    def box(self, lo, hi, label, material, color, param=NO_PARAMS):
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        self.rows.append((0, lo, hi, (lo + hi) / 2, 0.0, CLASS_INDEX[label], material, color, param))

    def sphere(self, center, radius, label, material, color, param=NO_PARAMS):
        center = np.asarray(center, float)
        self.rows.append((1, center - radius, center + radius, center, float(radius), CLASS_INDEX[label], material,
                          color, param))

    def freeze(self) -> Primitives:
        if not self.rows:
            return Primitives.empty()
        kind, lo, hi, center, radius, label, material, color, param = zip(*self.rows)
        return Primitives(
            kind=np.array(kind, np.int8), lo=np.array(lo, float), hi=np.array(hi, float),
            center=np.array(center, float), radius=np.array(radius, float),
            label=np.array(label, np.int16), material=np.array(material, np.int8),
            color=np.array(color, np.float32), param=np.array(param, np.float32),
            track=np.full(len(self.rows), -1, np.int32),
        )


def jitter_color(rng: np.random.Generator, base, amount) -> np.ndarray:
    """``base`` RGB plus uniform noise of +-``amount`` per channel (one draw of 3 values), clipped to [0, 1]."""
    return np.clip(np.asarray(base, float) + rng.uniform(-amount, amount, 3), 0.0, 1.0)
