from .asymmetric import keep_labels, record_tasks, register_asymmetric_split
from .builtin import register_all
from .cityscapes_depth import load_cityscapes_panoptic_depth
from .generic import register_depth_panoptic_dataset
from .nyuv2 import NYUV2_CLASSES, load_nyuv2, prepare_nyuv2, register_nyuv2
from .kitti import (
    load_kitti_depth,
    load_kitti_eigen,
    load_kitti_semantics,
    parse_eigen_split,
    prepare_kitti_semantics,
    register_kitti_depth,
    register_kitti_eigen,
    register_kitti_sem_seg,
)
from .kitti_completion import (
    load_kitti_depth_completion,
    register_all_kitti_completion,
    register_kitti_depth_completion,
)
from .sidewalk import load_sidewalk, register_all_sidewalk, register_sidewalk, sidewalk_metadata, sidewalk_split_of
from .sidewalk_categories import SIDEWALK_CLASSES, sidewalk_label_to_id
from .simulated_lidar import register_simulated_lidar
from .vkitti2 import load_vkitti2, load_vkitti2_referring, register_vkitti2, register_vkitti2_referring
from .vkitti2_categories import VKITTI2_CATEGORIES
from .vkitti2_prepared import prepare_vkitti2, register_vkitti2_panoptic, register_vkitti2_sem_seg
from .vkitti2_textgt import VKITTI2Object, VKITTI2TextGT, load_vkitti2_textgt

__all__ = [
    "register_all",
    "keep_labels",
    "record_tasks",
    "register_asymmetric_split",
    "register_depth_panoptic_dataset",
    "register_vkitti2",
    "register_simulated_lidar",
    "load_vkitti2",
    "load_vkitti2_referring",
    "register_vkitti2_referring",
    "load_vkitti2_textgt",
    "VKITTI2TextGT",
    "VKITTI2Object",
    "prepare_vkitti2",
    "register_vkitti2_sem_seg",
    "register_vkitti2_panoptic",
    "load_cityscapes_panoptic_depth",
    "load_kitti_depth",
    "load_kitti_eigen",
    "load_kitti_semantics",
    "parse_eigen_split",
    "prepare_kitti_semantics",
    "register_kitti_depth",
    "register_kitti_eigen",
    "register_kitti_sem_seg",
    "load_kitti_depth_completion",
    "register_kitti_depth_completion",
    "register_all_kitti_completion",
    "VKITTI2_CATEGORIES",
    "prepare_nyuv2",
    "register_nyuv2",
    "load_nyuv2",
    "NYUV2_CLASSES",
    "load_sidewalk",
    "register_sidewalk",
    "register_all_sidewalk",
    "sidewalk_metadata",
    "sidewalk_split_of",
    "sidewalk_label_to_id",
    "SIDEWALK_CLASSES",
]
