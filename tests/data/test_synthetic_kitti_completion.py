"""Synthetic KITTI depth completion: every split loaded through the registration, the simulated LiDAR scan (beam
rows, depth values, density), the depth-selection crops and their K, determinism, and the CLI + builtin names."""
import filecmp
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from segdep_d2.data.datasets import kitti_completion as KC
from segdep_d2.data.depth_io import read_depth, read_sparse_depth
from segdep_d2.data.synthetic import generate_kitti_completion, kitti_intrinsics, render_frame
from segdep_d2.data.synthetic import kitti_completion_writer as W

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H, W_ = 64, 212
CAMERAS = ("image_02", "image_03")
VAL_DRIVE = "2011_09_26_drive_0002_sync"


@pytest.fixture(scope="module")
def kc(tmp_path_factory):
    """train and val drives, 3 frames each (the first without depth), both cameras, 2 test frames."""
    root = os.path.join(str(tmp_path_factory.mktemp("datasets")), "kitti")
    summary = generate_kitti_completion(root, frames=3, cameras=CAMERAS, height=H, width=W_, seed=0, test_frames=2)
    return root, summary


def _registered(name, root, split, cameras=CAMERAS):
    if name not in DatasetCatalog.list():
        KC.register_kitti_depth_completion(name, root, split, cameras)
    return DatasetCatalog.get(name)


def _frame_of(record, seed=0):
    drive, camera = record["sequence_id"].split("/")
    return render_frame(drive, record["frame_index"], height=H, width=W_, intrinsics=kitti_intrinsics(H, W_),
                        seed=seed, camera={"image_02": 0, "image_03": 1}[camera])


def test_every_split_loads_through_the_registration(kc):
    root, summary = kc
    expected = {"train": 2 * 2, "val": 2 * 2, "val_selection": 2 * 2, "test": 2}  # frames 1, 2 x both cameras
    for split, count in expected.items():
        records = _registered(f"test_kc_synthetic_{split}", root, split)
        assert len(records) == count, split
        meta = MetadataCatalog.get(f"test_kc_synthetic_{split}")
        assert meta.evaluator_type == "depth_completion" and meta.sparse_depth_format == "kitti_png256"
        assert meta.depth_range == (1e-3, 80.0)
        for record in records:
            assert record["sparse_depth_format"] == "kitti_png256"
            assert ("depth_file_name" in record) == (split != "test")
            assert np.asarray(record["intrinsics"]).shape == (3, 3)
            sparse = read_sparse_depth(record)
            assert sparse.shape == (record["height"], record["width"]) and (sparse > 0).any()
    train = DatasetCatalog.get("test_kc_synthetic_train")
    assert [(r["sequence_id"], r["frame_index"]) for r in train] == [
        (f"2011_09_26_drive_0001_sync/{c}", i) for c in CAMERAS for i in (1, 2)]
    assert summary["counts"]["depth_selection"] == {"val_selection_cropped": 4, "test_depth_completion_anonymous": 2}


def test_sparse_and_ground_truth_are_the_rendered_depth(kc):
    root, summary = kc
    densities = []
    for split in ("train", "val"):
        for record in _registered(f"test_kc_synthetic_{split}", root, split):
            frame = _frame_of(record)
            np.testing.assert_array_equal(np.asarray(Image.open(record["file_name"])), frame.rgb)
            # the calibration file's P_rect (printed with 7 digits) is the renderer's K
            np.testing.assert_allclose(record["intrinsics"], kitti_intrinsics(H, W_), rtol=1e-6)
            sparse, gt = read_sparse_depth(record), read_depth(record)
            valid = gt > 0
            assert np.abs(gt[valid] - frame.depth[valid]).max() <= 1 / 512 + 1e-6  # exact within 1/256 m
            # the LiDAR points: the rendered depth + 2 cm Gaussian range noise
            error = sparse[sparse > 0] - frame.depth[sparse > 0]
            assert np.abs(error).max() < 5 * 0.02 + 1 / 512 and 0.015 < error.std() < 0.025
            densities.append(((sparse > 0).mean(), (gt > 0).mean()))
    densities = np.asarray(densities)
    assert (densities[:, 0] < densities[:, 1] / 2).all()  # the input is much sparser than the ground truth
    assert 0.02 < densities[:, 0].mean() < 0.08 and 0.08 < densities[:, 1].mean() < 0.3  # real: 4.1 % / 19.5 %
    assert summary["densities"]["velodyne_raw"] == pytest.approx(densities[:, 0].mean())


def test_sparse_points_lie_on_beam_rows(kc):
    """In every column the points lie on the rows the beams project to (cy - fy tan(theta) / cos(phi), +-1 for the
    azimuth's rounding to the column), a few distinct rows per column, none above the +2 degree beam."""
    root, summary = kc
    K = kitti_intrinsics(H, W_)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    elevations = np.deg2rad(summary["lidar"]["elevations_deg"])
    assert summary["lidar"]["beam_stride"] == 6 and len(elevations) == 11
    phi = np.arctan((np.arange(W_) - cx) / fx)
    beam_rows = cy - fy * np.tan(elevations)[:, None] / np.cos(phi)[None, :]  # (beams, W)
    in_image = ((beam_rows > -0.5) & (beam_rows < H - 0.5)).sum(0)
    for record in _registered("test_kc_synthetic_train", root, "train"):
        sparse = read_sparse_depth(record)
        rows, cols = np.nonzero(sparse > 0)
        assert np.abs(beam_rows[:, cols] - rows[None, :]).min(0).max() <= 1.0
        per_column = np.array([len(np.unique(rows[cols == u])) for u in range(W_)])
        assert (per_column <= in_image).all() and per_column.max() <= 8
        assert (rows >= beam_rows[0, cols] - 1).all()  # nothing above the +2 degree beam of its column
        # the azimuth sampling: about one column in 1.01 degrees of azimuth carries points
        assert 0.2 < (per_column > 0).mean() < 0.6


def test_lidar_scan_of_a_wall_at_kitti_resolution():
    """All 64 beams at 375 x 1242: the in-image beams (those above -15.6 degrees: 32 + 14) each give one row in
    the centre column, ~4.5 % of the pixels; nothing beyond range."""
    K = kitti_intrinsics(375, 1242)
    wall = np.full((375, 1242), 10.0)
    mask = W.lidar_scan_mask(wall, K)
    lowest = -np.rad2deg(np.arctan((374.5 - K[1, 2]) / K[1, 1]))
    expected_beams = int((W.HDL64E_ELEVATIONS_DEG > lowest).sum())
    centre = int(round(K[0, 2]))
    assert mask[:, centre].sum() == expected_beams == 46
    # off the centre a beam's row moves away from the horizon (1 / cos(phi)): fewer beams stay in the image
    cols = np.flatnonzero(mask.any(0))
    phi = np.arctan((cols - K[0, 2]) / K[0, 0])
    rows = K[1, 2] - K[1, 1] * np.tan(np.deg2rad(W.HDL64E_ELEVATIONS_DEG))[:, None] / np.cos(phi)[None, :]
    assert np.abs(mask[:, cols].sum(0) - ((rows > -0.5) & (rows < 374.5)).sum(0)).max() <= 1
    assert 400 < len(cols) < 500  # 81.4 degrees of azimuth every 0.1728 degrees
    assert 0.035 < mask.mean() < 0.055  # the real velodyne_raw: 4.1 % (part of its scan hits the sky)
    assert not W.lidar_scan_mask(np.full((375, 1242), 121.0), K).any()  # beyond the 120 m range
    assert not W.lidar_scan_mask(np.full((375, 1242), np.inf), K).any()  # sky
    assert W.lidar_resolution(375, 1242) == (1, 0.1728) and W.lidar_resolution(188, 621) == (2, 0.3456)


def test_selection_crops_and_intrinsics(kc):
    root, summary = kc
    top, left, crop_h, crop_w = W.selection_crop(H, W_)
    assert (top, left, crop_h, crop_w) == (4, 2, 60, 208)
    # at KITTI's size the crop is the official one, and its K the real intrinsics.txt (SOURCES.md c1)
    assert W.selection_crop(375, 1242) == (23, 13, 352, 1216)
    K_full = kitti_intrinsics(375, 1242)
    np.testing.assert_allclose([K_full[0, 2] - 13, K_full[1, 2] - 23], [596.5593, 149.854], atol=1e-9)
    K = kitti_intrinsics(H, W_)
    K_crop = K.copy()
    K_crop[0, 2] -= left
    K_crop[1, 2] -= top
    val = {(r["sequence_id"], r["frame_index"]): r for r in _registered("test_kc_synthetic_val", root, "val")}
    for split in ("val_selection", "test"):
        for record in _registered(f"test_kc_synthetic_{split}", root, split):
            assert (record["height"], record["width"]) == (crop_h, crop_w)
            np.testing.assert_allclose(record["intrinsics"], K_crop, atol=1e-6)
            with open(os.path.join(os.path.dirname(os.path.dirname(record["file_name"])), "intrinsics",
                                   os.path.basename(record["file_name"])[:-4] + ".txt")) as f:
                assert len(f.read().split()) == 9
            if split == "test":
                assert os.path.basename(record["file_name"]) in ("0000000000.png", "0000000001.png")
                continue
            full = val[record["sequence_id"], record["frame_index"]]
            crop = (slice(top, top + crop_h), slice(left, left + crop_w))
            np.testing.assert_array_equal(np.asarray(Image.open(record["file_name"])),
                                          np.asarray(Image.open(full["file_name"]))[crop])
            np.testing.assert_array_equal(read_sparse_depth(record), read_sparse_depth(full)[crop])
            np.testing.assert_array_equal(read_depth(record), read_depth(full)[crop])


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(drives={"val": (VAL_DRIVE,)}, frames=2, height=40, width=132, test_frames=1)
    a, b, c = (str(tmp_path / n / "kitti") for n in "abc")
    generate_kitti_completion(a, seed=5, **kw)
    generate_kitti_completion(b, seed=5, **kw)
    generate_kitti_completion(c, seed=6, **kw)
    files = _files(a)
    assert files == _files(b) == _files(c) and len(files) == 12
    assert filecmp.cmpfiles(a, b, files, shallow=False)[0] == files
    assert filecmp.cmpfiles(a, c, files, shallow=False)[1]  # another seed: other scenes and scans


def test_shares_raw_images_and_ground_truth_with_generate_kitti(kc, synthetic_kitti):
    """generate_kitti (tests/conftest.py: same drives, frames, size and seed) wrote the same raw images and
    ground truth: both writers can fill one KITTI root."""
    root, _ = kc
    kitti_root, _ = synthetic_kitti
    shared = [f for f in _files(kitti_root) if f.startswith("2011_09_26") or "groundtruth" in f]
    assert len(shared) == 2 * 3 + 2 * 2
    assert filecmp.cmpfiles(root, kitti_root, shared, shallow=False)[0] == shared


def test_tool_output_read_through_builtin_names(tmp_path):
    """`make_synthetic_dataset.py --format kitti_completion --out DIR/kitti`, then the builtin names with
    $DETECTRON2_DATASETS=DIR (a fresh process: builtin names are registered at import)."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "make_synthetic_dataset.py"), "--format", "kitti_completion",
         "--out", str(tmp_path / "kitti"), "--frames", "2", "--test-frames", "1", "--height", "40", "--width", "132"],
        env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4 frames (kitti_completion)" in proc.stdout and "valid pixels: velodyne_raw" in proc.stdout
    code = ("import segdep_d2\nfrom detectron2.data import DatasetCatalog\n"
            "print([len(DatasetCatalog.get(f'kitti_depth_completion_{s}')) for s in "
            "('train', 'val', 'val_selection', 'test')])")
    result = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "[1, 1, 1, 1]"
