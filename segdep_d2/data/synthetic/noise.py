"""Procedural noise for textures: an integer lattice hash and smooth value noise (no random state involved)."""

from __future__ import annotations

import numpy as np

_U32 = np.uint32
_HASH_PRIMES = (0x8DA6B343, 0xD8163841, 0xCB1AB31F)


def lattice_hash(*coords, salt=0):
    """Integer lattice hash -> float32 in [0, 1). Deterministic, vectorised, platform independent."""
    h = np.uint32((salt * 0x27D4EB2F + 0x165667B1) & 0xFFFFFFFF)
    for k, c in enumerate(coords):
        h = h + np.asarray(c).astype(np.int32).view(np.uint32) * _U32(_HASH_PRIMES[k])
    h = (h ^ (h >> _U32(15))) * _U32(0x2C1B3C6D)
    h = (h ^ (h >> _U32(12))) * _U32(0x297A2D39)
    h = h ^ (h >> _U32(15))
    return (h >> _U32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def value_noise(x, y, salt=0):
    """Smooth 2D value noise in [0, 1) (bilinear interpolation of lattice hashes)."""
    ix, iy = np.floor(x), np.floor(y)
    fx, fy = (x - ix).astype(np.float32), (y - iy).astype(np.float32)
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep, so the lattice does not show
    a, b = lattice_hash(ix, iy, salt=salt), lattice_hash(ix + 1, iy, salt=salt)
    c, d = lattice_hash(ix, iy + 1, salt=salt), lattice_hash(ix + 1, iy + 1, salt=salt)
    return (a + (b - a) * fx) + ((c + (d - c) * fx) - (a + (b - a) * fx)) * fy
