from . import datasets  # noqa: F401
from .cvat import (
    CvatFormatError,
    load_cvat_dataset,
    rasterize_cvat,
    read_cvat,
    register_cvat_dataset,
)
from .depth_io import DEPTH_FORMATS, DepthFormatError, read_depth
from .label_io import LabelFormatError, read_panoptic, read_sem_seg
from .mappers import DepthPanopticDatasetMapper

__all__ = [
    "DEPTH_FORMATS",
    "DepthFormatError",
    "LabelFormatError",
    "read_depth",
    "read_sem_seg",
    "read_panoptic",
    "DepthPanopticDatasetMapper",
    "CvatFormatError",
    "read_cvat",
    "rasterize_cvat",
    "load_cvat_dataset",
    "register_cvat_dataset",
]
