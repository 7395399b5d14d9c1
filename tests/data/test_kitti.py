"""KITTI depth benchmark, Eigen split and semantics: synthetic round trips, real frames read in place, errors."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from PIL import Image

from segdep_d2.data import read_depth
from segdep_d2.data.datasets import kitti as K
from segdep_d2.data.label_io import LabelFormatError, read_sem_seg
from segdep_d2.data.synthetic import kitti_intrinsics, render_frame
from segdep_d2.data.synthetic.constants import cityscapes_tables
from segdep_d2.evaluation import DepthEvaluator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VAL_DRIVE = "2011_09_26_drive_0002_sync"
# Cityscapes label id -> train id, written out by hand from the Cityscapes label table
HAND_TRAIN_ID = {4: 255, 7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _register_once(name, register, *args):
    if name not in DatasetCatalog.list():
        register(name, *args)
    return DatasetCatalog.get(name)


def _frame_of(record):
    drive = record["sequence_id"].split("/")[0]
    h, w = record["height"], record["width"]
    return render_frame(drive, record["frame_index"], height=h, width=w, intrinsics=kitti_intrinsics(h, w), seed=0)


# ------------------------------------------------------------------------------------------------
# synthetic round trips
# ------------------------------------------------------------------------------------------------


def test_depth_round_trip(synthetic_kitti):
    root, summary = synthetic_kitti
    for split in ("train", "val"):
        records = _register_once(f"test_kitti_depth_{split}", K.register_kitti_depth, root, split)
        # frame 0 of each drive has a raw image but no ground truth: not listed
        assert [r["frame_index"] for r in records] == [1, 2]
        for record in records:
            assert record["depth_format"] == "kitti_png256" and (record["height"], record["width"]) == (64, 212)
            assert record["file_name"].endswith(os.path.join("2011_09_26", record["sequence_id"].split("/")[0],
                                                             "image_02", "data", f"{record['frame_index']:010d}.png"))
            frame = _frame_of(record)
            np.testing.assert_array_equal(np.asarray(Image.open(record["file_name"])), frame.rgb)
            depth = read_depth(record)
            valid = depth > 0
            assert 0.08 < valid.mean() < 0.3  # KITTI-like sparsity
            assert np.abs(depth[valid] - frame.depth[valid]).max() <= 1 / 512 + 1e-6  # within 1/256 m
            assert not valid[: int(0.3 * depth.shape[0])].any()  # nothing above the LiDAR's field of view
            sparse = read_depth(dict(record, depth_file_name=record["sparse_depth_file_name"]))
            assert 0 < (sparse > 0).mean() < valid.mean() / 2
            assert np.abs(sparse[sparse > 0] - frame.depth[sparse > 0]).max() <= 1 / 512 + 1e-6
    meta = MetadataCatalog.get("test_kitti_depth_val")
    assert meta.depth_range == (1e-3, 80.0) and meta.evaluator_type == "depth" and len(meta.stuff_classes) == 19


def test_depth_val_lists_only_frames_with_raw_image(synthetic_kitti, tmp_path, caplog):
    root = str(tmp_path / "kitti")
    shutil.copytree(synthetic_kitti[0], root)
    os.remove(os.path.join(root, "2011_09_26", VAL_DRIVE, "image_02", "data", "0000000002.png"))
    records = K.load_kitti_depth(root, "val")
    assert [r["frame_index"] for r in records] == [1]
    assert "1 annotated frames skipped" in caplog.text
    os.remove(os.path.join(root, "2011_09_26", VAL_DRIVE, "image_02", "data", "0000000001.png"))
    with pytest.raises(FileNotFoundError, match="No KITTI depth frames for split 'val'"):
        K.load_kitti_depth(root, "val")


def test_semantics_round_trip_and_stock_mapper(synthetic_kitti):
    root, summary = synthetic_kitti
    records = _register_once("test_kitti_sem_seg", K.register_kitti_sem_seg, root)
    assert [r["image_id"] for r in records] == ["000000_10", "000001_10"]
    tables = cityscapes_tables()
    stock = DatasetMapper(is_train=True, augmentations=[], image_format="RGB")
    for record, written in zip(records, summary["semantics"]):
        frame = render_frame(written["layout"], 10, height=64, width=212, intrinsics=kitti_intrinsics(64, 212))
        expected = tables.id_to_train_id[frame.cityscapes_id]
        label_ids = np.asarray(Image.open(written["semantic"]))
        np.testing.assert_array_equal(label_ids, frame.cityscapes_id)  # the file holds label ids ...
        np.testing.assert_array_equal(read_sem_seg(record), expected)  # ... the record hands out train ids
        # detectron2's own DatasetMapper reads the registered file as it is: the same train ids
        np.testing.assert_array_equal(stock(dict(record))["sem_seg"].numpy(), expected)
        # the label-id decoder (the preparation's) gives the same
        np.testing.assert_array_equal(
            read_sem_seg({"sem_seg_file_name": written["semantic"], "label_format": "cityscapes_label_ids"}), expected)
        # instance PNG: labelId * 256 + instance, instances only on things
        instance = np.asarray(Image.open(written["instance"])).astype(np.int64)
        np.testing.assert_array_equal(instance // 256, label_ids)
        thing = tables.id_has_instances[label_ids]
        assert (instance[~thing] % 256 == 0).all() and (instance[thing & (frame.track_id >= 0)] % 256 > 0).all()
    meta = MetadataCatalog.get("test_kitti_sem_seg")
    assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
    assert meta.stuff_classes[0] == "road" and meta.stuff_classes[13] == "car" and len(meta.stuff_classes) == 19


def test_semantics_need_preparation(synthetic_kitti, tmp_path):
    root = str(tmp_path / "kitti")
    shutil.copytree(os.path.join(synthetic_kitti[0], "data_semantics"), os.path.join(root, "data_semantics"))
    shutil.rmtree(os.path.join(root, "data_semantics", "training", K.TRAIN_ID_DIRNAME))
    with pytest.raises(FileNotFoundError, match="Cityscapes label ids.*python datasets/prepare_kitti_semantics.py"):
        K.load_kitti_semantics(root)
    assert K.prepare_kitti_semantics(root) == 2
    assert K.prepare_kitti_semantics(root) == 0  # idempotent
    assert len(K.load_kitti_semantics(root)) == 2
    with pytest.raises(LabelFormatError, match="instance PNG"):
        instance_png = os.path.join(root, "data_semantics", "training", "instance", "000000_10.png")
        read_sem_seg({"sem_seg_file_name": instance_png, "label_format": "cityscapes_label_ids"})


def test_tool_output_read_through_builtin_names(tmp_path):
    """`make_synthetic_dataset.py --format kitti --out DIR/kitti`, then the builtin names with
    $DETECTRON2_DATASETS=DIR (a fresh process: builtin names are registered at import)."""
    out = tmp_path / "kitti"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), PYTHONWARNINGS="ignore")
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_synthetic_dataset.py"), "--format", "kitti",
                    "--out", str(out), "--frames", "2", "--semantic-frames", "1", "--height", "40",
                    "--width", "132"], check=True, env=env, capture_output=True, cwd=REPO)
    code = ("import segdep_d2\nfrom detectron2.data import DatasetCatalog\n"
            "print([len(DatasetCatalog.get(n)) for n in "
            "('kitti_depth_train', 'kitti_depth_val', 'kitti_depth_eigen_test', 'kitti_sem_seg_train')])")
    result = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True,
                            cwd=REPO)
    assert result.stdout.strip().splitlines()[-1] == "[1, 1, 2, 1]"


# ------------------------------------------------------------------------------------------------
# Eigen split
# ------------------------------------------------------------------------------------------------


def test_eigen_split_frames_with_and_without_ground_truth(synthetic_kitti):
    root, _ = synthetic_kitti
    records = _register_once("test_kitti_eigen", K.register_kitti_eigen, root)
    assert [r["frame_index"] for r in records] == [0, 1, 2]
    assert "depth_file_name" not in records[0] and "sparse_depth_file_name" not in records[0]
    assert all(r["depth_format"] == "kitti_png256" and "sparse_depth_file_name" in r for r in records[1:])
    assert records[1]["depth_file_name"].endswith(os.path.join(
        "data_depth_annotated", "val", VAL_DRIVE, "proj_depth", "groundtruth", "image_02", "0000000001.png"))
    meta = MetadataCatalog.get("test_kitti_eigen")
    assert meta.depth_range == (1e-3, 80.0) and meta.eval_crop == "garg"


@pytest.mark.parametrize(
    "lines",
    [
        # monodepth (Godard et al.): left and right images, .jpg names on png raw data
        [f"2011_09_26/{VAL_DRIVE}/image_02/data/{i:010d}.jpg 2011_09_26/{VAL_DRIVE}/image_03/data/{i:010d}.jpg"
         for i in (0, 1, 2)],
        # BTS eigen_test_files_with_gt.txt: image, ground truth or None, focal
        [f"2011_09_26/{VAL_DRIVE}/image_02/data/0000000000.png None 721.5377"]
        + [f"2011_09_26/{VAL_DRIVE}/image_02/data/{i:010d}.png {VAL_DRIVE}/proj_depth/groundtruth/image_02/"
           f"{i:010d}.png 721.5377" for i in (1, 2)],
        # monodepth2 splits/eigen/test_files.txt
        [f"2011_09_26/{VAL_DRIVE} {i} l" for i in (0, 1, 2)],
        # bare image paths, a comment and a blank line
        ["# eigen", ""] + [f"2011_09_26/{VAL_DRIVE}/image_02/data/{i:010d}.png" for i in (0, 1, 2)],
    ],
    ids=["monodepth", "bts", "monodepth2", "plain"],
)
def test_eigen_split_formats(synthetic_kitti, tmp_path, lines):
    root, _ = synthetic_kitti
    split_file = tmp_path / "split.txt"
    split_file.write_text("\n".join(lines) + "\n")
    assert [e[:4] for e in K.parse_eigen_split(str(split_file))] == [
        ("2011_09_26", VAL_DRIVE, "image_02", i) for i in (0, 1, 2)]
    records = K.load_kitti_eigen(root, str(split_file))
    assert [("depth_file_name" in r, r["file_name"].endswith(".png")) for r in records] == [
        (False, True), (True, True), (True, True)]


def test_eigen_split_errors(synthetic_kitti, tmp_path):
    root, _ = synthetic_kitti
    bad = tmp_path / "bad.txt"
    bad.write_text("this is not a KITTI frame\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: cannot read"):
        K.parse_eigen_split(str(bad))
    missing = tmp_path / "missing.txt"
    missing.write_text(f"2011_09_26/{VAL_DRIVE} 1 l\n2011_09_26/{VAL_DRIVE} 99 r\n")
    with pytest.raises(FileNotFoundError, match=r"1 of the 2 frames .* no raw image .*image_03/data/0000000099.png"):
        K.load_kitti_eigen(root, str(missing))
    with pytest.raises(FileNotFoundError, match="eigen_test_files.txt"):
        K.load_kitti_eigen(str(tmp_path))


def test_eigen_ground_truth_in_merged_annotation_tree(synthetic_kitti, tmp_path):
    """BTS's instructions move data_depth_annotated/{train,val}/* into data_depth_annotated/."""
    root = str(tmp_path / "kitti")
    shutil.copytree(synthetic_kitti[0], root)
    annotated = os.path.join(root, "data_depth_annotated")
    shutil.move(os.path.join(annotated, "val", VAL_DRIVE), os.path.join(annotated, VAL_DRIVE))
    records = K.load_kitti_eigen(root)
    assert ["depth_file_name" in r for r in records] == [False, True, True]
    assert records[1]["depth_file_name"].startswith(os.path.join(annotated, VAL_DRIVE, "proj_depth"))


# ------------------------------------------------------------------------------------------------
# missing folders
# ------------------------------------------------------------------------------------------------


def test_missing_folders_name_the_expected_path(tmp_path):
    root = str(tmp_path / "kitti")
    with pytest.raises(FileNotFoundError, match=r"data_depth_annotated[/\\]train"):
        K.load_kitti_depth(root, "train")
    with pytest.raises(FileNotFoundError, match=r"data_semantics[/\\]training[/\\]image_2"):
        K.load_kitti_semantics(root)
    os.makedirs(os.path.join(root, "data_depth_annotated", "val"))
    with pytest.raises(FileNotFoundError, match="No KITTI depth frames"):
        K.load_kitti_depth(root, "val")


def test_builtin_names_are_registered_lazily():
    import segdep_d2  # noqa: F401

    for name in ("kitti_depth_train", "kitti_depth_val", "kitti_depth_eigen_test", "kitti_sem_seg_train"):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).dataset_root.endswith("kitti")


# ------------------------------------------------------------------------------------------------
# evaluation: Garg crop and the 80 m cap through DepthEvaluator
# ------------------------------------------------------------------------------------------------


def test_depth_evaluator_crop_and_cap_on_registered_name(synthetic_kitti):
    root, _ = synthetic_kitti
    records = _register_once("test_kitti_eigen", K.register_kitti_eigen, root)
    h, w = records[0]["height"], records[0]["width"]
    inside = np.zeros((h, w), bool)  # the Garg crop written out by hand for 64 x 212
    inside[int(0.40810811 * h):int(0.99189189 * h), int(0.03594771 * w):int(0.96405229 * w)] = True
    assert inside.sum() == (63 - 26) * (204 - 7)

    outputs, expected_no_crop = [], []
    for record in records:
        pred = np.full((h, w), 10.0, np.float32)
        if "depth_file_name" in record:
            gt = read_depth(record)
            assert gt.max() > 80  # the synthetic LiDAR reaches beyond the cap
            pred = np.where(gt > 0, gt, 10.0).astype(np.float32)
            pred[~inside & (gt > 0)] *= 1.5  # wrong only outside the crop ...
            pred[inside & (gt > 80)] = 1.0  # ... and beyond 80 m, which is not scored
            valid = (gt > 1e-3) & (gt < 80.0)
            expected_no_crop.append(np.mean(np.abs(np.clip(pred[valid], 1e-3, 80) - gt[valid]) / gt[valid]))
        outputs.append({"depth": pred})

    def evaluate(crop):
        evaluator = DepthEvaluator("test_kitti_eigen", distributed=False, crop=crop)
        evaluator.reset()
        evaluator.process(records, outputs)
        return evaluator.evaluate()["depth"]

    garg = evaluate("garg")
    assert garg["num_images"] == 2  # frame 0 has no ground truth
    assert garg["AbsRel"] == pytest.approx(0.0, abs=1e-6) and garg["d1"] == pytest.approx(1.0)
    full = evaluate(None)
    assert full["AbsRel"] == pytest.approx(np.mean(expected_no_crop), rel=1e-5)
    assert 0.01 < full["AbsRel"] < 0.5


# ------------------------------------------------------------------------------------------------
# real frames, read in place (../shared/real_samples)
# ------------------------------------------------------------------------------------------------


def _link(source, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.symlink(source, target)


def test_real_kitti_depth_frame(real_samples, tmp_path):
    """KITTI raw 2011_09_26 drive 0001 frame 5 and its depth-benchmark files, linked (not copied) into the
    official layout."""
    src = os.path.join(real_samples, "kitti_depth", "torch_kitti", "tests", "test_data")
    if not os.path.isdir(src):
        pytest.skip("real KITTI depth sample absent")
    root = str(tmp_path / "kitti")
    drive = "2011_09_26_drive_0001_sync"
    proj = os.path.join(root, "data_depth_annotated", "train", drive, "proj_depth")
    _link(os.path.join(src, "depth_completion", "groundtruth_image_02.png"),
          os.path.join(proj, "groundtruth", "image_02", "0000000005.png"))
    _link(os.path.join(src, "depth_completion", "velodyne_raw_image_02.png"),
          os.path.join(proj, "velodyne_raw", "image_02", "0000000005.png"))
    _link(os.path.join(src, "raw", "sync_rect", "cam_02.png"),
          os.path.join(root, "2011_09_26", drive, "image_02", "data", "0000000005.png"))
    records = K.load_kitti_depth(root, "train")
    assert len(records) == 1
    record = records[0]
    assert (record["height"], record["width"], record["frame_index"]) == (375, 1242, 5)
    depth = read_depth(record)
    raw = np.asarray(Image.open(os.path.join(src, "depth_completion", "groundtruth_image_02.png")), dtype=np.int64)
    y, x = np.argwhere(raw > 0)[len(np.argwhere(raw > 0)) // 2]
    assert depth[y, x] == pytest.approx(raw[y, x] / 256.0)  # metres = v / 256, hand check at one pixel
    valid = depth > 0
    assert valid.mean() == pytest.approx(0.195, abs=0.005)  # SOURCES.md: 19.5 % valid
    assert 5.3 < depth[valid].min() < 5.4 and 84.8 < depth.max() < 85.0 and 13.5 < np.median(depth[valid]) < 14.1
    sparse = read_depth(dict(record, depth_file_name=record["sparse_depth_file_name"]))
    assert (sparse > 0).mean() == pytest.approx(0.041, abs=0.003)


def test_real_kitti_semantics_frame(real_samples, tmp_path):
    """data_semantics 000000_10 (image + semantic label ids) and a labels-only 000001_10, linked into the
    official layout; the prepared train ids are checked against the hand-written Cityscapes table."""
    labels_src = os.path.join(real_samples, "kitti_semantics", "Road-Detection-KITTI", "data_semantics", "training")
    image_src = os.path.join(real_samples, "kitti_semantics", "frame-interpolation", "python utils", "000000_10.png")
    if not (os.path.isdir(labels_src) and os.path.isfile(image_src)):
        pytest.skip("real KITTI semantics sample absent")
    root = str(tmp_path / "kitti")
    training = os.path.join(root, "data_semantics", "training")
    _link(image_src, os.path.join(training, "image_2", "000000_10.png"))
    for name in ("000000_10.png", "000001_10.png"):
        _link(os.path.join(labels_src, "semantic", name), os.path.join(training, "semantic", name))
    assert K.prepare_kitti_semantics(root) == 1  # 000001_10 has no image: not part of the dataset
    records = K.load_kitti_semantics(root)
    assert [(r["image_id"], r["height"], r["width"]) for r in records] == [("000000_10", 375, 1242)]
    label_ids = np.asarray(Image.open(os.path.join(labels_src, "semantic", "000000_10.png")))
    train_ids = read_sem_seg(records[0])
    present = set(np.unique(label_ids).tolist())
    assert present == {4, 7, 8, 11, 12, 13, 17, 20, 21, 23, 24, 26, 27, 28}
    for label_id in present:
        assert (train_ids[label_ids == label_id] == HAND_TRAIN_ID[label_id]).all(), label_id
    # a known pixel: the bottom centre of the image is road (label id 7 -> train id 0)
    assert label_ids[370, 621] == 7 and train_ids[370, 621] == 0
    # the instance PNG's class part agrees with the semantic labels
    instance = np.asarray(Image.open(os.path.join(labels_src, "instance", "000000_10.png"))).astype(np.int64)
    np.testing.assert_array_equal(instance // 256, label_ids)
