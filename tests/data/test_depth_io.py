import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from segdep_d2.data import DepthFormatError, read_depth

CITYSCAPES = "cityscapes/fog_simulation-SFSU_synthetic/data/demos"
KITTI = "kitti_depth/torch_kitti/tests/test_data/depth_completion"


def _write_png16(path, array):
    assert cv2.imwrite(str(path), array.astype(np.uint16))
    return str(path)


def _write_image(path, height, width):
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)
    return str(path)


# ---- real files, read in place ----

def test_cityscapes_disparity_real_sample(real_samples):
    base = os.path.join(real_samples, CITYSCAPES)
    record = {
        "file_name": f"{base}/leftImg8bit/aachen_000001_000019_leftImg8bit.png",
        "depth_file_name": f"{base}/disparity/aachen_000001_000019_disparity.png",
        "camera_file_name": f"{base}/camera/aachen_000001_000019_camera.json",
        "depth_format": "cityscapes_disparity",
    }
    depth = read_depth(record)
    raw = cv2.imread(record["depth_file_name"], cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.float32 and depth.shape == (1024, 2048)
    assert np.all(depth[raw == 0] == 0), "invalid disparity must be exactly 0 depth"
    valid = depth > 0
    assert np.isfinite(depth).all()
    assert 30.0 < np.median(depth[valid]) < 33.0  # SOURCES.md: median 31.4 m
    # one pixel by hand: baseline * fx / ((p - 1) / 256)
    y, x = np.argwhere(raw > 1)[1000]
    expected = 0.209313 * 2262.52 / ((float(raw[y, x]) - 1.0) / 256.0)
    assert depth[y, x] == pytest.approx(expected, rel=1e-5)


def test_kitti_groundtruth_real_sample(real_samples):
    path = os.path.join(real_samples, KITTI, "groundtruth_image_02.png")
    depth = read_depth(
        {"depth_file_name": path, "depth_format": "kitti_png256", "file_name": os.path.join(real_samples, KITTI, "test_image.png")}
    )
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    valid = raw > 0
    assert depth.shape == (375, 1242)
    np.testing.assert_array_equal(depth[valid], raw[valid].astype(np.float32) / 256.0)
    assert np.all(depth[~valid] == 0)
    assert 0.19 < valid.mean() < 0.20  # 19.5 % valid
    assert 5.3 < depth[valid].min() and depth.max() < 85.0


def test_nyu_millimetres_real_sample(real_samples):
    path = os.path.join(real_samples, "nyuv2/mmsegmentation/tests/data/pseudo_nyu_dataset/annotations/bookstore_0001d_00001.png")
    depth = read_depth({"depth_file_name": path, "depth_format": "nyu_mm"})
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(depth, raw / 1000.0, rtol=1e-6)
    assert depth.max() == pytest.approx(10.0, abs=1e-3)


# ---- every encoding by hand ----

def test_uint16_encodings(tmp_path):
    raw = np.array([[0, 100, 65535], [256, 512, 1000]], np.uint16)
    path = _write_png16(tmp_path / "d.png", raw)
    np.testing.assert_allclose(
        read_depth({"depth_file_name": path, "depth_format": "vkitti2_cm"}), [[0, 1.0, 655.35], [2.56, 5.12, 10.0]], rtol=1e-6
    )
    np.testing.assert_allclose(
        read_depth({"depth_file_name": path, "depth_format": "kitti_png256"}), raw / 256.0, rtol=1e-6
    )
    np.testing.assert_allclose(read_depth({"depth_file_name": path, "depth_format": "nyu_mm"}), raw / 1000.0, rtol=1e-6)


def test_cityscapes_disparity_by_hand(tmp_path):
    raw = np.array([[0, 1, 257, 2561]], np.uint16)  # invalid, zero disparity, 1 px, 10 px
    path = _write_png16(tmp_path / "x_disparity.png", raw)
    camera = tmp_path / "x_camera.json"
    camera.write_text(json.dumps({"extrinsic": {"baseline": 0.2}, "intrinsic": {"fx": 2000.0}}))
    depth = read_depth({"depth_file_name": path, "camera_file_name": str(camera), "depth_format": "cityscapes_disparity"})
    np.testing.assert_allclose(depth, [[0.0, 0.0, 400.0, 40.0]], rtol=1e-6)


def test_npy_metres(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, np.array([[0.0, 1.5], [80.0, 3.25]], np.float64))
    depth = read_depth({"depth_file_name": str(path), "depth_format": "npy_m"})
    assert depth.dtype == np.float32
    np.testing.assert_array_equal(depth, [[0.0, 1.5], [80.0, 3.25]])


# ---- bad input: each names the file and the problem ----

def test_8bit_png_rejected(tmp_path):
    path = tmp_path / "depth8.png"
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(path)
    with pytest.raises(DepthFormatError, match=r"depth8\.png.*16-bit.*8-bit"):
        read_depth({"depth_file_name": str(path), "depth_format": "kitti_png256"})


def test_size_mismatch_rejected(tmp_path):
    path = _write_png16(tmp_path / "d.png", np.ones((4, 6)))
    image = _write_image(tmp_path / "img.png", 5, 6)
    with pytest.raises(DepthFormatError, match=r"d\.png.*4x6.*img\.png.*5x6"):
        read_depth({"depth_file_name": path, "depth_format": "kitti_png256", "file_name": image})
    with pytest.raises(DepthFormatError, match="4x6"):
        read_depth({"depth_file_name": path, "depth_format": "kitti_png256", "height": 8, "width": 6})


def test_missing_depth_and_camera_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Depth file not found: .*nope\.png"):
        read_depth({"depth_file_name": str(tmp_path / "nope.png"), "depth_format": "vkitti2_cm"})
    path = _write_png16(tmp_path / "x_disparity.png", np.ones((2, 2)))
    with pytest.raises(FileNotFoundError, match=r"Camera file not found: .*x_camera\.json"):
        read_depth(
            {"depth_file_name": path, "camera_file_name": str(tmp_path / "x_camera.json"), "depth_format": "cityscapes_disparity"}
        )
    bad = tmp_path / "bad_camera.json"
    bad.write_text(json.dumps({"extrinsic": {}, "intrinsic": {"fx": 1.0}}))
    with pytest.raises(DepthFormatError, match=r"bad_camera\.json.*baseline"):
        read_depth({"depth_file_name": path, "camera_file_name": str(bad), "depth_format": "cityscapes_disparity"})


def test_non_finite_npy_rejected(tmp_path):
    for value in (np.nan, np.inf):
        path = tmp_path / "bad.npy"
        np.save(path, np.array([[1.0, value]], np.float32))
        with pytest.raises(DepthFormatError, match=r"bad\.npy.*NaN/inf"):
            read_depth({"depth_file_name": str(path), "depth_format": "npy_m"})


def test_unknown_format_rejected(tmp_path):
    path = _write_png16(tmp_path / "d.png", np.ones((2, 2)))
    with pytest.raises(DepthFormatError, match="unknown depth_format 'kitti'"):
        read_depth({"depth_file_name": path, "depth_format": "kitti"})
