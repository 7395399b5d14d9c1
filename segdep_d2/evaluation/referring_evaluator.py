"""Referring segmentation + distance: mIoU, overall IoU, precision@k and the referred object's distance error.

Every query of a referring record (:func:`segdep_d2.data.datasets.vkitti2.load_vkitti2_referring`:
``queries = [{"text", "kind", "track_id", "instance_id", "target_distance"}, ...]``) names one object; its
ground-truth mask is the pixels whose value in the record's VKITTI2 ``instance_file_name`` (instancegt, trackID
+ 1) equals the query's ``instance_id``.

Definitions (per query, masks at the original image size):

* ``I``, ``U``: pixels in both / either of the predicted and ground-truth masks; ``IoU = I / U``, and 1 when
  both masks are empty (``U == 0``), so an empty prediction of a non-empty target scores 0.
* ``mIoU``: mean IoU over queries; ``oIoU`` (overall / cumulative IoU): ``sum I / sum U`` over queries.
* ``P@k``: fraction of queries with ``IoU >= k`` (k = 0.5, 0.7, 0.9; LAVT / ReSTR convention).
* distance error: ``|depth_median - target_distance|`` metres, the model's median depth over its mask against
  the target's ``camera_space_Z``; queries whose predicted depth is not finite (e.g. an empty mask) are left
  out of the distance errors and counted as ``num_without_depth``.

IoU-type metrics are percentages (as detectron2's), distance errors metres.

Pure functions: :func:`mask_intersection_union`, :func:`mask_iou`, :func:`referring_metrics`;
:class:`ReferringEvaluator` wraps them; :func:`queries_as_text` / :func:`with_query_texts` put the query
texts into the model's inputs.
"""
import logging
import math
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from PIL import Image

from ..data.label_io import _read_vkitti2_track_ids
from ..data.referring import REFERRING_KINDS
from .arrays import gather_results, to_numpy

__all__ = [
    "PRECISION_THRESHOLDS",
    "mask_intersection_union",
    "mask_iou",
    "referring_metrics",
    "queries_as_text",
    "with_query_texts",
    "ReferringEvaluator",
]

logger = logging.getLogger(__name__)

PRECISION_THRESHOLDS = (0.5, 0.7, 0.9)


# ----------------------------------------------------------------------------------------------
# Pure metrics
# ----------------------------------------------------------------------------------------------
def _binary(mask, threshold: float = 0.5) -> np.ndarray:
    mask = to_numpy(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    return mask if mask.dtype == np.bool_ else mask > threshold


def mask_intersection_union(pred, gt) -> Tuple[int, int]:
    """``(I, U)`` pixel counts of two (H, W) masks (bool, or numbers binarised at > 0.5)."""
    pred, gt = _binary(pred), _binary(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"Predicted mask {pred.shape} and ground-truth mask {gt.shape} differ in size")
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def _iou(intersection, union) -> float:
    return 1.0 if union == 0 else intersection / union


def mask_iou(pred, gt) -> float:
    """IoU of two (H, W) masks as a fraction; 1 when both are empty, 0 when only one is."""
    return _iou(*mask_intersection_union(pred, gt))


def referring_metrics(
    intersections: Sequence[float],
    unions: Sequence[float],
    ious: Optional[Sequence[float]] = None,
    distance_errors: Optional[Sequence[float]] = None,
    thresholds: Sequence[float] = PRECISION_THRESHOLDS,
) -> Dict[str, float]:
    """Referring results over queries (one entry per query in every sequence).

    Args:
        intersections, unions: per-query pixel counts.
        ious: per-query IoU fractions; default ``I / U`` (1 where ``U == 0``).
        distance_errors: per-query ``|predicted - true distance|`` metres; NaN (or any non-finite value)
            for a query without a predicted depth. None: no distance keys.
        thresholds: the ``P@k`` thresholds (fractions; a query counts when ``IoU >= k``).

    Returns ``{"mIoU", "oIoU", "P@0.5", "P@0.7", "P@0.9"}`` (percent), ``"distance_error"`` /
    ``"distance_error_median"`` (metres, mean / median over the finite errors; NaN if none),
    ``"num_without_depth"`` and ``"num_queries"``. ``oIoU`` is 100 when every union is 0 (all predictions and
    targets empty); with no query every metric is NaN.
    """
    intersections = np.asarray(intersections, dtype=np.float64).reshape(-1)
    unions = np.asarray(unions, dtype=np.float64).reshape(-1)
    n = intersections.size
    if unions.size != n:
        raise ValueError(f"{n} intersections but {unions.size} unions")
    if (intersections < 0).any() or (intersections > unions).any():
        raise ValueError("Every intersection must lie in [0, union]")
    if ious is None:
        ious = np.array([_iou(i, u) for i, u in zip(intersections, unions)], dtype=np.float64)
    else:
        ious = np.asarray(ious, dtype=np.float64).reshape(-1)
        if ious.size != n:
            raise ValueError(f"{n} intersections but {ious.size} IoUs")
    results = OrderedDict()
    if n == 0:
        results["mIoU"] = results["oIoU"] = math.nan
        for k in thresholds:
            results[f"P@{k:g}"] = math.nan
    else:
        results["mIoU"] = 100.0 * float(ious.mean())
        total_union = unions.sum()
        results["oIoU"] = 100.0 * (float(intersections.sum() / total_union) if total_union > 0 else 1.0)
        for k in thresholds:
            results[f"P@{k:g}"] = 100.0 * float(np.mean(ious >= k))
    if distance_errors is not None:
        errors = np.abs(np.asarray(distance_errors, dtype=np.float64).reshape(-1))
        if errors.size != n:
            raise ValueError(f"{n} intersections but {errors.size} distance errors")
        finite = errors[np.isfinite(errors)]
        results["distance_error"] = float(finite.mean()) if finite.size else math.nan
        results["distance_error_median"] = float(np.median(finite)) if finite.size else math.nan
        results["num_without_depth"] = int(n - finite.size)
    results["num_queries"] = int(n)
    return results


# ----------------------------------------------------------------------------------------------
# Putting the query texts into the model's inputs
# ----------------------------------------------------------------------------------------------
def queries_as_text(record: Mapping) -> List[str]:
    """The record's queries as the model takes them: ``[text, ...]`` in query order (``[]`` without
    queries). Query dicts give their ``"text"``; strings are kept."""
    return [q if isinstance(q, str) else str(q["text"]) for q in record.get("queries", None) or []]


def with_query_texts(batched_inputs: Sequence[dict]) -> List[dict]:
    """Shallow copies of the input dicts whose ``"queries"`` are :func:`queries_as_text` (inputs without
    queries are copied unchanged). The given dicts are not modified."""
    return [{**inp, "queries": queries_as_text(inp)} if "queries" in inp else dict(inp) for inp in batched_inputs]


# ----------------------------------------------------------------------------------------------
# Evaluator
# ----------------------------------------------------------------------------------------------
def _instance_ids(record) -> np.ndarray:
    """The record's VKITTI2 instancegt (trackID + 1; 0 = no vehicle) as int32 (H, W)."""
    path = record["instance_file_name"]
    if "height" in record and "width" in record:
        shape = (int(record["height"]), int(record["width"]))
    else:
        with Image.open(path) as im:
            shape = (im.size[1], im.size[0])
    return _read_vkitti2_track_ids(path, shape)


def _has_query_dicts(d) -> bool:
    queries = d.get("queries")
    return bool(queries) and all(isinstance(q, Mapping) for q in queries)


class ReferringEvaluator(DatasetEvaluator):
    """Referring segmentation and distance (result key ``"referring"``; definitions in the module doc).

    **Model contract.** An input dict carrying ``"queries": [text, ...]`` (see :func:`with_query_texts`)
    gets ``output["referring"]``: one dict per query, in query order, ``{"mask": (H, W) bool or float
    (binarised at > ``mask_threshold``), at the original image size, "score": float, "depth_median":
    float metres, "depth_mean": float metres}``.

    **Ground truth.** The dataset's records with ``queries`` (dicts with ``instance_id`` and
    ``target_distance``) and ``instance_file_name``, looked up by the input's ``file_name``; the target mask
    is ``instancegt == instance_id`` (the PNG is read once per image). An input whose record has no queries
    is skipped. Queries are matched to ``output["referring"]`` by position; when the input carries the
    query texts, they must equal the record's.

    Results::

        {"referring": {"mIoU", "oIoU", "P@0.5", "P@0.7", "P@0.9", "distance_error", "distance_error_median",
                       "num_without_depth", "num_queries", "num_images",
                       "<metric>-<kind>" for every metric and every query kind present
                       (colour_type / spatial / distance)}}
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        mask_threshold: float = 0.5,
        thresholds: Sequence[float] = PRECISION_THRESHOLDS,
    ):
        """
        Args:
            dataset_name: a registered dataset whose records carry ``queries`` (e.g. ``vkitti2_referring_val``).
            distributed: gather the per-query results of all ranks.
            output_dir: where to write ``referring_per_query.json`` (main process only).
            mask_threshold: a non-bool predicted mask is the pixels above this value.
            thresholds: the ``P@k`` IoU thresholds (fractions).
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._mask_threshold = float(mask_threshold)
        self._thresholds = tuple(float(t) for t in thresholds)
        records = DatasetCatalog.get(dataset_name)
        with_queries = [r for r in records if _has_query_dicts(r)]
        self._records = {r["file_name"]: r for r in with_queries if "instance_file_name" in r}
        if len(self._records) < len(with_queries):
            logger.warning(
                f"[ReferringEvaluator] {dataset_name}: {len(with_queries) - len(self._records)} records with "
                "queries have no 'instance_file_name' (no target masks) and are not evaluated"
            )
        if not self._records:
            raise ValueError(
                f"ReferringEvaluator: dataset {dataset_name!r} has no record with referring 'queries' and "
                "'instance_file_name' (register it with referring queries, e.g. vkitti2_referring_val)"
            )
        self.reset()

    def reset(self):
        self._results = []

    def _record(self, input_dict):
        record = self._records.get(input_dict.get("file_name"))
        if record is None and _has_query_dicts(input_dict) and "instance_file_name" in input_dict:
            record = input_dict  # not in the catalog, but the input itself carries the ground truth
        return record

    def process(self, inputs, outputs):
        for input_dict, output in zip(inputs, outputs):
            record = self._record(input_dict)
            if record is None:
                continue
            file_name = input_dict.get("file_name")
            queries = record["queries"]
            texts = queries_as_text(record)
            if "queries" in input_dict and queries_as_text(input_dict) != texts:
                raise ValueError(
                    f"ReferringEvaluator: the input's queries for {file_name} ({queries_as_text(input_dict)}) "
                    f"are not the dataset record's ({texts}) in the same order"
                )
            if "referring" not in output:
                raise KeyError(
                    f"ReferringEvaluator: the model output for {file_name} has no 'referring' (did the input "
                    "carry 'queries': [text, ...]? see with_query_texts / queries_as_text)"
                )
            predictions = output["referring"]
            if len(predictions) != len(queries):
                raise ValueError(
                    f"ReferringEvaluator: {len(predictions)} 'referring' predictions for the {len(queries)} "
                    f"queries of {file_name} (one per query, in query order)"
                )
            instances = _instance_ids(record)
            for index, (query, prediction) in enumerate(zip(queries, predictions)):
                for key in ("mask", "depth_median"):
                    if key not in prediction:
                        raise KeyError(f"ReferringEvaluator: referring[{index}] for {file_name} has no {key!r}")
                mask = _binary(prediction["mask"], self._mask_threshold)
                if mask.shape != instances.shape:
                    raise ValueError(
                        f"ReferringEvaluator: referring[{index}]['mask'] for {file_name} is {mask.shape}, the "
                        f"ground truth {instances.shape}: the model must return masks at the original image size"
                    )
                intersection, union = mask_intersection_union(mask, instances == int(query["instance_id"]))
                depth = prediction["depth_median"]
                depth = math.nan if depth is None else float(to_numpy(depth))
                target = float(query["target_distance"])
                score = prediction.get("score")
                self._results.append({
                    "image_id": record.get("image_id", file_name),
                    "query_index": index,
                    "text": str(query["text"]),
                    "kind": str(query.get("kind", "")),
                    "instance_id": int(query["instance_id"]),
                    "intersection": intersection,
                    "union": union,
                    "iou": _iou(intersection, union),
                    "depth_median": depth,
                    "target_distance": target,
                    "distance_error": abs(depth - target) if math.isfinite(depth) else math.nan,
                    "score": None if score is None else float(to_numpy(score)),
                })

    def _summary(self, results) -> Dict[str, float]:
        def metrics(rows):
            return referring_metrics(
                [r["intersection"] for r in rows], [r["union"] for r in rows], [r["iou"] for r in rows],
                [r["distance_error"] for r in rows], self._thresholds,
            )

        summary = metrics(results)
        summary["num_images"] = len({r["image_id"] for r in results})
        kinds = {r["kind"] for r in results if r["kind"]}
        for kind in [k for k in REFERRING_KINDS if k in kinds] + sorted(kinds - set(REFERRING_KINDS)):
            for key, value in metrics([r for r in results if r["kind"] == kind]).items():
                summary[f"{key}-{kind}"] = value
        return summary

    def evaluate(self):
        results = gather_results(self._results, self._distributed, self._output_dir, "referring_per_query.json")
        if results is None:  # not the main process
            return {}
        if not results:
            logger.warning(f"[ReferringEvaluator] {self._dataset_name}: no referring query was evaluated")
            return OrderedDict({"referring": {"num_queries": 0, "num_images": 0}})
        summary = self._summary(results)
        logger.info(
            f"[ReferringEvaluator] {self._dataset_name} ({summary['num_queries']} queries, "
            f"{summary['num_images']} images): "
            + ", ".join(f"{k}={v:.2f}" for k, v in summary.items() if "-" not in k and not k.startswith("num_"))
        )
        return OrderedDict({"referring": summary})
