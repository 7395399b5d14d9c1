import math

import pytest
import torch

from segdep_d2.modeling.losses import berhu_loss, berhu_relative, masked_l1_loss, silog_loss

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


def test_berhu_with_an_absolute_delta_by_hand():
    # SafeTrip-Q: delta = 0.1 on depth / 80 m, whatever the batch's largest residual
    pred = torch.tensor([0.05, 0.30, 0.10])
    gt = torch.tensor([0.0, 0.0, 0.10])
    valid = torch.ones(3, dtype=torch.bool)
    # residuals 0.05 (L1), 0.3 -> (0.09 + 0.01) / 0.2 = 0.5, 0
    assert berhu_loss(pred, gt, valid, threshold=0.1, relative=False).item() == pytest.approx((0.05 + 0.5) / 3)
    # relative: c = 0.1 * 0.3 = 0.03 -> 0.05 becomes (0.0025 + 0.0009) / 0.06
    assert berhu_loss(pred, gt, valid, threshold=0.1).item() == pytest.approx(
        ((0.0025 + 0.0009) / 0.06 + (0.09 + 0.0009) / 0.06) / 3
    )
    with pytest.raises(ValueError, match="BERHU_THRESHOLD_MODE"):
        berhu_relative("fixed")


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


# --- SegDep losses: boundary-aware focal, open-vocab distillation, InfoNCE alignment -------------

from segdep_d2.modeling.losses import (  # noqa: E402
    boundary_aware_focal_loss,
    info_nce_alignment_loss,
    label_boundary_band,
    masked_cross_entropy,
    open_vocab_distillation_loss,
)

IG = 255
BAND_MAP = torch.tensor(
    [
        [0, 0, 0, 1, 1],
        [0, 0, 0, 1, 1],
        [0, 0, IG, IG, 1],
        [0, 0, IG, IG, IG],
    ]
)


def test_label_boundary_band_by_hand():
    T, F_ = True, False
    # band 1: a 3x3 window holding two different labelled labels; labelled vs ignore is no boundary
    # (e.g. (1, 1) sees 0 and ignore only), ignore pixels next to the 0|1 change are in the band
    expected_1 = torch.tensor(
        [
            [F_, F_, T, T, F_],
            [F_, F_, T, T, F_],
            [F_, F_, T, T, F_],
            [F_, F_, F_, F_, F_],
        ]
    )
    expected_2 = torch.tensor(
        [
            [F_, T, T, T, T],
            [F_, T, T, T, T],
            [F_, T, T, T, T],
            [F_, T, T, T, T],
        ]
    )
    target = BAND_MAP.unsqueeze(0)
    assert torch.equal(label_boundary_band(target, 1, ignore_index=IG), expected_1.unsqueeze(0))
    assert torch.equal(label_boundary_band(target, 2, ignore_index=IG), expected_2.unsqueeze(0))
    assert not label_boundary_band(target, 0, ignore_index=IG).any()
    # per image, never across the batch; a single label (plus ignore) has no boundary
    single = torch.where(BAND_MAP == 1, torch.tensor(0), BAND_MAP)
    both = label_boundary_band(torch.stack([single, BAND_MAP]), 1, ignore_index=IG)
    assert both.dtype == torch.bool and both.shape == (2, 4, 5)
    assert not both[0].any() and torch.equal(both[1], expected_1)


def _focal(d, gamma):
    # binary focal term for a pixel whose true-class logit exceeds the other one by d
    p = 1.0 / (1.0 + math.exp(-d))
    return -((1.0 - p) ** gamma) * math.log(p)


# N=1, C=2, H=2, W=3; class-1 logits are 0, so the margin of the true class is +-(class-0 logit)
FOCAL_LOGITS = torch.tensor([[[[2.0, 0.0, 0.0], [1.0, 5.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]])
FOCAL_TARGET = torch.tensor([[[0, 0, 1], [0, IG, 1]]])


def test_boundary_aware_focal_by_hand():
    # band 1 on [[0 0 1] [0 ig 1]]: columns 1 and 2 -> weight 1 + boost = 3 there, 1 in column 0
    margins = [2.0, 0.0, 0.0, 1.0, 1.0]  # (0,0) (0,1) (0,2) (1,0) (1,2); (1,1) is ignored
    weights = [1.0, 3.0, 3.0, 1.0, 3.0]
    expected = sum(w * _focal(d, 2.0) for w, d in zip(weights, margins)) / sum(weights)
    value = boundary_aware_focal_loss(FOCAL_LOGITS, FOCAL_TARGET, ignore_index=IG, gamma=2.0, band=1, boost=2.0)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # boost 0 (or band 0): the plain focal loss, an unweighted mean
    plain = sum(_focal(d, 2.0) for d in margins) / 5
    for kwargs in ({"band": 1, "boost": 0.0}, {"band": 0, "boost": 2.0}):
        value = boundary_aware_focal_loss(FOCAL_LOGITS, FOCAL_TARGET, ignore_index=IG, gamma=2.0, **kwargs)
        assert value.item() == pytest.approx(plain, rel=1e-5)
    # gamma 0: boundary-weighted cross-entropy; with class weights (1, 2) the pixel weights multiply
    class_w = [1.0, 1.0, 2.0, 1.0, 2.0]
    expected = sum(w * c * _focal(d, 0.0) for w, c, d in zip(weights, class_w, margins)) / sum(
        w * c for w, c in zip(weights, class_w)
    )
    value = boundary_aware_focal_loss(
        FOCAL_LOGITS, FOCAL_TARGET, ignore_index=IG, gamma=0.0, band=1, boost=2.0,
        class_weights=torch.tensor([1.0, 2.0]),
    )
    assert value.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("class_weights", [None, torch.tensor([0.5, 1.0, 3.0, 2.0])])
def test_focal_with_gamma_0_and_boost_0_is_masked_cross_entropy(class_weights):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 7) * 3
    target = torch.randint(0, 4, (2, 6, 7))
    target[0, :2] = IG
    reference = masked_cross_entropy(logits, target, ignore_index=IG, weight=class_weights)
    value = boundary_aware_focal_loss(
        logits, target, ignore_index=IG, gamma=0.0, band=3, boost=0.0, class_weights=class_weights
    )
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    # the focal factor only lowers each term, and the boost only moves the weighted mean
    assert boundary_aware_focal_loss(logits, target, ignore_index=IG, gamma=2.0, boost=0.0) < reference


def test_focal_is_stable_and_its_gradient_flows_to_labelled_pixels_only():
    logits = (FOCAL_LOGITS * 100.0).requires_grad_(True)  # saturated probabilities (p_t -> 0 or 1)
    for gamma in (0.5, 2.0):
        logits.grad = None
        value = boundary_aware_focal_loss(logits, FOCAL_TARGET, ignore_index=IG, gamma=gamma, band=1, boost=2.0)
        assert torch.isfinite(value)
        value.backward()
        assert torch.isfinite(logits.grad).all()
        assert torch.equal(logits.grad[0, :, 1, 1], torch.zeros(2))  # the ignored pixel
        assert logits.grad[0, :, 0, 2].abs().sum() > 0  # a misclassified labelled pixel (margin -0 -> p 0.5)


def test_open_vocab_distillation_by_hand():
    # one 2-class pixel: teacher softmax(ln 3, 0) = (3/4, 1/4), student softmax(0, 0) = (1/2, 1/2)
    closed = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)
    prompt = torch.zeros(1, 2, 1, 1)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert open_vocab_distillation_loss(prompt, closed).item() == pytest.approx(kl, rel=1e-5)
    # temperature 2: teacher softmax(ln 3 / 2, 0) = (sqrt3, 1) / (sqrt3 + 1), times T^2 = 4
    s = math.sqrt(3.0)
    p = (s / (s + 1), 1 / (s + 1))
    kl_t2 = 4 * (p[0] * math.log(p[0] / 0.5) + p[1] * math.log(p[1] / 0.5))
    assert open_vocab_distillation_loss(prompt, closed, temperature=2.0).item() == pytest.approx(kl_t2, rel=1e-5)
    # equal logits: exactly no divergence
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3, 4)
    assert open_vocab_distillation_loss(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_open_vocab_distillation_masks_by_target_and_detaches_the_teacher():
    # pixel 0 as above (KL k0); pixel 1 has a different teacher; only pixel 0 is labelled
    closed = torch.tensor([[math.log(3.0), 0.0], [5.0, -5.0]]).t().reshape(1, 2, 1, 2).requires_grad_(True)
    prompt = torch.zeros(1, 2, 1, 2, requires_grad=True)
    target = torch.tensor([[[1, IG]]])
    k0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    value = open_vocab_distillation_loss(prompt, closed, target=target, ignore_index=IG)
    assert value.item() == pytest.approx(k0, rel=1e-5)
    value.backward()
    assert closed.grad is None  # teacher detached
    # d KL / d student logits = q - p = (1/2 - 3/4, 1/2 - 1/4) at the labelled pixel, 0 at the other
    assert torch.allclose(prompt.grad[0, :, 0, 0], torch.tensor([-0.25, 0.25]), atol=1e-6)
    assert torch.equal(prompt.grad[0, :, 0, 1], torch.zeros(2))
    # averaged over all pixels without a target
    teacher_1 = torch.tensor([5.0, -5.0])  # KL(p || uniform) = sum p ln p + ln 2
    kl_1 = float((torch.softmax(teacher_1, 0) * torch.log_softmax(teacher_1, 0)).sum()) + math.log(2)
    assert open_vocab_distillation_loss(prompt, closed).item() == pytest.approx((k0 + kl_1) / 2, rel=1e-5)


def test_info_nce_alignment_by_hand():
    # text: class 0 = x, class 1 = y, class 2 = -x (absent from the batch, so not a negative)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # 1 image, 4 pixels: class 0 at (2, 0) and (0, 3) (normalised: x and y, pooled: (x + y) / sqrt2),
    # class 1 at (3, 4) (normalised (0.6, 0.8)), and an ignored pixel that must not count
    pixels = torch.tensor([[2.0, 0.0], [0.0, 3.0], [3.0, 4.0], [-7.0, 1.0]]).t().reshape(1, 2, 1, 4)
    target = torch.tensor([[[0, 0, 1, IG]]])
    tau = 0.5
    # class 0: equal similarities 1/sqrt2 to x and y -> CE ln 2; class 1: logits 0.6/tau, 0.8/tau
    ce0 = math.log(2.0)
    ce1 = math.log(1.0 + math.exp((0.6 - 0.8) / tau))
    value = info_nce_alignment_loss(pixels, text, target, ignore_index=IG, temperature=tau)
    assert value.item() == pytest.approx((ce0 + ce1) / 2, rel=1e-5)


def test_info_nce_negatives_are_the_classes_of_the_whole_batch():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # image 0 only holds class 0 (embedding (0.6, 0.8)), image 1 only class 1 (embedding x): each
    # pair still sees the other image's class as a negative, class 2 (absent) is left out
    pixels = torch.stack([
        torch.tensor([0.6, 0.8]).view(2, 1, 1).expand(2, 2, 2),
        torch.tensor([1.0, 0.0]).view(2, 1, 1).expand(2, 2, 2),
    ])
    target = torch.stack([torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.long)])
    tau = 1.0
    ce_img0 = math.log(1.0 + math.exp(0.8 - 0.6))  # positive 0.6 (x), negative 0.8 (y)
    ce_img1 = math.log(1.0 + math.exp(1.0 - 0.0))  # positive 0 (y), negative 1 (x)
    value = info_nce_alignment_loss(pixels, text, target, ignore_index=IG, temperature=tau)
    assert value.item() == pytest.approx((ce_img0 + ce_img1) / 2, rel=1e-5)
    # a batch with one class only has no negative: 0
    assert info_nce_alignment_loss(pixels[:1], text, target[:1], temperature=tau).item() == pytest.approx(0.0, abs=1e-6)


def test_info_nce_gradients_flow_to_labelled_pixels_and_text():
    torch.manual_seed(0)
    pixels = torch.randn(2, 8, 3, 4, requires_grad=True)
    text = torch.randn(5, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 3, 4))
    target[1, 0, 0] = IG
    value = info_nce_alignment_loss(pixels, torch.nn.functional.normalize(text, dim=1), target, ignore_index=IG)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert torch.isfinite(pixels.grad).all() and torch.isfinite(text.grad).all()
    assert torch.equal(pixels.grad[1, :, 0, 0], torch.zeros(8))  # ignored pixel
    assert (pixels.grad.flatten(2).abs().sum(1) > 0).sum() == 2 * 3 * 4 - 1  # every labelled pixel
    assert text.grad[:3].abs().sum(1).gt(0).all()  # classes in the batch
    assert torch.equal(text.grad[3:], torch.zeros(2, 8))  # classes absent from the batch


def test_segdep_losses_all_ignore_are_a_finite_zero_with_gradient():
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 5)
    pixels = torch.randn(2, 6, 4, 5, requires_grad=True)
    text = torch.randn(3, 6, requires_grad=True)
    target = torch.full((2, 4, 5), IG)
    values = [
        boundary_aware_focal_loss(logits, target, ignore_index=IG),
        open_vocab_distillation_loss(logits, teacher, target=target, ignore_index=IG),
        info_nce_alignment_loss(pixels, text, target, ignore_index=IG),
    ]
    for value in values:
        assert torch.isfinite(value) and value.item() == 0.0
    sum(values).backward()
    for tensor in (logits, pixels, text):
        assert tensor.grad is not None and torch.equal(tensor.grad, torch.zeros_like(tensor))
    assert not label_boundary_band(target, 2, ignore_index=IG).any()


def test_info_nce_rejects_labels_outside_the_text_classes():
    with pytest.raises(ValueError):
        info_nce_alignment_loss(torch.randn(1, 2, 1, 2), torch.eye(2), torch.tensor([[[0, 2]]]))
