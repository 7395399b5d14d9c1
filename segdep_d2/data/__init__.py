from . import datasets  # noqa: F401
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
]
