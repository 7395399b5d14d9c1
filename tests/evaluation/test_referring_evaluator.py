import json
import math
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from segdep_d2.data.synthetic.encoding import save_png
from segdep_d2.evaluation import (
    ReferringEvaluator,
    mask_intersection_union,
    mask_iou,
    queries_as_text,
    referring_metrics,
    with_query_texts,
)

H, W = 4, 6


# ----------------------------------------------------------------------------------------------
# Pure metrics
# ----------------------------------------------------------------------------------------------
def test_mask_iou_and_counts():
    a = np.zeros((H, W), bool)
    a[0:2, 0:3] = True  # 6 px
    b = np.zeros((H, W), bool)
    b[0:2, 0:2] = True  # 4 px, inside a
    assert mask_intersection_union(a, b) == (4, 6)
    assert mask_iou(a, b) == pytest.approx(2 / 3)
    empty = np.zeros((H, W), bool)
    assert mask_iou(empty, empty) == 1.0  # both empty
    assert mask_iou(empty, b) == 0.0 and mask_iou(a, empty) == 0.0
    # float masks (and tensors) are binarised at > 0.5
    assert mask_intersection_union(torch.from_numpy(a * 0.9 + 0.1), b.astype(np.uint8)) == (4, 6)
    with pytest.raises(ValueError, match="differ in size"):
        mask_iou(a, b[:, :5])


def test_referring_metrics_by_hand():
    # IoUs 2/3, 1/2, 0, 1 (the last: both masks empty)
    results = referring_metrics([4, 4, 0, 0], [6, 8, 6, 0], distance_errors=[1.0, -3.0, math.nan, 0.5])
    assert results["mIoU"] == pytest.approx(100 * 13 / 24)
    assert results["oIoU"] == pytest.approx(100 * 8 / 20)
    assert results["P@0.5"] == pytest.approx(75.0)
    assert results["P@0.7"] == pytest.approx(25.0)
    assert results["P@0.9"] == pytest.approx(25.0)
    assert results["distance_error"] == pytest.approx(1.5)  # |1|, |-3|, 0.5; NaN left out
    assert results["distance_error_median"] == pytest.approx(1.0)
    assert results["num_without_depth"] == 1 and results["num_queries"] == 4
    # precision counts IoU >= k
    assert referring_metrics([1], [2])["P@0.5"] == 100.0 and referring_metrics([7], [10])["P@0.7"] == 100.0
    # given IoUs override I / U; every union zero -> oIoU 100
    assert referring_metrics([0, 0], [0, 0], ious=[1.0, 0.0])["mIoU"] == 50.0
    assert referring_metrics([0], [0])["oIoU"] == 100.0
    assert "distance_error" not in referring_metrics([1], [2])


def test_referring_metrics_empty_and_errors():
    empty = referring_metrics([], [], distance_errors=[])
    assert empty["num_queries"] == 0 and math.isnan(empty["mIoU"]) and math.isnan(empty["distance_error"])
    with pytest.raises(ValueError):
        referring_metrics([1, 2], [2])
    with pytest.raises(ValueError):
        referring_metrics([3], [2])
    with pytest.raises(ValueError):
        referring_metrics([1], [2], distance_errors=[1.0, 2.0])


def test_queries_as_text_and_with_query_texts():
    record = {"file_name": "a.jpg", "queries": [{"text": "the red car", "kind": "colour_type"}, {"text": "the van"}]}
    assert queries_as_text(record) == ["the red car", "the van"]
    assert queries_as_text({"queries": ["x", "y"]}) == ["x", "y"]
    assert queries_as_text({"file_name": "b.jpg"}) == []
    out = with_query_texts([record, {"file_name": "b.jpg"}])
    assert out[0]["queries"] == ["the red car", "the van"] and "queries" not in out[1]
    assert isinstance(record["queries"][0], dict)  # the input is not modified


# ----------------------------------------------------------------------------------------------
# Evaluator on hand-built VKITTI2 instancegt PNGs
# ----------------------------------------------------------------------------------------------
def _query(text, kind, instance_id, distance):
    return {"text": text, "kind": kind, "track_id": instance_id - 1, "instance_id": instance_id,
            "target_distance": distance}


@pytest.fixture
def dataset(tmp_path):
    inst_a = np.zeros((H, W), np.uint8)
    inst_a[0:2, 0:2] = 3  # 4 px
    inst_a[2:4, 2:6] = 5  # 8 px
    inst_b = np.zeros((H, W), np.uint8)
    inst_b[0:2, 3:6] = 7  # 6 px; instance 9 is not in the image
    paths = []
    for i, inst in enumerate((inst_a, inst_b, inst_b)):
        path = str(tmp_path / "frames" / "instanceSegmentation" / "Camera_0" / f"instancegt_{i:05d}.png")
        save_png(inst, path, mode="P")  # the synthetic generator's (and VKITTI2's) palette PNG of trackID + 1
        paths.append(path)
    records = [
        {"file_name": "a.jpg", "image_id": "a", "height": H, "width": W, "instance_file_name": paths[0],
         "label_format": "vkitti2",
         "queries": [_query("the black sedan", "colour_type", 3, 10.0),
                     _query("the van on the right", "spatial", 5, 20.0)]},
        {"file_name": "b.jpg", "image_id": "b", "height": H, "width": W, "instance_file_name": paths[1],
         "label_format": "vkitti2",
         "queries": [_query("the farthest car", "distance", 7, 30.0), _query("the silver car", "colour_type", 9, 4.5)]},
        {"file_name": "c.jpg", "image_id": "c", "height": H, "width": W, "instance_file_name": paths[2],
         "label_format": "vkitti2"},  # no queries: skipped
    ]
    name = f"segdep_referring_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    yield name, records
    DatasetCatalog.remove(name)


def _predictions():
    q0 = np.zeros((H, W), bool)
    q0[0:2, 0:3] = True  # I 4, U 6
    q1 = torch.full((H, W), 0.2)
    q1[2:4, 2:4] = 0.8  # I 4, U 8 (probabilities, > 0.5)
    return [
        {"referring": [
            {"mask": torch.from_numpy(q0), "score": 0.9, "depth_median": 11.0, "depth_mean": 11.5},
            {"mask": q1, "score": torch.tensor(0.7), "depth_median": torch.tensor(17.0), "depth_mean": 17.0},
        ]},
        {"referring": [
            {"mask": torch.zeros(H, W), "score": 0.1, "depth_median": float("nan"), "depth_mean": float("nan")},
            {"mask": np.zeros((H, W), bool), "score": 0.2, "depth_median": 5.0, "depth_mean": 5.0},
        ]},
        {},  # the record without queries: its output is never looked at
    ]


def test_evaluator_by_hand(dataset, tmp_path):
    name, records = dataset
    evaluator = ReferringEvaluator(name, distributed=True, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    inputs = with_query_texts(records)
    outputs = _predictions()
    evaluator.process(inputs[:2], outputs[:2])
    evaluator.process(inputs[2:], outputs[2:])
    results = evaluator.evaluate()["referring"]
    expected = {
        "mIoU": 100 * 13 / 24, "oIoU": 40.0, "P@0.5": 75.0, "P@0.7": 25.0, "P@0.9": 25.0,
        "distance_error": 1.5, "distance_error_median": 1.0, "num_without_depth": 1, "num_queries": 4,
        "num_images": 2,
        # colour_type: IoUs 2/3 and 1, I 4 / U 6, distance errors 1 and 0.5
        "mIoU-colour_type": 100 * 5 / 6, "oIoU-colour_type": 100 * 4 / 6, "P@0.5-colour_type": 100.0,
        "P@0.7-colour_type": 50.0, "distance_error-colour_type": 0.75, "num_queries-colour_type": 2,
        # spatial: IoU 1/2, distance error 3
        "mIoU-spatial": 50.0, "oIoU-spatial": 50.0, "P@0.5-spatial": 100.0, "P@0.7-spatial": 0.0,
        "distance_error-spatial": 3.0, "num_queries-spatial": 1,
        # distance: empty prediction of a 6-px target, no depth
        "mIoU-distance": 0.0, "oIoU-distance": 0.0, "P@0.5-distance": 0.0, "num_without_depth-distance": 1,
        "num_queries-distance": 1,
    }
    for key, value in expected.items():
        assert results[key] == pytest.approx(value), key
    assert math.isnan(results["distance_error-distance"])
    per_query = json.loads((tmp_path / "out" / "referring_per_query.json").read_text())
    assert [(q["image_id"], q["query_index"], q["intersection"], q["union"]) for q in per_query] == [
        ("a", 0, 4, 6), ("a", 1, 4, 8), ("b", 0, 0, 6), ("b", 1, 0, 0)]
    # reset clears the state
    evaluator.reset()
    assert evaluator.evaluate()["referring"] == {"num_queries": 0, "num_images": 0}


def test_inputs_without_query_texts_and_unknown_files(dataset):
    name, records = dataset
    evaluator = ReferringEvaluator(name, distributed=False)
    # query dicts (a mapper that copied the record) are fine too; inputs not in the dataset are skipped
    evaluator.process(records[:2] + [{"file_name": "elsewhere.jpg"}], _predictions()[:2] + [{}])
    assert evaluator.evaluate()["referring"]["num_queries"] == 4


def test_evaluator_errors(dataset):
    name, records = dataset
    evaluator = ReferringEvaluator(name, distributed=False)
    inputs = with_query_texts(records[:1])
    with pytest.raises(KeyError, match="referring"):
        evaluator.process(inputs, [{}])
    with pytest.raises(ValueError, match="1 'referring' predictions for the 2"):
        evaluator.process(inputs, [{"referring": _predictions()[0]["referring"][:1]}])
    with pytest.raises(ValueError, match="not the dataset record's"):
        evaluator.process([{**inputs[0], "queries": ["the van on the right", "the black sedan"]}], _predictions()[:1])
    small = [{**p, "mask": torch.zeros(H, W - 1)} for p in _predictions()[0]["referring"]]
    with pytest.raises(ValueError, match="original image size"):
        evaluator.process(inputs, [{"referring": small}])
    no_depth = [{k: v for k, v in p.items() if k != "depth_median"} for p in _predictions()[0]["referring"]]
    with pytest.raises(KeyError, match="depth_median"):
        evaluator.process(inputs, [{"referring": no_depth}])


def test_dataset_without_queries_is_an_error():
    name = f"segdep_referring_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [{"file_name": "a.jpg", "height": H, "width": W}])
    try:
        with pytest.raises(ValueError, match="no record with referring 'queries'"):
            ReferringEvaluator(name)
    finally:
        DatasetCatalog.remove(name)


def test_oracle_on_synthetic_vkitti2_referring(synthetic_vkitti2):
    """The generated referring dataset, answered with the instancegt masks read independently: 100 % and
    zero distance error (the evaluator finds the same target pixels as the generator wrote)."""
    from segdep_d2.data.datasets.vkitti2 import load_vkitti2_referring

    root, _ = synthetic_vkitti2
    records = load_vkitti2_referring(root, scenes=("Scene01", "Scene20"), variations=("clone", "fog"))
    assert records
    name = f"segdep_referring_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    try:
        evaluator = ReferringEvaluator(name, distributed=False)
        outputs = []
        for record in records:
            instances = np.asarray(Image.open(record["instance_file_name"]))
            outputs.append({"referring": [
                {"mask": instances == q["instance_id"], "score": 1.0, "depth_median": q["target_distance"],
                 "depth_mean": q["target_distance"]} for q in record["queries"]]})
            assert all((instances == q["instance_id"]).any() for q in record["queries"])
        evaluator.process(with_query_texts(records), outputs)
        results = evaluator.evaluate()["referring"]
    finally:
        DatasetCatalog.remove(name)
    assert results["num_queries"] == sum(len(r["queries"]) for r in records)
    assert results["mIoU"] == 100.0 and results["oIoU"] == 100.0 and results["P@0.9"] == 100.0
    assert results["distance_error"] == 0.0
