import json
import math
import uuid

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
from panopticapi.utils import id2rgb
from PIL import Image

from segdep_d2.evaluation import (
    DepthEvaluator,
    LabelledSemSegEvaluator,
    PanopticDepthEvaluator,
    panoptic_gt_to_label_map,
)


def _write_depth(path, metres):
    """kitti_png256: uint16 = metres * 256, 0 = invalid."""
    cv2.imwrite(str(path), np.round(np.asarray(metres) * 256).astype(np.uint16))
    return str(path)


def _write_image(path, h, w):
    Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def _register(dicts, **metadata):
    name = f"segdep_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(**metadata)
    return name


@pytest.fixture
def registered():
    names = []

    def register(dicts, **metadata):
        names.append(_register(dicts, **metadata))
        return names[-1]

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


class _CannedModel(torch.nn.Module):
    """Returns prepared outputs by image_id (for detectron2's inference_on_dataset)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, inputs):
        return [self.outputs[x["image_id"]] for x in inputs]


# ----------------------------------------------------------------------------------------------
# DepthEvaluator
# ----------------------------------------------------------------------------------------------
GT_A = np.array([[1.0, 2.0, 5.0], [0.0, 8.0, 100.0]])  # 0 invalid, 100 beyond the 80 m range
PRED_A = np.array([[2.0, 2.0, 6.0], [3.0, 12.0, 50.0]])


def _expected_a():
    # pairs (g, p) = (1, 2), (2, 2), (5, 6), (8, 12)
    e = [math.log(2), 0.0, math.log(1.2), math.log(1.5)]
    return {
        "AbsRel": (1 + 0 + 0.2 + 0.5) / 4,
        "SqRel": (1 + 0 + 0.2 + 2) / 4,
        "RMSE": math.sqrt((1 + 0 + 1 + 16) / 4),
        "RMSE_log": math.sqrt(sum(x * x for x in e) / 4),
        "log10": (math.log10(2) + 0 + math.log10(1.2) + math.log10(1.5)) / 4,
        "SILog": 100 * math.sqrt(sum(x * x for x in e) / 4 - (sum(e) / 4) ** 2),
        "d1": 2 / 4,
        "d2": 3 / 4,
        "d3": 3 / 4,
    }


def _expected_d():
    # gt 4 m everywhere, pred 5 m everywhere: ratio exactly 1.25 is not < 1.25
    return {
        "AbsRel": 0.25,
        "SqRel": 1 / 4,
        "RMSE": 1.0,
        "RMSE_log": math.log(5 / 4),
        "log10": math.log10(5 / 4),
        "SILog": 0.0,
        "d1": 0.0,
        "d2": 1.0,
        "d3": 1.0,
    }


@pytest.fixture
def depth_dataset(tmp_path, registered):
    h, w = 2, 3
    dicts = []
    for image_id, gt in (("A", GT_A), ("B", np.zeros((h, w))), ("C", None), ("D", np.full((h, w), 4.0))):
        d = {"file_name": _write_image(tmp_path / f"{image_id}.png", h, w), "image_id": image_id, "height": h, "width": w}
        if gt is not None:
            d["depth_file_name"] = _write_depth(tmp_path / f"{image_id}_depth.png", gt)
            d["depth_format"] = "kitti_png256"
        dicts.append(d)
    outputs = {
        "A": {"depth": torch.tensor(PRED_A, dtype=torch.float32)},
        "B": {"depth": torch.ones(h, w)},  # GT has no valid pixel: skipped, never NaN
        "C": {"depth": torch.ones(h, w)},  # no depth GT at all: skipped
        "D": {"depth": torch.full((h, w), 5.0)},
    }
    name = registered(dicts, depth_range=(1e-3, 80.0), evaluator_type="depth")
    return name, dicts, outputs


@pytest.mark.parametrize("distributed", [False, True])
def test_depth_evaluator_end_to_end(depth_dataset, distributed, tmp_path):
    name, dicts, outputs = depth_dataset
    evaluator = DepthEvaluator(name, distributed=distributed, output_dir=str(tmp_path / "out"))
    results = inference_on_dataset(_CannedModel(outputs), [[d] for d in DatasetCatalog.get(name)], evaluator)
    res = results["depth"]
    a, d = _expected_a(), _expected_d()
    assert res["num_images"] == 2  # A and D
    for key in a:
        assert res[key] == pytest.approx((a[key] + d[key]) / 2), key
        assert math.isfinite(res[key])
    per_image = json.loads((tmp_path / "out" / "depth_per_image.json").read_text())
    assert [r["image_id"] for r in per_image] == ["A", "D"]
    assert per_image[0]["AbsRel"] == pytest.approx(0.425)


def test_depth_evaluator_options(depth_dataset):
    name, dicts, outputs = depth_dataset
    inputs = [dicts[0]]
    # a larger max_depth brings the 100 m pixel in: |100 - 50| / 100 joins AbsRel
    evaluator = DepthEvaluator(name, distributed=False, max_depth=200.0)
    evaluator.reset()
    evaluator.process(inputs, [outputs["A"]])
    assert evaluator.evaluate()["depth"]["AbsRel"] == pytest.approx((1 + 0 + 0.2 + 0.5 + 0.5) / 5)
    # median scaling: median(gt) = 3.5, median(pred) = 4 -> pred * 0.875
    evaluator = DepthEvaluator(name, distributed=False, median_scaling=True)
    evaluator.process(inputs, [outputs["A"]])
    scaled = [(1, 2 * 0.875), (2, 2 * 0.875), (5, 6 * 0.875), (8, 12 * 0.875)]
    assert evaluator.evaluate()["depth"]["AbsRel"] == pytest.approx(sum(abs(g - p) / g for g, p in scaled) / 4)
    # evaluator state resets
    evaluator.reset()
    assert evaluator.evaluate() == {"depth": {"num_images": 0}}


def test_depth_evaluator_without_valid_depth_has_no_nan(depth_dataset):
    name, dicts, outputs = depth_dataset
    evaluator = DepthEvaluator(name, distributed=False)
    evaluator.process([dicts[1], dicts[2]], [outputs["B"], outputs["C"]])
    assert evaluator.evaluate() == {"depth": {"num_images": 0}}


def test_depth_evaluator_size_mismatch_raises(depth_dataset):
    name, dicts, outputs = depth_dataset
    evaluator = DepthEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match="does not have the ground-truth size") as err:
        evaluator.process([dicts[0]], [{"depth": torch.ones(4, 6)}])
    assert str(dicts[0]["file_name"]) in str(err.value)


# ----------------------------------------------------------------------------------------------
# PanopticDepthEvaluator
# ----------------------------------------------------------------------------------------------
# contiguous categories: 0 road (stuff), 1 car (thing)
PANOPTIC_METADATA = dict(
    thing_classes=["road", "car"],
    stuff_classes=["road", "car"],
    thing_dataset_id_to_contiguous_id={2: 1},
    stuff_dataset_id_to_contiguous_id={1: 0, 2: 1},
    ignore_label=255,
    label_divisor=1000,
    depth_range=(1e-3, 80.0),
    evaluator_type="panoptic_depth",
)


def _write_panoptic(path, ids):
    Image.fromarray(id2rgb(np.asarray(ids, dtype=np.uint32))).save(path)
    return str(path)


@pytest.fixture
def panoptic_dataset(tmp_path, registered):
    """Image 1 (panoptic + depth), image 2 (panoptic only, with a crowd region), image 3 (depth only).

    Image 1, 4 x 4: road (id 1) on the top two rows, car A (id 5) bottom-left 2 x 2, car B (id 7)
    bottom-right 2 x 2. GT depth: road 20 m (row 0) and 10 m (row 1), car A 8 m with one pixel at
    100 m (outside the 80 m range: no measurement), car B 4 m.
    """
    ids1 = np.array([[1] * 4, [1] * 4, [5, 5, 7, 7], [5, 5, 7, 7]])
    depth1 = np.array([[20.0] * 4, [10.0] * 4, [8.0, 8.0, 4.0, 4.0], [8.0, 100.0, 4.0, 4.0]])
    ids2 = np.array([[1] * 4, [1] * 4, [5, 5, 9, 9], [5, 5, 0, 0]])  # 9 is a crowd of cars, 0 unlabelled
    info1 = [
        {"id": 1, "category_id": 0, "iscrowd": 0, "isthing": False},
        {"id": 5, "category_id": 1, "iscrowd": 0, "isthing": True},
        {"id": 7, "category_id": 1, "iscrowd": 0, "isthing": True},
    ]
    info2 = [
        {"id": 1, "category_id": 0, "iscrowd": 0, "isthing": False},
        {"id": 5, "category_id": 1, "iscrowd": 0, "isthing": True},
        {"id": 9, "category_id": 1, "iscrowd": 1, "isthing": True},
    ]
    common = {"height": 4, "width": 4}
    dicts = [
        {
            "file_name": _write_image(tmp_path / "1.png", 4, 4), "image_id": "1", **common,
            "pan_seg_file_name": _write_panoptic(tmp_path / "1_pan.png", ids1), "segments_info": info1,
            "depth_file_name": _write_depth(tmp_path / "1_depth.png", depth1), "depth_format": "kitti_png256",
        },
        {
            "file_name": _write_image(tmp_path / "2.png", 4, 4), "image_id": "2", **common,
            "pan_seg_file_name": _write_panoptic(tmp_path / "2_pan.png", ids2), "segments_info": info2,
        },
        {
            "file_name": _write_image(tmp_path / "3.png", 4, 4), "image_id": "3", **common,
            "depth_file_name": _write_depth(tmp_path / "3_depth.png", depth1), "depth_format": "kitti_png256",
        },
    ]
    # predictions: contiguous category * 1000 + instance, -1 void (Panoptic-DeepLab)
    pred1 = torch.tensor([[0] * 4, [0] * 4, [1001, 1001, 1002, 1002], [1001, 1001, 1002, 1002]], dtype=torch.int32)
    pred_depth1 = torch.tensor([[20.0] * 4, [10.0] * 4, [9.0, 9.0, 4.0, 4.0], [9.0, 9.0, 4.0, 4.0]])
    info_pred1 = [
        {"id": 0, "category_id": 0, "isthing": False, "depth": 15.0, "depth_median": 15.0},
        {"id": 1001, "category_id": 1, "isthing": True, "depth": 9.0, "depth_median": 9.0},
        {"id": 1002, "category_id": 1, "isthing": True, "depth": 4.0, "depth_median": 4.0},
    ]
    # image 2: perfect, plus a car over the crowd region (all on void GT: not a false positive)
    pred2 = torch.tensor([[0] * 4, [0] * 4, [1001, 1001, 1003, 1003], [1001, 1001, -1, -1]], dtype=torch.int32)
    outputs = {
        "1": {"panoptic_seg": (pred1, info_pred1), "depth": pred_depth1},
        "2": {"panoptic_seg": (pred2, None), "depth": torch.full((4, 4), 7.0)},
        "3": {"depth": pred_depth1},
    }
    name = registered(dicts, **PANOPTIC_METADATA)
    return name, dicts, outputs


def _expected_panoptic():
    return {
        # plain PQ: every segment matched with IoU 1
        "PQ": 100.0, "SQ": 100.0, "RQ": 100.0,
        "PQ_th": 100.0, "SQ_th": 100.0, "RQ_th": 100.0,
        "PQ_st": 100.0, "SQ_st": 100.0, "RQ_st": 100.0,
        # lambda = 0.1: car A's 3 pixels with GT depth (9 vs 8 m: error 0.125) leave prediction 1001,
        # which keeps 1 pixel: IoU 1/4 -> one fn + one fp. Cars over both images (image 2's crowd
        # is void): tp 2 (car B, image 2's car; IoU 1), fp 1, fn 1 -> 2 / (2 + 0.5 + 0.5) = 2/3;
        # road 1 -> (1 + 2/3) / 2. Image 2 has no depth: nothing is depth-tested there.
        "DPQ@0.1": 100 * (1 + 2 / 3) / 2,
        "DPQ@0.25": 100.0,
        "DPQ@0.5": 100.0,
        "DPQ": (100 * (1 + 2 / 3) / 2 + 100 + 100) / 3,
        # segments (image 1 only): road 15 vs mean GT 15 -> 0; car A 9 vs 8 (the 100 m pixel is
        # out of range) -> 0.125; car B 4 vs 4 -> 0
        "segment_count": 3,
        "segment_AbsRel": 0.125 / 3,
        "segment_AbsRel_median": 0.125 / 3,
        "segment_count_th": 2,
        "segment_AbsRel_th": 0.0625,
        "segment_AbsRel_median_th": 0.0625,
        "segment_count_st": 1,
        "segment_AbsRel_st": 0.0,
        "segment_AbsRel_median_st": 0.0,
        "num_images": 2,
        "num_images_with_depth": 1,
    }


@pytest.mark.parametrize("distributed", [False, True])
def test_panoptic_depth_evaluator_end_to_end(panoptic_dataset, distributed, tmp_path):
    name, dicts, outputs = panoptic_dataset
    evaluator = PanopticDepthEvaluator(name, distributed=distributed, output_dir=str(tmp_path / "out"))
    results = inference_on_dataset(_CannedModel(outputs), [[d] for d in DatasetCatalog.get(name)], evaluator)
    res = results["panoptic_depth"]
    expected = _expected_panoptic()
    assert set(res) == set(expected)
    for key, value in expected.items():
        assert res[key] == pytest.approx(value), key
    segments = json.loads((tmp_path / "out" / "panoptic_depth_segments.json").read_text())
    car_a = [s for s in segments if s["gt_id"] == 1001]
    assert len(car_a) == 1 and car_a[0]["gt_depth"] == pytest.approx(8.0) and car_a[0]["pred_depth"] == 9.0


def test_panoptic_depth_evaluator_computes_segment_depth_without_segments_info(panoptic_dataset):
    name, dicts, outputs = panoptic_dataset
    pred, _ = outputs["1"]["panoptic_seg"]
    evaluator = PanopticDepthEvaluator(name, distributed=False)
    evaluator.process([dicts[0]], [{"panoptic_seg": (pred, None), "depth": outputs["1"]["depth"]}])
    res = evaluator.evaluate()["panoptic_depth"]
    # road mean of its predicted depth = (4 * 20 + 4 * 10) / 8 = 15, cars 9 and 4: as in segments_info
    assert res["segment_AbsRel"] == pytest.approx(0.125 / 3)
    assert res["DPQ@0.1"] == pytest.approx(75.0)  # (road 1 + car 0.5) / 2 on this image alone


def test_panoptic_depth_evaluator_combines_with_depth_evaluator(panoptic_dataset):
    name, dicts, outputs = panoptic_dataset
    evaluators = DatasetEvaluators(
        [DepthEvaluator(name, distributed=False), PanopticDepthEvaluator(name, distributed=False)]
    )
    results = inference_on_dataset(_CannedModel(outputs), [[d] for d in dicts], evaluators)
    assert set(results) == {"depth", "panoptic_depth"}
    assert results["depth"]["num_images"] == 2  # images 1 and 3
    assert results["panoptic_depth"]["num_images"] == 2  # images 1 and 2


def test_panoptic_depth_evaluator_without_valid_depth_has_no_nan(tmp_path, registered):
    ids = np.array([[1, 1], [5, 5]])
    info = [
        {"id": 1, "category_id": 0, "iscrowd": 0, "isthing": False},
        {"id": 5, "category_id": 1, "iscrowd": 0, "isthing": True},
    ]
    d = {
        "file_name": _write_image(tmp_path / "z.png", 2, 2), "image_id": "z", "height": 2, "width": 2,
        "pan_seg_file_name": _write_panoptic(tmp_path / "z_pan.png", ids), "segments_info": info,
        "depth_file_name": _write_depth(tmp_path / "z_depth.png", np.zeros((2, 2))), "depth_format": "kitti_png256",
    }
    name = registered([d], **PANOPTIC_METADATA)
    evaluator = PanopticDepthEvaluator(name, distributed=False)
    pred = torch.tensor([[0, 0], [1001, 1001]], dtype=torch.int32)
    evaluator.process([d], [{"panoptic_seg": (pred, None), "depth": torch.full((2, 2), 3.0)}])
    res = evaluator.evaluate()["panoptic_depth"]
    assert all(math.isfinite(v) for v in res.values())
    assert res["segment_count"] == 0 and "segment_AbsRel" not in res
    assert res["PQ"] == res["DPQ"] == pytest.approx(100.0)
    # nothing processed at all
    evaluator.reset()
    assert evaluator.evaluate() == {"panoptic_depth": {"num_images": 0}}


@pytest.mark.parametrize(
    "evaluator_cls, dataset_fixture, output_key",
    [
        (DepthEvaluator, "depth_dataset", "A"),
        (PanopticDepthEvaluator, "panoptic_dataset", "1"),
    ],
    ids=["depth", "panoptic_depth"],
)
def test_evaluator_non_main_rank_returns_empty(evaluator_cls, dataset_fixture, output_key, request, monkeypatch):
    name, dicts, outputs = request.getfixturevalue(dataset_fixture)
    evaluator = evaluator_cls(name, distributed=True)
    evaluator.process([dicts[0]], [outputs[output_key]])
    from detectron2.utils import comm  # the evaluators gather through detectron2's comm (directly or gather_results)

    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [])
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert evaluator.evaluate() == {}


def test_panoptic_gt_to_label_map():
    ids = np.array([[1, 1, 5, 7], [9, 0, 3, 3], [11, 11, 12, 12]])
    info = [
        {"id": 1, "category_id": 0, "iscrowd": 0},
        {"id": 5, "category_id": 1, "iscrowd": 0},
        {"id": 7, "category_id": 1, "iscrowd": 0},
        {"id": 9, "category_id": 1, "iscrowd": 1},  # crowd: labelled, and listed as crowd
        {"id": 3, "category_id": 2, "iscrowd": 0},
        {"id": 11, "category_id": 0, "iscrowd": 0},  # a second road segment stays apart
        {"id": 12, "category_id": 1, "iscrowd": 0},
    ]
    out, crowd_ids = panoptic_gt_to_label_map(ids, info, label_divisor=1000, void_category=255, thing_ids={1, 2})
    assert out.tolist() == [
        [0, 0, 1001, 1002],
        [1003, 255000, 2001, 2001],
        [1, 1, 1004, 1004],
    ]
    assert crowd_ids == [1003]


def test_panoptic_depth_evaluator_crowd_region_is_void_only_for_its_own_category(panoptic_dataset):
    """Image 2 has a crowd of cars at (2, 2:4). Road predicted there stays in road's union
    (panopticapi): road IoU 8 / 10; treating the crowd as void for every category gave 1.0."""
    name, dicts, _ = panoptic_dataset
    pred = torch.tensor([[0] * 4, [0] * 4, [1001, 1001, 0, 0], [1001, 1001, -1, -1]], dtype=torch.int32)
    evaluator = PanopticDepthEvaluator(name, distributed=False)
    evaluator.process([dicts[1]], [{"panoptic_seg": (pred, None), "depth": torch.full((4, 4), 7.0)}])
    res = evaluator.evaluate()["panoptic_depth"]
    assert res["SQ_st"] == pytest.approx(80.0)
    assert res["PQ"] == pytest.approx((80.0 + 100.0) / 2)
    # a car prediction on the car crowd, unmatched, is forgiven
    pred[2, 2:4] = 1003
    evaluator.reset()
    evaluator.process([dicts[1]], [{"panoptic_seg": (pred, None), "depth": torch.full((4, 4), 7.0)}])
    assert evaluator.evaluate()["panoptic_depth"]["PQ"] == pytest.approx(100.0)


@pytest.mark.parametrize("evaluator_cls", [DepthEvaluator, PanopticDepthEvaluator])
def test_evaluators_refuse_a_dataset_without_depth_range(evaluator_cls, registered):
    metadata = {k: v for k, v in PANOPTIC_METADATA.items() if k != "depth_range"}
    name = registered([], **metadata)
    with pytest.raises(ValueError, match="depth_range"):
        evaluator_cls(name, distributed=False)
    evaluator_cls(name, distributed=False, min_depth=0.5, max_depth=40.0)  # explicit range: fine


def test_labelled_sem_seg_evaluator_on_partly_labelled_records(tmp_path, registered):
    """Two of three records carry semantic labels: mIoU over those two, num_images 2."""
    labels = [np.array([[0, 0, 1], [1, 1, 255]], np.uint8), np.array([[1, 1, 1], [0, 0, 0]], np.uint8)]
    dicts = []
    for i in range(3):
        d = {"file_name": _write_image(tmp_path / f"s{i}.png", 2, 3), "image_id": f"s{i}", "height": 2, "width": 3}
        if i < 2:
            Image.fromarray(labels[i]).save(tmp_path / f"s{i}_label.png")
            d["sem_seg_file_name"] = str(tmp_path / f"s{i}_label.png")
        dicts.append(d)
    name = registered(dicts, **PANOPTIC_METADATA)
    # predictions: image 0 perfect except one road pixel called car; image 1 perfect; image 2 ignored
    preds = [np.array([[0, 1, 1], [1, 1, 1]]), labels[1].astype(np.int64), np.zeros((2, 3), np.int64)]
    outputs = {d["image_id"]: {"sem_seg": torch.nn.functional.one_hot(torch.as_tensor(p), 2).permute(2, 0, 1).float()}
               for d, p in zip(dicts, preds)}
    evaluator = LabelledSemSegEvaluator(name, distributed=False)
    res = inference_on_dataset(_CannedModel(outputs), [[d] for d in dicts], evaluator)["sem_seg"]
    # road: image 0 tp 1 fn 1, image 1 tp 3 -> 4 / 5; car: image 0 tp 3 fp 1 (the ignored pixel
    # does not count), image 1 tp 3 -> 6 / 7
    assert res["num_images"] == 2
    assert res["IoU-road"] == pytest.approx(100 * 4 / 5)
    assert res["IoU-car"] == pytest.approx(100 * 6 / 7)
    assert res["mIoU"] == pytest.approx(100 * (4 / 5 + 6 / 7) / 2)
