"""Procedural street scenes with exact metric depth, written in the real on-disk formats.

Tests and demos need data that looks like Virtual KITTI 2 and Cityscapes *on disk* (DESIGN.md §3) without
shipping either dataset. This package ray-casts simple 3D street scenes (ground plane, box buildings, poles,
signs, lights, trees, guard rails, moving vehicles) with numpy, so depth, classes and instance ids are exact
by construction, and writes them as the real datasets do:

* :func:`render_frame` renders one frame in memory (:class:`SyntheticFrame`);
* :func:`generate_vkitti2` writes the merged Virtual KITTI 2 layout (textgt and optical flow included;
  :func:`frame_flow` is the flow of one G-buffer);
* :func:`generate_cityscapes` writes leftImg8bit / gtFine / disparity / camera and runs cityscapesscripts'
  own panoptic conversion;
* :func:`generate_kitti` writes the KITTI depth benchmark (+ raw images), semantics and an Eigen split file;
* :func:`generate_kitti_completion` writes the KITTI depth completion benchmark (``data_depth_velodyne`` from a
  simulated 64-beam LiDAR scan, ``data_depth_annotated``, raw images, ``depth_selection``);
* :func:`generate_sidewalk` writes the Korean sidewalk dataset (AI Hub 인도보행 영상 / SafeTrip-Q seed): Surface
  (CVAT XML + colour masks), Polygon (CVAT XML) and ZED Depth folders (stereo pair, disp16, confidence, .conf),
  seen by a pedestrian walking along a sidewalk.

Conventions. World frame: X right, Y *down* (ground is Y = 0, things above it have Y < 0), Z along the road.
Cameras follow KITTI: x right, y down, z forward; a ray is ``C + s * D`` with ``D = R_cw @ [(u-cx)/fx,
(v-cy)/fy, 1]``, so the ray parameter ``s`` *is* the z-depth stored by Virtual KITTI 2. Pixel centres sit on
integer coordinates (KITTI's cx = 620.5 for 1242 columns).

Modules, in pipeline order: :mod:`.constants` (dataset constants, class tables), :mod:`.primitives`,
:mod:`.layout` and :mod:`.vehicles` (the scene), :mod:`.camera` (intrinsics, poses, rays), :mod:`.raycast`
(G-buffer), :mod:`.noise`, :mod:`.ground`, :mod:`.materials` and :mod:`.shading` (colour), :mod:`.frame`
(in-memory frames), :mod:`.flow` (exact optical flow), :mod:`.encoding`, :mod:`.vkitti2_writer`,
:mod:`.cityscapes_writer`, :mod:`.kitti_writer`, :mod:`.kitti_completion_writer` and :mod:`.sidewalk_writer`
(files).
Everything is deterministic for a seed: the output is pinned byte for byte by tests/data/test_synthetic.py.
"""

from .camera import camera_pose, cityscapes_intrinsics, vkitti2_intrinsics
from .cityscapes_writer import generate_cityscapes
from .constants import (
    CITYSCAPES_DEFAULT_SPLITS,
    MAX_FRAMES,
    SYNTHETIC_CLASSES,
    VKITTI2_NAME_TO_TRAIN_ID,
    VKITTI2_SCENES,
    VKITTI2_VARIATIONS,
)
from .encoding import cityscapes_disparity_png, vkitti2_depth_png
from .flow import frame_flow
from .frame import SyntheticFrame, SyntheticTrack, render_frame
from .kitti_completion_writer import generate_kitti_completion, lidar_scan_mask
from .kitti_writer import generate_kitti, kitti_depth_png, kitti_intrinsics
from .layout import SceneLayout, build_scene
from .sidewalk_writer import generate_sidewalk
from .vkitti2_writer import generate_vkitti2

# The pre-package module's name for this table, still used by tests/data/test_synthetic.py.
_VK_NAME_TO_TRAIN = VKITTI2_NAME_TO_TRAIN_ID

__all__ = [
    "VKITTI2_SCENES",
    "VKITTI2_VARIATIONS",
    "CITYSCAPES_DEFAULT_SPLITS",
    "SYNTHETIC_CLASSES",
    "SceneLayout",
    "SyntheticTrack",
    "SyntheticFrame",
    "build_scene",
    "vkitti2_intrinsics",
    "cityscapes_intrinsics",
    "camera_pose",
    "render_frame",
    "frame_flow",
    "vkitti2_depth_png",
    "cityscapes_disparity_png",
    "generate_vkitti2",
    "generate_cityscapes",
    "kitti_intrinsics",
    "kitti_depth_png",
    "generate_kitti",
    "generate_kitti_completion",
    "lidar_scan_mask",
    "generate_sidewalk",
]
