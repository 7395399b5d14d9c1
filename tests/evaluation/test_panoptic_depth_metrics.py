import contextlib
import io
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from segdep_d2.evaluation import (
    PanopticQualityStats,
    depth_aware_pq,
    image_panoptic_depth_stats,
    panoptic_quality_stats,
    segment_depths,
)

DIV = 1000
VOID = 255
VOID_ID = VOID * DIV


# ----------------------------------------------------------------------------------------------
# segment_depths
# ----------------------------------------------------------------------------------------------
def _brute_force(ids, depth, void_ids=(-1,), valid=None):
    ids, depth = np.asarray(ids), np.asarray(depth)
    if valid is not None:
        ids, depth = ids[valid], depth[valid]
    out = {}
    for seg in np.unique(ids):
        if seg in void_ids:
            continue
        values = depth[ids == seg]
        out[int(seg)] = {"depth": float(np.mean(values.astype(np.float64))), "depth_median": float(np.median(values)), "area": values.size}
    return out


def _torch_path(ids, depth, void_ids=(-1,), valid=None):
    """The model's call: torch tensors in."""
    return segment_depths(
        torch.as_tensor(ids), torch.as_tensor(depth), void_ids=void_ids,
        valid=None if valid is None else torch.as_tensor(valid),
    )


def _assert_same(result, expected, rtol=1e-6):
    assert set(result) == set(expected)
    for seg, values in expected.items():
        assert set(result[seg]) == {"depth", "depth_median", "area"}
        assert result[seg]["area"] == values["area"]
        assert result[seg]["depth"] == pytest.approx(values["depth"], rel=rtol)
        assert result[seg]["depth_median"] == pytest.approx(values["depth_median"], rel=rtol)


def test_segment_depths_odd_and_even_counts_by_hand():
    # segment 7: 1 pixel; 8: 2 pixels; 9: 3 pixels; 10: 4 pixels; -1: void
    ids = np.array([[7, 8, 8, 9, 9], [9, 10, 10, 10, 10], [-1, -1, -1, -1, -1]], dtype=np.int32)
    depth = np.array([[5.0, 1.0, 4.0, 9.0, 2.0], [6.0, 3.0, 1.0, 8.0, 2.0], [99.0] * 5], dtype=np.float32)
    out = segment_depths(ids, depth)
    assert out == {
        7: {"depth": 5.0, "depth_median": 5.0, "area": 1},
        8: {"depth": 2.5, "depth_median": 2.5, "area": 2},  # (1 + 4) / 2 both ways
        9: {"depth": pytest.approx(17 / 3), "depth_median": 6.0, "area": 3},  # sorted 2, 6, 9
        10: {"depth": 3.5, "depth_median": 2.5, "area": 4},  # sorted 1, 2, 3, 8: (2 + 3) / 2
    }
    assert segment_depths(torch.from_numpy(ids), torch.from_numpy(depth)) == out
    assert _torch_path(ids, depth) == out


@pytest.mark.parametrize("path", [segment_depths, _torch_path], ids=["numpy", "torch"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_segment_depths_matches_brute_force(path, dtype):
    rng = np.random.default_rng(3)
    ids = rng.choice([-1, 0, 1000, 1001, 1002, 2000, 17, 255000], size=(23, 31)).astype(np.int32)
    depth = rng.uniform(0.5, 80.0, size=ids.shape).astype(dtype)
    depth[rng.random(ids.shape) < 0.2] = 7.25  # ties
    expected = _brute_force(ids, depth)
    rtol = 1e-3 if dtype == np.float16 else 1e-6
    _assert_same(path(ids, depth), expected, rtol)
    _assert_same(path(torch.from_numpy(ids), torch.from_numpy(depth)), expected, rtol)
    # several void ids
    _assert_same(path(ids, depth, void_ids=(-1, 255000)), _brute_force(ids, depth, void_ids=(-1, 255000)), rtol)


@pytest.mark.parametrize("path", [segment_depths, _torch_path], ids=["numpy", "torch"])
def test_segment_depths_valid_mask_and_zero_depth(path):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 5, size=(16, 16)).astype(np.int64)
    depth = rng.uniform(0.0, 3.0, size=ids.shape).astype(np.float32)
    depth[0, :4] = 0.0
    _assert_same(path(ids, depth), _brute_force(ids, depth))
    valid = depth > 0
    _assert_same(path(ids, depth, valid=valid), _brute_force(ids, depth, valid=valid))
    # a segment without any valid pixel is absent
    valid[ids == 3] = False
    assert 3 not in path(ids, depth, valid=valid)


def test_segment_depths_rejects_bad_input():
    assert segment_depths(np.full((2, 2), -1), np.ones((2, 2), np.float32)) == {}
    assert segment_depths(np.zeros((2, 2), np.int32), np.ones((2, 2), np.float32), valid=np.zeros((2, 2), bool)) == {}
    with pytest.raises(ValueError, match="differ in size"):
        segment_depths(np.zeros((2, 2), np.int32), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        segment_depths(np.zeros((1, 2), np.int32), np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        segment_depths(np.zeros((1, 2), np.int32), np.array([[1.0, -2.0]], np.float32))
    with pytest.raises(TypeError, match="integers"):
        segment_depths(np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32))
    # ids beyond int32 are fine (no bit packing)
    assert segment_depths(np.array([[2**40]], np.int64), np.full((1, 1), 3.0, np.float32)) == {
        2**40: {"depth": 3.0, "depth_median": 3.0, "area": 1}
    }


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_segment_depths_cuda():
    rng = np.random.default_rng(5)
    ids = rng.integers(-1, 40, size=(64, 96)).astype(np.int32)
    depth = rng.uniform(1, 50, size=ids.shape).astype(np.float32)
    out = segment_depths(torch.from_numpy(ids).cuda(), torch.from_numpy(depth).cuda())
    _assert_same(out, _brute_force(ids, depth))


# ----------------------------------------------------------------------------------------------
# depth-aware PQ, hand-computed
# ----------------------------------------------------------------------------------------------
# categories: 1 road (stuff), 2 car (thing), 3 person (thing), 4 sky (stuff, never present)
CATEGORIES = [
    {"id": 1, "isthing": False},
    {"id": 2, "isthing": True},
    {"id": 3, "isthing": True},
    {"id": 4, "isthing": False},
]

# 4 x 4: road on the top two rows, car 2001 bottom-left 2 x 2, car 2002 bottom-right 2 x 2
GT = np.array(
    [
        [1000, 1000, 1000, 1000],
        [1000, 1000, 1000, 1000],
        [2001, 2001, 2002, 2002],
        [2001, 2001, 2002, 2002],
    ],
    dtype=np.int32,
)


def _dpq(pred, gt, pred_depth, gt_depth, thresholds=(0.1, 0.25, 0.5)):
    return depth_aware_pq(
        [pred], [gt], [pred_depth], [gt_depth],
        label_divisor=DIV, void_category=VOID, categories=CATEGORIES, thresholds=thresholds,
    )


def test_perfect_prediction():
    depth = np.full(GT.shape, 10.0, dtype=np.float32)
    res = _dpq(GT.copy(), GT, depth, depth)
    assert set(res) == {
        "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st",
        "DPQ@0.1", "DPQ@0.25", "DPQ@0.5", "DPQ",
    }
    for key, value in res.items():
        assert value == pytest.approx(100.0), key


def test_depth_error_breaks_exactly_one_match_at_0_1():
    gt_depth = np.full(GT.shape, 10.0, dtype=np.float32)
    pred_depth = gt_depth.copy()
    pred_depth[2, 0:2] = 12.0  # 2 of car 2001's 4 pixels: |12 - 10| / 10 = 0.2, in (0.1, 0.25]
    res = _dpq(GT.copy(), GT, pred_depth, gt_depth)
    assert res["PQ"] == pytest.approx(100.0)  # plain PQ ignores depth
    # lambda = 0.1: the two pixels leave prediction 2001, which keeps 2 pixels:
    # IoU = 2 / (2 + 4 - 2) = 0.5, not > 0.5 -> car: tp = 1 (2002, IoU 1), fp = 1, fn = 1
    # PQ_car = 1 / (1 + 0.5 + 0.5) = 0.5; PQ_road = 1; PQ = (1 + 0.5) / 2
    assert res["DPQ@0.1"] == pytest.approx(75.0)
    assert res["DPQ@0.25"] == pytest.approx(100.0)
    assert res["DPQ@0.5"] == pytest.approx(100.0)
    assert res["DPQ"] == pytest.approx((75.0 + 100.0 + 100.0) / 3)

    stats = image_panoptic_depth_stats(
        GT.copy(), GT, pred_depth, gt_depth, label_divisor=DIV, void_category=VOID, thresholds=(0.1,)
    )
    car = stats.dpq[0.1]
    assert (car.tp[2], car.fp[2], car.fn[2], car.iou[2]) == (1, 1, 1, 1.0)
    assert (stats.pq.tp[2], stats.pq.fp[2], stats.pq.fn[2]) == (2, 0, 0)
    assert sorted((m.gt_id, m.pred_id) for m in stats.matches) == [(1000, 1000), (2001, 2001), (2002, 2002)]


def test_a_wrong_depth_pixel_leaves_the_intersection():
    gt_depth = np.full(GT.shape, 10.0, dtype=np.float32)
    pred_depth = gt_depth.copy()
    pred_depth[2, 0] = 13.0  # one pixel of car 2001, error 0.3: wrong at 0.1 and 0.25
    res = _dpq(GT.copy(), GT, pred_depth, gt_depth)
    # prediction 2001 keeps 3 pixels: IoU = 3 / (3 + 4 - 3) = 0.75, still matched
    # PQ_car = (0.75 + 1) / 2 = 0.875; PQ = (1 + 0.875) / 2 = 0.9375
    assert res["DPQ@0.1"] == pytest.approx(93.75)
    assert res["DPQ@0.25"] == pytest.approx(93.75)
    assert res["DPQ@0.5"] == pytest.approx(100.0)


def test_pixels_without_gt_depth_are_not_depth_tested():
    gt_depth = np.full(GT.shape, 10.0, dtype=np.float32)
    pred_depth = gt_depth.copy()
    pred_depth[2, 0:2] = 50.0
    gt_depth[2, 0:2] = 0.0  # no measurement there
    res = _dpq(GT.copy(), GT, pred_depth, gt_depth)
    assert res["DPQ@0.1"] == pytest.approx(100.0)
    # no GT depth at all: DPQ equals PQ
    res = _dpq(GT.copy(), GT, pred_depth, None)
    assert res["DPQ"] == pytest.approx(res["PQ"]) == pytest.approx(100.0)


def test_void_handling():
    gt = GT.copy()
    gt[0, 2:4] = VOID_ID  # 2 road pixels are void
    gt[1, 2:4] = VOID_ID  # 2 more: road = 4 pixels, void = 4 pixels
    pred = GT.copy()  # predicts road over the void pixels too
    pred[0, 3] = 3001  # a person: 1 pixel on void ...
    pred[1, 3] = 3001  # ... 2 on void
    pred[0, 2] = 3001  # 3 on void ...
    pred[1, 1] = 3001  # ... and 1 on road: 3 / 4 > 0.5 on void -> ignored, not a FP
    stats, matches = panoptic_quality_stats(pred, gt, label_divisor=DIV, void_category=VOID)
    # road: GT 4 pixels; prediction 1000 = 3 road + 1 void pixels;
    # union = 4 + 4 - 3 - 1 (the void pixel is left out) = 4 -> IoU 3/4 (3/5 without the rule)
    assert stats.tp[1] == 1 and stats.iou[1] == pytest.approx(3 / 4) and stats.fn[1] == 0
    assert 3 not in stats.tp  # the person counts nowhere
    res = depth_aware_pq([pred], [gt], [None], [None], label_divisor=DIV, void_category=VOID, categories=CATEGORIES)
    assert res["PQ"] == pytest.approx(100 * (3 / 4 + 1) / 2)  # road, car

    # exactly half on void is not "more than half": a false positive
    pred[0, 2] = 1000
    pred[2, 2] = 3001  # person = 2 void + 2 non-void pixels (one of them car 2002)
    stats, _ = panoptic_quality_stats(pred, gt, label_divisor=DIV, void_category=VOID)
    assert stats.fp[3] == 1
    # road: 3 road + 2 void pixels, union = 5 + 4 - 3 - 2 = 4 -> 3/4; car 2002 lost 1 of 4 pixels:
    # IoU 3/4, car PQ (1 + 3/4) / 2; person: PQ 0
    assert stats.iou[1] == pytest.approx(3 / 4)
    res = depth_aware_pq([pred], [gt], [None], [None], label_divisor=DIV, void_category=VOID, categories=CATEGORIES)
    assert res["PQ"] == pytest.approx(100 * (0.75 + 0.875 + 0) / 3)

    # void predictions (-1, as Panoptic-DeepLab emits) are no segment at all
    pred = GT.copy()
    pred[3, 3] = -1
    stats, _ = panoptic_quality_stats(pred, GT, label_divisor=DIV, void_category=VOID)
    assert stats.iou[2] == pytest.approx(1 + 3 / 4) and sum(stats.fp.values()) == 0


def test_things_and_stuff_split():
    pred = GT.copy()
    pred[GT == 2002] = 3001  # car 2002 predicted as a person
    res = _dpq(pred, GT, None, None)
    # car: tp 1 fn 1 -> PQ 1 / 1.5 = 2/3, SQ 1, RQ 2/3; person: fp 1 -> 0, 0, 0; road: 1, 1, 1;
    # sky never occurs and does not count
    assert res["PQ_th"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert res["SQ_th"] == pytest.approx(100 * (1 + 0) / 2)
    assert res["RQ_th"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert res["PQ_st"] == res["SQ_st"] == res["RQ_st"] == pytest.approx(100.0)
    assert res["PQ"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert res["DPQ"] == pytest.approx(res["PQ"])  # no GT depth


def test_unknown_category_raises():
    pred = GT.copy()
    pred[0, 0] = 9001
    with pytest.raises(ValueError):
        _dpq(pred, GT, None, None)


def test_stats_accumulate_and_pickle():
    a = PanopticQualityStats().add(1, tp=1, iou=0.8).add(2, fn=2)
    b = PanopticQualityStats().add(1, fp=1).add(3, tp=2, iou=1.5)
    total = sum([a, b])
    assert (total.tp, total.fp, total.fn) == ({1: 1, 2: 0, 3: 2}, {1: 1, 2: 0, 3: 0}, {1: 0, 2: 2, 3: 0})
    assert total.iou == pytest.approx({1: 0.8, 2: 0.0, 3: 1.5})
    assert pickle.loads(pickle.dumps(total)) == total
    assert a.tp == {1: 1, 2: 0}  # operands untouched
    # accumulated images give the numbers of the whole set
    gt_depth = np.full(GT.shape, 10.0, dtype=np.float32)
    bad = gt_depth.copy()
    bad[2, 0:2] = 12.0
    res = depth_aware_pq(
        [GT, GT], [GT, GT], [gt_depth, bad], [gt_depth, gt_depth],
        label_divisor=DIV, void_category=VOID, categories=CATEGORIES,
    )
    # lambda = 0.1: car tp 3 (IoU 1 each), fp 1, fn 1 -> 3 / 4; road 1 -> (1 + 0.75) / 2
    assert res["DPQ@0.1"] == pytest.approx(87.5)


# ----------------------------------------------------------------------------------------------
# PQ against panopticapi's pq_compute
# ----------------------------------------------------------------------------------------------
RANDOM_CATEGORIES = [
    {"id": 0, "isthing": False},
    {"id": 1, "isthing": False},
    {"id": 2, "isthing": False},
    {"id": 3, "isthing": True},
    {"id": 4, "isthing": True},
    {"id": 5, "isthing": True},
]
EXTRA = 9  # the "matches nothing" category of ViP-DeepLab's evaluation script


def _rect(rng, h, w, lo=4, hi=14):
    rh, rw = rng.integers(lo, hi, size=2)
    y, x = rng.integers(0, h - rh), rng.integers(0, w - rw)
    return slice(y, y + rh), slice(x, x + rw)


def _synthetic_pair(rng, h=36, w=52):
    gt = np.zeros((h, w), dtype=np.int64)
    bands = np.sort(rng.integers(4, h - 4, size=2))
    gt[: bands[0]] = 0 * DIV
    gt[bands[0] : bands[1]] = 1 * DIV
    gt[bands[1] :] = 2 * DIV
    instances = []
    for i, cat in enumerate([3, 4, 5, 3, 4, 3]):
        ys, xs = _rect(rng, h, w)
        gt[ys, xs] = cat * DIV + i + 1
        instances.append((cat, i + 1, ys, xs))
    ys, xs = _rect(rng, h, w, 3, 8)
    gt[ys, xs] = VOID_ID

    pred = gt.copy()
    pred[gt == VOID_ID] = 1 * DIV  # stuff predicted over void
    for cat, inst, ys, xs in instances:
        action = rng.integers(0, 5)
        region = gt == cat * DIV + inst
        if action == 0:  # missed: background stuff over it
            pred[region] = 2 * DIV
        elif action == 1:  # shifted by a few pixels
            pred[region] = 1 * DIV
            dy, dx = rng.integers(-3, 4, size=2)
            pred[np.roll(np.roll(region, dy, 0), dx, 1)] = cat * DIV + inst
        elif action == 2:  # wrong class
            pred[region] = (3 + (cat - 2) % 3) * DIV + inst
        # 3, 4: kept as is (possibly overlapped by later objects)
    for j in range(2):  # false positives
        ys, xs = _rect(rng, h, w, 3, 7)
        pred[ys, xs] = 5 * DIV + 50 + j
    ys, xs = _rect(rng, h, w, 2, 6)
    pred[ys, xs] = -1  # void prediction
    ys, xs = _rect(rng, h, w, 3, 6)  # a prediction that may sit on void GT
    pred[ys, xs] = 4 * DIV + 77
    gt_depth = rng.uniform(1.0, 50.0, size=(h, w)).astype(np.float32)
    gt_depth[rng.random((h, w)) < 0.1] = 0.0
    pred_depth = (gt_depth * rng.uniform(0.4, 1.7, size=(h, w))).astype(np.float32)
    return pred, gt, pred_depth, gt_depth


def _to_panopticapi(label_map, folder, name, with_area, crowd_ids=()):
    """Our map -> panopticapi PNG (id = label + 1, 0 = void) + segments_info."""
    void = (label_map < 0) | (label_map // DIV == VOID)
    png_ids = np.where(void, 0, label_map + 1).astype(np.uint32)
    rgb = np.stack([png_ids % 256, png_ids // 256 % 256, png_ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(folder / name)
    segments = []
    for seg_id, area in zip(*np.unique(png_ids, return_counts=True)):
        if seg_id == 0:
            continue
        info = {"id": int(seg_id), "category_id": int((seg_id - 1) // DIV), "iscrowd": int(seg_id - 1 in crowd_ids)}
        if with_area:
            info["area"] = int(area)
        segments.append(info)
    return segments


def _pq_compute(tmp_path, preds, gts, categories, crowds=None):
    from panopticapi.evaluation import pq_compute

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(parents=True, exist_ok=True)
    pred_dir.mkdir(parents=True, exist_ok=True)
    gt_ann, pred_ann = [], []
    crowds = crowds or [()] * len(gts)
    for i, (pred, gt, crowd) in enumerate(zip(preds, gts, crowds)):
        name = f"{i}.png"
        gt_ann.append({"image_id": i, "file_name": name, "segments_info": _to_panopticapi(gt, gt_dir, name, True, crowd)})
        pred_ann.append({"image_id": i, "file_name": name, "segments_info": _to_panopticapi(pred, pred_dir, name, False)})
    cats = [{"id": c["id"], "name": str(c["id"]), "isthing": int(c["isthing"])} for c in categories]
    (tmp_path / "gt.json").write_text(json.dumps({"images": [], "annotations": gt_ann, "categories": cats}))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred_ann}))
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute(str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), str(gt_dir), str(pred_dir))


def test_pq_equals_panopticapi(tmp_path):
    rng = np.random.default_rng(2024)
    samples = [_synthetic_pair(rng) for _ in range(4)]
    preds, gts = [s[0] for s in samples], [s[1] for s in samples]
    expected = _pq_compute(tmp_path, preds, gts, RANDOM_CATEGORIES)
    res = depth_aware_pq(
        preds, gts, [s[2] for s in samples], [s[3] for s in samples],
        label_divisor=DIV, void_category=VOID, categories=RANDOM_CATEGORIES,
    )
    for ours, theirs in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for metric in ("PQ", "SQ", "RQ"):
            assert res[metric + ours] == pytest.approx(100 * expected[theirs][metric.lower()], abs=1e-9)
    # the synthetic data exercises every case
    total = sum(
        image_panoptic_depth_stats(p, g, None, None, label_divisor=DIV, void_category=VOID, thresholds=()).pq
        for p, g in zip(preds, gts)
    )
    assert sum(total.fp.values()) > 0 and sum(total.fn.values()) > 0 and sum(total.tp.values()) > 0
    assert 0 < res["PQ"] < 100


@pytest.mark.parametrize("threshold", [0.1, 0.25, 0.5])
def test_dpq_equals_vip_deeplab_relabelling_through_panopticapi(tmp_path, threshold):
    """ViP-DeepLab's eval_dvpq.py: wrong-depth pixels get an extra category whose classes are then
    dropped. Reproduced with panopticapi: the extra category is evaluated, and left out of the mean."""
    rng = np.random.default_rng(7)
    samples = [_synthetic_pair(rng) for _ in range(3)]
    relabelled = []
    for pred, gt, pred_depth, gt_depth in samples:
        has_depth = gt_depth > 0
        error = np.zeros_like(gt_depth)
        error[has_depth] = np.abs(pred_depth[has_depth] - gt_depth[has_depth]) / gt_depth[has_depth]
        relabelled.append(np.where(has_depth & (error > threshold), EXTRA * DIV, pred))
    # every real category occurs in the ground truth, so every one counts in the mean
    present = set(np.concatenate([np.unique(s[1] // DIV) for s in samples]).tolist())
    assert {c["id"] for c in RANDOM_CATEGORIES} <= present
    expected = _pq_compute(
        tmp_path, relabelled, [s[1] for s in samples], RANDOM_CATEGORIES + [{"id": EXTRA, "isthing": False}]
    )
    per_class = expected["per_class"]
    vip_dpq = 100 * np.mean([per_class[c["id"]]["pq"] for c in RANDOM_CATEGORIES])
    res = depth_aware_pq(
        [s[0] for s in samples], [s[1] for s in samples], [s[2] for s in samples], [s[3] for s in samples],
        label_divisor=DIV, void_category=VOID, categories=RANDOM_CATEGORIES, thresholds=(threshold,),
    )
    assert res[f"DPQ@{threshold:g}"] == pytest.approx(vip_dpq, abs=1e-9)
    assert res[f"DPQ@{threshold:g}"] < res["PQ"]


# ----------------------------------------------------------------------------------------------
# crowd regions, against panopticapi
# ----------------------------------------------------------------------------------------------
def _with_crowd(rng, pred, gt):
    """Adds GT crowd regions of several categories (things and a stuff class) and predictions
    on them: one of the crowd's own category (forgiven when unmatched), one of another category
    (not forgiven), one that straddles a crowd region and a GT instance of its category."""
    gt, pred = gt.copy(), pred.copy()
    crowd_ids = []
    for k, cat in enumerate((3, 4, 1)):
        ys, xs = _rect(rng, *gt.shape, 5, 12)
        crowd_id = cat * DIV + 900 + k
        gt[ys, xs] = crowd_id
        crowd_ids.append(crowd_id)
        own, other = rng.integers(0, 2, size=2)
        if own:  # a prediction of the crowd's category, mostly inside it
            pred[ys, xs] = cat * DIV + 60 + k
        if other:  # a prediction of another category on the same crowd region
            pred[ys.start : ys.start + 3, xs] = (5 if cat != 5 else 3) * DIV + 70 + k
    return pred, gt, crowd_ids


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_pq_and_dpq_with_crowd_regions_equal_panopticapi(tmp_path, seed):
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(4):
        pred, gt, pred_depth, gt_depth = _synthetic_pair(rng)
        pred, gt, crowd = _with_crowd(rng, pred, gt)
        samples.append((pred, gt, pred_depth, gt_depth, crowd))
    preds, gts, crowds = [s[0] for s in samples], [s[1] for s in samples], [s[4] for s in samples]
    res = depth_aware_pq(
        preds, gts, [s[2] for s in samples], [s[3] for s in samples],
        label_divisor=DIV, void_category=VOID, categories=RANDOM_CATEGORIES, crowd_ids=crowds,
    )
    expected = _pq_compute(tmp_path / "pq", preds, gts, RANDOM_CATEGORIES, crowds)
    for ours, theirs in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for metric in ("PQ", "SQ", "RQ"):
            assert res[metric + ours] == pytest.approx(100 * expected[theirs][metric.lower()], abs=1e-9)
    # crowd regions changed the result: treating them as void for every category differs
    as_void = [np.where(np.isin(g, c), VOID_ID, g) for g, c in zip(gts, crowds)]
    res_void = depth_aware_pq(
        preds, as_void, [s[2] for s in samples], [s[3] for s in samples],
        label_divisor=DIV, void_category=VOID, categories=RANDOM_CATEGORIES,
    )
    assert res_void["PQ"] != pytest.approx(res["PQ"], abs=1e-9)

    for threshold in (0.1, 0.25, 0.5):  # ViP-DeepLab's relabelling, through panopticapi
        relabelled = []
        for pred, gt, pred_depth, gt_depth, _ in samples:
            has_depth = gt_depth > 0
            error = np.zeros_like(gt_depth)
            error[has_depth] = np.abs(pred_depth[has_depth] - gt_depth[has_depth]) / gt_depth[has_depth]
            relabelled.append(np.where(has_depth & (error > threshold), EXTRA * DIV, pred))
        folder = tmp_path / f"dpq{threshold}"
        expected = _pq_compute(folder, relabelled, gts, RANDOM_CATEGORIES + [{"id": EXTRA, "isthing": False}], crowds)
        per_class = expected["per_class"]
        # the mean over the real categories with tp + fp + fn > 0 (EXTRA's segments are dropped)
        stats = sum(
            image_panoptic_depth_stats(
                p, g, pd, gd, label_divisor=DIV, void_category=VOID, thresholds=(threshold,), crowd_ids=c
            ).dpq[threshold]
            for p, g, pd, gd, c in samples
        )
        present = [
            c["id"] for c in RANDOM_CATEGORIES if stats.tp.get(c["id"], 0) + stats.fp.get(c["id"], 0) + stats.fn.get(c["id"], 0)
        ]
        vip_dpq = 100 * np.mean([per_class[cid]["pq"] for cid in present])
        assert res[f"DPQ@{threshold:g}"] == pytest.approx(vip_dpq, abs=1e-9)


def test_crowd_rules_by_hand():
    # 4 x 4: road on top, a car crowd region bottom-left, car 2001 bottom-right
    gt = np.array(
        [[1000] * 4, [1000] * 4, [2900, 2900, 2001, 2001], [2900, 2900, 2001, 2001]], dtype=np.int64
    )
    crowd = [2900]
    # a car prediction on the crowd region is forgiven; a person prediction there is not
    pred = gt.copy()
    pred[2:, :2] = 2005
    stats, _ = panoptic_quality_stats(pred, gt, label_divisor=DIV, void_category=VOID, crowd_ids=crowd)
    assert (stats.tp, stats.fp, stats.fn) == ({1: 1, 2: 1}, {1: 0, 2: 0}, {1: 0, 2: 0})
    pred[2:, :2] = 3005
    stats, _ = panoptic_quality_stats(pred, gt, label_divisor=DIV, void_category=VOID, crowd_ids=crowd)
    assert stats.fp == {1: 0, 2: 0, 3: 1}
    # as void for all categories (the old rule), the person prediction would be forgiven too
    stats, _ = panoptic_quality_stats(
        pred, np.where(gt == 2900, VOID_ID, gt), label_divisor=DIV, void_category=VOID
    )
    assert stats.fp.get(3, 0) == 0
    # a matched car keeps its crowd pixels in the union (panopticapi subtracts only void)
    pred = gt.copy()
    pred[2, 1] = 2001  # one crowd pixel joins car 2001's prediction
    pred[2:, 0] = 1000
    pred[3, 1] = 1000
    stats, matches = panoptic_quality_stats(pred, gt, label_divisor=DIV, void_category=VOID, crowd_ids=crowd)
    car = [m for m in matches if m.category == 2]
    assert len(car) == 1 and car[0].iou == pytest.approx(4 / 5)  # union 5: the crowd pixel counts
    assert stats.fn.get(2, 0) == 0  # the crowd region is never a false negative
