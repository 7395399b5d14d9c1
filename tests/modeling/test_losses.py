import math

import pytest
import torch

from segdep_d2.modeling.losses import berhu_loss, masked_l1_loss, silog_loss

PRED = torch.tensor([[1.0, 2.0], [4.0, 10.0]])
GT = torch.tensor([[2.0, 2.0], [5.0, 0.0]])
VALID = GT > 0


def test_masked_l1_by_hand():
    # residuals over the 3 valid pixels: 1, 0, 1 -> mean 2/3; the invalid pixel (10 vs 0) is ignored
    assert masked_l1_loss(PRED, GT, VALID).item() == pytest.approx(2 / 3)


def test_berhu_by_hand():
    pred = torch.tensor([0.0, 1.0, 5.0])
    gt = torch.tensor([0.5, 1.0, 1.0])
    valid = torch.ones(3, dtype=torch.bool)
    # residuals 0.5, 0, 4; c = 0.2 * 4 = 0.8 -> L1 for 0.5 and 0, (16 + 0.64) / 1.6 = 10.4 for 4
    assert berhu_loss(pred, gt, valid, threshold=0.2).item() == pytest.approx((0.5 + 0.0 + 10.4) / 3)


def test_silog_by_hand_and_scale_invariance():
    pred = torch.tensor([2.0, 4.0, 8.0])
    gt = torch.tensor([1.0, 4.0, 2.0])
    valid = torch.ones(3, dtype=torch.bool)
    e = [math.log(2), 0.0, math.log(4)]
    mean_sq = sum(v * v for v in e) / 3
    mean = sum(e) / 3
    assert silog_loss(pred, gt, valid, variance_focus=0.85).item() == pytest.approx(math.sqrt(mean_sq - 0.85 * mean**2), rel=1e-5)
    # with lambda = 1 the loss is the standard deviation of e, blind to a global scale
    assert silog_loss(pred * 3.0, gt, valid, variance_focus=1.0).item() == pytest.approx(
        silog_loss(pred, gt, valid, variance_focus=1.0).item(), rel=1e-4
    )


@pytest.mark.parametrize("loss", [masked_l1_loss, berhu_loss, silog_loss])
def test_no_valid_pixel_is_a_finite_zero_with_gradient(loss):
    pred = torch.rand(2, 3, requires_grad=True)
    value = loss(pred, torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(pred.grad, torch.zeros(2, 3))
