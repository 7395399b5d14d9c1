"""segdep_d2: semantic + panoptic segmentation where every segment carries its distance in metres,
dense monocular depth, and text-driven segmentation, as a detectron2 extension.

Importing the package registers its datasets (under ``$DETECTRON2_DATASETS``), meta-architectures,
heads and backbones with detectron2's registries, once.
"""
from .config import add_segdep_config
from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers meta-archs and heads)
from .data.datasets import register_all as _register_all_datasets

_register_all_datasets()

__version__ = "0.1.0"
__all__ = ["add_segdep_config"]
