from .builtin import register_all
from .cityscapes_depth import load_cityscapes_panoptic_depth
from .generic import register_depth_panoptic_dataset
from .vkitti2 import load_vkitti2, register_vkitti2
from .vkitti2_categories import VKITTI2_CATEGORIES

__all__ = [
    "register_all",
    "register_depth_panoptic_dataset",
    "register_vkitti2",
    "load_vkitti2",
    "load_cityscapes_panoptic_depth",
    "VKITTI2_CATEGORIES",
]
