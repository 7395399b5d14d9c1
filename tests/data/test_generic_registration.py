import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from segdep_d2.data import read_depth, read_panoptic
from segdep_d2.data.datasets import register_depth_panoptic_dataset

CATEGORIES = [
    {"id": 7, "name": "road", "isthing": 0, "color": [128, 64, 128]},
    {"id": 26, "name": "car", "isthing": 1, "color": [0, 0, 142]},
]


def _write_sample(folder, stem, depth_value):
    (folder / "images").mkdir(exist_ok=True)
    (folder / "depth").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(folder / "images" / f"{stem}.png")
    np.save(folder / "depth" / f"{stem}.npy", np.full((4, 6), depth_value, np.float32))


def test_register_from_manifest(tmp_path):
    _write_sample(tmp_path, "a", 5.0)
    pan = np.zeros((4, 6, 3), np.uint8)
    pan[:2] = (7 * 1000 % 256, 7 * 1000 // 256, 0)  # road segment id 7000
    pan[2:, :3] = (26001 % 256, 26001 // 256, 0)  # a car, id 26001
    Image.fromarray(pan).save(tmp_path / "pan.png")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{
        "file_name": "images/a.png",
        "depth_file_name": "depth/a.npy",
        "depth_format": "npy_m",
        "pan_seg_file_name": "pan.png",
        "segments_info": [{"id": 7000, "category_id": 7, "iscrowd": 0}, {"id": 26001, "category_id": 26, "iscrowd": 0}],
    }]))
    register_depth_panoptic_dataset("test_generic_manifest", categories=CATEGORIES, manifest=str(manifest), depth_range=(0.1, 50))
    (record,) = DatasetCatalog.get("test_generic_manifest")
    assert record["file_name"] == str(tmp_path / "images" / "a.png")
    assert read_depth(record).mean() == 5.0
    ids, segments = read_panoptic(record)
    assert [s["category_id"] for s in segments] == [0, 1]  # dataset ids -> contiguous ids
    assert (ids == 26001).sum() == 6
    meta = MetadataCatalog.get("test_generic_manifest")
    assert meta.thing_dataset_id_to_contiguous_id == {26: 1}
    assert meta.depth_range == (0.1, 50) and meta.evaluator_type == "panoptic_depth"


def test_register_from_folders_is_asymmetric(tmp_path):
    _write_sample(tmp_path, "a", 3.0)
    _write_sample(tmp_path, "b", 4.0)
    (tmp_path / "depth" / "b.npy").unlink()  # b has no depth: listed without it
    register_depth_panoptic_dataset(
        "test_generic_folders", categories=CATEGORIES, image_root=str(tmp_path / "images"),
        depth_root=str(tmp_path / "depth"), depth_format="npy_m", depth_ext=".npy",
    )
    a, b = DatasetCatalog.get("test_generic_folders")
    assert read_depth(a).max() == 3.0
    assert "depth_file_name" not in b


def test_bad_manifest_and_empty_folder(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"file_name": "x.png", "depth_file_name": "x.png", "depth_format": "metres"}]))
    register_depth_panoptic_dataset("test_generic_bad", categories=CATEGORIES, manifest=str(manifest))
    with pytest.raises(ValueError, match=r"m\.json: entry 0 .*depth_format 'metres'"):
        DatasetCatalog.get("test_generic_bad")
    (tmp_path / "empty").mkdir()
    register_depth_panoptic_dataset(
        "test_generic_empty", categories=CATEGORIES, image_root=str(tmp_path / "empty"), depth_root=str(tmp_path)
    )
    with pytest.raises(FileNotFoundError, match=r"No images .* in .*empty"):
        DatasetCatalog.get("test_generic_empty")


def test_register_from_folders_with_defaults_reads_depth(tmp_path):
    _write_sample(tmp_path, "a", 2.5)  # depth/a.npy, float metres
    register_depth_panoptic_dataset(
        "test_generic_defaults", categories=CATEGORIES, image_root=str(tmp_path / "images"),
        depth_root=str(tmp_path / "depth"),
    )
    (record,) = DatasetCatalog.get("test_generic_defaults")
    assert record["depth_file_name"] == str(tmp_path / "depth" / "a.npy")
    assert record["depth_format"] == "npy_m"
    np.testing.assert_array_equal(read_depth(record), np.full((4, 6), 2.5, np.float32))


def test_folder_format_and_extension_infer_each_other(tmp_path):
    _write_sample(tmp_path, "a", 1.5)
    register_depth_panoptic_dataset(
        "test_generic_ext_only", categories=CATEGORIES, image_root=str(tmp_path / "images"),
        depth_root=str(tmp_path / "depth"), depth_ext=".npy",
    )
    (record,) = DatasetCatalog.get("test_generic_ext_only")
    assert record["depth_format"] == "npy_m" and read_depth(record).max() == 1.5

    png = tmp_path / "png_depth"
    png.mkdir()
    Image.fromarray(np.full((4, 6), 640, np.uint16)).save(png / "a.png")  # 640 / 256 = 2.5 m
    register_depth_panoptic_dataset(
        "test_generic_format_only", categories=CATEGORIES, image_root=str(tmp_path / "images"),
        depth_root=str(png), depth_format="kitti_png256",
    )
    (record,) = DatasetCatalog.get("test_generic_format_only")
    assert record["depth_file_name"] == str(png / "a.png")
    np.testing.assert_array_equal(read_depth(record), np.full((4, 6), 2.5, np.float32))


def test_mismatched_depth_format_and_extension_fail_clearly(tmp_path):
    kwargs = dict(categories=CATEGORIES, image_root=str(tmp_path), depth_root=str(tmp_path))
    with pytest.raises(ValueError, match=r"depth_format 'npy_m' .*\.npy.* depth_ext '\.png'"):
        register_depth_panoptic_dataset("test_generic_mismatch", depth_format="npy_m", depth_ext=".png", **kwargs)
    with pytest.raises(ValueError, match=r"depth_format 'nyu_mm' .*\.png.* depth_ext '\.npy'"):
        register_depth_panoptic_dataset("test_generic_mismatch2", depth_format="nyu_mm", depth_ext=".npy", **kwargs)
    with pytest.raises(ValueError, match=r"depth_ext '\.png' .*ambiguous.*pass depth_format="):
        register_depth_panoptic_dataset("test_generic_ambiguous", depth_ext=".png", **kwargs)
    with pytest.raises(ValueError, match=r"depth_format 'metres'; expected one of"):
        register_depth_panoptic_dataset("test_generic_unknown", depth_format="metres", **kwargs)
    assert "test_generic_mismatch" not in DatasetCatalog.list()
