"""KITTI: the depth prediction benchmark (+ KITTI raw images), the Eigen test split, and the semantics
benchmark, read from the official unzip layout under ``$DETECTRON2_DATASETS/kitti/`` (DESIGN.md §3)::

    data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_0{2,3}/%010d.png
    data_depth_annotated/{train,val}/<drive>/proj_depth/velodyne_raw/image_0{2,3}/%010d.png  (sparse input)
    <date>/<drive>/image_0{2,3}/data/%010d.png          KITTI raw (e.g. 2011_09_26/2011_09_26_drive_0002_sync/)
    eigen_test_files.txt                                the Eigen test split, placed there by the user
    data_semantics/training/{image_2,semantic,instance}/%06d_10.png

Depth names (records: ``file_name``, ``image_id``, ``height``, ``width``, ``depth_file_name``,
``depth_format "kitti_png256"``, ``sparse_depth_file_name`` where a ``velodyne_raw`` file exists,
``sequence_id`` ``<drive>/<camera>`` and ``frame_index``):

* ``kitti_depth_{train,val}``: every annotated frame of that split whose raw image exists.
* ``kitti_depth_eigen_test``: every frame the split file lists (697 on the real data); the frames
  without ground truth (45 of them) are listed without the depth keys.

``kitti_sem_seg_train``: the 200 ``data_semantics/training`` images. Their ``semantic`` PNGs hold
Cityscapes *label ids*; a stock detectron2 DatasetMapper or SemSegEvaluator would read those ids as
class ids, so the registered records point at trainId PNGs (19 classes, 255 = ignore) that
:func:`prepare_kitti_semantics` writes once (``python datasets/prepare_kitti_semantics.py``), the way
cityscapesscripts' ``createTrainIdLabelImgs`` does for Cityscapes. The conversion decodes through
:func:`segdep_d2.data.label_io.read_sem_seg` (``label_format "cityscapes_label_ids"``). Instances
(``instance`` PNGs, labelId * 256 + instance) are not read yet.
"""
import argparse
import logging
import os
import re
import sys

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES
from PIL import Image

from ...utils.files import png_writer, replace_into
from ..label_io import read_sem_seg
from .metadata import depth_panoptic_metadata

__all__ = [
    "KITTI_DEPTH_RANGE",
    "EIGEN_SPLIT_FILES",
    "PREPARE_COMMAND",
    "parse_eigen_split",
    "load_kitti_depth",
    "load_kitti_eigen",
    "load_kitti_semantics",
    "prepare_kitti_semantics",
    "kitti_depth_metadata",
    "kitti_sem_seg_metadata",
    "register_kitti_depth",
    "register_kitti_eigen",
    "register_kitti_sem_seg",
    "register_all_kitti",
]

logger = logging.getLogger(__name__)

KITTI_DEPTH_RANGE = (1e-3, 80.0)  # the usual 80 m cap of KITTI depth evaluation
KITTI_DEPTH_FORMAT = "kitti_png256"
KITTI_EVAL_CROP = "garg"  # the crop the Eigen-split literature reports with (TEST.DEPTH.CROP)
# split file names looked for under the KITTI root, in order (monodepth / BTS / AdaBins / monodepth2 names)
EIGEN_SPLIT_FILES = (
    "eigen_test_files.txt", "eigen_test_files_with_gt.txt", "kitti_eigen_test_files_with_gt.txt", "test_files.txt",
)
TRAIN_ID_DIRNAME = "semantic_trainid"  # prepared trainId PNGs, beside data_semantics/training/semantic
PREPARE_COMMAND = "python datasets/prepare_kitti_semantics.py"
_DRIVE = re.compile(r"^(\d{4}_\d{2}_\d{2})_drive_\d{4}_sync$")
_IMAGE_PATH = re.compile(
    r"^(?:.*/)?(\d{4}_\d{2}_\d{2})/(\d{4}_\d{2}_\d{2}_drive_\d{4}_sync)/(image_0[0-3])/data/(\d+)\.(png|jpg|jpeg)$",
    re.IGNORECASE,
)
_MONODEPTH2_SIDE = {"l": "image_02", "r": "image_03"}


def _require_dir(path, what, hint):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"KITTI {what} not found: {path}. {hint} (see datasets/README.md)")


def _listing(path):
    return set(os.listdir(path)) if os.path.isdir(path) else set()


def _date_of(drive):
    m = _DRIVE.match(drive)
    return m.group(1) if m else drive[:10]


class _ImageSizes:
    """(height, width) per raw folder: one header read per (drive, camera), every frame of a drive has the
    same size (sizes differ between recording dates: 1242x375, 1241x376, 1224x370, ...)."""

    def __init__(self):
        self._sizes = {}

    def __call__(self, image_file):
        folder = os.path.dirname(image_file)
        if folder not in self._sizes:
            with Image.open(image_file) as im:  # reads the header only
                self._sizes[folder] = (im.height, im.width)
        return self._sizes[folder]


def _depth_keys(annotated_root, drive, camera, name, listings):
    """depth_file_name / depth_format / sparse_depth_file_name of one frame, {} without ground truth."""
    proj = os.path.join(annotated_root, drive, "proj_depth")
    keys = {}
    gt_dir = os.path.join(proj, "groundtruth", camera)
    if name in listings(gt_dir):
        keys.update(depth_file_name=os.path.join(gt_dir, name), depth_format=KITTI_DEPTH_FORMAT)
        sparse_dir = os.path.join(proj, "velodyne_raw", camera)
        if name in listings(sparse_dir):
            keys["sparse_depth_file_name"] = os.path.join(sparse_dir, name)
    return keys


def _record(image_file, drive, camera, frame_index, sizes):
    height, width = sizes(image_file)
    return {
        "file_name": image_file,
        "image_id": f"{drive}_{camera}_{frame_index:010d}",
        "height": height,
        "width": width,
        "sequence_id": f"{drive}/{camera}",
        "frame_index": frame_index,
    }


def load_kitti_depth(root, split, cameras=("image_02",), raw_root=None):
    """Records of every annotated frame of ``data_depth_annotated/<split>`` whose raw image exists.

    Args:
        root: the KITTI root (``$DETECTRON2_DATASETS/kitti``).
        split: ``"train"`` or ``"val"`` (a folder of ``data_depth_annotated``).
        cameras: ``image_02`` (left colour camera) and / or ``image_03``.
        raw_root: where ``<date>/<drive>/image_0k/data`` lie, default ``root``.
    """
    raw_root = root if raw_root is None else raw_root
    annotated = os.path.join(root, "data_depth_annotated", split)
    _require_dir(
        annotated, f"depth annotations ({split})",
        "Expected the official data_depth_annotated.zip unzipped as "
        f"{annotated}/<drive>/proj_depth/groundtruth/image_02/<frame>.png; set $DETECTRON2_DATASETS to the folder "
        "that holds 'kitti/'",
    )
    cache = {}
    listings = lambda path: cache[path] if path in cache else cache.setdefault(path, _listing(path))  # noqa: E731
    sizes = _ImageSizes()
    records, without_image = [], {}
    for drive in sorted(os.listdir(annotated)):
        for camera in cameras:
            gt_dir = os.path.join(annotated, drive, "proj_depth", "groundtruth", camera)
            names = sorted(n for n in listings(gt_dir) if n.endswith(".png"))
            raw_dir = os.path.join(raw_root, _date_of(drive), drive, camera, "data")
            raw_names = listings(raw_dir)
            for name in names:
                if name not in raw_names:
                    without_image.setdefault(raw_dir, 0)
                    without_image[raw_dir] += 1
                    continue
                image_file = os.path.join(raw_dir, name)
                record = _record(image_file, drive, camera, int(name[:-4]), sizes)
                record.update(_depth_keys(annotated, drive, camera, name, listings))
                records.append(record)
    if without_image:
        logger.warning(
            f"KITTI depth {split}: {sum(without_image.values())} annotated frames skipped, their raw image is "
            f"missing (e.g. in {next(iter(without_image))}; KITTI raw unzips to <root>/<date>/<drive>/image_02/data)"
        )
    if not records:
        raise FileNotFoundError(
            f"No KITTI depth frames for split {split!r}: no annotated frame under {annotated}/<drive>/proj_depth/"
            f"groundtruth/{{{','.join(cameras)}}} has its raw image at {raw_root}/<date>/<drive>/<camera>/data/"
            "<frame>.png (download the KITTI raw drives too; see datasets/README.md)"
        )
    return records


def parse_eigen_split(path):
    """``[(date, drive, camera, frame_index, ext)]`` from an Eigen split file, in file order.

    Accepted line formats (the first whitespace-separated fields; anything after them is ignored):

    * monodepth / BTS: ``2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png``
      (``.jpg`` too), optionally followed by the right image or a ground-truth path / ``None`` and
      the focal length (BTS ``eigen_test_files_with_gt.txt``);
    * monodepth2: ``2011_09_26/2011_09_26_drive_0002_sync 69 l`` (``l`` = image_02, ``r`` = image_03).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Eigen split file not found: {path}")
    entries = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            first = fields[0].replace("\\", "/")
            m = _IMAGE_PATH.match(first)
            if m is not None:
                date, drive, camera, frame, ext = m.groups()
                entries.append((date, drive, camera, int(frame), "." + ext))
                continue
            parts = first.strip("/").split("/")
            if len(parts) == 2 and _DRIVE.match(parts[1]) and len(fields) >= 2 and fields[1].isdigit():
                side = fields[2].lower() if len(fields) >= 3 else "l"
                if side not in _MONODEPTH2_SIDE:
                    raise ValueError(f"{path}:{number}: side {fields[2]!r} is neither 'l' nor 'r'")
                entries.append((parts[0], parts[1], _MONODEPTH2_SIDE[side], int(fields[1]), ".png"))
                continue
            raise ValueError(
                f"{path}:{number}: cannot read {line.strip()!r}; expected "
                "'<date>/<drive>/image_02/data/<frame>.png ...' (monodepth / BTS) or '<date>/<drive> <frame> l' "
                "(monodepth2)"
            )
    if not entries:
        raise ValueError(f"{path}: the split file lists no frame")
    return entries


def find_eigen_split_file(root):
    """The first of :data:`EIGEN_SPLIT_FILES` that exists under ``root``."""
    for name in EIGEN_SPLIT_FILES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"No Eigen test split file under {root}: expected one of {', '.join(EIGEN_SPLIT_FILES)} there (e.g. "
        "BTS's train_test_inputs/eigen_test_files_with_gt.txt saved as eigen_test_files.txt; see datasets/README.md)"
    )


def load_kitti_eigen(root, split_file=None, raw_root=None):
    """Records of every frame of the Eigen split file, with the depth keys where ground truth exists
    (looked up in ``data_depth_annotated/{train,val}``, the Eigen test drives are spread over both, and in
    ``data_depth_annotated/<drive>``, the merged tree BTS's instructions make)."""
    raw_root = root if raw_root is None else raw_root
    split_file = find_eigen_split_file(root) if split_file is None else split_file
    entries = parse_eigen_split(split_file)
    annotated_roots = [os.path.join(root, "data_depth_annotated", split) for split in ("train", "val", "")]
    if not os.path.isdir(annotated_roots[-1]):
        logger.warning(f"KITTI Eigen split: no {annotated_roots[-1]}: no frame has ground truth")
    cache = {}
    listings = lambda path: cache[path] if path in cache else cache.setdefault(path, _listing(path))  # noqa: E731
    sizes = _ImageSizes()
    records, missing, seen = [], [], set()
    for date, drive, camera, frame_index, ext in entries:
        if (drive, camera, frame_index) in seen:
            continue
        seen.add((drive, camera, frame_index))
        raw_dir = os.path.join(raw_root, date, drive, camera, "data")
        image_file = None
        for candidate_ext in dict.fromkeys((ext.lower(), ".png", ".jpg")):  # jpg lines on png raw data, and back
            candidate = f"{frame_index:010d}{candidate_ext}"
            if candidate in listings(raw_dir):
                image_file = os.path.join(raw_dir, candidate)
                break
        if image_file is None:
            missing.append(os.path.join(raw_dir, f"{frame_index:010d}{ext}"))
            continue
        record = _record(image_file, drive, camera, frame_index, sizes)
        for annotated in annotated_roots:
            keys = _depth_keys(annotated, drive, camera, f"{frame_index:010d}.png", listings)
            if keys:
                record.update(keys)
                break
        records.append(record)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(seen)} frames listed in {split_file} have no raw image (first: {missing[0]}); "
            "the Eigen test split needs all its KITTI raw drives under <root>/<date>/<drive>/"
        )
    num_gt = sum("depth_file_name" in r for r in records)
    logger.info(f"KITTI Eigen split {split_file}: {len(records)} frames, {num_gt} with ground truth")
    return records


def prepared_sem_seg_path(root, name):
    return os.path.join(root, "data_semantics", "training", TRAIN_ID_DIRNAME, name)


def _semantics_frames(root):
    training = os.path.join(root, "data_semantics", "training")
    image_dir, label_dir = os.path.join(training, "image_2"), os.path.join(training, "semantic")
    hint = "Expected the official data_semantics.zip unzipped as kitti/data_semantics/training/{image_2,semantic}"
    _require_dir(image_dir, "semantics images", hint)
    _require_dir(label_dir, "semantic labels", hint)
    labels = _listing(label_dir)
    names = sorted(n for n in _listing(image_dir) if n.endswith(".png") and n in labels)
    if not names:
        raise FileNotFoundError(f"No KITTI semantics frame: no {image_dir}/*.png has a label in {label_dir}")
    return [(name, os.path.join(image_dir, name), os.path.join(label_dir, name)) for name in names]


def prepare_kitti_semantics(root, overwrite=False):
    """Write ``data_semantics/training/semantic_trainid/<frame>.png`` (uint8 train ids, 255 = ignore) from the
    label-id PNGs, through :func:`read_sem_seg`. Idempotent: existing outputs are kept unless ``overwrite``;
    each file is written to a temporary name and renamed, so a final name never holds half a file.
    Returns the number of files written."""
    written = 0
    for name, _, label_file in _semantics_frames(root):
        out = prepared_sem_seg_path(root, name)
        if os.path.isfile(out) and not overwrite:
            continue
        train_ids = read_sem_seg({"sem_seg_file_name": label_file, "label_format": "cityscapes_label_ids"})
        os.makedirs(os.path.dirname(out), exist_ok=True)
        replace_into(out, png_writer(train_ids))
        written += 1
    return written


def load_kitti_semantics(root):
    """Records of ``data_semantics/training`` with ``sem_seg_file_name`` on the prepared trainId PNGs."""
    records, unprepared = [], []
    for name, image_file, _ in _semantics_frames(root):
        sem_seg_file = prepared_sem_seg_path(root, name)
        if not os.path.isfile(sem_seg_file):
            unprepared.append(sem_seg_file)
            continue
        with Image.open(image_file) as im:  # KITTI 2015 image sizes differ by a few pixels
            width, height = im.size
        records.append(
            {"file_name": image_file, "image_id": name[:-4], "height": height, "width": width,
             "sem_seg_file_name": sem_seg_file}
        )
    if unprepared:
        raise FileNotFoundError(
            f"{len(unprepared)} KITTI semantic frames have no train-id label (first: {unprepared[0]}). The "
            "semantic/*.png files hold Cityscapes label ids, which detectron2 must not read as classes: convert "
            f"them once with `{PREPARE_COMMAND} --root {root}`"
        )
    return records


def _cityscapes_class_metadata():
    # detectron2's Cityscapes table: dataset ids are label ids, contiguous ids train ids (19 classes)
    return depth_panoptic_metadata(
        CITYSCAPES_CATEGORIES, depth_range=KITTI_DEPTH_RANGE, classes_without_depth=("sky",),
        depth_format="kitti_png256",
    )


def kitti_depth_metadata():
    """Depth range (1e-3, 80] and the Cityscapes classes (so that depth and semantics names mix in one
    DATASETS.TRAIN); ``evaluator_type "depth"``."""
    return dict(_cityscapes_class_metadata(), evaluator_type="depth")


def kitti_sem_seg_metadata():
    return dict(_cityscapes_class_metadata(), evaluator_type="sem_seg")


def register_kitti_depth(name, root, split, cameras=("image_02",)):
    cameras = tuple(cameras)
    DatasetCatalog.register(name, lambda: load_kitti_depth(root, split, cameras))
    MetadataCatalog.get(name).set(dataset_root=root, split=split, cameras=cameras, **kitti_depth_metadata())


def register_kitti_eigen(name, root, split_file=None):
    """``split_file`` None: the first of :data:`EIGEN_SPLIT_FILES` under ``root``, looked up when loaded."""
    DatasetCatalog.register(name, lambda: load_kitti_eigen(root, split_file))
    MetadataCatalog.get(name).set(
        dataset_root=root, split_file=split_file or os.path.join(root, EIGEN_SPLIT_FILES[0]),
        eval_crop=KITTI_EVAL_CROP, **kitti_depth_metadata()
    )


def register_kitti_sem_seg(name, root):
    DatasetCatalog.register(name, lambda: load_kitti_semantics(root))
    MetadataCatalog.get(name).set(
        dataset_root=root,
        image_root=os.path.join(root, "data_semantics", "training", "image_2"),
        sem_seg_root=os.path.join(root, "data_semantics", "training", TRAIN_ID_DIRNAME),
        **kitti_sem_seg_metadata(),
    )


def register_all_kitti(datasets_root):
    """``kitti_depth_{train,val}``, ``kitti_depth_eigen_test`` and ``kitti_sem_seg_train`` under
    ``<datasets_root>/kitti`` (nothing is read until a name is loaded)."""
    root = os.path.join(datasets_root, "kitti")
    for split in ("train", "val"):
        register_kitti_depth(f"kitti_depth_{split}", root, split)
    register_kitti_eigen("kitti_depth_eigen_test", root)
    register_kitti_sem_seg("kitti_sem_seg_train", root)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert KITTI data_semantics/training/semantic (Cityscapes label ids) into the train-id "
        f"PNGs ({TRAIN_ID_DIRNAME}/) that kitti_sem_seg_train reads."
    )
    parser.add_argument(
        "--root", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "kitti"),
        help="KITTI root (default: $DETECTRON2_DATASETS/kitti)",
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    args = parser.parse_args(argv)
    written = prepare_kitti_semantics(args.root, overwrite=args.overwrite)
    total = len(_semantics_frames(args.root))
    print(f"wrote {written} train-id label files ({total} frames) to "
          f"{os.path.join(args.root, 'data_semantics', 'training', TRAIN_ID_DIRNAME)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
