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
  has dynamic batch, height and width. ``outputs="labels"`` exports the real-time deployment
  instead: ``sem_seg_labels`` (N, Hp, Wp) int64, the per-pixel argmax of the full-resolution
  logits, computed in the graph, and ``depth`` (no 40 x H x W logit maps leave the graph).

The ONNX file gets exact reformulations that onnxruntime's CPU kernels run faster
(:func:`rewrite_onnx_for_cpu`: HydraNet by default); the arithmetic is the same up to float
summation order, and the export's parity check measures the file that is written.

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
    "rewrite_onnx_for_cpu",
    "config_fingerprint",
    "read_onnx_fingerprint",
    "load_onnx_model",
    "OnnxInference",
    "exported_inference",
]

OUTPUT_NAMES = ("sem_seg_logits", "center_heatmap", "offsets", "depth")  # PanopticDepthLab's
HYDRANET_OUTPUT_NAMES = ("sem_seg_logits", "depth")
HYDRANET_LABEL_OUTPUT_NAMES = ("sem_seg_labels", "depth")  # outputs="labels": the real-time deployment
# What an exported network can output: "logits" (every family: what model(inputs) computes) or
# "labels" (HydraNet: the argmax in the graph instead of the C full-resolution logit maps).
OUTPUT_KINDS = {"PanopticDepthLab": {"logits": OUTPUT_NAMES},
                "HydraNet": {"logits": HYDRANET_OUTPUT_NAMES, "labels": HYDRANET_LABEL_OUTPUT_NAMES}}
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

    ``outputs="labels"``: ``(sem_seg_labels (N, Hp, Wp) int64, depth)`` instead, the labels being
    ``sem_seg_logits.argmax(1)`` (what a real-time consumer uses; ``model.postprocess`` takes them
    too and returns ``sem_seg_labels``).
    """

    output_names = HYDRANET_OUTPUT_NAMES  # the default; an instance's follows its ``outputs``
    pads_input = True

    def __init__(self, model, outputs="logits"):
        super().__init__()
        _check_outputs("HydraNet", outputs)
        self.model = model
        self.outputs = outputs
        self.output_names = OUTPUT_KINDS["HydraNet"][outputs]

    def forward(self, images):
        x = (images - self.model.pixel_mean) / self.model.pixel_std
        d = self.model._size_divisibility()
        h, w = x.shape[-2:]
        # Traced shape arithmetic: stays dynamic in the ONNX graph (Shape -> Mod -> Pad).
        x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))
        sem, depth = self.model.network_outputs(x)
        if self.outputs == "labels":
            sem = sem.argmax(1)
        return sem, depth


NETWORKS = {"PanopticDepthLab": PanopticDepthLabNetwork, "HydraNet": HydraNetNetwork}


def _check_outputs(arch, outputs):
    kinds = OUTPUT_KINDS.get(arch, {"logits": ()})
    if outputs not in kinds:
        raise ValueError(f"{arch} exports outputs {sorted(kinds)}, not {outputs!r}")


def network_for(model, outputs="logits") -> nn.Module:
    """The exportable network (eval mode) of a model of any family in :data:`NETWORKS`;
    ``outputs`` is ``"logits"`` (every family) or ``"labels"`` (HydraNet, see :class:`HydraNetNetwork`)."""
    name = type(model).__name__
    if name not in NETWORKS:
        raise ValueError(f"No exportable network for {name!r}; export supports {sorted(NETWORKS)}")
    _check_outputs(name, outputs)
    if outputs != "logits":
        return NETWORKS[name](model, outputs=outputs).eval()
    return NETWORKS[name](model).eval()


def _check_size(model, network, height, width):
    divisibility = model._size_divisibility()
    # 0: the model pads nothing (detectron2's SIZE_DIVISIBILITY -1 with a backbone that asks for none)
    if not network.pads_input and divisibility > 0 and (height % divisibility or width % divisibility):
        raise ValueError(
            f"Export size {height}x{width} must be a multiple of the backbone's size divisibility "
            f"{divisibility}; pad your images to such a size"
        )


FORMATS = {"torch_export": "model.pt2", "torchscript": "model.ts", "onnx": "model.onnx"}


def _example(model, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 3, height, width, generator=g) * 255).to(model.device)


def export_network(model, height, width, fmt="torch_export", outputs="logits"):
    """Export ``model``'s network at one input size with torch.export or TorchScript.

    ``fmt`` is ``"torch_export"`` (``torch.export``, saved with ``torch.export.save``; torch's
    recommended route) or ``"torchscript"`` (``torch.jit.trace``, for runtimes that load
    TorchScript); ONNX goes through :func:`export_onnx`. ``outputs``: see :func:`network_for`.
    Returns ``(exported, max_abs_diff)``: the exported program or module and, per output, the
    largest difference between it and the eager network on a random image of that size (shapes
    inside the graph are those of this size).
    """
    if fmt not in ("torch_export", "torchscript"):
        raise ValueError(f"Unknown export format {fmt!r}; expected 'torch_export' or 'torchscript' (ONNX: export_onnx)")
    network = network_for(model, outputs)
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
        exported_outputs = run(example)
    max_abs_diff = {
        name: float((a.double() - b.double()).abs().max())
        for name, a, b in zip(network.output_names, reference, exported_outputs)
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


def config_fingerprint(cfg, outputs="logits") -> Dict:
    """What an exported file must agree on with the config it is used with (stored in the ONNX
    file's metadata and in export.json): the family, its classes and outputs (``outputs``: which
    of the family's output sets the file has, see :func:`network_for`), the input format and the
    depth range (plus, for information, normalisation and padding, which live in the graph)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    names = OUTPUT_KINDS.get(arch, {}).get(outputs, ())
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


def export_onnx(model, cfg, height, width, path, dynamic=True, opset=ONNX_OPSET, outputs="logits", rewrite=None):
    """Write ``model``'s network to ``path`` as ONNX (opset ``opset``), exported at ``height`` x
    ``width``. ``dynamic``: batch, height and width are dynamic axes of the input and of every
    output. ``outputs``: ``"logits"`` (default, every family: what ``model(inputs)`` computes) or
    ``"labels"`` (HydraNet: ``sem_seg_labels`` + ``depth``, see :class:`HydraNetNetwork`).
    ``rewrite``: apply :func:`rewrite_onnx_for_cpu` (exact reformulations for onnxruntime's CPU
    kernels); ``None`` = on for HydraNet, off for PanopticDepthLab. The config's fingerprint goes
    into the file's ``metadata_props`` (key :data:`FINGERPRINT_KEY`, JSON), with the rewrites
    applied (``segdep_d2.graph_rewrites``). Returns the network that was exported (eager, eval mode).

    The TorchScript-based exporter (``dynamo=False``) is used: it needs nothing beyond torch and
    ``onnx``, and traces the padding arithmetic into dynamic Shape ops.
    """
    import onnx

    network = network_for(model, outputs)
    _check_size(model, network, height, width)
    names = list(network.output_names)
    if rewrite is None:
        rewrite = type(model).__name__ == "HydraNet"
    axes = {0: "batch", 2: "height", 3: "width"}
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {name: dict(axes) for name in [INPUT_NAME, *names]}
        if "sem_seg_labels" in names:  # (N, H, W)
            dynamic_axes["sem_seg_labels"] = {0: "batch", 1: "height", 2: "width"}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            network, (_example(model, height, width),), path, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=names, dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
    proto = onnx.load(path)
    applied = rewrite_onnx_for_cpu(proto) if rewrite else {}
    entry = proto.metadata_props.add()
    entry.key, entry.value = FINGERPRINT_KEY, json.dumps(config_fingerprint(cfg, outputs), sort_keys=True)
    metadata = (("segdep_d2.dynamic_hw", str(bool(dynamic))), ("segdep_d2.export_size", f"{height}x{width}"),
                ("segdep_d2.outputs", outputs), ("segdep_d2.graph_rewrites", json.dumps(applied, sort_keys=True)))
    for key, value in metadata:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return network


# ---- exact graph rewrites for onnxruntime's CPU execution provider -------------------------------
# onnxruntime (1.32, CPUExecutionProvider, ORT_ENABLE_ALL) runs convolutions and max-pools in its
# blocked NCHWc layout (8 or 16 channels per block). Profiled on HydraNet at 480x640 it loses time
# where a graph leaves that layout or pads a tiny output to a block; these rewrites keep the
# arithmetic and change only how it is laid out:
#
# * ``relu6_nchwc``: a ReLU6 (``Clip``) that does not follow a convolution (the decoder's
#   ``relu6(sum)``) has no NCHWc kernel, so every Add and conv around it was reordered NCHWc <-> NCHW
#   (about 12 % of the graph's time in reorders, standalone Clips and NCHW Adds). An identity
#   depthwise 1x1 convolution before it (weights 1, no bias: exact) lets onnxruntime fuse
#   Conv + Clip and keep the decoder in NCHWc.
# * ``conv_taps``: a KxK convolution to fewer than 8 channels (HydraNet's 3x3 depth predictor,
#   256 -> 1) is computed by the NCHWc kernel for a whole block of outputs (8x the work). It becomes
#   a 1x1 convolution to the K*K*O taps (padded to 16 channels with zero weights) and a fixed
#   one-hot KxK convolution that sums the shifted taps (same products, other summation order).
# * ``nhwc_argmax``: ``ArgMax`` over the channels of a bilinear ``Resize`` (the labels output)
#   reads C strided planes per pixel and onnxruntime's NCHW bilinear Resize does not vectorise
#   over channels; the same Resize on the transposed low-resolution maps (NHWC) and ``ArgMax``
#   over the last axis compute the same labels about 3x faster.
# * ``separable_maxpool``: a KxK max-pool with stride 1 (Chained Residual Pooling's 5x5) is a 1xK
#   max-pool followed by a Kx1 one (the maximum over a rectangle is the maximum of the row maxima;
#   padded cells never win in either): 2K comparisons per output instead of K*K, bit-identical.
NCHWC_CHANNEL_MULTIPLE = 16  # channel counts that fit onnxruntime's NCHWc blocks (8 on AVX2, 16 on AVX-512)
CONV_TAPS = 16  # channels of the taps tensor in ``conv_taps`` (K*K*O rounded up to a block)


def _attribute(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def rewrite_onnx_for_cpu(proto) -> Dict[str, int]:
    """Apply the exact rewrites above to an ONNX ``ModelProto`` in place; returns how many times
    each was applied (``{"relu6_nchwc": 4, ...}``, absent when never)."""
    import numpy as np
    from onnx import helper, numpy_helper, shape_inference

    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: Dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in graph.output}
    inferred = shape_inference.infer_shapes(proto)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]

    def channels(name, depth=0):
        shape = shapes.get(name)
        if shape and len(shape) == 4 and shape[1]:
            return shape[1]
        node = producer.get(name)  # e.g. Add(conv output, dynamically resized map): ask its inputs
        if node is not None and node.op_type in ("Add", "Sub", "Mul", "Sum") and depth < 4:
            found = [c for c in (channels(i, depth + 1) for i in node.input) if c]
            return max(found) if found else None
        return None

    counter = [0]

    def fresh(base):
        counter[0] += 1
        return f"{base}/segdep_{counter[0]}"

    def add_initializer(base, array):
        name = fresh(base)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    applied: Dict[str, int] = {}
    replaced = set()  # weights of rewritten convolutions, dropped below unless still used
    new_nodes = []
    for node in graph.node:
        if node.op_type == "Clip":
            source = producer.get(node.input[0])
            c = channels(node.input[0])
            if source is not None and source.op_type != "Conv" and c and c % NCHWC_CHANNEL_MULTIPLE == 0:
                weight = add_initializer(node.input[0] + "/identity_weight", np.ones((c, 1, 1, 1), np.float32))
                out = fresh(node.input[0] + "/identity")
                new_nodes.append(helper.make_node("Conv", [node.input[0], weight], [out],
                                                  name=fresh(node.name + "/identity"), group=c, kernel_shape=[1, 1]))
                node.input[0] = out
                applied["relu6_nchwc"] = applied.get("relu6_nchwc", 0) + 1
        elif node.op_type == "Conv" and node.input[1] in initializers:
            w = numpy_helper.to_array(initializers[node.input[1]])
            k = list(w.shape[2:])
            if (w.ndim == 4 and _attribute(node, "group", 1) == 1 and w.shape[0] < 8 and k != [1, 1]
                    and w.shape[0] * k[0] * k[1] <= CONV_TAPS and w.shape[1] % NCHWC_CHANNEL_MULTIPLE == 0
                    and all(v == 1 for v in _attribute(node, "strides", [1, 1]))
                    and all(v == 1 for v in _attribute(node, "dilations", [1, 1]))
                    and _attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")):
                o, cin = w.shape[:2]
                taps = np.zeros((CONV_TAPS, cin, 1, 1), np.float32)
                shift = np.zeros((o, CONV_TAPS, k[0], k[1]), np.float32)
                for oc in range(o):
                    for y in range(k[0]):
                        for x in range(k[1]):
                            t = (oc * k[0] + y) * k[1] + x
                            taps[t, :, 0, 0] = w[oc, :, y, x]
                            shift[oc, t, y, x] = 1.0
                taps_name = add_initializer(node.input[1] + "/taps", taps)
                shift_name = add_initializer(node.input[1] + "/shift", shift)
                mid = fresh(node.output[0] + "/taps")
                new_nodes.append(helper.make_node("Conv", [node.input[0], taps_name], [mid],
                                                  name=fresh(node.name + "/taps"), kernel_shape=[1, 1]))
                replaced.add(node.input[1])
                node.input[0], node.input[1] = mid, shift_name
                applied["conv_taps"] = applied.get("conv_taps", 0) + 1
        elif (node.op_type == "MaxPool" and len(node.output) == 1 and len(_attribute(node, "kernel_shape", [])) == 2
              and _attribute(node, "kernel_shape")[0] == _attribute(node, "kernel_shape")[1] > 2
              and all(v == 1 for v in _attribute(node, "strides", [1, 1]))
              and all(v == 1 for v in _attribute(node, "dilations", [1, 1]))
              and _attribute(node, "ceil_mode", 0) == 0 and _attribute(node, "storage_order", 0) == 0
              and _attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")):
            k = _attribute(node, "kernel_shape")[0]
            top, left, bottom, right = _attribute(node, "pads", [0, 0, 0, 0])
            rows = fresh(node.output[0] + "/rows")
            new_nodes.append(helper.make_node("MaxPool", [node.input[0]], [rows], name=fresh(node.name + "/rows"),
                                              kernel_shape=[1, k], pads=[0, left, 0, right], strides=[1, 1]))
            node = helper.make_node("MaxPool", [rows], list(node.output), name=node.name,
                                    kernel_shape=[k, 1], pads=[top, 0, bottom, 0], strides=[1, 1])
            applied["separable_maxpool"] = applied.get("separable_maxpool", 0) + 1
        elif node.op_type == "ArgMax" and _attribute(node, "axis", 0) == 1 and _attribute(node, "keepdims", 1) == 0 \
                and _attribute(node, "select_last_index", 0) == 0:
            resize = producer.get(node.input[0])
            if (resize is not None and resize.op_type == "Resize" and len(consumers.get(resize.output[0], [])) == 1
                    and resize.output[0] not in graph_outputs and len(shapes.get(resize.input[0]) or []) == 4
                    and _attribute(resize, "coordinate_transformation_mode", b"half_pixel") != b"tf_crop_and_resize"):
                inputs = list(resize.input) + [""] * (4 - len(resize.input))
                target = 3 if inputs[3] else 2  # sizes, else scales: in NCHW order, permuted to NHWC
                if inputs[target]:
                    perm = add_initializer("nhwc_permutation", np.array([0, 2, 3, 1], np.int64))
                    nhwc = fresh(resize.input[0] + "/nhwc")
                    new_nodes.append(helper.make_node("Transpose", [resize.input[0]], [nhwc],
                                                      name=fresh(resize.name + "/nhwc"), perm=[0, 2, 3, 1]))
                    permuted = fresh(inputs[target] + "/nhwc")
                    new_nodes.append(helper.make_node("Gather", [inputs[target], perm], [permuted], axis=0,
                                                      name=fresh(resize.name + "/nhwc_size")))
                    inputs[0], inputs[target] = nhwc, permuted
                    del resize.input[:]
                    resize.input.extend(inputs[: target + 1])
                    for a in node.attribute:
                        if a.name == "axis":
                            a.i = 3
                    applied["nhwc_argmax"] = applied.get("nhwc_argmax", 0) + 1
        new_nodes.append(node)
    used = {i for n in new_nodes for i in n.input} | graph_outputs
    for name in replaced - used:
        graph.initializer.remove(next(t for t in graph.initializer if t.name == name))
    # The Transpose / Gather feeding a Resize moved to NHWC are emitted when its ArgMax is reached,
    # after that Resize: restore a topological order.
    del graph.node[:]
    graph.node.extend(_topological(new_nodes, graph))
    return applied


def _topological(nodes, graph):
    """``nodes`` in an order where every node follows the producers of its inputs (a node whose
    inputs are not ready yet moves behind the others)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(nodes)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"ONNX graph rewrite left a cycle or a dangling input at {rest[0].name}")
        pending = rest
    return ordered


def _session(path, threads=None, spinning=True, profile_prefix=None):
    """An onnxruntime CPU session with every graph optimisation; ``profile_prefix``: onnxruntime's
    profiler on, its JSON written under that prefix (``session.end_profiling()`` returns the file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
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
    label is identical: the argmax of both logits, or the file's ``sem_seg_labels`` against the
    eager logits' argmax), plus ``max_abs_diff_sem_seg_logits`` when both have logits and the
    shape of the file's semantic output. Keyed ``"HxW"``."""
    model = network.model
    results = {}
    for i, (height, width) in enumerate(sizes):
        example = _example(model, height, width, seed + i)
        with torch.no_grad():
            reference = dict(zip(network.output_names, network(example)))
        exported = dict(zip(onnx_network.output_names, onnx_network.network(example)))
        labels = {name: out["sem_seg_labels"] if "sem_seg_labels" in out else out["sem_seg_logits"].argmax(1)
                  for name, out in (("reference", reference), ("exported", exported))}
        semantic = exported["sem_seg_labels"] if "sem_seg_labels" in exported else exported["sem_seg_logits"]
        entry = {
            "max_abs_diff_depth": float((reference["depth"] - exported["depth"]).abs().max()),
            "argmax_agreement": float((labels["reference"] == labels["exported"]).float().mean()),
        }
        if "sem_seg_logits" in reference and "sem_seg_logits" in exported:
            difference = reference["sem_seg_logits"] - exported["sem_seg_logits"]
            entry["max_abs_diff_sem_seg_logits"] = float(difference.abs().max())
        entry["output_shape"] = list(semantic.shape)
        results[f"{height}x{width}"] = entry
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
    # The file may carry any of the family's output sets ("logits" / "labels"): compare with that one.
    kinds = OUTPUT_KINDS.get(cfg.MODEL.META_ARCHITECTURE, {})
    outputs = next((k for k, names in kinds.items() if list(names) == list(stored.get("output_names", []))), "logits")
    expected = config_fingerprint(cfg, outputs)
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
    gives what ``model(inputs)`` gives, through ``model.postprocess`` (for a ``"labels"`` file:
    ``sem_seg_labels`` (H, W) instead of the ``sem_seg`` logits). ``outputs`` says which:
    ``"logits"`` or ``"labels"``.
    """

    def __init__(self, path, session, model, fingerprint):
        self.path = path
        self.session = session
        self.model = model
        self.fingerprint = fingerprint
        self.output_names = tuple(o.name for o in session.get_outputs())
        self.outputs = "labels" if "sem_seg_labels" in self.output_names else "logits"
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
    range) and a graph whose outputs are not the family's (either of HydraNet's output sets,
    ``sem_seg_logits`` / ``sem_seg_labels`` + ``depth``, is accepted; the object's ``outputs``
    says which the file has). ``model`` (built from ``cfg`` when not
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
    channels = outputs[names.index("sem_seg_logits")].shape[1] if "sem_seg_logits" in names else None
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
        d = model._size_divisibility()
        if not pads_input and d > 0:  # d = 0: the model pads nothing
            pad = (0, (d - width % d) % d, 0, (d - height % d) % d)
            if any(pad):
                mean = model.pixel_mean.to(image.device).view(1, -1, 1, 1)
                image = F.pad(image - mean, pad) + mean
        outputs = network(image)
        results.extend(model.postprocess(*outputs, [x], [(height, width)]))
    return results
