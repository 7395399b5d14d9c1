"""The synthetic generator's Korean sidewalk writer: Surface / Polygon CVAT XML + masks and the ZED depth set."""
import configparser
import filecmp
import os
import re
import sys
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
from PIL import Image

from segdep_d2.data import synthetic as S
from segdep_d2.data.datasets.sidewalk_categories import (
    SIDEWALK_CLASSES,
    SIDEWALK_DROPPED_POLYGON_LABELS,
    SIDEWALK_POLYGON_CLASSES,
    SIDEWALK_SURFACE_ATTRIBUTES,
    SIDEWALK_SURFACE_MASK_COLORS,
)
from segdep_d2.data.synthetic import sidewalk_writer as SW

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H, W = 376, 672  # ZED VGA
CONF_SECTIONS = ["LEFT_CAM_2K", "RIGHT_CAM_2K", "STEREO", "LEFT_CAM_FHD", "RIGHT_CAM_FHD", "LEFT_CAM_HD",
                 "RIGHT_CAM_HD", "LEFT_CAM_VGA", "RIGHT_CAM_VGA"]
DEPTH_KINDS = ("L", "R", "left", "right", "disp16", "confidence", "confidence_save")
POINTS = re.compile(r"^-?\d+\.\d\d,-?\d+\.\d\d(;-?\d+\.\d\d,-?\d+\.\d\d){2,}$")


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture(scope="module")
def sw(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sidewalk"))
    return out, S.generate_sidewalk(out, frames=2, seed=0)


def _read_conf(path):
    parser = configparser.ConfigParser()
    parser.optionxform = str  # keep BaseLine's case
    with open(path) as fh:
        parser.read_file(fh)
    return parser


def _shapes(image_element):
    """(label, attribute or None, z_order, (N, 2) float points) of one <image>."""
    out = []
    for polygon in image_element.findall("polygon"):
        points = np.array([[float(v) for v in p.split(",")] for p in polygon.get("points").split(";")])
        attribute = polygon.find("attribute")
        out.append((polygon.get("label"), None if attribute is None else attribute.text,
                    int(polygon.get("z_order")), points))
    return out


def _rasterise(shapes, height, width, value_of):
    """cv2.fillPoly in ascending z_order (stable for equal z); (H, W, 3) uint8 of value_of(label, attribute)."""
    out = np.zeros((height, width, 3), np.uint8)
    for label, attribute, _, points in sorted(shapes, key=lambda s: s[2]):
        cv2.fillPoly(out, [np.round(points).astype(np.int32)], tuple(int(c) for c in value_of(label, attribute)))
    return out


def _depth_frames(summary):
    return [f for f in summary["frames"] if f["task"] == "depth"]


def _rerender_depth(entry):
    """Render camera 0 / 1 of a written depth frame again from its folder's .conf."""
    conf = _read_conf(entry["conf"])
    left = conf["LEFT_CAM_VGA"]
    K = np.array([[float(left["fx"]), 0, float(left["cx"])], [0, float(left["fy"]), float(left["cy"])], [0, 0, 1]])
    baseline = float(conf["STEREO"]["BaseLine"]) / 1000.0
    folder = int(entry["folder"].split("_")[-1])
    layout = SW.sidewalk_layout("depth", folder, 0, baseline=baseline)
    return K, baseline, [S.render_frame(layout, entry["frame"], height=H, width=W, intrinsics=K, camera=c)
                         for c in (0, 1)]


def test_layout_names_splits_and_summary(sw):
    out, summary = sw
    files = _files(out)
    expected = []
    for folder, split in ((9, "train"), (10, "val")):
        surface, polygon, depth = f"Surface_{folder:03d}", f"Polygon_{folder:04d}", f"Depth_{folder:03d}"
        assert SW.sidewalk_folder_split(surface) == SW.sidewalk_folder_split(polygon) == split
        expected += [f"Surface/{surface}/{surface}.xml", f"Polygon/{polygon}/{polygon}.xml",
                     f"Depth/{depth}/{depth}.conf"]
        for k in (1, 2):
            n = folder * 1000 + k
            expected += [f"Surface/{surface}/MP_SEL_SUR_{n:06d}.jpg", f"Surface/{surface}/MASK/MP_SEL_SUR_{n:06d}.png",
                         f"Polygon/{polygon}/MP_SEL_P{n:06d}.jpg"]
            expected += [f"Depth/{depth}/ZED1_KSC_{n:06d}_{kind}.png" for kind in DEPTH_KINDS]
    assert files == sorted(expected)
    assert summary["format"] == "sidewalk" and (summary["height"], summary["width"]) == (H, W)
    assert summary["counts"] == {"surface": {"Surface_009": 2, "Surface_010": 2},
                                 "polygon": {"Polygon_0009": 2, "Polygon_0010": 2},
                                 "depth": {"Depth_009": 2, "Depth_010": 2}}
    assert len(summary["frames"]) == 12 and {f["split"] for f in summary["frames"]} == {"train", "val"}
    # every folder and task shows its own views
    views = [(f["layout"], f["frame"]) for f in summary["frames"]]
    assert len(set(views)) == len(views) and len({f["layout"] for f in summary["frames"]}) == 6
    fractions = summary["class_fractions"]
    assert set(fractions) <= set(SIDEWALK_CLASSES) | {"unlabelled"}
    assert {"sidewalk", "roadway", "car", "pole"} <= set(fractions) and abs(sum(fractions.values()) - 1) < 1e-9
    assert 0.05 < summary["depth_range"][0] < summary["depth_range"][1] < np.inf
    for entry in summary["frames"]:
        image = np.array(Image.open(entry["image"]))
        assert image.shape[:2] == (H, W)


def test_cvat_xml_headers_labels_and_attributes(sw):
    out, summary = sw
    surface = ET.parse(os.path.join(out, "Surface", "Surface_009", "Surface_009.xml")).getroot()
    polygon = ET.parse(os.path.join(out, "Polygon", "Polygon_0010", "Polygon_0010.xml")).getroot()
    for root, name in ((surface, "Surface_009"), (polygon, "Polygon_0010")):
        assert root.tag == "annotations" and root.find("version").text == "1.1"
        task = root.find("meta/task")
        assert task.find("name").text == name and task.find("size").text == "2"
        assert task.find("mode").text == "annotation" and root.find("meta/dumped") is not None
    labels = {label.find("name").text: label for label in surface.iter("label")}
    assert list(labels) == list(reversed(list(SIDEWALK_SURFACE_ATTRIBUTES)))  # the real file's order
    for name, label in labels.items():
        attributes = label.findall("attributes/attribute")
        values = SIDEWALK_SURFACE_ATTRIBUTES[name]
        if not values:
            assert attributes == []
            continue
        (attribute,) = attributes
        assert attribute.find("name").text == "attribute" and attribute.find("input_type").text == "radio"
        assert attribute.find("mutable").text == "False" and attribute.find("default_value").text == values[0]
        assert tuple(attribute.find("values").text.split("\n")) == values
    polygon_labels = [label.find("name").text for label in polygon.iter("label")]
    assert len(polygon_labels) == 29
    assert set(polygon_labels) == set(SIDEWALK_POLYGON_CLASSES) | set(SIDEWALK_DROPPED_POLYGON_LABELS)
    assert all(label.find("attributes/attribute") is None for label in polygon.iter("label"))

    # images: ids from 0 (surface) / 1 (polygon) as in the real dumps, names of the files beside the XML
    assert [i.get("id") for i in surface.iter("image")] == ["0", "1"]
    assert [i.get("id") for i in polygon.iter("image")] == ["1", "2"]
    for root, folder in ((surface, "Surface/Surface_009"), (polygon, "Polygon/Polygon_0010")):
        for image in root.iter("image"):
            assert os.path.isfile(os.path.join(out, folder, image.get("name")))
            assert (image.get("width"), image.get("height")) == (str(W), str(H))
            for element in image.findall("polygon"):
                assert element.get("occluded") == "0" and POINTS.match(element.get("points"))
                int(element.get("z_order"))
    for image in surface.iter("image"):
        assert image.findall("polygon")
        for label, attribute, _, points in _shapes(image):
            assert label in SIDEWALK_SURFACE_ATTRIBUTES
            assert (attribute is None) == (label == "bike_lane")
            assert attribute is None or attribute in SIDEWALK_SURFACE_ATTRIBUTES[label]
            assert points.min() >= 0 and points[:, 0].max() <= W and points[:, 1].max() <= H
    used = set()
    for root in (ET.parse(f["xml"]).getroot() for f in summary["frames"] if f["task"] == "polygon"):
        for image in root.iter("image"):
            for label, attribute, _, points in _shapes(image):
                assert attribute is None and label in polygon_labels
                used.add(label)
    # obstacles only; kept and dropped labels, so a reader's dropping is exercised
    assert {"car", "pole", "tree_trunk"} <= used and used & set(SIDEWALK_DROPPED_POLYGON_LABELS)
    assert not used & set(SIDEWALK_SURFACE_ATTRIBUTES)


def test_rasterised_surface_xml_reproduces_the_mask(sw):
    out, summary = sw
    palette = {(label, attribute): color for (label, attribute), color in SIDEWALK_SURFACE_MASK_COLORS.items()}
    allowed = {tuple(c) for c in SIDEWALK_SURFACE_MASK_COLORS.values()} | {(0, 0, 0)}
    for entry in (f for f in summary["frames"] if f["task"] == "surface"):
        mask = np.array(Image.open(entry["mask"]))
        assert mask.dtype == np.uint8 and mask.shape == (H, W, 3)
        assert {tuple(c) for c in np.unique(mask.reshape(-1, 3), axis=0)} <= allowed
        root = ET.parse(entry["xml"]).getroot()
        (image,) = [i for i in root.iter("image") if i.get("name") == os.path.basename(entry["image"])]
        shapes = _shapes(image)
        raster = _rasterise(shapes, H, W, lambda label, attribute: palette[(label, attribute)])
        agreement = np.mean(np.all(raster == mask, axis=2))
        assert agreement >= 0.99, (entry["image"], agreement)
        assert entry["agreement"] >= 0.99
        # surfaces are annotated amodally: the sidewalk runs on under the obstacles standing on it
        assert np.mean(np.all(mask == SIDEWALK_SURFACE_MASK_COLORS[("sidewalk", "blocks")], axis=2)) > 0.05
    for entry in (f for f in summary["frames"] if f["task"] == "polygon"):
        assert entry["agreement"] >= 0.99


def test_zebra_crossings_are_roadway_crosswalk():
    layout = SW.sidewalk_layout("surface", 9, 0)
    zebra = float(layout.zebra_z[layout.zebra_z > 30][0])
    frame = int(round((zebra - 8.0) / layout.ego_speed))  # the crossing 8 m ahead
    height, width = 94, 168
    surface = SW._surface_map(layout, frame, SW._generic_intrinsics(height, width), height, width)
    kinds = {kind: i + 1 for i, kind in enumerate(SW._SURFACE_KINDS)}
    crosswalk = surface == kinds[("roadway", "crosswalk")]
    assert crosswalk.mean() > 0.01 and (surface == kinds[("roadway", "normal")]).any()
    shapes = SW._surface_shapes(surface)
    assert any(SW._SURFACE_KINDS[value - 1] == ("roadway", "crosswalk") for value, _, _ in shapes)


def test_zed_conf_disp16_and_depth_decoding(sw):
    out, summary = sw
    top, bottom = SW.zed_band_rows(H)
    assert (top, bottom) == (round(H * 244 / 1080), round(H * 836 / 1080)) == (85, 291)
    for entry in _depth_frames(summary):
        conf = _read_conf(entry["conf"])
        assert conf.sections() == CONF_SECTIONS
        for section in CONF_SECTIONS:
            keys = list(conf[section])
            if section == "STEREO":
                assert "BaseLine" in keys and {f"{p}_{r}" for p in ("CV", "RX", "RZ")
                                               for r in ("2K", "FHD", "HD", "VGA")} <= set(keys)
            else:
                assert keys == ["fx", "fy", "cx", "cy", "k1", "k2"]
        assert 119 < float(conf["STEREO"]["BaseLine"]) < 121  # millimetres
        # RIGHT_CAM differs from LEFT_CAM, so a section-blind parse would get a wrong fx
        assert conf["RIGHT_CAM_VGA"]["fx"] != conf["LEFT_CAM_VGA"]["fx"]
        fx_fhd, fx_vga = float(conf["LEFT_CAM_FHD"]["fx"]), float(conf["LEFT_CAM_VGA"]["fx"])
        assert abs(fx_vga - fx_fhd / 4) < 1e-2

        disp16_image = Image.open(entry["disp16"])
        assert disp16_image.mode in ("I;16", "I")
        disp16 = np.array(disp16_image)
        assert disp16.dtype == np.uint16 and disp16.shape == (H, W)
        assert not disp16[:top].any() and not disp16[bottom:].any()
        K, baseline, (left, _) = _rerender_depth(entry)
        assert K[0, 0] == entry["fx"] and baseline == entry["baseline"]
        depth = left.depth.astype(np.float64)
        band = np.zeros((H, W), bool)
        band[top:bottom] = True
        assert np.array_equal(disp16 > 0, band & np.isfinite(depth))
        valid = disp16 > 0
        decoded = K[0, 0] * baseline / (disp16[valid] / 100.0)
        # within the encoding's resolution: half a unit of disp16 (1/200 px)
        exact = 100.0 * K[0, 0] * baseline / depth[valid]
        assert np.abs(disp16[valid] - exact).max() <= 0.5 + 1e-6
        relative = np.abs(decoded - depth[valid]) / depth[valid]
        assert (relative <= 0.5 / disp16[valid] + 1e-6).all()
        assert np.median(relative) < 1e-3  # most pixels are near: disp16 in the thousands


def test_confidence_and_stereo_pair(sw):
    out, summary = sw
    top, bottom = SW.zed_band_rows(H)
    for entry in _depth_frames(summary):
        save = np.array(Image.open(entry["confidence_save"]))
        confidence = np.array(Image.open(entry["confidence"]))
        assert save.dtype == confidence.dtype == np.uint8
        assert np.array_equal(confidence, np.where(save <= 19, 255, 0))
        assert not save[:top].any() and not save[bottom:].any()
        assert (confidence[:top] == 255).all() and (confidence[bottom:] == 255).all()
        inside = save[top:bottom]
        assert np.mean(inside <= 19) > 0.45 and inside.max() > 200  # mostly confident (real: 56 %), some bad
        # bad confidence (high values) on depth discontinuities and far away
        _, _, (left, _) = _rerender_depth(entry)
        depth = left.depth[top:bottom].astype(np.float64)
        disparity = np.where(np.isfinite(depth), 1.0 / np.where(np.isfinite(depth), depth, 1.0), 0.0)
        jump = np.zeros_like(disparity)
        jump[:, 1:] = np.abs(np.diff(disparity, axis=1))
        edges = jump > 0.05
        near = np.isfinite(depth) & (depth < 6) & ~cv2.dilate(edges.astype(np.uint8), np.ones((7, 7))).astype(bool)
        assert inside[edges].mean() > 3 * inside[near].mean()

        L, R = (np.array(Image.open(entry[k])) for k in ("L", "R"))
        crop_left, crop_right = (np.array(Image.open(entry[k])) for k in ("left", "right"))
        for raw, crop in ((L, crop_left), (R, crop_right)):
            assert Image.open(entry["L"]).mode == "RGBA" and raw.shape == (H, W, 4) and (raw[..., 3] == 255).all()
            assert crop.shape == (H, W, 3)
            assert np.array_equal(crop[top:bottom], raw[top:bottom, :, :3])
            assert not crop[:top].any() and not crop[bottom:].any()
        assert np.array_equal(L[..., :3], left.rgb)


def test_block_matching_recovers_disp16_over_100(sw):
    out, summary = sw
    ratios = []
    for entry in _depth_frames(summary):
        L, R = (cv2.cvtColor(np.array(Image.open(entry[k])), cv2.COLOR_RGBA2GRAY) for k in ("L", "R"))
        disp16 = np.array(Image.open(entry["disp16"])).astype(np.float64)
        sgbm = cv2.StereoSGBM_create(minDisparity=0, numDisparities=64, blockSize=5, P1=8 * 25, P2=32 * 25,
                                     uniquenessRatio=10, mode=cv2.STEREO_SGBM_MODE_SGBM)
        matched = sgbm.compute(L, R).astype(np.float64) / 16.0
        texture = np.hypot(cv2.Sobel(L, cv2.CV_64F, 1, 0, ksize=3), cv2.Sobel(L, cv2.CV_64F, 0, 1, ksize=3))
        use = (disp16 >= 300) & (matched > 0) & (texture > 20)
        assert use.sum() > 2000
        ratios.append(disp16[use] / matched[use])
    ratio = float(np.median(np.concatenate(ratios)))
    assert 95.0 <= ratio <= 105.0, ratio


def test_same_seed_same_bytes_folders_independent_other_seed_differs(sw, tmp_path):
    out, _ = sw
    kw = dict(surface_folders=(10,), polygon_folders=(), depth_folders=(10,), frames=1)
    a, b, c = (str(tmp_path / n) for n in "abc")
    S.generate_sidewalk(a, seed=0, **kw)
    S.build_scene.cache_clear()
    S.generate_sidewalk(b, seed=0, **kw)
    S.generate_sidewalk(c, seed=1, **kw)
    files = _files(a)
    assert files == _files(b) == _files(c) and len(files) == 4 + len(DEPTH_KINDS)
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert mismatch == errors == [] and match == files
    # a folder's first frame does not depend on the other folders or the frame count
    first = [f for f in files if not f.endswith((".xml", ".conf"))]
    assert filecmp.cmpfiles(a, out, first, shallow=False)[0] == first
    different = filecmp.cmpfiles(a, c, files, shallow=False)[1]
    assert "Depth/Depth_010/ZED1_KSC_010001_disp16.png" in different


def test_sizes(tmp_path):
    with pytest.raises(ValueError, match="ZED resolution"):
        S.generate_sidewalk(str(tmp_path / "bad"), height=360, width=640, frames=1)
    # Surface / Polygon images can be any size (the XML carries it)
    summary = S.generate_sidewalk(str(tmp_path / "small"), depth_folders=(), surface_folders=(10,),
                                  polygon_folders=(10,), frames=1, height=90, width=160)
    assert {np.array(Image.open(f["image"])).shape for f in summary["frames"]} == {(90, 160, 3)}
    root = ET.parse(summary["frames"][0]["xml"]).getroot()
    assert root.find("image").get("width") == "160" and root.find("image").get("height") == "90"


def test_real_sample_xml_and_conf_structure(real_samples):
    """The writer's label lists and conf sections are those of the real files (read in place, never copied)."""
    base = os.path.join(real_samples, "sidewalk", "Sidewalk_Data", "Sample Data", "output")
    if not os.path.isdir(base):
        pytest.skip("the sidewalk sample is not present")
    surface = ET.parse(os.path.join(base, "Sidewalk_19009_surface_output_000001_2.xml")).getroot()
    polygon = ET.parse(os.path.join(base, "Sidewalk_19009_polygon_output_000001_2.xml")).getroot()
    assert [label.find("name").text for label in polygon.iter("label")] == list(SW._POLYGON_XML_LABELS)
    real = {label.find("name").text: [a.find("values").text.split("\n") for a in label.iter("attribute")]
            for label in surface.iter("label")}
    assert list(real) == list(reversed(list(SIDEWALK_SURFACE_ATTRIBUTES)))
    assert {k: (v[0] if v else []) for k, v in real.items()} == {
        k: list(v) for k, v in SIDEWALK_SURFACE_ATTRIBUTES.items()}
    conf = _read_conf(os.path.join(base, "Sidewalk_19009_depth_output_000001_0.conf"))
    assert conf.sections() == CONF_SECTIONS
    ours = _read_conf_text(SW._conf_text(SW._zed_calibration(9, 0)))
    assert all(list(ours[s]) == list(conf[s]) for s in CONF_SECTIONS)


def _read_conf_text(text):
    parser = configparser.ConfigParser()
    parser.optionxform = str
    parser.read_string(text)
    return parser


def test_cli_sidewalk(tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import make_synthetic_dataset as cli
    finally:
        sys.path.pop(0)
    out = tmp_path / "sidewalk"
    assert cli.main(["--format", "sidewalk", "--out", str(out), "--folders", "surface:20,depth:20",
                     "--frames", "1"]) == 0
    text = capsys.readouterr().out
    assert "wrote 2 frames (sidewalk)" in text and "376x672" in text
    assert "surface: Surface_020 1 frames" in text and "depth: Depth_020 1 frames" in text
    assert (out / "Depth" / "Depth_020" / "ZED1_KSC_020001_disp16.png").is_file()
    assert not (out / "Polygon").exists()
