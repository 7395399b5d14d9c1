"""Depth completion: the KITTI devkit metrics, the NYUv2 numbers, the baselines and the evaluator (numbers by hand)."""
import json
import math
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from PIL import Image
from scipy.interpolate import griddata

import segdep_d2  # noqa: F401
from segdep_d2 import add_segdep_config
from segdep_d2.data.depth_io import read_depth, write_depth
from segdep_d2.data.sparse_depth import evaluation_rng, sample_sparse_depth, sparse_depth_input
from segdep_d2.engine import build_evaluators
from segdep_d2.evaluation import (
    DEPTH_COMPLETION_EVALUATOR_TYPE,
    DEPTH_COMPLETION_METRIC_NAMES,
    DepthCompletionEvaluator,
    bilinear_fill,
    completion_image_metrics,
    depth_completion_metrics,
    kitti_interpolate_background,
    nearest_fill,
    nyu_completion_metrics,
    sparse_only_metrics,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(
    REPO, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml"
)


def _approx(d):
    return {k: pytest.approx(v, rel=1e-6, abs=1e-9) for k, v in d.items()}


# ----------------------------------------------------------------------------------------------
# KITTI devkit metrics
# ----------------------------------------------------------------------------------------------
def test_kitti_metrics_by_hand_in_mm_and_inverse_km():
    gt = np.array([[2.0, 4.0], [0.0, 5.0]])  # the 0 pixel is not scored
    pred = np.array([[1.0, 5.0], [7.0, 5.0]])
    # pairs (g, p) = (2, 1), (4, 5), (5, 5): |g - p| = 1, 1, 0 m; |1/g - 1/p| = 0.5, 0.05, 0 1/m
    expected = {
        "RMSE": 1000 * math.sqrt(2 / 3),  # 816.497 mm
        "MAE": 1000 * 2 / 3,  # 666.667 mm
        "iRMSE": 1000 * math.sqrt((0.25 + 0.0025) / 3),  # 290.115 1/km
        "iMAE": 1000 * 0.55 / 3,  # 183.333 1/km
    }
    assert depth_completion_metrics(pred, gt) == _approx(expected)
    other = pred.copy()
    other[1, 0] = 1000.0  # gt 0 there: nothing changes
    assert depth_completion_metrics(torch.tensor(other), torch.tensor(gt)) == _approx(expected)
    assert depth_completion_metrics(pred, np.zeros_like(gt)) is None  # nothing to score: skipped, never NaN
    mask = np.array([[True, False], [True, False]])  # only (2, 1)
    assert depth_completion_metrics(pred, gt, mask=mask) == _approx(
        {"RMSE": 1000.0, "MAE": 1000.0, "iRMSE": 500.0, "iMAE": 500.0}
    )


def test_kitti_devkit_interpolate_background_by_hand():
    # io_depth.h interpolateBackground: a gap between two valid pixels takes the smaller neighbour; the ends of
    # a row take its first / last valid pixel; rows above / below all valid rows copy the nearest valid row; an
    # empty row *between* valid rows stays invalid (-1). Invalid = <= 0 or not finite.
    pred = np.array(
        [
            [0.0, 3.0, 0.0, 0.0, 5.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [4.0, 0.0, 2.0, -1.0, np.nan, 6.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    expected = np.array(
        [
            [3.0, 3.0, 3.0, 3.0, 5.0, 5.0],
            [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0],
            [4.0, 2.0, 2.0, 2.0, 2.0, 6.0],
            [4.0, 2.0, 2.0, 2.0, 2.0, 6.0],
        ]
    )
    np.testing.assert_array_equal(kitti_interpolate_background(pred), expected)
    top = np.array([[0.0, 0.0], [0.0, 0.0], [7.0, 0.0]])  # first valid row copied upwards
    np.testing.assert_array_equal(kitti_interpolate_background(top), np.full((3, 2), 7.0))
    np.testing.assert_array_equal(kitti_interpolate_background(np.zeros((2, 2))), np.full((2, 2), -1.0))
    dense = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(kitti_interpolate_background(dense), dense)


def test_kitti_metrics_fill_non_positive_predictions_like_the_devkit():
    gt = np.ones((1, 4))
    # -3 (left end) takes 1; the 0 between 1 and 4 takes min(1, 4) = 1: scored pred [1, 1, 1, 4]
    m = depth_completion_metrics(np.array([[-3.0, 1.0, 0.0, 4.0]]), gt)
    assert m == _approx({"RMSE": 1500.0, "MAE": 750.0, "iRMSE": 375.0, "iMAE": 187.5})
    # a prediction without any valid pixel is scored as -1 m everywhere (what the devkit does)
    m = depth_completion_metrics(np.zeros((2, 2)), np.full((2, 2), 2.0))
    assert m == _approx({"RMSE": 3000.0, "MAE": 3000.0, "iRMSE": 1500.0, "iMAE": 1500.0})


def test_nyu_numbers_by_hand():
    gt = np.array([[2.0, 4.0, 0.0]])
    pred = np.array([[2.0, 5.0, 9.0]])
    # (2, 2), (4, 5): RMSE sqrt(1/2) m, REL (0 + 1/4) / 2, ratio 1.25 is not < 1.25
    expected = {"RMSE_m": math.sqrt(0.5), "REL": 0.125, "d1": 0.5, "d2": 1.0, "d3": 1.0}
    assert nyu_completion_metrics(pred, gt, 1e-3, 10.0) == _approx(expected)
    both = completion_image_metrics(pred, np.array([[2.0, 4.0, 50.0]]), 1e-3, 10.0)  # 50 m is beyond the range
    assert set(both) == set(DEPTH_COMPLETION_METRIC_NAMES)
    assert both["RMSE"] == pytest.approx(1000 * math.sqrt(0.5)) and both["REL"] == pytest.approx(0.125)
    assert completion_image_metrics(pred, np.full((1, 3), 50.0), 1e-3, 10.0) is None


# ----------------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------------
# three points of the plane z = 1 + 2 row + 0.5 col: A (0, 0) = 1, B (1, 3) = 4.5, C (2, 1) = 5.5
THREE = np.zeros((3, 4), np.float32)
THREE[0, 0], THREE[1, 3], THREE[2, 1] = 1.0, 4.5, 5.5


def test_nearest_fill_by_hand():
    # squared distances, e.g. (1, 0): A 1, B 9, C 2 -> A; (0, 2): A 4, B 2, C 5 -> B; (1, 1): A 2, B 4, C 1 -> C
    expected = np.array([[1.0, 1.0, 4.5, 4.5], [1.0, 5.5, 4.5, 4.5], [5.5, 5.5, 5.5, 4.5]])
    np.testing.assert_array_equal(nearest_fill(THREE), expected)
    with pytest.raises(ValueError, match="no measured pixel"):
        nearest_fill(np.zeros((2, 2)))


def test_bilinear_fill_by_hand_exact_on_a_plane():
    # inside the triangle ABC: the pixels A, B, C, (1, 1) and (1, 2) -> the plane: 3.5 and 4.0;
    # outside the hull: nearest_fill
    expected = np.array([[1.0, 1.0, 4.5, 4.5], [1.0, 3.5, 4.0, 4.5], [5.5, 5.5, 5.5, 4.5]])
    np.testing.assert_allclose(bilinear_fill(THREE), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="no measured pixel"):
        bilinear_fill(np.zeros((2, 2)))


def test_bilinear_fill_on_a_plane_and_against_griddata():
    rng = np.random.default_rng(0)
    h, w = 40, 70
    rows, cols = np.mgrid[0:h, 0:w]
    plane = 3.0 + 0.1 * rows + 0.05 * cols
    sparse = np.zeros((h, w), np.float32)
    idx = rng.choice(h * w, 150, replace=False)
    sparse.flat[idx] = plane.flat[idx]
    filled = bilinear_fill(sparse)
    ys, xs = np.nonzero(sparse)
    linear = griddata(np.column_stack([ys, xs]).astype(float), sparse[ys, xs].astype(float), (rows, cols), "linear")
    inside = np.isfinite(linear)
    assert inside.sum() > 0.8 * h * w
    np.testing.assert_allclose(filled[inside], plane[inside], rtol=1e-5)  # exact on the plane inside the hull
    np.testing.assert_array_equal(filled[~inside], nearest_fill(sparse)[~inside])  # nearest outside

    sparse.flat[idx] = rng.uniform(1.0, 80.0, len(idx))  # arbitrary values: griddata's linear interpolation
    linear = griddata(np.column_stack([ys, xs]).astype(float), sparse[ys, xs].astype(float), (rows, cols), "linear")
    np.testing.assert_allclose(bilinear_fill(sparse)[inside], linear[inside], rtol=1e-5)


def test_bilinear_fill_without_a_triangle_is_nearest():
    two = np.zeros((3, 3), np.float32)
    two[0, 0], two[2, 2] = 2.0, 8.0
    np.testing.assert_array_equal(bilinear_fill(two), nearest_fill(two))
    line = np.zeros((3, 4), np.float32)
    line[1, 0], line[1, 1], line[1, 3] = 2.0, 3.0, 5.0  # collinear: no triangle
    np.testing.assert_array_equal(bilinear_fill(line), nearest_fill(line))


def test_sparse_only_metrics_at_measured_pixels_only():
    sparse = np.array([[2.0, 0.0], [0.0, 9.0]])
    gt = np.array([[3.0, 4.0], [5.0, 0.0]])
    # only (0, 0) is measured with ground truth: (g, p) = (3, 2); (1, 1) has no ground truth
    m = sparse_only_metrics(sparse, gt)
    assert {k: m[k] for k in ("RMSE", "MAE", "iRMSE", "iMAE")} == _approx(
        {"RMSE": 1000.0, "MAE": 1000.0, "iRMSE": 1000 / 6, "iMAE": 1000 / 6}
    )
    assert m["RMSE_m"] == pytest.approx(1.0) and m["REL"] == pytest.approx(1 / 3)
    assert (m["d1"], m["d2"], m["d3"]) == (0.0, 1.0, 1.0)  # ratio 1.5
    assert sparse_only_metrics(np.array([[0.0, 0.0], [0.0, 9.0]]), gt) is None


# ----------------------------------------------------------------------------------------------
# the evaluator
# ----------------------------------------------------------------------------------------------
GT_A = np.array([[2.0, 4.0, 0.0], [5.0, 8.0, 100.0]])  # 0 invalid, 100 m beyond the (1e-3, 80) range
PRED_A = np.array([[1.0, 5.0, 7.0], [5.0, 10.0, 3.0]])
SPARSE_A = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # one point
GT_B = np.full((2, 3), 4.0)
PRED_B = np.full((2, 3), 5.0)
SPARSE_B = np.array([[4.0, 0.0, 0.0], [0.0, 0.0, 6.0]])  # two points


def _model_a():
    # (g, p) = (2, 1), (4, 5), (5, 5), (8, 10)
    inv = [0.5, 0.05, 0.0, 0.025]
    return {
        "RMSE": 1000 * math.sqrt(6 / 4), "MAE": 1000.0,
        "iRMSE": 1000 * math.sqrt(sum(x * x for x in inv) / 4), "iMAE": 1000 * sum(inv) / 4,
        "RMSE_m": math.sqrt(6 / 4), "REL": (0.5 + 0.25 + 0 + 0.25) / 4, "d1": 0.25, "d2": 0.75, "d3": 0.75,
    }


def _model_b():
    return {"RMSE": 1000.0, "MAE": 1000.0, "iRMSE": 50.0, "iMAE": 50.0,
            "RMSE_m": 1.0, "REL": 0.25, "d1": 0.0, "d2": 1.0, "d3": 1.0}


def _nearest_a():
    # one point (3 m): every pixel 3 m; (g, p) = (2, 3), (4, 3), (5, 3), (8, 3)
    inv = [1 / 2 - 1 / 3, 1 / 3 - 1 / 4, 1 / 3 - 1 / 5, 1 / 3 - 1 / 8]
    return {"RMSE": 1000 * math.sqrt(31 / 4), "MAE": 1000 * 9 / 4,
            "iRMSE": 1000 * math.sqrt(sum(x * x for x in inv) / 4), "iMAE": 1000 * sum(inv) / 4}


def _nearest_b():
    # points (0, 0) = 4 and (1, 2) = 6: filled [[4, 4, 6], [4, 6, 6]] against 4 m everywhere
    inv = 1 / 4 - 1 / 6
    return {"RMSE": 1000 * math.sqrt(12 / 6), "MAE": 1000.0,
            "iRMSE": 1000 * math.sqrt(3 * inv * inv / 6), "iMAE": 1000 * 3 * inv / 6}


def _sparse_only_a():
    return {"RMSE": 1000.0, "MAE": 1000.0, "iRMSE": 1000 / 6, "iMAE": 1000 / 6}  # (2, 3)


def _sparse_only_b():
    inv = 1 / 4 - 1 / 6  # (4, 4), (4, 6)
    return {"RMSE": 1000 * math.sqrt(2), "MAE": 1000.0, "iRMSE": 1000 * math.sqrt(inv * inv / 2),
            "iMAE": 1000 * inv / 2}


class _CannedModel(torch.nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, inputs):
        return [self.outputs[x["image_id"]] for x in inputs]


@pytest.fixture
def registered():
    names = []

    def register(dicts, **metadata):
        name = f"segdep_completion_test_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(**metadata)
        names.append(name)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _record(tmp_path, image_id, gt=None, sparse=None):
    h, w = 2, 3
    d = {"file_name": str(tmp_path / f"{image_id}.png"), "image_id": image_id, "height": h, "width": w}
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(d["file_name"])
    if gt is not None:
        d["depth_file_name"] = write_depth(str(tmp_path / f"{image_id}_depth.png"), gt, "kitti_png256")
        d["depth_format"] = "kitti_png256"
    if sparse is not None:
        d["sparse_depth_file_name"] = write_depth(str(tmp_path / f"{image_id}_sparse.png"), sparse, "kitti_png256")
        d["sparse_depth_format"] = "kitti_png256"
    return d


@pytest.fixture
def completion_dataset(tmp_path, registered):
    dicts = [
        _record(tmp_path, "A", GT_A, SPARSE_A),
        _record(tmp_path, "B", GT_B, SPARSE_B),
        _record(tmp_path, "C"),  # no depth: skipped
    ]
    outputs = {
        "A": {"depth": torch.tensor(PRED_A, dtype=torch.float32)},
        "B": {"depth": torch.tensor(PRED_B, dtype=torch.float32)},
        "C": {"depth": torch.ones(2, 3)},
    }
    name = registered(dicts, depth_range=(1e-3, 80.0), evaluator_type=DEPTH_COMPLETION_EVALUATOR_TYPE)
    return name, dicts, outputs


def _run(evaluator, name, outputs):
    return inference_on_dataset(_CannedModel(outputs), [[d] for d in DatasetCatalog.get(name)], evaluator)


@pytest.mark.parametrize("distributed", [False, True])
def test_evaluator_averages_per_image_with_baselines(completion_dataset, distributed, tmp_path):
    name, _, outputs = completion_dataset
    evaluator = DepthCompletionEvaluator(name, output_dir=str(tmp_path / "out"), distributed=distributed)
    res = _run(evaluator, name, outputs)["depth_completion"]
    assert res["num_images"] == 2 and res["num_images_without_points"] == 0
    a, b = _model_a(), _model_b()
    for key in DEPTH_COMPLETION_METRIC_NAMES:
        assert res[key] == pytest.approx((a[key] + b[key]) / 2), key
    # the mean of per-image RMSEs, not the RMSE pooled over the 10 pixels (1095.4 mm)
    assert res["RMSE"] == pytest.approx((1000 * math.sqrt(1.5) + 1000) / 2)  # 1112.37 mm
    for prefix, (ea, eb) in {"nearest": (_nearest_a(), _nearest_b()),
                             "bilinear": (_nearest_a(), _nearest_b()),  # < 3 points: nearest
                             "sparse_only": (_sparse_only_a(), _sparse_only_b())}.items():
        assert res[f"{prefix}/num_images"] == 2
        for key in ("RMSE", "MAE", "iRMSE", "iMAE"):
            assert res[f"{prefix}/{key}"] == pytest.approx((ea[key] + eb[key]) / 2), (prefix, key)
        assert all(f"{prefix}/{key}" in res for key in DEPTH_COMPLETION_METRIC_NAMES)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in res.values())
    per_image = json.loads((tmp_path / "out" / "depth_completion_per_image.json").read_text())
    assert [(r["image_id"], r["num_points"]) for r in per_image] == [("A", 1), ("B", 2)]


def test_evaluator_skips_a_frame_without_points_for_the_baselines(completion_dataset, tmp_path, registered):
    _, dicts, outputs = completion_dataset
    zero = _record(tmp_path, "Z", np.full((2, 3), 3.0), np.zeros((2, 3)))
    name = registered(dicts + [zero], depth_range=(1e-3, 80.0))
    outputs = {**outputs, "Z": {"depth": torch.full((2, 3), 3.0)}}
    res = _run(DepthCompletionEvaluator(name, distributed=False), name, outputs)["depth_completion"]
    assert res["num_images"] == 3 and res["num_images_without_points"] == 1
    assert res["RMSE"] == pytest.approx((_model_a()["RMSE"] + _model_b()["RMSE"] + 0.0) / 3)  # the model counts Z
    for prefix in ("nearest", "bilinear", "sparse_only"):
        assert res[f"{prefix}/num_images"] == 2
    assert res["nearest/MAE"] == pytest.approx((_nearest_a()["MAE"] + _nearest_b()["MAE"]) / 2)

    only_zero = registered([zero], depth_range=(1e-3, 80.0))
    res = _run(DepthCompletionEvaluator(only_zero, distributed=False), only_zero, outputs)["depth_completion"]
    assert res["num_images"] == 1 and res["num_images_without_points"] == 1 and res["nearest/num_images"] == 0
    assert "nearest/RMSE" not in res and all(math.isfinite(v) for v in res.values())


def test_evaluator_num_samples_uses_the_fixed_evaluation_points(completion_dataset, registered):
    _, dicts, outputs = completion_dataset
    dense_only = [{k: v for k, v in d.items() if not k.startswith("sparse_depth")} for d in dicts]
    name = registered(dense_only, depth_range=(1e-3, 80.0))

    # every valid pixel sampled: the sparse input is the ground truth itself, so sparse_only is perfect
    res = _run(DepthCompletionEvaluator(name, num_samples=100, distributed=False), name, outputs)["depth_completion"]
    assert res["sparse_only/RMSE"] == 0.0 and res["sparse_only/iMAE"] == 0.0 and res["sparse_only/d1"] == 1.0

    evaluator = DepthCompletionEvaluator(name, num_samples=2, distributed=False, baselines=("nearest", "bilinear"))
    res = _run(evaluator, name, outputs)["depth_completion"]
    assert "sparse_only/RMSE" not in res and res["nearest/num_images"] == 2
    expected = []
    for d in dense_only[:2]:
        gt = read_depth(d)
        sparse = sample_sparse_depth(gt, 2, evaluation_rng(d))  # seeded by the file name: fixed per image
        np.testing.assert_array_equal(sparse, sparse_depth_input(d, 2))
        assert (sparse > 0).sum() == 2
        expected.append(completion_image_metrics(nearest_fill(sparse), gt, 1e-3, 80.0))
    for key in DEPTH_COMPLETION_METRIC_NAMES:
        assert res[f"nearest/{key}"] == pytest.approx(np.mean([e[key] for e in expected])), key
    assert _run(evaluator, name, outputs)["depth_completion"] == res  # the same points every run


def test_evaluator_without_baselines_and_with_bad_input(completion_dataset):
    name, dicts, outputs = completion_dataset
    res = _run(DepthCompletionEvaluator(name, baselines=(), distributed=False), name, outputs)["depth_completion"]
    assert set(res) == set(DEPTH_COMPLETION_METRIC_NAMES) | {"num_images"}
    with pytest.raises(ValueError, match="Unknown depth completion baselines"):
        DepthCompletionEvaluator(name, baselines=("cubic",))
    evaluator = DepthCompletionEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match="original image size"):
        evaluator.process([dicts[0]], [{"depth": torch.ones(4, 4)}])
    with pytest.raises(KeyError, match="no 'depth'"):
        evaluator.process([dicts[0]], [{}])
    no_sparse = {k: v for k, v in dicts[0].items() if not k.startswith("sparse_depth")}
    with pytest.raises(KeyError, match="sparse_depth_file_name"):
        evaluator.process([no_sparse], [outputs["A"]])


def test_evaluator_non_main_rank_returns_empty(completion_dataset, monkeypatch):
    from detectron2.utils import comm

    name, dicts, outputs = completion_dataset
    evaluator = DepthCompletionEvaluator(name, distributed=True)
    evaluator.process([dicts[0]], [outputs["A"]])
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [])
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert evaluator.evaluate() == {}


def test_build_evaluators_picks_the_completion_evaluator(completion_dataset, tmp_path):
    name, _, _ = completion_dataset
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.OUTPUT_DIR = str(tmp_path)
    kinds = lambda: [type(e).__name__ for e in build_evaluators(cfg, name)._evaluators]  # noqa: E731
    if "COMPLETION" in cfg.TEST.DEPTH:
        cfg.TEST.DEPTH.COMPLETION = False
    assert "DepthEvaluator" in kinds() and "DepthCompletionEvaluator" not in kinds()
    cfg.TEST.DEPTH.COMPLETION = True
    assert "DepthCompletionEvaluator" in kinds() and "DepthEvaluator" not in kinds()
    if "SPARSE_DEPTH" not in cfg.INPUT:
        cfg.INPUT.SPARSE_DEPTH = CfgNode({"NUM_SAMPLES": 0})
    cfg.INPUT.SPARSE_DEPTH.NUM_SAMPLES = 7
    (evaluator,) = [e for e in build_evaluators(cfg, name)._evaluators if isinstance(e, DepthCompletionEvaluator)]
    assert evaluator._num_samples == 7
