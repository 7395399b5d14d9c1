"""The one place where semantic and panoptic ground truth are decoded from disk.

These layouts exist:

* detectron2's standard: ``sem_seg_file_name`` is a single-channel PNG of contiguous ids and
  ``pan_seg_file_name`` an RGB PNG (id = R + 256 G + 256^2 B) described by ``segments_info``
  (Cityscapes, COCO, anything registered through ``register_depth_panoptic_dataset``).
* ``label_format == "vkitti2"``: Virtual KITTI 2's own files, a colour ``classgt`` PNG decoded
  through ``colors.txt`` and a palette ``instancegt`` PNG holding trackID + 1.
* ``label_format == "cityscapes_label_ids"``: a single-channel PNG of Cityscapes *label ids*
  (``*_gtFine_labelIds.png``, KITTI ``data_semantics/.../semantic/*.png``), mapped to the 19 train
  ids (255 = ignore) through cityscapesscripts' label table. detectron2's stock readers would take
  these ids for classes: registered datasets hand out prepared trainId PNGs instead (see
  ``datasets/kitti.py``); this case is what the preparation reads with.
* ``label_format == "cvat"``: a CVAT for-images 1.1 XML (``sem_seg_file_name``, shared by every
  image of the XML) whose polygons for the image ``cvat_image_name`` are rasterised through
  ``cvat_label_to_id`` (and ``cvat_attribute_to_id``) by :func:`segdep_d2.data.cvat.rasterize_cvat`
  (the Korean sidewalk dataset, ``datasets/sidewalk.py``).

``read_sem_seg`` and ``read_panoptic`` give both the same shape, so mappers and evaluators never
care which one a dataset uses.
"""
import os
from functools import lru_cache

import numpy as np
from PIL import Image
from panopticapi.utils import rgb2id

from .cvat import rasterize_cvat
from .datasets.vkitti2_categories import (
    VKITTI2_CATEGORIES,
    VKITTI2_IGNORE_LABEL,
    VKITTI2_LABEL_DIVISOR,
    VKITTI2_VOID_COLOR,
)

__all__ = [
    "LabelFormatError",
    "has_panoptic",
    "read_sem_seg",
    "read_panoptic",
    "read_vkitti2_colors",
    "cityscapes_label_id_to_train_id",
]


class LabelFormatError(ValueError):
    """A label file does not hold what its dataset promises."""


def has_panoptic(dataset_dict) -> bool:
    return "pan_seg_file_name" in dataset_dict or (
        dataset_dict.get("label_format") == "vkitti2" and "instance_file_name" in dataset_dict
    )


def _open(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    return Image.open(path)


@lru_cache(maxsize=256)
def read_vkitti2_colors(path: str):
    """``colors.txt`` -> {(r, g, b): trainId}, checked against the known VKITTI2 class table."""
    known = {c["name"]: (tuple(c["color"]), c["trainId"]) for c in VKITTI2_CATEGORIES}
    color_to_train_id = {VKITTI2_VOID_COLOR: VKITTI2_IGNORE_LABEL}
    with open(path) as f:
        lines = [line.split() for line in f if line.strip()]
    if not lines or lines[0][:1] != ["Category"]:
        raise LabelFormatError(f"{path}: expected a 'Category r g b' header")
    for fields in lines[1:]:
        if len(fields) != 4:
            raise LabelFormatError(f"{path}: malformed line {' '.join(fields)!r}")
        name, rgb = fields[0], tuple(int(v) for v in fields[1:])
        if name == "Undefined":
            continue
        if name not in known:
            raise LabelFormatError(f"{path}: unknown class {name!r}")
        if known[name][0] != rgb:
            raise LabelFormatError(f"{path}: {name} has colour {rgb}, expected {known[name][0]}")
        color_to_train_id[rgb] = known[name][1]
    return color_to_train_id


def _decode_vkitti2_classgt(path: str, colors_path: str) -> np.ndarray:
    color_to_train_id = read_vkitti2_colors(colors_path)
    with _open(path, "classSegmentation") as im:
        if im.mode != "RGB":
            raise LabelFormatError(f"{path}: expected an RGB classgt PNG, got mode {im.mode}")
        rgb = np.asarray(im, dtype=np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in color_to_train_id], dtype=np.uint32)
    values = np.array(list(color_to_train_id.values()), dtype=np.uint8)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
    unknown = keys[pos] != packed
    if unknown.any():
        y, x = np.argwhere(unknown)[0]
        raise LabelFormatError(
            f"{path}: colour {tuple(int(c) for c in rgb[y, x])} at (x={x}, y={y}) is not in "
            f"{colors_path} ({int(unknown.sum())} pixels with unknown colours)"
        )
    return values[pos]


def _read_vkitti2_track_ids(path: str, shape) -> np.ndarray:
    with _open(path, "instanceSegmentation") as im:
        if im.mode not in ("P", "L"):
            raise LabelFormatError(f"{path}: expected a palette PNG of trackID + 1, got mode {im.mode}")
        values = np.asarray(im, dtype=np.int32)
    if values.shape != shape:
        raise LabelFormatError(f"{path}: size {values.shape} differs from classgt {shape}")
    return values  # trackID + 1, 0 = no vehicle


@lru_cache(maxsize=1)
def cityscapes_label_id_to_train_id() -> np.ndarray:
    """(256,) uint8 lookup table label id -> train id from cityscapesscripts' ``labels``; 255 where
    the label is ignored in training (trainId 255 or -1) or where no label has that id."""
    from cityscapesscripts.helpers.labels import labels  # only Cityscapes-id datasets need it

    lut = np.full(256, 255, dtype=np.uint8)
    for label in labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < 255:
            lut[label.id] = label.trainId
    lut.flags.writeable = False
    return lut


def _decode_cityscapes_label_ids(path: str) -> np.ndarray:
    with _open(path, "Cityscapes label-id") as im:
        if im.mode not in ("L", "P"):
            raise LabelFormatError(
                f"{path}: expected an 8-bit single-channel PNG of Cityscapes label ids, got mode {im.mode}"
                + (" (an instance PNG? those hold labelId * 256 + instance)" if im.mode.startswith("I") else "")
            )
        label_ids = np.asarray(im, dtype=np.uint8)
    return cityscapes_label_id_to_train_id()[label_ids]


def read_sem_seg(dataset_dict) -> np.ndarray:
    """Contiguous class ids (uint8, H x W), ``ignore_label`` (255) where void."""
    path = dataset_dict["sem_seg_file_name"]
    label_format = dataset_dict.get("label_format")
    if label_format == "vkitti2":
        return _decode_vkitti2_classgt(path, dataset_dict["colors_file_name"])
    if label_format == "cityscapes_label_ids":
        return _decode_cityscapes_label_ids(path)
    if label_format == "cvat":
        return rasterize_cvat(
            path, dataset_dict["cvat_image_name"], dataset_dict["cvat_label_to_id"],
            attribute_to_id=dataset_dict.get("cvat_attribute_to_id"),
        )
    with _open(path, "Semantic label") as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise LabelFormatError(f"{path}: expected a single-channel label PNG, got mode {im.mode}")
        labels, mode = np.asarray(im), im.mode
    if labels.dtype != np.uint8:
        # 16-/32-bit PNGs ("I;16", "I") are fine while every value fits; a plain cast would wrap
        # 256 to 0 etc. silently.
        low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
        if low < 0 or high > 255:
            raise LabelFormatError(
                f"{path}: label values range from {low} to maximum {high} (mode {mode}, "
                f"{labels.dtype}); semantic labels must be contiguous class ids < 256 with "
                f"ignore 255"
            )
        labels = labels.astype(np.uint8)
    return labels


def read_panoptic(dataset_dict):
    """Panoptic ground truth as ``(segment_ids, segments_info)``.

    ``segment_ids`` is int32 H x W; every id other than 0 that is labelled appears in
    ``segments_info`` as ``{"id", "category_id" (contiguous), "iscrowd", "area", ...}``;
    pixels whose id has no entry (0 in particular) are void.
    """
    if dataset_dict.get("label_format") == "vkitti2":
        return _read_vkitti2_panoptic(dataset_dict)
    path = dataset_dict["pan_seg_file_name"]
    with _open(path, "Panoptic") as im:
        if im.mode != "RGB":
            raise LabelFormatError(f"{path}: expected an RGB panoptic PNG, got mode {im.mode}")
        ids = rgb2id(np.asarray(im)).astype(np.int32)
    return ids, dataset_dict["segments_info"]


def _read_vkitti2_panoptic(dataset_dict):
    category = _decode_vkitti2_classgt(
        dataset_dict["sem_seg_file_name"], dataset_dict["colors_file_name"]
    ).astype(np.int32)
    track = _read_vkitti2_track_ids(dataset_dict["instance_file_name"], category.shape)
    isthing = np.zeros(256, dtype=bool)
    isthing[[c["trainId"] for c in VKITTI2_CATEGORIES if c["isthing"]]] = True

    # Segment id = dataset category id (trainId + 1) * divisor + (trackID + 1 for things).
    # A thing pixel without a track id becomes a crowd region of its class.
    thing_pixel = isthing[category]
    ids = (category + 1) * VKITTI2_LABEL_DIVISOR + np.where(thing_pixel, track, 0)
    ids[category == VKITTI2_IGNORE_LABEL] = 0

    unique, areas = np.unique(ids, return_counts=True)
    segments_info = []
    for seg_id, area in zip(unique.tolist(), areas.tolist()):
        if seg_id == 0:
            continue
        train_id = seg_id // VKITTI2_LABEL_DIVISOR - 1
        thing = bool(isthing[train_id])
        segments_info.append(
            {
                "id": seg_id,
                "category_id": train_id,
                "isthing": thing,
                "iscrowd": int(thing and seg_id % VKITTI2_LABEL_DIVISOR == 0),
                "area": area,
            }
        )
    return ids, segments_info
