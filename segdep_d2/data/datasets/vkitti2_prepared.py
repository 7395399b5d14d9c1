"""Virtual KITTI 2 converted once into detectron2's standard label files, and the views reading them.

VKITTI2 ships colour ``classgt`` PNGs and palette ``instancegt`` PNGs. segdep_d2's own readers
(:mod:`segdep_d2.data.label_io`) decode them directly, but every stock detectron2 mapper reads
``sem_seg_file_name`` as a grayscale image of class ids and ``pan_seg_file_name`` as an RGB-id PNG.
:func:`prepare_vkitti2` (CLI: ``python datasets/prepare_vkitti2.py``) converts every frame once,
through those same readers, into::

    <output>/                                   default $DETECTRON2_DATASETS/vkitti2/prepared
      images/<stem>.jpg        link to the original rgb_XXXXX.jpg (symlink; hard link or copy where
                               symlinks fail). <stem> = the record's image_id, e.g.
                               Scene20_clone_Camera_0_00000: unique across scenes, variations and
                               cameras, so that prediction files named after the image never collide
      sem_seg/<stem>.png       uint8 trainIds (0..13), 255 = void
      panoptic/<stem>.png      COCO panoptic RGB ids (id = R + 256 G + 256^2 B), void = 0
      panoptic/<stem>.json     that frame's image entry + annotation (dataset category ids)
      vkitti2_panoptic_{train,val}.json   COCO panoptic JSON (images, annotations, categories)
                               of the builtin split (Scene20 held out, Camera_0, all variations)

Every file is written to a temporary name in its folder and renamed, so a final name never holds
a half-written file; a re-run removes leftover temporary files and skips frames whose outputs all
exist.

The views ``vkitti2_sem_seg_{train,val}`` (``evaluator_type "sem_seg"``) and
``vkitti2_panoptic_{train,val}`` (``"coco_panoptic_seg"``) list the same frames as the depth-aware
``vkitti2_{train,val}``, with the label keys pointing at these files and ``depth_file_name`` /
``depth_format`` / sequence keys kept. Without the prepared files they raise ``FileNotFoundError``
saying to run the preparation, never hand out colour PNGs.
"""
import json
import logging
import multiprocessing
import os
import shutil
import time

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import id2rgb

from ...utils.files import json_writer as _dump_json
from ...utils.files import png_writer as _save_png
from ...utils.files import remove_leftovers
from ...utils.files import replace_into as _replace_into
from ..label_io import has_panoptic, read_panoptic, read_sem_seg
from .vkitti2 import VKITTI2_SCENES, VKITTI2_SPLITS, VKITTI2_VARIATIONS, load_vkitti2, vkitti2_metadata
from .vkitti2_categories import VKITTI2_CATEGORIES

__all__ = [
    "PREPARE_COMMAND",
    "prepare_vkitti2",
    "prepared_frame_paths",
    "load_vkitti2_sem_seg",
    "load_vkitti2_panoptic",
    "register_vkitti2_sem_seg",
    "register_vkitti2_panoptic",
    "register_all_vkitti2_prepared",
]

logger = logging.getLogger(__name__)

PREPARE_COMMAND = "python datasets/prepare_vkitti2.py"
PREPARED_DIRNAME = "prepared"
ALL_CAMERAS = ("Camera_0", "Camera_1")
VIEW_CAMERAS = ("Camera_0",)  # the cameras of the builtin names, as vkitti2_{train,val}
_SUBDIRS = ("images", "sem_seg", "panoptic")
_TRAIN_ID_TO_DATASET_ID = {c["trainId"]: c["id"] for c in VKITTI2_CATEGORIES}
_COCO_CATEGORIES = [
    {"id": c["id"], "name": c["name"], "supercategory": c["name"], "isthing": c["isthing"], "color": c["color"]}
    for c in VKITTI2_CATEGORIES
]


def default_prepared_root(vkitti2_root):
    return os.path.join(vkitti2_root, PREPARED_DIRNAME)


def panoptic_json_path(prepared, split):
    return os.path.join(prepared, f"vkitti2_panoptic_{split}.json")


def prepared_frame_paths(prepared, stem):
    """The prepared files of one frame: ``image`` (link), ``sem_seg``, ``panoptic`` (PNG),
    ``segments`` (that frame's JSON)."""
    return {
        "image": os.path.join(prepared, "images", stem + ".jpg"),
        "sem_seg": os.path.join(prepared, "sem_seg", stem + ".png"),
        "panoptic": os.path.join(prepared, "panoptic", stem + ".png"),
        "segments": os.path.join(prepared, "panoptic", stem + ".json"),
    }


def _expected_outputs(record, paths):
    """The outputs a frame must have once prepared (panoptic only where it has instance labels)."""
    keys = ["image", "sem_seg"] + (["panoptic", "segments"] if has_panoptic(record) else [])
    return [paths[k] for k in keys]


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def _link_image(source, link, relative):
    """``link`` -> ``source``: a symlink (relative when the prepared folder lies inside the
    dataset root, so that moving the whole tree keeps it valid), else a hard link, else a copy."""

    def write(tmp):
        target = os.path.relpath(os.path.realpath(source), os.path.realpath(os.path.dirname(link))) if relative \
            else os.path.realpath(source)
        try:
            os.symlink(target, tmp)
            return
        except (OSError, NotImplementedError):
            pass
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)

    return write


def _bbox(mask):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _panoptic_entry(record, stem, ids, segments_info):
    """This frame's COCO panoptic image entry and annotation; segments carry dataset category ids."""
    segments = []
    for seg in segments_info:
        mask = ids == seg["id"]
        segments.append(
            {
                "id": int(seg["id"]),
                "category_id": _TRAIN_ID_TO_DATASET_ID[int(seg["category_id"])],
                "iscrowd": int(seg.get("iscrowd", 0)),
                "area": int(mask.sum()),
                "bbox": _bbox(mask),
            }
        )
    image = {"id": stem, "file_name": stem + ".jpg", "width": int(record["width"]), "height": int(record["height"])}
    annotation = {"image_id": stem, "file_name": stem + ".png", "segments_info": segments}
    return {"image": image, "annotation": annotation}


def _convert_frame(task):
    """Worker: write one frame's missing outputs. Returns (image_id, "converted" | "skipped")."""
    record, prepared, relative_links, overwrite = task
    stem = record["image_id"]
    paths = prepared_frame_paths(prepared, stem)
    if not overwrite and all(os.path.exists(p) for p in _expected_outputs(record, paths)):
        return stem, "skipped"
    try:
        labels = read_sem_seg(record)  # the one colour decoder
        _replace_into(paths["sem_seg"], _save_png(labels))
        if has_panoptic(record):
            ids, segments_info = read_panoptic(record)
            _replace_into(paths["panoptic"], _save_png(id2rgb(ids)))
        if overwrite or not os.path.exists(paths["image"]):  # absent, or a dangling link
            _replace_into(paths["image"], _link_image(record["file_name"], paths["image"], relative_links))
        if has_panoptic(record):  # last: its presence means the frame is complete
            _replace_into(paths["segments"], _dump_json(_panoptic_entry(record, stem, ids, segments_info)))
    except Exception as e:
        raise RuntimeError(f"VKITTI2 frame {stem} ({record['sem_seg_file_name']}): {type(e).__name__}: {e}") from e
    return stem, "converted"


def _remove_leftovers(prepared):
    """Delete the temporary files of runs that ended before renaming them."""
    return remove_leftovers([prepared] + [os.path.join(prepared, d) for d in _SUBDIRS])


def _is_inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _write_split_json(prepared, split, records):
    """The COCO panoptic JSON of one split, from the frames' own JSONs."""
    images, annotations = [], []
    for record in records:
        with open(prepared_frame_paths(prepared, record["image_id"])["segments"]) as f:
            entry = json.load(f)
        images.append(entry["image"])
        annotations.append(entry["annotation"])
    data = {
        "info": {"description": f"Virtual KITTI 2 panoptic, {split} split (segdep_d2 {PREPARE_COMMAND})"},
        "images": images,
        "annotations": annotations,
        "categories": _COCO_CATEGORIES,
    }
    path = panoptic_json_path(prepared, split)
    _replace_into(path, _dump_json(data))
    return path


def prepare_vkitti2(
    root,
    output=None,
    *,
    workers=1,
    scenes=VKITTI2_SCENES,
    variations=VKITTI2_VARIATIONS,
    cameras=ALL_CAMERAS,
    overwrite=False,
    progress=True,
):
    """Convert every frame of a VKITTI2 root (both layouts, whatever scenes / variations / cameras
    exist) into detectron2's standard label files under ``output`` (default ``<root>/prepared``),
    then write the split JSONs of the builtin panoptic views.

    Resumable: frames whose outputs all exist are skipped (``overwrite=True`` redoes them);
    temporary files a killed run left behind are removed first. ``workers`` > 1 converts frames in
    a process pool. Returns a summary dict (``output``, ``frames``, ``converted``, ``skipped``,
    ``splits``: split -> (JSON path, frames), ``seconds``).
    """
    start = time.perf_counter()
    prepared = os.path.abspath(output or default_prepared_root(root))
    records = [
        r for r in load_vkitti2(root, tuple(scenes), tuple(variations), tuple(cameras)) if "sem_seg_file_name" in r
    ]
    if not records:
        raise FileNotFoundError(f"No Virtual KITTI 2 frame with classSegmentation labels under {root}")
    for sub in _SUBDIRS:
        os.makedirs(os.path.join(prepared, sub), exist_ok=True)
    leftovers = _remove_leftovers(prepared)
    if leftovers:
        logger.info(f"removed {leftovers} unfinished temporary files under {prepared}")

    relative_links = _is_inside(prepared, root)
    tasks = [(r, prepared, relative_links, overwrite) for r in records]
    counts = {"converted": 0, "skipped": 0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="VKITTI2 -> detectron2 labels", unit="frame")
    try:
        if workers > 1:
            with multiprocessing.Pool(workers) as pool:
                for _, outcome in pool.imap_unordered(_convert_frame, tasks, chunksize=8):
                    counts[outcome] += 1
                    if bar is not None:
                        bar.update()
        else:
            for task in tasks:
                counts[_convert_frame(task)[1]] += 1
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()

    splits = {}
    for split, split_scenes in VKITTI2_SPLITS.items():
        members = [
            r for r in records
            if has_panoptic(r) and r["sequence_id"].split("/")[0] in split_scenes
            and r["sequence_id"].split("/")[2] in VIEW_CAMERAS
        ]
        if members:
            splits[split] = (_write_split_json(prepared, split, members), len(members))
    return {
        "output": prepared,
        "frames": len(records),
        **counts,
        "splits": splits,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------
# reading: the detectron2-standard views
# ---------------------------------------------------------------------------------------------


def _not_prepared(root, prepared, detail):
    if os.path.abspath(prepared) == os.path.abspath(default_prepared_root(root)):
        how = f"`{PREPARE_COMMAND}` with $DETECTRON2_DATASETS set to the folder holding vkitti2/"
    else:
        how = f"`{PREPARE_COMMAND} --root {root} --output {prepared}`"
    return FileNotFoundError(
        f"Virtual KITTI 2 is not prepared for detectron2's standard readers: {detail}. The names "
        f"vkitti2_sem_seg_* / vkitti2_panoptic_* read label-id and COCO panoptic PNGs converted once from "
        f"classgt / instancegt into {prepared}: run {how} (a re-run converts only what is missing)"
    )


def _prepared_records(root, prepared, scenes, variations, cameras, need_panoptic):
    """The depth-aware records of a subset with image / labels swapped for the prepared files."""
    records = [r for r in load_vkitti2(root, scenes, variations, cameras) if "sem_seg_file_name" in r]
    if need_panoptic:
        records = [r for r in records if has_panoptic(r)]
    if not os.path.isdir(prepared):
        raise _not_prepared(root, prepared, f"{prepared} does not exist")
    listings = {
        sub: set(os.listdir(os.path.join(prepared, sub))) if os.path.isdir(os.path.join(prepared, sub)) else set()
        for sub in _SUBDIRS
    }
    out, missing = [], []
    for record in records:
        paths = prepared_frame_paths(prepared, record["image_id"])
        wanted = {"image": "images", "sem_seg": "sem_seg", **({"panoptic": "panoptic"} if need_panoptic else {})}
        absent = [paths[k] for k, sub in wanted.items() if os.path.basename(paths[k]) not in listings[sub]]
        if absent:
            missing.append(absent[0])
            continue
        view = {k: v for k, v in record.items() if k not in ("label_format", "colors_file_name", "instance_file_name")}
        view["file_name"] = paths["image"]
        view["sem_seg_file_name"] = paths["sem_seg"]
        if need_panoptic:
            view["pan_seg_file_name"] = paths["panoptic"]
        out.append(view)
    if missing:
        raise _not_prepared(
            root, prepared, f"{len(missing)} of {len(records)} frames have no prepared files (first: {missing[0]})"
        )
    return out


def load_vkitti2_sem_seg(root, prepared, scenes, variations, cameras):
    """Records with ``sem_seg_file_name`` = a uint8 label-id PNG (trainIds, 255 void), ``file_name``
    = the image link, plus depth and sequence keys of :func:`load_vkitti2`."""
    return _prepared_records(root, prepared, tuple(scenes), tuple(variations), tuple(cameras), False)


def load_vkitti2_panoptic(root, prepared, panoptic_json, scenes, variations, cameras):
    """Records as :func:`load_vkitti2_sem_seg` plus ``pan_seg_file_name`` and ``segments_info``
    (contiguous category ids, ``isthing``, ``iscrowd``, ``area``, ``bbox``) from ``panoptic_json``,
    which must list exactly these frames (detectron2's COCOPanopticEvaluator scores its
    annotations)."""
    records = _prepared_records(root, prepared, tuple(scenes), tuple(variations), tuple(cameras), True)
    if not os.path.isfile(panoptic_json):
        raise _not_prepared(root, prepared, f"{panoptic_json} does not exist")
    with open(panoptic_json) as f:
        annotations = {a["image_id"]: a for a in json.load(f)["annotations"]}
    ids = {r["image_id"] for r in records}
    if ids != set(annotations):
        absent, extra = sorted(ids - set(annotations)), sorted(set(annotations) - ids)
        raise _not_prepared(
            root,
            prepared,
            f"{panoptic_json} does not list the frames found under {root} "
            f"({len(absent)} missing, e.g. {absent[:1]}; {len(extra)} no longer found, e.g. {extra[:1]})",
        )
    thing_ids = {c["id"]: c["trainId"] for c in VKITTI2_CATEGORIES if c["isthing"]}
    to_contiguous = {c["id"]: c["trainId"] for c in VKITTI2_CATEGORIES}
    for record in records:
        record["segments_info"] = [
            dict(seg, category_id=to_contiguous[seg["category_id"]], isthing=seg["category_id"] in thing_ids)
            for seg in annotations[record["image_id"]]["segments_info"]
        ]
    return records


def _view_metadata(root, prepared, scenes, variations, cameras, evaluator_type, **extra):
    meta = vkitti2_metadata()
    meta.update(
        evaluator_type=evaluator_type,
        dataset_root=root,
        image_root=os.path.join(prepared, "images"),
        sem_seg_root=os.path.join(prepared, "sem_seg"),
        scenes=tuple(scenes),
        variations=tuple(variations),
        cameras=tuple(cameras),
        **extra,
    )
    return meta


def register_vkitti2_sem_seg(name, root, scenes, variations=VKITTI2_VARIATIONS, cameras=VIEW_CAMERAS, prepared=None):
    """Register a VKITTI2 subset for semantic segmentation in detectron2's standard form
    (``evaluator_type "sem_seg"``; ``stuff_classes``, ``stuff_colors``, ``ignore_label`` 255)."""
    prepared = prepared or default_prepared_root(root)
    scenes, variations, cameras = tuple(scenes), tuple(variations), tuple(cameras)
    DatasetCatalog.register(name, lambda: load_vkitti2_sem_seg(root, prepared, scenes, variations, cameras))
    MetadataCatalog.get(name).set(**_view_metadata(root, prepared, scenes, variations, cameras, "sem_seg"))


def register_vkitti2_panoptic(
    name, root, panoptic_json, scenes, variations=VKITTI2_VARIATIONS, cameras=VIEW_CAMERAS, prepared=None
):
    """Register a VKITTI2 subset for panoptic segmentation in COCO panoptic form
    (``evaluator_type "coco_panoptic_seg"``, ``panoptic_root``, ``panoptic_json``, thing / stuff maps)."""
    prepared = prepared or default_prepared_root(root)
    scenes, variations, cameras = tuple(scenes), tuple(variations), tuple(cameras)
    DatasetCatalog.register(
        name, lambda: load_vkitti2_panoptic(root, prepared, panoptic_json, scenes, variations, cameras)
    )
    MetadataCatalog.get(name).set(
        **_view_metadata(
            root, prepared, scenes, variations, cameras, "coco_panoptic_seg",
            panoptic_root=os.path.join(prepared, "panoptic"), panoptic_json=panoptic_json,
        )
    )


def register_all_vkitti2_prepared(datasets_root):
    """``vkitti2_sem_seg_{train,val}`` and ``vkitti2_panoptic_{train,val}``: the frames of
    ``vkitti2_{train,val}`` read from ``<datasets_root>/vkitti2/prepared``."""
    root = os.path.join(datasets_root, "vkitti2")
    prepared = default_prepared_root(root)
    for split, scenes in VKITTI2_SPLITS.items():
        register_vkitti2_sem_seg(f"vkitti2_sem_seg_{split}", root, scenes, prepared=prepared)
        register_vkitti2_panoptic(
            f"vkitti2_panoptic_{split}", root, panoptic_json_path(prepared, split), scenes, prepared=prepared
        )
