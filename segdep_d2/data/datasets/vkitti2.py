"""Virtual KITTI 2 read from its official layout (DESIGN.md §3).

Both layouts are accepted: the merged tree ``<root>/SceneXX/<variation>/frames/<kind>/Camera_k/``
and the per-archive roots ``<root>/vkitti_2.0.3_<kind>/SceneXX/...``. Folder names are matched
case-insensitively (``classSegmentation`` vs ``classsegmentation`` differs between sources).
VKITTI2 has no official split: by default ``Scene20`` is held out for validation.
Video frames know their predecessor (``prev_file_name``, ``prev_flow_file_name``: see :func:`load_vkitti2`)
for SegDep's temporal training.
``vkitti2_referring_{train,val}`` add referring-expression ``queries`` generated from the textgt
(:mod:`.vkitti2_textgt`, :mod:`segdep_d2.data.referring`).
"""
import logging
import os
import re

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..referring import VisibilityRule, record_seed, referring_expressions
from .metadata import depth_panoptic_metadata
from .simulated_lidar import register_simulated_lidar
from .vkitti2_categories import VKITTI2_CATEGORIES, VKITTI2_IGNORE_LABEL, VKITTI2_LABEL_DIVISOR
from .vkitti2_textgt import load_vkitti2_textgt

logger = logging.getLogger(__name__)

VKITTI2_SCENES = ("Scene01", "Scene02", "Scene06", "Scene18", "Scene20")
VKITTI2_VARIATIONS = (
    "15-deg-left", "15-deg-right", "30-deg-left", "30-deg-right",
    "clone", "fog", "morning", "overcast", "rain", "sunset",
)
VKITTI2_VAL_SCENES = ("Scene20",)
VKITTI2_TRAIN_SCENES = tuple(s for s in VKITTI2_SCENES if s not in VKITTI2_VAL_SCENES)
# the default split of every builtin name: split -> scenes (Scene20 held out)
VKITTI2_SPLITS = {"train": VKITTI2_TRAIN_SCENES, "val": VKITTI2_VAL_SCENES}
VKITTI2_DEPTH_RANGE = (1e-3, 80.0)

# frame kind (lower case) -> (dataset dict key, file name pattern)
_FRAME_FILES = {
    "rgb": ("file_name", "rgb_{:05d}.jpg"),
    "depth": ("depth_file_name", "depth_{:05d}.png"),
    "classsegmentation": ("sem_seg_file_name", "classgt_{:05d}.png"),
    "instancesegmentation": ("instance_file_name", "instancegt_{:05d}.png"),
}
_RGB_NAME = re.compile(r"^rgb_(\d+)\.jpg$", re.IGNORECASE)
# VKITTI2's flow from frame t to frame t - 1 (the first frame has none), read by
# segdep_d2.data.flow_io.read_vkitti2_flow; listed apart from _FRAME_FILES because it belongs to the
# previous-frame keys (``prev_flow_file_name``), not to the frame's own labels.
_BACKWARD_FLOW = ("backwardFlow", "backwardFlow_{:05d}.png")


def _child(path, name):
    """``path/name`` matched case-insensitively, or None."""
    if not os.path.isdir(path):
        return None
    exact = os.path.join(path, name)
    if os.path.exists(exact):
        return exact
    for entry in os.listdir(path):
        if entry.lower() == name.lower():
            return os.path.join(path, entry)
    return None


def _layout_roots(root):
    """The merged root itself plus every per-archive root ``vkitti_2.0.3_<kind>`` inside it."""
    roots = [root]
    for entry in sorted(os.listdir(root)):
        if entry.lower().startswith("vkitti_2") and os.path.isdir(os.path.join(root, entry)):
            roots.append(os.path.join(root, entry))
    return roots


def _find(roots, *parts):
    """First existing ``root/parts...`` over all layout roots, matching case-insensitively."""
    for base in roots:
        path = base
        for part in parts:
            path = _child(path, part)
            if path is None:
                break
        if path is not None:
            return path
    return None


def _read_intrinsics(path):
    """intrinsic.txt -> {(frame, camera_id): 3x3 K as nested lists}."""
    intrinsics = {}
    with open(path) as f:
        next(f)  # header: frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]
        for line in f:
            fields = line.split()
            if len(fields) != 6:
                continue
            frame, cam = int(fields[0]), int(fields[1])
            fx, fy, cx, cy = (float(v) for v in fields[2:])
            intrinsics[(frame, cam)] = [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]
    return intrinsics


def _previous_frame_keys(frame, rgb_folder, rgb_names, flow_folder, flow_names):
    """``prev_file_name`` (+ ``prev_flow_file_name``) of ``frame`` from the folder listings, or {}.

    Only ``frame - 1`` counts: VKITTI2's backward flow maps frame t to t - 1, so an earlier frame
    after a gap would pair the image with a flow to another frame."""
    prev_name = _FRAME_FILES["rgb"][1].format(frame - 1)
    if prev_name not in rgb_names:
        return {}
    keys = {"prev_file_name": os.path.join(rgb_folder, prev_name)}
    flow_name = _BACKWARD_FLOW[1].format(frame)
    if flow_name in flow_names:
        keys["prev_flow_file_name"] = os.path.join(flow_folder, flow_name)
    return keys


def load_vkitti2(root, scenes=VKITTI2_SCENES, variations=VKITTI2_VARIATIONS, cameras=("Camera_0",)):
    """Dataset dicts for the chosen scenes / variations / cameras of a VKITTI2 root.

    Every frame has ``file_name``, ``image_id``, ``height``, ``width``, ``sequence_id``,
    ``frame_index`` and, where the files exist, ``depth_file_name`` (``vkitti2_cm``),
    ``sem_seg_file_name`` + ``colors_file_name`` and ``instance_file_name`` (``label_format``
    ``"vkitti2"``) and ``intrinsics`` (3x3).

    A frame whose previous frame (``frame_index - 1``, same scene / variation / camera) has its rgb
    file also has ``prev_file_name`` (that rgb file) and, where the frame's backward flow
    ``frames/backwardFlow/Camera_k/backwardFlow_%05d.png`` (frame t -> t - 1) exists,
    ``prev_flow_file_name`` (read with :func:`segdep_d2.data.flow_io.read_vkitti2_flow`). The first
    frame of a sequence, or one after a gap, has neither.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Virtual KITTI 2 root not found: {root}. Expected {root}/SceneXX/<variation>/frames/... "
            "(see datasets/README.md); set $DETECTRON2_DATASETS to the folder that holds 'vkitti2/'."
        )
    roots = _layout_roots(root)
    dicts = []
    missing = {key: 0 for key, _ in _FRAME_FILES.values()}
    for scene in scenes:
        for variation in variations:
            colors = _find(roots, scene, variation, "colors.txt")
            intrinsic_file = _find(roots, scene, variation, "intrinsic.txt")
            intrinsics = _read_intrinsics(intrinsic_file) if intrinsic_file else {}
            for camera in cameras:
                cam_id = int(camera.rsplit("_", 1)[-1])
                folders = {
                    kind: _find(roots, scene, variation, "frames", kind, camera) for kind in _FRAME_FILES
                }
                if folders["rgb"] is None:
                    continue
                listings = {k: set(os.listdir(v)) if v else set() for k, v in folders.items()}
                frames = sorted(
                    int(m.group(1)) for m in map(_RGB_NAME.match, listings["rgb"]) if m is not None
                )
                if not frames:
                    continue
                flow_folder = _find(roots, scene, variation, "frames", _BACKWARD_FLOW[0], camera)
                flow_names = set(os.listdir(flow_folder)) if flow_folder else set()
                with Image.open(os.path.join(folders["rgb"], "rgb_{:05d}.jpg".format(frames[0]))) as im:
                    width, height = im.size
                for frame in frames:
                    record = {
                        "image_id": f"{scene}_{variation}_{camera}_{frame:05d}",
                        "height": height,
                        "width": width,
                        "sequence_id": f"{scene}/{variation}/{camera}",
                        "frame_index": frame,
                    }
                    for kind, (key, pattern) in _FRAME_FILES.items():
                        name = pattern.format(frame)
                        if name in listings[kind]:
                            record[key] = os.path.join(folders[kind], name)
                        elif folders[kind] is not None:
                            missing[key] += 1
                    if "depth_file_name" in record:
                        record["depth_format"] = "vkitti2_cm"
                    if "sem_seg_file_name" in record:
                        if colors is None:
                            raise FileNotFoundError(
                                f"{record['sem_seg_file_name']}: no colors.txt found for {scene}/{variation}"
                            )
                        record["label_format"] = "vkitti2"
                        record["colors_file_name"] = colors
                    else:
                        record.pop("instance_file_name", None)  # instances mean nothing without classes
                    if (frame, cam_id) in intrinsics:
                        record["intrinsics"] = intrinsics[(frame, cam_id)]
                    record.update(_previous_frame_keys(frame, folders["rgb"], listings["rgb"], flow_folder, flow_names))
                    dicts.append(record)
    if not dicts:
        raise FileNotFoundError(
            f"No Virtual KITTI 2 frames under {root} for scenes={list(scenes)}, "
            f"variations={list(variations)}, cameras={list(cameras)}: expected "
            "SceneXX/<variation>/frames/rgb/Camera_k/rgb_XXXXX.jpg (merged or vkitti_2.0.3_rgb/ layout)"
        )
    for key, count in missing.items():
        if count:
            logger.warning(f"VKITTI2 {root}: {count} frames have no {key} (their folder exists)")
    return dicts


def vkitti2_metadata():
    return depth_panoptic_metadata(
        VKITTI2_CATEGORIES, depth_range=VKITTI2_DEPTH_RANGE,
        label_divisor=VKITTI2_LABEL_DIVISOR, ignore_label=VKITTI2_IGNORE_LABEL,
        classes_without_depth=("Sky",),  # stored as 655.35 m, outside every valid range
        depth_format="vkitti2_cm",
    )


def register_vkitti2(name, root, scenes=VKITTI2_SCENES, variations=VKITTI2_VARIATIONS, cameras=("Camera_0",),
                     referring=None):
    """Register a VKITTI2 subset under ``name`` (DatasetCatalog + MetadataCatalog).

    ``referring`` (a dict of :func:`load_vkitti2_referring` options, ``seed`` / ``max_queries``; ``{}`` for the
    defaults) registers the frames with referring ``queries`` instead (see :func:`register_vkitti2_referring`).
    """
    scenes, variations, cameras = tuple(scenes), tuple(variations), tuple(cameras)
    extra = {}
    if referring is None:
        DatasetCatalog.register(name, lambda: load_vkitti2(root, scenes, variations, cameras))
    else:
        options = {"seed": 0, "max_queries": 8, **referring}
        DatasetCatalog.register(name, lambda: load_vkitti2_referring(root, scenes, variations, cameras, **options))
        extra = dict(referring_seed=options["seed"], referring_max_queries=options["max_queries"])
    MetadataCatalog.get(name).set(
        dataset_root=root, scenes=scenes, variations=variations, cameras=cameras, **extra, **vkitti2_metadata()
    )


def _textgt_of(roots, scene, variation):
    """The joined info / bbox / pose of one scene/variation (merged or ``vkitti_2.0.3_textgt`` layout)."""
    files = {name: _find(roots, scene, variation, name) for name in ("info.txt", "bbox.txt", "pose.txt")}
    missing = [name for name, path in files.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"Virtual KITTI 2 textgt of {scene}/{variation} lacks {', '.join(missing)} under {roots[0]} "
            "(expected SceneXX/<variation>/{info,bbox,pose}.txt, merged or in vkitti_2.0.3_textgt/)")
    return load_vkitti2_textgt(info_file=files["info.txt"], bbox_file=files["bbox.txt"],
                               pose_file=files["pose.txt"])


def load_vkitti2_referring(root, scenes=VKITTI2_SCENES, variations=VKITTI2_VARIATIONS, cameras=("Camera_0",),
                           seed=0, max_queries=8, visibility=None):
    """:func:`load_vkitti2` records plus ``queries``: referring expressions generated from the textgt.

    Each query is ``{"text", "kind", "track_id", "instance_id", "target_distance"}``; ``instance_id`` is the
    target's value in the record's ``instance_file_name`` (VKITTI2 instancegt = trackID + 1) and
    ``target_distance`` its depth (``camera_space_Z``, metres). Queries are those of
    :func:`segdep_d2.data.referring.referring_expressions`, seeded per record from ``seed`` and the
    ``image_id`` (so a record's queries do not depend on which other records are loaded). Frames without any
    query (no clearly visible vehicle) are left out.
    """
    records = load_vkitti2(root, scenes, variations, cameras)
    roots = _layout_roots(root)
    visibility = visibility or VisibilityRule()
    textgts, out = {}, []
    for record in records:
        scene, variation, camera = record["sequence_id"].split("/")
        if (scene, variation) not in textgts:
            textgts[(scene, variation)] = _textgt_of(roots, scene, variation)
        objects = textgts[(scene, variation)].objects(record["frame_index"], int(camera.rsplit("_", 1)[-1]))
        queries = referring_expressions(objects, record["width"], record["height"],
                                        seed=record_seed(seed, record["image_id"]), max_queries=max_queries,
                                        visibility=visibility)
        if queries:
            out.append({**record, "queries": queries})
    if len(out) < len(records):
        logger.info(f"VKITTI2 referring {root}: {len(records) - len(out)} of {len(records)} frames have no "
                    "clearly visible vehicle to refer to and are left out")
    return out


def register_vkitti2_referring(name, root, scenes=VKITTI2_SCENES, variations=VKITTI2_VARIATIONS,
                               cameras=("Camera_0",), seed=0, max_queries=8):
    """Register VKITTI2 frames with referring-expression ``queries`` (:func:`load_vkitti2_referring`) under
    ``name``; the metadata is VKITTI2's plus ``referring_seed`` / ``referring_max_queries``."""
    register_vkitti2(name, root, scenes, variations, cameras, referring=dict(seed=seed, max_queries=max_queries))


def register_all_vkitti2(datasets_root):
    """``vkitti2_{train,val}`` (all variations) and ``vkitti2_<variation>_{train,val}``: the
    depth-aware names, whose records point at VKITTI2's own colour / palette label PNGs
    (``label_format "vkitti2"``, decoded by segdep_d2's readers), and ``vkitti2_referring_{train,val}``
    (the same frames with textgt-derived referring ``queries``), ``vkitti2_lidar_{train,val}`` (the frames
    with a simulated 64-beam LiDAR scan as the sparse input of depth completion). The detectron2-standard views
    ``vkitti2_sem_seg_*`` / ``vkitti2_panoptic_*`` are in :mod:`.vkitti2_prepared`."""
    root = os.path.join(datasets_root, "vkitti2")
    for split, scenes in VKITTI2_SPLITS.items():
        register_vkitti2(f"vkitti2_{split}", root, scenes, VKITTI2_VARIATIONS)
        for variation in VKITTI2_VARIATIONS:
            register_vkitti2(f"vkitti2_{variation}_{split}", root, scenes, (variation,))
        register_vkitti2(f"vkitti2_referring_{split}", root, scenes, VKITTI2_VARIATIONS, referring={})
        # depth completion: the same frames with a simulated 64-beam LiDAR scan of their depth as the input
        register_simulated_lidar(f"vkitti2_lidar_{split}", f"vkitti2_{split}")
