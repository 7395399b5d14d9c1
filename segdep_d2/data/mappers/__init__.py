from .depth_panoptic_mapper import DepthPanopticDatasetMapper

__all__ = ["DepthPanopticDatasetMapper"]
