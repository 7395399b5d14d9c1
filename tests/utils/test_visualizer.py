import math

import numpy as np
import pytest
import torch
from detectron2.data import Metadata

from segdep_d2.utils.visualizer import (
    DepthPanopticVisualizer,
    abs_rel_error,
    colorbar_image,
    colorize_depth,
    depth_panel,
    display_depth_range,
    distance_color,
    error_panel,
    segment_label,
    side_by_side,
)


def _dominant(rgb):
    return "rgb"[int(np.argmax(rgb))]


# ---- colours ----------------------------------------------------------------------------------
def test_distance_color_near_red_middle_green_far_blue():
    assert _dominant(distance_color(2.0, near=2.0, far=80.0)) == "r"
    assert _dominant(distance_color(41.0, near=2.0, far=80.0)) == "g"
    assert _dominant(distance_color(80.0, near=2.0, far=80.0)) == "b"
    # beyond the ends: clipped to the end colours
    assert distance_color(0.5, 2.0, 80.0) == distance_color(2.0, 2.0, 80.0)
    assert distance_color(500.0, 2.0, 80.0) == distance_color(80.0, 2.0, 80.0)
    assert all(0.0 <= c <= 1.0 for c in distance_color(30.0, 2.0, 80.0))


def test_distance_color_is_continuous_and_vectorised():
    depths = np.linspace(1.0, 50.0, 2001)
    colors = distance_color(depths, 1.0, 50.0)
    assert colors.shape == (2001, 3)
    assert np.abs(np.diff(colors, axis=0)).max() < 0.01  # no jumps between neighbouring depths
    np.testing.assert_allclose(colors[700], distance_color(depths[700], 1.0, 50.0))


def test_colorize_depth_invalid_is_black_valid_is_not():
    depth = np.array([[0.0, -1.0, np.nan, np.inf], [1.0, 5.0, 20.0, 80.0]], dtype=np.float32)
    rgb = colorize_depth(depth, 1.0, 80.0)
    assert rgb.shape == (2, 4, 3) and rgb.dtype == np.uint8
    assert (rgb[0] == 0).all()
    assert (rgb[1].max(axis=-1) > 40).all()
    # near and far ends read like the distance colours: near red, far blue
    assert _dominant(rgb[1, 0]) == "r" and _dominant(rgb[1, 3]) == "b"
    # accepts tensors; log and linear scales give different middles
    assert (colorize_depth(torch.from_numpy(depth), 1.0, 80.0) == rgb).all()
    assert not (colorize_depth(depth, 1.0, 80.0, log=False)[1, 1] == rgb[1, 1]).all()


def test_abs_rel_error_hand_computed():
    pred = np.array([[10.0, 9.0, 5.0, 3.0]])
    gt = np.array([[8.0, 10.0, 0.0, 100.0]])
    err = abs_rel_error(pred, gt, min_depth=1e-3, max_depth=80.0)
    np.testing.assert_allclose(err[0, :2], [0.25, 0.1])
    assert np.isnan(err[0, 2:]).all()  # invalid GT and GT beyond the valid range


def test_display_depth_range():
    assert display_depth_range(Metadata(depth_range=(1e-3, 80.0))) == (0.8, 80.0)
    assert display_depth_range(Metadata(depth_range=(2.0, 10.0))) == (2.0, 10.0)
    assert display_depth_range(None) == (1.0, 80.0)


# ---- labels -----------------------------------------------------------------------------------
def test_segment_label():
    assert segment_label("car", 12.34) == "car 12.3 m"
    assert segment_label("Road", np.float32(7.0)) == "Road 7.0 m"
    assert segment_label("sky", None) == "sky"
    assert segment_label("sky", math.nan) == "sky"


def _scene():
    """A 120 x 200 scene: road (stuff), a near car and a far car (things), a void strip."""
    meta = Metadata(
        thing_classes=["road", "car"],
        stuff_classes=["road", "car"],
        stuff_colors=[[128, 64, 128], [0, 0, 142]],
        thing_dataset_id_to_contiguous_id={2: 1},
        label_divisor=1000,
        depth_range=(1e-3, 80.0),
    )
    ids = np.zeros((120, 200), dtype=np.int64)
    ids[10:60, 10:90] = 1001
    ids[10:60, 110:190] = 1002
    ids[110:] = -1
    segments = [
        {"id": 0, "category_id": 0, "isthing": False, "depth": 7.25},
        {"id": 1001, "category_id": 1, "isthing": True, "depth": 3.0},
        {"id": 1002, "category_id": 1, "isthing": True, "depth": 79.0},
    ]
    image = np.full((120, 200, 3), 128, dtype=np.uint8)
    return image, meta, torch.from_numpy(ids), segments


def test_panoptic_overlay_labels_and_distance_colours():
    image, meta, ids, segments = _scene()
    vis = DepthPanopticVisualizer(image, meta)
    out = vis.draw_panoptic_depth(ids, segments)
    texts = {t.get_text() for t in out.ax.texts}
    assert {"road 7.2 m", "car 3.0 m", "car 79.0 m"} <= texts  # (7.25 rounds half-even)
    rgb = out.get_image()
    assert rgb.shape == image.shape
    assert _dominant(rgb[15, 50]) == "r"  # inside the near car, away from its label
    assert _dominant(rgb[15, 150]) == "b"  # inside the far car
    assert "depth" in segments[0] and "area" not in segments[0]  # caller's dicts untouched


def test_panoptic_overlay_without_depth_range_or_depths():
    image, meta, ids, segments = _scene()
    meta = Metadata(thing_classes=meta.thing_classes, stuff_classes=meta.stuff_classes)
    for s in segments:
        s.pop("depth")
    out = DepthPanopticVisualizer(image, meta).draw_panoptic_depth(ids.numpy(), segments)
    assert {"road", "car"} <= {t.get_text() for t in out.ax.texts}


def test_segments_flagged_without_valid_depth_get_no_distance():
    """Sky (VKITTI2 stores 655.35 m, outside the metrics' range) must not read "Sky 49.5 m"."""
    image, meta, ids, segments = _scene()
    segments[0]["depth_valid"] = False  # the road plays the sky here
    segments[2]["depth_valid"] = False
    out = DepthPanopticVisualizer(image, meta).draw_panoptic_depth(ids, segments)
    texts = {t.get_text() for t in out.ax.texts}
    assert {"road", "car 3.0 m", "car"} <= texts
    assert not any(t.startswith("road ") for t in texts) and "car 79.0 m" not in texts


# ---- panels -----------------------------------------------------------------------------------
def _semantic_scene():
    """A 60 x 90 semantic map: sky on top, road below, a big car (20 x 20 px at 12.3 m), a small car
    (10 x 10 px at 30 m) and one ignored pixel."""
    meta = Metadata(
        stuff_classes=["road", "sky", "car"],
        stuff_colors=[[128, 64, 128], [70, 130, 180], [0, 0, 142]],
        depth_range=(1e-3, 80.0),
        classes_without_depth=["sky"],
    )
    labels = np.zeros((60, 90), dtype=np.int64)
    depth = np.full((60, 90), 8.0, dtype=np.float32)
    labels[:20], depth[:20] = 1, 80.0
    labels[30:50, 10:30], depth[30:50, 10:30] = 2, 12.3
    labels[35:45, 60:70], depth[35:45, 60:70] = 2, 30.0
    labels[59, 89] = 255
    return np.full((60, 90, 3), 128, dtype=np.uint8), meta, labels, depth


def test_semantic_overlay_labels_regions_with_their_median_distance():
    image, meta, labels, depth = _semantic_scene()
    out = DepthPanopticVisualizer(image, meta).draw_sem_seg_depth(torch.from_numpy(labels), torch.from_numpy(depth))
    texts = {t.get_text(): t.get_position() for t in out.ax.texts}
    # one label per class, on its largest region (detectron2's rule): the small car has none;
    # the sky has no distance (classes_without_depth); the ignored pixel is not drawn
    assert sorted(texts) == ["car 12.3 m", "road 8.0 m", "sky"]
    np.testing.assert_allclose(texts["car 12.3 m"], (19.5, 39.5))  # the big car's median pixel (x, y)
    rgb = out.get_image()
    assert rgb.shape == image.shape
    assert _dominant(rgb[32, 12]) == "b" and _dominant(rgb[55, 50]) == "r"  # car and road colours


def test_semantic_overlay_without_a_valid_distance_shows_the_class_alone():
    image, meta, labels, depth = _semantic_scene()
    depth[20:] = 95.0  # road and cars beyond the dataset's depth_range: a guess, not a distance
    out = DepthPanopticVisualizer(image, meta).draw_sem_seg_depth(labels, depth)
    assert sorted(t.get_text() for t in out.ax.texts) == ["car", "road", "sky"]
    out = DepthPanopticVisualizer(image, meta).draw_sem_seg_depth(labels)  # no depth at all
    assert sorted(t.get_text() for t in out.ax.texts) == ["car", "road", "sky"]


def test_colour_bars_are_reused_but_not_shared_for_writing():
    first = depth_panel(np.full((40, 50), 5.0), 1.0, 80.0)
    first[:] = 0  # a caller drawing on its panel must not change the next one
    second = depth_panel(np.full((40, 50), 5.0), 1.0, 80.0)
    assert second[:, 50:].std() > 10 and second[:, 50:].mean() > 100  # the bar is intact


def test_colorbar_has_exact_size():
    for height in (96, 375):
        bar = colorbar_image(height, 0.8, 80.0, "turbo_r", label="depth [m]", log=True)
        assert bar.shape[0] == height and bar.shape[2] == 3 and bar.dtype == np.uint8
        assert 20 < bar.shape[1] < height + 200
        assert bar.std() > 10  # something was drawn


def test_depth_and_error_panel_shapes():
    rng = np.random.RandomState(0)
    pred = rng.uniform(1.0, 60.0, size=(96, 320)).astype(np.float32)
    gt = pred * rng.uniform(0.8, 1.2, size=pred.shape).astype(np.float32)
    gt[:, :40] = 0.0
    depth = depth_panel(pred, 0.8, 80.0)
    error = error_panel(torch.from_numpy(pred), gt, 1e-3, 80.0)
    for panel in (depth, error):
        assert panel.shape[0] == 96 and panel.shape[1] > 320 and panel.dtype == np.uint8
    assert (error[:, :40] == 0).all()  # no GT: black
    assert (error[:, 40:320].max(axis=-1) > 0).all()


def test_side_by_side_shapes():
    a = np.zeros((10, 20, 3), np.uint8)
    b = np.zeros((12, 30, 3), np.uint8)
    c = np.zeros((8, 5), np.uint8)  # grey-scale panels are accepted
    assert side_by_side([a, b]).shape == (12, 20 + 4 + 30, 3)
    assert side_by_side([a, b], pad=0).shape == (12, 50, 3)
    assert side_by_side([a, b, c], max_columns=2).shape == (12 + 4 + 8, 54, 3)
    assert side_by_side([a, b], max_columns=1, pad=0).shape == (22, 30, 3)
    grid = side_by_side([a, b], pad=2)
    assert (grid[:, 20:22] == 255).all()  # the spacer
    with pytest.raises(ValueError):
        side_by_side([])
