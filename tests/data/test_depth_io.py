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


# ---- ZED stereo (Korean sidewalk dataset): disp16 / 100 px, fx from the .conf section of the map's size ----

SIDEWALK = "sidewalk/Sidewalk_Data/Sample Data"


def _zed_sample(real_samples):
    base = os.path.join(real_samples, SIDEWALK)
    paths = {
        "conf": f"{base}/output/Sidewalk_19009_depth_output_000001_0.conf",
        "disp16": f"{base}/rawdata/Sidewalk_19009_depth_disp16_000001_0.png",
        "confidence": f"{base}/rawdata/Sidewalk_19009_depth_confidence_000001_0.png",
    }
    if not all(os.path.isfile(p) for p in paths.values()):
        pytest.skip("the sidewalk ZED sample is not in ../shared/real_samples")
    return paths


def _zed_record(paths, **extra):
    return {
        "depth_file_name": paths["disp16"], "depth_format": "zed_disp16", "camera_file_name": paths["conf"],
        "height": 1080, "width": 1920, **extra,
    }


def _write_zed_conf(path, sections):
    path.write_text("\n".join(f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in keys.items()) for name, keys in sections.items()))
    return str(path)


def test_zed_calibration_real_sample(real_samples):
    from segdep_d2.data.depth_io import read_zed_calibration

    paths = _zed_sample(real_samples)
    fx, baseline = read_zed_calibration(paths["conf"], 1920, 1080)
    assert fx == pytest.approx(1394.83) and baseline == pytest.approx(0.120009)  # LEFT_CAM_FHD, not RIGHT_CAM_VGA's 349.97
    assert read_zed_calibration(paths["conf"], 672, 376)[0] == pytest.approx(348.707)  # LEFT_CAM_VGA
    assert read_zed_calibration(paths["conf"], 1280, 720)[0] == pytest.approx(697.414)


def test_zed_disp16_real_sample(real_samples):
    paths = _zed_sample(real_samples)
    raw = cv2.imread(paths["disp16"], cv2.IMREAD_UNCHANGED)
    confidence = cv2.imread(paths["confidence"], cv2.IMREAD_UNCHANGED)

    depth = read_depth(_zed_record(paths))
    assert depth.dtype == np.float32 and depth.shape == (1080, 1920) and np.isfinite(depth).all()
    rows = np.flatnonzero((depth > 0).any(axis=1))
    assert (rows[0], rows[-1]) == (244, 835) and np.all(depth[244:836] > 0)  # the band, every column
    np.testing.assert_array_equal(depth > 0, raw > 0)
    y, x = 500, 960  # one pixel by hand
    assert depth[y, x] == pytest.approx(1394.83 * 0.120009 / (raw[y, x] / 100.0), rel=1e-5)

    masked = read_depth(_zed_record(paths, confidence_file_name=paths["confidence"]))
    np.testing.assert_array_equal(masked > 0, (raw > 0) & (confidence == 255))  # exactly the unconfident pixels go
    np.testing.assert_array_equal(masked[masked > 0], depth[masked > 0])
    p1, p50, p99 = np.percentile(masked[masked > 0], [1, 50, 99])  # SOURCES.md (f): 1.65 / 4.94 / 33.8 m
    assert p50 == pytest.approx(4.94, rel=0.02)
    assert p1 == pytest.approx(1.65, rel=0.02) and p99 == pytest.approx(33.8, rel=0.02)

    # the seed's /256: 2.56x the depth (and with its RIGHT_CAM_VGA fx, 0.64x the true one)
    scaled = read_depth(_zed_record(paths, disparity_scale=256))
    np.testing.assert_allclose(scaled, depth * 2.56, rtol=1e-5)


def test_zed_disp16_by_hand_vga(tmp_path):
    left = {"fx": 350.0, "fy": 350.0, "cx": 330.0, "cy": 190.0}
    conf = _write_zed_conf(tmp_path / "cam.conf", {
        "LEFT_CAM_FHD": {**left, "fx": 1400.0}, "STEREO": {"BaseLine": 120.0}, "LEFT_CAM_VGA": left,
        "RIGHT_CAM_VGA": {**left, "fx": 999.0},
    })
    raw = np.zeros((376, 672), np.uint16)
    raw[0, :4] = [0, 100, 4200, 65535]  # invalid, 1 px, 42 px, 655.35 px
    path = _write_png16(tmp_path / "disp16.png", raw)
    record = {"depth_file_name": path, "depth_format": "zed_disp16", "camera_file_name": conf}
    depth = read_depth(record)
    np.testing.assert_allclose(depth[0, :4], [0.0, 42.0, 1.0, 42.0 / 655.35], rtol=1e-6)  # 350 * 0.12 = 42
    assert np.all(depth[1:] == 0)
    np.testing.assert_allclose(read_depth({**record, "disparity_scale": 256.0})[0, :4], depth[0, :4] * 2.56, rtol=1e-6)

    confidence = np.full(raw.shape, 255, np.uint8)
    confidence[0, 2] = 0
    Image.fromarray(confidence).save(tmp_path / "confidence.png")
    masked = read_depth({**record, "confidence_file_name": str(tmp_path / "confidence.png")})
    np.testing.assert_allclose(masked[0, :4], [0.0, 42.0, 0.0, 42.0 / 655.35], rtol=1e-6)


def test_zed_encode_decode_round_trip(tmp_path):
    from segdep_d2.data.depth_io import encode_depth, write_depth

    conf = _write_zed_conf(tmp_path / "cam.conf", {
        "STEREO": {"BaseLine": 120.009}, "LEFT_CAM_VGA": {"fx": 348.707}, "LEFT_CAM_HD": {"fx": 697.4},
    })
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 40.0, size=(376, 672)).astype(np.float32)
    depth[0, :5] = 0.0
    for scale in (None, 256.0):
        path = write_depth(str(tmp_path / "d.png"), depth, "zed_disp16", camera_file_name=conf, disparity_scale=scale)
        record = {"depth_file_name": path, "depth_format": "zed_disp16", "camera_file_name": conf}
        if scale is not None:
            record["disparity_scale"] = scale
        decoded = read_depth(record)
        assert np.all(decoded[0, :5] == 0) and np.all(decoded[depth > 0] > 0)
        fb, s = 348.707 * 0.120009, scale or 100.0
        # the encoding's resolution is half a stored unit of disparity: 0.5 / scale px
        error = np.abs(fb / decoded[depth > 0] - fb / depth[depth > 0])
        assert error.max() <= 0.5 / s + 1e-6
    edge = np.ones((376, 672))
    edge[0, :3] = [0.0, 0.01, 1e9]  # none, nearer than 100 * 41.85 / 65535 = 0.064 m, too far to store
    stored = encode_depth(edge, "zed_disp16", conf)
    assert stored[0, 0] == 0 and stored[0, 1] == 65535 and stored[0, 2] == 0  # clipped, never wrapped; 0 = none
    assert stored[1, 0] == round(100 * 348.707 * 0.120009)
    with pytest.raises(DepthFormatError, match="camera"):
        encode_depth(np.ones((376, 672)), "zed_disp16")


def test_zed_errors_name_the_file(tmp_path, real_samples):
    paths = _zed_sample(real_samples)
    # 8-bit disparity
    eight = tmp_path / "disp8.png"
    Image.fromarray(np.full((1080, 1920), 7, np.uint8)).save(eight)
    with pytest.raises(DepthFormatError, match=r"disp8\.png.*16-bit.*8-bit"):
        read_depth(_zed_record(paths, depth_file_name=str(eight)))
    # no LEFT_CAM section of the map's size
    odd = _write_png16(tmp_path / "odd.png", np.ones((100, 200)))
    with pytest.raises(DepthFormatError, match=r"depth_output_000001_0\.conf.*200x100.*no ZED resolution.*LEFT_CAM_FHD"):
        read_depth(_zed_record(paths, depth_file_name=odd, height=100, width=200))
    partial = _write_zed_conf(tmp_path / "partial.conf", {"STEREO": {"BaseLine": 120.0}, "LEFT_CAM_HD": {"fx": 700.0}})
    vga = _write_png16(tmp_path / "vga.png", np.ones((376, 672)))
    with pytest.raises(DepthFormatError, match=r"partial\.conf.*no \[LEFT_CAM_VGA\].*LEFT_CAM_HD"):
        read_depth({"depth_file_name": vga, "depth_format": "zed_disp16", "camera_file_name": partial})
    zero = _write_zed_conf(tmp_path / "zero.conf", {"STEREO": {"BaseLine": 0}, "LEFT_CAM_VGA": {"fx": 700.0}})
    with pytest.raises(DepthFormatError, match=r"zero\.conf.*BaseLine.*positive"):
        read_depth({"depth_file_name": vga, "depth_format": "zed_disp16", "camera_file_name": zero})
    # missing .conf, and no camera_file_name at all
    with pytest.raises(FileNotFoundError, match=r"Camera file not found: .*missing\.conf"):
        read_depth(_zed_record(paths, camera_file_name=str(tmp_path / "missing.conf")))
    with pytest.raises(KeyError, match=r"disp16_000001_0\.png.*camera_file_name"):
        read_depth({"depth_file_name": paths["disp16"], "depth_format": "zed_disp16"})
    # confidence of another size, or 16-bit
    small = tmp_path / "small_confidence.png"
    Image.fromarray(np.full((540, 960), 255, np.uint8)).save(small)
    with pytest.raises(DepthFormatError, match=r"small_confidence\.png.*540x960.*1080x1920"):
        read_depth(_zed_record(paths, confidence_file_name=str(small)))
    wide = _write_png16(tmp_path / "wide_confidence.png", np.full((1080, 1920), 255))
    with pytest.raises(DepthFormatError, match=r"wide_confidence\.png.*8-bit"):
        read_depth(_zed_record(paths, confidence_file_name=wide))
