import numpy as np
import pytest

from segdep_d2.data.depth_io import DepthFormatError, write_depth
from segdep_d2.data.sparse_depth import evaluation_rng, sample_sparse_depth, sparse_depth_input


def test_samples_only_valid_pixels_without_replacement():
    depth = np.zeros((20, 30), np.float32)
    depth[5:15, 10:20] = np.arange(100, dtype=np.float32).reshape(10, 10) + 1  # 100 valid pixels
    sparse = sample_sparse_depth(depth, 40, np.random.default_rng(0))
    assert (sparse > 0).sum() == 40
    assert np.array_equal(sparse[sparse > 0], depth[sparse > 0])  # values kept, never interpolated
    assert (sparse[depth == 0] == 0).all()
    assert (sample_sparse_depth(depth, 500, np.random.default_rng(0)) == depth).all()  # fewer than asked: all
    assert not sample_sparse_depth(np.zeros((4, 4), np.float32), 10, np.random.default_rng(0)).any()


def test_evaluation_points_are_fixed_per_image_and_differ_between_images(tmp_path):
    depth = np.random.default_rng(1).uniform(1, 10, (30, 40)).astype(np.float32)
    path = write_depth(str(tmp_path / "d.png"), depth, "nyu_mm")
    a = {"file_name": "/x/a.png", "depth_file_name": path, "depth_format": "nyu_mm"}
    b = dict(a, file_name="/x/b.png")
    first, again = sparse_depth_input(a, 200), sparse_depth_input(dict(a), 200)
    assert (first > 0).sum() == 200 and np.array_equal(first, again)
    assert not np.array_equal(first > 0, sparse_depth_input(b, 200) > 0)
    assert evaluation_rng(a).integers(1 << 30) == evaluation_rng(dict(a)).integers(1 << 30)


def test_reads_the_sparse_file_with_read_depth_rules(tmp_path):
    sparse = np.zeros((6, 8), np.float32)
    sparse[2, 3] = 12.5
    path = write_depth(str(tmp_path / "velo.png"), sparse, "kitti_png256")
    record = {"file_name": "img.png", "height": 6, "width": 8, "sparse_depth_file_name": path,
              "sparse_depth_format": "kitti_png256"}
    out = sparse_depth_input(record)
    assert out[2, 3] == 12.5 and (out > 0).sum() == 1
    with pytest.raises(DepthFormatError, match="velo.png"):
        sparse_depth_input(dict(record, height=7))
    with pytest.raises(KeyError, match="NUM_SAMPLES"):
        sparse_depth_input({"file_name": "img.png"})


def test_simulated_lidar_scan_of_a_dense_dataset(synthetic_vkitti2):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from segdep_d2.data import read_depth
    from segdep_d2.data.datasets import register_simulated_lidar
    from segdep_d2.data.datasets.vkitti2 import load_vkitti2, vkitti2_metadata

    root, _ = synthetic_vkitti2
    name = "_test_vkitti2_simulated_lidar"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register("_test_vkitti2_dense", lambda: load_vkitti2(root, ("Scene01",), ("clone",)))
        MetadataCatalog.get("_test_vkitti2_dense").set(**{k: v for k, v in vkitti2_metadata().items() if k != "name"})
        register_simulated_lidar(name, "_test_vkitti2_dense")
    assert MetadataCatalog.get(name).depth_range == MetadataCatalog.get("_test_vkitti2_dense").depth_range
    record = DatasetCatalog.get(name)[0]
    assert record["sparse_depth_simulation"] == "lidar64"
    dense, sparse = read_depth(record), sparse_depth_input(record)
    hit = sparse > 0
    assert 0.01 < hit.mean() < 0.1  # a scan, not the dense map (VKITTI2: dense depth on every pixel)
    np.testing.assert_array_equal(sparse[hit], dense[hit])  # the points are the frame's depth, not interpolated
    # a LiDAR scans rows: in every column at most one point per beam, not random pixels
    from segdep_d2.data.synthetic.kitti_completion_writer import HDL64E_ELEVATIONS_DEG, lidar_resolution

    beams = len(HDL64E_ELEVATIONS_DEG[::lidar_resolution(*hit.shape)[0]])
    assert beams < hit.shape[0] and hit.sum(axis=0).max() <= beams
    assert np.array_equal(sparse, sparse_depth_input(dict(record)))  # a property of the frame
    with pytest.raises(KeyError, match="intrinsics"):
        sparse_depth_input({k: v for k, v in record.items() if k != "intrinsics"})
    with pytest.raises(ValueError, match="sparse_depth_simulation"):
        sparse_depth_input(dict(record, sparse_depth_simulation="radar"))
