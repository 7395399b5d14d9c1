"""Korean sidewalk dataset writer (AI Hub 인도보행 영상 / the SafeTrip-Q seed): Surface, Polygon and ZED Depth folders.

Layout written under ``out_dir`` (``$DETECTRON2_DATASETS/sidewalk``; the AI Hub release layout)::

    Surface/Surface_XXX/MP_SEL_SUR_NNNNNN.jpg          images (surfaces annotated)
    Surface/Surface_XXX/Surface_XXX.xml                 CVAT for images 1.1: surface polygons + radio attribute
    Surface/Surface_XXX/MASK/MP_SEL_SUR_NNNNNN.png      RGB colour mask per (label, attribute), black unlabelled
    Polygon/Polygon_XXXX/MP_SEL_PNNNNNN.jpg             images (obstacles annotated)
    Polygon/Polygon_XXXX/Polygon_XXXX.xml               CVAT for images 1.1: obstacle polygons (29 labels)
    Depth/Depth_XXX/Depth_XXX.conf                      ZED SDK calibration (INI)
    Depth/Depth_XXX/ZED1_KSC_NNNNNN_{L,R}.png           rectified stereo pair, RGBA (alpha 255)
    Depth/Depth_XXX/ZED1_KSC_NNNNNN_{left,right}.png    the pair, RGB, black outside the disparity band
    Depth/Depth_XXX/ZED1_KSC_NNNNNN_disp16.png          uint16 disparity * 100 (0 = invalid)
    Depth/Depth_XXX/ZED1_KSC_NNNNNN_confidence_save.png uint8, low = confident, 0 outside the band
    Depth/Depth_XXX/ZED1_KSC_NNNNNN_confidence.png      uint8 {0, 255}: 255 where confidence_save <= 19

``NNNNNN`` is ``folder * 1000 + k`` (k = 1, 2, ...), so names are unique over folders and a folder's files do not
depend on which other folders are written. A folder whose trailing number is divisible by 10 belongs to ``val``,
the others to ``train`` (the dataset's split rule), so the default folders (9, 10) give both splits per task.

The scenes are the generator's urban / suburban streets seen by a pedestrian: the camera walks along a sidewalk
(1.0-1.4 m high, looking slightly down), and frames where it would stand inside or brush against a pole, tree
or box are skipped. Surface images are annotated with surfaces only and Polygon images with obstacles only
(asymmetric, as the real data):

* Surfaces are annotated *amodally*, as annotators draw them: the ground class behind obstacles (poles, trunks,
  vehicles, boxes) is found by a second ray cast without those obstacles (buildings, hedges and tree crowns
  still occlude). road -> roadway/normal (roadway/crosswalk on zebra crossings), sidewalk -> sidewalk/blocks,
  terrain -> caution_zone/tree_zone. The MASK PNG is that rendered colour map; the XML holds its outer contours
  (cv2.findContours + approxPolyDP, ~1 px) stacked by z_order (a region lying inside another one is drawn above
  it), so rasterising the polygons in ascending z_order reproduces the mask on >= 99 % of the pixels.
* Obstacles are visible instances (a vehicle's track, a static primitive): car / van -> car, truck -> truck,
  pole -> pole, tree trunk -> tree_trunk, sidewalk boxes -> power_controller, guard rail -> barricade,
  traffic_light / traffic_sign -> the labels of the same names, which the seed drops (so readers must drop
  them). Nearer instances get higher z_order.

The depth set is a ZED stereo rig: ``L`` is camera 0 and ``R`` camera 1 of one layout, the right camera
``BaseLine`` (mm, from the ``.conf``) to the right, both rendered with the LEFT_CAM section's intrinsics at the
frame's ZED resolution (2K 2208x1242, FHD 1920x1080, HD 1280x720, VGA 672x376), as the ZED SDK saves rectified
images. ``disp16 = round(100 * fx * B / depth)`` on the central band of rows the real files have (rows 244..835
of 1080) where the depth is finite, so ``depth = fx * B / (disp16 / 100)`` and block matching L/R gives
disp16 / 100. The ``.conf``'s k1 / k2 describe the raw sensor and do not apply to these rectified images; the
RIGHT_CAM sections differ slightly from LEFT_CAM, as in the real files (a reader must take fx from LEFT_CAM).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from segdep_d2.data.datasets.sidewalk_categories import (
    SIDEWALK_CLASSES,
    SIDEWALK_DROPPED_POLYGON_LABELS,
    SIDEWALK_IGNORE_LABEL,
    SIDEWALK_POLYGON_CLASSES,
    SIDEWALK_SURFACE_ATTRIBUTES,
    SIDEWALK_SURFACE_CLASSES,
    SIDEWALK_SURFACE_MASK_COLORS,
)

from .constants import CLASS_INDEX, MAT_FOLIAGE, MAX_FRAMES
from .encoding import save_png
from .frame import finish_frame
from .layout import SceneLayout, build_scene, stable_seed
from .raycast import cast_geometry

__all__ = [
    "ZED_RESOLUTIONS",
    "SIDEWALK_DEFAULT_FOLDERS",
    "SIDEWALK_SURFACE_LABEL_OF_CLASS",
    "SIDEWALK_POLYGON_LABEL_OF_CLASS",
    "sidewalk_folder_split",
    "sidewalk_layout",
    "zed_band_rows",
    "zed_disp16_png",
    "zed_confidence_pngs",
    "generate_sidewalk",
]

# ZED resolution name -> (height, width) of its images.
ZED_RESOLUTIONS = {"2K": (1242, 2208), "FHD": (1080, 1920), "HD": (720, 1280), "VGA": (376, 672)}
# The real disp16 is non-zero exactly on rows 244..835 of 1080; the same fractions at any height.
ZED_BAND = (244 / 1080, 836 / 1080)
ZED_CONFIDENCE_THRESHOLD = 19  # confidence = 255 where confidence_save <= this
SIDEWALK_DEFAULT_FOLDERS = (9, 10)  # one train folder and one val folder per task

# Internal class -> (surface label, attribute); ground classes only.
SIDEWALK_SURFACE_LABEL_OF_CLASS = {
    "road": ("roadway", "normal"),
    "sidewalk": ("sidewalk", "blocks"),
    "terrain": ("caution_zone", "tree_zone"),
}
# Internal class -> polygon label ("tree" only where the hit is a trunk, not the crown).
SIDEWALK_POLYGON_LABEL_OF_CLASS = {
    "pole": "pole",
    "tree": "tree_trunk",
    "car": "car",
    "van": "car",
    "truck": "truck",
    "misc": "power_controller",
    "guard_rail": "barricade",
    "traffic_light": "traffic_light",
    "traffic_sign": "traffic_sign",
}
# Surface (label, attribute) pairs the writer can produce, in a fixed order (index + 1 in the surface id map).
_SURFACE_KINDS = (("roadway", "normal"), ("roadway", "crosswalk"), ("sidewalk", "blocks"),
                  ("caution_zone", "tree_zone"))
# The 29 polygon labels in the real XML's order: the two added last first, then reverse alphabetical.
_POLYGON_XML_LABELS = ("traffic_light_controller", "power_controller") + tuple(sorted(
    set(SIDEWALK_POLYGON_CLASSES + SIDEWALK_DROPPED_POLYGON_LABELS)
    - {"traffic_light_controller", "power_controller"}, reverse=True))
_ZEBRA_LENGTH = 4.0  # metres along Z, as ground.py paints them
_SIDEWALK_FOV = 1395.0 / 1920.0  # fx / width of the surface / polygon camera (a ZED-like 69 degree field of view)
_APPROX_EPSILON = 1.0  # px, approxPolyDP tolerance of the XML polygons
_CLEARANCE = 0.35  # metres the camera keeps from static things (frames that break it are skipped)


def sidewalk_folder_split(folder_name: str) -> str:
    """``val`` when the folder's trailing number is divisible by 10, else ``train`` (the dataset's rule)."""
    digits = folder_name[len(folder_name.rstrip("0123456789")):]
    return "val" if digits and int(digits) % 10 == 0 else "train"


def zed_band_rows(height: int) -> Tuple[int, int]:
    """Rows ``[top, bottom)`` of the disparity band of a ``height``-row ZED frame (244..835 at 1080)."""
    return int(round(height * ZED_BAND[0])), int(round(height * ZED_BAND[1]))


def _zed_resolution(height: int, width: int) -> str:
    for name, size in ZED_RESOLUTIONS.items():
        if size == (height, width):
            return name
    sizes = ", ".join(f"{n} {w}x{h}" for n, (h, w) in ZED_RESOLUTIONS.items())
    raise ValueError(f"ZED depth frames must have a ZED resolution (W x H: {sizes}); got {width}x{height}. "
                     "Pass a ZED size, or depth_folders=() to write only Surface / Polygon folders at this size")


def zed_disp16_png(depth: np.ndarray, fx: float, baseline_m: float, band: Tuple[int, int]) -> np.ndarray:
    """Metres -> ZED ``disp16`` values ``round(100 * fx * B / depth)`` on the band rows, 0 elsewhere and where the
    depth is not finite or the disparity is below 1/100 px or above what uint16 holds."""
    depth = np.asarray(depth, np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    value = np.round(100.0 * fx * baseline_m / np.where(valid, depth, 1.0))
    rows = np.zeros(depth.shape[0], bool)
    rows[band[0]:band[1]] = True
    valid &= rows[:, None] & (value >= 1) & (value <= 65535)
    return np.where(valid, value, 0).astype(np.uint16)


def zed_confidence_pngs(depth: np.ndarray, fx: float, baseline_m: float, band: Tuple[int, int],
                        rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """ZED-like ``(confidence, confidence_save)``.

    ``confidence_save`` (uint8, low = confident, 0 outside the band): mostly small values, high ones on depth
    discontinuities (a few px wide), far pixels and the sky. ``confidence`` is 255 where ``confidence_save`` <=
    19 (so also outside the band), else 0, as in the real files.
    """
    height, width = depth.shape
    finite = np.isfinite(depth)
    disparity = np.where(finite, fx * baseline_m / np.where(finite, depth, 1.0), 0.0)
    jump = np.zeros((height, width))
    dx = np.abs(np.diff(disparity, axis=1))
    dy = np.abs(np.diff(disparity, axis=0))
    jump[:, 1:] = np.maximum(jump[:, 1:], dx)
    jump[:, :-1] = np.maximum(jump[:, :-1], dx)
    jump[1:] = np.maximum(jump[1:], dy)
    jump[:-1] = np.maximum(jump[:-1], dy)
    edge = cv2.dilate(np.clip((jump - 0.3) / 1.5, 0.0, 1.0).astype(np.float32), np.ones((5, 5), np.uint8))
    far = np.clip((np.where(finite, depth, 1e3) - 10.0) / 30.0, 0.0, 1.0)
    base = rng.gamma(2.0, 5.0, (height, width))
    spread = rng.random((height, width))
    value = base + edge * (120.0 + 135.0 * spread) + far * (60.0 + 80.0 * spread)
    value = np.where(finite, value, 150.0 + 105.0 * spread)
    save = np.clip(np.round(value), 0, 255).astype(np.uint8)
    rows = np.zeros(height, bool)
    rows[band[0]:band[1]] = True
    save[~rows] = 0
    confidence = np.where(save <= ZED_CONFIDENCE_THRESHOLD, 255, 0).astype(np.uint8)
    return confidence, save


# --------------------------------------------------------------------------------------------------
# Scenes: a pedestrian on the sidewalk
# --------------------------------------------------------------------------------------------------


def sidewalk_layout(task: str, folder: int, seed: int = 0, *, baseline: Optional[float] = None) -> SceneLayout:
    """The layout of one folder (``task``: surface / polygon / depth): an urban / suburban street, the camera
    walking along one of its sidewalks. ``baseline`` (metres) sets the stereo rig; the depth folders use the
    ``.conf``'s BaseLine / 1000, so ``render_frame(layout, frame, intrinsics=K_of_LEFT_CAM, camera=c)``
    re-renders a written frame exactly."""
    rng = np.random.default_rng(stable_seed(seed, "sidewalk", task, folder))
    style = "urban" if rng.random() < 0.6 else "suburban"
    base = build_scene(f"sidewalk_{task}_{folder}", seed, profile="vkitti2", style=style)
    x_left, x_right = base.road_edges
    side = 1 if rng.random() < 0.6 else 0  # walk on the right (1) or left (0) sidewalk
    offset = rng.uniform(0.3, 0.7) * base.sidewalk[side]
    return dataclasses.replace(
        base, ego_x=float(x_right + offset if side else x_left - offset), camera_height=float(rng.uniform(1.0, 1.4)),
        pitch=float(np.deg2rad(rng.uniform(2.0, 7.0))),
        stereo_baseline=base.stereo_baseline if baseline is None else float(baseline))


def _camera_clear(layout: SceneLayout, frame_index: int, cameras: Sequence[int]) -> bool:
    """No static primitive within ``_CLEARANCE`` of the camera centres at this frame."""
    lo, hi = layout.prims.lo - _CLEARANCE, layout.prims.hi + _CLEARANCE
    right = np.array([1.0, 0.0, 0.0])  # the rig's x axis (no yaw), up to the small pitch
    for camera in cameras:
        C = np.array([layout.ego_x, -layout.camera_height, layout.ego_speed * frame_index])
        C = C + camera * layout.stereo_baseline * right
        if np.any(np.all((lo <= C) & (C <= hi), axis=1)):
            return False
    return True


def _frame_indices(layout: SceneLayout, task: str, folder: int, seed: int, frames: int,
                   cameras: Sequence[int]) -> List[int]:
    """``frames`` increasing frame indices spread over the drive, skipping frames where the camera collides."""
    if frames > MAX_FRAMES // 4:
        raise ValueError(f"frames={frames} per folder; at most {MAX_FRAMES // 4}")
    rng = np.random.default_rng(stable_seed(seed, "sidewalk", task, folder, "frames"))
    start = int(rng.integers(0, MAX_FRAMES // 4))
    step = int(min(rng.integers(15, 45), max((MAX_FRAMES - 60 - start) // max(frames, 1), 2)))
    indices, index = [], start
    while len(indices) < frames:
        while index < MAX_FRAMES and not _camera_clear(layout, index, cameras):
            index += 1
        if index >= MAX_FRAMES:
            raise RuntimeError(f"no clear camera position left for {task} folder {folder}")
        indices.append(index)
        index += step
    return indices


def _generic_intrinsics(height: int, width: int) -> np.ndarray:
    """K of the Surface / Polygon camera: a ZED-like field of view, principal point at the centre."""
    f = _SIDEWALK_FOV * width
    return np.array([[f, 0, (width - 1) / 2.0], [0, f, (height - 1) / 2.0], [0, 0, 1.0]])


# --------------------------------------------------------------------------------------------------
# Label maps and polygons
# --------------------------------------------------------------------------------------------------


def _surface_map(layout: SceneLayout, frame_index: int, K: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) uint8: 0 unlabelled, k + 1 = ``_SURFACE_KINDS[k]``; the ground behind obstacles included."""
    prims = layout.prims
    keep = ((prims.label == CLASS_INDEX["building"]) | (prims.label == CLASS_INDEX["vegetation"])
            | ((prims.label == CLASS_INDEX["tree"]) & (prims.material == MAT_FOLIAGE)))
    background = dataclasses.replace(layout, prims=prims.take(np.flatnonzero(keep)), vehicles=())
    gbuffer = cast_geometry(background, frame_index, K, height, width, "clone", 0)
    label = gbuffer.label
    out = np.zeros((height, width), np.uint8)
    for name, kind in SIDEWALK_SURFACE_LABEL_OF_CLASS.items():
        out[label == CLASS_INDEX[name]] = _SURFACE_KINDS.index(kind) + 1
    road = label == CLASS_INDEX["road"]
    zebra = np.sort(layout.zebra_z)
    if zebra.size and road.any():
        Z = gbuffer.C[2] + gbuffer.depth[road] * gbuffer.rays.d[2][road]
        index = np.searchsorted(zebra, Z, side="right") - 1
        crossing = (index >= 0) & (Z < zebra[np.maximum(index, 0)] + _ZEBRA_LENGTH)
        values = out[road]
        values[crossing] = _SURFACE_KINDS.index(("roadway", "crosswalk")) + 1
        out[road] = values
    return out


def _obstacle_instances(gbuffer, label: np.ndarray):
    """Per pixel: polygon label index (into ``_POLYGON_XML_LABELS``, -1 none) and instance key (-1 none)."""
    prim_index, prims = gbuffer.prim_index, gbuffer.prims
    on_prim = prim_index >= 0
    material = np.full(label.shape, -1, np.int16)
    material[on_prim] = prims.material[prim_index[on_prim]]
    label_index = np.full(label.shape, -1, np.int16)
    for name, polygon_label in SIDEWALK_POLYGON_LABEL_OF_CLASS.items():
        hit = label == CLASS_INDEX[name]
        if name == "tree":
            hit &= material != MAT_FOLIAGE
        label_index[hit] = _POLYGON_XML_LABELS.index(polygon_label)
    instance = np.where(gbuffer.track >= 0, gbuffer.track.astype(np.int64), prim_index.astype(np.int64) + 100000)
    instance = np.where(label_index >= 0, instance, -1)
    return label_index, instance


def _contour_polygons(mask: np.ndarray) -> List[np.ndarray]:
    """Outer contours of a binary mask, lightly simplified: integer (N, 2) x, y arrays with N >= 3."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = []
    for contour in contours:
        approx = cv2.approxPolyDP(contour, _APPROX_EPSILON, True).reshape(-1, 2)
        if len(approx) < 3:
            approx = cv2.approxPolyDP(contour, 0.0, True).reshape(-1, 2)
        if len(np.unique(approx, axis=0)) >= 3:
            polygons.append(approx.astype(np.int32))
    return polygons


def _rasterise(shapes, height: int, width: int) -> np.ndarray:
    """Paint ``(value, z_order, points)`` shapes in ascending z_order (stable) with cv2.fillPoly; 0 elsewhere."""
    out = np.zeros((height, width), np.int32)
    for value, _, points in sorted(shapes, key=lambda s: s[1]):
        cv2.fillPoly(out, [np.round(points).astype(np.int32)], int(value))
    return out


def _surface_shapes(surface: np.ndarray):
    """(kind index + 1, z_order, points) per region; regions inside others (smaller outlines) drawn above."""
    shapes = []
    for value in range(1, len(_SURFACE_KINDS) + 1):
        for points in _contour_polygons(surface == value):
            shapes.append((value, float(cv2.contourArea(points.astype(np.float32))), points))
    shapes.sort(key=lambda s: (-s[1], s[0], s[2][:, 1].min(), s[2][:, 0].min()))
    return [(value, z, points) for z, (value, _, points) in enumerate(shapes, start=1)]


def _obstacle_shapes(label_index: np.ndarray, instance: np.ndarray, depth: np.ndarray):
    """(label index + 1, z_order, points) per visible instance component; nearer instances drawn above."""
    keys = np.unique(instance[instance >= 0])
    ranked = []
    for key in keys:
        mask = instance == key
        ranked.append((float(np.median(depth[mask])), int(key), mask))
    ranked.sort(key=lambda r: (-r[0], r[1]))  # far first
    shapes = []
    for z, (_, _, mask) in enumerate(ranked, start=1):
        value = int(label_index[mask][0]) + 1
        shapes += [(value, z, points) for points in _contour_polygons(mask)]
    return shapes


# --------------------------------------------------------------------------------------------------
# CVAT XML
# --------------------------------------------------------------------------------------------------


def _points_text(points: np.ndarray, height: int, width: int) -> str:
    """CVAT ``points``: ``x,y;x,y`` with 2 decimals; the last row / column is the image edge (W, H), as drawn."""
    xs = np.where(points[:, 0] >= width - 1, width, points[:, 0])
    ys = np.where(points[:, 1] >= height - 1, height, points[:, 1])
    return ";".join(f"{x:.2f},{y:.2f}" for x, y in zip(xs.astype(float), ys.astype(float)))


def _labels_xml(labels: Sequence[str], attributes: Dict[str, Sequence[str]]) -> List[str]:
    lines = ["      <labels>"]
    for name in labels:
        lines += ["        <label>", f"          <name>{name}</name>", "          <attributes>"]
        values = attributes.get(name) or ()
        if values:
            lines += ["            <attribute>", "              <name>attribute</name>",
                      "              <mutable>False</mutable>", "              <input_type>radio</input_type>",
                      f"              <default_value>{values[0]}</default_value>",
                      "              <values>" + "\n".join(values) + "</values>", "            </attribute>"]
        lines += ["          </attributes>", "        </label>"]
    return lines + ["      </labels>"]


def _timestamp(folder: int, days: float) -> str:
    when = datetime.datetime(2019, 8, 1, 9, 0, 0) + datetime.timedelta(days=days, hours=folder % 24,
                                                                         minutes=folder * 7 % 60)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f") + "+03:00"


def _cvat_xml(task_name: str, task_id: int, labels_block: List[str], images: List[dict]) -> str:
    """A CVAT for images 1.1 dump in the layout of the real files (2-space indentation)."""
    size = len(images)
    lines = ['<?xml version="1.0" encoding="utf-8"?>', "<annotations>", "  <version>1.1</version>", "  <meta>",
             "    <task>", f"      <id>{task_id}</id>", f"      <name>{task_name}</name>", f"      <size>{size}</size>",
             "      <mode>annotation</mode>", "      <overlap>0</overlap>", "      <bugtracker></bugtracker>",
             "      <flipped>False</flipped>", f"      <created>{_timestamp(task_id, 0)}</created>",
             f"      <updated>{_timestamp(task_id, 14)}</updated>", "      <start_frame>0</start_frame>",
             "      <stop_frame>0</stop_frame>", "      <frame_filter>0</frame_filter>"]
    lines += labels_block
    lines += ["      <segments>", "        <segment>", f"          <id>{task_id}</id>", "          <start>0</start>",
              f"          <stop>{max(size - 1, 0)}</stop>", f"          <url>http://localhost:8080/?id={task_id}</url>",
              "        </segment>", "      </segments>", "      <owner>", "        <username>synthetic</username>",
              "        <email>synthetic@example.com</email>", "      </owner>", "    </task>",
              f"    <dumped>{_timestamp(task_id, 30)}</dumped>", "  </meta>"]
    for image in images:
        lines.append(f'  <image id="{image["id"]}" name="{image["name"]}" width="{image["width"]}" '
                     f'height="{image["height"]}">')
        for shape in image["polygons"]:
            lines.append(f'    <polygon label="{shape["label"]}" occluded="0" points="{shape["points"]}" '
                         f'z_order="{shape["z_order"]}">')
            if shape.get("attribute") is not None:
                lines.append(f'      <attribute name="attribute">{shape["attribute"]}</attribute>')
            lines.append("    </polygon>")
        lines.append("  </image>")
    lines.append("</annotations>")
    return "\n".join(lines)


def _write_text(path: str, text: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def _save_jpeg(rgb: np.ndarray, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG", quality=95)


# --------------------------------------------------------------------------------------------------
# ZED calibration
# --------------------------------------------------------------------------------------------------


def _g6(x: float) -> float:
    """Round to the 6 significant digits the ZED files are written with (so the text reads back exactly)."""
    return float(f"{x:.6g}")


def _zed_calibration(folder: int, seed: int) -> Dict[str, Dict[str, float]]:
    """A ZED unit's calibration: section -> key -> value, sections and keys in the real files' order."""
    rng = np.random.default_rng(stable_seed(seed, "sidewalk", "zed", folder))
    fx_fhd = rng.uniform(1380.0, 1410.0)
    cx_fhd, cy_fhd = 959.5 + rng.uniform(-30.0, 30.0), 539.5 + rng.uniform(-25.0, 25.0)
    right = dict(f=1.0 + rng.uniform(0.002, 0.005), cx=rng.uniform(2.0, 6.0), cy=-rng.uniform(10.0, 16.0))
    k_left = (-rng.uniform(0.165, 0.175), rng.uniform(0.024, 0.028))
    k_right = (k_left[0] - rng.uniform(0.0, 0.001), k_left[1] - rng.uniform(0.0, 0.001))
    stereo_angles = [float(s * m) for s, m in zip(rng.choice([-1.0, 1.0], 3), rng.uniform(2e-4, 2e-2, 3))]
    baseline_mm = round(float(rng.uniform(119.5, 120.5)), 3)

    def resolutions(fx, cx, cy):
        # 2K is FHD with a larger crop; HD is FHD binned by 2 (cropped to 1280x720); VGA is HD binned by 2.
        hd = (fx / 2, cx / 2 + 160.0, cy / 2 + 90.0)
        return {"2K": (fx, cx + 144.0, cy + 81.0), "FHD": (fx, cx, cy), "HD": hd,
                "VGA": (hd[0] / 2, hd[1] / 2 + 16.0, hd[2] / 2 + 8.0)}

    left = resolutions(fx_fhd, cx_fhd, cy_fhd)
    rights = resolutions(fx_fhd * right["f"], cx_fhd + right["cx"], cy_fhd + right["cy"])

    def section(values, k):
        fx, cx, cy = values
        return {"fx": _g6(fx), "fy": _g6(fx), "cx": _g6(cx), "cy": _g6(cy), "k1": _g6(k[0]), "k2": _g6(k[1])}

    calibration = {"LEFT_CAM_2K": section(left["2K"], k_left), "RIGHT_CAM_2K": section(rights["2K"], k_right)}
    stereo = {}
    for i, res in enumerate(("2K", "FHD", "HD", "VGA")):
        stereo.update({f"CV_{res}": _g6(stereo_angles[0]), f"RX_{res}": _g6(stereo_angles[1]),
                       f"RZ_{res}": _g6(stereo_angles[2])})
        if i == 0:
            stereo["BaseLine"] = _g6(baseline_mm)
    calibration["STEREO"] = stereo
    for res in ("FHD", "HD", "VGA"):
        calibration[f"LEFT_CAM_{res}"] = section(left[res], k_left)
        calibration[f"RIGHT_CAM_{res}"] = section(rights[res], k_right)
    return calibration


def _conf_text(calibration: Dict[str, Dict[str, float]]) -> str:
    blocks = []
    for name, values in calibration.items():
        blocks.append("\n".join([f"[{name}]"] + [f"{key}={value:.6g}" for key, value in values.items()]))
    return "\n\n".join(blocks) + "\n"


# --------------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------------


class _Stats:
    """Pixel counts per training class (255 unlabelled) and the finite depth range, for the summary."""

    def __init__(self):
        self.counts = np.zeros(256, np.int64)
        self.depth_min, self.depth_max = np.inf, 0.0

    def add_ids(self, ids):
        self.counts += np.bincount(ids.reshape(-1), minlength=256)[:256]

    def add_depth(self, depth):
        finite = depth[np.isfinite(depth)]
        if finite.size:
            self.depth_min = min(self.depth_min, float(finite.min()))
            self.depth_max = max(self.depth_max, float(finite.max()))

    def fractions(self):
        total = max(int(self.counts.sum()), 1)
        names = {i: name for i, name in enumerate(SIDEWALK_CLASSES)}
        names[SIDEWALK_IGNORE_LABEL] = "unlabelled"
        return {names.get(i, str(i)): float(c) / total for i, c in enumerate(self.counts) if c}


def generate_sidewalk(out_dir: str, *, surface_folders: Sequence[int] = SIDEWALK_DEFAULT_FOLDERS,
                      polygon_folders: Sequence[int] = SIDEWALK_DEFAULT_FOLDERS,
                      depth_folders: Sequence[int] = SIDEWALK_DEFAULT_FOLDERS, frames: int = 3,
                      height: int = 376, width: int = 672, seed: int = 0) -> dict:
    """Write a Korean-sidewalk-layout dataset (Surface / Polygon / Depth folders) under ``out_dir``.

    Args:
        surface_folders, polygon_folders, depth_folders: folder numbers per task (``Surface_009``,
            ``Polygon_0009``, ``Depth_009`` for 9); numbers divisible by 10 are ``val`` folders.
        frames: images per folder.
        height, width: image size of every task. Depth frames need a ZED resolution (default VGA 376x672);
            other sizes raise ValueError unless ``depth_folders`` is empty.

    Returns a summary dict: ``format``, ``root``, ``height``, ``width``, ``frames`` (one dict per image: ``task``,
    ``folder``, ``split``, ``image`` and the files written with it, ``layout``, ``frame``, and for annotated
    tasks ``agreement``, the share of pixels where the rasterised XML equals the rendered labels), ``counts``
    (task -> folder -> images), ``class_fractions`` (over the 24 training classes, "unlabelled" = ignore),
    ``depth_range`` and ``seconds``.
    """
    start = time.perf_counter()
    if frames < 1:
        raise ValueError("frames must be >= 1")
    if depth_folders:
        resolution = _zed_resolution(height, width)
    for task, folders in (("surface", surface_folders), ("polygon", polygon_folders), ("depth", depth_folders)):
        for folder in folders:
            if not isinstance(folder, (int, np.integer)) or folder < 0:
                raise ValueError(f"{task} folder {folder!r}: expected a non-negative folder number")
    stats = _Stats()
    written: List[dict] = []
    counts: Dict[str, Dict[str, int]] = {}
    K = _generic_intrinsics(height, width)
    for folder in surface_folders:
        folder_name = f"Surface_{folder:03d}"
        written += _write_surface_folder(os.path.join(out_dir, "Surface", folder_name), folder_name, int(folder),
                                         frames, height, width, K, seed, stats)
        counts.setdefault("surface", {})[folder_name] = frames
    for folder in polygon_folders:
        folder_name = f"Polygon_{folder:04d}"
        written += _write_polygon_folder(os.path.join(out_dir, "Polygon", folder_name), folder_name, int(folder),
                                         frames, height, width, K, seed, stats)
        counts.setdefault("polygon", {})[folder_name] = frames
    for folder in depth_folders:
        folder_name = f"Depth_{folder:03d}"
        written += _write_depth_folder(os.path.join(out_dir, "Depth", folder_name), folder_name, int(folder),
                                       frames, height, width, resolution, seed, stats)
        counts.setdefault("depth", {})[folder_name] = frames
    return dict(format="sidewalk", root=os.path.abspath(out_dir), height=height, width=width, frames=written,
                counts=counts, class_fractions=stats.fractions(), depth_range=(stats.depth_min, stats.depth_max),
                seconds=time.perf_counter() - start)


def _write_surface_folder(folder_dir, folder_name, folder, frames, height, width, K, seed, stats):
    layout = sidewalk_layout("surface", folder, seed)
    images, written = [], []
    for k, frame_index in enumerate(_frame_indices(layout, "surface", folder, seed, frames, (0,))):
        stem = f"MP_SEL_SUR_{folder * 1000 + k + 1:06d}"
        frame = finish_frame(layout, cast_geometry(layout, frame_index, K, height, width, "clone", 0), frame_index,
                             "clone", 0)
        surface = _surface_map(layout, frame_index, K, height, width)
        colors = np.zeros((len(_SURFACE_KINDS) + 1, 3), np.uint8)
        for i, kind in enumerate(_SURFACE_KINDS, start=1):
            colors[i] = SIDEWALK_SURFACE_MASK_COLORS[kind]
        shapes = _surface_shapes(surface)
        agreement = float(np.mean(_rasterise(shapes, height, width) == surface))
        paths = dict(image=os.path.join(folder_dir, stem + ".jpg"),
                     mask=os.path.join(folder_dir, "MASK", stem + ".png"))
        _save_jpeg(frame.rgb, paths["image"])
        save_png(colors[surface], paths["mask"])
        images.append(dict(id=k, name=stem + ".jpg", width=width, height=height, polygons=[
            dict(label=_SURFACE_KINDS[value - 1][0], attribute=_SURFACE_KINDS[value - 1][1], z_order=z,
                 points=_points_text(points, height, width)) for value, z, points in shapes]))
        train_ids = np.full(surface.shape, SIDEWALK_IGNORE_LABEL, np.uint8)
        for i, (label, _) in enumerate(_SURFACE_KINDS, start=1):
            train_ids[surface == i] = SIDEWALK_SURFACE_CLASSES.index(label)
        stats.add_ids(train_ids)
        stats.add_depth(frame.depth)
        written.append(dict(task="surface", folder=folder_name, split=sidewalk_folder_split(folder_name),
                            layout=layout.name, frame=frame_index, agreement=agreement, **paths))
    labels = _labels_xml(tuple(reversed(SIDEWALK_SURFACE_CLASSES)), SIDEWALK_SURFACE_ATTRIBUTES)
    xml = os.path.join(folder_dir, folder_name + ".xml")
    _write_text(xml, _cvat_xml(folder_name, folder, labels, images))
    for entry in written:
        entry["xml"] = xml
    return written


def _write_polygon_folder(folder_dir, folder_name, folder, frames, height, width, K, seed, stats):
    layout = sidewalk_layout("polygon", folder, seed)
    to_train = np.full(len(_POLYGON_XML_LABELS) + 1, SIDEWALK_IGNORE_LABEL, np.uint8)
    for i, name in enumerate(_POLYGON_XML_LABELS, start=1):
        if name in SIDEWALK_CLASSES:
            to_train[i] = SIDEWALK_CLASSES.index(name)
    images, written = [], []
    for k, frame_index in enumerate(_frame_indices(layout, "polygon", folder, seed, frames, (0,))):
        stem = f"MP_SEL_P{folder * 1000 + k + 1:06d}"
        gbuffer = cast_geometry(layout, frame_index, K, height, width, "clone", 0)
        frame = finish_frame(layout, gbuffer, frame_index, "clone", 0)
        label_index, instance = _obstacle_instances(gbuffer, frame.label)
        shapes = _obstacle_shapes(label_index, instance, frame.depth)
        raster = _rasterise(shapes, height, width)
        agreement = float(np.mean(raster == label_index + 1))
        image = os.path.join(folder_dir, stem + ".jpg")
        _save_jpeg(frame.rgb, image)
        images.append(dict(id=k + 1, name=stem + ".jpg", width=width, height=height, polygons=[
            dict(label=_POLYGON_XML_LABELS[value - 1], z_order=z, points=_points_text(points, height, width))
            for value, z, points in shapes]))
        stats.add_ids(to_train[label_index + 1])
        stats.add_depth(frame.depth)
        written.append(dict(task="polygon", folder=folder_name, split=sidewalk_folder_split(folder_name),
                            layout=layout.name, frame=frame_index, agreement=agreement, image=image,
                            labels=sorted({_POLYGON_XML_LABELS[v - 1] for v, _, _ in shapes})))
    labels = _labels_xml(_POLYGON_XML_LABELS, {})
    xml = os.path.join(folder_dir, folder_name + ".xml")
    _write_text(xml, _cvat_xml(folder_name, folder, labels, images))
    for entry in written:
        entry["xml"] = xml
    return written


def _write_depth_folder(folder_dir, folder_name, folder, frames, height, width, resolution, seed, stats):
    calibration = _zed_calibration(folder, seed)
    left = calibration[f"LEFT_CAM_{resolution}"]
    fx, baseline_m = left["fx"], calibration["STEREO"]["BaseLine"] / 1000.0
    K = np.array([[left["fx"], 0, left["cx"]], [0, left["fy"], left["cy"]], [0, 0, 1.0]])
    layout = sidewalk_layout("depth", folder, seed, baseline=baseline_m)
    conf = os.path.join(folder_dir, folder_name + ".conf")
    _write_text(conf, _conf_text(calibration))
    band = zed_band_rows(height)
    written = []
    for k, frame_index in enumerate(_frame_indices(layout, "depth", folder, seed, frames, (0, 1))):
        stem = os.path.join(folder_dir, f"ZED1_KSC_{folder * 1000 + k + 1:06d}_")
        paths = {kind: stem + kind + ".png"
                 for kind in ("L", "R", "left", "right", "disp16", "confidence", "confidence_save")}
        views = [finish_frame(layout, cast_geometry(layout, frame_index, K, height, width, "clone", camera),
                              frame_index, "clone", camera) for camera in (0, 1)]
        rows = np.zeros(height, bool)
        rows[band[0]:band[1]] = True
        for frame, raw, crop in zip(views, ("L", "R"), ("left", "right")):
            rgba = np.concatenate([frame.rgb, np.full((height, width, 1), 255, np.uint8)], axis=2)
            save_png(rgba, paths[raw])
            save_png(np.where(rows[:, None, None], frame.rgb, 0).astype(np.uint8), paths[crop])
        depth = views[0].depth
        save_png(zed_disp16_png(depth, fx, baseline_m, band), paths["disp16"])
        rng = np.random.default_rng(stable_seed(seed, "sidewalk", "confidence", folder, frame_index))
        confidence, confidence_save = zed_confidence_pngs(depth, fx, baseline_m, band, rng)
        save_png(confidence, paths["confidence"])
        save_png(confidence_save, paths["confidence_save"])
        stats.add_depth(depth)
        written.append(dict(task="depth", folder=folder_name, split=sidewalk_folder_split(folder_name),
                            layout=layout.name, frame=frame_index, image=paths["L"], conf=conf, fx=fx,
                            baseline=baseline_m, resolution=resolution, **paths))
    return written
