"""The sparse depth input of depth completion through the shared mapper: ``transform_sparse_depth`` moves
points (never interpolates, never duplicates them; hand-computed positions) and the mapper delivers
``sparse_depth`` aligned with ``image``, ``depth`` and ``sem_seg`` under one augmentation draw.
"""
import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from fvcore.transforms.transform import PadTransform
from PIL import Image

from segdep_d2.data import DepthPanopticDatasetMapper
from segdep_d2.data.depth_io import DepthFormatError, write_depth
from segdep_d2.data.sparse_depth import sparse_depth_input
from segdep_d2.data.transforms import transform_depth, transform_sparse_depth

# ---------------------------------------------------------------------------------------------
# transform_sparse_depth: 5 points in a 4 x 6 (H x W) map, every position computed by hand from the
# pixel centre (c + 0.5, r + 0.5) moved by the transform and floored to its pixel.

POINTS = {(0, 0): 5.0, (1, 1): 3.0, (1, 3): 7.25, (3, 5): 2.5, (2, 4): 80.000008}  # (row, col): metres


def _sparse_4x6():
    sparse = np.zeros((4, 6), np.float32)
    for (r, c), v in POINTS.items():
        sparse[r, c] = v
    return sparse


def _expected(shape, placed):
    out = np.zeros(shape, np.float32)
    for (r, c), v in placed.items():
        out[r, c] = v
    return out


def _draw(augmentations, shape=(4, 6)):
    """The TransformList one draw of ``augmentations`` gives for an image of ``shape``."""
    return T.AugmentationList(augmentations)(T.AugInput(np.zeros(shape + (3,), np.uint8)))


def _assert_bit_equal(out, expected):
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert out.flags.c_contiguous and out.flags.writeable  # torch.from_numpy needs both
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))  # values bit-exact


def test_downscale_by_two_keeps_the_nearer_point_on_collisions():
    transforms = _draw([T.ResizeShortestEdge(2, 1000)])  # 4x6 -> 2x3, x and y halved: (r, c) -> (r//2, c//2)
    assert transforms.transforms[0].new_h == 2 and transforms.transforms[0].new_w == 3
    out = transform_sparse_depth(transforms, _sparse_4x6())
    # (0,0)=5.0 and (1,1)=3.0 both land on (0,0): 3.0 is nearer; (3,5)=2.5 and (2,4)=80.000008 on (1,2): 2.5
    _assert_bit_equal(out, _expected((2, 3), {(0, 0): 3.0, (0, 1): 7.25, (1, 2): 2.5}))


def test_odd_downscale():
    # 4x6 -> short edge 3: 3 x int(4.5 + 0.5) = 3x5; y * 3/4, x * 5/6
    # rows: 0.5*.75=.375->0, 1.5*.75=1.125->1, 2.5*.75=1.875->1, 3.5*.75=2.625->2
    # cols: .5*5/6=.42->0, 1.5*5/6=1.25->1, 3.5*5/6=2.92->2, 4.5*5/6=3.75->3, 5.5*5/6=4.58->4
    out = transform_sparse_depth(_draw([T.ResizeShortestEdge(3, 1000)]), _sparse_4x6())
    expected = {(0, 0): 5.0, (1, 1): 3.0, (1, 2): 7.25, (2, 4): 2.5, (1, 3): 80.000008}
    _assert_bit_equal(out, _expected((3, 5), expected))


def test_upscale_by_two_moves_each_point_once():
    # 4x6 -> 8x12: centre (c + .5) * 2 = 2c + 1 -> pixel (2r + 1, 2c + 1); 5 points stay 5
    out = transform_sparse_depth(_draw([T.ResizeShortestEdge(8, 1000)]), _sparse_4x6())
    expected = {(2 * r + 1, 2 * c + 1): v for (r, c), v in POINTS.items()}
    _assert_bit_equal(out, _expected((8, 12), expected))
    assert (out > 0).sum() == len(POINTS)
    # what a dense target's nearest-neighbour resampling would make of it: every point 4 times
    assert (transform_depth(_draw([T.ResizeShortestEdge(8, 1000)]), _sparse_4x6()) > 0).sum() == 4 * len(POINTS)


def test_non_integer_upscale():
    # 4x6 -> 6x9, factor 1.5: rows .75->0, 2.25->2, 3.75->3, 5.25->5; cols .75->0, 2.25->2, 5.25->5, 6.75->6, 8.25->8
    out = transform_sparse_depth(_draw([T.ResizeShortestEdge(6, 1000)]), _sparse_4x6())
    expected = {(0, 0): 5.0, (2, 2): 3.0, (2, 5): 7.25, (5, 8): 2.5, (3, 6): 80.000008}
    _assert_bit_equal(out, _expected((6, 9), expected))
    for short in (5, 7, 9, 13, 17):  # the count never grows, whatever the upscale
        assert (transform_sparse_depth(_draw([T.ResizeShortestEdge(short, 1000)]), _sparse_4x6()) > 0).sum() == 5


def test_crop_drops_points_that_leave_the_image():
    crop = T.CropTransform(1, 1, 4, 2)  # x0=1, y0=1, w=4, h=2: keeps rows 1-2, columns 1-4
    out = transform_sparse_depth(T.TransformList([crop]), _sparse_4x6())
    # (1,1) -> (0,0); (1,3) -> (0,2); (2,4) -> (1,3); (0,0) and (3,5) are outside
    _assert_bit_equal(out, _expected((2, 4), {(0, 0): 3.0, (0, 2): 7.25, (1, 3): 80.000008}))


def test_horizontal_flip_mirrors_columns():
    out = transform_sparse_depth(T.TransformList([T.HFlipTransform(6)]), _sparse_4x6())
    # centre c + .5 -> 6 - c - .5: pixel 5 - c
    expected = {(0, 5): 5.0, (1, 4): 3.0, (1, 2): 7.25, (3, 0): 2.5, (2, 1): 80.000008}
    _assert_bit_equal(out, _expected((4, 6), expected))
    np.testing.assert_array_equal(out, _sparse_4x6()[:, ::-1])


def test_crop_then_flip():
    transforms = T.TransformList([T.CropTransform(1, 1, 4, 2), T.HFlipTransform(4)])
    out = transform_sparse_depth(transforms, _sparse_4x6())
    # after the crop (0,0), (0,2), (1,3); the flip of width 4: column c -> 3 - c
    _assert_bit_equal(out, _expected((2, 4), {(0, 3): 3.0, (0, 1): 7.25, (1, 0): 80.000008}))


def test_pad_shifts_points_and_adds_none():
    pad = PadTransform(2, 1, 0, 1, orig_w=6, orig_h=4, pad_value=128, seg_pad_value=255)  # 4x6 -> 6x8
    out = transform_sparse_depth(T.TransformList([pad]), _sparse_4x6())
    _assert_bit_equal(out, _expected((6, 8), {(r + 1, c + 2): v for (r, c), v in POINTS.items()}))


def test_empty_map_and_explicit_output_shape():
    out = transform_sparse_depth(_draw([T.ResizeShortestEdge(8, 1000)]), np.zeros((4, 6), np.float32))
    assert out.shape == (8, 12) and not out.any()
    out = transform_sparse_depth(T.HFlipTransform(6), _sparse_4x6(), output_shape=(4, 6))  # a bare Transform
    np.testing.assert_array_equal(out, _sparse_4x6()[:, ::-1])
    with pytest.raises(ValueError, match="H x W"):
        transform_sparse_depth(T.HFlipTransform(6), np.zeros((4, 6, 1), np.float32))


def test_input_is_left_untouched():
    sparse = _sparse_4x6()
    transform_sparse_depth(_draw([T.ResizeShortestEdge(2, 1000)]), sparse)
    np.testing.assert_array_equal(sparse, _sparse_4x6())


# ---------------------------------------------------------------------------------------------
# The mapper. The image's R, G channels hold each pixel's source (x, y); the dense target is
# 1 + x / 4 + 4 y (exact in kitti_png256's 1/256 m steps) and the sparse input takes the same value
# at a scattered subset of pixels, so every delivered point can be checked against the image pixel
# and the dense target pixel it sits on.

H, W = 10, 16


def _dense_value(x, y):
    return (1.0 + 0.25 * np.asarray(x) + 4.0 * np.asarray(y)).astype(np.float32)


def _record(tmp_path, sparse_file=True):
    ys, xs = np.mgrid[0:H, 0:W]
    Image.fromarray(np.stack([xs, ys, np.full_like(xs, 7)], -1).astype(np.uint8)).save(tmp_path / "img.png")
    dense = _dense_value(xs, ys)
    dense[::3, ::4] = 0.0  # holes of the dense target
    np.save(tmp_path / "depth.npy", dense)
    Image.fromarray(((xs // 4) % 3).astype(np.uint8)).save(tmp_path / "sem.png")
    record = {
        "file_name": str(tmp_path / "img.png"),
        "depth_file_name": str(tmp_path / "depth.npy"),
        "depth_format": "npy_m",
        "sem_seg_file_name": str(tmp_path / "sem.png"),
        "height": H,
        "width": W,
    }
    if sparse_file:
        sparse = np.zeros((H, W), np.float32)
        rows, cols = (ys * 7 + xs * 3) % 5 == 0, ~((ys == 0) & (xs == 0))  # 1 pixel in 5, scattered
        mask = rows & cols & (dense > 0)
        sparse[mask] = dense[mask]
        write_depth(str(tmp_path / "velo.png"), sparse, "kitti_png256")
        record.update(sparse_depth_file_name=str(tmp_path / "velo.png"), sparse_depth_format="kitti_png256")
    return record


def _mapper(augmentations, is_train=True, sparse_depth=True, samples=0):
    return DepthPanopticDatasetMapper(
        is_train, augmentations=augmentations, image_format="RGB", depth_range=(1e-3, 1e5),
        sparse_depth=sparse_depth, sparse_depth_samples=samples,
    )


def _check_alignment(out):
    image = out["image"].numpy().astype(np.int64)
    img_x, img_y = image[0], image[1]
    sparse, depth = out["sparse_depth"], out["depth"]
    assert sparse.dtype == torch.float32 and sparse.shape == depth.shape == img_x.shape
    sparse, depth = sparse.numpy(), depth.numpy()
    points = sparse > 0
    assert points.any()
    # each point is the value of the source pixel the image pixel under it shows ...
    np.testing.assert_array_equal(sparse[points], _dense_value(img_x[points], img_y[points]))
    # ... and the dense target there has that very value (and is valid)
    np.testing.assert_array_equal(depth[points], sparse[points])
    assert out["depth_valid"].numpy()[points].all()
    np.testing.assert_array_equal(out["sem_seg"].numpy(), (img_x // 4) % 3)
    return img_x, img_y, sparse


def test_mapper_delivers_sparse_depth_aligned_under_crop_and_flip(tmp_path):
    record = _record(tmp_path)
    source = sparse_depth_input(record)
    mapper = _mapper([T.RandomCrop("absolute", (6, 9)), T.RandomFlip(prob=1.0)])
    for seed in range(6):
        np.random.seed(seed)
        out = mapper(record)
        img_x, img_y, sparse = _check_alignment(out)
        assert sparse.shape == (6, 9)
        assert (np.diff(img_x, axis=1) < 0).all()  # flipped
        # exactly the points of the crop window, none lost, none invented
        x0, y0 = img_x.min(), img_y.min()
        assert (sparse > 0).sum() == (source[y0 : y0 + 6, x0 : x0 + 9] > 0).sum()


def test_mapper_upscale_crop_flip_keeps_points_and_their_values(tmp_path):
    record = _record(tmp_path)
    source = sparse_depth_input(record)
    augs = [T.ResizeShortestEdge(20, 1000, interp=Image.NEAREST), T.RandomCrop("absolute", (12, 18)), T.RandomFlip(prob=1.0)]
    mapper = _mapper(augs)
    for seed in range(4):
        np.random.seed(seed)
        out = mapper(record)
        img_x, img_y, sparse = _check_alignment(out)  # 2x: a point at c goes to 2c + 1, the pixel showing c
        assert sparse.shape == (12, 18)
        # no point multiplied: each value appears once, at most as many as the source has
        values = sparse[sparse > 0]
        assert len(np.unique(values)) == len(values) <= (source > 0).sum()


def test_mapper_at_test_time_delivers_sparse_depth_at_the_image_size(tmp_path):
    record = _record(tmp_path)
    out = _mapper([T.ResizeShortestEdge(20, 1000)], is_train=False)(record)
    assert out["image"].shape == (3, 20, 32) and out["sparse_depth"].shape == (20, 32)
    assert "depth" not in out  # evaluators read the dense ground truth themselves
    source = sparse_depth_input(record)
    expected = np.zeros((20, 32), np.float32)
    rows, cols = np.nonzero(source)
    expected[2 * rows + 1, 2 * cols + 1] = source[rows, cols]
    np.testing.assert_array_equal(out["sparse_depth"].numpy(), expected)


def test_mapper_without_the_flag_is_unchanged(tmp_path):
    record = _record(tmp_path)
    augs = [T.RandomCrop("absolute", (6, 9)), T.RandomFlip(prob=1.0)]
    np.random.seed(3)
    plain = DepthPanopticDatasetMapper(True, augmentations=augs, image_format="RGB", depth_range=(1e-3, 1e5))(record)
    np.random.seed(3)
    off = _mapper(augs, sparse_depth=False, samples=20)(record)
    assert "sparse_depth" not in plain and "sparse_depth" not in off
    assert plain.keys() == off.keys()
    for key in ("image", "depth", "depth_valid", "sem_seg"):
        assert torch.equal(plain[key], off[key])
    assert "sparse_depth" not in _mapper([], is_train=False, sparse_depth=False)(record)


def test_num_samples_fixed_in_evaluation_fresh_in_training(tmp_path):
    record = _record(tmp_path, sparse_file=False)
    dense = np.load(record["depth_file_name"])
    n = 20
    evaluation = _mapper([], is_train=False, samples=n)
    first, again = evaluation(record)["sparse_depth"], evaluation(dict(record))["sparse_depth"]
    assert torch.equal(first, again) and int((first > 0).sum()) == n
    np.testing.assert_array_equal(first.numpy(), sparse_depth_input(record, n))  # the protocol's fixed points
    np.testing.assert_array_equal(first.numpy()[first.numpy() > 0], dense[first.numpy() > 0])

    training = _mapper([], is_train=True, samples=n)
    draws = [training(record) for _ in range(3)]
    masks = [d["sparse_depth"].numpy() > 0 for d in draws]
    assert all(m.sum() == n for m in masks)
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
    for d, m in zip(draws, masks):
        np.testing.assert_array_equal(d["sparse_depth"].numpy()[m], d["depth"].numpy()[m])  # sampled from the GT
    # reproducible under NumPy's global seed (what detectron2 seeds per worker)
    np.random.seed(11)
    a = training(record)["sparse_depth"]
    np.random.seed(11)
    assert torch.equal(a, training(record)["sparse_depth"])


def test_num_samples_training_draw_is_aligned_under_crop_and_flip(tmp_path):
    record = _record(tmp_path, sparse_file=False)
    mapper = _mapper([T.RandomCrop("absolute", (6, 9)), T.RandomFlip(prob=1.0)], samples=40)
    for seed in range(4):
        np.random.seed(seed)
        out = mapper(record)
        _check_alignment(out)
        assert (out["sparse_depth"] > 0).sum() <= 40  # drawn at the original size, then cropped


def test_num_samples_takes_the_file_when_zero_and_samples_when_positive(tmp_path):
    record = _record(tmp_path)  # has both a sparse file and a dense target
    from_file = _mapper([], is_train=False)(record)["sparse_depth"].numpy()
    np.testing.assert_array_equal(from_file, sparse_depth_input(record))
    sampled = _mapper([], is_train=False, samples=5)(record)["sparse_depth"].numpy()
    assert (sampled > 0).sum() == 5


def test_reader_errors_propagate_with_the_file_name(tmp_path):
    record = _record(tmp_path)
    mapper = _mapper([])
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "velo8.png")  # 8-bit
    with pytest.raises(DepthFormatError, match="velo8.png"):
        mapper(dict(record, sparse_depth_file_name=str(tmp_path / "velo8.png")))
    write_depth(str(tmp_path / "small.png"), np.ones((H - 1, W), np.float32), "kitti_png256")  # wrong size
    with pytest.raises(DepthFormatError, match="small.png"):
        mapper(dict(record, sparse_depth_file_name=str(tmp_path / "small.png")))
    bad = np.ones((H, W), np.float32)
    bad[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DepthFormatError, match="nan.npy"):
        mapper(dict(record, sparse_depth_file_name=str(tmp_path / "nan.npy"), sparse_depth_format="npy_m"))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        mapper(dict(record, sparse_depth_file_name=str(tmp_path / "missing.png")))
    with pytest.raises(DepthFormatError, match="small.png"):  # at test time too
        _mapper([], is_train=False)(dict(record, sparse_depth_file_name=str(tmp_path / "small.png")))


def test_a_record_without_sparse_input_raises_a_clear_key_error(tmp_path):
    record = _record(tmp_path, sparse_file=False)
    for is_train in (True, False):
        with pytest.raises(KeyError, match="NUM_SAMPLES"):
            _mapper([], is_train=is_train)(record)
    no_depth = {k: v for k, v in record.items() if not k.startswith("depth")}
    for is_train in (True, False):
        with pytest.raises(KeyError, match="depth_file_name"):
            _mapper([], is_train=is_train, samples=10)(no_depth)


def test_negative_num_samples_is_rejected():
    with pytest.raises(ValueError, match="NUM_SAMPLES"):
        _mapper([], samples=-1)


# ---------------------------------------------------------------------------------------------
# from_config: the flag comes from the meta-arch's reads_sparse_depth(cfg), the count from
# INPUT.SPARSE_DEPTH.NUM_SAMPLES (0 for a config that does not declare it).

_TEST_ARCH = "_SparseDepthMapperTestArch"


def _cfg(tmp_path, arch, num_samples=None):
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog

    from segdep_d2 import add_segdep_config

    name = "_sparse_depth_mapper_test"
    meta = MetadataCatalog.get(name)
    if not hasattr(meta, "ignore_label"):
        meta.set(ignore_label=255, thing_dataset_id_to_contiguous_id={}, depth_range=(1e-3, 1e5))
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.MIN_SIZE_TEST = H
    cfg.INPUT.FORMAT = "RGB"
    if num_samples is not None:
        cfg.INPUT.SPARSE_DEPTH.NUM_SAMPLES = num_samples
    return cfg


def _register_test_arch():
    from detectron2.modeling import META_ARCH_REGISTRY

    if _TEST_ARCH not in META_ARCH_REGISTRY:

        class _SparseDepthMapperTestArch(torch.nn.Module):
            @classmethod
            def reads_sparse_depth(cls, cfg):
                return True

        META_ARCH_REGISTRY.register(_SparseDepthMapperTestArch)


def test_from_config_follows_reads_sparse_depth(tmp_path):
    _register_test_arch()
    record = _record(tmp_path)
    mapper = DepthPanopticDatasetMapper(_cfg(tmp_path, _TEST_ARCH), is_train=True)
    assert mapper.sparse_depth and mapper.sparse_depth_samples == 0
    out = mapper(record)  # MIN_SIZE_TRAIN = H: no resize, only the random flip
    _check_alignment(out)
    assert int((out["sparse_depth"] > 0).sum()) == int((sparse_depth_input(record) > 0).sum())

    sampled = DepthPanopticDatasetMapper(_cfg(tmp_path, _TEST_ARCH, num_samples=7), is_train=False)
    assert sampled.sparse_depth and sampled.sparse_depth_samples == 7
    assert int((sampled(record)["sparse_depth"] > 0).sum()) == 7

    plain = DepthPanopticDatasetMapper(_cfg(tmp_path, "PanopticDepthLab", num_samples=7), is_train=True)
    assert not plain.sparse_depth and "sparse_depth" not in plain(record)


def test_depth_completion_reads_sparse_depth_and_its_label_input(tmp_path):
    import segdep_d2.modeling  # noqa: F401  (registers the meta-archs)

    mapper = DepthPanopticDatasetMapper(_cfg(tmp_path, "DepthCompletion"), is_train=True)
    assert mapper.sparse_depth and not mapper.semantic_input
    cfg = _cfg(tmp_path, "DepthCompletion")
    cfg.MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT = "labels"
    test_mapper = DepthPanopticDatasetMapper(cfg, is_train=False)
    assert test_mapper.semantic_input  # the label map is an input: delivered at test time too
