"""Virtual KITTI 2 classes as its ``colors.txt`` lists them (DESIGN.md §3).

``id`` is the dataset category id used inside panoptic segment ids (``id * 1000 + trackID + 1``);
``trainId`` is the contiguous training id. ``Undefined`` (0, 0, 0) is void.
"""

VKITTI2_LABEL_DIVISOR = 1000
VKITTI2_IGNORE_LABEL = 255
VKITTI2_VOID_COLOR = (0, 0, 0)  # "Undefined"

# name, colour in classSegmentation PNGs (RGB), isthing
_VKITTI2_CLASSES = [
    ("Terrain", (210, 0, 200), 0),
    ("Sky", (90, 200, 255), 0),
    ("Tree", (0, 199, 0), 0),
    ("Vegetation", (90, 240, 0), 0),
    ("Building", (140, 140, 140), 0),
    ("Road", (100, 60, 100), 0),
    ("GuardRail", (250, 100, 255), 0),
    ("TrafficSign", (255, 255, 0), 0),
    ("TrafficLight", (200, 200, 0), 0),
    ("Pole", (255, 130, 0), 0),
    ("Misc", (80, 80, 80), 0),
    ("Truck", (160, 60, 60), 1),
    ("Car", (255, 127, 80), 1),
    ("Van", (0, 139, 139), 1),
]

VKITTI2_CATEGORIES = [
    {"id": train_id + 1, "trainId": train_id, "name": name, "color": list(color), "isthing": isthing}
    for train_id, (name, color, isthing) in enumerate(_VKITTI2_CLASSES)
]
VKITTI2_THING_NAMES = tuple(c["name"] for c in VKITTI2_CATEGORIES if c["isthing"])
