"""KITTI depth completion writer: the benchmark's official unzip layout, from the procedural renderer.

Layout written under ``out_dir`` (= ``$DETECTRON2_DATASETS/kitti``, the same root as :func:`generate_kitti`'s)::

    <date>/<drive>/image_0{2,3}/data/%010d.png                                            raw RGB
    <date>/calib_cam_to_cam.txt                                   S_rect_0k / P_rect_0k of image_02 and image_03
    data_depth_velodyne/<split>/<drive>/proj_depth/velodyne_raw/image_0k/%010d.png    input: simulated LiDAR scan
    data_depth_annotated/<split>/<drive>/proj_depth/groundtruth/image_0k/%010d.png    target, denser
    depth_selection/val_selection_cropped/{image,velodyne_raw,groundtruth_depth,intrinsics}/   crops of the val frames
    depth_selection/test_depth_completion_anonymous/{image,velodyne_raw,intrinsics}/%010d.*   crops, no ground truth

Depth PNGs are uint16 metres * 256, 0 = no point. The frames, the raw images and the ground truth are those of
:func:`segdep_d2.data.synthetic.kitti_writer.generate_kitti` for the same drives, size, seed, ``gt_density`` and
``max_lidar_depth`` (same scenes, same renderer, same sparsity draw), byte for byte, so both writers can fill one
KITTI root; the first ``unannotated`` frames of a drive have a raw image only, as there.

The input (``velodyne_raw``) is a simulated scan of a 64-beam LiDAR (:func:`lidar_scan_mask`): an HDL-64E-like
table of beam elevations (:data:`HDL64E_ELEVATIONS_DEG`, 32 beams every 1/3 degree from +2 down to -8.33 and 32
evenly down to -24.8) is crossed with azimuths every ``azimuth_step_deg`` (0.1728 degrees, the HDL-64E's at 10 Hz,
with a random phase per frame); a beam at elevation theta and azimuth phi projects to the column
``cx + fx tan(phi)`` and the row ``cy - fy tan(theta) / cos(phi)``, so in every column the points lie on one row
per beam, and each point takes the rendered depth of the pixel it lands on, where that pixel has geometry (no sky)
within the LiDAR's 120 m, plus Gaussian range noise (``lidar_noise_m``, 2 cm: the HDL-64E's accuracy), so the
input is not the target sampled (the real velodyne_raw is not the accumulated ground truth either). Simplifications: the LiDAR sits at the camera centre with the camera's axes (KITTI's is
0.27 m behind and 8 cm above, whence the real data's occlusion bleed-through, which is not simulated), and each
point is snapped to a pixel centre. The sensor's resolution follows the image size (``beam_stride`` /
``azimuth_step_deg`` None): every round(375 / height)-th beam and an azimuth step * 1242 / width, so that a smaller
image gets about the share of pixels the real scan covers at 1242 x 375 (4-5 %) on separate rows, not a denser map.

The ground truth is kitti_writer's: the rendered depth on a random ``gt_density`` share (25 %) of the pixels below
the LiDAR's upper field of view (+2 degrees), not sky, within ``max_lidar_depth``; the real accumulated ground truth
covers about 19.5 % of a frame, the real ``velodyne_raw`` 4.1 % (../shared/real_samples SOURCES.md c1).

Depth selection: the crop is the bottom-centre ``1216 x 352``-equivalent of the image (352 / 375 of the rows at the
bottom, 1216 / 1242 of the columns centred: KITTI's 23-row / 13-column offset at full size), K shifted by the
crop's offset in ``intrinsics/*.txt`` (9 numbers, row-major, as the real files). ``val_selection_cropped`` holds
every annotated frame of the ``selection_split`` drives; ``test_depth_completion_anonymous`` holds ``test_frames``
frames of a scene of its own (``TEST_SCENE``), camera ``image_02``.
"""

from __future__ import annotations

import os
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from .constants import cityscapes_tables
from .encoding import ClassStats, save_png
from .frame import render_frame
from .kitti_writer import (
    KITTI_DEFAULT_DRIVES,
    KITTI_SIZE,
    _check_drive_settings,
    _lidar_mask,
    kitti_depth_png,
    kitti_intrinsics,
    raw_frames,
)
from .layout import build_scene, stable_seed

__all__ = [
    "HDL64E_ELEVATIONS_DEG",
    "HDL64E_AZIMUTH_STEP_DEG",
    "LIDAR_MAX_RANGE",
    "SELECTION_SIZE",
    "TEST_SCENE",
    "lidar_resolution",
    "lidar_scan_mask",
    "selection_crop",
    "generate_kitti_completion",
]

# HDL-64E-like beam elevations (degrees, top to bottom): upper block 32 beams 1/3 degree apart from +2,
# lower block 32 beams evenly from -8.83 to -24.8 (the sensor's +2 .. -24.8 degree vertical field of view)
HDL64E_ELEVATIONS_DEG = np.concatenate([2.0 - np.arange(32) / 3.0, np.linspace(2.0 - 31 / 3.0 - 0.5, -24.8, 32)])
HDL64E_AZIMUTH_STEP_DEG = 0.1728  # HDL-64E horizontal resolution at 10 Hz (KITTI's rate)
LIDAR_MAX_RANGE = 120.0  # metres
SELECTION_SIZE = (352, 1216)  # height, width of KITTI's depth selection crops of 375 x 1242 images
TEST_SCENE = "kitti_depth_completion_test"  # the scene of the anonymous test frames
_CALIB_CAMERAS = ("image_02", "image_03")


def lidar_resolution(height: int, width: int):
    """(beam_stride, azimuth_step_deg) of the simulated sensor for an image of ``height`` x ``width``: the full
    HDL-64E (1, 0.1728) at KITTI's 375 x 1242 and above, every ``round(375 / height)``-th beam and a step scaled by
    ``1242 / width`` below, so that the scan covers about the same share of pixels at any size."""
    stride = max(1, int(round(KITTI_SIZE[0] / height)))
    return stride, HDL64E_AZIMUTH_STEP_DEG * max(1.0, KITTI_SIZE[1] / width)


def lidar_scan_mask(depth: np.ndarray, K, *, elevations_deg=HDL64E_ELEVATIONS_DEG,
                    azimuth_step_deg: float = HDL64E_AZIMUTH_STEP_DEG, azimuth_phase: float = 0.0,
                    max_range: float = LIDAR_MAX_RANGE) -> np.ndarray:
    """Pixels hit by a spinning multi-beam LiDAR at the camera centre, axes as the camera's (x right, y down,
    z forward), boolean (H, W).

    Beam ``theta`` (elevation, degrees, up positive) at azimuth ``phi = (j + azimuth_phase) * step`` (j integer,
    0 = straight ahead, positive to the right) points along ``(cos theta sin phi, -sin theta, cos theta cos phi)``
    and projects to column ``cx + fx tan phi``, row ``cy - fy tan theta / cos phi`` (rounded to the nearest pixel
    centre). A point is kept where the pixel has a finite depth ``> 0`` whose range (Euclidean, along the pixel's
    ray) is within ``max_range``; its depth is that pixel's depth.
    """
    depth = np.asarray(depth, np.float64)
    height, width = depth.shape
    K = np.asarray(K, np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    step = np.deg2rad(float(azimuth_step_deg))
    lo, hi = np.arctan((-0.5 - cx) / fx), np.arctan((width - 0.5 - cx) / fx)
    j = np.arange(np.floor(lo / step - azimuth_phase), np.ceil(hi / step - azimuth_phase) + 1)
    phi = (j + azimuth_phase) * step
    phi = phi[(phi > -np.pi / 2 + 1e-6) & (phi < np.pi / 2 - 1e-6)]
    cols = np.rint(cx + fx * np.tan(phi)).astype(np.int64)
    theta = np.deg2rad(np.asarray(elevations_deg, np.float64))
    rows = np.rint(cy - fy * np.tan(theta)[:, None] / np.cos(phi)[None, :]).astype(np.int64)
    cols = np.broadcast_to(cols[None, :], rows.shape)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    mask = np.zeros((height, width), bool)
    mask[rows[inside], cols[inside]] = True
    v, u = np.mgrid[0:height, 0:width]
    ray = np.sqrt(1.0 + ((u - cx) / fx) ** 2 + ((v - cy) / fy) ** 2)
    with np.errstate(invalid="ignore"):
        return mask & np.isfinite(depth) & (depth > 0) & (depth * ray <= max_range)


def selection_crop(height: int, width: int):
    """(top, left, crop_height, crop_width) of the depth-selection crop of a ``height`` x ``width`` image: KITTI's
    bottom-centre 1216 x 352 of 1242 x 375, scaled (at 375 x 1242: (23, 13, 352, 1216))."""
    crop_h = int(round(height * SELECTION_SIZE[0] / KITTI_SIZE[0]))
    crop_w = int(round(width * SELECTION_SIZE[1] / KITTI_SIZE[1]))
    return height - crop_h, (width - crop_w) // 2, crop_h, crop_w


def _intrinsics_text(K) -> str:
    """``fx 0.0 cx 0.0 fy cy 0.0 0.0 1.0``: 9 numbers row-major, as KITTI's depth-selection intrinsics files."""
    return " ".join(str(float(round(float(x), 6))) for x in np.asarray(K, np.float64).reshape(-1)) + "\n"


def _calib_text(K, height, width, baseline) -> str:
    """A KITTI raw ``calib_cam_to_cam.txt`` restricted to the rectified colour cameras (S_rect / P_rect of
    image_02 and image_03, the right camera ``baseline`` metres to the right)."""
    lines = ["calib_time: 01-Jan-2000 00:00:00"]
    for camera in _CALIB_CAMERAS:
        k = camera[-1]
        P = np.zeros((3, 4))
        P[:, :3] = K
        if camera == "image_03":
            P[0, 3] = -K[0, 0] * baseline
        lines.append(f"S_rect_0{k}: {float(width):.6e} {float(height):.6e}")
        lines.append(f"P_rect_0{k}: " + " ".join(f"{x:.6e}" for x in P.reshape(-1)))
    return "\n".join(lines) + "\n"


def _write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def generate_kitti_completion(out_dir: str, *, drives: Mapping[str, Sequence[str]] = KITTI_DEFAULT_DRIVES,
                              frames: int = 4, unannotated: int = 1, cameras: Sequence[str] = ("image_02",),
                              height: int = 188, width: int = 621, seed: int = 0, gt_density: float = 0.25,
                              max_lidar_depth: float = LIDAR_MAX_RANGE, beam_stride: Optional[int] = None,
                              azimuth_step_deg: Optional[float] = None, selection_split: Optional[str] = "val",
                              test_frames: int = 2, lidar_noise_m: float = 0.02) -> dict:
    """Write the KITTI depth completion layout (see the module docstring) under ``out_dir``.

    Args:
        drives: split (``train`` / ``val``) -> drive names (``<date>_drive_<NNNN>_sync``); "train:A+B,val:C" too.
        frames: raw frames per drive (0 .. frames-1); the first ``unannotated`` have neither input nor ground truth.
        cameras: ``image_02`` (left) and / or ``image_03`` (right).
        height, width: image size (default half of KITTI's 375 x 1242).
        gt_density: share of the pixels below the LiDAR's upper field of view that hold ground truth.
        max_lidar_depth: farthest ground truth (z, metres) and farthest LiDAR return (range, metres).
        beam_stride, azimuth_step_deg: the simulated LiDAR's resolution; None: :func:`lidar_resolution`.
        selection_split: the split whose annotated frames are cropped into ``val_selection_cropped``; None (or a
            split without drives): no ``val_selection_cropped``.
        test_frames: frames of ``test_depth_completion_anonymous`` (0: none).
        lidar_noise_m: standard deviation of the Gaussian noise added to each LiDAR point's depth (metres;
            the HDL-64E's range accuracy is about 2 cm); the ground truth stays exact. 0: noise-free points.

    Returns a summary dict (as the other writers'): ``frames`` (one dict per raw frame: ``split``, ``drive``,
    ``camera``, ``frame``, ``image``, ``velodyne_raw`` / ``groundtruth`` or None), ``selection`` and ``test``
    (``image``, ``velodyne_raw``, ``groundtruth_depth`` (selection), ``intrinsics``, ``K``), ``counts``,
    ``densities`` (mean valid share of ``velodyne_raw`` and ``groundtruth`` over the annotated frames),
    ``lidar`` (``beam_stride``, ``azimuth_step_deg``, ``elevations_deg``), ``class_fractions``, ``depth_range``.
    """
    start = time.perf_counter()
    drives = _check_drive_settings(drives, frames, unannotated, cameras)
    auto_stride, auto_step = lidar_resolution(height, width)
    beam_stride = auto_stride if beam_stride is None else int(beam_stride)
    azimuth_step_deg = auto_step if azimuth_step_deg is None else float(azimuth_step_deg)
    if beam_stride < 1 or not azimuth_step_deg > 0:
        raise ValueError(f"beam_stride {beam_stride} must be >= 1 and azimuth_step_deg {azimuth_step_deg} > 0")
    elevations = HDL64E_ELEVATIONS_DEG[::beam_stride]
    K = kitti_intrinsics(height, width)
    top, left, crop_h, crop_w = selection_crop(height, width)
    K_crop = K.copy()
    K_crop[0, 2] -= left
    K_crop[1, 2] -= top
    stats = ClassStats(cityscapes_tables().id_to_name)
    selection_root = os.path.join(out_dir, "depth_selection", "val_selection_cropped")
    written, selection, counts, density = [], [], {}, {"velodyne_raw": [], "groundtruth": []}
    calib_written = set()

    def scan(frame, *seed_items):
        """The scan as a uint16 PNG: the rendered depth at the scanned pixels plus the range noise."""
        rng = np.random.default_rng(stable_seed(seed, "kitti_completion", *seed_items))
        mask = lidar_scan_mask(frame.depth, K, elevations_deg=elevations, azimuth_step_deg=azimuth_step_deg,
                               azimuth_phase=float(rng.random()), max_range=max_lidar_depth)
        measured = frame.depth.astype(np.float64)
        if lidar_noise_m > 0:
            measured = np.where(mask, measured + rng.normal(0.0, lidar_noise_m, measured.shape), measured)
        return kitti_depth_png(measured, mask)

    for split, drive, date, camera, frame_index, frame, entry in raw_frames(
            out_dir, drives, frames, cameras, height, width, seed, K, counts):
        if date not in calib_written:
            baseline = build_scene(drive, seed, profile="vkitti2").stereo_baseline  # cached: raw_frames' layout
            _write_text(os.path.join(out_dir, date, "calib_cam_to_cam.txt"), _calib_text(K, height, width, baseline))
            calib_written.add(date)
        stats.add(frame.cityscapes_id, frame.depth)
        written.append(entry)
        if frame_index < unannotated:
            continue
        stem = f"{frame_index:010d}.png"
        # kitti_writer's generator and first draw: the same ground truth as generate_kitti's
        rng = np.random.default_rng(stable_seed(seed, "kitti", drive, camera, frame_index))
        gt = kitti_depth_png(frame.depth, _lidar_mask(frame.depth, frame.label, K, rng, gt_density, max_lidar_depth))
        sparse = scan(frame, drive, camera, frame_index)
        entry["groundtruth"] = os.path.join(out_dir, "data_depth_annotated", split, drive, "proj_depth",
                                            "groundtruth", camera, stem)
        entry["velodyne_raw"] = os.path.join(out_dir, "data_depth_velodyne", split, drive, "proj_depth",
                                             "velodyne_raw", camera, stem)
        save_png(gt, entry["groundtruth"])
        save_png(sparse, entry["velodyne_raw"])
        density["groundtruth"].append(float((gt > 0).mean()))
        density["velodyne_raw"].append(float((sparse > 0).mean()))
        if split == selection_split:
            crop = (slice(top, top + crop_h), slice(left, left + crop_w))
            base = f"{drive}_{{}}_{frame_index:010d}_{camera}"
            item = dict(
                image=os.path.join(selection_root, "image", base.format("image") + ".png"),
                velodyne_raw=os.path.join(selection_root, "velodyne_raw", base.format("velodyne_raw") + ".png"),
                groundtruth_depth=os.path.join(selection_root, "groundtruth_depth",
                                               base.format("groundtruth_depth") + ".png"),
                intrinsics=os.path.join(selection_root, "intrinsics", base.format("image") + ".txt"),
                K=K_crop.tolist(), drive=drive, camera=camera, frame=frame_index)
            save_png(np.ascontiguousarray(frame.rgb[crop]), item["image"])
            save_png(np.ascontiguousarray(sparse[crop]), item["velodyne_raw"])
            save_png(np.ascontiguousarray(gt[crop]), item["groundtruth_depth"])
            _write_text(item["intrinsics"], _intrinsics_text(K_crop))
            selection.append(item)
    test = []
    test_root = os.path.join(out_dir, "depth_selection", "test_depth_completion_anonymous")
    if test_frames:
        layout = build_scene(TEST_SCENE, seed, profile="vkitti2")
        for index in range(test_frames):
            frame = render_frame(layout, index, height=height, width=width, intrinsics=K, camera=0)
            crop = (slice(top, top + crop_h), slice(left, left + crop_w))
            sparse = scan(frame, TEST_SCENE, index)
            item = dict(image=os.path.join(test_root, "image", f"{index:010d}.png"),
                        velodyne_raw=os.path.join(test_root, "velodyne_raw", f"{index:010d}.png"),
                        intrinsics=os.path.join(test_root, "intrinsics", f"{index:010d}.txt"), K=K_crop.tolist(),
                        frame=index)
            save_png(np.ascontiguousarray(frame.rgb[crop]), item["image"])
            save_png(np.ascontiguousarray(sparse[crop]), item["velodyne_raw"])
            _write_text(item["intrinsics"], _intrinsics_text(K_crop))
            test.append(item)
    counts["depth_selection"] = {"val_selection_cropped": len(selection),
                                 "test_depth_completion_anonymous": len(test)}
    return dict(format="kitti_completion", root=os.path.abspath(out_dir), height=height, width=width,
                cameras=list(cameras), frames=written, selection=selection, test=test, counts=counts,
                densities={kind: float(np.mean(v)) if v else 0.0 for kind, v in density.items()},
                lidar=dict(beam_stride=beam_stride, azimuth_step_deg=azimuth_step_deg,
                           elevations_deg=[float(e) for e in elevations]),
                crop=dict(top=top, left=left, height=crop_h, width=crop_w),
                class_fractions=stats.fractions(), depth_range=(stats.depth_min, stats.depth_max),
                seconds=time.perf_counter() - start)
