"""KITTI depth completion: the official benchmark layout under ``$DETECTRON2_DATASETS/kitti/`` (the same root as
the KITTI depth prediction names of :mod:`.kitti`)::

    data_depth_velodyne/{train,val}/<drive>/proj_depth/velodyne_raw/image_0{2,3}/%010d.png    input
    data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_0{2,3}/%010d.png    target
    <date>/<drive>/image_0{2,3}/data/%010d.png                                KITTI raw images
    <date>/calib_cam_to_cam.txt                                               KITTI raw calibration (optional)
    depth_selection/val_selection_cropped/image/<drive>_image_<frame>_image_0k.png                  1216x352
    depth_selection/val_selection_cropped/velodyne_raw/<drive>_velodyne_raw_<frame>_image_0k.png
    depth_selection/val_selection_cropped/groundtruth_depth/<drive>_groundtruth_depth_<frame>_image_0k.png
    depth_selection/val_selection_cropped/intrinsics/<drive>_image_<frame>_image_0k.txt             9 numbers, K
    depth_selection/test_depth_completion_anonymous/{image,velodyne_raw}/%010d.png, intrinsics/%010d.txt

Every depth PNG is uint16 metres * 256, 0 = no point (``kitti_png256``). Records (``load_kitti_depth_completion``):
``file_name``, ``image_id``, ``height``, ``width``, ``sparse_depth_file_name``, ``sparse_depth_format``,
``depth_file_name`` + ``depth_format`` (all splits but ``test``), ``intrinsics`` (3x3 list) and, where a frame
has a drive, ``sequence_id`` ``<drive>/<camera>`` and ``frame_index`` (as :mod:`.kitti`'s records).

* ``train`` / ``val``: every ``velodyne_raw`` frame with ground truth and a raw image; frames without a raw image
  or without ground truth are skipped with a logged count. The input is looked for in ``data_depth_velodyne``,
  and, for a drive it lacks, in ``data_depth_annotated/<split>/<drive>/proj_depth/velodyne_raw`` (the merged
  tree that BTS / NLSPN set-ups make, and where :func:`.kitti.load_kitti_depth` reads ``sparse_depth_file_name``).
  ``intrinsics``: ``P_rect_0k`` of ``<date>/calib_cam_to_cam.txt`` (scaled to the image if its ``S_rect_0k``
  differs); without that file the records have no ``intrinsics`` (logged).
* ``val_selection``: ``depth_selection/val_selection_cropped`` (1000 frames of the val drives on the real data),
  ``intrinsics`` from its txt files (the K of the crop: P_rect shifted by the crop's offset).
* ``test``: ``depth_selection/test_depth_completion_anonymous`` (1000 frames, no ground truth, no drive names:
  ``cameras`` does not apply there).

The image size is read from one image header per folder (every frame of a drive, and every crop of a selection
folder, has the same size); :func:`segdep_d2.data.depth_io.read_sparse_depth` / ``read_depth`` then reject a depth
map of another size, naming the file.

Registered names (:func:`register_all_kitti_completion`, nothing read until loaded):
``kitti_depth_completion_{train,val,val_selection,test}``, metadata as the KITTI depth names
(:func:`.kitti.kitti_depth_metadata`: depth range (1e-3, 80], the Cityscapes classes) with
``evaluator_type "depth_completion"`` and ``sparse_depth_format "kitti_png256"``.
"""
import logging
import os
import re

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog

from .kitti import (
    KITTI_DEPTH_FORMAT,
    _date_of,
    _ImageSizes,
    _listing,
    _record,
    _require_dir,
    kitti_depth_metadata,
)

__all__ = [
    "KITTI_COMPLETION_SPLITS",
    "KITTI_SPARSE_DEPTH_FORMAT",
    "SELECTION_DIRS",
    "read_calib_intrinsics",
    "read_intrinsics_txt",
    "load_kitti_depth_completion",
    "kitti_completion_metadata",
    "register_kitti_depth_completion",
    "register_all_kitti_completion",
]

logger = logging.getLogger(__name__)

KITTI_COMPLETION_SPLITS = ("train", "val", "val_selection", "test")
KITTI_SPARSE_DEPTH_FORMAT = KITTI_DEPTH_FORMAT  # velodyne_raw PNGs: metres * 256, 0 = no point
SELECTION_DIRS = {
    "val_selection": os.path.join("depth_selection", "val_selection_cropped"),
    "test": os.path.join("depth_selection", "test_depth_completion_anonymous"),
}
CALIB_FILE = "calib_cam_to_cam.txt"
_SELECTION_IMAGE = re.compile(r"^(\d{4}_\d{2}_\d{2}_drive_\d{4}_sync)_image_(\d{10})_(image_0[0-3])\.png$")
_TEST_IMAGE = re.compile(r"^(\d+)\.png$")
_HINT = "see datasets/README.md"


def _cached_listing():
    cache = {}
    return lambda path: cache[path] if path in cache else cache.setdefault(path, _listing(path))  # noqa: E731


def _numbers(path, text, what):
    try:
        values = [float(v) for v in text.split()]
    except ValueError as e:
        raise ValueError(f"{path}: {what} is not a list of numbers ({e})") from e
    if not all(np.isfinite(values)):
        raise ValueError(f"{path}: {what} has non-finite numbers")
    return values


def read_calib_intrinsics(calib_file, camera, size=None):
    """3x3 K (nested lists) of ``camera`` (``image_0k``) from a KITTI raw ``calib_cam_to_cam.txt``: the left 3x3
    of ``P_rect_0k``, the rectified projection the ``image_0k/data`` images follow. ``size`` (height, width) of
    the images: when the file's ``S_rect_0k`` (width height) differs, K is scaled to it.

    Raises FileNotFoundError (no file) or ValueError (no / malformed ``P_rect_0k``), naming the file."""
    if not os.path.isfile(calib_file):
        raise FileNotFoundError(f"KITTI calibration file not found: {calib_file}")
    k = camera[-1]
    entries = {}
    with open(calib_file) as f:
        for line in f:
            key, sep, value = line.partition(":")
            if sep:
                entries[key.strip()] = value
    key = f"P_rect_0{k}"
    if key not in entries:
        raise ValueError(f"{calib_file}: no '{key}' line (the rectified projection of {camera})")
    P = _numbers(calib_file, entries[key], key)
    if len(P) != 12:
        raise ValueError(f"{calib_file}: {key} has {len(P)} numbers, expected 12 (a 3x4 matrix, row-major)")
    K = np.array(P, dtype=np.float64).reshape(3, 4)[:, :3]
    rect = f"S_rect_0{k}"
    if size is not None and rect in entries:
        S = _numbers(calib_file, entries[rect], rect)
        if len(S) == 2 and S[0] > 0 and S[1] > 0 and (round(S[1]), round(S[0])) != tuple(size):
            height, width = size
            K[0] *= width / S[0]
            K[1] *= height / S[1]
    return K.tolist()


def read_intrinsics_txt(path):
    """3x3 K (nested lists) from a depth-selection ``intrinsics/*.txt``: 9 numbers, row-major, last row 0 0 1.

    Raises FileNotFoundError or ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"KITTI intrinsics file not found: {path}")
    with open(path) as f:
        values = _numbers(path, f.read(), "the intrinsics")
    if len(values) != 9:
        raise ValueError(f"{path}: {len(values)} numbers, expected the 9 of a 3x3 K (row-major)")
    K = np.array(values, dtype=np.float64).reshape(3, 3)
    if not np.allclose(K[2], (0.0, 0.0, 1.0)) or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"{path}: not a camera matrix (expected fx > 0, fy > 0 and a last row 0 0 1): {values}")
    return K.tolist()


def _load_drives(root, split, cameras, raw_root):
    """train / val: velodyne_raw frames with ground truth and a raw image."""
    velodyne = os.path.join(root, "data_depth_velodyne", split)
    annotated = os.path.join(root, "data_depth_annotated", split)
    sparse_roots = [r for r in (velodyne, annotated) if os.path.isdir(r)]
    if not sparse_roots:
        raise FileNotFoundError(
            f"KITTI depth completion input ({split}) not found: {velodyne}. Expected the official "
            f"data_depth_velodyne.zip unzipped as {velodyne}/<drive>/proj_depth/velodyne_raw/image_02/<frame>.png; "
            f"set $DETECTRON2_DATASETS to the folder that holds 'kitti/' ({_HINT})"
        )
    _require_dir(
        annotated, f"depth annotations ({split})",
        f"Expected the official data_depth_annotated.zip unzipped as {annotated}/<drive>/proj_depth/groundtruth/"
        "image_02/<frame>.png",
    )
    listings = _cached_listing()
    sizes = _ImageSizes()
    calib_cache = {}
    drives = sorted(set().union(*(listings(r) for r in sparse_roots)))
    records, without_image, without_gt, without_calib = [], {}, {}, set()
    for drive in drives:
        for camera in cameras:
            sparse_dir = next((d for d in (os.path.join(r, drive, "proj_depth", "velodyne_raw", camera)
                                           for r in sparse_roots) if os.path.isdir(d)), None)
            if sparse_dir is None:
                continue
            gt_dir = os.path.join(annotated, drive, "proj_depth", "groundtruth", camera)
            raw_dir = os.path.join(raw_root, _date_of(drive), drive, camera, "data")
            calib_file = os.path.join(raw_root, _date_of(drive), CALIB_FILE)
            for name in sorted(n for n in listings(sparse_dir) if n.endswith(".png")):
                if name not in listings(gt_dir):
                    without_gt[gt_dir] = without_gt.get(gt_dir, 0) + 1
                    continue
                if name not in listings(raw_dir):
                    without_image[raw_dir] = without_image.get(raw_dir, 0) + 1
                    continue
                image_file = os.path.join(raw_dir, name)
                record = _record(image_file, drive, camera, int(name[:-4]), sizes)
                record.update(
                    sparse_depth_file_name=os.path.join(sparse_dir, name),
                    sparse_depth_format=KITTI_SPARSE_DEPTH_FORMAT,
                    depth_file_name=os.path.join(gt_dir, name), depth_format=KITTI_DEPTH_FORMAT,
                )
                if os.path.isfile(calib_file):
                    size = (record["height"], record["width"])
                    if (calib_file, camera, size) not in calib_cache:
                        calib_cache[calib_file, camera, size] = read_calib_intrinsics(calib_file, camera, size)
                    record["intrinsics"] = [list(row) for row in calib_cache[calib_file, camera, size]]
                else:
                    without_calib.add(calib_file)
                records.append(record)
    where = f"{velodyne if velodyne in sparse_roots else annotated}/<drive>/proj_depth/velodyne_raw"
    if without_gt:
        logger.warning(
            f"KITTI depth completion {split}: {sum(without_gt.values())} velodyne_raw frames skipped, they have no "
            f"ground truth (e.g. in {next(iter(without_gt))})"
        )
    if without_image:
        logger.warning(
            f"KITTI depth completion {split}: {sum(without_image.values())} frames skipped, their raw image is "
            f"missing (e.g. in {next(iter(without_image))}; KITTI raw unzips to <root>/<date>/<drive>/image_02/data)"
        )
    if without_calib:
        logger.warning(
            f"KITTI depth completion {split}: no {CALIB_FILE} for {len(without_calib)} recording date(s) (e.g. "
            f"{sorted(without_calib)[0]}): their records have no 'intrinsics' (it comes with the KITTI raw "
            "calibration zip, <date>_calib.zip)"
        )
    if not records:
        raise FileNotFoundError(
            f"No KITTI depth completion frames for split {split!r}: no velodyne_raw frame under {where}/"
            f"{{{','.join(cameras)}}} has both its ground truth in {annotated}/<drive>/proj_depth/groundtruth/"
            f"<camera>/ and its raw image at {raw_root}/<date>/<drive>/<camera>/data/<frame>.png ({_HINT})"
        )
    return records


def _missing_error(missing, folder, what):
    return FileNotFoundError(
        f"{len(missing)} image(s) of {folder} have no {what} (first: {missing[0]}); the depth_selection zip "
        f"seems incomplete ({_HINT})"
    )


def _load_selection(root, split, cameras):
    folder = os.path.join(root, SELECTION_DIRS[split])
    image_dir = os.path.join(folder, "image")
    zip_name = "data_depth_selection.zip"
    _require_dir(image_dir, f"depth selection images ({split})",
                 f"Expected the official {zip_name} unzipped as {root}/depth_selection/")
    names = sorted(n for n in _listing(image_dir) if n.endswith(".png"))
    sizes = _ImageSizes()
    records, missing = [], {}
    with_gt = split != "test"
    for name in names:
        if with_gt:
            m = _SELECTION_IMAGE.match(name)
            if m is None or m.group(3) not in cameras:
                continue
            drive, frame, camera = m.groups()
            sparse_name = f"{drive}_velodyne_raw_{frame}_{camera}.png"
            record = _record(os.path.join(image_dir, name), drive, camera, int(frame), sizes)
        else:
            m = _TEST_IMAGE.match(name)
            if m is None:
                continue
            sparse_name = name
            height, width = sizes(os.path.join(image_dir, name))
            record = {"file_name": os.path.join(image_dir, name), "image_id": f"kitti_completion_test_{name[:-4]}",
                      "height": height, "width": width}
        files = {"velodyne_raw": os.path.join(folder, "velodyne_raw", sparse_name),
                 "intrinsics": os.path.join(folder, "intrinsics", name[:-4] + ".txt")}
        if with_gt:
            files["groundtruth_depth"] = os.path.join(
                folder, "groundtruth_depth", f"{drive}_groundtruth_depth_{frame}_{camera}.png")
        absent = [kind for kind, path in files.items() if not os.path.isfile(path)]
        for kind in absent:
            missing.setdefault(kind, []).append(files[kind])
        if absent:
            continue
        record.update(sparse_depth_file_name=files["velodyne_raw"], sparse_depth_format=KITTI_SPARSE_DEPTH_FORMAT,
                      intrinsics=read_intrinsics_txt(files["intrinsics"]))
        if with_gt:
            record.update(depth_file_name=files["groundtruth_depth"], depth_format=KITTI_DEPTH_FORMAT)
        records.append(record)
    if missing:
        kind, paths = next(iter(missing.items()))
        raise _missing_error(paths, image_dir, f"{kind} file")
    if not records:
        expected = ("<drive>_image_<frame>_{" + ",".join(cameras) + "}.png") if with_gt else "<frame>.png"
        raise FileNotFoundError(
            f"No KITTI depth completion frames for split {split!r}: no image named {expected} in {image_dir} "
            f"({_HINT})"
        )
    return records


def load_kitti_depth_completion(root, split, cameras=("image_02",), raw_root=None):
    """Records of one split of the KITTI depth completion benchmark (see the module docstring).

    Args:
        root: the KITTI root (``$DETECTRON2_DATASETS/kitti``).
        split: ``train``, ``val`` (``data_depth_velodyne`` + ``data_depth_annotated`` + raw images),
            ``val_selection`` (``depth_selection/val_selection_cropped``) or ``test``
            (``depth_selection/test_depth_completion_anonymous``, no ground truth).
        cameras: ``image_02`` (left colour camera) and / or ``image_03``; ignored for ``test`` (anonymous names).
        raw_root: where ``<date>/<drive>/image_0k/data`` and ``<date>/calib_cam_to_cam.txt`` lie, default ``root``.
    """
    if split not in KITTI_COMPLETION_SPLITS:
        raise ValueError(f"KITTI depth completion split {split!r}; expected one of {KITTI_COMPLETION_SPLITS}")
    cameras = tuple(cameras)
    if split in SELECTION_DIRS:
        records = _load_selection(root, split, cameras)
    else:
        records = _load_drives(root, split, cameras, root if raw_root is None else raw_root)
    logger.info(f"KITTI depth completion {split}: {len(records)} frames")
    return records


def kitti_completion_metadata():
    """:func:`.kitti.kitti_depth_metadata` (depth range, Cityscapes classes) with ``evaluator_type
    "depth_completion"`` and ``sparse_depth_format``."""
    return dict(kitti_depth_metadata(), evaluator_type="depth_completion",
                sparse_depth_format=KITTI_SPARSE_DEPTH_FORMAT)


def register_kitti_depth_completion(name, root, split, cameras=("image_02",)):
    cameras = tuple(cameras)
    DatasetCatalog.register(name, lambda: load_kitti_depth_completion(root, split, cameras))
    MetadataCatalog.get(name).set(dataset_root=root, split=split, cameras=cameras,
                                  has_ground_truth=split != "test", **kitti_completion_metadata())


def register_all_kitti_completion(datasets_root):
    """``kitti_depth_completion_{train,val,val_selection,test}`` under ``<datasets_root>/kitti`` (nothing is
    read until a name is loaded)."""
    root = os.path.join(datasets_root, "kitti")
    for split in KITTI_COMPLETION_SPLITS:
        register_kitti_depth_completion(f"kitti_depth_completion_{split}", root, split)
