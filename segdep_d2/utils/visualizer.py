"""Depth-aware visualisation: depth colour maps and panoptic overlays labelled "class 12.3 m".

Colour conventions (those of the Panoptic-DepthLab figures):

* **Thing segments** are filled with their *distance colour* (:func:`distance_color`): near red ->
  green -> far blue, continuous in hue and **linear in metres** between ``near`` and ``far``, so
  that "twice as far" reads as "twice as far along red -> blue" for the objects a driver cares
  about. Stuff keeps the dataset's colours, so road / sky / building stay recognisable.
* **Dense depth** (:func:`colorize_depth`) is **log-scaled**: a dense map spans two decades (a
  kerb at 1 m, a facade at 80 m) and a linear map would spend most colours on the far range.
  The default colour map ``turbo_r`` reads like the distance colours (near red, far blue) and,
  unlike ``magma_r``, has no black end, so black is free to mean "no depth".
* **Invalid depth** (0, negative, NaN, inf) is black in every depth and error image.

All images are RGB ``uint8`` H x W x 3 arrays. Colour bars are rendered with matplotlib's Agg
canvas (no pyplot, no display, thread-safe).
"""
import functools
import math

import cv2
import matplotlib
import numpy as np
import torch
from detectron2.utils.colormap import random_color
from detectron2.utils.visualizer import _LARGE_MASK_AREA_THRESH, ColorMode, Visualizer
from matplotlib import colors as mplc
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colorbar import ColorbarBase
from matplotlib.figure import Figure

__all__ = [
    "DepthPanopticVisualizer",
    "abs_rel_error",
    "colorbar_image",
    "colorize_depth",
    "colorize_scalar",
    "confidence_panel",
    "depth_panel",
    "display_depth_range",
    "distance_color",
    "draw_sparse_points",
    "error_panel",
    "points_radius",
    "region_distance",
    "segment_distance",
    "segment_label",
    "side_by_side",
]

DEPTH_CMAP = "turbo_r"
SEGMENT_EDGE_COLOR = (1.0, 1.0, 240.0 / 255)  # detectron2's off-white panoptic edges
ERROR_CMAP = "RdYlGn_r"  # 0 error green, large error red; its ends are not black
CONFIDENCE_CMAP = "viridis"  # 0 (unsure) dark blue .. 1 (sure) yellow
_INVALID_RGB = (0, 0, 0)


# ---------------------------------------------------------------------------------------------
# Colours
# ---------------------------------------------------------------------------------------------
def segment_label(class_name, depth):
    """The text drawn on a segment: ``"car 12.3 m"``; just the class when depth is unknown."""
    if depth is None or not math.isfinite(float(depth)):
        return str(class_name)
    return f"{class_name} {float(depth):.1f} m"


def segment_distance(sinfo):
    """A segment's distance to show: its ``depth``, or None when it has none or is flagged
    ``depth_valid: False`` (sky, or a median outside the dataset's valid range)."""
    if not sinfo.get("depth_valid", True):
        return None
    return sinfo.get("depth")


def _segment_masks(panoptic_seg, segments_info):
    """``(mask, sinfo)`` of every listed segment present in ``panoptic_seg``, largest first (the
    order detectron2's panoptic drawing uses), and the mask of pixels that belong to one."""
    ids, areas = torch.unique(panoptic_seg, return_counts=True)
    by_id = {int(s["id"]): s for s in segments_info}
    order = torch.argsort(areas, descending=True, stable=True)
    segments = [(panoptic_seg == ids[i], by_id[int(ids[i])]) for i in order.tolist() if int(ids[i]) in by_id]
    labelled = torch.zeros_like(panoptic_seg, dtype=torch.bool)
    for mask, _ in segments:
        labelled |= mask
    return [(m.numpy(), s) for m, s in segments], labelled.numpy()


def _labelled_regions(mask):
    """The connected regions of a class mask that carry its label, by detectron2's rule
    (``Visualizer._draw_text_in_mask``): the largest one, and any other very large one."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return []
    largest = int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) + 1
    return [
        components == i
        for i in range(1, count)
        if i == largest or stats[i, cv2.CC_STAT_AREA] > _LARGE_MASK_AREA_THRESH
    ]


def region_distance(depth, region, min_depth=0.0, max_depth=float("inf")):
    """Median predicted depth (metres) of a pixel region, or None when it lies outside
    ``(min_depth, max_depth)`` (the dataset's valid range: a guess where no GT ever was)."""
    values = np.asarray(depth)[region]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    median = float(np.median(values))
    return median if min_depth < median < max_depth else None


def display_depth_range(metadata=None, default=(1.0, 80.0)):
    """(min, max) metres for depth colours, from the dataset's ``depth_range``.

    The valid-GT range usually starts at 1 mm; on a log scale that would spend most colours below
    1 m where no pixel lives, so the display range spans at most two decades below the maximum.
    """
    lo, hi = default
    if metadata is not None and metadata.get("depth_range", None) is not None:
        lo, hi = (float(v) for v in metadata.depth_range)
    return max(lo, hi / 100.0), hi


def _normalize(values, vmin, vmax, log):
    """Map values to [0, 1] (clipped), linearly or in log space."""
    values = np.asarray(values, dtype=np.float64)
    if log:
        if not 0 < vmin < vmax:
            raise ValueError(f"log scale needs 0 < vmin < vmax, got ({vmin}, {vmax})")
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (np.log(values) - math.log(vmin)) / (math.log(vmax) - math.log(vmin))
    else:
        if not vmin < vmax:
            raise ValueError(f"need vmin < vmax, got ({vmin}, {vmax})")
        t = (values - vmin) / (vmax - vmin)
    return np.clip(t, 0.0, 1.0)


def distance_color(depth_m, near, far):
    """Distance colour of the Panoptic-DepthLab figures: near red -> green -> far blue.

    Hue goes continuously from 0 (red) at ``near`` through 1/3 (green) half-way to 2/3 (blue) at
    ``far``, linear in metres, at full saturation and value (so every colour is bright enough to
    see through a mask overlay). Depths outside [near, far] take the end colours.

    Args:
        depth_m: a number or an array of metres.
        near, far: metres, ``near < far``.

    Returns:
        RGB in [0, 1]: a tuple of 3 floats for a number, an (..., 3) float array for an array.
    """
    t = _normalize(depth_m, near, far, log=False)
    t = np.nan_to_num(t, nan=1.0)  # an unknown distance is drawn as far, never as "danger red"
    hsv = np.stack([t * (2.0 / 3.0), np.ones_like(t), np.ones_like(t)], axis=-1)
    rgb = mplc.hsv_to_rgb(hsv)
    if np.ndim(depth_m) == 0:
        return tuple(float(c) for c in rgb)
    return rgb


def _cmap(cmap):
    return matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap


def colorize_scalar(values, vmin, vmax, cmap, *, log=False, valid=None):
    """Colour-map a float map to RGB uint8; pixels that are non-finite or not ``valid`` are black."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(values))
    t = _normalize(np.where(ok, values, vmax), vmin, vmax, log)
    rgb = (_cmap(cmap)(t)[..., :3] * 255.0 + 0.5).astype(np.uint8)
    rgb[~ok] = _INVALID_RGB
    return rgb


def colorize_depth(depth, min_depth, max_depth, cmap=DEPTH_CMAP, *, log=True):
    """Colour a depth map (metres) to an H x W x 3 uint8 image; invalid depth is black.

    Args:
        depth: (H, W) array or tensor of metres; 0, negative and non-finite values are invalid.
        min_depth, max_depth: metres mapped to the two ends of ``cmap`` (values outside are clipped).
        cmap: a matplotlib colour map (name or object); the default reads near red, far blue.
        log: log-scaled colours (the default, see the module docstring) or linear in metres.
    """
    if isinstance(depth, torch.Tensor):
        depth = depth.detach().cpu().numpy()
    depth = np.asarray(depth, dtype=np.float64)
    return colorize_scalar(depth, min_depth, max_depth, cmap, log=log, valid=depth > 0)


def abs_rel_error(pred, gt, min_depth=0.0, max_depth=float("inf")):
    """Per-pixel AbsRel ``|pred - gt| / gt`` where ``min_depth < gt < max_depth``; NaN elsewhere."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    valid = np.isfinite(gt) & (gt > max(min_depth, 0.0)) & (gt < max_depth)
    error = np.full(gt.shape, np.nan)
    error[valid] = np.abs(pred[valid] - gt[valid]) / gt[valid]
    return error


# ---------------------------------------------------------------------------------------------
# Panels
# ---------------------------------------------------------------------------------------------
def _figure_to_rgb(fig, height, width):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    # Agg rounds inches * dpi; pad / crop so callers can rely on the exact pixel size.
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    h, w = min(height, rgb.shape[0]), min(width, rgb.shape[1])
    out[:h, :w] = rgb[:h, :w]
    return out


def colorbar_image(height, vmin, vmax, cmap, *, label="", log=False, width=None):
    """A vertical colour bar ``height`` pixels tall (ticks in data units), as RGB uint8.

    Rendered on its own, then placed beside the colour-mapped image, so that the image keeps its
    exact pixels (no resampling through a figure).
    """
    dpi = 100.0
    font = float(np.clip(height / 28.0, 5.0, 12.0))  # points; readable from ~100 px up
    font_px = font * dpi / 72.0
    if width is None:
        width = int(math.ceil(font_px * 6.5)) + 8
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    margin = min(0.45, font_px / height)  # room for the half-height end tick labels
    bar_w = 1.2 * font_px / width
    ax = fig.add_axes([4.0 / width, margin, bar_w, 1.0 - 2.0 * margin])
    norm = mplc.LogNorm(vmin, vmax) if log else mplc.Normalize(vmin, vmax)
    bar = ColorbarBase(ax, cmap=_cmap(cmap), norm=norm, orientation="vertical")
    if log:
        bar.locator = ticker.LogLocator(subs=(1.0, 2.0, 5.0))
        bar.minorlocator = ticker.NullLocator()
    else:
        bar.locator = ticker.MaxNLocator(nbins=max(2, int(height / (3 * font_px))))
    bar.formatter = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    bar.update_ticks()
    ax.tick_params(labelsize=font, length=font_px * 0.3, pad=1)
    if label:
        bar.set_label(label, fontsize=font, labelpad=1)
    return _figure_to_rgb(fig, height, width)


@functools.lru_cache(maxsize=16)
def _cached_colorbar(height, vmin, vmax, cmap, label, log):
    bar = colorbar_image(height, vmin, vmax, cmap, label=label, log=log)
    bar.flags.writeable = False  # one array shared by every caller
    return bar


def _colorbar(height, vmin, vmax, cmap, *, label, log=False):
    """:func:`colorbar_image`, remembered for named colour maps: drawing a bar takes ~0.1 s, and a
    video redraws the same bar on every frame."""
    if isinstance(cmap, str):
        return _cached_colorbar(int(height), float(vmin), float(vmax), cmap, label, bool(log))
    return colorbar_image(height, vmin, vmax, cmap, label=label, log=log)


def _hstack(images, background=255):
    height = max(im.shape[0] for im in images)
    padded = []
    for im in images:
        pad = np.full((height - im.shape[0],) + im.shape[1:], background, dtype=np.uint8)
        padded.append(np.concatenate([im, pad], axis=0))
    return np.concatenate(padded, axis=1)


def depth_panel(depth, min_depth, max_depth, cmap=DEPTH_CMAP, *, log=True):
    """Colour-mapped depth with its colour bar on the right (metres): H x (W + bar) x 3 uint8."""
    image = colorize_depth(depth, min_depth, max_depth, cmap, log=log)
    bar = _colorbar(image.shape[0], min_depth, max_depth, cmap, label="depth [m]", log=log)
    return _hstack([image, bar])


def error_panel(pred, gt, min_depth=0.0, max_depth=float("inf"), *, max_error=0.5, cmap=ERROR_CMAP):
    """Per-pixel AbsRel (``|pred - gt| / gt``) where GT is valid, with its colour bar.

    Errors are clipped at ``max_error`` (0.5 = off by half the distance; the largest depth-aware
    PQ threshold); pixels without valid GT are black.
    """
    if isinstance(pred, torch.Tensor):
        pred = pred.detach().cpu().numpy()
    error = abs_rel_error(pred, gt, min_depth, max_depth)
    image = colorize_scalar(error, 0.0, max_error, cmap)
    bar = _colorbar(image.shape[0], 0.0, max_error, cmap, label="AbsRel")
    return _hstack([image, bar])


def confidence_panel(confidence, cmap=CONFIDENCE_CMAP):
    """A per-pixel confidence in [0, 1] (depth completion's ``depth_confidence``) with its colour bar."""
    if isinstance(confidence, torch.Tensor):
        confidence = confidence.detach().cpu().numpy()
    image = colorize_scalar(confidence, 0.0, 1.0, cmap)
    bar = _colorbar(image.shape[0], 0.0, 1.0, cmap, label="confidence")
    return _hstack([image, bar])


def points_radius(shape):
    """Half-width in pixels of the square a sparse depth point is drawn as: 1 (3 x 3 pixels) up to
    ~900 px wide images, 2 (5 x 5) for KITTI's 1216, and so on, so points stay visible when shrunk."""
    return max(1, int(round(max(shape[:2]) / 600.0)))


def draw_sparse_points(image_rgb, sparse_depth, min_depth, max_depth, cmap=DEPTH_CMAP, *, log=True, radius=None):
    """A sparse depth input (LiDAR points, metres, 0 = no point) drawn on its image.

    The image becomes a light grey-scale background (a colour photo would hide the depth colours);
    every point is coloured exactly as :func:`colorize_depth` colours that depth (same colour map and
    scale as the depth panel) and widened to a ``(2 radius + 1)`` square (default
    :func:`points_radius`) so that it stays visible. Where widened points overlap, the nearer one is
    drawn (as a projection shows the first surface); each point's own pixel always shows its own
    depth. Only pixels within ``radius`` of a point are coloured.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        sparse_depth: (H, W) array or tensor of metres at the image's size; ``<= 0`` or non-finite:
            no point.
        min_depth, max_depth, cmap, log: as :func:`colorize_depth`.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if isinstance(sparse_depth, torch.Tensor):
        sparse_depth = sparse_depth.detach().cpu().numpy()
    image_rgb = np.asarray(image_rgb)
    sparse = np.asarray(sparse_depth, dtype=np.float32)
    if sparse.shape != image_rgb.shape[:2]:
        raise ValueError(f"sparse depth {sparse.shape} does not match the image {image_rgb.shape[:2]}")
    luma = image_rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = (0.5 * luma + 96.0 + 0.5).astype(np.uint8)
    out = np.repeat(grey[..., None], 3, axis=2)
    points = np.isfinite(sparse) & (sparse > 0)
    if not points.any():
        return out
    radius = points_radius(sparse.shape) if radius is None else int(radius)
    nearest = np.where(points, sparse, np.inf).astype(np.float32)
    if radius > 0:
        # a min filter: every pixel near a point takes the nearest such point's depth (inf elsewhere)
        kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
        nearest = cv2.erode(nearest, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=float("inf"))
        nearest[points] = sparse[points]
    drawn = np.isfinite(nearest)
    out[drawn] = colorize_depth(nearest[drawn][None], min_depth, max_depth, cmap, log=log)[0]
    return out


def side_by_side(panels, *, max_columns=None, pad=4, background=255):
    """Compose panels (H_i x W_i x 3 uint8) left to right, wrapping after ``max_columns``.

    Panels in a row are top-aligned; rows are left-aligned and separated by ``pad`` pixels of
    ``background``. Grey-scale panels are expanded to RGB.
    """
    panels = [np.asarray(p) for p in panels]
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    panels = [np.repeat(p[..., None], 3, axis=2) if p.ndim == 2 else p for p in panels]
    panels = [p.astype(np.uint8, copy=False) for p in panels]
    columns = max_columns or len(panels)
    spacer = lambda h: np.full((h, pad, 3), background, dtype=np.uint8)  # noqa: E731
    rows = []
    for start in range(0, len(panels), columns):
        row = panels[start : start + columns]
        height = max(p.shape[0] for p in row)
        parts = []
        for p in row:
            parts += [p, spacer(height)] if pad else [p]
        rows.append(_hstack(parts[:-1] if pad else parts, background))
    width = max(r.shape[1] for r in rows)
    out = []
    for r in rows:
        out.append(np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), background, np.uint8)], 1))
        if pad:
            out.append(np.full((pad, width, 3), background, dtype=np.uint8))
    return np.concatenate(out[:-1] if pad else out, axis=0)


# ---------------------------------------------------------------------------------------------
# Panoptic overlay
# ---------------------------------------------------------------------------------------------
class DepthPanopticVisualizer(Visualizer):
    """detectron2's Visualizer that labels every panoptic segment with its class and distance.

    Masks, polygons and text placement are detectron2's own (``draw_binary_mask`` for stuff,
    ``overlay_instances`` for things); only the labels and the thing colours change.
    """

    def __init__(self, img_rgb, metadata=None, scale=1.0, instance_mode=ColorMode.IMAGE, *, near=None, far=None):
        """
        Args:
            img_rgb, metadata, scale, instance_mode: as detectron2's :class:`Visualizer`.
            near, far: metres of the red and blue ends of the thing colours; by default the
                metadata's :func:`display_depth_range`, else the range of the drawn segments.
        """
        super().__init__(img_rgb, metadata, scale=scale, instance_mode=instance_mode)
        self.near, self.far = near, far

    def _class_name(self, sinfo):
        # detectron2's convention, as in draw_panoptic_seg: things index thing_classes, stuff
        # index stuff_classes (Panoptic-DeepLab metadata lists every class in both).
        names = self.metadata.get("thing_classes" if sinfo["isthing"] else "stuff_classes", None)
        category = sinfo["category_id"]
        if names is not None and 0 <= category < len(names):
            return names[category]
        return str(category)

    def _distance_range(self, segments_info):
        if self.near is not None and self.far is not None:
            return self.near, self.far
        if self.metadata.get("depth_range", None) is not None:
            return display_depth_range(self.metadata)
        depths = [s["depth"] for s in segments_info if math.isfinite(s.get("depth", math.nan))]
        if not depths or min(depths) == max(depths):
            return display_depth_range(None)
        return min(depths), max(depths)

    def draw_panoptic_depth(self, panoptic_seg, segments_info, area_threshold=None, alpha=0.6):
        """Draw a depth-panoptic prediction.

        Args:
            panoptic_seg: (H, W) tensor or array of segment ids (-1 = void).
            segments_info (list[dict]): per segment ``id``, ``category_id``, ``isthing`` and
                ``depth`` (metres), as :class:`PanopticDepthLab` returns them.
            area_threshold: stuff components smaller than this are not drawn (detectron2's knob).

        Returns:
            VisImage: every segment labelled ``"class 12.3 m"`` (just ``"class"`` when it has no
            valid distance, see :func:`segment_distance`); things filled with their distance
            colour, stuff with the dataset colour.
        """
        if not torch.is_tensor(panoptic_seg):
            panoptic_seg = torch.as_tensor(np.asarray(panoptic_seg))
        segments, labelled = _segment_masks(panoptic_seg.cpu(), segments_info)
        if self._instance_mode == ColorMode.IMAGE_BW:
            self.output.reset_image(self._create_grayscale_image(labelled))

        for mask, sinfo in segments:
            if sinfo["isthing"]:
                continue
            colors = self.metadata.get("stuff_colors", None)
            color = [c / 255.0 for c in colors[sinfo["category_id"]]] if colors else None
            self.draw_binary_mask(
                mask,
                color=color,
                edge_color=SEGMENT_EDGE_COLOR,
                text=segment_label(self._class_name(sinfo), segment_distance(sinfo)),
                alpha=alpha,
                area_threshold=area_threshold,
            )

        things = [(mask, sinfo) for mask, sinfo in segments if sinfo["isthing"]]
        if not things:
            return self.output
        masks, infos = zip(*things)
        near, far = self._distance_range([s for s in segments_info if segment_distance(s) is not None])
        distances = [segment_distance(s) for s in infos]
        self.overlay_instances(
            masks=list(masks),
            labels=[segment_label(self._class_name(s), d) for s, d in zip(infos, distances)],
            assigned_colors=[distance_color(math.nan if d is None else d, near, far) for d in distances],
            alpha=alpha,
        )
        return self.output

    def draw_sem_seg_depth(self, sem_seg, depth=None, area_threshold=None, alpha=0.6):
        """Draw a semantic prediction as detectron2's ``draw_sem_seg`` does, each label with its
        distance: ``"Car 12.3 m"`` (for models without panoptic output, e.g. HydraNet).

        Without instances, a class's pixels span many distances (the whole road), so the label sits
        on each connected region that detectron2 labels (the class's largest region, and any very
        large one) and gives that region's median depth (:func:`region_distance`). Classes listed in
        the metadata's ``classes_without_depth`` (sky) and regions whose median lies outside its
        ``depth_range`` get the class name alone, as :meth:`draw_panoptic_depth` does.

        Args:
            sem_seg: (H, W) tensor or array of class ids (e.g. the argmax of ``sem_seg`` logits);
                ids without a name in ``stuff_classes`` (the ignore value) are not drawn.
            depth: (H, W) tensor or array of metres, or None for class names only.
            area_threshold, alpha: as detectron2's ``draw_sem_seg``.

        Returns:
            VisImage
        """
        if torch.is_tensor(sem_seg):
            sem_seg = sem_seg.cpu().numpy()
        if torch.is_tensor(depth):
            depth = depth.detach().cpu().numpy()
        names = self.metadata.get("stuff_classes", None) or []
        colors = self.metadata.get("stuff_colors", None) or []
        without_depth = set(self.metadata.get("classes_without_depth", None) or [])
        lo, hi = self.metadata.get("depth_range", None) or (0.0, float("inf"))
        labels, areas = np.unique(sem_seg, return_counts=True)
        for label in labels[np.argsort(-areas, kind="stable")].tolist():
            if not 0 <= label < len(names):
                continue
            color = [c / 255.0 for c in colors[label]] if label < len(colors) else random_color(rgb=True, maximum=1)
            mask = (sem_seg == label).astype(np.uint8)
            self.draw_binary_mask(
                mask, color=color, edge_color=SEGMENT_EDGE_COLOR, alpha=alpha, area_threshold=area_threshold
            )
            text_color = self._change_color_brightness(color, brightness_factor=0.7)
            for region in _labelled_regions(mask):
                if area_threshold and region.sum() < area_threshold:
                    continue
                distance = None
                if depth is not None and names[label] not in without_depth:
                    distance = region_distance(depth, region, lo, hi)
                center = np.median(region.nonzero(), axis=1)[::-1]  # detectron2's: steadier than the centroid
                self.draw_text(segment_label(names[label], distance), center, color=text_color)
        return self.output
