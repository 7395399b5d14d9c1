"""Masked depth losses. Every loss is a mean over valid pixels and stays finite (0, still
connected to the graph) when a batch has no valid pixel."""
import torch

__all__ = ["masked_l1_loss", "berhu_loss", "silog_loss", "DEPTH_LOSSES"]


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
