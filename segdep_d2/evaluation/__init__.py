"""Metrics (pure functions: arrays in, floats out) and the detectron2 evaluators that wrap them."""
from .depth_metrics import DEPTH_METRIC_NAMES, EVAL_CROPS, depth_metrics, eval_crop_mask
from .panoptic_depth_metrics import (
    ImagePanopticStats,
    PanopticMatch,
    PanopticQualityStats,
    depth_aware_pq,
    dpq_key,
    image_panoptic_depth_stats,
    panoptic_quality_stats,
    segment_depths,
    summarize_panoptic_depth,
)
from .depth_evaluator import DepthEvaluator
from .panoptic_depth_evaluator import PanopticDepthEvaluator, panoptic_gt_to_label_map
from .sem_seg_evaluator import LabelledSemSegEvaluator
from .open_vocab_evaluator import (
    OpenVocabEvaluator,
    VocabularyDataLoader,
    mean_iou,
    open_vocab_metrics,
    per_class_iou,
    sem_seg_confusion,
    with_vocabularies,
)
from .referring_evaluator import (
    PRECISION_THRESHOLDS,
    ReferringEvaluator,
    mask_intersection_union,
    mask_iou,
    queries_as_text,
    referring_metrics,
    with_query_texts,
)
from .temporal_stability import TemporalStabilityEvaluator, temporal_flicker, vkitti2_forward_flow_path

__all__ = [
    "DEPTH_METRIC_NAMES",
    "EVAL_CROPS",
    "depth_metrics",
    "eval_crop_mask",
    "segment_depths",
    "PanopticQualityStats",
    "PanopticMatch",
    "ImagePanopticStats",
    "panoptic_quality_stats",
    "image_panoptic_depth_stats",
    "summarize_panoptic_depth",
    "depth_aware_pq",
    "dpq_key",
    "DepthEvaluator",
    "PanopticDepthEvaluator",
    "LabelledSemSegEvaluator",
    "panoptic_gt_to_label_map",
    "sem_seg_confusion",
    "per_class_iou",
    "mean_iou",
    "open_vocab_metrics",
    "with_vocabularies",
    "VocabularyDataLoader",
    "OpenVocabEvaluator",
    "PRECISION_THRESHOLDS",
    "mask_intersection_union",
    "mask_iou",
    "referring_metrics",
    "queries_as_text",
    "with_query_texts",
    "ReferringEvaluator",
    "temporal_flicker",
    "vkitti2_forward_flow_path",
    "TemporalStabilityEvaluator",
]
