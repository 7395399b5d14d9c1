"""Asymmetric annotations: views of a dataset whose records keep only some of their labels.

HydraNet (Nekrasov et al., ICRA 2019) trains on images that carry only segmentation, only depth or
both; a dataset with one label type per image is what the pseudo-label teacher completes. With a
fully labelled dataset, this module makes such data on purpose (experiments on asymmetric
annotations, tests)::

    records = DatasetCatalog.get("vkitti2_train")
    register_asymmetric_split("vkitti2_train_seg_only", records[0::2], ("sem_seg",))
    register_asymmetric_split("vkitti2_train_depth_only", records[1::2], ("depth",),
                              metadata=MetadataCatalog.get("vkitti2_train").as_dict())

A record that lacks a label type simply lacks its keys (DESIGN.md §2), so the shared mapper gives
the model no target for it and HydraNet's loss for that task skips the image.
"""
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..label_io import has_panoptic

__all__ = ["LABEL_TASKS", "LABEL_KEYS", "record_tasks", "keep_labels", "register_asymmetric_split"]

LABEL_TASKS = ("sem_seg", "depth")
# The record keys that make up each task's label. Segmentation: the semantic PNG with its decoding
# (label_format / colors_file_name: VKITTI2's colour PNGs; cvat_*: the image and class maps of a
# CVAT XML) and the panoptic / instance labels, which also give a semantic target (the mapper reads
# them when there is no sem_seg PNG). Depth: the map, its encoding and what decoding it needs beyond
# the camera (a ZED confidence map, the disparity scale). camera_file_name and intrinsics stay: they
# describe the image, not a label.
LABEL_KEYS = {
    "sem_seg": ("sem_seg_file_name", "label_format", "colors_file_name", "instance_file_name",
                "pan_seg_file_name", "segments_info",
                "cvat_image_name", "cvat_label_to_id", "cvat_attribute_to_id"),
    "depth": ("depth_file_name", "depth_format", "confidence_file_name", "disparity_scale"),
}


def _check_tasks(tasks):
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    unknown = [t for t in tasks if t not in LABEL_TASKS]
    if unknown:
        raise ValueError(f"unknown label task(s) {unknown}; expected a subset of {LABEL_TASKS}")
    return tasks


def record_tasks(record):
    """The label tasks a record carries, in :data:`LABEL_TASKS` order (segmentation counts when
    the record has a semantic or a panoptic label: the mapper makes the semantic target from either)."""
    has = {
        "sem_seg": "sem_seg_file_name" in record or has_panoptic(record),
        "depth": "depth_file_name" in record,
    }
    return tuple(t for t in LABEL_TASKS if has[t])


def keep_labels(records, tasks):
    """Copies of ``records`` that keep only the labels of ``tasks`` (``"sem_seg"``, ``"depth"``, a
    list of them, or an empty list for images without labels); the inputs are not modified.

    Each copy is shallow apart from ``pseudo_labels`` (the list the pseudo-label tool adds), which
    keeps only the tasks still present.
    """
    tasks = _check_tasks(tasks)
    dropped = {key for task in LABEL_TASKS if task not in tasks for key in LABEL_KEYS[task]}
    kept = []
    for record in records:
        copy = {k: v for k, v in record.items() if k not in dropped}
        if "pseudo_labels" in copy:
            copy["pseudo_labels"] = [t for t in copy["pseudo_labels"] if t in tasks]
        kept.append(copy)
    return kept


def register_asymmetric_split(name, records, tasks, metadata=None):
    """Register ``keep_labels(records, tasks)`` under ``name`` in DatasetCatalog, with ``metadata``
    (a dict, e.g. the source dataset's ``MetadataCatalog.get(src).as_dict()`` or
    ``vkitti2_metadata()``) plus ``label_tasks`` in MetadataCatalog. A name registered before is
    replaced (re-running an experiment in one process). Returns ``name``."""
    tasks = _check_tasks(tasks)
    view = keep_labels(records, tasks)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    # each DatasetCatalog.get returns fresh dicts: the mapper and loaders may modify them
    DatasetCatalog.register(name, lambda: [dict(r) for r in view])
    meta = {k: v for k, v in (metadata or {}).items() if k != "name"}
    MetadataCatalog.get(name).set(**meta, label_tasks=tasks)
    return name
