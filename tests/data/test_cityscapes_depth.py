import os

import numpy as np
import pytest
from detectron2.projects.panoptic_deeplab.target_generator import PanopticDeepLabTargetGenerator
from PIL import Image

from segdep_d2.data import DepthPanopticDatasetMapper, read_depth
from segdep_d2.data.datasets.cityscapes_depth import cityscapes_depth_metadata, load_cityscapes_panoptic_depth
from segdep_d2.data.synthetic import build_scene, render_frame


def _load(root, split):
    gt_dir = os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}")
    return load_cityscapes_panoptic_depth(
        os.path.join(root, "leftImg8bit", split), gt_dir, gt_dir + ".json", cityscapes_depth_metadata()
    )


def test_round_trip_generate_register_load_map(synthetic_cityscapes):
    root, summary = synthetic_cityscapes
    meta = cityscapes_depth_metadata()
    generator = PanopticDeepLabTargetGenerator(
        ignore_label=255, thing_ids=list(meta["thing_dataset_id_to_contiguous_id"].values()), sigma=3
    )
    mapper = DepthPanopticDatasetMapper(
        True, augmentations=[], image_format="RGB", depth_range=(1e-3, 80.0), panoptic_target_generator=generator
    )
    entries = {e["prefix"]: e for e in summary["frames"]}
    for split in ("train", "val"):
        records = _load(root, split)
        assert len(records) == 2
        for record in records:
            entry = entries[record["image_id"]]
            assert record["depth_file_name"] == entry["disparity"] and record["camera_file_name"] == entry["camera"]
            frame = render_frame(build_scene(entry["layout"], 0, profile="cityscapes"), entry["frame"], height=64, width=128)
            out = mapper(record)
            np.testing.assert_array_equal(out["image"].numpy().transpose(1, 2, 0), np.asarray(Image.open(record["file_name"])))
            # semantics from the panoptic PNG agree with labelTrainIds pixel for pixel
            np.testing.assert_array_equal(out["sem_seg"].numpy(), np.asarray(Image.open(entry["train_ids"])))
            # depth from disparity agrees with the generator's metres (1/256 px quantisation)
            depth = out["depth"].numpy()
            valid = depth > 0
            assert valid.mean() > 0.3
            assert np.all(depth[(frame.cityscapes_id == 23)] == 0)  # sky has no disparity
            close = valid & (frame.depth < 40)
            np.testing.assert_allclose(depth[close], frame.depth[close], rtol=0.01)


def test_missing_camera_file_is_named(synthetic_cityscapes, tmp_path):
    root, _ = synthetic_cityscapes
    record = dict(_load(root, "val")[0])
    record["camera_file_name"] = str(tmp_path / "gone_camera.json")
    with pytest.raises(FileNotFoundError, match=r"gone_camera\.json"):
        read_depth(record)
