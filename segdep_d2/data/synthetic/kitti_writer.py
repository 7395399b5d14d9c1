"""KITTI writer: the depth benchmark (``data_depth_annotated`` + KITTI raw images), the semantics benchmark
(``data_semantics/training/{image_2,semantic,semantic_rgb,instance}``) and an Eigen-style test split file.

Layout written under ``out_dir`` (the official unzip layout, DESIGN.md §3)::

    <date>/<drive>/image_0{2,3}/data/%010d.png                       raw RGB (cameras chosen by ``cameras``)
    data_depth_annotated/<split>/<drive>/proj_depth/groundtruth/image_0k/%010d.png   uint16 metres * 256
    data_depth_annotated/<split>/<drive>/proj_depth/velodyne_raw/image_0k/%010d.png  same encoding, sparser
    data_semantics/training/image_2/%06d_10.png                       RGB
    data_semantics/training/semantic/%06d_10.png                      uint8 Cityscapes label ids
    data_semantics/training/semantic_rgb/%06d_10.png                  Cityscapes colours
    data_semantics/training/instance/%06d_10.png                      uint16 label id * 256 + instance (1-based)
    eigen_test_files.txt                                              BTS-style lines of the test drives

Like the real benchmark, the first ``unannotated`` frames of every drive have a raw image but no ground truth
(KITTI's accumulated ground truth misses the first / last 5 frames of a drive), so the Eigen file lists frames
with and without ground truth. Depth is sparse as KITTI's: nothing above the LiDAR's upper field of view (2 degrees
above the optical axis), nothing on the sky or beyond ``max_lidar_depth``, and of the rest a random ``gt_density``
share (``sparse_density`` for ``velodyne_raw``). Sparsity draws come from their own generators, seeded by
(seed, drive, camera, frame), so this writer never changes the other writers' output.
"""

from __future__ import annotations

import os
import time
from typing import Dict, Mapping, Sequence

import numpy as np

from .constants import CLASS_INDEX, cityscapes_tables
from .encoding import ClassStats, save_png
from .frame import render_frame
from .layout import build_scene, stable_seed

KITTI_SIZE = (375, 1242)  # height, width of KITTI's rectified colour images (2011_09_26)
KITTI_K = (721.5377, 721.5377, 609.5593, 172.854)  # P_rect_02 of 2011_09_26: fx, fy, cx, cy
KITTI_DEFAULT_DRIVES = {"train": ("2011_09_26_drive_0001_sync",), "val": ("2011_09_26_drive_0002_sync",)}
KITTI_CAMERAS = {"image_02": 0, "image_03": 1}  # KITTI camera folder -> stereo camera of the layout
LIDAR_UP_DEG = 2.0  # the HDL-64E sees about 2 degrees above the horizon: rows above that have no depth

__all__ = ["KITTI_K", "KITTI_SIZE", "KITTI_DEFAULT_DRIVES", "kitti_intrinsics", "kitti_depth_png", "generate_kitti"]


def kitti_intrinsics(height: int, width: int) -> np.ndarray:
    """3x3 K of KITTI's left colour camera (P_rect_02, 1242x375) scaled to ``height`` x ``width``."""
    fx, fy, cx, cy = KITTI_K
    sx, sy = width / KITTI_SIZE[1], height / KITTI_SIZE[0]
    return np.array([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1.0]])


def kitti_depth_png(depth: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Metres -> KITTI depth PNG values ``round(metres * 256)`` on ``keep`` pixels, 0 elsewhere (invalid)."""
    depth = np.asarray(depth, np.float64)
    keep = keep & np.isfinite(depth) & (depth > 0)
    value = np.clip(np.round(np.where(keep, depth, 0.0) * 256.0), 0, 65535)
    return np.where(keep & (value >= 1), value, 0).astype(np.uint16)


def _lidar_mask(depth, label, K, rng, density, max_depth):
    """KITTI-like sparse sampling: below the LiDAR's upper field of view, not sky, within range, random share."""
    height = depth.shape[0]
    top = int(np.clip(np.floor(K[1, 2] - K[1, 1] * np.tan(np.deg2rad(LIDAR_UP_DEG))), 0, height))
    rows = (np.arange(height) >= top)[:, None]
    return (rows & (label != CLASS_INDEX["sky"]) & np.isfinite(depth) & (depth <= max_depth)
            & (rng.random(depth.shape) < density))


def _parse_drives(drives) -> Dict[str, Sequence[str]]:
    """{"train": [...], "val": [...]} or "train:2011_09_26_drive_0001_sync+...,val:..." -> split -> drives."""
    if isinstance(drives, str):
        out = {}
        for part in filter(None, (p.strip() for p in drives.split(","))):
            split, _, names = part.partition(":")
            out[split] = tuple(n for n in names.split("+") if n)
        drives = out
    for split, names in drives.items():
        for name in names:
            if len(name) < 11 or name[4] != "_" or name[7] != "_" or name[10] != "_":
                raise ValueError(f"drive {name!r} of split {split!r}: expected <YYYY_MM_DD>_drive_<NNNN>_sync")
    return {split: tuple(names) for split, names in drives.items()}


def generate_kitti(out_dir: str, *, drives: Mapping[str, Sequence[str]] = KITTI_DEFAULT_DRIVES,
                   frames: int = 4, unannotated: int = 1, cameras: Sequence[str] = ("image_02",),
                   semantic_frames: int = 3, height: int = 94, width: int = 310, seed: int = 0,
                   gt_density: float = 0.25, sparse_density: float = 0.05, max_lidar_depth: float = 120.0,
                   eigen_split: str = "val", prepare_semantics: bool = True) -> dict:
    """Write a KITTI-layout dataset (depth benchmark + raw images + semantics) under ``out_dir``.

    Args:
        drives: split (``train`` / ``val`` of ``data_depth_annotated``) -> drive names
            (``<date>_drive_<NNNN>_sync``); "train:A+B,val:C" also works.
        frames: raw frames per drive (0 .. frames-1); the first ``unannotated`` have no ground truth.
        cameras: KITTI camera folders to write (``image_02`` left, ``image_03`` right).
        semantic_frames: images in ``data_semantics/training`` (frame ``%06d_10``); 0 writes none.
        eigen_split: the split whose drives ``eigen_test_files.txt`` lists (every raw frame, with or without
            ground truth), or None for no file.
        prepare_semantics: also write the trainId PNGs that ``kitti_sem_seg_train`` reads
            (:func:`segdep_d2.data.datasets.kitti.prepare_kitti_semantics`), as a user does once.

    Returns a summary dict: ``frames`` (one dict per raw frame: ``split``, ``drive``, ``camera``, ``frame``,
    ``image``, ``groundtruth`` / ``velodyne_raw`` or None), ``semantics`` (``image``, ``semantic``, ``instance``,
    ``layout``), ``eigen_file``, ``counts``, ``class_fractions``, ``depth_range``.
    """
    start = time.perf_counter()
    drives = _check_drive_settings(drives, frames, unannotated, cameras)
    K = kitti_intrinsics(height, width)
    tables = cityscapes_tables()
    stats = ClassStats(tables.id_to_name)
    written, counts, eigen_lines = [], {}, []
    for split, drive, date, camera, frame_index, frame, entry in raw_frames(
            out_dir, drives, frames, cameras, height, width, seed, K, counts):
        stem = f"{frame_index:010d}.png"
        if frame_index >= unannotated:
            rng = np.random.default_rng(stable_seed(seed, "kitti", drive, camera, frame_index))
            proj = os.path.join(out_dir, "data_depth_annotated", split, drive, "proj_depth")
            for kind, density in (("groundtruth", gt_density), ("velodyne_raw", sparse_density)):
                keep = _lidar_mask(frame.depth, frame.label, K, rng, density, max_lidar_depth)
                entry[kind] = os.path.join(proj, kind, camera, stem)
                save_png(kitti_depth_png(frame.depth, keep), entry[kind])
        written.append(entry)
        stats.add(frame.cityscapes_id, frame.depth)
        if split == eigen_split and camera == "image_02":
            eigen_lines.append(_bts_line(date, drive, split, camera, stem, entry["groundtruth"], K))
    semantics = _write_semantics(out_dir, semantic_frames, height, width, K, seed, stats)
    eigen_file = None
    if eigen_split is not None and eigen_lines:
        eigen_file = os.path.join(out_dir, "eigen_test_files.txt")
        with open(eigen_file, "w") as fh:
            fh.write("".join(line + "\n" for line in eigen_lines))
    if semantics and prepare_semantics:
        from segdep_d2.data.datasets.kitti import prepare_kitti_semantics  # the user's one-off preparation

        prepare_kitti_semantics(out_dir)
    return dict(format="kitti", root=os.path.abspath(out_dir), height=height, width=width, cameras=list(cameras),
                frames=written, semantics=semantics, eigen_file=eigen_file,
                counts=dict(counts, semantics={"training": len(semantics)}),
                class_fractions=stats.fractions(), depth_range=(stats.depth_min, stats.depth_max),
                seconds=time.perf_counter() - start)


def _check_drive_settings(drives, frames, unannotated, cameras):
    """The parsed ``drives`` ({split: [drive, ...]}), after checking ``unannotated`` and ``cameras``."""
    if not 0 <= unannotated <= frames:
        raise ValueError(f"unannotated={unannotated} must be within 0..frames={frames}")
    for camera in cameras:
        if camera not in KITTI_CAMERAS:
            raise ValueError(f"camera {camera!r}; expected one of {sorted(KITTI_CAMERAS)}")
    return _parse_drives(drives)


def raw_frames(out_dir, drives, frames, cameras, height, width, seed, K, counts):
    """Render and write the KITTI raw images of every drive (``<date>/<drive>/image_0k/data/%010d.png``), in
    order (split, drive, frame, camera), filling ``counts[split][drive]``; yields ``(split, drive, date, camera,
    frame_index, frame, entry)`` with ``entry`` the summary dict of the frame (``groundtruth`` /
    ``velodyne_raw`` None, for the caller to fill). Shared by the depth and the depth completion writers, so
    their raw images are the same bytes."""
    for split, names in drives.items():
        counts[split] = {}
        for drive in names:
            date = drive[:10]
            layout = build_scene(drive, seed, profile="vkitti2")
            counts[split][drive] = frames
            for frame_index in range(frames):
                for camera in cameras:
                    frame = render_frame(layout, frame_index, height=height, width=width, intrinsics=K,
                                         camera=KITTI_CAMERAS[camera])
                    stem = f"{frame_index:010d}.png"
                    entry = dict(split=split, drive=drive, camera=camera, frame=frame_index, layout=drive,
                                 image=os.path.join(out_dir, date, drive, camera, "data", stem),
                                 groundtruth=None, velodyne_raw=None)
                    save_png(frame.rgb, entry["image"])
                    yield split, drive, date, camera, frame_index, frame, entry


def _bts_line(date, drive, split, camera, stem, groundtruth, K) -> str:
    """``<date>/<drive>/image_02/data/<frame>.png <drive>/proj_depth/groundtruth/image_02/<frame>.png <fx>``
    (BTS's eigen_test_files_with_gt.txt; ``None`` where the frame has no ground truth)."""
    image = f"{date}/{drive}/{camera}/data/{stem}"
    gt = f"{drive}/proj_depth/groundtruth/{camera}/{stem}" if groundtruth else "None"
    return f"{image} {gt} {K[0, 0]:.4f}"


def _write_semantics(out_dir, count, height, width, K, seed, stats):
    """``data_semantics/training``: frame 10 of one scene per image, labels in Cityscapes label ids."""
    tables = cityscapes_tables()
    training = os.path.join(out_dir, "data_semantics", "training")
    written = []
    for index in range(count):
        name = f"kitti_semantics_{index:06d}"
        frame = render_frame(build_scene(name, seed, profile="vkitti2"), 10, height=height, width=width,
                             intrinsics=K)
        stem = f"{index:06d}_10.png"
        ids = frame.cityscapes_id
        thing = tables.id_has_instances[ids] & (frame.track_id >= 0)
        # instances numbered 1..n per class and image, as in KITTI's files (so they stay below 256)
        instance = ids.astype(np.uint16) * 256
        for label_id in np.unique(ids[thing]):
            mask = thing & (ids == label_id)
            _, index_of_track = np.unique(frame.track_id[mask], return_inverse=True)
            instance[mask] += (index_of_track.reshape(-1) + 1).astype(np.uint16)
        paths = {kind: os.path.join(training, kind, stem)
                 for kind in ("image_2", "semantic", "semantic_rgb", "instance")}
        save_png(frame.rgb, paths["image_2"])
        save_png(ids, paths["semantic"])
        save_png(tables.id_to_color[ids], paths["semantic_rgb"])
        save_png(instance, paths["instance"])
        written.append(dict(image=paths["image_2"], semantic=paths["semantic"], instance=paths["instance"],
                            layout=name, frame=10))
        stats.add(ids, frame.depth)
    return written
