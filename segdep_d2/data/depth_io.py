"""The one place where ground-truth depth is decoded from disk.

``read_depth(dataset_dict)`` returns float32 H x W metres with 0 where the source has no
measurement. Every encoding segdep_d2 reads is listed in ``DEPTH_FORMATS``; see DESIGN.md §3:

- ``vkitti2_cm``: uint16 PNG, centimetres (65535 = 655.35 m is sky).
- ``kitti_png256``: uint16 PNG, metres * 256, 0 = no measurement.
- ``nyu_mm``: uint16 PNG, millimetres, 0 = no measurement.
- ``cityscapes_disparity``: uint16 PNG, disparity = (p - 1) / 256 px, p <= 1 invalid; needs
  ``camera_file_name`` (``*_camera.json``: ``extrinsic.baseline``, ``intrinsic.fx``).
- ``zed_disp16``: uint16 PNG of a ZED stereo camera (the Korean sidewalk dataset's
  ``*_disp16.png``), disparity = disp16 / ``disparity_scale`` px (default
  :data:`ZED_DISPARITY_SCALE` = 100), 0 invalid; depth = fx * baseline / disparity with fx from
  the ``[LEFT_CAM_<res>]`` section of the ZED SDK calibration ``.conf`` (``camera_file_name``) whose
  resolution equals the map's size and ``BaseLine`` (mm) from ``[STEREO]``
  (:func:`read_zed_calibration`). Optional ``confidence_file_name``: a uint8 PNG where 255 means
  confident; every other pixel becomes 0. (The seed's converter divided by 256 and took fx from the
  last ``fx=`` line of the ``.conf``, RIGHT_CAM_VGA's 349.97 instead of LEFT_CAM_FHD's 1394.83: its
  depth was 0.64x the true one. :func:`segdep_d2.data.stereo.estimate_disparity_scale` checks
  the scale from a left/right pair.)
- ``npy_m``: float32/float64 ``.npy`` in metres, 0 = no measurement.

``write_depth`` / ``encode_depth`` are the inverse (metres -> file), for tools that write depth in a
dataset's own encoding (pseudo-labels); ``read_depth`` of what they write gives the metres back
within the encoding's resolution.
"""
import configparser
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
    "read_sparse_depth",
    "read_cityscapes_camera",
    "read_zed_calibration",
    "ZED_DISPARITY_SCALE",
    "ZED_RESOLUTIONS",
    "encode_depth",
    "write_depth",
]

# depth_format -> metres per stored unit for the plain uint16 PNG encodings
_UINT16_SCALE = {
    "vkitti2_cm": 1.0 / 100.0,  # centimetres; 65535 (655.35 m) is sky
    "kitti_png256": 1.0 / 256.0,  # metres * 256, 0 = no measurement
    "nyu_mm": 1.0 / 1000.0,  # millimetres, 0 = no measurement
}
DEPTH_FORMATS = tuple(_UINT16_SCALE) + ("cityscapes_disparity", "zed_disp16", "npy_m")

# zed_disp16: stored value per pixel of disparity (disparity px = disp16 / 100), not 256 or 16: block
# matching a released sample frame's left/right pair gives disp16 / shift = 101.5 (median of 79 matches).
# stereo.estimate_disparity_scale measures it on any pair.
ZED_DISPARITY_SCALE = 100.0
# ZED resolution name -> (width, height) of its images; the .conf has a [LEFT_CAM_<name>] per entry
ZED_RESOLUTIONS = {"2K": (2208, 1242), "FHD": (1920, 1080), "HD": (1280, 720), "VGA": (672, 376)}


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


@lru_cache(maxsize=256)
def read_zed_calibration(path: str, width: int, height: int):
    """(fx in pixels, baseline in metres) from a ZED SDK calibration ``.conf`` for images of
    ``width`` x ``height``.

    The file is INI: ``[LEFT_CAM_2K]`` ``[RIGHT_CAM_2K]`` ``[STEREO]`` ``[LEFT_CAM_FHD]`` ... with
    ``fx fy cx cy k1 k2`` per camera section and ``BaseLine`` (millimetres) in ``[STEREO]``. fx is the
    one of the LEFT camera (the disparity map is in left-image coordinates) at the resolution whose
    size is ``width`` x ``height`` (:data:`ZED_RESOLUTIONS`: 2K 2208x1242, FHD 1920x1080, HD 1280x720,
    VGA 672x376). Keys are matched case-insensitively.

    Raises:
        FileNotFoundError: no such file.
        DepthFormatError: not INI, no ZED resolution of that size, a missing section or key, or a
            non-positive / non-numeric value; the message names the file and lists what it has.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Camera file not found: {path}")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as f:
            parser.read_file(f)
    except (configparser.Error, UnicodeDecodeError) as e:
        raise DepthFormatError(f"{path}: not a ZED calibration file in INI format ({e})") from e
    sections = parser.sections()
    by_upper = {name.upper(): name for name in sections}
    size = (int(width), int(height))
    resolution = next((name for name, wh in ZED_RESOLUTIONS.items() if wh == size), None)
    if resolution is None:
        known = ", ".join(f"{name} {w}x{h}" for name, (w, h) in ZED_RESOLUTIONS.items())
        raise DepthFormatError(
            f"{path}: the disparity map is {size[0]}x{size[1]} (WxH), which is no ZED resolution ({known}); "
            f"the file has sections {sections}"
        )

    def number(section, key):
        real = by_upper.get(section)
        if real is None:
            raise DepthFormatError(
                f"{path}: no [{section}] section for a {size[0]}x{size[1]} disparity map; the file has {sections}"
            )
        if not parser.has_option(real, key):
            raise DepthFormatError(
                f"{path}: [{real}] has no '{key}'; it has {sorted(parser.options(real))}"
            )
        raw = parser.get(real, key)
        try:
            value = float(raw)
        except ValueError as e:
            raise DepthFormatError(f"{path}: [{real}] {key}={raw!r} is not a number") from e
        if not (np.isfinite(value) and value > 0):
            raise DepthFormatError(f"{path}: [{real}] {key}={raw!r} must be a positive number")
        return value

    fx = number(f"LEFT_CAM_{resolution}", "fx")
    baseline_mm = number("STEREO", "BaseLine")
    return fx, baseline_mm / 1000.0


def _zed_scale(value, where):
    scale = ZED_DISPARITY_SCALE if value is None else float(value)
    if not (np.isfinite(scale) and scale > 0):
        raise DepthFormatError(f"{where}: disparity_scale must be a positive number, got {value!r}")
    return scale


def _read_confidence(path: str, shape) -> np.ndarray:
    """A ZED ``*_confidence.png`` (uint8, one channel, 255 = confident) -> boolean mask."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Confidence file not found: {path}")
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DepthFormatError(f"{path}: cannot be decoded as an image")
    if array.dtype != np.uint8 or array.ndim != 2:
        channels = 1 if array.ndim == 2 else array.shape[2]
        raise DepthFormatError(
            f"{path}: expected a single-channel 8-bit confidence PNG (255 = confident), got "
            f"{array.dtype.itemsize * 8}-bit data with {channels} channel(s)"
        )
    if array.shape != tuple(shape):
        raise DepthFormatError(
            f"{path}: confidence is {array.shape[0]}x{array.shape[1]} (HxW) but the disparity map is "
            f"{shape[0]}x{shape[1]}"
        )
    return array == 255


def _decode_zed_disp16(path, camera_path, confidence_path=None, disparity_scale=None) -> np.ndarray:
    raw = _read_uint16_png(path)
    scale = _zed_scale(disparity_scale, path)
    height, width = raw.shape
    fx, baseline = read_zed_calibration(camera_path, width, height)
    valid = raw > 0
    if confidence_path is not None:
        valid &= _read_confidence(confidence_path, raw.shape)
    depth = np.zeros(raw.shape, dtype=np.float32)
    disparity = raw[valid].astype(np.float64) / scale
    depth[valid] = (fx * baseline / disparity).astype(np.float32)
    return depth


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
        FileNotFoundError: the depth (or camera, or confidence) file is missing.
        KeyError: no ``depth_file_name``, or a disparity format without ``camera_file_name``.
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
    elif fmt == "zed_disp16":
        camera = dataset_dict.get("camera_file_name")
        if camera is None:
            raise KeyError(
                f"{path}: depth_format 'zed_disp16' needs 'camera_file_name' (the ZED calibration .conf) in the dict"
            )
        depth = _decode_zed_disp16(
            path, camera, dataset_dict.get("confidence_file_name"), dataset_dict.get("disparity_scale")
        )
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


def read_sparse_depth(dataset_dict) -> np.ndarray:
    """Decode a record's sparse depth *input* (depth completion: LiDAR points projected into the image),
    ``sparse_depth_file_name`` in ``sparse_depth_format``, by the rules of :func:`read_depth` (same
    formats, bit-depth / finiteness / size checks, errors naming the file). float32 (H, W) metres, 0 where
    there is no point; a frame without any point is valid (all zeros)."""
    path = dataset_dict.get("sparse_depth_file_name")
    if path is None:
        raise KeyError(f"dataset dict for {dataset_dict.get('file_name')} has no 'sparse_depth_file_name'")
    as_depth = {k: v for k, v in dataset_dict.items() if k not in ("depth_file_name", "depth_format")}
    as_depth.update(depth_file_name=path, depth_format=dataset_dict.get("sparse_depth_format"))
    return read_depth(as_depth)


# ---------------------------------------------------------------------------------------------
# encoding: metres -> the stored values of each format (the inverse of the decoders above)
# ---------------------------------------------------------------------------------------------


def encode_depth(depth, depth_format, camera_file_name=None, disparity_scale=None) -> np.ndarray:
    """Metres (H x W, 0 = no depth) -> the array ``depth_format`` stores.

    uint16 PNG formats: ``round(metres / scale)``, clipped to 65535 (655.35 m for ``vkitti2_cm``,
    where 65535 is sky; 255.996 m for ``kitti_png256``; 65.535 m for ``nyu_mm``); a depth that
    rounds to 0 becomes "no measurement". ``cityscapes_disparity``: ``p = round(256 * baseline * fx /
    depth + 1)`` from ``camera_file_name``, 0 where depth is 0 or nearer than the largest storable
    disparity (``baseline * fx / 255.996`` m); beyond the disparity's resolution it becomes p = 1,
    "at infinity", which decodes as invalid. ``zed_disp16``: ``disp16 = round(scale * fx * baseline /
    depth)`` with fx / baseline from the ZED ``.conf`` ``camera_file_name`` at the depth map's size
    (:func:`read_zed_calibration`) and ``scale = disparity_scale`` (default
    :data:`ZED_DISPARITY_SCALE`), clipped to 65535 (nearer than ``scale * fx * baseline / 65535``: 0.26 m
    for the sidewalk camera at FHD), 0 where depth is 0 or so far that it rounds to 0 (no
    measurement rather than a wrong one). ``npy_m``: float32 metres.

    Raises:
        DepthFormatError: unknown format, not H x W, NaN / inf or negative values (mark pixels
            without depth with 0), or a disparity format without a camera file.
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
    if depth_format == "zed_disp16":
        if camera_file_name is None:
            raise DepthFormatError("depth_format 'zed_disp16' needs a camera_file_name (ZED .conf) to encode depth")
        scale = _zed_scale(disparity_scale, "encode_depth")
        fx, baseline = read_zed_calibration(camera_file_name, depth.shape[1], depth.shape[0])
        stored = np.zeros(depth.shape, dtype=np.uint16)
        valid = depth > 0
        stored[valid] = np.clip(np.rint(scale * fx * baseline / depth[valid]), 0, 65535).astype(np.uint16)
        return stored
    if depth_format == "npy_m":
        return depth.astype(np.float32)
    raise DepthFormatError(f"unknown depth_format {depth_format!r}; expected one of {', '.join(DEPTH_FORMATS)}")


def write_depth(path, depth, depth_format, camera_file_name=None, disparity_scale=None):
    """Write metres to ``path`` in ``depth_format`` (:func:`encode_depth`): a 16-bit single-channel
    PNG, or a float32 ``.npy`` for ``npy_m``. The encoding follows ``depth_format``, not the file
    name's extension (so that a temporary name works). ``camera_file_name``: the camera file of the
    disparity formats; ``disparity_scale``: ``zed_disp16``'s (default 100). Returns ``path``."""
    stored = encode_depth(depth, depth_format, camera_file_name, disparity_scale)
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
