"""The one place where ground-truth depth is decoded from disk.

``read_depth(dataset_dict)`` returns float32 H x W metres with 0 where the source has no
measurement. Every encoding segdep_d2 reads is listed in ``DEPTH_FORMATS``; see DESIGN.md §3.
``write_depth`` / ``encode_depth`` are the inverse (metres -> file), for tools that write depth in a
dataset's own encoding (pseudo-labels); ``read_depth`` of what they write gives the metres back
within the encoding's resolution.
"""
import json
import os
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "DEPTH_FORMATS",
    "DepthFormatError",
    "read_depth",
    "read_cityscapes_camera",
    "encode_depth",
    "write_depth",
]

# depth_format -> metres per stored unit for the plain uint16 PNG encodings
_UINT16_SCALE = {
    "vkitti2_cm": 1.0 / 100.0,  # centimetres; 65535 (655.35 m) is sky
    "kitti_png256": 1.0 / 256.0,  # metres * 256, 0 = no measurement
    "nyu_mm": 1.0 / 1000.0,  # millimetres, 0 = no measurement
}
DEPTH_FORMATS = tuple(_UINT16_SCALE) + ("cityscapes_disparity", "npy_m")


class DepthFormatError(ValueError):
    """A depth (or camera) file does not hold what its ``depth_format`` promises."""


def _read_uint16_png(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Depth file not found: {path}")
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DepthFormatError(f"{path}: cannot be decoded as an image")
    if array.dtype != np.uint16:
        bits = array.dtype.itemsize * 8
        raise DepthFormatError(
            f"{path}: expected a single-channel 16-bit PNG, got {bits}-bit data "
            f"(dtype {array.dtype}); depth must never be stored in 8 bits"
        )
    if array.ndim != 2:
        raise DepthFormatError(
            f"{path}: expected a single-channel 16-bit PNG, got {array.shape[2]} channels"
        )
    return array


@lru_cache(maxsize=4096)
def read_cityscapes_camera(path: str):
    """(baseline in metres, fx in pixels) from a Cityscapes ``*_camera.json``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Camera file not found: {path}")
    with open(path) as f:
        try:
            camera = json.load(f)
        except json.JSONDecodeError as e:
            raise DepthFormatError(f"{path}: not valid JSON ({e})") from e
    try:
        baseline = float(camera["extrinsic"]["baseline"])
        fx = float(camera["intrinsic"]["fx"])
    except (KeyError, TypeError, ValueError) as e:
        raise DepthFormatError(
            f"{path}: expected 'extrinsic.baseline' and 'intrinsic.fx' numbers ({e!r})"
        ) from e
    if not (baseline > 0 and fx > 0):
        raise DepthFormatError(f"{path}: baseline ({baseline}) and fx ({fx}) must be positive")
    return baseline, fx


def _decode_cityscapes_disparity(path: str, camera_path: str) -> np.ndarray:
    raw = _read_uint16_png(path)
    baseline, fx = read_cityscapes_camera(camera_path)
    # p = 0 is invalid; disparity = (p - 1) / 256. p = 1 means zero disparity (a point at
    # infinity), which is no more a measurable depth than p = 0.
    disparity = (raw.astype(np.float32) - 1.0) / 256.0
    depth = np.zeros(raw.shape, dtype=np.float32)
    valid = raw > 1
    depth[valid] = (baseline * fx) / disparity[valid]
    return depth


def _read_npy_metres(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Depth file not found: {path}")
    depth = np.load(path, allow_pickle=False)
    if depth.ndim == 3 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim != 2:
        raise DepthFormatError(f"{path}: expected an H x W array of metres, got shape {depth.shape}")
    if not np.issubdtype(depth.dtype, np.floating):
        raise DepthFormatError(f"{path}: expected floating-point metres, got dtype {depth.dtype}")
    depth = depth.astype(np.float32)
    if not np.isfinite(depth).all():
        bad = int((~np.isfinite(depth)).sum())
        raise DepthFormatError(
            f"{path}: {bad} NaN/inf values; mark pixels without depth with 0 instead"
        )
    if (depth < 0).any():
        raise DepthFormatError(f"{path}: negative depth values; use 0 for invalid pixels")
    return depth


def _expected_size(dataset_dict):
    """(H, W) the depth must have: from the dict, else from the image header."""
    if "height" in dataset_dict and "width" in dataset_dict:
        return int(dataset_dict["height"]), int(dataset_dict["width"])
    if "file_name" in dataset_dict and os.path.isfile(dataset_dict["file_name"]):
        with Image.open(dataset_dict["file_name"]) as im:  # reads the header only
            return im.height, im.width
    return None


def read_depth(dataset_dict) -> np.ndarray:
    """Decode ``dataset_dict["depth_file_name"]`` according to ``dataset_dict["depth_format"]``.

    Returns:
        float32 array (H, W) in metres, 0 where there is no valid measurement.

    Raises:
        FileNotFoundError: the depth (or camera) file is missing.
        DepthFormatError: unknown format, wrong bit depth, non-finite values, or a size that
            differs from the image's.
    """
    path = dataset_dict.get("depth_file_name")
    if path is None:
        raise KeyError(f"dataset dict for {dataset_dict.get('file_name')} has no 'depth_file_name'")
    fmt = dataset_dict.get("depth_format")
    if fmt in _UINT16_SCALE:
        depth = _read_uint16_png(path).astype(np.float32) * np.float32(_UINT16_SCALE[fmt])
    elif fmt == "cityscapes_disparity":
        camera = dataset_dict.get("camera_file_name")
        if camera is None:
            raise KeyError(
                f"{path}: depth_format 'cityscapes_disparity' needs 'camera_file_name' in the dict"
            )
        depth = _decode_cityscapes_disparity(path, camera)
    elif fmt == "npy_m":
        depth = _read_npy_metres(path)
    else:
        raise DepthFormatError(
            f"{path}: unknown depth_format {fmt!r}; expected one of {', '.join(DEPTH_FORMATS)}"
        )

    expected = _expected_size(dataset_dict)
    if expected is not None and depth.shape != expected:
        raise DepthFormatError(
            f"{path}: depth is {depth.shape[0]}x{depth.shape[1]} (HxW) but the image "
            f"{dataset_dict.get('file_name')} is {expected[0]}x{expected[1]}"
        )
    return depth


# ---------------------------------------------------------------------------------------------
# encoding: metres -> the stored values of each format (the inverse of the decoders above)
# ---------------------------------------------------------------------------------------------


def encode_depth(depth, depth_format, camera_file_name=None) -> np.ndarray:
    """Metres (H x W, 0 = no depth) -> the array ``depth_format`` stores.

    uint16 PNG formats: ``round(metres / scale)``, clipped to 65535 (655.35 m for ``vkitti2_cm``,
    where 65535 is sky; 255.996 m for ``kitti_png256``; 65.535 m for ``nyu_mm``); a depth that
    rounds to 0 becomes "no measurement". ``cityscapes_disparity``: ``p = round(256 * baseline * fx /
    depth + 1)`` from ``camera_file_name``, 0 where depth is 0 or nearer than the largest storable
    disparity (``baseline * fx / 255.996`` m); beyond the disparity's resolution it becomes p = 1,
    "at infinity", which decodes as invalid. ``npy_m``: float32 metres.

    Raises:
        DepthFormatError: unknown format, not H x W, NaN / inf or negative values (mark pixels
            without depth with 0), or ``cityscapes_disparity`` without a camera file.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise DepthFormatError(f"expected an H x W depth map in metres, got shape {depth.shape}")
    depth = depth.astype(np.float64)
    if not np.isfinite(depth).all():
        raise DepthFormatError(
            f"{int((~np.isfinite(depth)).sum())} NaN/inf depth values; mark pixels without depth with 0"
        )
    if (depth < 0).any():
        raise DepthFormatError("negative depth values; mark pixels without depth with 0")
    if depth_format in _UINT16_SCALE:
        return np.clip(np.rint(depth / _UINT16_SCALE[depth_format]), 0, 65535).astype(np.uint16)
    if depth_format == "cityscapes_disparity":
        if camera_file_name is None:
            raise DepthFormatError("depth_format 'cityscapes_disparity' needs a camera_file_name to encode depth")
        baseline, fx = read_cityscapes_camera(camera_file_name)
        stored = np.zeros(depth.shape, dtype=np.uint16)
        valid = depth > 0
        disparity = (baseline * fx) / depth[valid]
        p = np.rint(disparity * 256.0 + 1.0)
        # nearer than the largest storable disparity (255.996 px): no value means that depth
        stored[valid] = np.where(p > 65535, 0, np.maximum(p, 1)).astype(np.uint16)
        return stored
    if depth_format == "npy_m":
        return depth.astype(np.float32)
    raise DepthFormatError(f"unknown depth_format {depth_format!r}; expected one of {', '.join(DEPTH_FORMATS)}")


def write_depth(path, depth, depth_format, camera_file_name=None):
    """Write metres to ``path`` in ``depth_format`` (:func:`encode_depth`): a 16-bit single-channel
    PNG, or a float32 ``.npy`` for ``npy_m``. The encoding follows ``depth_format``, not the file
    name's extension (so that a temporary name works). Returns ``path``."""
    stored = encode_depth(depth, depth_format, camera_file_name)
    if depth_format == "npy_m":
        with open(path, "wb") as f:
            np.save(f, stored, allow_pickle=False)
        return path
    ok, buffer = cv2.imencode(".png", stored)
    if not ok:
        raise DepthFormatError(f"{path}: OpenCV could not encode a {stored.shape} uint16 PNG")
    with open(path, "wb") as f:
        f.write(buffer.tobytes())
    return path
