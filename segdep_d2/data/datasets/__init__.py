from .builtin import register_all
from .cityscapes_depth import load_cityscapes_panoptic_depth
from .generic import register_depth_panoptic_dataset
from .vkitti2 import load_vkitti2, register_vkitti2
from .vkitti2_categories import VKITTI2_CATEGORIES
from .vkitti2_prepared import prepare_vkitti2, register_vkitti2_panoptic, register_vkitti2_sem_seg

__all__ = [
    "register_all",
    "register_depth_panoptic_dataset",
    "register_vkitti2",
    "load_vkitti2",
    "prepare_vkitti2",
    "register_vkitti2_sem_seg",
    "register_vkitti2_panoptic",
    "load_cityscapes_panoptic_depth",
    "VKITTI2_CATEGORIES",
]
