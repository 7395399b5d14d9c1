"""Monocular depth metrics, per image (DESIGN.md §4). Pure functions: arrays in, floats out.

The definitions follow the BTS / monodepth / mmsegmentation convention: every metric is computed
per image over the pixels with valid ground truth (``min_depth < gt < max_depth``, optionally
inside a Garg / Eigen / NYU crop); callers average the per-image values over the dataset.

With ``g`` the ground truth and ``p`` the (optionally median-scaled, then clamped) prediction:

* ``AbsRel``   = mean(|g - p| / g)
* ``SqRel``    = mean((g - p)^2 / g)
* ``RMSE``     = sqrt(mean((g - p)^2))
* ``RMSE_log`` = sqrt(mean((ln g - ln p)^2))
* ``log10``    = mean(|log10 g - log10 p|)
* ``SILog``    = 100 * sqrt(mean(e^2) - mean(e)^2), e = ln p - ln g  (scale-invariant: it is the
  standard deviation of the log error, not a mean of log differences)
* ``d1, d2, d3`` = mean(max(g / p, p / g) < 1.25^k), k = 1, 2, 3 (fractions in [0, 1])
"""
from typing import Dict, Optional, Union

import numpy as np

from .arrays import to_numpy

__all__ = ["DEPTH_METRIC_NAMES", "EVAL_CROPS", "eval_crop_mask", "depth_metrics"]

DEPTH_METRIC_NAMES = ("AbsRel", "SqRel", "RMSE", "RMSE_log", "log10", "SILog", "d1", "d2", "d3")

# Evaluation crops as fractions of (H, W): (top, bottom, left, right), applied as
# mask[int(top * H):int(bottom * H), int(left * W):int(right * W)] (BTS / monodepth convention).
EVAL_CROPS = {
    # Garg et al. (ECCV 2016) crop for KITTI
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    # Eigen et al. (NeurIPS 2014) crop for KITTI
    "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
    # NYU Depth v2 crop [45:471, 41:601] of the 480 x 640 images (scaled for other sizes)
    "nyu": (45 / 480, 471 / 480, 41 / 640, 601 / 640),
}


def _drop_channel(x: np.ndarray) -> np.ndarray:
    """(1, H, W) -> (H, W); anything else unchanged."""
    return x[0] if x.ndim == 3 and x.shape[0] == 1 else x


def eval_crop_mask(height: int, width: int, crop: Optional[str]) -> np.ndarray:
    """Boolean (height, width) mask of the evaluated region for ``crop``.

    ``crop`` is None (everything), ``"garg"``, ``"eigen"`` (KITTI) or ``"nyu"``.
    """
    if crop is None:
        return np.ones((height, width), dtype=bool)
    if crop not in EVAL_CROPS:
        raise ValueError(f"Unknown evaluation crop {crop!r}; expected None or one of {sorted(EVAL_CROPS)}")
    top, bottom, left, right = EVAL_CROPS[crop]
    mask = np.zeros((height, width), dtype=bool)
    mask[int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = True
    return mask


def depth_metrics(
    pred,
    gt,
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
    *,
    crop: Union[None, str, np.ndarray] = None,
    median_scaling: bool = False,
) -> Optional[Dict[str, float]]:
    """The nine depth metrics of one image (see the module docstring).

    Args:
        pred: predicted depth (H, W) in metres (numpy array or torch tensor).
        gt: ground-truth depth (H, W) in metres, 0 (or anything outside the range) = invalid.
        min_depth, max_depth: valid ground truth is ``min_depth < gt < max_depth``; the prediction
            is clamped to ``[min_depth, max_depth]`` before the metrics.
        crop: None, ``"garg"``, ``"eigen"``, ``"nyu"`` (see :func:`eval_crop_mask`) or a boolean
            (H, W) mask of pixels to evaluate.
        median_scaling: multiply the prediction by median(gt) / median(pred) over the valid
            pixels first (for scale-ambiguous, e.g. self-supervised, predictions).

    Returns:
        ``{name: float}`` for the names in :data:`DEPTH_METRIC_NAMES`, or None when the image has
        no valid pixel (callers skip such images, so that no average is ever NaN).
    """
    pred = to_numpy(pred).astype(np.float64)
    gt = to_numpy(gt).astype(np.float64)
    pred, gt = _drop_channel(pred), _drop_channel(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same (H, W) shape")
    if not min_depth < max_depth:
        raise ValueError(f"min_depth ({min_depth}) must be smaller than max_depth ({max_depth})")

    valid = (gt > min_depth) & (gt < max_depth)
    if crop is not None:
        if isinstance(crop, str):
            if gt.ndim != 2:
                raise ValueError(f"a named crop needs (H, W) depth maps, got {gt.shape}")
            valid &= eval_crop_mask(gt.shape[0], gt.shape[1], crop)
        else:
            crop = to_numpy(crop).astype(bool)
            if crop.shape != gt.shape:
                raise ValueError(f"crop mask {crop.shape} differs from the depth map {gt.shape}")
            valid &= crop
    if not valid.any():
        return None

    g = gt[valid]
    p = pred[valid]
    if median_scaling:
        pred_median = np.median(p)
        if pred_median > 0:
            p = p * (np.median(g) / pred_median)
    p = np.clip(p, min_depth, max_depth)

    diff = g - p
    log_diff = np.log(p) - np.log(g)  # e = ln p - ln g
    ratio = np.maximum(g / p, p / g)
    silog_var = max(float(np.mean(log_diff**2) - np.mean(log_diff) ** 2), 0.0)
    return {
        "AbsRel": float(np.mean(np.abs(diff) / g)),
        "SqRel": float(np.mean(diff**2 / g)),
        "RMSE": float(np.sqrt(np.mean(diff**2))),
        "RMSE_log": float(np.sqrt(np.mean(log_diff**2))),
        "log10": float(np.mean(np.abs(np.log10(g) - np.log10(p)))),
        "SILog": float(100.0 * np.sqrt(silog_var)),
        "d1": float(np.mean(ratio < 1.25)),
        "d2": float(np.mean(ratio < 1.25**2)),
        "d3": float(np.mean(ratio < 1.25**3)),
    }
