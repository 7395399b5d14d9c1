import numpy as np
import torch
from detectron2.data import transforms as T
from PIL import Image

from segdep_d2.data import DepthPanopticDatasetMapper


def _coordinate_sample(tmp_path, height=24, width=40):
    """An image whose R, G channels hold x, y and a depth map that encodes the same (x, y)."""
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    depth = (1.0 + xs + 100.0 * ys).astype(np.float32)
    depth[::5, ::7] = 0.0  # holes: invalid pixels must stay exactly 0
    np.save(tmp_path / "depth.npy", depth)
    sem = ((xs // 10) % 3).astype(np.uint8)
    Image.fromarray(sem).save(tmp_path / "sem.png")
    return {
        "file_name": str(tmp_path / "img.png"),
        "depth_file_name": str(tmp_path / "depth.npy"),
        "depth_format": "npy_m",
        "sem_seg_file_name": str(tmp_path / "sem.png"),
        "height": height,
        "width": width,
    }


def _mapper(augmentations):
    return DepthPanopticDatasetMapper(
        True, augmentations=augmentations, image_format="RGB", depth_range=(1e-3, 1e5)
    )


def test_crop_and_flip_keep_depth_aligned(tmp_path):
    record = _coordinate_sample(tmp_path)
    mapper = _mapper([T.RandomCrop("absolute", (16, 24)), T.RandomFlip(prob=1.0)])
    np.random.seed(0)
    for _ in range(5):
        out = mapper(record)
        image = out["image"].numpy()
        depth = out["depth"].numpy()
        assert image.shape == (3, 16, 24) and depth.shape == (16, 24)
        x, y = image[0].astype(np.float32), image[1].astype(np.float32)
        valid = depth > 0
        # every valid depth pixel still encodes the (x, y) of the image pixel it sits on
        np.testing.assert_array_equal(depth[valid], 1.0 + x[valid] + 100.0 * y[valid])
        # the flip really happened: x decreases left to right
        assert (np.diff(x, axis=1) < 0).all()
        # holes are where the source had them (x % 7 == 0 and y % 5 == 0)
        np.testing.assert_array_equal(~valid, (x % 7 == 0) & (y % 5 == 0))
        np.testing.assert_array_equal(out["depth_valid"].numpy(), valid)
        # the label moved with the image as well
        np.testing.assert_array_equal(out["sem_seg"].numpy(), (x.astype(int) // 10) % 3)


def test_resize_is_nearest_and_metric(tmp_path):
    record = _coordinate_sample(tmp_path)
    source = np.load(record["depth_file_name"])
    out = _mapper([T.ResizeShortestEdge(60, 1000)])(record)  # 24x40 -> 60x100
    depth = out["depth"].numpy()
    assert depth.shape == (60, 100) and out["image"].shape == (3, 60, 100)
    # nearest neighbour: no blend of invalid zeros into valid depth, values stay in metres
    assert set(np.unique(depth).tolist()) <= set(np.unique(source).tolist())
    assert abs((depth == 0).mean() - (source == 0).mean()) < 0.02  # holes keep their share


def test_depth_range_masks_far_values(tmp_path):
    record = _coordinate_sample(tmp_path)
    mapper = DepthPanopticDatasetMapper(True, augmentations=[], image_format="RGB", depth_range=(1e-3, 500.0))
    out = mapper(record)
    depth, valid = out["depth"], out["depth_valid"]
    assert torch.equal(valid, (depth > 1e-3) & (depth < 500.0))
    assert not valid[depth >= 500.0].any() and valid.any()


def test_samples_without_labels_lack_targets(tmp_path):
    record = _coordinate_sample(tmp_path)
    depth_only = {k: v for k, v in record.items() if k != "sem_seg_file_name"}
    out = _mapper([])(depth_only)
    assert "sem_seg" not in out and "depth" in out
    label_only = {k: v for k, v in record.items() if not k.startswith("depth")}
    out = _mapper([])(label_only)
    assert "depth" not in out and "sem_seg" in out


def test_test_mapper_prepares_image_only(tmp_path):
    record = _coordinate_sample(tmp_path)
    mapper = DepthPanopticDatasetMapper(False, augmentations=[T.ResizeShortestEdge(48, 1000)], image_format="RGB", depth_range=(1e-3, 80.0))
    out = mapper(record)
    assert out["image"].shape == (3, 48, 80)
    assert "depth" not in out and "sem_seg" not in out
    assert out["depth_file_name"] == record["depth_file_name"]  # evaluators read GT from here
