"""Depth-aware augmentation: image, labels and depth share one random draw.

detectron2's ``T.AugInput`` / ``AugmentationList`` draws the random parameters once and returns the
resulting ``TransformList``; depth is pushed through that same list with :func:`transform_depth`.
"""
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import PadTransform


def build_augmentations(cfg, is_train):
    """Resize (random scale in training), optional crop and random flip, as Panoptic-DeepLab."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
    augs = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    augs.append(T.RandomFlip())
    return augs


def transform_depth(transforms: T.Transform, depth: np.ndarray) -> np.ndarray:
    """Apply the image's transforms to a metric depth map, sampling exactly the labels' pixels.

    Why bytes: detectron2's ``ResizeTransform`` resizes uint8 arrays with PIL (pixel centres) but
    float arrays with ``F.interpolate(mode="nearest")`` (source pixel ``floor(dst * scale)``), so
    float depth would land up to a source pixel away from the image and the uint8 labels. Each
    float32 is therefore viewed as 4 uint8 bytes (H x W x 4) and goes through the very same
    ``apply_segmentation`` path as the labels; nearest neighbour moves whole pixels, i.e. all 4
    bytes together, so values come back bit-exact (no blend of invalid zeros, still metres:
    scaling or cropping an image changes no distance). Padding fills 0 (invalid), never the
    label pad value.
    """
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"expected an H x W depth map, got shape {depth.shape}")
    height, width = depth.shape
    as_bytes = depth.view(np.uint8).reshape(height, width, 4)
    steps = transforms.transforms if isinstance(transforms, T.TransformList) else [transforms]
    for t in steps:
        if isinstance(t, PadTransform):
            zero_pad = PadTransform(t.x0, t.y0, t.x1, t.y1, seg_pad_value=0)
            as_bytes = zero_pad.apply_segmentation(as_bytes)
        else:
            as_bytes = t.apply_segmentation(as_bytes)
    as_bytes = np.ascontiguousarray(as_bytes, dtype=np.uint8)
    if not as_bytes.flags.writeable:  # PIL hands back a read-only buffer
        as_bytes = as_bytes.copy()
    if as_bytes.ndim != 3 or as_bytes.shape[2] != 4:
        raise ValueError(f"{transforms} changed the depth byte layout to {as_bytes.shape}")
    return as_bytes.view(np.float32)[..., 0]
