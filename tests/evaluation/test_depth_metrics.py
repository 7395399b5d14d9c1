import math

import numpy as np
import pytest
import torch

from segdep_d2.evaluation import DEPTH_METRIC_NAMES, depth_metrics, eval_crop_mask


# A 2 x 3 image. The bottom-left GT pixel is 0 (no measurement) and the bottom-right one is 100 m,
# beyond max_depth = 80: only the four pairs (g, p) = (1, 2), (2, 2), (5, 6), (8, 12) count.
GT = np.array([[1.0, 2.0, 5.0], [0.0, 8.0, 100.0]], dtype=np.float32)
PRED = np.array([[2.0, 2.0, 6.0], [3.0, 12.0, 50.0]], dtype=np.float32)


def test_hand_computed_2x3():
    m = depth_metrics(PRED, GT, 1e-3, 80.0)
    assert set(m) == set(DEPTH_METRIC_NAMES)
    assert all(isinstance(v, float) for v in m.values())
    # |g - p| = 1, 0, 1, 4
    assert m["AbsRel"] == pytest.approx((1 / 1 + 0 / 2 + 1 / 5 + 4 / 8) / 4)  # 0.425
    assert m["AbsRel"] == pytest.approx(0.425)
    # (g - p)^2 / g = 1/1, 0/2, 1/5, 16/8
    assert m["SqRel"] == pytest.approx((1 + 0 + 0.2 + 2) / 4)  # 0.8
    # (g - p)^2 = 1, 0, 1, 16
    assert m["RMSE"] == pytest.approx(math.sqrt((1 + 0 + 1 + 16) / 4))  # sqrt(4.5)
    # ln g - ln p = ln(1/2), 0, ln(5/6), ln(8/12)
    assert m["RMSE_log"] == pytest.approx(
        math.sqrt((math.log(0.5) ** 2 + 0 + math.log(5 / 6) ** 2 + math.log(8 / 12) ** 2) / 4)
    )
    assert m["log10"] == pytest.approx((math.log10(2) + 0 + math.log10(1.2) + math.log10(1.5)) / 4)
    # e = ln p - ln g = ln 2, 0, ln 1.2, ln 1.5
    e = [math.log(2), 0.0, math.log(1.2), math.log(1.5)]
    mean_e = sum(e) / 4
    mean_e2 = sum(x * x for x in e) / 4
    assert m["SILog"] == pytest.approx(100 * math.sqrt(mean_e2 - mean_e**2))
    # max(g/p, p/g) = 2, 1, 1.2, 1.5 against 1.25, 1.5625, 1.953125
    assert m["d1"] == pytest.approx(2 / 4)
    assert m["d2"] == pytest.approx(3 / 4)
    assert m["d3"] == pytest.approx(3 / 4)


def test_torch_inputs_give_the_same_numbers():
    a = depth_metrics(PRED, GT)
    b = depth_metrics(torch.from_numpy(PRED), torch.from_numpy(GT))
    assert a == pytest.approx(b)


def test_prediction_is_clamped_to_the_range():
    gt = np.array([[10.0, 20.0]])
    pred = np.array([[0.0, 1000.0]])  # -> 0.001 and 80
    m = depth_metrics(pred, gt, 1e-3, 80.0)
    assert m["AbsRel"] == pytest.approx((abs(10 - 0.001) / 10 + abs(20 - 80) / 20) / 2)  # 1.99995
    assert m["RMSE"] == pytest.approx(math.sqrt(((10 - 0.001) ** 2 + 60**2) / 2))
    assert np.isfinite(m["RMSE_log"]) and np.isfinite(m["SILog"])


def test_range_masking_excludes_gt_at_or_beyond_the_bounds():
    gt = np.array([[80.0, 10.0, 1e-3, 90.0]])
    pred = np.array([[1.0, 10.0, 50.0, 1.0]])
    m = depth_metrics(pred, gt, 1e-3, 80.0)  # only gt = 10 is inside (1e-3, 80)
    assert m["AbsRel"] == 0.0 and m["RMSE"] == 0.0 and m["d1"] == 1.0
    # raising max_depth brings the 80 m pixel in: |80 - 1| / 80 over 2 pixels
    m = depth_metrics(pred, gt, 1e-3, 85.0)
    assert m["AbsRel"] == pytest.approx((79 / 80 + 0) / 2)


def test_median_scaling():
    gt = np.array([[1.0, 2.0, 3.0]])
    pred = np.array([[2.0, 4.0, 6.0]])  # twice too far
    assert depth_metrics(pred, gt)["AbsRel"] == pytest.approx(1.0)
    m = depth_metrics(pred, gt, median_scaling=True)  # x median(gt) / median(pred) = 2 / 4
    assert m["AbsRel"] == pytest.approx(0.0)
    assert m["RMSE"] == pytest.approx(0.0)
    assert m["d1"] == 1.0
    # scaling uses the valid pixels only (the 0 and the 100 m pixels are ignored)
    gt = np.array([[1.0, 2.0, 3.0, 0.0, 100.0]])
    pred = np.array([[3.0, 6.0, 9.0, 50.0, 50.0]])
    assert depth_metrics(pred, gt, median_scaling=True)["AbsRel"] == pytest.approx(0.0)


def test_crop_masks_follow_the_bts_fractions():
    garg = eval_crop_mask(100, 100, "garg")
    # rows int(40.810811)=40 .. int(99.189189)=99, cols int(3.594771)=3 .. int(96.405229)=96
    assert garg.sum() == (99 - 40) * (96 - 3)
    assert garg[40, 3] and garg[98, 95] and not garg[39, 50] and not garg[99, 50] and not garg[50, 96]
    eigen = eval_crop_mask(100, 100, "eigen")
    # rows int(33.24324)=33 .. int(91.351351)=91, cols 3 .. 96
    assert eigen.sum() == (91 - 33) * (96 - 3)
    assert eigen[33, 3] and not eigen[32, 3] and not eigen[91, 3]
    kitti = eval_crop_mask(375, 1242, "garg")  # the usual KITTI size
    rows, cols = np.flatnonzero(kitti.any(1)), np.flatnonzero(kitti.any(0))
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (153, 371, 44, 1197)
    nyu = eval_crop_mask(480, 640, "nyu")
    rows, cols = np.flatnonzero(nyu.any(1)), np.flatnonzero(nyu.any(0))
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (45, 471, 41, 601)
    assert eval_crop_mask(4, 5, None).all()
    with pytest.raises(ValueError):
        eval_crop_mask(4, 5, "bogus")


def test_crop_restricts_the_evaluated_pixels():
    gt = np.full((100, 100), 10.0)
    pred = np.full((100, 100), 20.0)
    pred[eval_crop_mask(100, 100, "garg")] = 10.0  # right inside the crop only
    assert depth_metrics(pred, gt, crop="garg")["AbsRel"] == 0.0
    inside = (99 - 40) * (96 - 3)
    assert depth_metrics(pred, gt)["AbsRel"] == pytest.approx((10000 - inside) / 10000 * 1.0)
    # an explicit boolean mask works too
    mask = np.zeros((100, 100), dtype=bool)
    mask[0, 0] = True
    assert depth_metrics(pred, gt, crop=mask)["AbsRel"] == pytest.approx(1.0)


def test_no_valid_pixel_returns_none():
    assert depth_metrics(np.ones((2, 3)), np.zeros((2, 3))) is None
    assert depth_metrics(np.ones((2, 3)), np.full((2, 3), 80.0)) is None  # all at max_depth
    gt = np.zeros((100, 100))
    gt[0, 0] = 5.0  # valid, but outside the Garg crop
    assert depth_metrics(np.ones((100, 100)), gt, crop="garg") is None


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        depth_metrics(np.ones((2, 3)), np.ones((3, 2)))


def test_silog_is_scale_invariant():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1.0, 20.0, size=(8, 9))
    pred = gt * rng.uniform(0.7, 1.4, size=gt.shape)
    base = depth_metrics(pred, gt, 1e-3, 1000.0)["SILog"]
    for k in (0.5, 2.0, 3.7):
        assert depth_metrics(pred * k, gt, 1e-3, 1000.0)["SILog"] == pytest.approx(base, rel=1e-9)
    # ... while the other metrics are not
    assert depth_metrics(pred * 2, gt, 1e-3, 1000.0)["AbsRel"] != pytest.approx(
        depth_metrics(pred, gt, 1e-3, 1000.0)["AbsRel"]
    )


def test_silog_is_a_standard_deviation_not_a_mean_of_log_differences():
    gt = np.array([[2.0, 4.0]])
    # a uniformly doubled prediction: every log difference is ln 2, yet SILog is 0
    assert depth_metrics(gt * 2, gt)["SILog"] == pytest.approx(0.0, abs=1e-6)
    # e = ln p - ln g = 0, 0, ln 2: mean(e) = ln2 / 3, mean(e^2) = ln2^2 / 3
    m = depth_metrics(np.array([[2.0, 4.0, 8.0]]), np.array([[2.0, 4.0, 4.0]]))
    ln2 = math.log(2)
    assert m["SILog"] == pytest.approx(100 * math.sqrt(ln2**2 / 3 - (ln2 / 3) ** 2))  # 100 ln2 sqrt(2) / 3
    assert m["SILog"] == pytest.approx(32.6753, abs=1e-4)
    assert abs(m["SILog"] - 100 * ln2 / 3) > 5  # not 100 * mean(e)
    assert abs(m["SILog"] - 100 * ln2 / math.sqrt(3)) > 5  # not 100 * sqrt(mean(e^2))
