"""A deployed network file, used where the eager model is used.

``tools/export_model.py`` writes a network as ONNX (``model.onnx``), torch.export (``model.pt2``) or
TorchScript (``model.ts``). :func:`load_deployed` opens any of them for a config and returns a
:class:`DeployedModel`: an ``nn.Module`` that takes detectron2's list[dict] and returns what
``model(inputs)`` returns (panoptic segments with their distances, depth, semantic logits), the
network running in its runtime (onnxruntime for ONNX) and the model's own post-processing in
Python on its outputs. ``tools/train_net.py --eval-only --deployed PATH``,
``tools/visualize_depth_panoptic.py --deployed PATH`` and ``tools/benchmark.py``'s ``deployed``
variant all go through it, so the fast path measured is the one users run.
"""
import json
import logging
import os

import torch
from torch import nn

from .export import FORMATS, NETWORKS, exported_inference, load_onnx_model

__all__ = ["DeployedModel", "load_deployed", "deployed_file"]

logger = logging.getLogger(__name__)

# file suffix -> tools/export_model.py --format
SUFFIX_FORMATS = {os.path.splitext(name)[1]: fmt for fmt, name in FORMATS.items()}


class DeployedModel(nn.Module):
    """An exported network plus the eager model's post-processing; call it like the model.

    ``network(images)`` maps (N, 3, H, W) float pixels to the exported outputs; ``model`` (built
    from the config, its weights unused) supplies ``postprocess`` and the size divisibility.
    ``runtime`` says what runs the network (``"onnxruntime"``, ``"torch_export"``,
    ``"torchscript"``) and ``path`` which file.
    """

    def __init__(self, network, model, path, runtime, pads_input, outputs="logits"):
        super().__init__()
        self.network = network
        self.model = model.eval()
        self.path = path
        self.runtime = runtime
        self.pads_input = pads_input
        self.outputs = outputs  # the file's output set: "logits", "labels" (HydraNet), "referring" (SegDep)

    @property
    def device(self):
        return self.model.device

    def train(self, mode: bool = True):
        # an exported graph has no training mode: only the eager post-processing module follows
        self.training = False
        self.model.train(False)
        return self

    def forward(self, batched_inputs):
        with torch.no_grad():
            return exported_inference(self._run, self.model, batched_inputs, pads_input=self.pads_input,
                                      outputs=self.outputs)

    def _run(self, *inputs):
        # a torch program runs where the model was built (onnxruntime: the CPU, as the model)
        outputs = self.network(*(x.to(self.device) if torch.is_tensor(x) else x for x in inputs))
        return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def deployed_file(path):
    """The model file of ``path``: the file itself, or in a folder written by
    ``tools/export_model.py`` the one its ``export.json`` names (else its only model file)."""
    if os.path.isdir(path):
        info_path = os.path.join(path, "export.json")
        if os.path.isfile(info_path):
            with open(info_path) as f:
                fmt = json.load(f).get("format")
            if fmt in FORMATS:
                return os.path.join(path, FORMATS[fmt])
        found = [os.path.join(path, name) for name in FORMATS.values() if os.path.isfile(os.path.join(path, name))]
        if len(found) != 1:
            raise FileNotFoundError(
                f"{path}: expected one of {sorted(FORMATS.values())} (or an export.json naming it) in this folder, "
                f"found {[os.path.basename(p) for p in found] or 'none'}; write one with tools/export_model.py"
            )
        return found[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Deployed model {path} does not exist; write it with tools/export_model.py")
    return path


def _check_export_info(path, cfg):
    """For torch.export / TorchScript files (no metadata inside): the export.json written beside
    them must come from the same model family as ``cfg``. Returns the file's output set."""
    info_path = os.path.join(os.path.dirname(path), "export.json")
    if not os.path.isfile(info_path):
        logger.warning("%s has no export.json beside it: its outputs are trusted to match %s",
                       path, cfg.MODEL.META_ARCHITECTURE)
        return "logits"
    with open(info_path) as f:
        info = json.load(f)
    arch = info.get("meta_architecture")
    if arch != cfg.MODEL.META_ARCHITECTURE:
        raise ValueError(
            f"{path} was exported from a {arch} config (its export.json), not a {cfg.MODEL.META_ARCHITECTURE} one; "
            "re-export it with tools/export_model.py from the config you use"
        )
    return info.get("output_kind", "logits")


def load_deployed(path, cfg, model=None, threads=None, spinning=False) -> DeployedModel:
    """Open a file (or export folder) written by ``tools/export_model.py`` for use with ``cfg``.

    ``.onnx``: onnxruntime (CPU), through :func:`~segdep_d2.modeling.export.load_onnx_model`, which
    refuses a file exported from another config; ``threads`` its intra-op threads (default: torch's
    thread count), ``spinning=False``: its idle workers sleep, so the Python post-processing that
    follows every run has the cores. ``.pt2``: ``torch.export.load(path).module()``; ``.ts``:
    ``torch.jit.load``, on ``cfg.MODEL.DEVICE`` (export on that device). ``model``: the eager model
    whose ``postprocess`` is used (built from ``cfg`` when not given, on the CPU for ONNX; its weights
    are not used).
    """
    path = deployed_file(path)
    suffix = os.path.splitext(path)[1]
    if suffix not in SUFFIX_FORMATS:
        raise ValueError(f"{path}: unknown deployed model type {suffix!r}; expected one of {sorted(SUFFIX_FORMATS)}")
    fmt = SUFFIX_FORMATS[suffix]
    if model is None:
        from detectron2.modeling import build_model

        model_cfg = cfg.clone()
        model_cfg.defrost()
        if fmt == "onnx":  # onnxruntime's CPU provider: outputs come back as CPU tensors
            model_cfg.MODEL.DEVICE = "cpu"
        model = build_model(model_cfg)
    model = model.eval()
    if fmt == "onnx":
        onnx_model = load_onnx_model(path, cfg, model=model, threads=threads or torch.get_num_threads(),
                                     spinning=spinning)
        return DeployedModel(onnx_model.network, model, path, "onnxruntime", onnx_model.pads_input,
                             onnx_model.outputs)
    outputs = _check_export_info(path, cfg)
    network = torch.export.load(path).module() if fmt == "torch_export" else torch.jit.load(path, map_location=model.device)
    pads_input = getattr(NETWORKS.get(cfg.MODEL.META_ARCHITECTURE), "pads_input", False)
    return DeployedModel(network, model, path, fmt, pads_input, outputs)
