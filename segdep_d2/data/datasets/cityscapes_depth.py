"""Cityscapes panoptic (detectron2's registration) plus disparity-derived depth.

Records are exactly those of detectron2's ``cityscapes_fine_panoptic_<split>`` with
``depth_file_name`` (``disparity/<split>/<city>/*_disparity.png``, ``depth_format``
``cityscapes_disparity``) and ``camera_file_name`` (``camera/<split>/<city>/*_camera.json``) added;
the metadata carries detectron2's keys too (``panoptic_root``, ``panoptic_json``, ``gt_dir``,
``label_divisor``, thing / stuff maps, ``evaluator_type "cityscapes_panoptic_seg"``), so detectron2's
Cityscapes and COCO panoptic evaluators and its Panoptic-DeepLab mapper read these names as they
read ``cityscapes_fine_panoptic_<split>``.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES
from detectron2.data.datasets.cityscapes_panoptic import load_cityscapes_panoptic

from .metadata import depth_panoptic_metadata

CITYSCAPES_DEPTH_RANGE = (1e-3, 80.0)
# detectron2's own type for cityscapes_fine_panoptic_*: the build_evaluator of its projects
# (Panoptic-DeepLab, Mask2Former, ...) then picks its Cityscapes and COCO panoptic evaluators.
# segdep_d2's build_evaluators chooses from what records carry and does not read it.
CITYSCAPES_EVALUATOR_TYPE = "cityscapes_panoptic_seg"
_SPLITS = ("train", "val")


def cityscapes_depth_metadata():
    # detectron2's category table: dataset ids are labelIds, contiguous ids are trainIds
    return depth_panoptic_metadata(
        CITYSCAPES_CATEGORIES, depth_range=CITYSCAPES_DEPTH_RANGE,
        classes_without_depth=("sky",),  # no stereo disparity on the sky
        depth_format="cityscapes_disparity",
    )


def _sibling(image_file, folder, suffix):
    """leftImg8bit/<split>/<city>/X_leftImg8bit.png -> <folder>/<split>/<city>/X<suffix>."""
    city_dir, name = os.path.split(image_file)
    split_dir, city = os.path.split(city_dir)
    image_root, split = os.path.split(split_dir)
    root = os.path.dirname(image_root)
    return os.path.join(root, folder, split, city, name.replace("_leftImg8bit.png", suffix))


def load_cityscapes_panoptic_depth(image_dir, gt_dir, gt_json, meta):
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(
            f"Cityscapes images not found: {image_dir}. Expected <root>/cityscapes/leftImg8bit/<split>/<city>/ "
            "(see datasets/README.md)"
        )
    dicts = load_cityscapes_panoptic(image_dir, gt_dir, gt_json, meta)
    for record in dicts:
        record["depth_file_name"] = _sibling(record["file_name"], "disparity", "_disparity.png")
        record["depth_format"] = "cityscapes_disparity"
        record["camera_file_name"] = _sibling(record["file_name"], "camera", "_camera.json")
    return dicts


def register_all_cityscapes_depth(datasets_root):
    meta = cityscapes_depth_metadata()
    for split in _SPLITS:
        name = f"cityscapes_fine_panoptic_depth_{split}"
        image_dir = os.path.join(datasets_root, "cityscapes", "leftImg8bit", split)
        gt_dir = os.path.join(datasets_root, "cityscapes", "gtFine", f"cityscapes_panoptic_{split}")
        gt_json = gt_dir + ".json"
        DatasetCatalog.register(
            name, lambda x=image_dir, y=gt_dir, z=gt_json: load_cityscapes_panoptic_depth(x, y, z, meta)
        )
        MetadataCatalog.get(name).set(
            image_root=image_dir,
            panoptic_root=gt_dir,
            panoptic_json=gt_json,
            # gtFine/<split>: detectron2's CityscapesSemSegEvaluator / CityscapesInstanceEvaluator
            # glob *_gtFine_labelIds.png / *_gtFine_instanceIds.png under it
            gt_dir=os.path.join(datasets_root, "cityscapes", "gtFine", split),
            **dict(meta, evaluator_type=CITYSCAPES_EVALUATOR_TYPE),
        )
