"""CVAT for-images 1.1 XML: reader, rasteriser, records, read_sem_seg and the sem-seg evaluator.

The real sidewalk sample files are read in place (licence: never copied) and their tests skip when
../shared/real_samples is absent; everything else uses XMLs written into tmp_path.
"""
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import BoxMode
from PIL import Image

from segdep_d2.data import (
    CvatFormatError,
    load_cvat_dataset,
    rasterize_cvat,
    read_cvat,
    read_sem_seg,
    register_cvat_dataset,
)
from segdep_d2.data.datasets.asymmetric import keep_labels
from segdep_d2.data.datasets.sidewalk_categories import SIDEWALK_SURFACE_MASK_COLORS, sidewalk_label_to_id
from segdep_d2.evaluation import LabelledSemSegEvaluator

SAMPLE = os.path.join("sidewalk", "Sidewalk_Data", "Sample Data")


@pytest.fixture(scope="module")
def sample(real_samples):
    folder = os.path.join(real_samples, SAMPLE)
    if not os.path.isdir(folder):
        pytest.skip(f"{folder} is not present")
    return folder


# ----------------------------------------------------------------------------------------------
# Real sidewalk sample (read in place)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frame", ["000001", "000002"])
def test_surface_raster_reproduces_released_mask(sample, frame):
    """Polygons drawn per (label, attribute) in z_order, coloured with the release's palette, equal
    the released colour mask on >= 99.9 % of the pixels (measured: 100 % and 99.999 %, 20 px)."""
    xml = os.path.join(sample, "output", "Sidewalk_19009_surface_output_000001_2.xml")
    pairs = list(SIDEWALK_SURFACE_MASK_COLORS)
    attribute_to_id = {pair: i for i, pair in enumerate(pairs)}
    palette = np.zeros((256, 3), np.uint8)  # 255 (unlabelled) stays black, as in the masks
    for pair, i in attribute_to_id.items():
        palette[i] = SIDEWALK_SURFACE_MASK_COLORS[pair]
    labels = rasterize_cvat(xml, f"Sidewalk_19009_surface_raw_{frame}_2.jpg", {}, attribute_to_id=attribute_to_id)
    with Image.open(os.path.join(sample, "rawdata", f"Sidewalk_19009_surface_mask_{frame}_2.png")) as im:
        mask = np.asarray(im.convert("RGB"))
    assert labels.shape == mask.shape[:2] == (1080, 1920)
    agree = (palette[labels] == mask).all(-1)
    assert agree.mean() >= 0.999
    assert int((~agree).sum()) == {"000001": 0, "000002": 20}[frame]  # the measured agreement
    # the released mask and the raster hold the same colours
    assert {tuple(c) for c in np.unique(mask.reshape(-1, 3), axis=0)} == {
        tuple(c) for c in np.unique(palette[labels].reshape(-1, 3), axis=0)
    }


def test_real_surface_xml_is_read(sample):
    images = read_cvat(os.path.join(sample, "output", "Sidewalk_19009_surface_output_000001_2.xml"))
    assert list(images) == ["Sidewalk_19009_surface_raw_000001_2.jpg", "Sidewalk_19009_surface_raw_000002_2.jpg"]
    first, second = images.values()
    assert (first.id, first.width, first.height) == (0, 1920, 1080)
    assert [(s.label, s.attribute, s.z_order) for s in first.shapes] == [("alley", "normal", 6)]
    assert [(s.kind, s.label, s.attribute, s.z_order) for s in second.shapes] == [
        ("polygon", "roadway", "normal", 2), ("polygon", "sidewalk", "blocks", 6),
        ("polygon", "bike_lane", None, 4), ("polygon", "caution_zone", "tree_zone", 9),
    ]
    assert second.shapes[0].points.shape == (6, 2) and not second.shapes[0].points.flags.writeable


def test_real_polygon_xml_with_sidewalk_classes(sample):
    """Pole (16) and person (6); movable_signage is a dropped label, so not drawn.

    SOURCES.md gives {16: 37855} and {6: 3626}: that is PIL ImageDraw.polygon's fill. The fill used
    here (cv2.fillPoly on floored vertices, the one that reproduces the released surface masks)
    covers 60 and 22 boundary pixels more."""
    xml = os.path.join(sample, "output", "Sidewalk_19009_polygon_output_000001_2.xml")
    label_to_id = sidewalk_label_to_id()
    counts = {}
    for frame in ("000001", "000002"):
        labels = rasterize_cvat(xml, f"Sidewalk_19009_polygon_raw_{frame}_2.jpg", label_to_id)
        values, n = np.unique(labels, return_counts=True)
        counts[frame] = {int(v): int(c) for v, c in zip(values, n) if v != 255}
    assert counts == {"000001": {16: 37915}, "000002": {6: 3648}}
    images = read_cvat(xml)
    assert [s.label for s in images["Sidewalk_19009_polygon_raw_000002_2.jpg"].shapes] == ["person", "movable_signage"]
    assert [im.id for im in images.values()] == [1, 2]  # ids start at 1 in this XML

    records = load_cvat_dataset(xml, os.path.join(sample, "rawdata"), label_to_id)
    assert [r["image_id"] for r in records] == [
        "Sidewalk_19009_polygon_raw_000001_2", "Sidewalk_19009_polygon_raw_000002_2"
    ]
    assert records[0]["sem_seg_file_name"] == records[1]["sem_seg_file_name"] == os.path.abspath(xml)
    assert records[1]["cvat_image_name"] == "Sidewalk_19009_polygon_raw_000002_2.jpg"
    assert (records[1]["height"], records[1]["width"]) == (1080, 1920)
    assert "annotations" not in records[0] and "cvat_attribute_to_id" not in records[0]
    assert int((read_sem_seg(records[1]) == 6).sum()) == 3648


def test_real_bbox_xml_gives_boxes(sample, tmp_path):
    """The bbox sample's images were not copied: blank stand-ins with the XML's names."""
    xml = os.path.join(sample, "output", "Sidewalk_19009_bbox_output_000001_1.xml")
    for name in read_cvat(xml):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    label_to_id = sidewalk_label_to_id()
    records = load_cvat_dataset(xml, str(tmp_path), label_to_id)
    assert len(records) == 2
    for record in records:
        assert "sem_seg_file_name" not in record and "label_format" not in record
    # image 0: 10 boxes, 3 tree_trunk + 4 car kept (movable_signage x2, traffic_sign dropped);
    # image 1: 18 boxes, 5 dropped (chair, 3 traffic_light, traffic_sign)
    assert [len(r["annotations"]) for r in records] == [7, 13]
    first = records[0]["annotations"][0]
    assert first["bbox"] == pytest.approx([1272.39, 451.90, 1331.40, 670.79])
    assert first["bbox_mode"] == BoxMode.XYXY_ABS and first["category_id"] == label_to_id["tree_trunk"]
    pole = [a for a in records[1]["annotations"] if a["category_id"] == label_to_id["pole"]]
    assert len(pole) == 1 and pole[0]["bbox"] == pytest.approx([1332.05, 0.0, 1522.27, 1080.0])


# ----------------------------------------------------------------------------------------------
# Hand-made XMLs
# ----------------------------------------------------------------------------------------------
HAND_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <image id="0" name="a.png" width="8" height="6">
    <polygon label="road" occluded="0" points="0,0;8,0;8,6;0,6" z_order="0"/>
    <polygon label="car" occluded="1" points="0,0;4,0;4,6;0,6" z_order="5"/>
    <polygon label="tree" occluded="0" points="2,0;6,0;6,6;2,6" z_order="1"/>
    <polygon label="person" occluded="0" points="3,0;8,0;8,3;3,3" z_order="5"/>
    <polygon label="unknown" occluded="0" points="0,4;8,4;8,6;0,6" z_order="9"/>
    <polyline label="road" points="0,0;7,5" z_order="10"/>
    <points label="road" points="1,1" z_order="10"/>
  </image>
  <image id="1" name="b.png" width="4" height="2">
    <polygon label="road" occluded="0" points="0,0;2,0;2,2;0,2" z_order="0">
      <attribute name="attribute">crosswalk</attribute>
    </polygon>
    <polygon label="road" occluded="0" points="2,0;4,0;4,2;2,2" z_order="0">
      <attribute name="attribute">normal</attribute>
    </polygon>
  </image>
</annotations>
"""
LABELS = {"road": 0, "car": 1, "tree": 2, "person": 3}


@pytest.fixture
def hand_xml(tmp_path):
    path = tmp_path / "task.xml"
    path.write_text(HAND_XML)
    for name, (w, h) in {"a.png": (8, 6), "b.png": (4, 2)}.items():
        Image.new("RGB", (w, h)).save(tmp_path / name)
    return str(path)


def test_z_order_stable_ties_and_unmapped_labels(hand_xml):
    labels = rasterize_cvat(hand_xml, "a.png", LABELS)
    # z: road 0 < tree 1 < car 5 == person 5 (car first in the document, so person is drawn over
    # it); "unknown" (z 9) is not in LABELS: not drawn, what lies beneath stays; polyline / points
    # are never drawn. The fill covers vertex rows / columns inclusive.
    expected = np.zeros((6, 8), np.uint8)
    expected[:, 2:7] = 2
    expected[:, 0:5] = 1
    expected[0:4, 3:8] = 3
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint8 and labels.shape == (6, 8)

    images = read_cvat(hand_xml)
    shapes = images["a.png"].shapes
    assert [s.kind for s in shapes] == ["polygon"] * 5 + ["polyline", "points"]
    assert shapes[1].occluded and not shapes[0].occluded


def test_unlabelled_pixels_are_ignore(hand_xml):
    labels = rasterize_cvat(hand_xml, "a.png", {"person": 7}, ignore_label=200)
    assert set(np.unique(labels).tolist()) == {7, 200}
    assert (labels == 7).sum() == 4 * 5  # rows 0..3, columns 3..7 (x 8 lies outside the 8-wide image)


def test_attribute_to_id_takes_precedence(hand_xml):
    labels = rasterize_cvat(hand_xml, "b.png", LABELS, attribute_to_id={("road", "crosswalk"): 9})
    np.testing.assert_array_equal(labels, [[9, 9, 0, 0], [9, 9, 0, 0]])  # the crosswalk polygon covers x 0..2
    labels = rasterize_cvat(hand_xml, "b.png", {}, attribute_to_id={("road", "normal"): 4})
    np.testing.assert_array_equal(labels, [[255, 255, 4, 4], [255, 255, 4, 4]])


def test_records_and_read_sem_seg(hand_xml, tmp_path):
    records = load_cvat_dataset(hand_xml, str(tmp_path), LABELS, attribute_to_id={("road", "crosswalk"): 9})
    assert [r["file_name"] for r in records] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert [(r["image_id"], r["height"], r["width"]) for r in records] == [("a", 6, 8), ("b", 2, 4)]
    for r in records:
        assert r["label_format"] == "cvat" and r["sem_seg_file_name"] == hand_xml
        assert r["cvat_label_to_id"] == LABELS and r["cvat_attribute_to_id"] == {("road", "crosswalk"): 9}
        assert "annotations" not in r  # no boxes in this XML
    np.testing.assert_array_equal(read_sem_seg(records[1]), [[9, 9, 0, 0], [9, 9, 0, 0]])
    np.testing.assert_array_equal(read_sem_seg(records[0]), rasterize_cvat(hand_xml, "a.png", LABELS))
    # keep_labels("depth") drops every CVAT key
    (depth_only,) = keep_labels(records[:1], ("depth",))
    assert not any(k.startswith("cvat_") or k in ("sem_seg_file_name", "label_format") for k in depth_only)


def test_parse_is_cached_per_mtime(hand_xml):
    assert read_cvat(hand_xml)["a.png"] is read_cvat(hand_xml)["a.png"]
    with open(hand_xml) as f:
        text = f.read()
    st = os.stat(hand_xml)
    with open(hand_xml, "w") as f:
        f.write(text.replace('name="b.png"', 'name="c.png"'))
    os.utime(hand_xml, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert list(read_cvat(hand_xml)) == ["a.png", "c.png"]


def test_errors_name_the_file(hand_xml, tmp_path):
    with pytest.raises(CvatFormatError, match=r"task\.xml.*no <image name='nope.png'>"):
        rasterize_cvat(hand_xml, "nope.png", LABELS)
    with pytest.raises(FileNotFoundError, match="absent.xml"):
        read_cvat(tmp_path / "absent.xml")

    broken = tmp_path / "broken.xml"
    broken.write_text("<annotations><image id='0' name='a.png' width='2' height='2'></annotations>")
    with pytest.raises(CvatFormatError, match="broken.xml.*not well-formed"):
        read_cvat(broken)

    bad_points = tmp_path / "bad_points.xml"
    bad_points.write_text(HAND_XML.replace('points="3,0;8,0;8,3;3,3"', 'points="3,0;8"'))
    with pytest.raises(CvatFormatError, match=r"bad_points.xml.*a.png.*<polygon> #3"):
        read_cvat(bad_points)

    empty = tmp_path / "empty.xml"
    empty.write_text("<annotations><version>1.1</version><meta/></annotations>")
    assert read_cvat(empty) == {}
    with pytest.raises(CvatFormatError, match="empty.xml.*no <image>.*empty"):
        load_cvat_dataset(empty, str(tmp_path), LABELS)

    os.remove(tmp_path / "b.png")
    with pytest.raises(FileNotFoundError, match=r"1 of the 2 images named in .*task\.xml.*missing under .*b\.png"):
        load_cvat_dataset(hand_xml, str(tmp_path), LABELS)

    with pytest.raises(ValueError, match="0..255"):
        rasterize_cvat(hand_xml, "a.png", {"road": 300})


def test_register_cvat_dataset(hand_xml, tmp_path):
    name = f"cvat_test_{uuid.uuid4().hex[:8]}"
    try:
        register_cvat_dataset(name, xml=hand_xml, image_root=str(tmp_path), label_to_id={"car": 1, "road": 0, "x": 3})
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == ["road", "car", "class_2", "x"]
        assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
        assert len(DatasetCatalog.get(name)) == 2
        # re-registering replaces the name (and its metadata)
        register_cvat_dataset(name, xml=hand_xml, image_root=str(tmp_path), label_to_id=LABELS,
                              metadata={"stuff_classes": ["r", "c", "t", "p"]})
        assert MetadataCatalog.get(name).stuff_classes == ["r", "c", "t", "p"]
        assert DatasetCatalog.get(name)[0]["cvat_label_to_id"] == LABELS
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_box_xml_records(tmp_path):
    xml = tmp_path / "boxes.xml"
    xml.write_text(
        '<annotations><version>1.1</version><image id="3" name="img.jpg" width="10" height="5">'
        '<box label="car" occluded="0" xtl="1.5" ytl="0" xbr="4" ybr="5" z_order="0"/>'
        '<box label="dropped" occluded="0" xtl="0" ytl="0" xbr="1" ybr="1" z_order="0"/>'
        "</image></annotations>"
    )
    Image.new("RGB", (10, 5)).save(tmp_path / "img.jpg")
    (record,) = load_cvat_dataset(str(xml), str(tmp_path), {"car": 2})
    assert record["annotations"] == [
        {"bbox": [1.5, 0.0, 4.0, 5.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2, "iscrowd": 0}
    ]
    assert "sem_seg_file_name" not in record
    # boxes are never drawn
    assert (rasterize_cvat(str(xml), "img.jpg", {"car": 2}) == 255).all()


# ----------------------------------------------------------------------------------------------
# Evaluation: images sharing one XML are scored against their own labels
# ----------------------------------------------------------------------------------------------
class _CannedModel(torch.nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, inputs):
        return [self.outputs[x["image_id"]] for x in inputs]


def test_sem_seg_evaluator_on_records_sharing_one_xml(tmp_path):
    xml = tmp_path / "two.xml"
    xml.write_text(
        '<annotations><version>1.1</version>'
        '<image id="0" name="left.png" width="4" height="2">'
        '<polygon label="a" points="0,0;1,0;1,1;0,1" z_order="0"/></image>'   # class 0 on x 0..1
        '<image id="1" name="right.png" width="4" height="2">'
        '<polygon label="b" points="0,0;3,0;3,1;0,1" z_order="0"/></image>'   # class 1 everywhere
        "</annotations>"
    )
    for n in ("left.png", "right.png"):
        Image.new("RGB", (4, 2)).save(tmp_path / n)
    name = f"cvat_eval_{uuid.uuid4().hex[:8]}"
    register_cvat_dataset(name, xml=str(xml), image_root=str(tmp_path), label_to_id={"a": 0, "b": 1})
    try:
        records = DatasetCatalog.get(name)
        assert records[0]["sem_seg_file_name"] == records[1]["sem_seg_file_name"]
        gts = [read_sem_seg(r) for r in records]
        np.testing.assert_array_equal(gts[0], [[0, 0, 255, 255], [0, 0, 255, 255]])
        assert (gts[1] == 1).all()
        # predicting each image's own labels (0 where ignore) is perfect only when each image is
        # scored against its own XML image
        preds = {r["image_id"]: np.where(g == 255, 0, g) for r, g in zip(records, gts)}
        outputs = {k: {"sem_seg": torch.nn.functional.one_hot(torch.as_tensor(p.astype(np.int64)), 2)
                       .permute(2, 0, 1).float()} for k, p in preds.items()}
        evaluator = LabelledSemSegEvaluator(name, distributed=False)
        res = inference_on_dataset(_CannedModel(outputs), [[r] for r in records], evaluator)["sem_seg"]
        assert res["num_images"] == 2
        assert res["mIoU"] == pytest.approx(100.0)
        assert res["pACC"] == pytest.approx(100.0)
    finally:
        for n in (name, f"{name}@sem_seg"):
            if n in DatasetCatalog.list():
                DatasetCatalog.remove(n)
                MetadataCatalog.remove(n)
