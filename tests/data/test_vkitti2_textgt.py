"""VKITTI2 textgt readers (info / bbox / pose / intrinsic / extrinsic) on the real files, read in place, and on
the synthetic generator's output."""
import math
import os

import numpy as np
import pytest
from PIL import Image

from segdep_d2.data.datasets.vkitti2_textgt import (
    POSE_COLUMNS,
    TextGTFormatError,
    load_vkitti2_textgt,
    read_bbox,
    read_extrinsic,
    read_info,
    read_intrinsic,
    read_pose,
)


@pytest.fixture(scope="module")
def clone(real_samples):
    """Scene01/clone info / bbox / pose, frames 0-4 of camera 0 (trimmed by the source repository)."""
    return os.path.join(real_samples, "vkitti2", "adas-perception-eval", "tests", "fixtures", "vkitti", "Scene01",
                        "clone")


@pytest.fixture(scope="module")
def labels(real_samples):
    return os.path.join(real_samples, "vkitti2", "kitti-adapt", "v_kitti_detection", "labels")


def test_real_bbox(clone):
    boxes = read_bbox(os.path.join(clone, "bbox.txt"))
    assert sorted(boxes) == [(f, 0) for f in range(5)]
    assert sum(len(t) for t in boxes.values()) == 195
    assert len(boxes[(0, 0)]) == 40 and len(boxes[(2, 0)]) == 39
    b = boxes[(0, 0)][0]  # "0 0 0 774 1241 169 374 75554 0.07726043 0.7891994 False"
    assert (b.left, b.right, b.top, b.bottom, b.number_pixels) == (774, 1241, 169, 374, 75554)
    assert b.truncation_ratio == pytest.approx(0.07726043) and b.occupancy_ratio == pytest.approx(0.7891994)
    assert b.is_moving is False
    b = boxes[(4, 0)][97]  # "4 0 97 326 374 200 226 460 0 0.3685897 False"
    assert (b.left, b.right, b.top, b.bottom, b.number_pixels, b.truncation_ratio) == (326, 374, 200, 226, 460, 0.0)
    for rows in boxes.values():  # the real occupancy: visible pixels over the (right-left)*(bottom-top) box
        for r in rows.values():
            assert r.occupancy_ratio == pytest.approx(r.number_pixels / ((r.right - r.left) * (r.bottom - r.top)),
                                                      abs=1e-5)


def test_real_pose(clone):
    with open(os.path.join(clone, "pose.txt")) as fh:
        assert tuple(fh.readline().split()) == POSE_COLUMNS  # 19 columns, no isMoving
    poses = read_pose(os.path.join(clone, "pose.txt"))
    p = poses[(0, 0)][0]
    assert p.alpha == pytest.approx(-1.996793)
    assert p.dimensions == pytest.approx((1.85, 1.50992, 4.930564))
    assert p.world_xyz == pytest.approx((6.371316, -111.0, -5.044228))
    assert p.rotation_world == pytest.approx((0.2694305, 0.0, 0.0))
    assert p.camera_xyz == pytest.approx((2.904048, 1.4341, 6.406569))
    assert p.rotation_camera == pytest.approx((-1.571205, 0.001540535, -0.07224263))
    assert poses[(4, 0)][97].camera_xyz == pytest.approx((-18.30329, 2.479395, 49.25016))
    assert poses[(1, 0)][7].rotation_camera[1] == pytest.approx(4.378147e-05)  # written "4.378147E-05"
    for rows in poses.values():  # alpha = ry - atan2(X, Z), as in KITTI
        for r in rows.values():
            d = r.rotation_camera[0] - math.atan2(r.camera_xyz[0], r.camera_xyz[2]) - r.alpha
            assert abs((d + math.pi) % (2 * math.pi) - math.pi) < 1e-5
    assert {k: set(v) for k, v in poses.items()} == {k: set(v) for k, v in read_bbox(
        os.path.join(clone, "bbox.txt")).items()}


def test_real_info(clone, labels):
    info = read_info(os.path.join(clone, "info.txt"))
    assert len(info) == 41
    assert (info[3].label, info[3].model, info[3].color) == ("Car", "Hatchback", "Red")
    assert (info[89].label, info[89].model, info[89].color) == ("Van", "Firetruck_small_eu", "White")
    full = read_info(os.path.join(labels, "Scene01", "15-deg-left", "info.txt"))
    assert len(full) == 92
    assert sorted(t.label for t in full.values()).count("Car") == 88
    assert {t: (full[t].label, full[t].color) for t in (50, 87, 89, 90)} == {
        50: ("Truck", "Black"), 87: ("Truck", "White"), 89: ("Van", "White"), 90: ("Van", "Black")}


def test_real_intrinsic(labels):
    K = read_intrinsic(os.path.join(labels, "Scene06", "clone", "intrinsic.txt"))
    assert len(K) == 540 and sorted({f for f, _ in K}) == list(range(270)) and {c for _, c in K} == {0, 1}
    for k in K.values():
        np.testing.assert_allclose(k, [[725.0087, 0, 620.5], [0, 725.0087, 187.0], [0, 0, 1]])


def test_real_objects_join_the_three_files(clone):
    gt = load_vkitti2_textgt(clone)
    assert gt.frames() == [(f, 0) for f in range(5)]
    objects = gt.objects(0, 0)
    assert len(objects) == 40 and [o.track_id for o in objects] == sorted(o.track_id for o in objects)
    o = objects[0]
    assert (o.track_id, o.label, o.model, o.color, o.instance_id) == (0, "Car", "Sedan4Door", "Black", 1)
    assert o.bbox == (774, 1241, 169, 374) and o.box_center_x == 1007.5 and not o.is_moving
    assert o.depth == pytest.approx(6.406569)
    assert o.distance == pytest.approx(math.sqrt(2.904048 ** 2 + 1.4341 ** 2 + 6.406569 ** 2))
    van = next(o for o in gt.objects(3, 0) if o.track_id == 89)
    assert (van.label, van.color) == ("Van", "White") and 90 < van.depth < 110
    assert gt.objects(7, 0) == [] and gt.objects(0, 1) == []


# --------------------------------------------------------------------------------------------------
# Malformed files: clear errors naming the file and line
# --------------------------------------------------------------------------------------------------

_BBOX_HEADER = ("frame cameraID trackID left right top bottom number_pixels truncation_ratio occupancy_ratio "
                "isMoving\n")
_POSE_HEADER = " ".join(POSE_COLUMNS) + "\n"
_POSE_ROW = "0 0 {} -1.5 1.8 1.5 4.5 1 -111 2 0.2 0 0 1 1.5 {} -1.5 0 0\n"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_errors_name_file_line_and_columns(tmp_path):
    legacy = _write(tmp_path, "pose.txt", _POSE_HEADER.rstrip("\n") + " isMoving\n" + _POSE_ROW.format(0, 9).rstrip()
                    + " True\n")
    with pytest.raises(TextGTFormatError, match=r"pose\.txt: line 1: .*19 columns.*20 columns.*isMoving"):
        read_pose(legacy)
    short = _write(tmp_path, "bbox.txt", _BBOX_HEADER + "0 0 1 1 5 1 5 10 0 0.5 False\n0 0 2 1 5 1 5 10 0 0.5\n")
    with pytest.raises(TextGTFormatError, match=r"bbox\.txt: line 3: expected 11 columns, got 10"):
        read_bbox(short)
    bad_bool = _write(tmp_path, "bbox2.txt", _BBOX_HEADER + "0 0 1 1 5 1 5 10 0 0.5 maybe\n")
    with pytest.raises(TextGTFormatError, match=r"bbox2\.txt: line 2: expected True or False"):
        read_bbox(bad_bool)
    bad_number = _write(tmp_path, "pose2.txt", _POSE_HEADER + _POSE_ROW.format(0, "far"))
    with pytest.raises(TextGTFormatError, match=r"pose2\.txt: line 2: .*far"):
        read_pose(bad_number)
    twice = _write(tmp_path, "bbox3.txt", _BBOX_HEADER + "0 0 1 1 5 1 5 10 0 0.5 False\n" * 2)
    with pytest.raises(TextGTFormatError, match=r"bbox3\.txt: frame 0, camera 0: track 1 is listed twice"):
        read_bbox(twice)
    wrong_header = _write(tmp_path, "info.txt", "trackID label model\n0 Car Hatchback\n")
    with pytest.raises(TextGTFormatError, match=r"info\.txt: line 1: expected the header 'trackID label model color'"):
        read_info(wrong_header)
    extr = _write(tmp_path, "extrinsic.txt", "frame cameraID " + " ".join("x" * 16) + "\n")
    with pytest.raises(TextGTFormatError, match="extrinsic.txt"):
        read_extrinsic(extr)
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        read_info(str(tmp_path / "nothere.txt"))


def test_join_errors_name_the_missing_row(tmp_path):
    folder = tmp_path / "Scene01" / "clone"
    folder.mkdir(parents=True)
    _write(folder, "info.txt", "trackID label model color\n0 Car SUV Red\n")
    _write(folder, "bbox.txt", _BBOX_HEADER + "0 0 0 1 5 1 5 10 0 0.5 True\n0 0 1 1 5 1 5 10 0 0.5 False\n")
    _write(folder, "pose.txt", _POSE_HEADER + _POSE_ROW.format(0, 9) + _POSE_ROW.format(1, 12))
    with pytest.raises(TextGTFormatError, match="track 1 .*info.txt does not describe"):
        load_vkitti2_textgt(str(folder)).objects(0)
    _write(folder, "info.txt", "trackID label model color\n0 Car SUV Red\n1 Van Van White\n")
    _write(folder, "pose.txt", _POSE_HEADER + _POSE_ROW.format(0, 9))
    with pytest.raises(TextGTFormatError, match="track 1 in frame 0, camera 0, but pose.txt has no row"):
        load_vkitti2_textgt(str(folder)).objects(0)


# --------------------------------------------------------------------------------------------------
# The synthetic generator's textgt
# --------------------------------------------------------------------------------------------------


def test_synthetic_textgt_matches_the_rendered_frames(synthetic_vkitti2):
    from segdep_d2.data import synthetic as S

    root, summary = synthetic_vkitti2
    checked = 0
    for entry in summary["frames"]:
        folder = os.path.join(root, entry["scene"], entry["variation"])
        gt = load_vkitti2_textgt(folder)
        frame = S.render_frame(entry["scene"], entry["frame"], height=summary["height"], width=summary["width"],
                               variation=entry["variation"], camera=entry["camera"], seed=0)
        objects = gt.objects(entry["frame"], entry["camera"])
        assert [o.track_id for o in objects] == [t.track_id for t in frame.tracks]
        instance = np.array(Image.open(entry["instance"]))
        assert {o.instance_id for o in objects} == set(np.unique(instance[instance > 0]).tolist())
        for o, t in zip(objects, frame.tracks):
            assert (o.label, o.model, o.color, o.bbox, o.number_pixels, o.is_moving) == (
                t.label, t.model, t.color, t.bbox, t.number_pixels, t.is_moving)
            assert o.camera_xyz == pytest.approx(t.camera_xyz, abs=1e-6)
            assert o.world_xyz == pytest.approx(t.world_xyz, abs=1e-6)
            assert o.dimensions == pytest.approx((t.width, t.height, t.length), abs=1e-6)
            assert int((instance == o.instance_id).sum()) == o.number_pixels
            checked += 1
        K = read_intrinsic(os.path.join(folder, "intrinsic.txt"))[(entry["frame"], entry["camera"])]
        E = read_extrinsic(os.path.join(folder, "extrinsic.txt"))[(entry["frame"], entry["camera"])]
        np.testing.assert_allclose(K, frame.intrinsics, atol=1e-6)
        np.testing.assert_allclose(E, frame.extrinsic, atol=1e-6)
        for o in objects:  # camera_space = extrinsic @ world_space (rotation to 6 decimals x ~100 m)
            np.testing.assert_allclose((E @ np.array([*o.world_xyz, 1.0]))[:3], o.camera_xyz, atol=2e-4)  # 6 decimals
    assert checked > 10
