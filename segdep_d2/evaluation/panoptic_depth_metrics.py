"""Panoptic segmentation with metric depth: per-segment depth, PQ and depth-aware PQ.

Pure functions (arrays in, numbers out, no I/O); the evaluators in
:mod:`segdep_d2.evaluation.panoptic_depth_evaluator` only read files and accumulate.

Panoptic maps here are integer arrays ``category * label_divisor + instance`` (stuff and void have
instance 0). A pixel is void when its category is ``void_category`` or its id is negative
(detectron2's Panoptic-DeepLab marks void predictions with -1).

**PQ** follows panopticapi's ``pq_compute`` (``panopticapi/evaluation.py``) exactly: a GT and a
predicted segment of the same category match when IoU > 0.5, where the union leaves out the
predicted segment's pixels on void GT; unmatched GT segments are false negatives; an unmatched
predicted segment is a false positive unless more than half of it lies on void GT or on GT crowd
regions of its own category; per-category PQ / SQ / RQ are averaged over the categories that occur
(tp + fp + fn > 0) in GT or prediction. GT crowd regions (``crowd_ids``) are never matched and
never false negatives, and a matched prediction's union keeps its crowd pixels. (panopticapi keeps
one crowd region per category and image, the last listed; several crowd segments of one category
are pooled here, which is the same whenever a category has one crowd region per image, as
panopticapi's converters and our readers produce.)

**DPQ** (depth-aware PQ) follows ViP-DeepLab (Qiao et al., CVPR 2021), single frame, as its
official evaluation does (``eval_dvpq.py`` of github.com/joe-siyuan-qiao/ViP-DeepLab, the
Cityscapes-DVPS / SemKITTI-DVPS scripts with ``eval_frames=1``): every predicted pixel with valid
GT depth (``gt_depth > 0``) whose absolute relative error ``|p - g| / g`` exceeds λ is re-labelled
to a category that matches nothing (the official script writes category 19, which no evaluated
class has, and drops that class's false positives). Such a pixel therefore leaves its predicted
segment: it no longer counts in that segment's area nor in its intersection with any GT segment,
and it never creates a false positive. Here it is simply set to void in the prediction, which is
equivalent. PQ is then computed as above; ``DPQ@λ`` for each λ and ``DPQ`` = their mean. (As the
rest of this module, per-category averaging follows panopticapi, i.e. over categories with
tp + fp + fn > 0, whereas the ViP-DeepLab script averages over all 19 Cityscapes classes.)

**Per-segment depth** (:func:`segment_depths`): mean and median of a depth map over every segment,
in one vectorised pass.
"""
from collections import namedtuple
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .arrays import to_numpy

__all__ = [
    "segment_depths",
    "PanopticQualityStats",
    "PanopticMatch",
    "ImagePanopticStats",
    "panoptic_quality_stats",
    "image_panoptic_depth_stats",
    "summarize_panoptic_depth",
    "depth_aware_pq",
    "dpq_key",
]

ArrayLike = Union[np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Per-segment depth
# --------------------------------------------------------------------------------------------


def segment_depths(
    panoptic_ids: ArrayLike,
    depth: ArrayLike,
    *,
    void_ids: Iterable[int] = (-1,),
    valid: Optional[ArrayLike] = None,
) -> Dict[int, Dict[str, float]]:
    """Mean and median of ``depth`` over every segment of ``panoptic_ids``.

    One pass: ``np.unique`` numbers the segments, ``np.bincount`` gives areas and sums (means in
    float64), and one stable sort by segment number lays each segment's depths out contiguously,
    where ``np.median`` takes each segment's median (numpy's definition: the mean of the two
    middle values for an even count). Tensors on any device are reduced on the CPU; at
    512 x 1024 this is about 1% of a forward (``tools/benchmark.py`` measures it).

    Args:
        panoptic_ids: integer (H, W) segment ids, numpy array or torch tensor.
        depth: (H, W) finite, non-negative depth in metres.
        void_ids: ids that are not segments (left out of the result).
        valid: optional boolean (H, W) mask; only these pixels count (e.g. valid ground truth).
            Segments without a valid pixel are absent from the result.

    Returns:
        ``{segment_id: {"depth": mean, "depth_median": median, "area": pixels}}``.
    """
    ids = to_numpy(panoptic_ids).reshape(-1)
    depth = to_numpy(depth).reshape(-1)
    if ids.shape != depth.shape:
        raise ValueError(f"panoptic_ids ({ids.size} pixels) and depth ({depth.size} pixels) differ in size")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"panoptic_ids must be integers, got {ids.dtype}")
    if valid is not None:
        keep = to_numpy(valid).reshape(-1).astype(bool)
        ids, depth = ids[keep], depth[keep]
    if not bool((depth >= 0).all()):  # also false for NaN
        raise ValueError("segment_depths expects finite, non-negative depth")
    labels, segment_index = np.unique(ids, return_inverse=True)
    segment_index = segment_index.reshape(-1)
    areas = np.bincount(segment_index, minlength=labels.size)
    sums = np.bincount(segment_index, weights=depth, minlength=labels.size)
    grouped = depth[np.argsort(segment_index, kind="stable")]
    medians = [np.median(values) for values in np.split(grouped, np.cumsum(areas)[:-1])] if labels.size else []
    void = {int(v) for v in void_ids}
    return {
        label: {"depth": total / area, "depth_median": float(median), "area": area}
        for label, total, median, area in zip(labels.tolist(), sums.tolist(), medians, areas.tolist())
        if label not in void
    }


# --------------------------------------------------------------------------------------------
# PQ statistics
# --------------------------------------------------------------------------------------------
class PanopticQualityStats:
    """Per-category ``tp``, ``fp``, ``fn`` and IoU sum (panopticapi's ``PQStat``).

    Add them over images (``+``, ``+=``, ``sum(...)``); plain dicts of numbers, so they pickle for
    ``detectron2.utils.comm.gather`` / ``all_gather``.
    """

    def __init__(self):
        self.tp: Dict[int, int] = {}
        self.fp: Dict[int, int] = {}
        self.fn: Dict[int, int] = {}
        self.iou: Dict[int, float] = {}

    def add(self, category: int, *, tp: int = 0, fp: int = 0, fn: int = 0, iou: float = 0.0):
        category = int(category)
        self.tp[category] = self.tp.get(category, 0) + int(tp)
        self.fp[category] = self.fp.get(category, 0) + int(fp)
        self.fn[category] = self.fn.get(category, 0) + int(fn)
        self.iou[category] = self.iou.get(category, 0.0) + float(iou)
        return self

    @property
    def categories(self) -> List[int]:
        return sorted(self.tp)

    def __iadd__(self, other: "PanopticQualityStats"):
        for c in other.tp:
            self.add(c, tp=other.tp[c], fp=other.fp[c], fn=other.fn[c], iou=other.iou[c])
        return self

    def __add__(self, other: "PanopticQualityStats") -> "PanopticQualityStats":
        out = PanopticQualityStats()
        out += self
        out += other
        return out

    def __radd__(self, other):
        if other == 0:  # sum([...]) starts from 0
            return self + PanopticQualityStats()
        return NotImplemented

    def __eq__(self, other):
        if not isinstance(other, PanopticQualityStats):
            return NotImplemented
        return (self.tp, self.fp, self.fn) == (other.tp, other.fp, other.fn) and all(
            abs(self.iou[c] - other.iou[c]) < 1e-9 for c in self.iou
        )

    def __repr__(self):
        rows = ", ".join(
            f"{c}: tp={self.tp[c]} fp={self.fp[c]} fn={self.fn[c]} iou={self.iou[c]:.4f}" for c in self.categories
        )
        return f"PanopticQualityStats({rows})"

    def pq_average(self, categories, isthing: Optional[bool] = None):
        """panopticapi's ``PQStat.pq_average``: ``({"pq", "sq", "rq", "n"}, per_class)`` as
        fractions, over the categories of ``categories`` (optionally only things / stuff) with
        tp + fp + fn > 0. With no such category the averages are 0 (panopticapi would divide by 0).
        """
        categories = _categories_dict(categories)
        pq = sq = rq = 0.0
        n = 0
        per_class = {}
        for cat_id, info in categories.items():
            if isthing is not None and bool(info["isthing"]) != isthing:
                continue
            tp, fp, fn = self.tp.get(cat_id, 0), self.fp.get(cat_id, 0), self.fn.get(cat_id, 0)
            iou = self.iou.get(cat_id, 0.0)
            if tp + fp + fn == 0:
                per_class[cat_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            pq_c = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_c = iou / tp if tp != 0 else 0.0
            rq_c = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class[cat_id] = {"pq": pq_c, "sq": sq_c, "rq": rq_c}
            pq, sq, rq = pq + pq_c, sq + sq_c, rq + rq_c
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def summary(self, categories) -> Dict[str, float]:
        """``PQ SQ RQ PQ_th SQ_th RQ_th PQ_st SQ_st RQ_st`` in percent, as detectron2's
        ``COCOPanopticEvaluator`` reports them."""
        categories = _categories_dict(categories)
        unknown = sorted(set(self.tp) - set(categories))
        if unknown:
            raise ValueError(f"segments of categories {unknown} are not in `categories` {sorted(categories)}")
        out = {}
        for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
            avg, _ = self.pq_average(categories, isthing)
            out["PQ" + suffix] = 100.0 * avg["pq"]
            out["SQ" + suffix] = 100.0 * avg["sq"]
            out["RQ" + suffix] = 100.0 * avg["rq"]
        return out


def _categories_dict(categories) -> Dict[int, Mapping]:
    if isinstance(categories, Mapping):
        return {int(k): v for k, v in categories.items()}
    return {int(c["id"]): c for c in categories}


PanopticMatch = namedtuple("PanopticMatch", ["gt_id", "pred_id", "category", "iou"])
PanopticMatch.__doc__ = "A matched (IoU > 0.5, same category) GT / predicted segment pair of one image."


class ImagePanopticStats(NamedTuple):
    """Statistics of one image: plain PQ, PQ after the depth test at each λ, and the plain matches."""

    pq: PanopticQualityStats
    dpq: Dict[float, PanopticQualityStats]
    matches: List[PanopticMatch]


def dpq_key(threshold: float) -> str:
    """Result key of DPQ at ``threshold``: ``DPQ@0.1``, ``DPQ@0.25``, ``DPQ@0.5``."""
    return f"DPQ@{threshold:g}"


class _Compacted(NamedTuple):
    ids: np.ndarray  # (S,) panoptic ids of the non-void segments, ascending
    index: np.ndarray  # (N,) segment index of every pixel, S for void


def _compact(flat: np.ndarray, void: np.ndarray) -> _Compacted:
    """Number the non-void ids 0..S-1 (ascending); void pixels get S."""
    kept = flat[~void]
    index = np.empty(flat.shape, dtype=np.int64)
    if kept.size == 0:
        index.fill(0)
        return _Compacted(np.zeros(0, dtype=np.int64), index)
    lo, hi = int(kept.min()), int(kept.max())
    if hi - lo < 2**24:  # O(N) through a lookup table
        present = np.bincount(kept - lo, minlength=hi - lo + 1) > 0
        ids = np.flatnonzero(present) + lo
        lut = np.zeros(hi - lo + 1, dtype=np.int64)
        lut[ids - lo] = np.arange(ids.size)
        index[~void] = lut[kept - lo]
    else:
        ids, inverse = np.unique(kept, return_inverse=True)
        index[~void] = inverse.reshape(-1)
    index[void] = ids.size
    return _Compacted(ids.astype(np.int64), index)


def _void_mask(flat: np.ndarray, label_divisor: int, void_category: int) -> np.ndarray:
    return (flat < 0) | (flat // label_divisor == void_category)


def _pq_from_index(gt: _Compacted, pred: _Compacted, gt_cat, pred_cat, gt_crowd, pred_index=None):
    """panopticapi's per-image loop on compacted maps; ``gt_crowd`` flags the GT crowd segments,
    ``pred_index`` overrides ``pred.index``."""
    num_gt, num_pred = gt.ids.size, pred.ids.size
    pred_index = pred.index if pred_index is None else pred_index
    width = num_pred + 1
    combined = gt.index * width + pred_index
    if (num_gt + 1) * width <= 2**24:
        counts = np.bincount(combined, minlength=(num_gt + 1) * width)
        pairs = np.flatnonzero(counts)
        inter = counts[pairs]
    else:
        pairs, inter = np.unique(combined, return_counts=True)
    g, p = pairs // width, pairs % width

    gt_area = np.bincount(g, weights=inter, minlength=num_gt + 1)[:num_gt]
    pred_area = np.bincount(p, weights=inter, minlength=num_pred + 1)[:num_pred]
    on_void = g == num_gt
    void_overlap = np.zeros(num_pred + 1)
    void_overlap[p[on_void]] = inter[on_void]
    void_overlap = void_overlap[:num_pred]

    # A prediction's overlap with crowd regions of its own category is forgiven like void
    # overlap when it is unmatched (panopticapi); it stays in the union of a match.
    crowd_overlap = np.zeros(num_pred + 1)
    on_own_crowd = (g < num_gt) & (p < num_pred)
    on_own_crowd[on_own_crowd] = gt_crowd[g[on_own_crowd]] & (gt_cat[g[on_own_crowd]] == pred_cat[p[on_own_crowd]])
    np.add.at(crowd_overlap, p[on_own_crowd], inter[on_own_crowd])
    crowd_overlap = crowd_overlap[:num_pred]

    stats = PanopticQualityStats()
    matches = []
    candidate = (g < num_gt) & (p < num_pred)
    candidate[candidate] = ~gt_crowd[g[candidate]]  # crowd regions are never matched
    g_c, p_c, i_c = g[candidate], p[candidate], inter[candidate]
    same = gt_cat[g_c] == pred_cat[p_c]
    g_c, p_c, i_c = g_c[same], p_c[same], i_c[same]
    union = pred_area[p_c] + gt_area[g_c] - i_c - void_overlap[p_c]
    iou = i_c / union
    gt_matched = np.zeros(num_gt, dtype=bool)
    pred_matched = np.zeros(num_pred, dtype=bool)
    for gi, pi, value in zip(g_c[iou > 0.5].tolist(), p_c[iou > 0.5].tolist(), iou[iou > 0.5].tolist()):
        category = int(gt_cat[gi])
        stats.add(category, tp=1, iou=value)
        gt_matched[gi] = pred_matched[pi] = True
        matches.append(PanopticMatch(int(gt.ids[gi]), int(pred.ids[pi]), category, value))
    for gi in np.flatnonzero(~gt_matched & ~gt_crowd).tolist():
        stats.add(gt_cat[gi], fn=1)
    # unmatched predictions that still have pixels and lie at most half on void GT + own crowd
    ignored = void_overlap + crowd_overlap
    fp = (~pred_matched) & (pred_area > 0) & ~(ignored / np.maximum(pred_area, 1) > 0.5)
    for pi in np.flatnonzero(fp).tolist():
        stats.add(pred_cat[pi], fp=1)
    return stats, matches


def _prepare(pred, gt, label_divisor, void_category, crowd_ids=()):
    pred = to_numpy(pred)
    gt = to_numpy(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    for name, arr in (("prediction", pred), ("ground truth", gt)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"panoptic {name} must be an integer array, got {arr.dtype}")
    pred_flat = pred.reshape(-1).astype(np.int64)
    gt_flat = gt.reshape(-1).astype(np.int64)
    gt_c = _compact(gt_flat, _void_mask(gt_flat, label_divisor, void_category))
    pred_c = _compact(pred_flat, _void_mask(pred_flat, label_divisor, void_category))
    gt_crowd = np.isin(gt_c.ids, np.asarray(list(crowd_ids), dtype=np.int64))
    return gt_c, pred_c, gt_c.ids // label_divisor, pred_c.ids // label_divisor, gt_crowd


def panoptic_quality_stats(
    pred: ArrayLike, gt: ArrayLike, *, label_divisor: int, void_category: int, crowd_ids: Iterable[int] = ()
) -> Tuple[PanopticQualityStats, List[PanopticMatch]]:
    """PQ statistics of one image and its matched segment pairs (panopticapi's rules);
    ``crowd_ids``: the GT ids that are crowd regions."""
    gt_c, pred_c, gt_cat, pred_cat, gt_crowd = _prepare(pred, gt, label_divisor, void_category, crowd_ids)
    return _pq_from_index(gt_c, pred_c, gt_cat, pred_cat, gt_crowd)


def image_panoptic_depth_stats(
    pred: ArrayLike,
    gt: ArrayLike,
    pred_depth: Optional[ArrayLike],
    gt_depth: Optional[ArrayLike],
    *,
    label_divisor: int,
    void_category: int,
    thresholds: Sequence[float] = (0.1, 0.25, 0.5),
    crowd_ids: Iterable[int] = (),
) -> ImagePanopticStats:
    """Plain PQ statistics, DPQ statistics at every λ in ``thresholds`` and the plain matches.

    ``crowd_ids`` are the GT ids that are crowd regions (``iscrowd: 1``), handled as panopticapi
    does (see the module docstring).

    ``gt_depth`` (metres, ``<= 0`` = no measurement) may be None: no pixel is then depth-tested
    and DPQ equals PQ for this image. Where GT depth is valid, a missing or non-finite predicted
    depth counts as wrong.
    """
    gt_c, pred_c, gt_cat, pred_cat, gt_crowd = _prepare(pred, gt, label_divisor, void_category, crowd_ids)
    pq, matches = _pq_from_index(gt_c, pred_c, gt_cat, pred_cat, gt_crowd)
    dpq = {}
    if thresholds:
        if gt_depth is None:
            rel_error = None
        else:
            g = to_numpy(gt_depth).astype(np.float64).reshape(-1)
            if g.size != gt_c.index.size:
                raise ValueError(f"gt_depth has {g.size} pixels, the panoptic maps {gt_c.index.size}")
            has_depth = g > 0
            if pred_depth is None:
                p = np.full_like(g, np.nan)
            else:
                p = to_numpy(pred_depth).astype(np.float64).reshape(-1)
                if p.size != g.size:
                    raise ValueError(f"pred_depth has {p.size} pixels, gt_depth {g.size}")
            rel_error = np.full(g.shape, -1.0)  # -1: not tested
            with np.errstate(divide="ignore", invalid="ignore"):
                err = np.abs(p[has_depth] - g[has_depth]) / g[has_depth]
            rel_error[has_depth] = np.where(np.isfinite(err), err, np.inf)
        for threshold in thresholds:
            if rel_error is None:
                dpq[float(threshold)] = pq + PanopticQualityStats()
                continue
            wrong = rel_error > threshold  # re-labelled to "matches nothing" = void prediction
            pred_index = np.where(wrong, pred_c.ids.size, pred_c.index)
            dpq[float(threshold)], _ = _pq_from_index(gt_c, pred_c, gt_cat, pred_cat, gt_crowd, pred_index)
    return ImagePanopticStats(pq, dpq, matches)


def summarize_panoptic_depth(
    pq: PanopticQualityStats, dpq: Mapping[float, PanopticQualityStats], categories
) -> Dict[str, float]:
    """``PQ SQ RQ`` (all / ``_th`` / ``_st``), ``DPQ@λ`` for every λ and ``DPQ`` (their mean), in percent."""
    out = pq.summary(categories)
    values = []
    for threshold in sorted(dpq):
        value = dpq[threshold].summary(categories)["PQ"]
        out[dpq_key(threshold)] = value
        values.append(value)
    if values:
        out["DPQ"] = float(np.mean(values))
    return out


def depth_aware_pq(
    preds: Sequence[ArrayLike],
    gts: Sequence[ArrayLike],
    pred_depths: Sequence[Optional[ArrayLike]],
    gt_depths: Sequence[Optional[ArrayLike]],
    *,
    label_divisor: int,
    void_category: int,
    categories,
    thresholds: Sequence[float] = (0.1, 0.25, 0.5),
    crowd_ids: Optional[Sequence[Iterable[int]]] = None,
) -> Dict[str, float]:
    """PQ and ViP-DeepLab's depth-aware PQ over a list of images (see the module docstring).

    Args:
        preds, gts: per-image integer panoptic maps ``category * label_divisor + instance``;
            void pixels have category ``void_category`` (negative ids are void too).
        pred_depths, gt_depths: per-image depth maps in metres; GT ``<= 0`` = no measurement.
        categories: ``[{"id": int, "isthing": bool}, ...]`` (panopticapi style, without void).
        thresholds: the λ of the relative depth error test.
        crowd_ids: per image, the GT ids that are crowd regions (default: none).

    Returns:
        ``PQ SQ RQ PQ_th SQ_th RQ_th PQ_st SQ_st RQ_st`` and ``DPQ@λ`` per λ and ``DPQ`` (their
        mean), all in percent.
    """
    if crowd_ids is None:
        crowd_ids = [()] * len(gts)
    if not (len(preds) == len(gts) == len(pred_depths) == len(gt_depths) == len(crowd_ids)):
        raise ValueError("preds, gts, pred_depths, gt_depths (and crowd_ids) must have the same length")
    pq = PanopticQualityStats()
    dpq = {float(t): PanopticQualityStats() for t in thresholds}
    for pred, gt, pred_depth, gt_depth, crowd in zip(preds, gts, pred_depths, gt_depths, crowd_ids):
        image = image_panoptic_depth_stats(
            pred, gt, pred_depth, gt_depth,
            label_divisor=label_divisor, void_category=void_category, thresholds=thresholds, crowd_ids=crowd,
        )
        pq += image.pq
        for t in dpq:
            dpq[t] += image.dpq[t]
    return summarize_panoptic_depth(pq, dpq, categories)
