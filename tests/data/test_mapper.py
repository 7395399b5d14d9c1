import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from PIL import Image

from segdep_d2.data import DepthPanopticDatasetMapper
from segdep_d2.data.transforms import transform_depth


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


def test_without_panoptic_targets_a_record_with_semantic_labels_skips_the_target_generator(tmp_path):
    """HydraNet's case: no center / offset work for a record that has plain semantic labels; a
    panoptic-only record still gets its sem_seg from the generator."""
    record = _coordinate_sample(tmp_path)
    ids = np.full((record["height"], record["width"]), 7, dtype=np.uint32)
    Image.fromarray(np.stack([ids % 256, ids // 256, ids // 65536], -1).astype(np.uint8)).save(tmp_path / "pan.png")
    record.update(pan_seg_file_name=str(tmp_path / "pan.png"), segments_info=[{"id": 7, "category_id": 2, "iscrowd": 0}])
    calls = []

    def generator(ids, segments_info):
        calls.append(1)
        return {"sem_seg": torch.full(ids.shape, 2, dtype=torch.long), "center": torch.zeros(ids.shape)}

    def mapper(panoptic_targets):
        return DepthPanopticDatasetMapper(
            True, augmentations=[], image_format="RGB", depth_range=(1e-3, 1e5),
            panoptic_target_generator=generator, panoptic_targets=panoptic_targets,
        )

    out = mapper(False)(record)
    assert not calls and "center" not in out
    assert torch.equal(out["sem_seg"], torch.from_numpy(np.asarray(Image.open(tmp_path / "sem.png"))).long())
    panoptic_only = {k: v for k, v in record.items() if k != "sem_seg_file_name"}
    out = mapper(False)(panoptic_only)
    assert calls == [1] and (out["sem_seg"] == 2).all()
    assert "center" in mapper(True)(record)  # a panoptic model gets its targets


def test_test_mapper_prepares_image_only(tmp_path):
    record = _coordinate_sample(tmp_path)
    mapper = DepthPanopticDatasetMapper(False, augmentations=[T.ResizeShortestEdge(48, 1000)], image_format="RGB", depth_range=(1e-3, 80.0))
    out = mapper(record)
    assert out["image"].shape == (3, 48, 80)
    assert "depth" not in out and "sem_seg" not in out
    assert out["depth_file_name"] == record["depth_file_name"]  # evaluators read GT from here


# ---------------------------------------------------------------------------------------------
# Alignment: image, sem_seg, panoptic ids and depth sample the same source pixel everywhere.
# Every input pixel encodes its own source (x, y); after one augmentation draw each output
# pixel's decoded (x, y) must be identical across the four.

ALIGN_H, ALIGN_W = 10, 16  # x + W * y < 255, so a uint8 sem_seg can hold the full coordinate


def _align_depth_source(height=ALIGN_H, width=ALIGN_W):
    ys, xs = np.mgrid[0:height, 0:width]
    # arbitrary float32 bit patterns (not small integers), all distinct, metres
    depth = (0.1 + 0.37 * xs + 11.3 * ys + 1e-3 * np.sqrt(xs + 1.0)).astype(np.float32)
    depth[::4, ::5] = 0.0  # holes must stay exactly 0 and exactly where the source has them
    return depth


def _alignment_record(tmp_path, height=ALIGN_H, width=ALIGN_W):
    from panopticapi.utils import id2rgb

    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs, ys, np.full_like(xs, 7)], axis=-1).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "align_img.png")
    Image.fromarray((xs + width * ys).astype(np.uint8)).save(tmp_path / "align_sem.png")
    ids = 1 + xs + width * ys  # panoptic segment id per pixel (0 would be void)
    Image.fromarray(id2rgb(ids)).save(tmp_path / "align_pan.png")
    np.save(tmp_path / "align_depth.npy", _align_depth_source(height, width))
    base = {
        "file_name": str(tmp_path / "align_img.png"),
        "depth_file_name": str(tmp_path / "align_depth.npy"),
        "depth_format": "npy_m",
        "height": height,
        "width": width,
    }
    sem_record = dict(base, sem_seg_file_name=str(tmp_path / "align_sem.png"))
    segments = [{"id": int(i), "category_id": 0, "iscrowd": 0} for i in np.unique(ids)]
    pan_record = dict(base, pan_seg_file_name=str(tmp_path / "align_pan.png"), segments_info=segments)
    return sem_record, pan_record


def _capture_panoptic_ids(ids, segments_info):
    """Stands in for the Panoptic-DeepLab target generator: returns the ids it is given."""
    return {"panoptic_ids": torch.from_numpy(np.asarray(ids, dtype=np.int64))}


def _decode_depth(depth, source):
    """(x, y) of the source pixel holding each output value; holes (0) decode to (-1, -1)."""
    lookup = {float(v): (x, y) for (y, x), v in np.ndenumerate(source) if v != 0}
    assert len(lookup) == int((source != 0).sum())  # values are distinct
    xy = np.array([lookup.get(float(v), (-1, -1)) for v in depth.ravel()]).reshape(depth.shape + (2,))
    unknown = (depth != 0) & (xy[..., 0] < 0)
    assert not unknown.any(), f"depth values not in the source: {depth[unknown][:5]}"
    return xy[..., 0], xy[..., 1]


ALIGNMENT_AUGMENTATIONS = {
    "downscale_2x": [T.ResizeShortestEdge(5, 1000, interp=Image.NEAREST)],  # 10x16 -> 5x8
    "downscale_odd": [T.ResizeShortestEdge(7, 1000, interp=Image.NEAREST)],  # 10x16 -> 7x11
    "upscale": [T.ResizeShortestEdge(23, 1000, interp=Image.NEAREST)],  # 10x16 -> 23x37
    "crop_flip": [T.RandomCrop("absolute", (6, 9)), T.RandomFlip(prob=1.0)],
    "resize_crop_flip": [
        T.ResizeShortestEdge((7, 13, 17), 1000, "choice", interp=Image.NEAREST),
        T.RandomCrop("relative", (0.7, 0.6)),
        T.RandomFlip(prob=0.5),
        T.RandomFlip(prob=0.5, horizontal=False, vertical=True),
    ],
}


@pytest.mark.parametrize("name", sorted(ALIGNMENT_AUGMENTATIONS))
def test_image_labels_instances_and_depth_sample_the_same_pixels(tmp_path, name):
    sem_record, pan_record = _alignment_record(tmp_path)
    source = _align_depth_source()
    augs = ALIGNMENT_AUGMENTATIONS[name]
    sem_mapper = _mapper(augs)
    pan_mapper = DepthPanopticDatasetMapper(
        True, augmentations=augs, image_format="RGB", depth_range=(1e-3, 1e5),
        panoptic_target_generator=_capture_panoptic_ids,
    )
    for draw in range(4):
        np.random.seed(draw)  # the same draw for both records (it depends on the seed and size only)
        out_sem = sem_mapper(sem_record)
        np.random.seed(draw)
        out_pan = pan_mapper(pan_record)
        image = out_sem["image"].numpy().astype(np.int64)
        assert torch.equal(out_pan["image"], out_sem["image"])
        img_x, img_y = image[0], image[1]
        assert (image[2] == 7).all()

        sem = out_sem["sem_seg"].numpy()
        sem_x, sem_y = sem % ALIGN_W, sem // ALIGN_W
        ids = out_pan["panoptic_ids"].numpy() - 1
        pan_x, pan_y = ids % ALIGN_W, ids // ALIGN_W
        for out in (out_sem, out_pan):
            depth = out["depth"].numpy()
            assert depth.dtype == np.float32 and depth.shape == img_x.shape
            # exact values of the source pixel under the image pixel (holes included)
            np.testing.assert_array_equal(depth, source[img_y, img_x])
            dep_x, dep_y = _decode_depth(depth, source)
            holes = depth == 0
            np.testing.assert_array_equal(holes, source[img_y, img_x] == 0)
            np.testing.assert_array_equal(dep_x[~holes], img_x[~holes])
            np.testing.assert_array_equal(dep_y[~holes], img_y[~holes])
        np.testing.assert_array_equal(sem_x, img_x)
        np.testing.assert_array_equal(sem_y, img_y)
        np.testing.assert_array_equal(pan_x, img_x)
        np.testing.assert_array_equal(pan_y, img_y)


def _labels_and_depth_through(transforms, height=ALIGN_H, width=ALIGN_W):
    ys, xs = np.mgrid[0:height, 0:width]
    label = (xs + width * ys).astype(np.uint8)
    source = _align_depth_source(height, width)
    out_label = transforms.apply_segmentation(label)
    out_depth = transform_depth(transforms, source)
    return source, out_label, out_depth


@pytest.mark.parametrize(
    "transforms",
    [
        T.TransformList([T.ResizeTransform(10, 16, 4, 8, Image.NEAREST)]),
        T.TransformList([T.ResizeTransform(10, 16, 5, 8)]),  # bilinear image interp, nearest labels
        T.TransformList([T.ResizeTransform(10, 16, 7, 11)]),
        T.TransformList([T.ResizeTransform(10, 16, 23, 37)]),
        T.TransformList([T.ResizeTransform(10, 16, 31, 9)]),  # up in one axis, down in the other
        T.TransformList([T.CropTransform(3, 2, 9, 6), T.HFlipTransform(9), T.VFlipTransform(6)]),
        T.TransformList([T.ResizeTransform(10, 16, 21, 34), T.CropTransform(5, 4, 13, 11), T.HFlipTransform(13)]),
    ],
    ids=["down_nearest", "down_2x", "down_odd", "up", "mixed", "crop_flips", "resize_crop_flip"],
)
def test_transform_depth_matches_label_sampling(transforms):
    source, label, depth = _labels_and_depth_through(transforms)
    assert depth.dtype == np.float32 and depth.shape == label.shape
    assert depth.flags.c_contiguous and depth.flags.writeable  # torch.from_numpy needs both
    np.testing.assert_array_equal(depth, source[label // ALIGN_W, label % ALIGN_W])


def test_transform_depth_is_bit_exact_on_resize():
    # values whose float32 bits would not survive any arithmetic (tiny, huge, odd mantissas)
    values = np.array([0.0, 1e-3, 0.1, 655.35, 3.4e38, 1.17549435e-38, 1e-45, 80.000008], np.float32)
    depth = np.tile(values, (2, 1))  # 2 x 8
    out = transform_depth(T.TransformList([T.ResizeTransform(2, 8, 4, 16, Image.NEAREST)]), depth)
    np.testing.assert_array_equal(out.view(np.uint32), np.repeat(np.repeat(depth, 2, 0), 2, 1).view(np.uint32))
    # and the input is left untouched
    np.testing.assert_array_equal(depth, np.tile(values, (2, 1)))


def test_transform_depth_pads_with_invalid_zero():
    from fvcore.transforms.transform import PadTransform

    depth = np.full((2, 3), 5.5, np.float32)
    pad = PadTransform(1, 0, 2, 1, orig_w=3, orig_h=2, pad_value=128, seg_pad_value=255)
    out = transform_depth(T.TransformList([pad]), depth)
    expected = np.zeros((3, 6), np.float32)
    expected[0:2, 1:4] = 5.5
    np.testing.assert_array_equal(out, expected)
