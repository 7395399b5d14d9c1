import os
import shutil

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.projects.panoptic_deeplab.target_generator import PanopticDeepLabTargetGenerator
from PIL import Image

from segdep_d2.data import DepthPanopticDatasetMapper, read_depth, read_panoptic
from segdep_d2.data.datasets.vkitti2 import load_vkitti2, register_all_vkitti2, register_vkitti2
from segdep_d2.data.synthetic import render_frame, vkitti2_depth_png

THINGS = [11, 12, 13]  # Truck, Car, Van


def _mapper():
    generator = PanopticDeepLabTargetGenerator(ignore_label=255, thing_ids=THINGS, sigma=3)
    return DepthPanopticDatasetMapper(
        True, augmentations=[], image_format="RGB", depth_range=(1e-3, 80.0), panoptic_target_generator=generator
    )


def _frame_of(record):
    scene, variation, camera = record["sequence_id"].split("/")
    return render_frame(
        scene, record["frame_index"], height=record["height"], width=record["width"],
        variation=variation, camera=int(camera[-1]), seed=0,
    )


def test_round_trip_generate_register_load_map(synthetic_vkitti2):
    root, summary = synthetic_vkitti2
    register_vkitti2("test_vkitti2_round_trip", root, scenes=("Scene01", "Scene20"), variations=("clone", "fog"))
    records = DatasetCatalog.get("test_vkitti2_round_trip")
    assert len(records) == len(summary["frames"]) == 8
    mapper = _mapper()
    for record in records:
        assert record["depth_format"] == "vkitti2_cm" and record["label_format"] == "vkitti2"
        assert (record["height"], record["width"]) == (64, 208)
        K = np.array(record["intrinsics"])
        assert K[0, 0] == pytest.approx(725.0087 * 208 / 1242, rel=1e-4)
        frame = _frame_of(record)

        out = mapper(record)
        # image: exactly the JPEG on disk
        np.testing.assert_array_equal(out["image"].numpy().transpose(1, 2, 0), np.asarray(Image.open(record["file_name"])))
        # depth: the generator's metres through the centimetre PNG (sky saturates at 655.35 m)
        expected = vkitti2_depth_png(frame.depth).astype(np.float32) / np.float32(100)
        np.testing.assert_allclose(out["depth"].numpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(expected[expected < 600], frame.depth[expected < 600], atol=0.005)
        np.testing.assert_array_equal(out["depth_valid"].numpy(), expected < 80.0)
        # semantics: pixel for pixel the generator's classes (void -> ignore)
        np.testing.assert_array_equal(out["sem_seg"].numpy(), frame.category)
        # instances: every vehicle track is one panoptic segment with a center
        ids, segments = read_panoptic(record)
        thing_pixels = np.isin(frame.category, THINGS)
        np.testing.assert_array_equal(ids[thing_pixels] % 1000, frame.track_id[thing_pixels] + 1)
        tracks = {s["id"] % 1000 - 1 for s in segments if s["category_id"] in THINGS}
        assert tracks == set(np.unique(frame.track_id[thing_pixels]).tolist())
        assert len(out["center_points"]) == len(tracks)
        assert out["center_weights"].sum() > 0


def test_per_archive_layout_and_folder_case(synthetic_vkitti2, tmp_path):
    merged_root, _ = synthetic_vkitti2
    split_root = tmp_path / "vkitti2"
    kinds = {"rgb": "rgb", "depth": "depth", "classSegmentation": "classsegmentation", "instanceSegmentation": "instanceSegmentation"}
    for kind, folder in kinds.items():
        for scene in ("Scene01", "Scene20"):
            for variation in ("clone", "fog"):
                src = os.path.join(merged_root, scene, variation, "frames", kind)
                dst = split_root / f"vkitti_2.0.3_{kind}" / scene / variation / "frames" / folder  # case differs
                shutil.copytree(src, dst)
    for scene in ("Scene01", "Scene20"):
        for variation in ("clone", "fog"):
            text_dst = split_root / "vkitti_2.0.3_textgt" / scene / variation
            text_dst.mkdir(parents=True)
            for name in ("colors.txt", "intrinsic.txt", "bbox.txt", "info.txt", "pose.txt", "extrinsic.txt"):
                shutil.copy(os.path.join(merged_root, scene, variation, name), text_dst / name)
    merged = load_vkitti2(merged_root, ("Scene01", "Scene20"), ("clone", "fog"))
    split = load_vkitti2(str(split_root), ("Scene01", "Scene20"), ("clone", "fog"))
    assert len(split) == len(merged)
    for a, b in zip(merged, split):
        assert a["image_id"] == b["image_id"] and a["intrinsics"] == b["intrinsics"]
        assert "classsegmentation" in b["sem_seg_file_name"]
        np.testing.assert_array_equal(read_depth(a), read_depth(b))
        np.testing.assert_array_equal(read_panoptic(a)[0], read_panoptic(b)[0])


def test_builtin_split_holds_out_scene20(synthetic_vkitti2, tmp_path):
    root, _ = synthetic_vkitti2
    datasets_root = tmp_path / "datasets"
    datasets_root.mkdir()
    os.symlink(root, datasets_root / "vkitti2")
    names_before = set(DatasetCatalog.list())
    # register under a private copy of the names: re-register the builtin layout with a prefix
    import segdep_d2.data.datasets.vkitti2 as vk

    original, original_lidar = vk.register_vkitti2, vk.register_simulated_lidar
    try:
        vk.register_vkitti2 = lambda name, *a, **k: original("test_" + name, *a, **k)
        vk.register_simulated_lidar = lambda name, source, **k: original_lidar("test_" + name, "test_" + source, **k)
        register_all_vkitti2(str(datasets_root))
    finally:
        vk.register_vkitti2, vk.register_simulated_lidar = original, original_lidar
    added = set(DatasetCatalog.list()) - names_before
    assert {"test_vkitti2_train", "test_vkitti2_val", "test_vkitti2_clone_val", "test_vkitti2_lidar_val"} <= added
    lidar = DatasetCatalog.get("test_vkitti2_lidar_val")  # the val frames, with a simulated LiDAR input
    assert lidar and all(r["sparse_depth_simulation"] == "lidar64" and r["sequence_id"].startswith("Scene20")
                         for r in lidar)
    val = DatasetCatalog.get("test_vkitti2_val")
    assert {r["sequence_id"].split("/")[0] for r in val} == {"Scene20"}
    train = DatasetCatalog.get("test_vkitti2_clone_train")
    assert {r["sequence_id"] for r in train} == {"Scene01/clone/Camera_0"}
    meta = MetadataCatalog.get("test_vkitti2_val")
    assert meta.thing_dataset_id_to_contiguous_id == {12: 11, 13: 12, 14: 13}
    assert meta.depth_range == (1e-3, 80.0) and meta.label_divisor == 1000 and meta.ignore_label == 255


def test_empty_and_mistyped_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Virtual KITTI 2 root not found: .*vkitti_typo"):
        load_vkitti2(str(tmp_path / "vkitti_typo"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No Virtual KITTI 2 frames under .*empty"):
        load_vkitti2(str(tmp_path / "empty"))


def test_missing_depth_file_is_reported_by_name(synthetic_vkitti2, tmp_path):
    root, _ = synthetic_vkitti2
    copy = tmp_path / "vk"
    shutil.copytree(os.path.join(root, "Scene01"), copy / "Scene01")
    records = load_vkitti2(str(copy), ("Scene01",), ("clone",))
    os.remove(records[0]["depth_file_name"])
    with pytest.raises(FileNotFoundError, match=r"depth_00000\.png"):
        read_depth(records[0])
    # a frame whose depth vanished before loading is listed without depth (asymmetric), not dropped
    reloaded = load_vkitti2(str(copy), ("Scene01",), ("clone",))
    assert "depth_file_name" not in reloaded[0] and "depth_file_name" in reloaded[1]


def test_frame_step_spreads_frames_along_the_drive(tmp_path):
    from segdep_d2.data.synthetic import generate_vkitti2

    generate_vkitti2(str(tmp_path), scenes=("Scene02",), frames=2, frame_step=7, height=32, width=104)
    records = load_vkitti2(str(tmp_path), ("Scene02",), ("clone",))
    assert [r["frame_index"] for r in records] == [0, 7]
    assert all("intrinsics" in r and "depth_file_name" in r for r in records)
    with pytest.raises(ValueError, match="exceeds"):
        generate_vkitti2(str(tmp_path), scenes=("Scene02",), frames=200, frame_step=10)
