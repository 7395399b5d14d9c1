"""Depth-aware augmentation: image, labels and depth share one random draw.

detectron2's ``T.AugInput`` / ``AugmentationList`` draws the random parameters once and returns the
resulting ``TransformList``; depth is pushed through that same list with :func:`transform_depth`.
"""
import numpy as np
from detectron2.data import transforms as T


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


def transform_depth(transforms: T.TransformList, depth: np.ndarray) -> np.ndarray:
    """Apply the image's transforms to a metric depth map.

    ``apply_segmentation`` resizes with nearest neighbour, so invalid zeros are never blended
    into valid depth; values stay in metres (scaling an image or cropping it changes no distance).
    """
    return np.ascontiguousarray(transforms.apply_segmentation(depth.astype(np.float32, copy=False)))
