"""detectron2 evaluator for dense metric depth: a thin wrapper around :func:`depth_metrics`."""
import logging
from collections import OrderedDict
from typing import Optional, Sequence, Union

import numpy as np
from detectron2.evaluation import DatasetEvaluator

from ..data.datasets.metadata import valid_depth_range
from ..data.depth_io import read_depth
from .arrays import gather_results, to_numpy
from .depth_metrics import DEPTH_METRIC_NAMES, depth_metrics

__all__ = ["DepthEvaluator"]

logger = logging.getLogger(__name__)


def prediction_and_ground_truth(input_dict, output, evaluator="DepthEvaluator"):
    """``(pred, gt)``: the output's ``depth`` as float32 H x W and the record's ground truth (``read_depth``),
    checked to have the same size (a model returns depth at the original image size)."""
    if "depth" not in output:
        raise KeyError(f"{evaluator}: the model output for {input_dict.get('file_name')} has no 'depth'")
    gt = read_depth(input_dict)
    pred = np.squeeze(to_numpy(output["depth"], np.float32))
    if pred.shape != gt.shape:
        raise ValueError(
            f"Predicted depth {pred.shape} for {input_dict.get('file_name')} does not have the "
            f"ground-truth size {gt.shape}; the model must return depth at the original image size"
        )
    return pred, gt


def _image_key(input_dict):
    return input_dict.get("image_id", input_dict.get("file_name"))


class DepthEvaluator(DatasetEvaluator):
    """Per-image depth metrics averaged over images (BTS / mmsegmentation convention).

    For every input with ``depth_file_name`` the ground truth is read with
    :func:`segdep_d2.data.read_depth` and compared with ``output["depth"]`` (H, W metres at the
    original image size). Inputs without depth are skipped, and so are images without any valid
    ground-truth pixel (no metric is ever NaN).

    Result: ``{"depth": {"AbsRel", "SqRel", "RMSE", "RMSE_log", "log10", "SILog", "d1", "d2",
    "d3", "num_images"}}``; ``d1..d3`` are fractions, ``SILog`` is ×100 (KITTI convention).
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        min_depth: Optional[float] = None,
        max_depth: Optional[float] = None,
        crop: Union[None, str] = None,
        median_scaling: bool = False,
    ):
        """
        Args:
            dataset_name: a registered dataset; its metadata ``depth_range`` gives the default
                valid range.
            distributed: gather the per-image results of all ranks before averaging.
            output_dir: where to write ``depth_per_image.json`` (main process only).
            min_depth, max_depth: override ``metadata.depth_range``.
            crop: None, ``"garg"``, ``"eigen"`` or ``"nyu"`` (see ``eval_crop_mask``).
            median_scaling: median-scale every prediction to its ground truth first.
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._min_depth, self._max_depth = valid_depth_range(dataset_name, min_depth, max_depth)
        self._crop = crop
        self._median_scaling = median_scaling
        self._results = []

    def reset(self):
        self._results = []

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]):
        for input_dict, output in zip(inputs, outputs):
            if "depth_file_name" not in input_dict:
                continue
            pred, gt = prediction_and_ground_truth(input_dict, output, self.__class__.__name__)
            metrics = depth_metrics(
                pred, gt, self._min_depth, self._max_depth,
                crop=self._crop, median_scaling=self._median_scaling,
            )
            if metrics is None:  # no valid ground-truth pixel in this image
                continue
            self._results.append({"image_id": _image_key(input_dict), **metrics})

    def evaluate(self):
        results = gather_results(self._results, self._distributed, self._output_dir, "depth_per_image.json")
        if results is None:  # not the main process
            return {}
        if not results:
            logger.warning(f"[DepthEvaluator] {self._dataset_name}: no image with valid ground-truth depth")
            return OrderedDict({"depth": {"num_images": 0}})
        summary = {name: float(np.mean([r[name] for r in results])) for name in DEPTH_METRIC_NAMES}
        summary["num_images"] = len(results)
        logger.info(
            f"[DepthEvaluator] {self._dataset_name} ({len(results)} images): "
            + ", ".join(f"{k}={v:.4f}" for k, v in summary.items() if k != "num_images")
        )
        return OrderedDict({"depth": summary})
