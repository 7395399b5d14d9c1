"""detectron2 evaluator for panoptic segmentation with per-segment depth.

A thin wrapper around :mod:`segdep_d2.evaluation.panoptic_depth_metrics`: it reads the ground
truth, turns both sides into ``category * label_divisor + instance`` maps and accumulates per-image
statistics (never whole maps), so memory stays bounded on any dataset size.
"""
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.depth_io import read_depth
from ..data.datasets.metadata import valid_depth_range
from ..data.label_io import has_panoptic, read_panoptic
from .arrays import to_numpy
from .panoptic_depth_metrics import (
    PanopticQualityStats,
    image_panoptic_depth_stats,
    segment_depths,
    summarize_panoptic_depth,
)

__all__ = ["PanopticDepthEvaluator", "panoptic_gt_to_label_map"]

logger = logging.getLogger(__name__)


def panoptic_gt_to_label_map(
    segment_ids: np.ndarray,
    segments_info: Sequence[dict],
    *,
    label_divisor: int,
    void_category: int,
    thing_ids=None,
) -> Tuple[np.ndarray, List[int]]:
    """``read_panoptic`` output -> (int64 map ``category * label_divisor + instance``, crowd ids).

    Thing segments get instances 1, 2, ... per category, stuff segments instance 0 (a second
    segment of the same stuff category, which panopticapi allows, gets the next free instance
    number so that the two stay apart). Crowd segments (``iscrowd: 1``) are numbered like the
    others and their labels returned as the crowd ids, for the PQ functions' ``crowd_ids``.
    Pixels without a segment become void (``void_category * label_divisor``). ``thing_ids``
    (contiguous ids) decides what is a thing; without it each segment's ``isthing`` does.
    """
    void_label = int(void_category) * label_divisor
    ids, labels, crowd_ids = [], [], []
    next_instance: Dict[int, int] = {}
    for seg in segments_info:
        category = int(seg["category_id"])
        isthing = category in thing_ids if thing_ids is not None else bool(seg.get("isthing", False))
        if isthing or category in next_instance:
            instance = next_instance.get(category, 0) + 1
            next_instance[category] = instance
        else:
            instance = next_instance[category] = 0
        if instance >= label_divisor:
            raise ValueError(f"more than {label_divisor - 1} segments of category {category} in one image")
        ids.append(int(seg["id"]))
        labels.append(category * label_divisor + instance)
        if seg.get("iscrowd", 0):
            crowd_ids.append(labels[-1])
    segment_ids = np.asarray(segment_ids, dtype=np.int64)
    if not ids:
        return np.full(segment_ids.shape, void_label, dtype=np.int64), crowd_ids
    order = np.argsort(ids)
    ids = np.asarray(ids, dtype=np.int64)[order]
    labels = np.asarray(labels, dtype=np.int64)[order]
    pos = np.clip(np.searchsorted(ids, segment_ids), 0, ids.size - 1)
    return np.where(ids[pos] == segment_ids, labels[pos], void_label), crowd_ids


def _categories_from_metadata(meta) -> Tuple[List[dict], set]:
    thing_ids = set(int(v) for v in meta.get("thing_dataset_id_to_contiguous_id", {}).values())
    ids = set(thing_ids)
    stuff_map = meta.get("stuff_dataset_id_to_contiguous_id", None)
    if stuff_map:
        ids |= set(int(v) for v in stuff_map.values())
    elif meta.get("stuff_classes", None):
        ids |= set(range(len(meta.stuff_classes)))
    ids.discard(int(meta.ignore_label))
    return [{"id": c, "isthing": c in thing_ids} for c in sorted(ids)], thing_ids


class PanopticDepthEvaluator(DatasetEvaluator):
    """PQ / SQ / RQ, ViP-DeepLab's depth-aware PQ and per-segment depth error.

    Ground truth: ``read_panoptic`` (+ metadata ``label_divisor``, ``ignore_label`` as the void
    category, things from ``thing_dataset_id_to_contiguous_id``) and ``read_depth``; inputs without
    panoptic ground truth are skipped. GT depth outside the dataset's ``depth_range`` (e.g. VKITTI2
    sky at 655.35 m) counts as "no measurement", as in :class:`DepthEvaluator`; an image with
    panoptic but no depth ground truth counts in PQ and, having no pixel to depth-test, in DPQ as
    for PQ (``num_images_with_depth`` reports how many had depth).

    Predictions: ``output["panoptic_seg"] = (ids, segments_info)`` with ids = contiguous category
    * label_divisor + instance and -1 = void (detectron2's Panoptic-DeepLab convention), and
    ``output["depth"]`` (H, W metres). A segment's predicted depth is ``segments_info[i]["depth"]``
    (matched on ``"id"``) when present, else the mean of ``output["depth"]`` over the segment.

    Result ``{"panoptic_depth": {...}}``: ``PQ SQ RQ`` (all, ``_th``, ``_st``) and ``DPQ@λ`` per λ
    and ``DPQ`` (their mean), in percent; ``segment_AbsRel`` = mean over matched (IoU > 0.5, same
    category) segment pairs with valid GT depth of |d_pred - d_gt| / d_gt, d_gt the mean valid GT
    depth over the GT segment (``segment_AbsRel_median`` uses the predicted segment median instead,
    ``_th`` / ``_st`` split things and stuff), with ``segment_count`` (+ ``_th`` / ``_st``) pairs;
    ``num_images``, ``num_images_with_depth``. Segment keys are left out when there is no pair.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        thresholds: Sequence[float] = (0.1, 0.25, 0.5),
        min_depth: Optional[float] = None,
        max_depth: Optional[float] = None,
    ):
        meta = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._thresholds = tuple(float(t) for t in thresholds)
        self._label_divisor = int(meta.label_divisor)
        self._void_category = int(meta.ignore_label)
        self._categories, self._thing_ids = _categories_from_metadata(meta)
        self._min_depth, self._max_depth = valid_depth_range(dataset_name, min_depth, max_depth)
        self.reset()

    def reset(self):
        self._pq = PanopticQualityStats()
        self._dpq = {t: PanopticQualityStats() for t in self._thresholds}
        self._segments: List[dict] = []  # one small record per matched segment pair
        self._num_images = 0
        self._num_images_with_depth = 0

    def _segment_records(self, input_dict, matches, gt_map, gt_depth, pred_ids, segments_info, pred_depth):
        if not matches:
            return []
        gt_mean = segment_depths(gt_map, gt_depth, void_ids=(), valid=gt_depth > 0)
        info = {}
        if segments_info is not None:
            info = {int(s["id"]): s for s in segments_info if "depth" in s}
        if any(m.pred_id not in info for m in matches):
            info = segment_depths(pred_ids, pred_depth)
        records = []
        for m in matches:
            if m.gt_id not in gt_mean:  # no valid GT depth inside the GT segment
                continue
            gt_d = gt_mean[m.gt_id]["depth"]
            pred_d = float(info[m.pred_id]["depth"])
            pred_median = float(info[m.pred_id].get("depth_median", pred_d))
            records.append(
                {
                    "image_id": input_dict.get("image_id", input_dict.get("file_name")),
                    "gt_id": m.gt_id,
                    "pred_id": m.pred_id,
                    "category_id": m.category,
                    "isthing": m.category in self._thing_ids,
                    "iou": m.iou,
                    "gt_depth": gt_d,
                    "pred_depth": pred_d,
                    "pred_depth_median": pred_median,
                    "abs_rel": abs(pred_d - gt_d) / gt_d,
                    "abs_rel_median": abs(pred_median - gt_d) / gt_d,
                }
            )
        return records

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]):
        for input_dict, output in zip(inputs, outputs):
            if not has_panoptic(input_dict):
                continue
            segment_ids, gt_info = read_panoptic(input_dict)
            gt_map, crowd_ids = panoptic_gt_to_label_map(
                segment_ids, gt_info, label_divisor=self._label_divisor,
                void_category=self._void_category, thing_ids=self._thing_ids,
            )
            pred_ids, pred_info = output["panoptic_seg"]
            pred_ids = to_numpy(pred_ids, np.int64)
            if pred_ids.shape != gt_map.shape:
                raise ValueError(
                    f"Predicted panoptic map {pred_ids.shape} for {input_dict.get('file_name')} does not "
                    f"have the ground-truth size {gt_map.shape}"
                )
            if "depth" not in output:
                raise KeyError(
                    f"{self.__class__.__name__}: the model output for {input_dict.get('file_name')} has no 'depth'"
                )
            pred_depth = np.squeeze(to_numpy(output["depth"], np.float32))

            gt_depth = None
            if "depth_file_name" in input_dict:
                gt_depth = read_depth(input_dict)
                in_range = (gt_depth > self._min_depth) & (gt_depth < self._max_depth)
                gt_depth = np.where(in_range, gt_depth, 0.0).astype(np.float32)
                self._num_images_with_depth += 1

            stats = image_panoptic_depth_stats(
                pred_ids, gt_map, pred_depth, gt_depth,
                label_divisor=self._label_divisor, void_category=self._void_category,
                thresholds=self._thresholds, crowd_ids=crowd_ids,
            )
            self._num_images += 1
            self._pq += stats.pq
            for t in self._thresholds:
                self._dpq[t] += stats.dpq[t]
            if gt_depth is not None:
                self._segments.extend(
                    self._segment_records(input_dict, stats.matches, gt_map, gt_depth, pred_ids, pred_info, pred_depth)
                )

    def evaluate(self):
        state = (self._pq, self._dpq, self._segments, self._num_images, self._num_images_with_depth)
        states = [state]
        if self._distributed:
            comm.synchronize()
            states = comm.gather(state)
            if not comm.is_main_process():
                return {}
        pq = PanopticQualityStats()
        dpq = {t: PanopticQualityStats() for t in self._thresholds}
        segments, num_images, num_with_depth = [], 0, 0
        for s_pq, s_dpq, s_segments, s_num, s_num_depth in states:
            pq += s_pq
            for t in dpq:
                dpq[t] += s_dpq[t]
            segments.extend(s_segments)
            num_images += s_num
            num_with_depth += s_num_depth

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "panoptic_depth_segments.json"), "w") as f:
                json.dump(segments, f)
        if num_images == 0:
            logger.warning(f"[PanopticDepthEvaluator] {self._dataset_name}: no image with panoptic ground truth")
            return OrderedDict({"panoptic_depth": {"num_images": 0}})

        res = summarize_panoptic_depth(pq, dpq, self._categories)
        for suffix, keep in (("", lambda r: True), ("_th", lambda r: r["isthing"]), ("_st", lambda r: not r["isthing"])):
            chosen = [r for r in segments if keep(r)]
            res["segment_count" + suffix] = len(chosen)
            if chosen:
                res["segment_AbsRel" + suffix] = float(np.mean([r["abs_rel"] for r in chosen]))
                res["segment_AbsRel_median" + suffix] = float(np.mean([r["abs_rel_median"] for r in chosen]))
        res["num_images"] = num_images
        res["num_images_with_depth"] = num_with_depth
        logger.info(
            f"[PanopticDepthEvaluator] {self._dataset_name}: "
            + ", ".join(f"{k}={v:.3f}" for k, v in res.items())
        )
        return OrderedDict({"panoptic_depth": res})
