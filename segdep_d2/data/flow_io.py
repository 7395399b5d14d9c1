"""Optical flow in Virtual KITTI 2's encoding: the one place that reads and writes it.

VKITTI2 stores ``frames/forwardFlow/Camera_k/flow_%05d.png`` (frame t -> t+1; the last frame has none) and
``frames/backwardFlow/Camera_k/backwardFlow_%05d.png`` (frame t -> t-1; the first frame has none) as
16-bit, 3-channel PNGs. Read as BGR (OpenCV's order), as the dataset's own reader does::

    invalid = B == 0                                  # sky and other pixels without flow
    flow    = 2 / (2**16 - 1) * (R, G) - 1            # normalised to [-1, 1]
    flow_x *= W - 1;  flow_y *= H - 1                 # pixels
    flow[invalid] = 0

so a stored value ``v`` decodes to ``(2 v / 65535 - 1) * (W - 1)`` px: the quantisation step is
``2 (W - 1) / 65535`` px horizontally (0.038 px at 1242 columns) and ``2 (H - 1) / 65535`` vertically, and a
round-tripped flow is exact to half a step. Flow beyond +-(W - 1) / +-(H - 1) px cannot be stored.
"""
from __future__ import annotations

import os
from typing import Tuple

import cv2
import numpy as np

__all__ = [
    "FlowFormatError",
    "VKITTI2_FLOW_VALID",
    "encode_vkitti2_flow",
    "decode_vkitti2_flow",
    "read_vkitti2_flow",
    "write_vkitti2_flow",
    "vkitti2_flow_quantisation",
]

_SCALE = 65535.0
VKITTI2_FLOW_VALID = 65535  # the B value written for valid pixels (the format only distinguishes 0 / non-0)


class FlowFormatError(ValueError):
    """A flow file does not hold a 16-bit, 3-channel VKITTI2 flow PNG."""


def vkitti2_flow_quantisation(height: int, width: int) -> Tuple[float, float]:
    """Largest round-trip error (x, y) in pixels of the encoding at this image size: half a stored step."""
    return (width - 1) / _SCALE, (height - 1) / _SCALE


def encode_vkitti2_flow(flow: np.ndarray, valid: np.ndarray = None) -> np.ndarray:
    """(H, W, 2) flow in pixels (+ optional (H, W) bool validity) -> (H, W, 3) uint16 **BGR** array.

    Pixels that are invalid, non-finite, or whose flow does not fit the normalised range are written as
    all-zero (B = 0: invalid), as are their R, G channels.
    """
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    height, width = flow.shape[:2]
    if height < 2 or width < 2:
        raise ValueError("VKITTI2 flow needs at least 2 rows and 2 columns (it is normalised by W-1, H-1)")
    ok = np.isfinite(flow).all(-1)
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != (height, width):
            raise ValueError(f"valid must be {(height, width)}, got {valid.shape}")
        ok &= valid
    normalised = np.where(ok[..., None], flow, 0.0) / np.array([width - 1, height - 1], np.float64)
    ok &= (np.abs(normalised) <= 1.0).all(-1)
    stored = np.clip(np.round((normalised + 1.0) * (_SCALE / 2.0)), 0, _SCALE)
    bgr = np.zeros((height, width, 3), np.uint16)
    bgr[..., 0] = np.where(ok, VKITTI2_FLOW_VALID, 0)
    bgr[..., 1] = np.where(ok, stored[..., 1], 0)  # G: y
    bgr[..., 2] = np.where(ok, stored[..., 0], 0)  # R: x
    return bgr


def decode_vkitti2_flow(bgr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint16 BGR -> (flow (H, W, 2) float32 pixels, 0 where invalid; valid (H, W) bool)."""
    height, width = bgr.shape[:2]
    valid = bgr[..., 0] != 0
    flow = 2.0 / _SCALE * bgr[..., 2:0:-1].astype(np.float64) - 1.0
    flow[..., 0] *= width - 1
    flow[..., 1] *= height - 1
    flow[~valid] = 0.0
    return flow.astype(np.float32), valid


def read_vkitti2_flow(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """A VKITTI2 ``flow_%05d.png`` / ``backwardFlow_%05d.png`` -> (flow (H, W, 2) float32 px, valid (H, W) bool).

    ``flow[..., 0]`` is horizontal (to the right), ``flow[..., 1]`` vertical (down); 0 where invalid.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Flow file not found: {path}")
    bgr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if bgr is None:
        raise FlowFormatError(f"{path}: cannot be decoded as an image")
    if bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[2] != 3:
        channels = 1 if bgr.ndim == 2 else bgr.shape[2]
        raise FlowFormatError(f"{path}: expected a 16-bit 3-channel PNG (VKITTI2 flow), got dtype {bgr.dtype} "
                              f"with {channels} channel(s)")
    return decode_vkitti2_flow(bgr)


def write_vkitti2_flow(path: str, flow: np.ndarray, valid: np.ndarray = None) -> None:
    """Write flow (pixels) as a VKITTI2 flow PNG; :func:`read_vkitti2_flow` gives it back to half a step."""
    bgr = encode_vkitti2_flow(flow, valid)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise FlowFormatError(f"{path}: OpenCV could not encode the flow PNG")
    with open(path, "wb") as fh:
        fh.write(data.tobytes())
