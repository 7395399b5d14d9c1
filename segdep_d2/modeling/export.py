"""Deployment: a model's network as a tensor-in / tensors-out module for torch.export, TorchScript
and ONNX, and the ONNX file's loader.

The exported graph holds normalisation and the network; what is data-dependent Python stays
outside it: PanopticDepthLab's panoptic grouping (detectron2's ``get_panoptic_segmentation``) and
per-segment depth, and for every family the crop / resize back to the input's original size. Run
the exported network, then ``model.postprocess(...)`` (or your own port of it) on its outputs;
:func:`exported_inference` does exactly that for any network callable.

* **PanopticDepthLab** (:class:`PanopticDepthLabNetwork`): outputs ``sem_seg_logits``,
  ``center_heatmap``, ``offsets``, ``depth``; H and W must be multiples of the backbone's size
  divisibility.
* **HydraNet** (:class:`HydraNetNetwork`): outputs ``sem_seg_logits`` and ``depth`` (metres) at the
  input size padded up to a multiple of 32 (the padding happens inside the graph, so any H x W
  goes in; ``model.postprocess(sem, depth, inputs, [(H, W)])`` crops it away). The ONNX export
  has dynamic batch, height and width.

An ONNX file carries the config it was exported from (:func:`config_fingerprint`) in its
``metadata_props``; :func:`load_onnx_model` refuses a file whose fingerprint differs from the
config it is used with (another number of classes, another family, other outputs, ...).
"""
import json
import os
from typing import Dict, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "PanopticDepthLabNetwork",
    "HydraNetNetwork",
    "network_for",
    "export_network",
    "export_panoptic_depthlab",
    "save_exported",
    "export_onnx",
    "onnx_parity",
    "config_fingerprint",
    "read_onnx_fingerprint",
    "load_onnx_model",
    "OnnxInference",
    "exported_inference",
]

OUTPUT_NAMES = ("sem_seg_logits", "center_heatmap", "offsets", "depth")  # PanopticDepthLab's
HYDRANET_OUTPUT_NAMES = ("sem_seg_logits", "depth")
INPUT_NAME = "images"
ONNX_OPSET = 17
FINGERPRINT_KEY = "segdep_d2.config"  # the ONNX metadata_props key holding config_fingerprint(cfg)
# What a file and a config must agree on before the file is used with the config.
CHECKED_FINGERPRINT_KEYS = ("meta_architecture", "num_classes", "output_names", "input_format", "max_depth")
# The parity an ONNX export must reach against the eager network (DESIGN/issue 11's targets).
MAX_ABS_DIFF_DEPTH = 1e-3  # metres
MIN_ARGMAX_AGREEMENT = 0.999


class PanopticDepthLabNetwork(nn.Module):
    """Normalisation, backbone and the three decoders of a PanopticDepthLab.

    ``forward(images)`` takes (N, 3, H, W) float pixels in the model's input format
    (``cfg.INPUT.FORMAT``, 0-255), H and W multiples of the backbone's size divisibility, and
    returns ``(sem_seg_logits (N, C, H, W), center_heatmap (N, 1, H, W), offsets (N, 2, H, W),
    depth (N, 1, H, W) metres)``.
    """

    output_names = OUTPUT_NAMES
    pads_input = False

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        x = (images - self.model.pixel_mean) / self.model.pixel_std
        return self.model.network_outputs(self.model.backbone(x))


class HydraNetNetwork(nn.Module):
    """Normalisation, zero padding (after normalisation, as ``ImageList.from_tensors``) up to the
    model's size divisibility, MobileNetV2, Light-Weight RefineNet and both task branches.

    ``forward(images)`` takes (N, 3, H, W) float pixels in the model's input format (0-255), any H
    and W, and returns ``(sem_seg_logits (N, C, Hp, Wp), depth (N, 1, Hp, Wp) metres)`` at the padded
    input size ``Hp = ceil(H / 32) * 32`` (likewise Wp): full resolution, the bottom / right padding
    still on. ``model.postprocess(sem, depth, inputs, [(H, W)])`` crops it and resizes to the
    inputs' ``height`` / ``width``.
    """

    output_names = HYDRANET_OUTPUT_NAMES
    pads_input = True

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        x = (images - self.model.pixel_mean) / self.model.pixel_std
        d = self.model._size_divisibility()
        h, w = x.shape[-2:]
        # Traced shape arithmetic: stays dynamic in the ONNX graph (Shape -> Mod -> Pad).
        x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))
        return self.model.network_outputs(x)


NETWORKS = {"PanopticDepthLab": PanopticDepthLabNetwork, "HydraNet": HydraNetNetwork}


def network_for(model) -> nn.Module:
    """The exportable network (eval mode) of a model of any family in :data:`NETWORKS`."""
    name = type(model).__name__
    if name not in NETWORKS:
        raise ValueError(f"No exportable network for {name!r}; export supports {sorted(NETWORKS)}")
    return NETWORKS[name](model).eval()


def _check_size(model, network, height, width):
    divisibility = model._size_divisibility()
    if not network.pads_input and (height % divisibility or width % divisibility):
        raise ValueError(
            f"Export size {height}x{width} must be a multiple of the backbone's size divisibility "
            f"{divisibility}; pad your images to such a size"
        )


FORMATS = {"torch_export": "model.pt2", "torchscript": "model.ts", "onnx": "model.onnx"}


def _example(model, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 3, height, width, generator=g) * 255).to(model.device)


def export_network(model, height, width, fmt="torch_export"):
    """Export ``model``'s network at one input size with torch.export or TorchScript.

    ``fmt`` is ``"torch_export"`` (``torch.export``, saved with ``torch.export.save``; torch's
    recommended route) or ``"torchscript"`` (``torch.jit.trace``, for runtimes that load
    TorchScript); ONNX goes through :func:`export_onnx`. Returns ``(exported, max_abs_diff)``: the
    exported program or module and, per output, the largest difference between it and the eager
    network on a random image of that size (shapes inside the graph are those of this size).
    """
    if fmt not in ("torch_export", "torchscript"):
        raise ValueError(f"Unknown export format {fmt!r}; expected 'torch_export' or 'torchscript' (ONNX: export_onnx)")
    network = network_for(model)
    _check_size(model, network, height, width)
    example = _example(model, height, width)
    with torch.no_grad():
        if fmt == "torchscript":
            exported = torch.jit.trace(network, example)
            run = exported
        else:
            exported = torch.export.export(network, (example,))
            run = exported.module()
        reference = network(example)
        outputs = run(example)
    max_abs_diff = {
        name: float((a - b).abs().max()) for name, a, b in zip(network.output_names, reference, outputs)
    }
    return exported, max_abs_diff


export_panoptic_depthlab = export_network  # the name earlier versions exported


def save_exported(exported, path):
    """Write what ``export_network`` returned, in its format's own file type."""
    if isinstance(exported, torch.export.ExportedProgram):
        torch.export.save(exported, path)
    else:
        torch.jit.save(exported, path)


# ---------------------------------------------------------------------------------------------
# ONNX


def config_fingerprint(cfg) -> Dict:
    """What an exported file must agree on with the config it is used with (stored in the ONNX
    file's metadata and in export.json): the family, its classes and outputs, the input format
    and the depth range (plus, for information, normalisation and padding, which live in the
    graph)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    names = {"HydraNet": HYDRANET_OUTPUT_NAMES, "PanopticDepthLab": OUTPUT_NAMES}.get(arch, ())
    return {
        "meta_architecture": arch,
        "num_classes": int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        "output_names": list(names),
        "input_format": cfg.INPUT.FORMAT,
        "min_depth": float(cfg.MODEL.DEPTH_HEAD.MIN_DEPTH),
        "max_depth": float(cfg.MODEL.DEPTH_HEAD.MAX_DEPTH),
        "depth_output_type": cfg.MODEL.DEPTH_HEAD.OUTPUT_TYPE,
        "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
        "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
    }


def export_onnx(model, cfg, height, width, path, dynamic=True, opset=ONNX_OPSET):
    """Write ``model``'s network to ``path`` as ONNX (opset ``opset``), exported at ``height`` x
    ``width``. ``dynamic``: batch, height and width are dynamic axes of the input and of every
    output. The config's fingerprint goes into the file's ``metadata_props`` (key
    :data:`FINGERPRINT_KEY`, JSON). Returns the network that was exported (eager, eval mode).

    The TorchScript-based exporter (``dynamo=False``) is used: it needs nothing beyond torch and
    ``onnx``, and traces the padding arithmetic into dynamic Shape ops.
    """
    import onnx

    network = network_for(model)
    _check_size(model, network, height, width)
    names = list(network.output_names)
    axes = {0: "batch", 2: "height", 3: "width"}
    dynamic_axes = {name: dict(axes) for name in [INPUT_NAME, *names]} if dynamic else None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            network, (_example(model, height, width),), path, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=names, dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = FINGERPRINT_KEY, json.dumps(config_fingerprint(cfg), sort_keys=True)
    for key, value in (("segdep_d2.dynamic_hw", str(bool(dynamic))), ("segdep_d2.export_size", f"{height}x{width}")):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, path)
    return network


def _session(path, threads=None, spinning=True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not spinning:
        # onnxruntime's idle workers busy-wait after each run by default, taking cores from
        # PyTorch work in the same process (post-processing, other models).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnx_parity(network, onnx_network, sizes, seed=0) -> Dict[str, Dict[str, float]]:
    """onnxruntime against the eager network on a random image per size ``(H, W)``:
    ``max_abs_diff_depth`` (metres) and ``argmax_agreement`` (fraction of pixels whose semantic
    argmax is identical), plus ``max_abs_diff_sem_seg_logits``. Keyed ``"HxW"``."""
    model = network.model
    results = {}
    for i, (height, width) in enumerate(sizes):
        example = _example(model, height, width, seed + i)
        with torch.no_grad():
            reference = dict(zip(network.output_names, network(example)))
        exported = dict(zip(onnx_network.output_names, onnx_network.network(example)))
        agreement = (reference["sem_seg_logits"].argmax(1) == exported["sem_seg_logits"].argmax(1)).float().mean()
        results[f"{height}x{width}"] = {
            "max_abs_diff_depth": float((reference["depth"] - exported["depth"]).abs().max()),
            "argmax_agreement": float(agreement),
            "max_abs_diff_sem_seg_logits": float((reference["sem_seg_logits"] - exported["sem_seg_logits"]).abs().max()),
            "output_shape": list(exported["sem_seg_logits"].shape),
        }
    return results


def read_onnx_fingerprint(path) -> Dict:
    """The config fingerprint stored in an ONNX file by :func:`export_onnx` (``{}`` if none)."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return json.loads(props[FINGERPRINT_KEY]) if FINGERPRINT_KEY in props else {}


def check_fingerprint(path, stored: Dict, cfg) -> None:
    """Raise ``ValueError`` naming every field where the file's config differs from ``cfg``'s."""
    if not stored:
        raise ValueError(
            f"{path} has no segdep_d2 config metadata ({FINGERPRINT_KEY!r}): it was not written by "
            f"tools/export_model.py --format onnx. Re-export it from the config you evaluate with."
        )
    expected = config_fingerprint(cfg)
    differences = [
        f"{key}: file {stored.get(key)!r}, config {expected[key]!r}"
        for key in CHECKED_FINGERPRINT_KEYS
        if stored.get(key) != expected[key]
    ]
    if differences:
        raise ValueError(
            f"{path} was exported from another config than the one given ("
            + "; ".join(differences)
            + "). Re-export it with tools/export_model.py from this config, or pass the config it came from."
        )


class OnnxInference:
    """An ONNX file run by onnxruntime, used like the model it came from.

    ``network(images)`` maps (N, 3, H, W) float pixels to the output tensors (torch, CPU) in
    ``output_names`` order; calling the object on detectron2 inputs (list of dicts with ``image``)
    gives what ``model(inputs)`` gives, through ``model.postprocess``.
    """

    def __init__(self, path, session, model, fingerprint):
        self.path = path
        self.session = session
        self.model = model
        self.fingerprint = fingerprint
        self.output_names = tuple(o.name for o in session.get_outputs())
        self.pads_input = fingerprint["meta_architecture"] == "HydraNet"
        # (H, W) of a static-size export (PanopticDepthLab with fixed ASPP pooling), else None.
        hw = session.get_inputs()[0].shape[2:]
        self.static_size = tuple(hw) if all(isinstance(v, int) for v in hw) else None

    def network(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.static_size is not None and tuple(images.shape[-2:]) != self.static_size:
            raise ValueError(
                f"{self.path} was exported at the static size {self.static_size[0]}x{self.static_size[1]}; "
                f"got images of {images.shape[-2]}x{images.shape[-1]} (export again at this size)"
            )
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return tuple(torch.from_numpy(o) for o in self.session.run(None, {INPUT_NAME: array}))

    def __call__(self, batched_inputs):
        return exported_inference(self.network, self.model, batched_inputs, pads_input=self.pads_input)


def load_onnx_model(path, cfg, model=None, threads=None, spinning=True) -> OnnxInference:
    """Open an ONNX file written by ``tools/export_model.py --format onnx`` for use with ``cfg``.

    Refuses (``ValueError`` naming the difference) a file without segdep_d2's metadata, a file
    exported from another config (family, number of classes, output names, input format, depth
    range) and a graph whose outputs are not the family's. ``model`` (built from ``cfg`` when not
    given; its weights are not used) supplies the post-processing. ``threads``: onnxruntime's
    intra-op threads (its default when None); ``spinning=False`` stops its idle workers from
    busy-waiting between runs (better when PyTorch shares the process).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX file {path} does not exist; write it with tools/export_model.py --format onnx")
    stored = read_onnx_fingerprint(path)
    check_fingerprint(path, stored, cfg)
    session = _session(path, threads, spinning)
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    if names != list(stored["output_names"]):
        raise ValueError(f"{path}: graph outputs {names}, but its metadata and the config expect {stored['output_names']}")
    channels = outputs[names.index("sem_seg_logits")].shape[1]
    if isinstance(channels, int) and channels != stored["num_classes"]:
        raise ValueError(
            f"{path}: the graph's sem_seg_logits has {channels} channels but the config has "
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {stored['num_classes']}"
        )
    if model is None:
        from detectron2.modeling import build_model

        cpu_cfg = cfg.clone()
        cpu_cfg.defrost()
        cpu_cfg.MODEL.DEVICE = "cpu"
        model = build_model(cpu_cfg).eval()
    return OnnxInference(path, session, model, stored)


def exported_inference(network, model, batched_inputs, pads_input=True):
    """Full inference through an exported (or any tensor-in / tensors-out) ``network``: per input,
    its ``image`` as a (1, 3, H, W) float batch -> ``network`` -> ``model.postprocess`` at the
    image's size. For a network that does not pad itself (``pads_input=False``: PanopticDepthLab's)
    the pixels are padded to the size divisibility with the pixel mean, which normalises to the 0
    that ``ImageList.from_tensors`` pads with."""
    results = []
    for x in batched_inputs:
        image = x["image"].to(torch.float32)[None]
        height, width = image.shape[-2:]
        if not pads_input:
            d = model._size_divisibility()
            pad = (0, (d - width % d) % d, 0, (d - height % d) % d)
            if any(pad):
                mean = model.pixel_mean.to(image.device).view(1, -1, 1, 1)
                image = F.pad(image - mean, pad) + mean
        outputs = network(image)
        results.extend(model.postprocess(*outputs, [x], [(height, width)]))
    return results
