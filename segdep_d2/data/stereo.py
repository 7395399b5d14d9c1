"""Check a dataset's stored disparity scale from its own stereo pair.

A dataset that stores disparity as integers (the ZED ``*_disp16.png`` of the Korean sidewalk dataset,
``depth_format "zed_disp16"`` in :mod:`segdep_d2.data.depth_io`) does not say how many stored units make
one pixel. :func:`estimate_disparity_scale` measures it: it matches the rectified left/right pair with
OpenCV's semi-global block matcher (``cv2.StereoSGBM``), and returns the median of
``stored / matched disparity in pixels`` over the pixels where both are valid. For the sidewalk
sample the answer is about 100 (101.5 by ZNCC on a released frame), not the 256 of the seed's converter.

Speed: images wider than ``max_width`` (default 960) are downscaled by ``f = max_width / W``
(``cv2.INTER_AREA``) before matching, and only the rows where the stored map is valid (plus a margin)
are matched. The matched disparity is then divided by the horizontal factor ``f`` so that it is in
pixels of the full-resolution image, and the stored map is sampled at the same working grid with
nearest-neighbour (no averaging across invalid pixels or depth edges). A 1920 x 1080 pair takes
about 0.2 s (the sidewalk sample's band, 208-320 disparities at 960 x 540, MODE_SGBM_3WAY).
"""
import math
import os

import cv2
import numpy as np

__all__ = ["estimate_disparity_scale", "estimate_disparity_scale_from_files"]


def _gray(image, name):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        # channel order does not matter for a luminance used only to match left against right
        return cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2GRAY)
    raise ValueError(f"{name}: expected an H x W (x 1/3/4) image, got shape {image.shape}")


def _confidence_mask(confidence, shape):
    confidence = np.asarray(confidence)
    if confidence.shape != tuple(shape):
        raise ValueError(f"confidence is {confidence.shape} but the disparity map is {tuple(shape)}")
    if confidence.dtype == bool:
        return confidence
    return confidence == 255  # the dataset's *_confidence.png: 255 = confident


def estimate_disparity_scale(
    left,
    right,
    disp16,
    confidence=None,
    *,
    min_scale=32.0,
    min_disparity_px=4.0,
    max_width=960,
    block_size=5,
    max_num_disparities=512,
    min_pixels=200,
):
    """Estimate ``disp16 / disparity-in-pixels`` of a stored disparity map from its rectified pair.

    Args:
        left, right: rectified uint8 images (H x W gray, or H x W x 3/4 colour), left is the view the
            stored map belongs to.
        disp16: H x W stored disparity (any integer or float type), 0 = invalid.
        confidence: optional H x W mask of the pixels to use: bool (True = use) or the dataset's
            uint8 ``*_confidence.png`` (255 = confident).
        min_scale: the smallest scale the search must allow for. The matcher searches disparities up
            to ``disp16.max() / min_scale`` px (``numDisparities``, at the working resolution,
            rounded up to a multiple of 16, capped at ``max_num_disparities`` and at the working
            width); a true scale below ``min_scale`` makes the nearest pixels unmatched and
            biases the estimate. 32 covers 100 (ZED) and 256 (Cityscapes / KITTI style).
        min_disparity_px: matched disparities at or below this many full-resolution pixels are
            ignored (far points: their ratio is dominated by the matcher's sub-pixel error).
        max_width: downscale wider images to this width before matching (see the module doc).
        block_size: SGBM block size at the working resolution (odd).
        min_pixels: fewer usable pixels than this raises ``ValueError``.

    Returns:
        dict: ``scale`` (median of disp16 / matched px), ``iqr`` ((25 %, 75 %) of that ratio),
        ``num_pixels`` (pixels used), ``matcher`` (the settings: ``algorithm``, ``num_disparities``,
        ``block_size``, ``downscale``, ``working_size`` (W, H), ``rows`` (first, last + 1 matched),
        ``min_scale``, ``min_disparity_px``, ``capped`` (numDisparities hit the cap)).

    Raises:
        ValueError: shapes differ, no valid stored disparity, or too few matched pixels (the message
            says how many).
    """
    left_gray, right_gray = _gray(left, "left"), _gray(right, "right")
    disp16 = np.asarray(disp16)
    if disp16.ndim != 2:
        raise ValueError(f"disp16: expected an H x W map, got shape {disp16.shape}")
    if left_gray.shape != disp16.shape or right_gray.shape != disp16.shape:
        raise ValueError(
            f"left {left_gray.shape}, right {right_gray.shape} and disp16 {disp16.shape} must have the same H x W"
        )
    if block_size < 1 or block_size % 2 == 0:
        raise ValueError(f"block_size must be odd and positive, got {block_size}")
    stored = disp16.astype(np.float64)
    usable = np.isfinite(stored) & (stored > 0)
    if confidence is not None:
        usable &= _confidence_mask(confidence, disp16.shape)
    if not usable.any():
        raise ValueError("disp16 has no valid (> 0, confident) pixel to compare against")
    height, width = disp16.shape

    # working grid: downscale, then keep the rows that have stored disparity (plus a margin)
    factor = min(1.0, float(max_width) / width)
    work_w, work_h = max(1, int(round(width * factor))), max(1, int(round(height * factor)))
    fx_factor = work_w / width  # horizontal factor: disparity is horizontal
    if factor < 1.0:
        left_w = cv2.resize(left_gray, (work_w, work_h), interpolation=cv2.INTER_AREA)
        right_w = cv2.resize(right_gray, (work_w, work_h), interpolation=cv2.INTER_AREA)
        stored_w = cv2.resize(stored, (work_w, work_h), interpolation=cv2.INTER_NEAREST)
        usable_w = cv2.resize(usable.astype(np.uint8), (work_w, work_h), interpolation=cv2.INTER_NEAREST) > 0
    else:
        left_w, right_w, stored_w, usable_w = left_gray, right_gray, stored, usable
    rows = np.flatnonzero(usable_w.any(axis=1))
    margin = 2 * block_size
    row0, row1 = max(0, int(rows[0]) - margin), min(work_h, int(rows[-1]) + 1 + margin)

    max_px = float(stored[usable].max()) / float(min_scale) * fx_factor
    num_disparities = int(math.ceil((max_px + 1.0) / 16.0)) * 16
    cap = max(16, min(int(max_num_disparities), int(math.ceil(work_w / 16.0)) * 16))
    capped = num_disparities > cap
    num_disparities = max(16, min(num_disparities, cap))

    # pad on the left so that the leftmost columns can be matched too (SGBM leaves the first
    # numDisparities columns invalid); the padding is black, so nothing matches into it reliably
    pad = num_disparities
    crop_l = cv2.copyMakeBorder(left_w[row0:row1], 0, 0, pad, 0, cv2.BORDER_CONSTANT, value=0)
    crop_r = cv2.copyMakeBorder(right_w[row0:row1], 0, 0, pad, 0, cv2.BORDER_CONSTANT, value=0)
    matcher = cv2.StereoSGBM_create(
        minDisparity=0,
        numDisparities=num_disparities,
        blockSize=block_size,
        P1=8 * block_size * block_size,
        P2=32 * block_size * block_size,
        disp12MaxDiff=1,
        uniquenessRatio=10,
        speckleWindowSize=100,
        speckleRange=2,
        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    )
    fixed = matcher.compute(crop_l, crop_r)[:, pad:]  # int16, disparity * 16, < 0 = invalid
    matched = fixed.astype(np.float64) / 16.0 / fx_factor  # full-resolution pixels

    stored_c, usable_c = stored_w[row0:row1], usable_w[row0:row1]
    keep = usable_c & (fixed > 0) & (matched > float(min_disparity_px))
    count = int(keep.sum())
    settings = {
        "algorithm": "StereoSGBM (MODE_SGBM_3WAY)",
        "num_disparities": num_disparities,
        "block_size": int(block_size),
        "downscale": fx_factor,
        "working_size": (work_w, work_h),
        "rows": (row0, row1),
        "min_scale": float(min_scale),
        "min_disparity_px": float(min_disparity_px),
        "capped": bool(capped),
    }
    if count < min_pixels:
        raise ValueError(
            f"only {count} pixels have both a stored disparity and a matched one above {min_disparity_px} px "
            f"(need at least {min_pixels}); matcher settings {settings}. Are left/right swapped or not rectified, "
            f"or is the texture too weak?"
        )
    ratio = stored_c[keep] / matched[keep]
    q25, q50, q75 = np.percentile(ratio, [25, 50, 75])
    return {"scale": float(q50), "iqr": (float(q25), float(q75)), "num_pixels": count, "matcher": settings}


def _read(path, flags, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    array = cv2.imread(path, flags)
    if array is None:
        raise ValueError(f"{path}: cannot be decoded as an image")
    return array


def estimate_disparity_scale_from_files(left_path, right_path, disp16_path, confidence_path=None, **kwargs):
    """:func:`estimate_disparity_scale` on image files: the left / right images (any format OpenCV
    reads; compared in gray), the 16-bit single-channel stored disparity PNG, and optionally the
    uint8 confidence PNG (255 = confident). ``kwargs`` go to :func:`estimate_disparity_scale`; the
    result also has ``files`` (the paths)."""
    from .depth_io import _read_uint16_png

    left = _read(left_path, cv2.IMREAD_GRAYSCALE, "Left image")
    right = _read(right_path, cv2.IMREAD_GRAYSCALE, "Right image")
    disp16 = _read_uint16_png(disp16_path)
    for name, path, image in (("left", left_path, left), ("right", right_path, right)):
        if image.shape != disp16.shape:
            raise ValueError(
                f"{path}: the {name} image is {image.shape[0]}x{image.shape[1]} (HxW) but {disp16_path} is "
                f"{disp16.shape[0]}x{disp16.shape[1]}"
            )
    confidence = None
    if confidence_path is not None:
        confidence = _read(confidence_path, cv2.IMREAD_UNCHANGED, "Confidence file")
        if confidence.dtype != np.uint8 or confidence.ndim != 2 or confidence.shape != disp16.shape:
            raise ValueError(
                f"{confidence_path}: expected a single-channel 8-bit confidence PNG of {disp16.shape[0]}x"
                f"{disp16.shape[1]}, got {confidence.dtype} {confidence.shape}"
            )
    result = estimate_disparity_scale(left, right, disp16, confidence, **kwargs)
    result["files"] = {"left": left_path, "right": right_path, "disp16": disp16_path, "confidence": confidence_path}
    return result
