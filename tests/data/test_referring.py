"""Referring expressions from VKITTI2 textgt: every expression is re-derived from the scene by independent code
here and must select exactly its target; generation is deterministic for a seed."""
import os
import random
import re

import numpy as np
import pytest
from PIL import Image

from segdep_d2.data.datasets.vkitti2_textgt import VKITTI2Object, load_vkitti2_textgt
from segdep_d2.data.referring import VisibilityRule, referring_expressions

# What the phrases mean (DESIGN of segdep_d2.data.referring), restated independently of its code.
_LABEL_OF_NOUN = {"car": "Car", "van": "Van", "truck": "Truck"}
_MODEL_NOUN = {"Sedan4Door": "sedan", "Sedan2Door": "coupe", "Hatchback": "hatchback", "Hybrid": "hybrid",
               "SUV": "SUV", "Van": "van", "Minivan": "minivan", "BoxTruck": "box truck", "Truck": "truck",
               "Firetruck_small_eu": "fire truck"}


def _x(o):
    return (o.bbox[0] + o.bbox[1]) / 2


def _z(o):
    return o.camera_xyz[2]


def _present(objects):
    return [o for o in objects if o.number_pixels > 0 and o.camera_xyz[2] > 0]


def _referable(o, width, height):
    return (o.number_pixels >= max(16, 5e-4 * width * height) and o.occupancy_ratio >= 0.15
            and o.truncation_ratio <= 0.5 and _z(o) > 0)


def _truth(text, present, width):
    """Track ids of the present objects the phrase describes."""
    def of(noun):
        return [o for o in present if noun == "vehicle" or o.label == _LABEL_OF_NOUN[noun]]

    def ids(objs):
        return {o.track_id for o in objs}

    if m := re.fullmatch(r"the (nearest|farthest) (car|van|truck|vehicle)", text):
        group = of(m[2])
        best = (min if m[1] == "nearest" else max)(_z(o) for o in group)
        return ids(o for o in group if _z(o) == best)
    if m := re.fullmatch(r"the (leftmost|rightmost) (car|van|truck)", text):
        group = of(m[2])
        best = (min if m[1] == "leftmost" else max)(_x(o) for o in group)
        return ids(o for o in group if _x(o) == best)
    if m := re.fullmatch(r"the (second|third) (car|van|truck) from the (left|right)", text):
        group = of(m[2])
        xs = sorted((_x(o) for o in group), reverse=m[3] == "right")
        k = {"second": 2, "third": 3}[m[1]]
        return ids(o for o in group if len(xs) >= k and _x(o) == xs[k - 1])
    if m := re.fullmatch(r"the (car|van|truck) on the (left|right)", text):
        return ids(o for o in of(m[1]) if (_x(o) < width / 2 if m[2] == "left" else _x(o) > width / 2))
    if m := re.fullmatch(r"the (car|van|truck) (more|less) than (\d+) metres away", text):
        n = int(m[3])
        return ids(o for o in of(m[1]) if (_z(o) > n if m[2] == "more" else _z(o) < n))
    if m := re.fullmatch(r"the (car|van|truck) about (\d+) metres ahead", text):
        n = int(m[2])
        return ids(o for o in of(m[1]) if abs(_z(o) - n) <= max(1.0, 0.15 * n))
    m = re.fullmatch(r"the (\w+) (.+)", text)
    assert m, text
    colour, noun = m[1], m[2]
    return ids(o for o in present if o.color.lower() == colour
               and (_MODEL_NOUN.get(o.model) == noun or o.label.lower() == noun))


def _check(queries, objects, width, height):
    present = _present(objects)
    by_id = {o.track_id: o for o in present}
    for q in queries:
        assert set(q) == {"text", "kind", "track_id", "instance_id", "target_distance"}
        assert _truth(q["text"], present, width) == {q["track_id"]}, q
        target = by_id[q["track_id"]]
        assert _referable(target, width, height), q
        assert q["instance_id"] == q["track_id"] + 1 and q["target_distance"] == pytest.approx(_z(target))


def _obj(track, label, model, color, cx, z, pixels=2000, occupancy=0.6, truncation=0.0):
    return VKITTI2Object(
        track_id=track, label=label, model=model, color=color, frame=0, camera=0,
        bbox=(cx - 20, cx + 20, 150, 200), number_pixels=pixels, truncation_ratio=truncation,
        occupancy_ratio=occupancy, is_moving=False, alpha=0.0, dimensions=(1.8, 1.5, 4.5),
        world_xyz=(0.0, 0.0, z), rotation_world=(0.0, 0.0, 0.0), camera_xyz=((cx - 621) / 725 * z, 1.6, z),
        rotation_camera=(0.0, 0.0, 0.0))


_SCENE = [
    _obj(0, "Car", "Sedan4Door", "Black", 300, 12.3),
    _obj(1, "Car", "Hatchback", "Silver", 700, 25.0),
    _obj(2, "Car", "Hatchback", "Black", 1000, 40.0),
    _obj(3, "Car", "SUV", "Red", 900, 60.0),
    _obj(4, "Truck", "BoxTruck", "White", 500, 35.0),
    _obj(5, "Van", "Van", "Blue", 200, 18.0),
]


def test_expressions_of_a_hand_built_scene():
    queries = referring_expressions(_SCENE, 1242, 375, max_queries=None)
    _check(queries, _SCENE, 1242, 375)
    target = {q["text"]: q["track_id"] for q in queries}
    for text, track in [("the black sedan", 0), ("the car about 12 metres ahead", 0),
                        ("the second car from the right", 3), ("the truck more than 30 metres away", 4),
                        ("the nearest car", 0), ("the farthest car", 3), ("the van on the left", 5),
                        ("the red SUV", 3), ("the leftmost car", 0), ("the nearest vehicle", 0)]:
        assert target.get(text) == track, text
    assert "the black car" not in target and "the black hatchback" in target  # two black cars, one hatchback
    assert {q["kind"] for q in queries} == {"colour_type", "spatial", "distance"}

    # A present but barely visible car (10 px) nearer than all others is a distractor, never a target.
    blocked = _SCENE + [_obj(6, "Car", "Hatchback", "Green", 620, 5.0, pixels=10)]
    queries = referring_expressions(blocked, 1242, 375, max_queries=None)
    _check(queries, blocked, 1242, 375)
    texts = {q["text"] for q in queries}
    assert "the nearest car" not in texts and "the nearest vehicle" not in texts
    assert "the green hatchback" not in texts and "the car about 12 metres ahead" in texts
    assert all(q["track_id"] != 6 for q in queries)


def test_deterministic_for_a_seed_and_independent_of_input_order():
    a = referring_expressions(_SCENE, 1242, 375, seed=3, max_queries=4)
    assert a == referring_expressions(_SCENE, 1242, 375, seed=3, max_queries=4)
    shuffled = list(_SCENE)
    random.Random(0).shuffle(shuffled)
    assert a == referring_expressions(shuffled, 1242, 375, seed=3, max_queries=4)
    assert a == referring_expressions(_SCENE, 1242, 375, rng=np.random.default_rng(3), max_queries=4)
    assert len(a) == 4 and {q["kind"] for q in a} == {"colour_type", "spatial", "distance"}  # kinds in turn
    selections = {tuple(q["text"] for q in referring_expressions(_SCENE, 1242, 375, seed=s, max_queries=4))
                  for s in range(10)}
    assert len(selections) > 1
    everything = {q["text"] for q in referring_expressions(_SCENE, 1242, 375, max_queries=None)}
    assert all(set(s) <= everything for s in selections)
    assert referring_expressions([], 1242, 375) == []


def test_visibility_rule():
    rule = VisibilityRule()
    assert rule.pixel_threshold(1242, 375) == pytest.approx(5e-4 * 1242 * 375)
    assert rule.pixel_threshold(192, 64) == 16
    assert rule.referable(_obj(0, "Car", "SUV", "Red", 600, 10.0), 1242, 375)
    assert not rule.referable(_obj(0, "Car", "SUV", "Red", 600, 10.0, pixels=200), 1242, 375)
    assert not rule.referable(_obj(0, "Car", "SUV", "Red", 600, 10.0, occupancy=0.1), 1242, 375)
    assert not rule.referable(_obj(0, "Car", "SUV", "Red", 600, 10.0, truncation=0.6), 1242, 375)
    assert not rule.referable(_obj(0, "Car", "SUV", "Red", 600, -3.0), 1242, 375)


def test_real_frames_give_unique_expressions(real_samples):
    """Scene01/clone frames 0-4: textgt read in place, every expression re-derived from the scene."""
    clone = os.path.join(real_samples, "vkitti2", "adas-perception-eval", "tests", "fixtures", "vkitti", "Scene01",
                         "clone")
    gt = load_vkitti2_textgt(clone)
    texts, kinds = [], set()
    for frame in range(5):
        objects = gt.objects(frame, 0)
        queries = referring_expressions(objects, 1242, 375, seed=frame, max_queries=None)
        assert len(queries) >= 5
        _check(queries, objects, 1242, 375)
        texts += [q["text"] for q in queries]
        kinds |= {q["kind"] for q in queries}
    assert kinds == {"colour_type", "spatial", "distance"}
    # frame 0: the black Sedan4Door (track 0) is the nearest car, 6.4 m ahead; the red car (track 3) is a hatchback
    frame0 = {q["text"]: q["track_id"] for q in referring_expressions(gt.objects(0, 0), 1242, 375, max_queries=None)}
    assert frame0["the nearest car"] == 0 and frame0["the red hatchback"] == 3
    assert frame0["the car about 6 metres ahead"] == 0
    for pattern in (r"the (second|third) \w+ from the", r"about \d+ metres ahead", r"(more|less) than \d+ metres"):
        assert any(re.search(pattern, t) for t in texts), pattern


def test_referring_records_on_synthetic_vkitti2(synthetic_vkitti2):
    from segdep_d2.data.datasets import load_vkitti2, load_vkitti2_referring

    root, _ = synthetic_vkitti2
    records = load_vkitti2_referring(root, ("Scene01", "Scene20"), ("clone", "fog"), seed=0)
    plain = {r["image_id"]: r for r in load_vkitti2(root, ("Scene01", "Scene20"), ("clone", "fog"))}
    assert len(records) >= 0.5 * len(plain) and records
    for record in records:
        assert {k: record[k] for k in plain[record["image_id"]]} == plain[record["image_id"]]
        assert record["sequence_id"].count("/") == 2 and isinstance(record["frame_index"], int)
        assert 1 <= len(record["queries"]) <= 8
        scene, variation, _ = record["sequence_id"].split("/")
        objects = load_vkitti2_textgt(os.path.join(root, scene, variation)).objects(record["frame_index"], 0)
        _check(record["queries"], objects, record["width"], record["height"])
        instance = np.array(Image.open(record["instance_file_name"]))
        for q in record["queries"]:  # instancegt holds trackID + 1: the target's pixels are its instance id
            target = next(o for o in objects if o.track_id == q["track_id"])
            assert int((instance == q["instance_id"]).sum()) == target.number_pixels > 0
    # a record's queries depend on the seed and its image id only, not on the other records loaded
    subset = load_vkitti2_referring(root, ("Scene20",), ("fog",), seed=0)
    full = {r["image_id"]: r["queries"] for r in records}
    assert subset and all(r["queries"] == full[r["image_id"]] for r in subset)
    other = load_vkitti2_referring(root, ("Scene01", "Scene20"), ("clone", "fog"), seed=1)
    assert [r["queries"] for r in other] != [r["queries"] for r in records]


def test_registered_names(synthetic_vkitti2):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import segdep_d2  # noqa: F401 - registers the builtin names
    from segdep_d2.data.datasets import register_vkitti2_referring

    for split in ("train", "val"):
        name = f"vkitti2_referring_{split}"
        assert name in DatasetCatalog.list()
        meta, base = MetadataCatalog.get(name), MetadataCatalog.get(f"vkitti2_{split}")
        assert (meta.scenes, meta.variations, meta.dataset_root) == (base.scenes, base.variations, base.dataset_root)
    root, _ = synthetic_vkitti2
    name = "test_vkitti2_referring_synthetic"
    if name not in DatasetCatalog.list():
        register_vkitti2_referring(name, root, ("Scene01",), ("clone",))
    records = DatasetCatalog.get(name)
    assert records and all(r["queries"] for r in records)
    assert MetadataCatalog.get(name).thing_classes


def test_per_archive_layout(synthetic_vkitti2, tmp_path):
    """textgt found in vkitti_2.0.3_textgt/ next to vkitti_2.0.3_rgb/ etc., as the archives unpack."""
    import shutil

    from segdep_d2.data.datasets import load_vkitti2_referring

    merged, _ = synthetic_vkitti2
    split = tmp_path / "vkitti2"
    for kind in ("rgb", "instanceSegmentation", "classSegmentation"):
        shutil.copytree(os.path.join(merged, "Scene20", "clone", "frames", kind),
                        split / f"vkitti_2.0.3_{kind}" / "Scene20" / "clone" / "frames" / kind)
    text = split / "vkitti_2.0.3_textgt" / "Scene20" / "clone"
    text.mkdir(parents=True)
    for name in ("colors.txt", "info.txt", "bbox.txt", "pose.txt"):
        shutil.copy(os.path.join(merged, "Scene20", "clone", name), text / name)
    a = load_vkitti2_referring(merged, ("Scene20",), ("clone",))
    b = load_vkitti2_referring(str(split), ("Scene20",), ("clone",))
    assert a and [r["queries"] for r in a] == [r["queries"] for r in b]
    os.remove(text / "pose.txt")
    with pytest.raises(FileNotFoundError, match="Scene20/clone lacks pose.txt"):
        load_vkitti2_referring(str(split), ("Scene20",), ("clone",))
