"""Masked losses. Every loss is a mean over valid (labelled) pixels and stays finite (0, still
connected to the graph) when a batch has no valid pixel; plus Kendall et al.'s uncertainty weighting
of task losses."""
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "masked_l1_loss", "berhu_loss", "silog_loss", "DEPTH_LOSSES", "masked_cross_entropy", "UncertaintyWeighting",
]


def _empty(pred):
    return pred.sum() * 0.0


def masked_l1_loss(pred, target, valid):
    """Mean |pred - target| over valid pixels (the Panoptic-DepthLab seed's depth loss)."""
    if not valid.any():
        return _empty(pred)
    return (pred[valid] - target[valid]).abs().mean()


def berhu_loss(pred, target, valid, threshold=0.2):
    """Reverse Huber (BerHu), a.k.a. the inverse Huber loss of HydraNet (Nekrasov et al.).

    L1 for residuals up to c, (r^2 + c^2) / 2c above, with c = ``threshold`` * max |r| in the batch
    (Laina et al.); c is not differentiated through.
    """
    if not valid.any():
        return _empty(pred)
    residual = (pred[valid] - target[valid]).abs()
    c = (threshold * residual.max().detach()).clamp(min=1e-6)
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
