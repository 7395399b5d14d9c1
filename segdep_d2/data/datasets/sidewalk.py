"""The Korean sidewalk dataset (AI Hub "인도보행 영상", TestWorks; the SafeTrip-Q seed), read from the release
layout under ``$DETECTRON2_DATASETS/sidewalk/``::

    Surface/Surface_XXX/    MP_SEL_SUR_NNNNNN.jpg, one CVAT XML (*.xml), MASK/*.png (colour masks)
    Polygon/Polygon_XXXX/   MP_SEL_PNNNNNN.jpg, one CVAT XML
    Depth/Depth_XXX/        Depth_XXX.conf (ZED SDK calibration) and per frame ZED1_KSC_NNNNNN_<kind>.png,
                            <kind> in L, R (raw full left / right frames), left, right (the rectified
                            band crop, black outside it), disp16 (uint16 disparity), confidence,
                            confidence_save (and disp, a viridis rendering: not data)

Names ``sidewalk_{surface,polygon,depth}_{train,val}`` (:func:`register_all_sidewalk`; lazy: nothing is
read until a name is loaded).

* **surface / polygon**: the images a folder's XML names (an image file the XML does not name is not
  listed), labels rasterised from the XML by :func:`segdep_d2.data.cvat.rasterize_cvat` through
  :func:`sidewalk_label_to_id` (the 24 training classes; surface attributes merged into their label;
  the dropped polygon labels, :data:`SIDEWALK_DROPPED_POLYGON_LABELS`, are not drawn and stay ignore).
  The ``MASK/*.png`` colour masks are the same polygons drawn per (label, attribute); they are not read
  (the XML is the source; ``SIDEWALK_SURFACE_MASK_COLORS`` decodes them when needed). ``image_id`` is
  ``<folder>/<image stem>``.
* **depth**: one record per frame with a ``_disp16.png``: ``file_name`` is the raw left frame
  ``_L.png`` (the full frame, like the images of the other tasks, so that one model sees one kind of
  input; depth is valid only on the rectified band, which is where the disparity lies and where
  ``_left.png`` is identical to ``_L.png``); when a frame has no ``_L.png``, its ``_left.png`` is used.
  ``depth_file_name`` = ``_disp16.png``, ``depth_format "zed_disp16"``, ``camera_file_name`` = the
  folder's ``.conf``, ``confidence_file_name`` = ``_confidence.png`` where present, and
  ``disparity_scale``: disparity in pixels = disp16 / ``disparity_scale``, **100** by default (measured
  by block matching the left / right views of a real release frame; the seed's converter
  divided by 256, see ``depth_io.py``). ``image_id`` is ``<folder>/<frame prefix>``.

**Split** (the release has none): a folder whose trailing number is divisible by 10 (``Surface_010``,
``Polygon_0120``, ``Depth_030``, ...) is ``val``, every other folder ``train``. The rule looks only at the
folder's name, so it does not depend on the order in which folders were collected or unpacked, and whole
folders (recording sessions) stay on one side. Folders without a trailing number are skipped with a
warning.
"""
import logging
import os
import re

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..cvat import load_cvat_dataset
from .sidewalk_categories import (
    SIDEWALK_CLASSES,
    SIDEWALK_COLORS,
    SIDEWALK_DROPPED_POLYGON_LABELS,
    SIDEWALK_IGNORE_LABEL,
    sidewalk_label_to_id,
)

__all__ = [
    "SIDEWALK_TASKS",
    "SIDEWALK_SPLITS",
    "SIDEWALK_TASK_DIRS",
    "SIDEWALK_DEPTH_RANGE",
    "SIDEWALK_DISPARITY_SCALE",
    "sidewalk_split_of",
    "load_sidewalk",
    "sidewalk_metadata",
    "register_sidewalk",
    "register_all_sidewalk",
]

logger = logging.getLogger(__name__)

SIDEWALK_TASKS = ("surface", "polygon", "depth")
SIDEWALK_SPLITS = ("train", "val")
SIDEWALK_TASK_DIRS = {"surface": "Surface", "polygon": "Polygon", "depth": "Depth"}
SIDEWALK_DEPTH_RANGE = (0.3, 80.0)  # metres: a ZED 2 sees from 0.3 m; 80 m caps far noisy disparities
SIDEWALK_DISPARITY_SCALE = 100.0  # disparity px = disp16 / 100 (measured by block matching), not the seed's 256
SIDEWALK_DEPTH_FORMAT = "zed_disp16"
VAL_EVERY = 10  # a folder whose trailing number is divisible by it is validation

_TRAILING_NUMBER = re.compile(r"(\d+)$")
_FRAME_FILE = re.compile(r"^(?P<prefix>.+)_(?P<kind>confidence_save|confidence|disp16|disp|left|right|L|R)\.png$")


class _LayoutError(FileNotFoundError):
    pass


def sidewalk_split_of(folder_name):
    """``"val"`` when the folder's trailing number is divisible by 10, else ``"train"``; None without
    a trailing number."""
    m = _TRAILING_NUMBER.search(folder_name)
    if m is None:
        return None
    return "val" if int(m.group(1)) % VAL_EVERY == 0 else "train"


def _task_dir(root, task):
    """``<root>/Surface`` etc., matched case-insensitively (archives differ in case)."""
    if task not in SIDEWALK_TASKS:
        raise ValueError(f"unknown sidewalk task {task!r}; expected one of {SIDEWALK_TASKS}")
    expected = os.path.join(root, SIDEWALK_TASK_DIRS[task])
    if not os.path.isdir(root):
        raise _LayoutError(
            f"Sidewalk dataset root not found: {root}. Expected {expected}/{SIDEWALK_TASK_DIRS[task]}_XXX/ (set "
            "$DETECTRON2_DATASETS to the folder that holds 'sidewalk/'; the layout: datasets/README.md)"
        )
    for name in sorted(os.listdir(root)):
        if name.lower() == SIDEWALK_TASK_DIRS[task].lower() and os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    raise _LayoutError(
        f"Sidewalk {task} folder not found: {expected} (expected {expected}/{SIDEWALK_TASK_DIRS[task]}_XXX/ "
        "folders from the AI Hub release)"
    )


def _split_folders(task_dir, split):
    folders = []
    for name in sorted(os.listdir(task_dir)):
        if not os.path.isdir(os.path.join(task_dir, name)):
            continue
        folder_split = sidewalk_split_of(name)
        if folder_split is None:
            logger.warning(f"Sidewalk: skipping {os.path.join(task_dir, name)}: no trailing folder number to split by")
        elif folder_split == split:
            folders.append(name)
    return folders


def _folder_xml(folder):
    xmls = sorted(n for n in os.listdir(folder) if n.lower().endswith(".xml"))
    if len(xmls) != 1:
        raise _LayoutError(
            f"Sidewalk folder {folder}: expected exactly one CVAT XML, found "
            + (", ".join(xmls) if xmls else "none")
        )
    return os.path.join(folder, xmls[0])


def _load_cvat_folders(task_dir, folders):
    label_to_id = sidewalk_label_to_id()
    records = []
    for name in folders:
        folder = os.path.join(task_dir, name)
        for record in load_cvat_dataset(_folder_xml(folder), folder, label_to_id):
            record["image_id"] = f"{name}/{record['image_id']}"
            records.append(record)
    return records


def _folder_conf(folder, files):
    name = os.path.basename(folder)
    expected = f"{name}.conf"
    if expected in files:
        return os.path.join(folder, expected)
    confs = sorted(f for f in files if f.lower().endswith(".conf"))
    if len(confs) == 1:
        return os.path.join(folder, confs[0])
    raise _LayoutError(
        f"Sidewalk depth folder {folder}: no ZED calibration {os.path.join(folder, expected)}"
        + (f" (several .conf files: {', '.join(confs)})" if confs else "")
    )


def _load_depth_folder(task_dir, name, disparity_scale):
    folder = os.path.join(task_dir, name)
    files = set(os.listdir(folder))
    frames = {}
    for f in files:
        m = _FRAME_FILE.match(f)
        if m:
            frames.setdefault(m.group("prefix"), set()).add(m.group("kind"))
    if not frames:
        return []
    conf = _folder_conf(folder, files)
    records = []
    for prefix in sorted(frames):
        kinds = frames[prefix]
        if "disp16" not in kinds:
            missing = os.path.join(folder, prefix + "_disp16.png")
            raise _LayoutError(f"Sidewalk depth frame without disparity: {missing}")
        image_kind = "L" if "L" in kinds else "left" if "left" in kinds else None
        if image_kind is None:
            raise _LayoutError(
                f"Sidewalk depth frame without a left image: {os.path.join(folder, prefix + '_L.png')} (nor _left.png)"
            )
        file_name = os.path.join(folder, f"{prefix}_{image_kind}.png")
        with Image.open(file_name) as im:  # the header only
            width, height = im.size
        record = {
            "file_name": file_name,
            "image_id": f"{name}/{prefix}",
            "height": height,
            "width": width,
            "depth_file_name": os.path.join(folder, f"{prefix}_disp16.png"),
            "depth_format": SIDEWALK_DEPTH_FORMAT,
            "camera_file_name": conf,
            "disparity_scale": float(disparity_scale),
        }
        if "confidence" in kinds:
            record["confidence_file_name"] = os.path.join(folder, f"{prefix}_confidence.png")
        records.append(record)
    return records


def load_sidewalk(root, task, split, disparity_scale=SIDEWALK_DISPARITY_SCALE):
    """Records of one task (``"surface"``, ``"polygon"``, ``"depth"``) and split (``"train"``,
    ``"val"``) of the release under ``root`` (``$DETECTRON2_DATASETS/sidewalk``); see the module
    docstring. Raises FileNotFoundError naming the folder when the layout is absent or yields nothing."""
    if split not in SIDEWALK_SPLITS:
        raise ValueError(f"unknown sidewalk split {split!r}; expected one of {SIDEWALK_SPLITS}")
    if float(disparity_scale) <= 0:
        raise ValueError(f"disparity_scale must be positive, got {disparity_scale!r}")
    task_dir = _task_dir(root, task)
    folders = _split_folders(task_dir, split)
    if task == "depth":
        records = [r for name in folders for r in _load_depth_folder(task_dir, name, disparity_scale)]
    else:
        records = _load_cvat_folders(task_dir, folders)
    if not records:
        prefix = SIDEWALK_TASK_DIRS[task]
        raise _LayoutError(
            f"No sidewalk {task} {split} images under {task_dir}: "
            + (f"its {split} folders ({', '.join(folders)}) hold none" if folders else
               f"no {prefix}_<n> folder belongs to {split} ({split} = "
               + ("trailing number divisible by 10)" if split == "val" else "trailing number not divisible by 10)"))
        )
    return records


def sidewalk_metadata(task, disparity_scale=SIDEWALK_DISPARITY_SCALE):
    """detectron2 semantic-segmentation metadata of the 24 classes (``stuff_classes``,
    ``stuff_colors``, ``ignore_label`` 255) with ``evaluator_type`` ``"sem_seg"`` (surface, polygon)
    or ``"depth"`` (depth, plus ``depth_range`` (0.3, 80) m and ``depth_format``), ``label_tasks``,
    ``disparity_scale`` and ``dropped_labels`` (the polygon labels left unlabelled)."""
    if task not in SIDEWALK_TASKS:
        raise ValueError(f"unknown sidewalk task {task!r}; expected one of {SIDEWALK_TASKS}")
    meta = dict(
        stuff_classes=list(SIDEWALK_CLASSES),
        stuff_colors=[list(c) for c in SIDEWALK_COLORS],
        stuff_dataset_id_to_contiguous_id={i: i for i in range(len(SIDEWALK_CLASSES))},
        thing_dataset_id_to_contiguous_id={},  # no instance labels
        ignore_label=SIDEWALK_IGNORE_LABEL,
        dropped_labels=list(SIDEWALK_DROPPED_POLYGON_LABELS),
        disparity_scale=float(disparity_scale),
        task=task,
    )
    if task == "depth":
        meta.update(
            evaluator_type="depth", label_tasks=("depth",), depth_range=SIDEWALK_DEPTH_RANGE,
            depth_format=SIDEWALK_DEPTH_FORMAT, classes_without_depth=[],
        )
    else:
        meta.update(evaluator_type="sem_seg", label_tasks=("sem_seg",))
    return meta


def register_sidewalk(name, root, task, split, disparity_scale=SIDEWALK_DISPARITY_SCALE):
    """Register one task / split under ``name`` (lazy: nothing is read here); a name registered
    before is replaced."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_sidewalk(root, task, split, disparity_scale))
    MetadataCatalog.get(name).set(
        dataset_root=root, split=split, split_rule=f"val: folder number % {VAL_EVERY} == 0",
        **sidewalk_metadata(task, disparity_scale),
    )
    return name


def register_all_sidewalk(datasets_root, disparity_scale=SIDEWALK_DISPARITY_SCALE):
    """``sidewalk_{surface,polygon,depth}_{train,val}`` under ``<datasets_root>/sidewalk``."""
    root = os.path.join(datasets_root, "sidewalk")
    return [
        register_sidewalk(f"sidewalk_{task}_{split}", root, task, split, disparity_scale)
        for task in SIDEWALK_TASKS
        for split in SIDEWALK_SPLITS
    ]
