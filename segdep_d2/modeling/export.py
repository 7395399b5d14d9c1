"""Deployment: PanopticDepthLab's network as a tensor-in / tensors-out module for torch.export / TorchScript.

The panoptic grouping (detectron2's ``get_panoptic_segmentation``) and per-segment depth are
data-dependent Python and stay outside the exported graph: run the exported network, then
``model.postprocess(...)`` (or your own port of it) on its four outputs.
"""
import torch
from torch import nn

__all__ = ["PanopticDepthLabNetwork", "export_panoptic_depthlab", "save_exported"]

OUTPUT_NAMES = ("sem_seg_logits", "center_heatmap", "offsets", "depth")


class PanopticDepthLabNetwork(nn.Module):
    """Normalisation, backbone and the three decoders of a PanopticDepthLab.

    ``forward(images)`` takes (N, 3, H, W) float pixels in the model's input format
    (``cfg.INPUT.FORMAT``, 0-255), H and W multiples of the backbone's size divisibility, and
    returns ``(sem_seg_logits (N, C, H, W), center_heatmap (N, 1, H, W), offsets (N, 2, H, W),
    depth (N, 1, H, W) metres)``.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        x = (images - self.model.pixel_mean) / self.model.pixel_std
        return self.model.network_outputs(self.model.backbone(x))


FORMATS = {"torch_export": "model.pt2", "torchscript": "model.ts"}


def export_panoptic_depthlab(model, height, width, fmt="torch_export"):
    """Export ``model``'s network at one input size.

    ``fmt`` is ``"torch_export"`` (``torch.export``, saved with ``torch.export.save``; torch's
    recommended route) or ``"torchscript"`` (``torch.jit.trace``, for runtimes that load
    TorchScript). Returns ``(exported, max_abs_diff)``: the exported program or module and, per
    output, the largest difference between it and the eager network on a random image of that
    size (shapes inside the graph are those of this size).
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; expected one of {sorted(FORMATS)}")
    divisibility = model._size_divisibility()
    if height % divisibility or width % divisibility:
        raise ValueError(
            f"Export size {height}x{width} must be a multiple of the backbone's size divisibility "
            f"{divisibility}; pad your images to such a size"
        )
    network = PanopticDepthLabNetwork(model).eval()
    example = torch.rand(1, 3, height, width, device=model.device) * 255
    with torch.no_grad():
        if fmt == "torchscript":
            exported = torch.jit.trace(network, example)
            run = exported
        else:
            exported = torch.export.export(network, (example,))
            run = exported.module()
        reference = network(example)
        outputs = run(example)
    max_abs_diff = {name: float((a - b).abs().max()) for name, a, b in zip(OUTPUT_NAMES, reference, outputs)}
    return exported, max_abs_diff


def save_exported(exported, path):
    """Write what ``export_panoptic_depthlab`` returned, in its format's own file type."""
    if isinstance(exported, torch.export.ExportedProgram):
        torch.export.save(exported, path)
    else:
        torch.jit.save(exported, path)
