"""Depth-aware augmentation: image, labels and depth share one random draw.

detectron2's ``T.AugInput`` / ``AugmentationList`` draws the random parameters once and returns the
resulting ``TransformList``; depth is pushed through that same list with :func:`transform_depth`, and
optical flow (a vector field) with :func:`transform_flow`, and a sparse depth input (points, scattered,
never resampled) with :func:`transform_sparse_depth`.
"""
from typing import Optional, Tuple

import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import BlendTransform, PadTransform, ScaleTransform


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


# Transforms that move whole pixels (or only change colours) without changing a displacement:
# a crop or pad shifts both ends of a flow vector by the same offset.
_FLOW_UNCHANGED = (T.CropTransform, PadTransform, T.NoOpTransform, T.ColorTransform, T.PILColorTransform,
                   BlendTransform)


def _flow_vector_scale(steps) -> Tuple[float, float]:
    """The (x, y) factors the transforms apply to a displacement: resizes scale it by new / old size,
    flips negate its component along the flipped axis. Each step is a diagonal linear map of the
    vector, so the composition is the product whatever the order."""
    scale_x, scale_y = 1.0, 1.0
    for t in steps:
        if isinstance(t, (T.ResizeTransform, ScaleTransform)):
            scale_x *= t.new_w / t.w
            scale_y *= t.new_h / t.h
        elif isinstance(t, T.HFlipTransform):
            scale_x = -scale_x
        elif isinstance(t, T.VFlipTransform):
            scale_y = -scale_y
        elif not isinstance(t, _FLOW_UNCHANGED):
            # a rotation or an extent warp changes vectors in ways a per-axis factor cannot express
            raise NotImplementedError(f"transform_flow: no vector rule for {type(t).__name__} ({t})")
    return scale_x, scale_y


def transform_flow(
    transforms: T.Transform, flow: np.ndarray, valid: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Apply the image's transforms to an optical flow field (H, W, 2) in pixels (+ validity (H, W)).

    A flow field is a vector per pixel, so two things happen:

    * the pixels move exactly as the labels' (each component and the validity go through
      :func:`transform_depth`: nearest neighbour, bit-exact values, padding 0 = invalid);
    * the vectors change with the geometry: a resize scales x by ``new_w / w`` and y by ``new_h / h``,
      a horizontal flip negates x, a vertical flip negates y; crops and pads change no vector.

    Args:
        flow: (H, W, 2) float, ``[..., 0]`` horizontal (right), ``[..., 1]`` vertical (down), as
            :func:`segdep_d2.data.flow_io.read_vkitti2_flow` returns it.
        valid: (H, W) bool; default: where the flow is finite.

    Returns:
        ``(flow (H', W', 2) float32, 0 where invalid; valid (H', W') bool)``.
    """
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"expected an H x W x 2 flow field, got shape {flow.shape}")
    valid = np.isfinite(flow).all(-1) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != flow.shape[:2]:
        raise ValueError(f"flow validity {valid.shape} does not match the flow {flow.shape[:2]}")
    steps = transforms.transforms if isinstance(transforms, T.TransformList) else [transforms]
    scale_x, scale_y = _flow_vector_scale(steps)
    flow_x = transform_depth(transforms, flow[..., 0])
    flow_y = transform_depth(transforms, flow[..., 1])
    # validity as float32 1 / 0 through the same path: padding fills 0, i.e. invalid
    out_valid = transform_depth(transforms, valid.astype(np.float32)) > 0.5
    out = np.stack([flow_x * np.float32(scale_x), flow_y * np.float32(scale_y)], axis=-1)
    out[~out_valid] = 0.0
    return out, out_valid


# Transforms whose output has the input's size.
_SAME_SIZE = (T.HFlipTransform, T.VFlipTransform, T.NoOpTransform, T.ColorTransform, T.PILColorTransform,
              BlendTransform)


def _output_shape(step: T.Transform, shape: Tuple[int, int]) -> Tuple[int, int]:
    """(H, W) of what ``step`` makes of an (H, W) image: read off the transforms of this pipeline, else
    measured on a uint8 dummy through its segmentation path (the size the labels get)."""
    if isinstance(step, (T.ResizeTransform, ScaleTransform)):
        return int(step.new_h), int(step.new_w)
    if isinstance(step, T.CropTransform):
        return int(step.h), int(step.w)
    if isinstance(step, PadTransform):
        return int(shape[0] + step.y0 + step.y1), int(shape[1] + step.x0 + step.x1)
    if isinstance(step, _SAME_SIZE):
        return tuple(shape)
    return tuple(step.apply_segmentation(np.zeros(shape, np.uint8)).shape[:2])


def transform_sparse_depth(
    transforms: T.Transform, sparse: np.ndarray, output_shape: Optional[Tuple[int, int]] = None
) -> np.ndarray:
    """Apply the image's transforms to a sparse depth *input* (LiDAR points projected into the image,
    or points sampled from the dense ground truth): the points are scattered, never resampled.

    Each point (every pixel ``> 0``) is taken at its pixel centre ``(c + 0.5, r + 0.5)``, moved through
    the transforms' ``apply_coords`` (the continuous geometry the image follows: a resize scales, a crop
    or pad shifts, a flip mirrors), and lands on the output pixel that contains it
    (``floor`` of the new coordinates). Points that leave the image (crop) are dropped; where several
    points land on one pixel (downscaling) the nearer one (the smallest depth) is kept, as a
    projection keeps the first surface it hits. A point keeps its value exactly (metres: scaling or
    cropping an image changes no distance), and each input point gives at most one output point, so
    upscaling never multiplies points and padding adds none (0 = no point).

    Why not :func:`transform_depth`: a dense *target* is resampled nearest-neighbour, every output pixel
    copies some source pixel. Done to a sparse map, that would duplicate each point over a block when
    upscaling (inventing measurements the sensor never made, at wrong positions) and, when
    downscaling, keep a point only if it happens to sit on a sampled pixel (losing most of them).
    A completion model must see the sensor's points, the same number, where they are.

    Args:
        transforms: the image's ``Transform`` / ``TransformList`` (one augmentation draw).
        sparse: (H, W) metres, 0 = no point.
        output_shape: (H', W') the transforms give (the augmented image's size); computed when omitted.

    Returns:
        float32 (H', W') metres, 0 = no point, C-contiguous and writeable.
    """
    sparse = np.asarray(sparse, dtype=np.float32)
    if sparse.ndim != 2:
        raise ValueError(f"expected an H x W sparse depth map, got shape {sparse.shape}")
    steps = transforms.transforms if isinstance(transforms, T.TransformList) else [transforms]
    if output_shape is None:
        output_shape = tuple(sparse.shape)
        for t in steps:
            output_shape = _output_shape(t, output_shape)
    height, width = (int(s) for s in output_shape)
    out = np.zeros((height, width), np.float32)
    rows, cols = np.nonzero(sparse > 0)
    if len(rows) == 0:
        return out
    values = sparse[rows, cols]
    coords = np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float64)  # (x, y) pixel centres
    for t in steps:
        coords = np.asarray(t.apply_coords(coords), dtype=np.float64)
    x = np.floor(coords[:, 0])
    y = np.floor(coords[:, 1])
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    x, y, values = x[inside].astype(np.int64), y[inside].astype(np.int64), values[inside]
    nearest = np.full(height * width, np.inf, np.float32)
    np.minimum.at(nearest, y * width + x, values)  # collisions: the nearer point wins
    hit = np.isfinite(nearest)
    out.flat[np.flatnonzero(hit)] = nearest[hit]
    return out
