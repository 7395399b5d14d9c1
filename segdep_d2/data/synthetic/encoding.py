"""On-disk encodings shared by the writers: depth / disparity PNG values, PNG saving, number text, class stats."""

from __future__ import annotations

import functools
import os
from typing import Mapping, Optional

import numpy as np
from PIL import Image


def vkitti2_depth_png(depth: np.ndarray) -> np.ndarray:
    """Metres -> Virtual KITTI 2 depth (uint16 centimetres, clipped at 65535 = 655.35 m, sky included)."""
    centimetres = np.where(np.isfinite(depth), np.asarray(depth, np.float64) * 100.0, 65535.0)
    return np.clip(np.round(centimetres), 0, 65535).astype(np.uint16)


def cityscapes_disparity_png(depth: np.ndarray, baseline: float, fx: float,
                             invalid: Optional[np.ndarray] = None) -> np.ndarray:
    """Metres -> Cityscapes disparity PNG values: ``round(baseline * fx / depth * 256) + 1``; 0 = invalid.

    Invalid: sky / non-finite depth, ``invalid`` pixels (e.g. the bonnet), and disparities that uint16
    cannot hold (too far: below 1/256 px; too close: above 255.996 px).
    """
    depth = np.asarray(depth, np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    disparity = np.where(valid, baseline * fx / np.where(valid, depth, 1.0), 0.0)
    value = np.round(disparity * 256.0) + 1.0
    valid &= (value >= 2) & (value <= 65535)
    if invalid is not None:
        valid &= ~invalid
    return np.where(valid, value, 0).astype(np.uint16)


def save_png(array: np.ndarray, path: str, mode: Optional[str] = None):
    """Write ``array`` as PNG; ``mode="P"`` writes uint8 indices with the instance palette."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if mode == "P":
        image = Image.frombytes("P", (array.shape[1], array.shape[0]),
                                np.ascontiguousarray(array, np.uint8).tobytes())
        image.putpalette(_instance_palette())
    else:
        image = Image.fromarray(array)
    image.save(path, format="PNG", compress_level=2)  # fast; the files stay lossless


@functools.lru_cache(maxsize=1)
def _instance_palette():
    """Random bright colours per instance index (fixed seed); index 0 (no instance) is black."""
    rng = np.random.default_rng(1234)
    palette = rng.integers(40, 256, (256, 3)).astype(np.uint8)
    palette[0] = 0
    return palette.reshape(-1).tolist()


def format_number(x) -> str:
    """Compact fixed-point text like VKITTI2's files (no exponent, no trailing zeros)."""
    s = f"{float(x):.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "", "-") else s


class ClassStats:
    """Pixel counts per class id and the finite depth range over all written frames, for the summary."""

    def __init__(self, names: Mapping[int, str]):
        self.names = dict(names)
        self.counts = np.zeros(256, np.int64)
        self.depth_min, self.depth_max = np.inf, 0.0

    def add(self, ids, depth):
        self.counts += np.bincount(ids.reshape(-1), minlength=256)[:256]
        finite = depth[np.isfinite(depth)]
        if finite.size:
            self.depth_min = min(self.depth_min, float(finite.min()))
            self.depth_max = max(self.depth_max, float(finite.max()))

    def fractions(self):
        total = max(int(self.counts.sum()), 1)
        return {self.names.get(i, str(i)): float(c) / total for i, c in enumerate(self.counts) if c}
