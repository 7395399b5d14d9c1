"""Dataset constants, class tables and the material / primitive ids every stage of the generator shares."""

from __future__ import annotations

import functools
from typing import Dict, NamedTuple

import numpy as np

from segdep_d2.data.datasets.vkitti2_categories import VKITTI2_CATEGORIES

# --------------------------------------------------------------------------------------------------
# Virtual KITTI 2
# --------------------------------------------------------------------------------------------------

VKITTI2_SCENES = ("Scene01", "Scene02", "Scene06", "Scene18", "Scene20")
VKITTI2_VARIATIONS = (
    "15-deg-left", "15-deg-right", "30-deg-left", "30-deg-right",
    "clone", "fog", "morning", "overcast", "rain", "sunset",
)
# Geometry variations rotate the camera; "left" turns the optical axis towards -X.
VARIATION_YAW_DEG = {"15-deg-left": -15.0, "15-deg-right": 15.0, "30-deg-left": -30.0, "30-deg-right": 30.0}
VKITTI2_SIZE = (375, 1242)  # height, width the intrinsics below refer to
VKITTI2_K = (725.0087, 725.0087, 620.5, 187.0)  # fx, fy, cx, cy
VKITTI2_BASELINE = 0.532725  # Camera_1 sits this far to the right of Camera_0

# --------------------------------------------------------------------------------------------------
# Cityscapes
# --------------------------------------------------------------------------------------------------

CITYSCAPES_SIZE = (1024, 2048)
CITYSCAPES_K = (2262.52, 2265.3017905988554, 1096.98, 513.137)
CITYSCAPES_BASELINE = 0.209313
CITYSCAPES_DEFAULT_SPLITS = {"train": 2, "val": 1}
CITYSCAPES_CITIES = {
    "train": ("aachen", "bochum", "bremen", "cologne"),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld", "bonn"),
}

MAX_FRAMES = 1000  # a scene layout covers this many frames (VKITTI2's longest scene has 837)
NEAR = 0.05  # metres; nothing closer than this is drawn

# --------------------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------------------

# Internal classes: (name, Virtual KITTI 2 class or None = void, Cityscapes label name).
# VKITTI2 has no sidewalk class: pavements are drivable-looking ground there, so they become "Road".
SYNTHETIC_CLASSES = (
    ("road", "Road", "road"),
    ("sidewalk", "Road", "sidewalk"),
    ("terrain", "Terrain", "terrain"),
    ("building", "Building", "building"),
    ("pole", "Pole", "pole"),
    ("traffic_sign", "TrafficSign", "traffic sign"),
    ("traffic_light", "TrafficLight", "traffic light"),
    ("tree", "Tree", "vegetation"),
    ("vegetation", "Vegetation", "vegetation"),
    ("guard_rail", "GuardRail", "guard rail"),
    ("misc", "Misc", "static"),
    ("sky", "Sky", "sky"),
    ("car", "Car", "car"),
    ("van", "Van", "car"),
    ("truck", "Truck", "truck"),
    ("ego_vehicle", None, "ego vehicle"),
)
CLASS_INDEX = {name: i for i, (name, _, _) in enumerate(SYNTHETIC_CLASSES)}  # internal class name -> index

VKITTI2_NAME_TO_TRAIN_ID = {c["name"]: c["trainId"] for c in VKITTI2_CATEGORIES}
VKITTI2_TRAIN_ID_TO_NAME = {c["trainId"]: c["name"] for c in VKITTI2_CATEGORIES}
# Internal class index -> VKITTI2 trainId (255 = void).
CLASS_TO_VKITTI2_TRAIN_ID = np.array(
    [255 if vk is None else VKITTI2_NAME_TO_TRAIN_ID[vk] for _, vk, _ in SYNTHETIC_CLASSES], dtype=np.uint8
)
VKITTI2_TRAIN_ID_COLORS = np.zeros((256, 3), np.uint8)  # trainId -> classgt colour; 255 (void) stays 0,0,0 = Undefined
for _category in VKITTI2_CATEGORIES:
    VKITTI2_TRAIN_ID_COLORS[_category["trainId"]] = _category["color"]
del _category


class CityscapesTables(NamedTuple):
    """Internal class -> Cityscapes label id, plus label id -> trainId / colour / hasInstances / name lookups."""

    class_to_id: np.ndarray     # (len(SYNTHETIC_CLASSES),) uint8
    id_to_train_id: np.ndarray  # (256,) uint8, 255 = ignored
    id_to_color: np.ndarray     # (256, 3) uint8
    id_has_instances: np.ndarray  # (256,) bool
    id_to_name: Dict[int, str]


@functools.lru_cache(maxsize=1)
def cityscapes_tables() -> CityscapesTables:
    # Imported lazily: only Cityscapes output needs cityscapesscripts.
    from cityscapesscripts.helpers.labels import labels, name2label

    class_to_id = np.array([name2label[cs].id for _, _, cs in SYNTHETIC_CLASSES], dtype=np.uint8)
    to_train = np.full(256, 255, np.uint8)
    color = np.zeros((256, 3), np.uint8)
    has_instances = np.zeros(256, bool)
    names = {}
    for label in labels:
        if 0 <= label.id < 256:
            to_train[label.id] = label.trainId if 0 <= label.trainId < 255 else 255
            color[label.id] = label.color
            has_instances[label.id] = label.hasInstances
            names[label.id] = label.name
    return CityscapesTables(class_to_id, to_train, color, has_instances, names)


# --------------------------------------------------------------------------------------------------
# Materials and special primitive ids
# --------------------------------------------------------------------------------------------------

# Materials choose the texture function of a primitive.
(MAT_FACADE, MAT_ROUGH, MAT_SIGN, MAT_TRAFFIC_LIGHT, MAT_FOLIAGE,
 MAT_VEHICLE_BODY, MAT_VEHICLE_CABIN, MAT_VEHICLE_CARGO) = range(8)
# Per-pixel primitive index for what is not a primitive: sky, ground and the ego car's bonnet.
PRIM_SKY, PRIM_GROUND, PRIM_HOOD = -1, -2, -3
