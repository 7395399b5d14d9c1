"""The Korean sidewalk dataset's release layout, built by hand in tmp_path (tiny generated images, a
hand-written CVAT XML, a tiny ZED .conf and uint16 disp16 PNGs; no real file is copied)."""
import os
import re

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from segdep_d2.data import read_sem_seg
from segdep_d2.data.datasets import (
    SIDEWALK_CLASSES,
    load_sidewalk,
    register_all_sidewalk,
    sidewalk_label_to_id,
    sidewalk_metadata,
    sidewalk_split_of,
)
from segdep_d2.data.datasets.sidewalk_categories import SIDEWALK_DROPPED_POLYGON_LABELS

W, H = 8, 6
NAMES = [f"sidewalk_{t}_{s}" for t in ("surface", "polygon", "depth") for s in ("train", "val")]


def _xml(images):
    """images: [(name, [(label, attribute or None, points, z)])]"""
    body = []
    for i, (name, polygons) in enumerate(images):
        body.append(f'  <image id="{i}" name="{name}" width="{W}" height="{H}">')
        for label, attribute, points, z in polygons:
            child = "" if attribute is None else f'<attribute name="attribute">{attribute}</attribute>'
            body.append(f'    <polygon label="{label}" occluded="0" points="{points}" z_order="{z}">{child}</polygon>')
        body.append("  </image>")
    header = '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n'
    return header + "\n".join(body) + "\n</annotations>\n"


def _image(path, channels=3):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.full((H, W, channels), 90, np.uint8))


LEFT_HALF, RIGHT_HALF, ALL = "0,0;3,0;3,5;0,5", "4,0;7,0;7,5;4,5", "0,0;7,0;7,5;0,5"
CONF = """[LEFT_CAM_2K]
fx=1.0
fy=1.0
cx=4
cy=3
k1=0
k2=0
[STEREO]
BaseLine=120.0
"""


@pytest.fixture
def release(tmp_path):
    """``<tmp>/datasets/sidewalk``: Surface_001 (train), Surface_010 (val), Polygon_0001 (train),
    Polygon_0020 (val), Depth_001 (train), Depth_030 (val), and a folder without a number."""
    root = tmp_path / "datasets" / "sidewalk"
    # Surface
    for folder, frames in {"Surface_001": ["MP_SEL_SUR_000001.jpg", "MP_SEL_SUR_000002.jpg"],
                           "Surface_010": ["MP_SEL_SUR_000100.jpg"]}.items():
        d = root / "Surface" / folder
        for name in frames:
            _image(str(d / name))
            _image(str(d / "MASK" / name.replace(".jpg", ".png")))
        _image(str(d / "MP_SEL_SUR_999999.jpg"))  # not named by the XML: not listed
        polygons = [("sidewalk", "blocks", LEFT_HALF, 1), ("roadway", "crosswalk", RIGHT_HALF, 2),
                    ("bike_lane", None, "0,0;7,0;7,1;0,1", 3)]
        (d / f"{folder}.xml").write_text(_xml([(n, polygons) for n in frames]))
    # Polygon
    for folder, frame in {"Polygon_0001": "MP_SEL_P000001.jpg", "Polygon_0020": "MP_SEL_P000020.jpg"}.items():
        d = root / "Polygon" / folder
        _image(str(d / frame))
        (d / "labels.xml").write_text(
            _xml([(frame, [("pole", None, LEFT_HALF, 0), ("movable_signage", None, ALL, 1)])])
        )
    (root / "Polygon" / "extras").mkdir()  # no trailing number: skipped
    # Depth
    for folder, frames in {"Depth_001": ["000001", "000002"], "Depth_030": ["000300"]}.items():
        d = root / "Depth" / folder
        d.mkdir(parents=True)
        (d / f"{folder}.conf").write_text(CONF)
        for n in frames:
            prefix = str(d / f"ZED1_KSC_{n}")
            disp = np.zeros((H, W), np.uint16)
            disp[2:4] = 7300
            cv2.imwrite(prefix + "_disp16.png", disp)
            _image(prefix + "_left.png")
            _image(prefix + "_right.png")
            cv2.imwrite(prefix + "_confidence_save.png", np.zeros((H, W), np.uint8))
            if n != "000002":  # frame 2 has no raw L / R frames and no confidence map
                _image(prefix + "_L.png", channels=4)
                _image(prefix + "_R.png", channels=4)
                cv2.imwrite(prefix + "_confidence.png", np.full((H, W), 255, np.uint8))
    return str(root)


def _restore_builtin_names():
    """What ``import segdep_d2`` registered (the names are replaced by the tests)."""
    register_all_sidewalk(os.getenv("DETECTRON2_DATASETS", "datasets"))


@pytest.fixture
def registered(release):
    yield register_all_sidewalk(os.path.dirname(release))
    _restore_builtin_names()


def test_split_rule():
    assert [sidewalk_split_of(n) for n in ("Surface_001", "Surface_010", "Polygon_0120", "Depth_031", "Depth_100")] \
        == ["train", "val", "val", "train", "val"]
    assert sidewalk_split_of("extras") is None


def test_registration_names_and_metadata(registered, release):
    assert registered == NAMES
    for name in NAMES:
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == list(SIDEWALK_CLASSES) and len(meta.stuff_classes) == 24
        assert len(meta.stuff_colors) == 24 and meta.ignore_label == 255
        assert meta.dropped_labels == list(SIDEWALK_DROPPED_POLYGON_LABELS)
        assert meta.disparity_scale == 100.0
        assert meta.dataset_root == release
    depth = MetadataCatalog.get("sidewalk_depth_train")
    assert depth.evaluator_type == "depth" and depth.label_tasks == ("depth",)
    assert depth.depth_range == (0.3, 80.0) and depth.depth_format == "zed_disp16"
    surface = MetadataCatalog.get("sidewalk_surface_val")
    assert surface.evaluator_type == "sem_seg" and surface.label_tasks == ("sem_seg",)
    assert "depth_range" not in surface.as_dict()


def test_surface_records(registered, release):
    train = DatasetCatalog.get("sidewalk_surface_train")
    folder = os.path.join(release, "Surface", "Surface_001")
    assert [r["file_name"] for r in train] == [os.path.join(folder, f"MP_SEL_SUR_00000{i}.jpg") for i in (1, 2)]
    assert [r["image_id"] for r in train] == ["Surface_001/MP_SEL_SUR_000001", "Surface_001/MP_SEL_SUR_000002"]
    record = train[0]
    assert record["label_format"] == "cvat" and record["sem_seg_file_name"] == os.path.join(folder, "Surface_001.xml")
    assert record["cvat_label_to_id"] == sidewalk_label_to_id() and "cvat_attribute_to_id" not in record
    assert (record["height"], record["width"]) == (H, W)
    assert "depth_file_name" not in record
    # attributes merged into the label: sidewalk 0 (x 0..3), roadway 2 (x 4..7), bike_lane 4 on rows 0..1
    expected = np.zeros((H, W), np.uint8)
    expected[:, 4:] = 2
    expected[:2] = 4
    np.testing.assert_array_equal(read_sem_seg(record), expected)
    (val,) = DatasetCatalog.get("sidewalk_surface_val")
    assert val["image_id"] == "Surface_010/MP_SEL_SUR_000100"


def test_polygon_records_drop_labels(registered):
    (record,) = DatasetCatalog.get("sidewalk_polygon_train")  # "extras" is skipped
    assert record["image_id"] == "Polygon_0001/MP_SEL_P000001"
    labels = read_sem_seg(record)
    # pole (16) on x 0..3; movable_signage (dropped) over everything is not drawn: the rest is ignore
    assert (labels[:, :4] == 16).all() and (labels[:, 4:] == 255).all()
    assert len(DatasetCatalog.get("sidewalk_polygon_val")) == 1


def test_depth_records(registered, release):
    records = DatasetCatalog.get("sidewalk_depth_train")
    folder = os.path.join(release, "Depth", "Depth_001")
    first, second = records
    assert first == {
        "file_name": os.path.join(folder, "ZED1_KSC_000001_L.png"),
        "image_id": "Depth_001/ZED1_KSC_000001",
        "height": H,
        "width": W,
        "depth_file_name": os.path.join(folder, "ZED1_KSC_000001_disp16.png"),
        "depth_format": "zed_disp16",
        "camera_file_name": os.path.join(folder, "Depth_001.conf"),
        "disparity_scale": 100.0,
        "confidence_file_name": os.path.join(folder, "ZED1_KSC_000001_confidence.png"),
    }
    # no L frame: the band crop stands in; no confidence map: no key
    assert second["file_name"] == os.path.join(folder, "ZED1_KSC_000002_left.png")
    assert "confidence_file_name" not in second
    assert "sem_seg_file_name" not in second
    (val,) = load_sidewalk(release, "depth", "val", disparity_scale=256)
    assert val["disparity_scale"] == 256.0 and val["image_id"] == "Depth_030/ZED1_KSC_000300"


def test_missing_depth_files_are_named(release):
    folder = os.path.join(release, "Depth", "Depth_001")
    os.remove(os.path.join(folder, "ZED1_KSC_000002_disp16.png"))
    with pytest.raises(FileNotFoundError, match="ZED1_KSC_000002_disp16.png"):
        load_sidewalk(release, "depth", "train")
    os.remove(os.path.join(folder, "Depth_001.conf"))
    with pytest.raises(FileNotFoundError, match=r"Depth_001/Depth_001\.conf"):
        load_sidewalk(release, "depth", "train")


def test_missing_image_named_by_the_xml(release):
    os.remove(os.path.join(release, "Surface", "Surface_001", "MP_SEL_SUR_000002.jpg"))
    with pytest.raises(FileNotFoundError, match="Surface_001.xml.*MP_SEL_SUR_000002.jpg"):
        load_sidewalk(release, "surface", "train")


def test_absent_or_empty_layout(tmp_path, release):
    absent = str(tmp_path / "nowhere")
    register_all_sidewalk(absent)  # registration never reads the disk
    try:
        assert not os.path.exists(absent)
        with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(absent, "sidewalk"))):
            DatasetCatalog.get("sidewalk_surface_train")
    finally:
        _restore_builtin_names()
    os.makedirs(os.path.join(tmp_path, "only_root", "sidewalk"))
    with pytest.raises(FileNotFoundError, match=r"sidewalk/Depth"):
        load_sidewalk(os.path.join(tmp_path, "only_root", "sidewalk"), "depth", "train")
    os.rename(os.path.join(release, "Polygon", "Polygon_0020"), os.path.join(release, "Polygon", "Polygon_0021"))
    with pytest.raises(FileNotFoundError, match=r"No sidewalk polygon val images under .*Polygon"):
        load_sidewalk(release, "polygon", "val")
    with pytest.raises(ValueError, match="task"):
        sidewalk_metadata("bbox")
