"""The Korean sidewalk dataset's classes (AI Hub "인도보행 영상", TestWorks; the SafeTrip-Q HydraNet seed).

The release has three annotation tasks, each a CVAT-for-images 1.1 XML per folder:

* **Surface**: 6 polygon labels, each with one radio attribute named ``attribute`` (the surface kind);
  the released colour masks (``MASK/*.png``) colour each (label, attribute) pair.
* **Polygon**: 29 obstacle labels; 18 are kept, the 11 in :data:`SIDEWALK_DROPPED_POLYGON_LABELS` are
  not drawn (their pixels stay ignore), as the seed does.
* **Bbox**: boxes of the polygon labels (not masks; not used for segmentation).

The training classes are the seed's 24 (``0 sidewalk`` ... ``23 traffic_light_controller``): the 6 surface
labels (attributes merged), then the 18 kept obstacles.
"""

SIDEWALK_IGNORE_LABEL = 255

# 0-5: Surface labels (CVAT label names), attribute merged into the label.
SIDEWALK_SURFACE_CLASSES = ("sidewalk", "braille_guide_blocks", "roadway", "alley", "bike_lane", "caution_zone")
# 6-23: Polygon labels kept by the seed, moving objects then fixed ones.
SIDEWALK_POLYGON_CLASSES = (
    "person", "car", "bus", "truck", "bicycle", "motorcycle", "stroller", "scooter",
    "tree_trunk", "potted_plant", "pole", "bench", "bollard", "barricade", "fire_hydrant", "kiosk",
    "power_controller", "traffic_light_controller",
)
SIDEWALK_CLASSES = SIDEWALK_SURFACE_CLASSES + SIDEWALK_POLYGON_CLASSES  # the 24 training classes

# Polygon labels the seed removes (left unlabelled = ignore): fewer than 100 annotations (parking_meter,
# cat, dog, wheelchair), not obstacles (traffic_light, traffic_sign, stop, movable_signage), ambiguous
# (carrier, chair, table).
SIDEWALK_DROPPED_POLYGON_LABELS = (
    "parking_meter", "cat", "dog", "wheelchair",
    "traffic_light", "traffic_sign", "stop", "movable_signage",
    "carrier", "chair", "table",
)

# The values of each surface label's ``attribute`` (bike_lane has none).
SIDEWALK_SURFACE_ATTRIBUTES = {
    "sidewalk": ("blocks", "cement", "urethane", "asphalt", "soil_stone", "damaged", "other"),
    "braille_guide_blocks": ("normal", "damaged"),
    "roadway": ("normal", "crosswalk"),
    "alley": ("normal", "crosswalk", "speed_bump", "damaged"),
    "bike_lane": (),
    "caution_zone": ("stairs", "manhole", "tree_zone", "grating", "repair_zone"),
}

# The colours of the released Surface ``MASK/*.png`` files, per (label, attribute); (0, 0, 0) is unlabelled.
# Measured on the real sample (alley/normal, roadway/normal, sidewalk/blocks, bike_lane, caution_zone/tree_zone)
# and equal to the 22-entry palette public users of the release work with.
SIDEWALK_SURFACE_MASK_COLORS = {
    ("sidewalk", "blocks"): (0, 0, 255),
    ("sidewalk", "cement"): (217, 217, 217),
    ("sidewalk", "urethane"): (198, 89, 17),
    ("sidewalk", "asphalt"): (128, 128, 128),
    ("sidewalk", "soil_stone"): (255, 230, 153),
    ("sidewalk", "damaged"): (55, 86, 35),
    ("sidewalk", "other"): (110, 168, 70),
    ("braille_guide_blocks", "normal"): (255, 255, 0),
    ("braille_guide_blocks", "damaged"): (128, 96, 0),
    ("roadway", "normal"): (255, 128, 255),
    ("roadway", "crosswalk"): (255, 0, 255),
    ("alley", "normal"): (230, 170, 255),
    ("alley", "crosswalk"): (208, 88, 255),
    ("alley", "speed_bump"): (138, 60, 200),
    ("alley", "damaged"): (88, 38, 128),
    ("bike_lane", None): (255, 155, 155),
    ("caution_zone", "stairs"): (255, 192, 0),
    ("caution_zone", "manhole"): (255, 0, 0),
    ("caution_zone", "tree_zone"): (0, 255, 0),
    ("caution_zone", "grating"): (255, 128, 0),
    ("caution_zone", "repair_zone"): (105, 105, 255),
}
SIDEWALK_UNLABELLED_COLOR = (0, 0, 0)

# Display colours of the 24 classes (Visualizer): the surface labels' most common mask colour, and
# Cityscapes-like colours for the obstacles.
SIDEWALK_COLORS = (
    (0, 0, 255), (255, 255, 0), (255, 128, 255), (230, 170, 255), (255, 155, 155), (255, 192, 0),
    (220, 20, 60), (0, 0, 142), (0, 60, 100), (0, 0, 70), (119, 11, 32), (0, 0, 230), (255, 105, 180),
    (0, 80, 100), (107, 142, 35), (152, 251, 152), (153, 153, 153), (190, 153, 153), (250, 170, 30),
    (102, 102, 156), (220, 220, 0), (70, 70, 70), (150, 100, 100), (150, 120, 90),
)


def sidewalk_label_to_id():
    """CVAT label name -> training id for both annotation tasks (dropped polygon labels are absent)."""
    return {name: i for i, name in enumerate(SIDEWALK_CLASSES)}
