"""KITTI depth completion reader: the real KITTI frame of ../shared/real_samples (SOURCES.md c1), linked (never
copied) into the official layout names, and the reader's errors."""
import logging
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from segdep_d2.data.datasets import kitti_completion as KC
from segdep_d2.data.depth_io import DepthFormatError, read_depth, read_sparse_depth

DRIVE = "2011_09_26_drive_0001_sync"
FRAME = "0000000005"
# SOURCES.md c1: intrinsics.txt, the K of the 1216x352 depth-selection crop (P_rect_02 shifted by (-13, -23))
SELECTION_K = [[721.5377, 0.0, 596.5593], [0.0, 721.5377, 149.854], [0.0, 0.0, 1.0]]
P_RECT_K = [[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]]  # calib_cam_to_cam.txt


@pytest.fixture(scope="module")
def src(real_samples):
    path = os.path.join(real_samples, "kitti_depth", "torch_kitti", "tests", "test_data")
    if not os.path.isdir(path):
        pytest.skip("real KITTI depth completion sample absent")
    return path


def _link(source, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.symlink(source, target)


def _link_drive_frame(src, root, split="train", cameras=("image_02",), calib=True, frame=FRAME, image=True):
    """velodyne_raw -> data_depth_velodyne, groundtruth -> data_depth_annotated, the raw image (and the calib)."""
    for camera in cameras:
        _link(os.path.join(src, "depth_completion", f"velodyne_raw_{camera}.png"),
              os.path.join(root, "data_depth_velodyne", split, DRIVE, "proj_depth", "velodyne_raw", camera,
                           f"{frame}.png"))
        _link(os.path.join(src, "depth_completion", f"groundtruth_{camera}.png"),
              os.path.join(root, "data_depth_annotated", split, DRIVE, "proj_depth", "groundtruth", camera,
                           f"{frame}.png"))
        if image:
            _link(os.path.join(src, "raw", "sync_rect", f"cam_0{camera[-1]}.png"),
                  os.path.join(root, "2011_09_26", DRIVE, camera, "data", f"{frame}.png"))
    calib_file = os.path.join(root, "2011_09_26", "calib_cam_to_cam.txt")
    if calib and not os.path.lexists(calib_file):
        _link(os.path.join(src, "raw", "calib_cam_to_cam.txt"), calib_file)


def _link_selection(src, root, sparse=None, intrinsics=None):
    folder = os.path.join(root, "depth_selection", "val_selection_cropped")
    names = {
        "image": (os.path.join(src, "depth_completion", "test_image.png"), f"{DRIVE}_image_{FRAME}_image_02.png"),
        "velodyne_raw": (sparse or os.path.join(src, "depth_completion", "velodyne_raw_image_02.png"),
                         f"{DRIVE}_velodyne_raw_{FRAME}_image_02.png"),
        "groundtruth_depth": (os.path.join(src, "depth_completion", "groundtruth_image_02.png"),
                              f"{DRIVE}_groundtruth_depth_{FRAME}_image_02.png"),
        "intrinsics": (intrinsics or os.path.join(src, "depth_completion", "intrinsics.txt"),
                       f"{DRIVE}_image_{FRAME}_image_02.txt"),
    }
    for kind, (source, name) in names.items():
        _link(source, os.path.join(folder, kind, name))
    return folder


def _check_real_densities(record):
    sparse = read_sparse_depth(record)
    valid = sparse > 0
    assert sparse.shape == (375, 1242) and sparse.dtype == np.float32
    assert valid.mean() == pytest.approx(0.041, abs=0.002)  # SOURCES.md: 4.1 % valid
    assert 5.27 < sparse[valid].min() < 5.29 and 77.9 < sparse.max() < 78.1  # 5.28 .. 78.0 m
    gt = read_depth(record)
    assert (gt > 0).mean() == pytest.approx(0.195, abs=0.002)  # 19.5 % valid
    assert 5.3 < gt[gt > 0].min() < 5.4 and 84.8 < gt.max() < 85.0
    raw = np.asarray(Image.open(record["sparse_depth_file_name"]), dtype=np.int64)
    y, x = np.argwhere(raw > 0)[len(np.argwhere(raw > 0)) // 2]
    assert sparse[y, x] == pytest.approx(raw[y, x] / 256.0)  # metres = v / 256, by hand at one pixel


def test_real_frame_train_split(src, tmp_path):
    root = str(tmp_path / "kitti")
    _link_drive_frame(src, root, cameras=("image_02", "image_03"))
    assert all(os.path.islink(os.path.join(dirpath, f)) for dirpath, _, files in os.walk(root) for f in files)
    records = KC.load_kitti_depth_completion(root, "train")
    assert len(records) == 1
    record = records[0]
    assert record["file_name"] == os.path.join(root, "2011_09_26", DRIVE, "image_02", "data", f"{FRAME}.png")
    assert record["sparse_depth_file_name"] == os.path.join(
        root, "data_depth_velodyne", "train", DRIVE, "proj_depth", "velodyne_raw", "image_02", f"{FRAME}.png")
    assert record["depth_file_name"] == os.path.join(
        root, "data_depth_annotated", "train", DRIVE, "proj_depth", "groundtruth", "image_02", f"{FRAME}.png")
    assert (record["sparse_depth_format"], record["depth_format"]) == ("kitti_png256", "kitti_png256")
    assert (record["height"], record["width"], record["frame_index"]) == (375, 1242, 5)
    assert record["image_id"] == f"{DRIVE}_image_02_{FRAME}" and record["sequence_id"] == f"{DRIVE}/image_02"
    np.testing.assert_allclose(record["intrinsics"], P_RECT_K, atol=1e-4)  # P_rect_02 of calib_cam_to_cam.txt
    _check_real_densities(record)

    both = KC.load_kitti_depth_completion(root, "train", cameras=("image_02", "image_03"))
    assert [r["image_id"] for r in both] == [f"{DRIVE}_image_02_{FRAME}", f"{DRIVE}_image_03_{FRAME}"]
    right = both[1]
    np.testing.assert_allclose(right["intrinsics"], P_RECT_K, atol=1e-4)  # P_rect_03: same K, other translation
    assert (read_sparse_depth(right) > 0).mean() == pytest.approx(0.041, abs=0.002)
    assert (read_depth(right) > 0).mean() == pytest.approx(0.185, abs=0.002)  # SOURCES.md: 18.5 %


def test_real_frame_merged_tree_and_no_calib(src, tmp_path, caplog):
    """velodyne_raw inside data_depth_annotated (the tree kitti.load_kitti_depth reads; BTS / NLSPN merge the two
    zips so), no calib_cam_to_cam.txt: records without intrinsics, logged."""
    root = str(tmp_path / "kitti")
    proj = os.path.join(root, "data_depth_annotated", "val", DRIVE, "proj_depth")
    _link(os.path.join(src, "depth_completion", "velodyne_raw_image_02.png"),
          os.path.join(proj, "velodyne_raw", "image_02", f"{FRAME}.png"))
    _link(os.path.join(src, "depth_completion", "groundtruth_image_02.png"),
          os.path.join(proj, "groundtruth", "image_02", f"{FRAME}.png"))
    _link(os.path.join(src, "raw", "sync_rect", "cam_02.png"),
          os.path.join(root, "2011_09_26", DRIVE, "image_02", "data", f"{FRAME}.png"))
    with caplog.at_level(logging.WARNING):
        (record,) = KC.load_kitti_depth_completion(root, "val")
    assert record["sparse_depth_file_name"] == os.path.join(proj, "velodyne_raw", "image_02", f"{FRAME}.png")
    assert "intrinsics" not in record and "no calib_cam_to_cam.txt for 1 recording date" in caplog.text
    assert (read_sparse_depth(record) > 0).mean() == pytest.approx(0.041, abs=0.002)


def test_real_frame_selection_folders(src, tmp_path):
    root = str(tmp_path / "kitti")
    folder = _link_selection(src, root)
    (record,) = KC.load_kitti_depth_completion(root, "val_selection")
    assert record["file_name"] == os.path.join(folder, "image", f"{DRIVE}_image_{FRAME}_image_02.png")
    assert record["sparse_depth_file_name"] == os.path.join(
        folder, "velodyne_raw", f"{DRIVE}_velodyne_raw_{FRAME}_image_02.png")
    assert record["depth_file_name"] == os.path.join(
        folder, "groundtruth_depth", f"{DRIVE}_groundtruth_depth_{FRAME}_image_02.png")
    assert record["intrinsics"] == SELECTION_K  # the txt, parsed exactly
    assert (record["sequence_id"], record["frame_index"]) == (f"{DRIVE}/image_02", 5)
    _check_real_densities(record)
    assert KC.read_intrinsics_txt(os.path.join(src, "depth_completion", "intrinsics.txt")) == SELECTION_K
    with pytest.raises(FileNotFoundError, match=r"no image named <drive>_image_<frame>_\{image_03\}\.png"):
        KC.load_kitti_depth_completion(root, "val_selection", cameras=("image_03",))

    test_dir = os.path.join(root, "depth_selection", "test_depth_completion_anonymous")
    _link(os.path.join(src, "depth_completion", "test_image.png"), os.path.join(test_dir, "image", "0000000000.png"))
    _link(os.path.join(src, "depth_completion", "velodyne_raw_image_02.png"),
          os.path.join(test_dir, "velodyne_raw", "0000000000.png"))
    _link(os.path.join(src, "depth_completion", "intrinsics.txt"),
          os.path.join(test_dir, "intrinsics", "0000000000.txt"))
    (test,) = KC.load_kitti_depth_completion(root, "test")
    assert "depth_file_name" not in test and "depth_format" not in test and "sequence_id" not in test
    assert test["intrinsics"] == SELECTION_K and test["image_id"] == "kitti_completion_test_0000000000"
    assert (read_sparse_depth(test) > 0).mean() == pytest.approx(0.041, abs=0.002)


def test_frames_without_raw_image_or_ground_truth_are_skipped(src, tmp_path, caplog):
    root = str(tmp_path / "kitti")
    _link_drive_frame(src, root)
    _link_drive_frame(src, root, frame="0000000006", image=False)  # no raw image
    _link(os.path.join(src, "depth_completion", "velodyne_raw_image_02.png"),  # no ground truth
          os.path.join(root, "data_depth_velodyne", "train", DRIVE, "proj_depth", "velodyne_raw", "image_02",
                       "0000000007.png"))
    with caplog.at_level(logging.WARNING):
        records = KC.load_kitti_depth_completion(root, "train")
    assert [r["frame_index"] for r in records] == [5]
    assert "1 frames skipped, their raw image is missing" in caplog.text
    assert "1 velodyne_raw frames skipped, they have no ground truth" in caplog.text


def test_errors_name_the_file_or_folder(src, tmp_path):
    root = str(tmp_path / "kitti")
    with pytest.raises(FileNotFoundError, match=os.path.join(root, "data_depth_velodyne", "train")):
        KC.load_kitti_depth_completion(root, "train")
    with pytest.raises(FileNotFoundError, match=os.path.join(root, "depth_selection", "val_selection_cropped")):
        KC.load_kitti_depth_completion(root, "val_selection")
    with pytest.raises(ValueError, match="split 'testing'"):
        KC.load_kitti_depth_completion(root, "testing")
    _link_drive_frame(src, root, image=False)
    with pytest.raises(FileNotFoundError, match="No KITTI depth completion frames for split 'train'.*raw image"):
        KC.load_kitti_depth_completion(root, "train")
    os.makedirs(os.path.join(root, "data_depth_velodyne", "val"))
    with pytest.raises(FileNotFoundError, match=os.path.join(root, "data_depth_annotated", "val")):
        KC.load_kitti_depth_completion(root, "val")

    # an 8-bit sparse map, and one of another size than the image: read_sparse_depth names the file
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.fromarray(np.zeros((375, 1242), np.uint8)).save(bad / "eight_bit.png")
    Image.fromarray(np.ones((352, 1216), np.uint16) * 256).save(bad / "cropped.png")
    for name, message in (("eight_bit.png", "16-bit PNG, got 8-bit"), ("cropped.png", r"352x1216 \(HxW\)")):
        root = str(tmp_path / name[:-4] / "kitti")
        _link_selection(src, root, sparse=str(bad / name))
        (record,) = KC.load_kitti_depth_completion(root, "val_selection")
        with pytest.raises(DepthFormatError, match=message) as info:
            read_sparse_depth(record)
        assert record["sparse_depth_file_name"] in str(info.value)

    # selection files missing or malformed
    root = str(tmp_path / "no_intrinsics" / "kitti")
    folder = _link_selection(src, root)
    txt = os.path.join(folder, "intrinsics", f"{DRIVE}_image_{FRAME}_image_02.txt")
    os.remove(txt)
    with pytest.raises(FileNotFoundError, match=f"no intrinsics file.*{txt}"):
        KC.load_kitti_depth_completion(root, "val_selection")
    with open(txt, "w") as f:
        f.write("721.5377 0.0 596.5593 0.0 721.5377 149.854 0.0 0.0\n")
    with pytest.raises(ValueError, match=f"{txt}: 8 numbers, expected the 9"):
        KC.load_kitti_depth_completion(root, "val_selection")
    calib = tmp_path / "calib.txt"
    calib.write_text("P_rect_02: 1 0 0\n")
    with pytest.raises(ValueError, match="P_rect_02 has 3 numbers"):
        KC.read_calib_intrinsics(str(calib), "image_02")
    with pytest.raises(ValueError, match="no 'P_rect_03' line"):
        KC.read_calib_intrinsics(str(calib), "image_03")


def test_calib_scaled_to_resized_images(src):
    calib = os.path.join(src, "raw", "calib_cam_to_cam.txt")
    np.testing.assert_allclose(KC.read_calib_intrinsics(calib, "image_02", (375, 1242)), P_RECT_K, rtol=1e-7)
    half = np.asarray(KC.read_calib_intrinsics(calib, "image_02", (188, 621)))
    np.testing.assert_allclose(half[0], [721.5377 / 2, 0, 609.5593 / 2], rtol=1e-6)
    np.testing.assert_allclose(half[1], [0, 721.5377 * 188 / 375, 172.854 * 188 / 375], rtol=1e-6)


def test_registration(src, tmp_path):
    root = str(tmp_path / "kitti")
    _link_drive_frame(src, root)
    name = "test_kitti_completion_real_train"
    if name not in DatasetCatalog.list():
        KC.register_kitti_depth_completion(name, root, "train")
    assert len(DatasetCatalog.get(name)) == 1
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "depth_completion" and meta.sparse_depth_format == "kitti_png256"
    assert meta.depth_range == (1e-3, 80.0) and meta.depth_format == "kitti_png256" and meta.split == "train"
    # the builtin names exist (registered at import, read only when loaded)
    import segdep_d2  # noqa: F401

    for split in KC.KITTI_COMPLETION_SPLITS:
        assert f"kitti_depth_completion_{split}" in DatasetCatalog.list()
        assert MetadataCatalog.get(f"kitti_depth_completion_{split}").evaluator_type == "depth_completion"
