"""Masked losses. Every loss is a mean over valid (labelled) pixels and stays finite (0, still
connected to the graph) when a batch has no valid pixel; plus Kendall et al.'s uncertainty weighting
of task losses.

The SegDep losses: a boundary-aware focal loss for segmentation (:func:`boundary_aware_focal_loss`,
with :func:`label_boundary_band`), KL distillation of open-vocabulary prompt logits from the
closed-set head (:func:`open_vocab_distillation_loss`; the open-vocab CE itself is
:func:`masked_cross_entropy` over the prompt logits) and an InfoNCE alignment of pooled class pixel
embeddings with their text embeddings (:func:`info_nce_alignment_loss`); the referring head's masks are
trained with binary cross-entropy and :func:`dice_loss`.

The DepthCompletion losses: the weighted multi-scale L1 / L2 of the seed (:func:`multiscale_depth_l1_loss`,
:func:`multiscale_depth_l2_loss`; each scale's target nearest-downsampled by :func:`nearest_downsample_depth`,
never averaged across invalid pixels), an edge-aware first-order smoothness (:func:`edge_aware_smoothness_loss`)
and the confidence head's loss (:func:`depth_confidence_loss`)."""
import math
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "masked_l1_loss", "berhu_loss", "berhu_relative", "BERHU_THRESHOLD_MODES", "silog_loss", "DEPTH_LOSSES",
    "masked_cross_entropy", "UncertaintyWeighting",
    "label_boundary_band", "boundary_aware_focal_loss", "open_vocab_distillation_loss", "info_nce_alignment_loss",
    "dice_loss",
    "nearest_downsample_depth", "multiscale_depth_l1_loss", "multiscale_depth_l2_loss", "edge_aware_smoothness_loss",
    "depth_confidence_loss",
]


def _empty(pred):
    return pred.sum() * 0.0


def masked_l1_loss(pred, target, valid):
    """Mean |pred - target| over valid pixels (the Panoptic-DepthLab seed's depth loss)."""
    if not valid.any():
        return _empty(pred)
    return (pred[valid] - target[valid]).abs().mean()


BERHU_THRESHOLD_MODES = ("relative", "absolute")


def berhu_relative(mode: str) -> bool:
    """``MODEL.DEPTH_HEAD.BERHU_THRESHOLD_MODE`` -> the ``relative`` flag of :func:`berhu_loss`."""
    if mode not in BERHU_THRESHOLD_MODES:
        raise ValueError(f"MODEL.DEPTH_HEAD.BERHU_THRESHOLD_MODE must be one of {BERHU_THRESHOLD_MODES}, got {mode!r}")
    return mode == "relative"


def berhu_loss(pred, target, valid, threshold=0.2, relative=True):
    """Reverse Huber (BerHu), a.k.a. the inverse Huber loss of HydraNet (Nekrasov et al.).

    L1 for residuals up to c, (r^2 + c^2) / 2c above. ``relative``: c = ``threshold`` * max |r| in
    the batch (Laina et al.; c is not differentiated through); otherwise c = ``threshold``, a fixed
    delta on the loss's scale (the SafeTrip-Q variant: 0.1 on depth / 80 m).
    """
    if not valid.any():
        return _empty(pred)
    residual = (pred[valid] - target[valid]).abs()
    if relative:
        c = (threshold * residual.max().detach()).clamp(min=1e-6)
    else:
        c = torch.as_tensor(float(threshold), dtype=residual.dtype, device=residual.device)
    return torch.where(residual <= c, residual, (residual**2 + c**2) / (2 * c)).mean()


def silog_loss(pred, target, valid, variance_focus=0.85):
    """Scale-invariant log loss (Eigen et al.; BTS form): sqrt(mean(e^2) - lambda * mean(e)^2),
    e = ln pred - ln target. Both depths must be positive where valid."""
    if not valid.any():
        return _empty(pred)
    e = torch.log(pred[valid].clamp(min=1e-6)) - torch.log(target[valid])
    variance = (e**2).mean() - variance_focus * e.mean() ** 2
    return torch.sqrt(variance.clamp(min=1e-8))


DEPTH_LOSSES = {"l1": masked_l1_loss, "berhu": berhu_loss, "silog": silog_loss}


def masked_cross_entropy(logits, target, ignore_index=255, weight: Optional[torch.Tensor] = None):
    """Softmax cross-entropy averaged over the pixels whose label is not ``ignore_index`` (a
    weighted mean when class ``weight`` is given, as ``F.cross_entropy``); 0 (still connected to
    ``logits``) when no pixel is labelled, where ``F.cross_entropy`` would give NaN."""
    if not (target != ignore_index).any():
        return _empty(logits)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="mean")


@torch.no_grad()
def label_boundary_band(target, band, ignore_index=255):
    """Boolean (N, H, W) map of the pixels within ``band`` pixels (Chebyshev distance) of a label
    change: pixel p is in the band iff its (2 * band + 1)^2 window holds two *labelled* pixels with
    different labels, found with a max-pool and a min-pool of the label map (ignore pixels take no
    part, so labelled vs ``ignore_index`` is not a boundary). A band of k pixels thus reaches k
    pixels into each side of a boundary; ``band = 0`` gives an empty band. The map is geometric:
    ignore pixels near a boundary may be in it (losses skip them anyway). An ignore gap narrower than
    the window does not hide the change between the labels on either side of it. No gradient.
    """
    band = int(band)
    if band < 0:
        raise ValueError(f"band must be >= 0, got {band}")
    if target.dim() != 3:
        raise ValueError(f"target must be (N, H, W), got shape {tuple(target.shape)}")
    if band == 0 or target.numel() == 0:
        return torch.zeros_like(target, dtype=torch.bool)
    valid = target != ignore_index
    # float64 holds every integer label exactly; -1 / +inf stand for "no labelled pixel".
    labels = target.to(torch.float64).unsqueeze(1)
    valid = valid.unsqueeze(1)
    k = 2 * band + 1
    high = F.max_pool2d(torch.where(valid, labels, torch.full_like(labels, -1.0)), k, stride=1, padding=band)
    low = -F.max_pool2d(torch.where(valid, -labels, torch.full_like(labels, -math.inf)), k, stride=1, padding=band)
    return ((high >= 0) & (high != low)).squeeze(1)


def boundary_aware_focal_loss(
    logits, target, ignore_index=255, gamma=2.0, band=3, boost=2.0, class_weights: Optional[torch.Tensor] = None
):
    """Focal loss (Lin et al.) FL = -(1 - p_t)^gamma * log p_t per labelled pixel, with a per-pixel
    weight of ``1 + boost`` inside :func:`label_boundary_band` (``band`` pixels around label
    boundaries) and 1 elsewhere, so ``boost = 0`` (or ``band = 0``) gives the plain focal loss.

    ``logits`` (N, C, H, W), ``target`` (N, H, W). The result is the weighted mean over labelled
    pixels, normalised by the sum of the weights; optional ``class_weights`` (C,) multiply each
    pixel's weight by that of its label, as ``F.cross_entropy``'s ``weight`` does, so ``gamma = 0,
    boost = 0`` equals :func:`masked_cross_entropy`. Computed from ``log_softmax`` (stable). 0, still
    connected to ``logits``, when no pixel is labelled.
    """
    valid = target != ignore_index
    if not valid.any():
        return _empty(logits)
    log_probs = F.log_softmax(logits, dim=1)
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    log_pt = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    loss = -log_pt
    if gamma != 0:
        # clamped away from 0 so that gamma < 1 has no infinite gradient where p_t rounds to 1
        loss = (1.0 - log_pt.exp()).clamp(min=1e-12).pow(gamma) * loss
    weight = valid.to(loss.dtype)
    if boost != 0 and band > 0:
        weight = weight * (1.0 + boost * label_boundary_band(target, band, ignore_index).to(loss.dtype))
    if class_weights is not None:
        weight = weight * class_weights.to(device=loss.device, dtype=loss.dtype)[safe_target]
    loss = torch.where(valid, loss, torch.zeros_like(loss))  # no 0 * inf from unlabelled pixels
    return (weight * loss).sum() / weight.sum().clamp(min=1e-12)


def open_vocab_distillation_loss(prompt_logits, closed_set_logits, target=None, ignore_index=255, temperature=1.0):
    """Distillation of the open-vocabulary head from the closed-set head:
    KL(softmax(closed / T) || softmax(prompt / T)) per pixel, the teacher (``closed_set_logits``)
    detached, times T^2 (Hinton et al., so gradients keep their scale across T).

    Both logits are (N, C, H, W) over the same class list. Averaged over all pixels, or over the
    labelled pixels (``target != ignore_index``) when a (N, H, W) ``target`` is given; 0, still
    connected to ``prompt_logits``, when no pixel is labelled.
    """
    if prompt_logits.shape != closed_set_logits.shape:
        raise ValueError(
            f"prompt logits {tuple(prompt_logits.shape)} and closed-set logits "
            f"{tuple(closed_set_logits.shape)} must have the same shape"
        )
    if target is not None:
        valid = target != ignore_index
        if not valid.any():
            return _empty(prompt_logits)
    t = float(temperature)
    log_q = F.log_softmax(prompt_logits / t, dim=1)
    log_p = F.log_softmax(closed_set_logits.detach() / t, dim=1)
    p = log_p.exp()
    kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=1)  # (N, H, W)
    kl = kl[valid] if target is not None else kl
    return kl.mean() * t * t


def info_nce_alignment_loss(pixel_embeddings, text_embeddings, target, ignore_index=255, temperature=0.07):
    """InfoNCE alignment of class regions with their text embeddings.

    ``pixel_embeddings`` (N, D, H, W) are L2-normalised per pixel here; ``text_embeddings`` (C, D)
    are L2-normalised too (a no-op when they already are); ``target`` (N, H, W) at the embeddings'
    resolution. For every (image, class present in that image's labelled target) the pixel
    embeddings of that class are mean-pooled and L2-normalised, and their cosine similarities to
    the text embeddings, divided by ``temperature``, go through a cross-entropy whose positive is
    the class's own text embedding.

    Negatives: the classes present anywhere in the batch ("classes in the batch as negatives"),
    i.e. the softmax runs over the text embeddings of those classes only; classes absent from the
    whole batch are left out. (With a single class in the batch there is no negative and the loss
    is 0.) Mean over the (image, class) pairs; an exact 0, still connected to both embeddings, when
    no class is present.
    """
    n, d, h, w = pixel_embeddings.shape
    c = text_embeddings.shape[0]
    if target.shape != (n, h, w):
        raise ValueError(f"target {tuple(target.shape)} must be (N, H, W) = {(n, h, w)} of the pixel embeddings")
    valid = target != ignore_index
    if not valid.any():
        return _empty(pixel_embeddings) + _empty(text_embeddings)
    if int(target[valid].max()) >= c or int(target[valid].min()) < 0:
        raise ValueError(f"target labels must lie in [0, {c}) (the text embeddings' classes) or be {ignore_index}")
    pixels = F.normalize(pixel_embeddings, dim=1).flatten(2)  # (N, D, HW)
    texts = F.normalize(text_embeddings, dim=1).to(pixels.dtype)  # (C, D)
    # one-hot membership (N, C, HW); unlabelled pixels go to an extra column that is dropped
    safe_target = torch.where(valid, target, torch.full_like(target, c)).long().flatten(1)
    members = F.one_hot(safe_target, c + 1)[..., :c].transpose(1, 2).to(pixels.dtype)
    counts = members.sum(dim=2)  # (N, C)
    pooled = torch.einsum("nck,ndk->ncd", members, pixels) / counts.clamp(min=1).unsqueeze(-1)
    pooled = F.normalize(pooled, dim=-1)
    image_idx, class_idx = (counts > 0).nonzero(as_tuple=True)  # the (image, class) pairs
    in_batch = counts.sum(dim=0) > 0  # (C,)
    logits = pooled[image_idx, class_idx] @ texts.t() / temperature  # (P, C)
    logits = logits.masked_fill(~in_batch, float("-inf"))
    return F.cross_entropy(logits, class_idx)


def dice_loss(logits, target, valid=None, smooth=1.0):
    """Soft Dice loss of binary masks (V-Net / Mask2Former form), one term per mask, averaged.

    ``logits`` (M, ...) raw mask logits, ``target`` (M, ...) binary (bool or 0 / 1), ``valid``
    (broadcastable to ``logits``) the pixels that count (e.g. the image inside the padding); with
    p = sigmoid(logits) summed over each mask's valid pixels:
    ``1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)``, then the mean over the M masks.
    ``smooth`` (1, as Mask2Former) keeps an empty target with an empty prediction at 0 (and pushes
    predictions on an empty target towards 0). 0, still connected to ``logits``, when M = 0.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape")
    if logits.numel() == 0:
        return _empty(logits)
    probs = torch.sigmoid(logits.float())
    target = target.to(probs.dtype)
    if valid is not None:
        weight = torch.broadcast_to(valid, probs.shape).to(probs.dtype)
        probs, target = probs * weight, target * weight
    probs, target = probs.reshape(len(probs), -1), target.reshape(len(target), -1)
    numerator = 2.0 * (probs * target).sum(dim=1) + smooth
    denominator = probs.sum(dim=1) + target.sum(dim=1) + smooth
    return (1.0 - numerator / denominator).mean()


def _block_centres(full: int, size: int, device):
    """Index of the centre pixel of each of ``size`` equal blocks of ``full`` pixels:
    floor((i + 0.5) * full / size), PyTorch's ``nearest-exact`` sampling, in exact integer arithmetic."""
    i = torch.arange(size, device=device)
    return (((2 * i + 1) * full) // (2 * size)).clamp(max=full - 1)


def nearest_downsample_depth(target, valid, size):
    """``(target, valid)`` (N, H, W) -> both at ``size = (h, w)`` by nearest-neighbour sampling: each coarse
    pixel takes the value *and the validity* of one full-resolution pixel, the centre of its block
    (:func:`_block_centres`; for H = 2h that is row 2i + 1). Nothing is averaged, so an invalid pixel
    (0 depth) never blends into a valid coarse target, and a coarse pixel is valid iff its sample is."""
    h, w = int(size[0]), int(size[1])
    if target.shape != valid.shape or target.dim() != 3:
        raise ValueError(f"target {tuple(target.shape)} and valid {tuple(valid.shape)} must both be (N, H, W)")
    if (h, w) == tuple(target.shape[-2:]):
        return target, valid
    rows = _block_centres(target.shape[-2], h, target.device)
    cols = _block_centres(target.shape[-1], w, target.device)
    pick = lambda x: x.index_select(-2, rows).index_select(-1, cols)  # noqa: E731
    return pick(target), pick(valid)


def _multiscale_depth_loss(preds, target, valid, scale_weights, relative, power):
    if isinstance(preds, torch.Tensor):
        preds = [preds]
    if len(preds) != len(scale_weights):
        raise ValueError(f"{len(preds)} predictions for {len(scale_weights)} scale weights")
    valid = valid.bool()
    if relative:
        valid = valid & (target > 0)  # a relative error needs a positive ground truth
    total = 0.0
    for pred, weight in zip(preds, scale_weights):
        if pred.dim() == 4:
            if pred.shape[1] != 1:
                raise ValueError(f"depth predictions must have one channel, got {tuple(pred.shape)}")
            pred = pred[:, 0]
        t, v = nearest_downsample_depth(target, valid, pred.shape[-2:])
        if weight == 0 or not v.any():
            total = total + _empty(pred)
            continue
        error = (pred[v] - t[v]).abs()
        if relative:
            error = error / t[v]
        total = total + float(weight) * error.pow(power).mean()
    return total


def multiscale_depth_l1_loss(preds, target, valid, scale_weights, relative=False):
    """The seed's weighted multi-scale L1: ``sum_s w_s * mean_{valid p at s} |d_s(p) - d*_s(p)|``.

    ``preds``: depth predictions (N, 1, h_s, w_s) or (N, h_s, w_s), one per entry of ``scale_weights``
    (e.g. coarsest 1/16 to finest 1/1); ``target`` / ``valid``: (N, H, W) full-resolution ground truth and
    its validity. Each scale's target is :func:`nearest_downsample_depth` of the full one (the seed
    average-pooled, which blends invalid zeros in). Each scale is a mean over its valid pixels of the
    whole batch; the weights are applied as given (not renormalised). ``relative``: the error is divided
    by the ground truth, |d - d*| / d* (pixels with d* <= 0 count as invalid). A scale without a valid
    pixel adds an exact 0, still connected to its prediction, so the loss is finite (0) when no sample
    of the batch has ground truth."""
    return _multiscale_depth_loss(preds, target, valid, scale_weights, relative, 1)


def multiscale_depth_l2_loss(preds, target, valid, scale_weights, relative=False):
    """:func:`multiscale_depth_l1_loss` with squared errors: ``sum_s w_s * mean (d_s - d*_s)^2``
    (``relative``: ``((d - d*) / d*)^2``)."""
    return _multiscale_depth_loss(preds, target, valid, scale_weights, relative, 2)


def edge_aware_smoothness_loss(depth, image, valid=None):
    """Edge-aware first-order smoothness (Godard et al., Monodepth): ``mean |dx d| exp(-|dx I|) +
    mean |dy d| exp(-|dy I|)``, the image gradient averaged over channels, so depth may change where the
    image has an edge. ``depth`` (N, 1, H, W) or (N, H, W) on the scale the caller chooses (DepthCompletion
    passes depth / MAX_DEPTH), ``image`` (N, C, H, W) (in [0, 1] for the usual edge sensitivity).
    ``valid`` (N, H, W) optional: only differences between two valid pixels count (e.g. the image area
    inside the padding). 0, still connected to ``depth``, when no pair counts."""
    if depth.dim() == 3:
        depth = depth.unsqueeze(1)
    image = image.to(depth.dtype)
    terms = []
    for dim in (-1, -2):
        n = depth.shape[dim]
        if n < 2:
            continue
        grad_d = (depth.narrow(dim, 1, n - 1) - depth.narrow(dim, 0, n - 1)).abs()[:, 0]
        grad_i = (image.narrow(dim, 1, n - 1) - image.narrow(dim, 0, n - 1)).abs().mean(dim=1)
        term = grad_d * torch.exp(-grad_i)
        if valid is not None:
            pair = valid.narrow(dim, 1, n - 1) & valid.narrow(dim, 0, n - 1)
            term = term[pair]
        terms.append(term.mean() if term.numel() else _empty(depth))
    return sum(terms) if terms else _empty(depth)


def depth_confidence_loss(confidence_logits, pred, target, valid, threshold=1.25):
    """Trains a per-pixel confidence to be the probability that the depth prediction is accurate:
    binary cross-entropy of ``sigmoid(confidence_logits)`` against ``max(d / d*, d* / d) < threshold``
    (the delta_1 criterion of the depth metrics for 1.25), ``pred`` detached. All (N, H, W) (or
    (N, 1, H, W)); mean over valid pixels with d* > 0, 0 (still connected) when there is none."""
    if confidence_logits.dim() == 4:
        confidence_logits = confidence_logits[:, 0]
    if pred.dim() == 4:
        pred = pred[:, 0]
    valid = valid.bool() & (target > 0)
    if not valid.any():
        return _empty(confidence_logits)
    p = pred.detach()[valid].clamp(min=1e-6)
    t = target[valid]
    accurate = (torch.maximum(p / t, t / p) < threshold).to(confidence_logits.dtype)
    return F.binary_cross_entropy_with_logits(confidence_logits[valid], accurate)


class UncertaintyWeighting(nn.Module):
    """Homoscedastic uncertainty weighting of task losses (Kendall, Gal and Cipolla, CVPR 2018), as
    the SafeTrip-Q HydraNet uses it: one learned log-variance ``s_i`` per task and
    ``L = sum_i exp(-s_i) * L_i + s_i``.

    ``forward(losses, present)`` returns the per-task terms ``exp(-s_i) * L_i + s_i``; a task that
    is not ``present`` in the batch (no labelled pixel) contributes exactly 0, still connected to
    its ``s_i`` and loss, so that its regulariser does not drift without data and DDP stays in step.
    """

    def __init__(self, tasks: Sequence[str], init: float = 0.0):
        super().__init__()
        self.tasks = list(tasks)
        self.log_variances = nn.Parameter(torch.full((len(self.tasks),), float(init)))

    def forward(self, losses, present=None):
        out = {}
        for i, task in enumerate(self.tasks):
            s = self.log_variances[i]
            term = torch.exp(-s) * losses[task] + s
            out[task] = term if present is None or present[task] else term * 0.0
        return out
