"""Asymmetric views of fully labelled records (segdep_d2.data.datasets.asymmetric)."""
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from segdep_d2 import add_segdep_config
from segdep_d2.data import DepthPanopticDatasetMapper
from segdep_d2.data.datasets import keep_labels, record_tasks, register_asymmetric_split
from segdep_d2.data.datasets.vkitti2 import load_vkitti2, vkitti2_metadata

FULL = {
    "file_name": "rgb.jpg", "image_id": "a", "height": 4, "width": 6, "intrinsics": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    "sem_seg_file_name": "class.png", "label_format": "vkitti2", "colors_file_name": "colors.txt",
    "instance_file_name": "instance.png", "depth_file_name": "depth.png", "depth_format": "vkitti2_cm",
}
IMAGE_KEYS = {"file_name", "image_id", "height", "width", "intrinsics"}


def test_keep_labels_keeps_only_the_asked_task_and_leaves_the_input_alone():
    before = dict(FULL)
    (seg,) = keep_labels([FULL], ("sem_seg",))
    (depth,) = keep_labels([FULL], "depth")
    (both,) = keep_labels([FULL], ("sem_seg", "depth"))
    (none,) = keep_labels([FULL], ())
    assert set(seg) == IMAGE_KEYS | {"sem_seg_file_name", "label_format", "colors_file_name", "instance_file_name"}
    assert set(depth) == IMAGE_KEYS | {"depth_file_name", "depth_format"}
    assert both == FULL and both is not FULL
    assert set(none) == IMAGE_KEYS
    assert [record_tasks(r) for r in (FULL, seg, depth, none)] == [("sem_seg", "depth"), ("sem_seg",), ("depth",), ()]
    assert FULL == before

    panoptic = {"file_name": "x", "pan_seg_file_name": "p.png", "segments_info": [], "depth_file_name": "d.npy",
                "pseudo_labels": ["depth"]}
    assert record_tasks(panoptic) == ("sem_seg", "depth")
    (seg,) = keep_labels([panoptic], ["sem_seg"])
    assert seg == {"file_name": "x", "pan_seg_file_name": "p.png", "segments_info": [], "pseudo_labels": []}

    with pytest.raises(ValueError, match="unknown label task"):
        keep_labels([FULL], ("panoptic",))


def test_registered_split_feeds_the_mapper_one_target(synthetic_vkitti2):
    root, _ = synthetic_vkitti2
    records = load_vkitti2(root, ("Scene01",), ("clone",))
    assert all(record_tasks(r) == ("sem_seg", "depth") for r in records)
    seg_name = register_asymmetric_split("test_asym_seg", records, ("sem_seg",), vkitti2_metadata())
    depth_name = register_asymmetric_split("test_asym_depth", records, ("depth",), vkitti2_metadata())
    # registering again replaces (an experiment re-run in the same process)
    assert register_asymmetric_split("test_asym_depth", records, ("depth",), vkitti2_metadata()) == depth_name
    assert MetadataCatalog.get(seg_name).label_tasks == ("sem_seg",)
    assert MetadataCatalog.get(depth_name).stuff_classes == vkitti2_metadata()["stuff_classes"]

    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "HydraNet"
    cfg.DATASETS.TRAIN = (seg_name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    mapper = DepthPanopticDatasetMapper(cfg, is_train=True)
    seg = mapper(DatasetCatalog.get(seg_name)[0])
    depth = mapper(DatasetCatalog.get(depth_name)[0])
    assert "sem_seg" in seg and "depth" not in seg and "depth_valid" not in seg
    assert "depth" in depth and "sem_seg" not in depth
    assert seg["sem_seg"].shape == depth["depth"].shape == (64, 208)
    assert (seg["sem_seg"] != 255).any() and bool(depth["depth_valid"].any())
