from .depth_head import DEPTH_HEAD_REGISTRY, PanopticDepthLabDepthHead, build_depth_head
from .refinenet import CRPBlock, HydraTaskHead, LightWeightRefineNetDecoder
from .segdep_heads import OpenVocabHead, SegDepTaskHead, TextVisionFusion, TextVisionFusionLayer
from .temporal import MotionHead, TemporalFusion, warp

__all__ = [
    "DEPTH_HEAD_REGISTRY", "PanopticDepthLabDepthHead", "build_depth_head",
    "CRPBlock", "HydraTaskHead", "LightWeightRefineNetDecoder",
    "TextVisionFusion", "TextVisionFusionLayer", "SegDepTaskHead", "OpenVocabHead",
    "MotionHead", "TemporalFusion", "warp",
]
