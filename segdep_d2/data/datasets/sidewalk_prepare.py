"""What ``datasets/prepare_sidewalk.py`` computes on the Korean sidewalk release, beside the data:

* **class weights** (``class_weights.json``): the pixel count of each of the 24 classes over the training
  frames with segmentation (Surface + Polygon), turned into weights by the SafeTrip-Q rule (inverse square
  root of the frequency, mean 1; :mod:`segdep_d2.data.class_weights`); the HydraNet config reads the file
  through ``MODEL.HYDRANET.CLASS_WEIGHTS_FILE``.
* **a disparity-scale check** (``disparity_scale_check.json``): the ZED ``disp16`` files store disparity
  times a scale the release does not document. Block matching of each Depth folder's rectified left / right
  pair measures it (:func:`segdep_d2.data.stereo.estimate_disparity_scale_from_files`), so a user can see that
  it agrees with the scale the dataset is read with (``disparity_scale``, default 100) before training on
  depths off by a constant factor (the seed's converter divided by 256 and got 0.64x the true depths).
"""
import collections
import logging
import os
import time

import numpy as np

from ...utils.files import json_writer, replace_into
from ..class_weights import write_class_weights
from ..label_io import read_sem_seg
from .sidewalk import load_sidewalk
from .sidewalk_categories import SIDEWALK_CLASSES, SIDEWALK_IGNORE_LABEL

__all__ = [
    "CLASS_WEIGHTS_NAME",
    "SCALE_CHECK_NAME",
    "class_pixel_counts",
    "stereo_pair_files",
    "check_disparity_scale",
    "prepare_sidewalk",
]

logger = logging.getLogger(__name__)

CLASS_WEIGHTS_NAME = "class_weights.json"
SCALE_CHECK_NAME = "disparity_scale_check.json"
# A measured scale further than this from the one the dataset is read with is reported as a mismatch.
SCALE_TOLERANCE = 0.05


def _progress(iterable, enabled, **kwargs):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)


def class_pixel_counts(records, num_classes=len(SIDEWALK_CLASSES), progress=True):
    """(num_classes,) int64 pixel counts of every class over the records' semantic labels (ignore and
    other values outside the classes are not counted)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for record in _progress(records, progress, desc="class pixels", unit="frame"):
        labels = read_sem_seg(record)
        counts += np.bincount(labels[labels != SIDEWALK_IGNORE_LABEL].ravel(), minlength=256)[:num_classes]
    return counts


def stereo_pair_files(record):
    """``(left, right)`` rectified images of a Depth record: the band crops ``*_left.png`` / ``*_right.png``
    when both exist, else the full frames ``*_L.png`` / ``*_R.png``; None when there is no right image."""
    image = record["file_name"]
    stem = image[: -len("_L.png")] if image.endswith("_L.png") else image[: -len("_left.png")]
    for left, right in ((f"{stem}_left.png", f"{stem}_right.png"), (f"{stem}_L.png", f"{stem}_R.png")):
        if os.path.isfile(left) and os.path.isfile(right):
            return left, right
    return None


def check_disparity_scale(records, expected_scale, pairs_per_folder=2, progress=True):
    """Measure the disp16 scale of every Depth folder from up to ``pairs_per_folder`` stereo pairs.

    Returns ``{"expected_scale", "folders": {folder: {"scale", "iqr", "pairs", "num_pixels"}}, "scale"
    (median over folders), "agrees" (every folder within 5 % of ``expected_scale``), "skipped": [...]}``.
    """
    from ..stereo import estimate_disparity_scale_from_files

    by_folder = collections.defaultdict(list)
    for record in records:
        by_folder[os.path.dirname(record["file_name"])].append(record)
    folders, skipped = {}, []
    for folder in _progress(sorted(by_folder), progress, desc="disparity scale", unit="folder"):
        estimates = []
        for record in by_folder[folder]:
            pair = stereo_pair_files(record)
            if pair is None:
                continue
            try:
                estimates.append(
                    estimate_disparity_scale_from_files(
                        pair[0], pair[1], record["depth_file_name"], record.get("confidence_file_name")
                    )
                )
            except ValueError as e:  # too little texture to match: try the folder's next pair
                logger.info(f"{pair[0]}: {e}")
            if len(estimates) == pairs_per_folder:
                break
        if not estimates:
            skipped.append(folder)
            continue
        scales = [e["scale"] for e in estimates]
        folders[os.path.basename(folder)] = {
            "scale": float(np.median(scales)),
            "pair_scales": scales,
            # a wide spread means the matches are noise (e.g. left and right swapped), whatever the median
            "pair_iqrs": [list(e["iqr"]) for e in estimates],
            "num_pixels": int(sum(e["num_pixels"] for e in estimates)),
        }
    measured = [f["scale"] for f in folders.values()]
    return {
        "expected_scale": float(expected_scale),
        "scale": float(np.median(measured)) if measured else None,
        "agrees": bool(measured) and all(abs(s / expected_scale - 1) <= SCALE_TOLERANCE for s in measured),
        "tolerance": SCALE_TOLERANCE,
        "folders": folders,
        "skipped": skipped,
    }


def prepare_sidewalk(root, disparity_scale=100.0, check_scale=False, pairs_per_folder=2, progress=True):
    """Write ``class_weights.json`` (and with ``check_scale`` ``disparity_scale_check.json``) into ``root``
    (``$DETECTRON2_DATASETS/sidewalk``). Returns a summary dict."""
    start = time.perf_counter()
    records = [r for task in ("surface", "polygon") for r in load_sidewalk(root, task, "train")]
    counts = class_pixel_counts(records, progress=progress)
    weights_path = os.path.join(root, CLASS_WEIGHTS_NAME)
    weights = write_class_weights(
        weights_path, SIDEWALK_CLASSES, counts, source="sidewalk_surface_train + sidewalk_polygon_train",
        num_images=len(records),
    )
    summary = {
        "root": root,
        "class_weights": weights_path,
        "num_images": len(records),
        "pixel_counts": dict(zip(SIDEWALK_CLASSES, counts.tolist())),
        "weights": dict(zip(SIDEWALK_CLASSES, weights.tolist())),
    }
    if check_scale:
        depth_records = [r for split in ("train", "val") for r in load_sidewalk(root, "depth", split, disparity_scale)]
        check = check_disparity_scale(depth_records, disparity_scale, pairs_per_folder, progress)
        check_path = os.path.join(root, SCALE_CHECK_NAME)
        replace_into(check_path, json_writer(check, indent=1))
        summary.update(disparity_scale_check=check, disparity_scale_check_file=check_path)
    summary["seconds"] = time.perf_counter() - start
    return summary
