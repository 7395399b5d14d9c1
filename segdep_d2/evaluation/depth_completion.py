"""Depth completion: the KITTI benchmark metrics, the NYUv2 protocol, trivial baselines and an evaluator.

**KITTI depth completion** (Uhrig et al., "Sparsity Invariant CNNs", 3DV 2017; the official devkit's
``cpp/evaluate_depth.cpp`` + ``cpp/io_depth.h``). Per image, over the pixels with valid ground truth, with
``g`` the ground truth and ``p`` the prediction, both in metres:

* ``RMSE``  = sqrt(mean((g - p)^2))          reported in mm  (the devkit prints metres; the leaderboard mm)
* ``MAE``   = mean(|g - p|)                   in mm
* ``iRMSE`` = sqrt(mean((1/g - 1/p)^2))       in 1/km (1000 / metres)
* ``iMAE``  = mean(|1/g - 1/p|)               in 1/km

The devkit averages these per-image numbers over the images (``statMean`` of the per-image ``depthError``
vectors), and so does :class:`DepthCompletionEvaluator`: it is not a mean over all pixels of the dataset.

Missing predictions, as the devkit treats them: a prediction PNG pixel of value 0 is "invalid" (``io_depth.h``
``readDepthMap``: ``val == 0 -> setInvalid``, i.e. -1; ``isValid`` is ``depth >= 0``), and
``DepthImage::interpolateBackground()`` fills every invalid pixel before ``depthError`` scores *all* pixels with
valid ground truth (nothing is excluded for being unpredicted). The fill, row by row: a run of invalid pixels
between two valid ones takes the *smaller* of the two neighbouring depths; the run before the first / after the
last valid pixel of a row takes that pixel's depth; then, column by column, the rows above the first / below the
last row with any valid pixel take that row's depths. A row without any valid pixel that lies between rows with
valid pixels stays invalid, and the devkit then scores it with depth -1 (``getDepth`` of an invalid pixel); so
does every pixel of a prediction without any valid pixel. :func:`kitti_interpolate_background` reproduces this
exactly for float predictions, with "invalid" = ``p <= 0`` or not finite (what a 16-bit PNG can only store as 0).
The 1/256 m quantisation of the submitted PNGs is not reproduced: float predictions are scored as they are.

**NYUv2 protocol** (Ma & Karaman, "Sparse-to-Dense", ICRA 2018, and the works following it): ``RMSE`` in metres,
``REL`` = mean(|g - p| / g), ``d1, d2, d3`` = fraction of max(g/p, p/g) < 1.25^k. These are exactly
:func:`segdep_d2.evaluation.depth_metrics`'s ``RMSE``, ``AbsRel``, ``d1..d3`` (which also clamps the prediction
to the valid depth range, the BTS convention), reused here: :func:`nyu_completion_metrics` only renames them
(``RMSE_m``, ``REL``) so that they sit next to the KITTI ``RMSE`` in mm.

**Baselines** on the sparse input alone (the floor a model has to beat): ``sparse_only`` scores the sparse
points themselves, only at the measured pixels (sparse > 0 and valid ground truth); ``nearest``
(:func:`nearest_fill`) gives every pixel the depth of its nearest measured pixel; ``bilinear``
(:func:`bilinear_fill`) interpolates linearly on the Delaunay triangulation of the points (nearest outside
their convex hull).

The evaluator's type name is ``"depth_completion"`` (:data:`DEPTH_COMPLETION_EVALUATOR_TYPE`, for a dataset's
metadata ``evaluator_type``); :func:`segdep_d2.engine.build_evaluators` picks it for models that read sparse
depth or when ``TEST.DEPTH.COMPLETION`` is set.
"""
import logging
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import numpy as np
from detectron2.evaluation import DatasetEvaluator
from scipy import ndimage
from scipy.spatial import Delaunay, QhullError
from tabulate import tabulate

from ..data.datasets.metadata import valid_depth_range
from ..data.sparse_depth import sparse_depth_input
from .arrays import gather_results, to_numpy
from .depth_evaluator import _image_key, prediction_and_ground_truth
from .depth_metrics import depth_metrics

__all__ = [
    "DEPTH_COMPLETION_EVALUATOR_TYPE",
    "KITTI_COMPLETION_METRIC_NAMES",
    "NYU_COMPLETION_METRIC_NAMES",
    "DEPTH_COMPLETION_METRIC_NAMES",
    "COMPLETION_BASELINES",
    "kitti_interpolate_background",
    "depth_completion_metrics",
    "nyu_completion_metrics",
    "completion_image_metrics",
    "sparse_only_metrics",
    "nearest_fill",
    "bilinear_fill",
    "DepthCompletionEvaluator",
]

logger = logging.getLogger(__name__)

DEPTH_COMPLETION_EVALUATOR_TYPE = "depth_completion"
KITTI_COMPLETION_METRIC_NAMES = ("RMSE", "MAE", "iRMSE", "iMAE")  # mm, mm, 1/km, 1/km
NYU_COMPLETION_METRIC_NAMES = ("RMSE_m", "REL", "d1", "d2", "d3")  # m, fraction, fractions
DEPTH_COMPLETION_METRIC_NAMES = KITTI_COMPLETION_METRIC_NAMES + NYU_COMPLETION_METRIC_NAMES

# the devkit's depth of a pixel it could not fill (io_depth.h: setInvalid stores -1)
_DEVKIT_INVALID = -1.0


def _as_2d(x, name) -> np.ndarray:
    x = to_numpy(x).astype(np.float64)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) depth map, got shape {x.shape}")
    return x


def _measured(depth: np.ndarray) -> np.ndarray:
    """Pixels that carry a depth: finite and > 0 (a 16-bit KITTI PNG stores everything else as 0)."""
    return np.isfinite(depth) & (depth > 0)


def kitti_interpolate_background(pred_m) -> np.ndarray:
    """The KITTI devkit's ``DepthImage::interpolateBackground()`` (``io_depth.h``) on a float (H, W) prediction
    in metres; invalid = ``<= 0`` or not finite. Returns float64 (H, W); pixels the devkit leaves invalid (rows
    without any valid pixel between rows with some; everything when no pixel is valid) are -1, the depth the
    devkit then scores them with. See the module docstring."""
    pred = _as_2d(pred_m, "pred_m")
    valid = _measured(pred)
    out = np.where(valid, pred, _DEVKIT_INVALID)
    if valid.all():
        return out
    h, w = out.shape
    rows = np.arange(h)[:, None]
    cols = np.broadcast_to(np.arange(w), (h, w))
    # per pixel: column of the last valid pixel at or left of it, of the first valid pixel at or right of it
    prev_col = np.maximum.accumulate(np.where(valid, cols, -1), axis=1)
    next_col = np.minimum.accumulate(np.where(valid, cols, w)[:, ::-1], axis=1)[:, ::-1]
    has_prev, has_next = prev_col >= 0, next_col < w
    prev_val = out[rows, np.clip(prev_col, 0, w - 1)]
    next_val = out[rows, np.clip(next_col, 0, w - 1)]
    # inner gap: min of both neighbours; left end: first valid of the row; right end: last valid of the row
    fill = np.where(has_prev & has_next, np.minimum(prev_val, next_val), np.where(has_prev, prev_val, next_val))
    row_ok = valid.any(axis=1)
    out = np.where(valid, out, np.where(row_ok[:, None], fill, _DEVKIT_INVALID))
    if row_ok.any():
        first = int(np.argmax(row_ok))
        last = h - 1 - int(np.argmax(row_ok[::-1]))
        out[:first] = out[first]  # extrapolate to the top
        out[last + 1 :] = out[last]  # extrapolate to the bottom
    return out


def depth_completion_metrics(pred_m, gt_m, mask=None) -> Optional[Dict[str, float]]:
    """The KITTI depth completion metrics of one image, as the official devkit computes them (module docstring).

    Args:
        pred_m: predicted depth (H, W) in metres; pixels ``<= 0`` or not finite are missing and filled by the
            devkit's rule (:func:`kitti_interpolate_background`) before scoring.
        gt_m: ground-truth depth (H, W) in metres; pixels ``<= 0`` (or not finite) are not scored.
        mask: optional boolean (H, W): score only these pixels (besides ``gt > 0``).

    Returns:
        ``{"RMSE": mm, "MAE": mm, "iRMSE": 1/km, "iMAE": 1/km}``, or None when no pixel is scored (the devkit
        stops with "Ground truth defect" there; callers skip the image).
    """
    pred = _as_2d(pred_m, "pred_m")
    gt = _as_2d(gt_m, "gt_m")
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same (H, W) shape")
    valid = _measured(gt)
    if mask is not None:
        mask = to_numpy(mask).astype(bool)
        if mask.shape != gt.shape:
            raise ValueError(f"mask {mask.shape} differs from the depth map {gt.shape}")
        valid &= mask
    if not valid.any():
        return None
    g = gt[valid]
    p = kitti_interpolate_background(pred)[valid]
    err = np.abs(g - p)
    inv_err = np.abs(1.0 / g - 1.0 / p)  # 1/m
    return {
        "RMSE": float(1000.0 * np.sqrt(np.mean(err**2))),  # m -> mm
        "MAE": float(1000.0 * np.mean(err)),
        "iRMSE": float(1000.0 * np.sqrt(np.mean(inv_err**2))),  # 1/m -> 1/km
        "iMAE": float(1000.0 * np.mean(inv_err)),
    }


def nyu_completion_metrics(pred_m, gt_m, min_depth: float = 1e-3, max_depth: float = 10.0, mask=None):
    """The NYUv2 depth completion numbers of one image, from :func:`depth_metrics` (valid ground truth is
    ``min_depth < gt < max_depth``; the prediction is clamped to that range): ``{"RMSE_m": m, "REL", "d1",
    "d2", "d3"}``, or None when no pixel is valid. ``mask``: optional boolean (H, W) of pixels to score."""
    if mask is not None:
        mask = to_numpy(mask).astype(bool)
    m = depth_metrics(pred_m, gt_m, min_depth, max_depth, crop=mask)
    if m is None:
        return None
    return {"RMSE_m": m["RMSE"], "REL": m["AbsRel"], "d1": m["d1"], "d2": m["d2"], "d3": m["d3"]}


def completion_image_metrics(pred_m, gt_m, min_depth: float, max_depth: float, mask=None):
    """KITTI (:func:`depth_completion_metrics`) and NYUv2 (:func:`nyu_completion_metrics`) numbers of one image
    over the ground truth in ``(min_depth, max_depth)`` (and ``mask``), in one flat dict
    (:data:`DEPTH_COMPLETION_METRIC_NAMES`); None when no pixel is valid."""
    gt = _as_2d(gt_m, "gt_m")
    in_range = (gt > min_depth) & (gt < max_depth)
    if mask is not None:
        mask = to_numpy(mask).astype(bool)
        if mask.shape != gt.shape:
            raise ValueError(f"mask {mask.shape} differs from the depth map {gt.shape}")
        in_range &= mask
    kitti = depth_completion_metrics(pred_m, gt, mask=in_range)
    if kitti is None:
        return None
    return {**kitti, **nyu_completion_metrics(pred_m, gt, min_depth, max_depth, mask=in_range)}


def sparse_only_metrics(sparse_m, gt_m, min_depth: float = 1e-3, max_depth: float = np.inf):
    """The "sparse only" baseline: :func:`completion_image_metrics` of the sparse input itself, at the measured
    pixels only (``sparse > 0`` and valid ground truth; nothing is filled). None when there is no such pixel."""
    sparse = _as_2d(sparse_m, "sparse_m")
    return completion_image_metrics(sparse, gt_m, min_depth, max_depth, mask=_measured(sparse))


def _points(sparse_m):
    sparse = _as_2d(sparse_m, "sparse_m")
    measured = _measured(sparse)
    if not measured.any():
        raise ValueError("the sparse depth has no measured pixel (> 0): a fill of it is undefined")
    return sparse, measured


def nearest_fill(sparse_m) -> np.ndarray:
    """Every pixel takes the depth of its nearest measured pixel (Euclidean distance in pixels; measured =
    ``> 0`` and finite; ties go to whichever ``scipy.ndimage.distance_transform_edt`` returns). float32 (H, W).

    Raises:
        ValueError: no measured pixel.
    """
    sparse, measured = _points(sparse_m)
    rows, cols = ndimage.distance_transform_edt(~measured, return_distances=False, return_indices=True)
    return sparse[rows, cols].astype(np.float32)


def _rasterize_linear(simplices: np.ndarray, points: np.ndarray, values: np.ndarray, out: np.ndarray,
                      chunk: int = 1 << 22):
    """Write into ``out`` (H, W) the barycentric interpolation of ``values`` at every pixel inside a triangle
    ``simplices`` (T, 3) of the integer (row, col) ``points`` (N, 2).

    What ``LinearNDInterpolator`` computes, without its per-pixel point location and its ``transform`` (each
    ~1 s for a KITTI frame): the candidate pixels of each triangle are those of its bounding box, kept where
    all three barycentric coordinates are >= 0, tested exactly in integers (the vertices are pixels). A pixel on
    an edge shared by two triangles gets the same value from either, as the interpolant is continuous."""
    corners = points[simplices].astype(np.int64)  # (T, 3, 2)
    a = corners[:, 0]
    e1, e2 = corners[:, 1] - a, corners[:, 2] - a
    det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]  # twice the signed area
    sign = np.sign(det)
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    size = hi - lo + 1
    count = np.where(det != 0, size[:, 0] * size[:, 1], 0)  # flat triangles: none (their pixels lie on others)
    ends = np.cumsum(count)
    start = 0
    while start < len(simplices):  # chunks of about ``chunk`` candidate pixels, for bounded memory
        stop = max(int(np.searchsorted(ends, (ends[start - 1] if start else 0) + chunk, side="right")), start + 1)
        t = np.arange(start, stop)
        n = count[t]
        tri_id = np.repeat(t, n)
        if len(tri_id):
            offset = np.arange(len(tri_id)) - np.repeat(np.cumsum(n) - n, n)
            width = size[tri_id, 1]
            rows = lo[tri_id, 0] + offset // width
            cols = lo[tri_id, 1] + offset % width
            dy, dx = rows - a[tri_id, 0], cols - a[tri_id, 1]
            # d = b1 * e1 + b2 * e2 (Cramer): b_k = n_k / det, b0 = 1 - b1 - b2; signs made positive by ``sign``
            s_ = sign[tri_id]
            n1 = (dy * e2[tri_id, 1] - e2[tri_id, 0] * dx) * s_
            n2 = (e1[tri_id, 0] * dx - dy * e1[tri_id, 1]) * s_
            area = det[tri_id] * s_
            n0 = area - n1 - n2
            inside = (n0 >= 0) & (n1 >= 0) & (n2 >= 0)
            v = values[simplices[tri_id[inside]]]
            out[rows[inside], cols[inside]] = (
                n0[inside] * v[:, 0] + n1[inside] * v[:, 1] + n2[inside] * v[:, 2]
            ) / area[inside]
        start = stop


def bilinear_fill(sparse_m) -> np.ndarray:
    """Linear interpolation of the measured pixels over their Delaunay triangulation (barycentric within each
    triangle, so exact on a plane; the values ``griddata(method="linear")`` / ``LinearNDInterpolator`` give),
    :func:`nearest_fill` outside the convex hull of the points, and everywhere when they do not span a triangle
    (fewer than 3, or collinear). Measured pixels keep their depth. float32 (H, W).

    About 0.3 s for a 352 x 1216 KITTI frame with ~18k points on one CPU core (most of it the Delaunay
    triangulation; the triangles are rasterised with numpy, as scipy's point location alone takes ~1 s).

    Raises:
        ValueError: no measured pixel.
    """
    sparse, measured = _points(sparse_m)
    ys, xs = np.nonzero(measured)
    filled = nearest_fill(sparse).astype(np.float64)
    if len(ys) < 3:
        return filled.astype(np.float32)
    try:
        triangulation = Delaunay(np.column_stack([ys, xs]).astype(np.float64))
    except QhullError:  # collinear points: no triangle
        return filled.astype(np.float32)
    values = sparse[ys, xs].astype(np.float64)
    _rasterize_linear(triangulation.simplices, np.column_stack([ys, xs]), values, filled)
    filled[measured] = sparse[measured]
    return filled.astype(np.float32)


COMPLETION_BASELINES = ("sparse_only", "nearest", "bilinear")
_FILLS = {"nearest": nearest_fill, "bilinear": bilinear_fill}


class DepthCompletionEvaluator(DatasetEvaluator):
    """Depth completion metrics (KITTI benchmark + NYUv2 protocol) of the model and of trivial baselines.

    Evaluator type name ``"depth_completion"``. For every input with ``depth_file_name`` the ground truth
    (:func:`segdep_d2.data.read_depth`, valid where ``min_depth < gt < max_depth``, by default the dataset's
    metadata ``depth_range``) is compared with ``output["depth"]`` ((H, W) metres at the original image size)
    by :func:`completion_image_metrics`; the baselines get the same metrics from the record's sparse input
    (:func:`segdep_d2.data.sparse_depth.sparse_depth_input` with ``num_samples``: its
    ``sparse_depth_file_name``, or ``num_samples`` points drawn from the dense ground truth, fixed per image).

    Every metric is computed per image and averaged over the images, as the KITTI benchmark does (the devkit's
    mean of per-image errors). Images without any valid ground-truth pixel are skipped. A frame whose sparse
    input has no point at all has no baseline: it is left out of the baselines' averages and counted in
    ``num_images_without_points`` (its model metrics still count), so each baseline reports its own
    ``<baseline>/num_images``; ``sparse_only`` also leaves out frames whose points miss every valid
    ground-truth pixel.

    Result (flat keys, for detectron2's ``print_csv_format`` and ``EventStorage``)::

        {"depth_completion": {"RMSE": mm, "MAE": mm, "iRMSE": 1/km, "iMAE": 1/km,
                              "RMSE_m": m, "REL", "d1", "d2", "d3", "num_images",
                              "num_images_without_points",
                              "nearest/RMSE", ..., "nearest/num_images", "bilinear/...", "sparse_only/..."}}

    and a table of the model's and the baselines' numbers in the log.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        num_samples: int = 0,
        distributed: bool = True,
        baselines: Sequence[str] = COMPLETION_BASELINES,
        *,
        min_depth: Optional[float] = None,
        max_depth: Optional[float] = None,
    ):
        """
        Args:
            dataset_name: a registered dataset; its metadata ``depth_range`` gives the valid ground truth.
            output_dir: where to write ``depth_completion_per_image.json`` (main process only).
            num_samples: the sparse input of the baselines: 0 reads each record's ``sparse_depth_file_name``;
                N > 0 samples N points of the dense ground truth, fixed per image (``INPUT.SPARSE_DEPTH.
                NUM_SAMPLES``, the NYUv2 protocol).
            distributed: gather the per-image results of all ranks before averaging.
            baselines: any of ``"sparse_only"``, ``"nearest"``, ``"bilinear"``; empty: the model only (the
                sparse input is then not read).
            min_depth, max_depth: override ``metadata.depth_range`` (the official KITTI devkit scores every
                ground-truth pixel > 0, without a cap).
        """
        baselines = tuple(baselines or ())
        unknown = [b for b in baselines if b not in COMPLETION_BASELINES]
        if unknown:
            raise ValueError(f"Unknown depth completion baselines {unknown}; expected some of {COMPLETION_BASELINES}")
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._num_samples = int(num_samples or 0)
        self._distributed = distributed
        self._baselines = baselines
        self._min_depth, self._max_depth = valid_depth_range(dataset_name, min_depth, max_depth)
        self._results = []

    def reset(self):
        self._results = []

    def _metrics(self, pred, gt, mask=None):
        return completion_image_metrics(pred, gt, self._min_depth, self._max_depth, mask=mask)

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]):
        for input_dict, output in zip(inputs, outputs):
            if "depth_file_name" not in input_dict:
                continue
            pred, gt = prediction_and_ground_truth(input_dict, output, self.__class__.__name__)
            metrics = self._metrics(pred, gt)
            if metrics is None:  # no valid ground-truth pixel in this image
                continue
            entry = {"image_id": _image_key(input_dict), **metrics}
            if self._baselines:
                entry.update(self._baseline_metrics(input_dict, gt))
            self._results.append(entry)

    def _baseline_metrics(self, input_dict, gt):
        sparse = sparse_depth_input(input_dict, self._num_samples)
        if sparse.shape != gt.shape:
            raise ValueError(
                f"The sparse depth input {sparse.shape} of {input_dict.get('file_name')} does not have the "
                f"ground-truth size {gt.shape}"
            )
        measured = _measured(sparse.astype(np.float64))
        entry = {"num_points": int(measured.sum())}
        if not measured.any():  # no point: every baseline is undefined for this frame
            return entry
        for name in self._baselines:
            if name == "sparse_only":
                m = self._metrics(sparse, gt, mask=measured)
            else:
                m = self._metrics(_FILLS[name](sparse), gt)
            if m is not None:
                entry.update({f"{name}/{k}": v for k, v in m.items()})
        return entry

    def evaluate(self):
        results = gather_results(self._results, self._distributed, self._output_dir, "depth_completion_per_image.json")
        if results is None:  # not the main process
            return {}
        if not results:
            logger.warning(
                f"[DepthCompletionEvaluator] {self._dataset_name}: no image with valid ground-truth depth"
            )
            return OrderedDict({"depth_completion": {"num_images": 0}})
        summary = {name: float(np.mean([r[name] for r in results])) for name in DEPTH_COMPLETION_METRIC_NAMES}
        summary["num_images"] = len(results)
        if self._baselines:
            summary["num_images_without_points"] = sum(1 for r in results if r.get("num_points", 0) == 0)
        for name in self._baselines:
            rows = [r for r in results if f"{name}/RMSE" in r]
            for key in DEPTH_COMPLETION_METRIC_NAMES:
                if rows:
                    summary[f"{name}/{key}"] = float(np.mean([r[f"{name}/{key}"] for r in rows]))
            summary[f"{name}/num_images"] = len(rows)
        logger.info(self._table(summary))
        return OrderedDict({"depth_completion": summary})

    def _table(self, summary) -> str:
        headers = ["", "RMSE [mm]", "MAE [mm]", "iRMSE [1/km]", "iMAE [1/km]", "RMSE [m]", "REL", "d1", "d2", "d3",
                   "images"]
        rows = [["model"] + [summary[k] for k in DEPTH_COMPLETION_METRIC_NAMES] + [summary["num_images"]]]
        for name in self._baselines:
            values = [summary.get(f"{name}/{k}", float("nan")) for k in DEPTH_COMPLETION_METRIC_NAMES]
            rows.append([name] + values + [summary[f"{name}/num_images"]])
        table = tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".4f", numalign="right")
        note = ""
        if self._baselines:
            source = f"{self._num_samples} sampled points" if self._num_samples > 0 else "sparse_depth_file_name"
            note = (f"\n(baselines from the sparse input: {source}; "
                    f"{summary['num_images_without_points']} image(s) without any point)")
        return (f"[DepthCompletionEvaluator] {self._dataset_name}: per-image metrics averaged over images "
                f"(KITTI benchmark convention)\n{table}{note}")
