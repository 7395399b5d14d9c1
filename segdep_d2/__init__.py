"""segdep_d2: semantic + panoptic segmentation where every segment carries its distance in metres,
and dense monocular depth, as a detectron2 extension.

What exists today: the ``PanopticDepthLab``, ``HydraNet`` (MobileNetV2 backbone,
``build_mobilenetv2_backbone``) and ``SegDep`` (HRNetV2 backbone ``build_hrnet_backbone``, an open_clip
text tower, open-vocabulary and referring heads) meta-architectures; builtin Virtual KITTI 2
(depth-aware names, detectron2-standard views, referring expressions from its textgt), Cityscapes
(+ disparity), KITTI depth and semantics and NYU Depth v2 datasets; a generic registration for other
depth data; depth, depth-aware panoptic, open-vocabulary, referring and temporal-stability metrics.

Importing the package registers its datasets (under ``$DETECTRON2_DATASETS``), meta-architecture and
depth head with detectron2's registries, once.
"""
from .config import add_segdep_config
from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers meta-archs and heads)
from .data.datasets import register_all as _register_all_datasets

_register_all_datasets()

__version__ = "0.1.0"
__all__ = ["add_segdep_config"]
