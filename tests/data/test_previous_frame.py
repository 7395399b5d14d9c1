"""The previous frame for SegDep's temporal training: VKITTI2 records name it (``prev_file_name``,
``prev_flow_file_name``), :func:`transform_flow` moves a flow field with the image's transforms (pixels as
the labels, vectors scaled / negated by hand-computed rules) and the mapper delivers ``prev_image``,
``prev_flow`` and ``prev_flow_valid``; a tiny temporal SegDep trains one step from its output.
"""
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from fvcore.transforms.transform import PadTransform
from PIL import Image

from segdep_d2.data import DepthPanopticDatasetMapper
from segdep_d2.data.datasets.vkitti2 import load_vkitti2, register_vkitti2
from segdep_d2.data.flow_io import read_vkitti2_flow, write_vkitti2_flow
from segdep_d2.data.transforms import transform_flow

SCENES, VARIATIONS = ("Scene01", "Scene20"), ("clone", "fog")
from segdep_testing import SEGDEP_CPU_CONFIG as CPU_CONFIG  # noqa: E402
from segdep_testing import TINY_OPEN_CLIP as TINY_CLIP  # noqa: E402
from segdep_testing import TINY_SEGDEP_OPTS as TINY  # noqa: E402
from segdep_testing import segdep_cfg, tiny_segdep_model as _model  # noqa: E402


# ---- transform_flow: hand-computed fields ----
def _field_4x4():
    """x[r, c] = 4 r + c + 1 (1..16), y = -2 x; pixel (0, 3) invalid (and 0, as the reader gives it)."""
    x = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    flow = np.stack([x, -2 * x], axis=-1)
    valid = np.ones((4, 4), bool)
    valid[0, 3] = False
    flow[0, 3] = 0.0
    return flow, valid


def test_hflip_mirrors_pixels_and_negates_x():
    flow = np.zeros((2, 3, 2), np.float32)
    flow[..., 0] = [[1, 2, 3], [4, 5, 6]]
    flow[..., 1] = [[10, 20, 30], [40, 50, 60]]
    valid = np.ones((2, 3), bool)
    valid[0, 2] = False
    flow[0, 2] = 0.0
    out, ok = transform_flow(T.TransformList([T.HFlipTransform(3)]), flow, valid)
    np.testing.assert_array_equal(out[..., 0], [[0, -2, -1], [-6, -5, -4]])
    np.testing.assert_array_equal(out[..., 1], [[0, 20, 10], [60, 50, 40]])
    np.testing.assert_array_equal(ok, [[False, True, True], [True, True, True]])
    assert out.dtype == np.float32 and ok.dtype == bool


def test_vflip_negates_y_only():
    flow, valid = _field_4x4()
    out, ok = transform_flow(T.TransformList([T.VFlipTransform(4)]), flow, valid)
    np.testing.assert_array_equal(out[..., 0], flow[::-1, :, 0])
    np.testing.assert_array_equal(out[..., 1], -flow[::-1, :, 1])
    np.testing.assert_array_equal(ok, valid[::-1])


def test_half_resize_halves_vectors_on_exact_pixels():
    flow, valid = _field_4x4()
    # nearest neighbour on pixel centres (the labels' path): output (i, j) <- source (2i + 1, 2j + 1)
    out, ok = transform_flow(T.TransformList([T.ResizeTransform(4, 4, 2, 2)]), flow, valid)
    np.testing.assert_array_equal(out[..., 0], [[3.0, 4.0], [7.0, 8.0]])  # 6, 8, 14, 16 halved
    np.testing.assert_array_equal(out[..., 1], [[-6.0, -8.0], [-14.0, -16.0]])
    assert ok.all()


def test_resize_scales_each_axis_by_its_own_factor():
    flow, valid = _field_4x4()
    # 4x4 -> 2 rows x 8 columns: x doubles, y halves; rows 1, 3 and every column twice
    out, ok = transform_flow(T.TransformList([T.ResizeTransform(4, 4, 2, 8)]), flow, valid)
    expected_rows = flow[[1, 3]].repeat(2, axis=1)
    np.testing.assert_array_equal(out[..., 0], 2.0 * expected_rows[..., 0])
    np.testing.assert_array_equal(out[..., 1], 0.5 * expected_rows[..., 1])
    assert ok.all()


def test_crop_moves_pixels_and_keeps_values():
    flow, valid = _field_4x4()
    out, ok = transform_flow(T.TransformList([T.CropTransform(1, 0, 3, 2)]), flow, valid)  # x0, y0, w, h
    np.testing.assert_array_equal(out[..., 0], [[2, 3, 0], [6, 7, 8]])
    np.testing.assert_array_equal(out[..., 1], [[-4, -6, 0], [-12, -14, -16]])
    np.testing.assert_array_equal(ok, [[True, True, False], [True, True, True]])


def test_padding_is_invalid_flow():
    flow = np.full((2, 2, 2), 3.5, np.float32)
    pad = PadTransform(1, 0, 1, 1, orig_w=2, orig_h=2, pad_value=128, seg_pad_value=255)
    out, ok = transform_flow(T.TransformList([pad]), flow)  # validity defaults to "finite"
    expected_ok = np.zeros((3, 4), bool)
    expected_ok[:2, 1:3] = True
    np.testing.assert_array_equal(ok, expected_ok)
    np.testing.assert_array_equal(out[..., 0], np.where(expected_ok, 3.5, 0.0))


def test_resize_crop_flip_follow_the_labels_pixels():
    """Any composition: each output pixel holds the flow of the source pixel the labels sample there,
    its x scaled by new_w / w and negated (one hflip), its y scaled by new_h / h."""
    h, w = 10, 16
    ys, xs = np.mgrid[0:h, 0:w]
    flow = np.stack([0.25 + xs + 0.5 * ys, -1.5 * xs + 3.0 * ys], axis=-1).astype(np.float32)
    transforms = T.TransformList([T.ResizeTransform(h, w, 21, 34), T.CropTransform(5, 4, 13, 11), T.HFlipTransform(13)])
    label = transforms.apply_segmentation((xs + w * ys).astype(np.uint8))
    out, ok = transform_flow(transforms, flow)
    src = flow[label // w, label % w]
    np.testing.assert_allclose(out[..., 0], -src[..., 0] * np.float32(34 / 16), rtol=1e-6)
    np.testing.assert_allclose(out[..., 1], src[..., 1] * np.float32(21 / 10), rtol=1e-6)
    assert ok.all()


def test_unsupported_geometry_and_bad_shapes_are_rejected():
    flow = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(NotImplementedError, match="RotationTransform"):
        transform_flow(T.TransformList([T.RotationTransform(4, 4, 30)]), flow)
    with pytest.raises(ValueError, match="H x W x 2"):
        transform_flow(T.TransformList([]), np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="validity"):
        transform_flow(T.TransformList([]), flow, np.ones((4, 3), bool))


# ---- VKITTI2 records ----
def _records(root):
    return {(r["sequence_id"], r["frame_index"]): r for r in load_vkitti2(root, SCENES, VARIATIONS)}


def test_records_name_their_previous_frame_and_backward_flow(synthetic_vkitti2):
    root, _ = synthetic_vkitti2
    records = _records(root)
    for (sequence, index), record in records.items():
        if index == 0:
            assert "prev_file_name" not in record and "prev_flow_file_name" not in record
            continue
        assert record["prev_file_name"] == records[(sequence, index - 1)]["file_name"]
        scene, variation, camera = sequence.split("/")
        assert record["prev_flow_file_name"] == os.path.join(
            root, scene, variation, "frames", "backwardFlow", camera, f"backwardFlow_{index:05d}.png")
        assert os.path.isfile(record["prev_flow_file_name"])


def test_a_gap_or_a_missing_flow_folder_drops_the_keys(synthetic_vkitti2, tmp_path):
    root, _ = synthetic_vkitti2
    copy = tmp_path / "vk"
    shutil.copytree(os.path.join(root, "Scene01"), copy / "Scene01")
    shutil.rmtree(copy / "Scene01" / "fog" / "frames" / "backwardFlow")
    os.remove(copy / "Scene01" / "clone" / "frames" / "rgb" / "Camera_0" / "rgb_00000.jpg")
    records = {(r["sequence_id"], r["frame_index"]): r for r in load_vkitti2(str(copy), ("Scene01",), VARIATIONS)}
    fog = records[("Scene01/fog/Camera_0", 1)]
    assert fog["prev_file_name"].endswith("rgb_00000.jpg") and "prev_flow_file_name" not in fog
    clone = records[("Scene01/clone/Camera_0", 1)]
    assert "prev_file_name" not in clone and "prev_flow_file_name" not in clone


def test_per_archive_layout_finds_the_backward_flow(synthetic_vkitti2, tmp_path):
    root, _ = synthetic_vkitti2
    split_root = tmp_path / "vkitti2"
    for kind, folder in (("rgb", "rgb"), ("backwardFlow", "backwardflow")):  # folder case differs
        src = os.path.join(root, "Scene01", "clone", "frames", kind)
        shutil.copytree(src, split_root / f"vkitti_2.0.3_{kind}" / "Scene01" / "clone" / "frames" / folder)
    record = [r for r in load_vkitti2(str(split_root), ("Scene01",), ("clone",)) if r["frame_index"] == 1][0]
    assert os.path.basename(record["prev_flow_file_name"]) == "backwardFlow_00001.png"
    assert "vkitti_2.0.3_backwardFlow" in record["prev_flow_file_name"]
    assert "vkitti_2.0.3_rgb" in record["prev_file_name"]


# ---- the mapper ----
def _mapper(augmentations, previous_frame=True, is_train=True):
    return DepthPanopticDatasetMapper(
        is_train, augmentations=augmentations, image_format="RGB", depth_range=(1e-3, 80.0),
        previous_frame=previous_frame,
    )


AUGMENTATIONS = [
    T.ResizeShortestEdge((32, 48, 80), 1000, "choice"),
    T.RandomCrop("absolute", (28, 90)),
    T.RandomFlip(prob=0.5),
    T.RandomFlip(prob=0.5, horizontal=False, vertical=True),
]


def test_prev_image_is_the_previous_frame_under_the_same_transforms(synthetic_vkitti2):
    root, _ = synthetic_vkitti2
    records = _records(root)
    record, previous = records[("Scene01/clone/Camera_0", 1)], records[("Scene01/clone/Camera_0", 0)]
    mapper, plain = _mapper(AUGMENTATIONS), _mapper(AUGMENTATIONS, previous_frame=False)
    for draw in range(6):
        np.random.seed(draw)
        out = mapper(record)
        np.random.seed(draw)  # the draw depends on the seed and the (shared) image size only
        expected = plain(previous)
        assert out["prev_image"].dtype == torch.uint8 and out["prev_image"].shape == out["image"].shape
        assert torch.equal(out["prev_image"], expected["image"])
        h, w = out["image"].shape[-2:]
        assert out["prev_flow"].dtype == torch.float32 and tuple(out["prev_flow"].shape) == (2, h, w)
        assert out["prev_flow_valid"].dtype == torch.bool and tuple(out["prev_flow_valid"].shape) == (h, w)
        assert not out["prev_flow"][:, ~out["prev_flow_valid"]].any()  # 0 where invalid
        # the current frame's own outputs do not change with previous_frame
        for key in ("image", "sem_seg", "depth", "depth_valid"):
            np.random.seed(draw)
            assert torch.equal(out[key], plain(record)[key]), key


def test_prev_flow_follows_flips_and_resizes(synthetic_vkitti2):
    root, _ = synthetic_vkitti2
    record = _records(root)[("Scene20/fog/Camera_0", 1)]
    flow, valid = read_vkitti2_flow(record["prev_flow_file_name"])  # (64, 208, 2)
    assert valid.any() and (~valid).any() and np.abs(flow[valid]).max() > 0.1  # a field worth testing

    out = _mapper([T.RandomFlip(prob=1.0)])(record)
    np.testing.assert_array_equal(out["prev_flow"][0].numpy(), -flow[:, ::-1, 0])
    np.testing.assert_array_equal(out["prev_flow"][1].numpy(), flow[:, ::-1, 1])
    np.testing.assert_array_equal(out["prev_flow_valid"].numpy(), valid[:, ::-1])

    out = _mapper([T.ResizeShortestEdge(32, 1000)])(record)  # 64x208 -> 32x104: exactly half
    np.testing.assert_array_equal(out["prev_flow"].numpy(), 0.5 * flow[1::2, 1::2].transpose(2, 0, 1))
    np.testing.assert_array_equal(out["prev_flow_valid"].numpy(), valid[1::2, 1::2])


def test_first_frames_off_switch_and_test_mode_give_no_previous_frame(synthetic_vkitti2):
    root, _ = synthetic_vkitti2
    records = _records(root)
    keys = {"prev_image", "prev_flow", "prev_flow_valid"}
    first = _mapper([])(records[("Scene01/clone/Camera_0", 0)])
    assert not keys & set(first) and "image" in first
    second = records[("Scene01/clone/Camera_0", 1)]
    assert not keys & set(_mapper([], previous_frame=False)(second))
    assert not keys & set(_mapper([], is_train=False)(second))
    no_flow = {k: v for k, v in second.items() if k != "prev_flow_file_name"}
    out = _mapper([])(no_flow)
    assert "prev_image" in out and not {"prev_flow", "prev_flow_valid"} & set(out)


def _cfg(*opts):
    return segdep_cfg(*TINY, *opts)


def test_from_config_turns_previous_frame_on_for_temporal_segdep_only():
    assert DepthPanopticDatasetMapper(_cfg("MODEL.SEGDEP.TEMPORAL", "True"), is_train=True).previous_frame
    assert not DepthPanopticDatasetMapper(_cfg(), is_train=True).previous_frame
    other = _cfg("MODEL.SEGDEP.TEMPORAL", "True", "MODEL.META_ARCHITECTURE", "PanopticDepthLab")
    assert not DepthPanopticDatasetMapper(other, is_train=True).previous_frame


# ---- errors name the files ----
def test_missing_unreadable_or_mis_sized_files_are_named(synthetic_vkitti2, tmp_path):
    root, _ = synthetic_vkitti2
    record = _records(root)[("Scene01/clone/Camera_0", 1)]
    mapper = _mapper([])

    missing = dict(record, prev_file_name=str(tmp_path / "rgb_gone.jpg"))
    with pytest.raises(FileNotFoundError, match=r"rgb_gone\.jpg.*rgb_00001\.jpg"):
        mapper(missing)

    (tmp_path / "rgb_broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"rgb_broken\.jpg"):
        mapper(dict(record, prev_file_name=str(tmp_path / "rgb_broken.jpg")))

    Image.open(record["prev_file_name"]).resize((104, 32)).save(tmp_path / "rgb_small.jpg")
    with pytest.raises(ValueError, match=r"rgb_small\.jpg.*104x32.*rgb_00001\.jpg.*208x64"):
        mapper(dict(record, prev_file_name=str(tmp_path / "rgb_small.jpg")))

    with pytest.raises(FileNotFoundError, match=r"backwardFlow_gone\.png"):
        mapper(dict(record, prev_flow_file_name=str(tmp_path / "backwardFlow_gone.png")))

    write_vkitti2_flow(str(tmp_path / "backwardFlow_small.png"), np.zeros((32, 104, 2), np.float32))
    with pytest.raises(ValueError, match=r"backwardFlow_small\.png.*rgb_00001\.jpg"):
        mapper(dict(record, prev_flow_file_name=str(tmp_path / "backwardFlow_small.png")))


# ---- one training step of a temporal SegDep from the mapper's output ----
def test_temporal_segdep_trains_one_step_from_the_mapper(synthetic_vkitti2, tiny_open_clip):
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    assert tiny_open_clip == TINY_CLIP
    root, _ = synthetic_vkitti2
    name = "test_previous_frame_vkitti2"
    if name not in DatasetCatalog.list():
        register_vkitti2(name, root, scenes=SCENES, variations=VARIATIONS)
    cfg = _cfg(
        "DATASETS.TRAIN", f"('{name}',)", "INPUT.MIN_SIZE_TRAIN", "(48,)",
        "MODEL.SEGDEP.TEMPORAL", "True", "MODEL.SEGDEP.TEMPORAL_CHANNELS", "16",
        "MODEL.SEGDEP.TEMPORAL_FLOW_LOSS_WEIGHT", "1.0",
    )
    mapper = DepthPanopticDatasetMapper(cfg, is_train=True)
    assert mapper.previous_frame
    records = [r for r in DatasetCatalog.get(name) if r["frame_index"] == 1][:2]
    np.random.seed(0)
    batch = [mapper(r) for r in records]
    assert all(x["prev_image"].shape == x["image"].shape == (3, 48, 156) for x in batch)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random-init CLIP warning
            model = build_model(cfg)
        model.train()
        with EventStorage():
            losses = model(batch)
        assert "loss_temporal_flow" in losses
        assert all(torch.isfinite(v) for v in losses.values()), losses
        assert float(losses["loss_temporal_flow"].detach()) > 0  # real flow against a near-zero prediction
        sum(losses.values()).backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.motion_head.parameters())
    finally:
        torch.set_num_threads(threads)
