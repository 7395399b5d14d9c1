"""tools/export_model.py: the exported network computes what the eager model computes (every
family: PanopticDepthLab, HydraNet, DepthCompletion, SegDep)."""
import copy
import json
import os

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(
    REPO_ROOT, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml"
)
H, W = 96, 320


@pytest.fixture(scope="module")
def tool(export_tool):
    return export_tool


@pytest.fixture(scope="module")
def trained_like(tool, tmp_path_factory):
    """A checkpoint whose weights differ from a fresh build: its depth is about exp(3) = 20.1 m
    everywhere, a fresh build's about 10 m (the predictor's bias init), so loading is visible."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = tool.setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(1)
    model = build_model(cfg)
    with torch.no_grad():
        model.depth_head.predictor.bias.fill_(3.0)
    save_dir = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, save_dir=str(save_dir)).save("model")
    return str(save_dir / "model.pth")


@pytest.mark.parametrize("fmt", ["torch_export", "torchscript"])
def test_exported_network_gives_the_models_outputs(tool, trained_like, tmp_path, fmt):
    out = tmp_path / "export"
    tool.main(["--config-file", CONFIG, "--height", str(H), "--width", str(W), "--output", str(out),
               "--format", fmt, "MODEL.WEIGHTS", trained_like, "MODEL.DEVICE", "cpu"])
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == fmt
    assert info["input"]["shape"] == [1, 3, H, W]
    assert info["outputs"] == ["sem_seg_logits", "center_heatmap", "offsets", "depth"]
    assert info["postprocess"]["thing_ids"]  # Car, Van, Truck
    assert max(info["max_abs_diff_exported_vs_eager"].values()) < 1e-4

    # A user's path: load the file with torch alone, run it, then post-process in Python.
    if fmt == "torch_export":
        network = torch.export.load(str(out / "model.pt2")).module()
    else:
        network = torch.jit.load(str(out / "model.ts"))
    cfg = tool.setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", trained_like])
    model = tool.load_model(cfg)
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = [{"image": image, "height": H, "width": W}]
    with torch.no_grad():
        sem, center, offset, depth = network(image[None].float())
        from_export = model.postprocess(sem, center, offset, depth, inputs, [(H, W)])[0]
        eager = model(inputs)[0]
    assert sem.shape == (1, model.sem_seg_head.predictor.out_channels, H, W)
    assert depth.shape == (1, 1, H, W)
    assert float(depth.min()) > 19.5 and float(depth.max()) < 20.7  # the checkpoint's weights, not a fresh build
    torch.testing.assert_close(from_export["depth"], eager["depth"], rtol=1e-4, atol=1e-4)
    assert torch.equal(from_export["panoptic_seg"][0], eager["panoptic_seg"][0])
    assert eager["panoptic_seg"][1]  # at least one segment to compare
    assert [s["id"] for s in from_export["panoptic_seg"][1]] == [s["id"] for s in eager["panoptic_seg"][1]]


def test_export_rejects_a_size_the_backbone_cannot_take(tool, tmp_path):
    cfg = tool.setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match=r"100x320 must be a multiple of the backbone's size divisibility 32"):
        tool.export(cfg, 100, 320, str(tmp_path))


CITYSCAPES_CONFIG = os.path.join(
    REPO_ROOT, "projects/PanopticDepthLab/configs/Cityscapes-PanopticDepth/"
    "panoptic_depthlab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.yaml")


def test_a_model_that_pads_nothing_exports(tool, tmp_path):
    """The Cityscapes config (INPUT.SIZE_DIVISIBILITY -1, a ResNet asking for no divisibility: the model
    pads nothing) exports at any size instead of dividing by zero, and matches eager there."""
    from detectron2.modeling import build_model

    cfg = tool.setup_cfg(CITYSCAPES_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    assert build_model(cfg)._size_divisibility() == 0
    info = tool.main(["--config-file", CITYSCAPES_CONFIG, "--height", "64", "--width", "128", "--output",
                      str(tmp_path), "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    assert info["input"]["shape"] == [1, 3, 64, 128]
    assert max(info["max_abs_diff_exported_vs_eager"].values()) < 1e-4


# ---- ONNX ----------------------------------------------------------------------------------------
HYDRANET_CONFIG = os.path.join(REPO_ROOT, "projects/HydraNet/configs/Synthetic-HydraNet/hydranet_mbv2_cpu.yaml")
HH, HW = 64, 96  # export size (a multiple of 32)
CHECK = (45, 77)  # the second, dynamic size (not a multiple of 32)


@pytest.fixture(scope="module")
def hydranet_weights(tool, tmp_path_factory):
    """HydraNet weights whose depth varies over the image (a fresh build predicts ~10 m almost
    everywhere, which would make the depth parity check trivially easy)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = tool.setup_cfg(HYDRANET_CONFIG, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(2)
    model = build_model(cfg)
    with torch.no_grad():
        model.depth_head.predictor.weight.normal_(0, 0.2)
        model.depth_head.predictor.bias.fill_(2.0)
    save_dir = tmp_path_factory.mktemp("hydranet_weights")
    DetectionCheckpointer(model, save_dir=str(save_dir)).save("model")
    return str(save_dir / "model.pth")


@pytest.fixture(scope="module")
def hydranet_onnx(tool, hydranet_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("hydranet_onnx")
    info = tool.main(["--config-file", HYDRANET_CONFIG, "--format", "onnx", "--height", str(HH), "--width", str(HW),
                      "--check-size", f"{CHECK[0]}x{CHECK[1]}", "--output", str(out),
                      "MODEL.WEIGHTS", hydranet_weights, "MODEL.DEVICE", "cpu"])
    return out, info


def _hydranet(tool, weights, *opts):
    cfg = tool.setup_cfg(HYDRANET_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, *opts])
    return cfg, tool.load_model(cfg)


def test_hydranet_onnx_export_is_dynamic_and_matches_eager(tool, hydranet_onnx, hydranet_weights):
    import onnx

    out, info = hydranet_onnx
    assert json.loads((out / "export.json").read_text()) == info
    assert info["format"] == "onnx" and info["onnx"]["opset"] >= 17
    assert info["outputs"] == ["sem_seg_logits", "depth"]
    assert set(info["parity"]) == {f"{HH}x{HW}", f"{CHECK[0]}x{CHECK[1]}"}
    # the second size went through the in-graph padding: outputs at the padded size
    assert info["parity"]["45x77"]["output_shape"] == [1, 14, 64, 96]
    assert info["max_abs_diff_depth"] <= 1e-3 and info["argmax_agreement"] >= 0.999 and info["parity_ok"]
    assert info["max_abs_diff_depth"] == max(p["max_abs_diff_depth"] for p in info["parity"].values())
    assert info["config_fingerprint"]["num_classes"] == 14

    proto = onnx.load(str(out / "model.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3]  # batch, height and width are symbolic
    assert "segdep_d2.config" in {p.key for p in proto.metadata_props}

    # A user's path: load the file for this config, run it on detectron2 inputs of other sizes
    # (one resized on output), compare with the eager model.
    from segdep_d2.modeling.export import load_onnx_model

    cfg, model = _hydranet(tool, hydranet_weights)
    onnx_model = load_onnx_model(str(out / "model.onnx"), cfg)
    g = torch.Generator().manual_seed(3)
    for (h, w), (height, width) in (((HH, HW), (HH, HW)), ((70, 110), (70, 110)), ((50, 80), (100, 160))):
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        inputs = [{"image": image, "height": height, "width": width}]
        with torch.no_grad():
            eager = model(inputs)[0]
            sem, depth = onnx_model.network(image[None].float())
            from_onnx = model.postprocess(sem, depth, inputs, [(h, w)])[0]
        assert sem.shape[-2:] == (-(-h // 32) * 32, -(-w // 32) * 32)  # padded input size, full resolution
        assert from_onnx["depth"].shape == (height, width)
        assert float(eager["depth"].max() - eager["depth"].min()) > 0.5  # depth varies: a real check
        assert float((from_onnx["depth"] - eager["depth"]).abs().max()) <= 1e-3
        agreement = (from_onnx["sem_seg"].argmax(0) == eager["sem_seg"].argmax(0)).float().mean()
        assert float(agreement) >= 0.999
        torch.testing.assert_close(onnx_model(inputs)[0]["depth"], from_onnx["depth"])


def test_hydranet_export_at_a_size_not_divisible_by_32_pads(tool, hydranet_weights, tmp_path, capsys):
    """50x70 is no multiple of 32: the graph pads to 64x96 instead of failing (every format)."""
    cfg, _ = _hydranet(tool, hydranet_weights)
    _, info = tool.export(cfg, 50, 70, str(tmp_path / "onnx"), "onnx")
    assert info["parity_ok"] and info["parity"]["50x70"]["output_shape"] == [1, 14, 64, 96]
    printed = capsys.readouterr().out  # the checks are printed
    assert "onnxruntime vs eager at 50x70: max |depth diff|" in printed and "argmax agreement" in printed
    assert "parity OK" in printed
    _, info = tool.export(cfg, 50, 70, str(tmp_path / "ts"), "torchscript")
    assert max(info["max_abs_diff_exported_vs_eager"].values()) < 1e-4
    network = torch.jit.load(str(tmp_path / "ts" / "model.ts"))
    sem, depth = network(torch.rand(1, 3, 50, 70) * 255)
    assert sem.shape == (1, 14, 64, 96) and depth.shape == (1, 1, 64, 96)


def test_onnx_file_from_another_config_is_refused(tool, hydranet_onnx, hydranet_weights, tmp_path):
    import onnx

    from segdep_d2.modeling.export import load_onnx_model

    path = str(hydranet_onnx[0] / "model.onnx")
    cfg40, _ = _hydranet(tool, hydranet_weights, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "40")
    with pytest.raises(ValueError, match=r"another config.*num_classes: file 14, config 40"):
        load_onnx_model(path, cfg40)
    cfg_nyu = tool.setup_cfg(os.path.join(REPO_ROOT, "projects/HydraNet/configs/NYUv2-HydraNet/hydranet_mbv2_nyuv2_40.yaml"),
                             ["MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match=r"num_classes: file 14, config 40; max_depth: file 80.0, config 10.0"):
        load_onnx_model(path, cfg_nyu)
    pdl = tool.setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match=r"meta_architecture: file 'HydraNet', config 'PanopticDepthLab'.*output_names"):
        load_onnx_model(path, pdl)
    # a file without segdep_d2's metadata (exported by hand, or stripped)
    proto = onnx.load(path)
    del proto.metadata_props[:]
    bare = str(tmp_path / "bare.onnx")
    onnx.save(proto, bare)
    cfg, _ = _hydranet(tool, hydranet_weights)
    with pytest.raises(ValueError, match=r"no segdep_d2 config metadata"):
        load_onnx_model(bare, cfg)
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        load_onnx_model(str(tmp_path / "missing.onnx"), cfg)


def test_panoptic_depthlab_onnx_export(tool, trained_like, tmp_path):
    """PanopticDepthLab exports to ONNX too; with global ASPP pooling (no training crop) its
    height / width are dynamic, and onnxruntime + model.postprocess gives the eager panoptic result."""
    from segdep_d2.modeling.export import load_onnx_model

    cfg = tool.setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", trained_like])
    _, info = tool.export(cfg, H, W, str(tmp_path), "onnx")
    assert info["outputs"] == ["sem_seg_logits", "center_heatmap", "offsets", "depth"]
    assert info["onnx"]["dynamic_axes"] and len(info["parity"]) == 2 and info["parity_ok"]
    model = tool.load_model(cfg)
    onnx_model = load_onnx_model(str(tmp_path / "model.onnx"), cfg, model=model)
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = [{"image": image, "height": H, "width": W}]
    with torch.no_grad():
        eager, exported = model(inputs)[0], onnx_model(inputs)[0]
    torch.testing.assert_close(exported["depth"], eager["depth"], rtol=1e-4, atol=1e-3)
    assert torch.equal(exported["panoptic_seg"][0], eager["panoptic_seg"][0])


def test_panoptic_depthlab_onnx_with_fixed_aspp_pooling_is_static(tool, tmp_path):
    """A cropped-training config's ASPP pools with a fixed kernel: the ONNX export is static-size,
    and the loader says so when given another size."""
    from segdep_d2.modeling.export import load_onnx_model

    cfg = tool.setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu", "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE",
                                  "absolute", "INPUT.CROP.SIZE", "(128, 256)"])
    _, info = tool.export(cfg, 128, 256, str(tmp_path), "onnx")
    assert info["onnx"]["dynamic_axes"] is None and list(info["parity"]) == ["128x256"] and info["parity_ok"]
    onnx_model = load_onnx_model(str(tmp_path / "model.onnx"), cfg)
    with pytest.raises(ValueError, match=r"static size 128x256; got images of 64x128"):
        onnx_model.network(torch.zeros(1, 3, 64, 128))


# ---- the real-time deployment: labels in the graph, exact rewrites for onnxruntime's CPU kernels -----
@pytest.fixture(scope="module")
def hydranet_labels_onnx(tool, hydranet_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("hydranet_labels_onnx")
    info = tool.main(["--config-file", HYDRANET_CONFIG, "--format", "onnx", "--outputs", "labels",
                      "--height", str(HH), "--width", str(HW), "--check-size", f"{CHECK[0]}x{CHECK[1]}",
                      "--output", str(out), "MODEL.WEIGHTS", hydranet_weights, "MODEL.DEVICE", "cpu"])
    return out, info


def test_hydranet_labels_onnx_matches_the_eager_argmax(tool, hydranet_labels_onnx, hydranet_weights, capsys):
    """--outputs labels: the file outputs sem_seg_labels (the argmax, int64) + depth; its parity
    compares the labels exactly with the eager logits' argmax; the loader and model.postprocess
    know the file's outputs."""
    import onnx

    from segdep_d2.modeling.export import load_onnx_model, read_onnx_fingerprint

    out, info = hydranet_labels_onnx
    assert json.loads((out / "export.json").read_text()) == info
    assert info["outputs"] == ["sem_seg_labels", "depth"] and info["output_kind"] == "labels"
    assert info["config_fingerprint"]["output_names"] == ["sem_seg_labels", "depth"]
    assert info["parity"]["45x77"]["output_shape"] == [1, 64, 96]  # padded size, no channel axis
    assert "max_abs_diff_sem_seg_logits" not in info["parity"]["45x77"]
    assert info["max_abs_diff_depth"] <= 1e-3 and info["argmax_agreement"] >= 0.999 and info["parity_ok"]
    assert info["onnx"]["graph_rewrites"] == {"relu6_nchwc": 4, "conv_taps": 1, "nhwc_argmax": 1,
                                              "separable_maxpool": 16}

    path = str(out / "model.onnx")
    proto = onnx.load(path)
    assert [d.dim_param for d in proto.graph.output[0].type.tensor_type.shape.dim] == ["batch", "height", "width"]
    # every bilinear resize by a constant factor (x2 in the decoder, x4 for the heads), none to sizes read
    # from a shape: onnxruntime keeps constant-scale resizes in its blocked layout
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    resizes = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 5 and all(len(n.input) == 3 and n.input[2] for n in resizes)
    assert {producers[n.input[2]] for n in resizes} == {"Constant", "Gather"}  # Gather: NHWC-permuted scales
    assert [n.op_type for n in proto.graph.node if n.op_type == "ArgMax"] == ["ArgMax"]
    assert read_onnx_fingerprint(path)["output_names"] == ["sem_seg_labels", "depth"]

    cfg, model = _hydranet(tool, hydranet_weights)
    onnx_model = load_onnx_model(path, cfg)  # the same config accepts either output set
    assert onnx_model.outputs == "labels" and onnx_model.output_names == ("sem_seg_labels", "depth")
    g = torch.Generator().manual_seed(4)
    for h, w in ((HH, HW), (70, 110)):
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        inputs = [{"image": image, "height": h, "width": w}]
        with torch.no_grad():
            eager = model(inputs)[0]
        labels, depth = onnx_model.network(image[None].float())
        assert labels.dtype == torch.int64 and labels.shape == (1, -(-h // 32) * 32, -(-w // 32) * 32)
        result = onnx_model(inputs)[0]
        assert set(result) == {"sem_seg_labels", "depth"} and result["sem_seg_labels"].shape == (h, w)
        assert float((result["sem_seg_labels"] == eager["sem_seg"].argmax(0)).float().mean()) >= 0.999
        assert float((result["depth"] - eager["depth"]).abs().max()) <= 1e-3
    # resized on output (height / width of the input dict): nearest neighbour on the labels
    image = torch.randint(0, 256, (3, 50, 80), dtype=torch.uint8, generator=g)
    resized = onnx_model([{"image": image, "height": 100, "width": 160}])[0]
    assert resized["sem_seg_labels"].shape == (100, 160) and resized["sem_seg_labels"].dtype == torch.int64
    assert resized["depth"].shape == (100, 160)

    with pytest.raises(ValueError, match=r"num_classes: file 14, config 40"):
        load_onnx_model(path, _hydranet(tool, hydranet_weights, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "40")[0])


def test_graph_rewrites_change_layout_not_results(tool, hydranet_onnx, hydranet_weights, tmp_path):
    """The default HydraNet ONNX file carries the exact rewrites; --no-graph-rewrites writes the
    plain torch.onnx graph; both give the same outputs (float summation order aside)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    out, info = hydranet_onnx
    # logits: no ArgMax to move; CRP's 16 5x5 max-pools (4 blocks of 4) split into 1x5 + 5x1
    assert info["onnx"]["graph_rewrites"] == {"relu6_nchwc": 4, "conv_taps": 1, "separable_maxpool": 16}
    plain = tool.main(["--config-file", HYDRANET_CONFIG, "--format", "onnx", "--no-graph-rewrites",
                       "--height", str(HH), "--width", str(HW), "--check-size", f"{CHECK[0]}x{CHECK[1]}",
                       "--output", str(tmp_path), "MODEL.WEIGHTS", hydranet_weights, "MODEL.DEVICE", "cpu"])
    assert plain["onnx"]["graph_rewrites"] == {} and plain["parity_ok"]

    def clips_after(path, op_types):
        graph = onnx.load(path).graph
        producer = {o: n.op_type for n in graph.node for o in n.output}
        return sum(n.op_type == "Clip" and producer.get(n.input[0]) in op_types for n in graph.node)

    assert clips_after(str(tmp_path / "model.onnx"), {"Add"}) == 4  # the decoder's relu6(sum)
    assert clips_after(str(out / "model.onnx"), {"Add"}) == 0
    x = (np.random.default_rng(0).random((1, 3, 45, 77)) * 255).astype(np.float32)
    results = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"images": x})
               for p in (str(out / "model.onnx"), str(tmp_path / "model.onnx"))]
    for rewritten, original in zip(*results):
        np.testing.assert_allclose(rewritten, original, rtol=1e-4, atol=1e-5)


def test_rewrite_onnx_for_cpu_on_a_small_graph(tmp_path):
    """Each rewrite on a hand-made network: a ReLU6 after an Add, a 3x3 conv to one channel, an
    argmax over a bilinear upsampling, a padded 5x5 stride-1 max-pool (a strided one
    stays); onnxruntime gives the same outputs before and after (the max-pools bit for bit)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from torch import nn
    from torch.nn import functional as F

    from segdep_d2.modeling.export import rewrite_onnx_for_cpu

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1)
            self.one = nn.Conv2d(16, 1, 3, padding=1)
            self.classes = nn.Conv2d(16, 5, 1)

        def forward(self, x):
            y = F.relu6(self.a(x) + self.b(x))
            labels = F.interpolate(self.classes(y), scale_factor=4, mode="bilinear", align_corners=False).argmax(1)
            pooled = F.max_pool2d(F.pad(y, (2, 1, 0, 2), value=float("-inf")), 5, stride=1, padding=1)
            return self.one(y), labels, pooled, F.max_pool2d(y, 3, stride=2, padding=1)

    torch.manual_seed(0)
    path = str(tmp_path / "small.onnx")
    torch.onnx.export(Small().eval(), (torch.randn(1, 3, 8, 12),), path, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["one", "labels", "pooled", "strided"],
                      dynamic_axes={"x": {2: "h", 3: "w"}, "one": {2: "h", 3: "w"}, "labels": {1: "H", 2: "W"},
                                    "pooled": {2: "ph", 3: "pw"}, "strided": {2: "sh", 3: "sw"}})
    proto = onnx.load(path)
    assert rewrite_onnx_for_cpu(proto) == {"relu6_nchwc": 1, "conv_taps": 1, "nhwc_argmax": 1,
                                           "separable_maxpool": 1}
    pools = [[list(a.ints) for a in n.attribute if a.name in ("kernel_shape", "strides")]
             for n in proto.graph.node if n.op_type == "MaxPool"]
    assert sorted(pools) == [[[1, 5], [1, 1]], [[3, 3], [2, 2]], [[5, 1], [1, 1]]]
    onnx.checker.check_model(proto)
    rewritten = str(tmp_path / "rewritten.onnx")
    onnx.save(proto, rewritten)
    x = np.random.default_rng(1).standard_normal((1, 3, 10, 14)).astype(np.float32)
    before, after = (ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"x": x})
                     for p in (path, rewritten))
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-6)
    assert after[1].shape == (1, 40, 56) and (after[1] == before[1]).mean() >= 0.999
    assert after[2].shape == before[2].shape == (1, 16, 10, 15)
    np.testing.assert_array_equal(after[2], before[2])
    np.testing.assert_array_equal(after[3], before[3])


def test_labels_output_is_hydranet_only(tool, tmp_path):
    cfg = tool.setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match=r"PanopticDepthLab exports outputs \['logits'\], not 'labels'"):
        tool.export(cfg, H, W, str(tmp_path), "onnx", outputs="labels")


# ---- DepthCompletion: images + sparse depth (+ semantics) -> depth (+ confidence) ---------------------------
DC_CONFIG = os.path.join(REPO_ROOT, "projects/DepthCompletion/configs/Synthetic-DepthCompletion/depth_completion_cpu.yaml")
DC_LABELS = ("MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT", "labels", "MODEL.DEPTH_COMPLETION.NUM_CLASSES", "5",
             "MODEL.DEPTH_COMPLETION.PREDICT_CONFIDENCE", "True")


def _calibrated(tool, config, *opts, seed=0):
    """A config's model (CPU, random weights of ``seed``) calibrated so that its outputs vary (the
    walk's calibrate_random_weights: a fresh DepthCompletion outputs its input fill)."""
    from segdep_d2.modeling.export import calibrate_random_weights

    cfg = tool.setup_cfg(config, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    torch.manual_seed(seed)
    model = tool.load_model(cfg)
    calibrate_random_weights(model)
    return cfg, model


def _completion_input(h, w, seed, *, labels=0, height=None, width=None):
    """A DepthCompletion input: an image, ~5 % of the pixels with a depth in [1, 70] m (+ labels in [0,
    ``labels``) with some unlabelled pixels) and its output size."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(h, w, generator=g) < 0.05
    x = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
         "sparse_depth": torch.where(points, 1 + 69 * torch.rand(h, w, generator=g), torch.zeros(())),
         "height": height or h, "width": width or w}
    if labels:
        sem = torch.randint(0, labels, (h, w), generator=g)
        sem[torch.rand(h, w, generator=g) < 0.1] = 255
        x["sem_seg"] = sem
    return x


@pytest.fixture(scope="module")
def completion_labels_onnx(tool, tmp_path_factory):
    """A DepthCompletion with labels as semantic input and a confidence output, exported to ONNX at 64x96."""
    cfg, model = _calibrated(tool, DC_CONFIG, *DC_LABELS)
    out = tmp_path_factory.mktemp("completion_onnx")
    _, info = tool.export(cfg, 64, 96, str(out), "onnx", model=model)
    return cfg, model, str(out / "model.onnx"), info


def test_depth_completion_onnx_gives_the_models_depth_and_confidence(completion_labels_onnx):
    """The file takes images, sparse depth and the label map and returns depth + confidence logits at
    the padded size; load_onnx_model + the model's postprocess give what model(inputs) gives, at sizes
    that are no multiple of 32, resized on output, and for an input without labels."""
    from segdep_d2.modeling.export import load_onnx_model

    cfg, model, path, info = completion_labels_onnx
    assert list(info["inputs"]) == ["images", "sparse_depth", "semantics"]
    assert info["inputs"]["semantics"]["dtype"] == "int64" and info["inputs"]["sparse_depth"]["shape"] == [1, 64, 96]
    assert info["outputs"] == ["depth", "confidence_logits"]
    assert info["config_fingerprint"]["num_classes"] == 5 and info["config_fingerprint"]["semantic_input"] == "labels"
    assert info["parity_ok"] and len(info["parity"]) == 2 and info["argmax_agreement"] is None
    assert info["max_abs_diff_depth"] <= 1e-3 and "max_abs_diff_confidence_logits" in info["parity"]["64x96"]
    assert any("clamp" in line for line in info["outside_graph"])

    onnx_model = load_onnx_model(path, cfg, model=model)
    assert onnx_model.input_names == ("images", "sparse_depth", "semantics") and onnx_model.pads_input
    cases = [_completion_input(64, 96, 1, labels=5), _completion_input(50, 70, 2, labels=5),
             _completion_input(45, 77, 3, labels=5, height=90, width=154), _completion_input(50, 70, 4)]
    for x in cases:
        with torch.no_grad():
            eager = model([x])[0]
        exported = onnx_model([x])[0]
        assert set(exported) == {"depth", "depth_confidence"}
        assert exported["depth"].shape == (x["height"], x["width"])
        assert float(eager["depth"].max() - eager["depth"].min()) > 1.0  # depth varies: a real check
        assert float((exported["depth"] - eager["depth"]).abs().max()) <= 1e-3
        torch.testing.assert_close(exported["depth_confidence"], eager["depth_confidence"], rtol=0, atol=1e-4)
    # the label map matters: other labels, other depth
    relabelled = dict(cases[1], sem_seg=(cases[1]["sem_seg"] + 1) % 5)
    assert float((onnx_model([relabelled])[0]["depth"] - onnx_model([cases[1]])[0]["depth"]).abs().max()) > 1e-2


def test_depth_completion_without_sparse_depth_names_the_missing_input(completion_labels_onnx):
    from segdep_d2.modeling.export import DepthCompletionNetwork, load_onnx_model

    cfg, model, path, _ = completion_labels_onnx
    onnx_model = load_onnx_model(path, cfg, model=model)
    x = _completion_input(64, 96, 0, labels=5)
    del x["sparse_depth"]
    with pytest.raises(KeyError, match=r"needs 'sparse_depth'.*graph inputs are images, sparse_depth, semantics"):
        onnx_model([x])
    images = x["image"][None].float()
    with pytest.raises(ValueError, match=r"takes the inputs \['images', 'sparse_depth', 'semantics'\]; got 1 "
                                         r"tensor\(s\), missing \['sparse_depth', 'semantics'\]"):
        onnx_model.network(images)
    with pytest.raises(TypeError, match="sparse_depth"):
        DepthCompletionNetwork(model)(images)
    with pytest.raises(ValueError, match=r"sparse_depth must be \(N, H, W\) metres, got \(1, 1, 64, 96\)"):
        DepthCompletionNetwork(model)(images, torch.zeros(1, 1, 64, 96), torch.zeros(1, 64, 96, dtype=torch.long))


def test_depth_completion_file_from_another_config_is_refused(tool, completion_labels_onnx):
    from segdep_d2.modeling.export import load_onnx_model

    _, model, path, _ = completion_labels_onnx
    plain = tool.setup_cfg(DC_CONFIG, ["MODEL.DEVICE", "cpu"])  # no semantics, no confidence
    with pytest.raises(ValueError, match=r"num_classes: file 5, config 0; output_names: .*input_names: .*"
                                         r"semantic_input: file 'labels', config 'none'"):
        load_onnx_model(path, plain, model=model)


def test_depth_completion_torch_export_through_exported_inference(tool, tmp_path):
    """The torch.export file (no semantics: images + sparse depth) run by exported_inference."""
    from segdep_d2.modeling.export import exported_inference

    cfg, model = _calibrated(tool, DC_CONFIG)
    _, info = tool.export(cfg, 64, 96, str(tmp_path), "torch_export", model=model)
    assert list(info["inputs"]) == ["images", "sparse_depth"] and info["outputs"] == ["depth"] and info["parity_ok"]
    network = torch.export.load(str(tmp_path / "model.pt2")).module()
    x = _completion_input(64, 96, 5, height=32, width=48)
    with torch.no_grad():
        eager = model([x])[0]
        exported = exported_inference(network, model, [x])[0]
    assert set(exported) == {"depth"} and exported["depth"].shape == (32, 48)
    torch.testing.assert_close(exported["depth"], eager["depth"], rtol=0, atol=1e-4)


def test_depth_completion_guide_runs_inside_the_graph(tool, tmp_path):
    """SEMANTIC_INPUT "guide": the frozen HydraNet runs inside the exported graph (images + sparse depth
    in); onnxruntime + postprocess give model(inputs), whose guide runs in Python."""
    from segdep_d2.modeling.export import load_onnx_model

    cfg, model = _calibrated(tool, DC_CONFIG, "MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT", "guide",
                             "MODEL.DEPTH_COMPLETION.NUM_CLASSES", "14", "MODEL.DEPTH_COMPLETION.GUIDE_CONFIG",
                             HYDRANET_CONFIG, "MODEL.DEPTH_COMPLETION.GUIDE_WEIGHTS", "")
    _, info = tool.export(cfg, 64, 96, str(tmp_path), "onnx", model=model)
    assert list(info["inputs"]) == ["images", "sparse_depth"] and info["parity_ok"]
    onnx_model = load_onnx_model(str(tmp_path / "model.onnx"), cfg, model=model)
    blind = copy.deepcopy(model)  # the same model, deaf to the guide's class maps
    with torch.no_grad():
        blind.semantic_embedding.weight.zero_()
    for x in (_completion_input(64, 96, 6), _completion_input(45, 77, 7)):
        with torch.no_grad():
            eager, without_guide = model([x])[0], blind([x])[0]
        exported = onnx_model([x])[0]
        assert float((exported["depth"] - eager["depth"]).abs().max()) <= 1e-3
        # the class maps change the depth: matching eager, the file computes the guide's
        assert float((without_guide["depth"] - eager["depth"]).abs().max()) > 1e-2


def test_completion_network_counts_what_the_benchmark_counts(tool):
    """semantics="probabilities": the class maps as a graph input (tools/benchmark.py's FLOP count of
    the completion network without its guide); its depth is network_outputs' finest."""
    from segdep_d2.modeling.export import DepthCompletionNetwork

    _, model = _calibrated(tool, DC_CONFIG, *DC_LABELS)
    x = _completion_input(64, 96, 8, labels=5)
    images, sparse, semantics, _ = model.preprocess([x])
    network = DepthCompletionNetwork(model, semantics="probabilities").eval()
    assert network.input_names == ("images", "sparse_depth", "semantics")
    with torch.no_grad():
        depth, confidence = network(x["image"][None].float(), x["sparse_depth"][None], semantics)
        depths, expected_confidence = model.network_outputs(images, sparse, semantics)
    torch.testing.assert_close(depth, depths[-1])
    torch.testing.assert_close(confidence, expected_confidence)
    with pytest.raises(ValueError, match="SEMANTIC_INPUT is 'labels'"):
        DepthCompletionNetwork(model, semantics="words")


# ---- SegDep: images + text embeddings (+ temporal state, + queries) ---------------------------------------
SEGDEP_CONFIG = os.path.join(REPO_ROOT, "projects/SegDep/configs/Synthetic-SegDep/segdep_hrnet18s_cpu.yaml")


@pytest.fixture(scope="module")
def tiny_segdep_opts(tiny_open_clip):
    """The CPU SegDep config with the 2-layer test text tower (registered by the fixture) and one prompt."""
    from segdep_testing import TINY_SEGDEP_OPTS

    return list(TINY_SEGDEP_OPTS)


def _segdep(tool, opts, *more, seed=0):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init CLIP warning
        return _calibrated(tool, SEGDEP_CONFIG, *opts, *more, seed=seed)


def _agreement(a, b):
    return float((a.argmax(0) == b.argmax(0)).float().mean())


def _assert_segdep_results_match(exported, eager):
    assert float(eager["depth"].max() - eager["depth"].min()) > 0.5  # depth varies: a real check
    assert float((exported["depth"] - eager["depth"]).abs().max()) <= 1e-3
    assert _agreement(exported["sem_seg"], eager["sem_seg"]) >= 0.999
    if isinstance(eager["open_vocab_seg"], dict):
        assert set(exported["open_vocab_seg"]) == set(eager["open_vocab_seg"])
        pairs = [(exported["open_vocab_seg"][k], eager["open_vocab_seg"][k]) for k in eager["open_vocab_seg"]]
    else:
        pairs = [(exported["open_vocab_seg"], eager["open_vocab_seg"])]
    for a, b in pairs:
        assert a.shape == b.shape and _agreement(a, b) >= 0.999
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3)
    assert [s["name"] for s in _segments(exported)] == [s["name"] for s in _segments(eager)]


def _segments(result):
    segments = result["open_vocab_segments"]
    return segments if isinstance(segments, list) else [s for v in segments.values() for s in v]


def test_segdep_temporal_onnx_follows_the_models_sequences(tool, tiny_segdep_opts, tmp_path):
    """A temporal SegDep's file takes the previous frame's features and has_prev, outputs the current
    features; OnnxInference keeps the model's per-sequence state as eager inference does, so a video
    (refined frames, a gap, a new sequence, several vocabularies) gives model(inputs)'s results."""
    from segdep_d2.modeling.export import load_onnx_model

    cfg, model = _segdep(tool, tiny_segdep_opts, "MODEL.SEGDEP.TEMPORAL", "True")
    with torch.no_grad():  # a gate that lets the previous frame in (fresh: sigmoid(-4))
        model.temporal_fusion.gate.bias.fill_(0.0)
    _, info = tool.export(cfg, 64, 96, str(tmp_path), "onnx", model=model)
    assert list(info["inputs"]) == ["images", "text_embeddings", "prev_features", "has_prev"]
    assert info["outputs"] == ["sem_seg_logits", "depth", "open_vocab_logits", "features"]
    assert info["inputs"]["prev_features"]["shape"] == [1, 64, 16, 24] and info["inputs"]["has_prev"]["dtype"] == "bool"
    assert info["parity_ok"] and info["agreements"]["open_vocab_argmax_agreement"] >= 0.999
    assert any("temporal state" in line for line in info["outside_graph"])
    eager_model = copy.deepcopy(model)  # its own state
    onnx_model = load_onnx_model(str(tmp_path / "model.onnx"), cfg, model=model)

    g = torch.Generator().manual_seed(9)
    frames = [torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=g) for _ in range(4)]
    video = [
        {"image": frames[0], "sequence_id": "a", "frame_index": 0},
        {"image": frames[1], "sequence_id": "a", "frame_index": 1, "class_names": ["car", "road", "sky"]},
        {"image": frames[2], "sequence_id": "a", "frame_index": 2,
         "class_names": {"street": ["car", "road"], "nature": ["tree", "sky", "grass"]}},
        {"image": frames[3], "sequence_id": "a", "frame_index": 5},  # a gap: the plain path
        {"image": frames[1], "sequence_id": "b", "frame_index": 0, "height": 100, "width": 140},
    ]
    refined = 0
    for x in video:
        with torch.no_grad():
            eager = eager_model([dict(x)])[0]
            plain = eager_model([{k: v for k, v in x.items() if k not in ("sequence_id", "frame_index")}])[0]
        exported = onnx_model([dict(x)])[0]
        _assert_segdep_results_match(exported, eager)
        refined += float((plain["depth"] - eager["depth"]).abs().max()) > 1e-3
    assert refined == 2  # frames 1 and 2 continue their sequence, and the refinement shows
    assert set(model._temporal_state) == {"a", "b"} and model._temporal_state["a"][0] == 5


def test_segdep_referring_onnx_answers_queries_as_the_model(tool, tiny_segdep_opts, tmp_path):
    """--outputs referring: query embeddings in, each query's mask logits out (batch 1); the answers
    (mask, score, area, depth over the mask) are the model's."""
    from segdep_d2.modeling.export import load_onnx_model

    cfg, model = _segdep(tool, tiny_segdep_opts)
    with torch.no_grad():  # masks of about half the image (fresh: an empty-mask prior)
        model.referring_head.query_bias.bias.fill_(0.0)
    _, info = tool.export(cfg, 64, 96, str(tmp_path), "onnx", outputs="referring", model=model)
    assert info["inputs"]["query_embeddings"]["shape"] == [3, 32] and info["outputs"][-1] == "referring_logits"
    assert info["parity_ok"] and info["agreements"]["referring_mask_agreement"] >= 0.999
    onnx_model = load_onnx_model(str(tmp_path / "model.onnx"), cfg, model=model)
    assert onnx_model.outputs == "referring"
    g = torch.Generator().manual_seed(10)
    x = {"image": torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=g),
         "queries": ["the nearest car", "the road on the left"], "height": 100, "width": 140}
    with torch.no_grad():
        eager = model([x])[0]
    exported = onnx_model([x])[0]
    _assert_segdep_results_match(exported, eager)
    assert [a["text"] for a in exported["referring"]] == x["queries"]
    for a, b in zip(exported["referring"], eager["referring"]):
        assert 0 < b["area"] < 100 * 140  # a real mask
        assert float((a["mask"] == b["mask"]).float().mean()) >= 0.999
        assert a["score"] == pytest.approx(b["score"], abs=1e-3)
        assert a["depth_median"] == pytest.approx(b["depth_median"], abs=1e-2)
    # an input without queries (the file still gets one, unused), with a one-name vocabulary
    y = {"image": x["image"], "class_names": "car"}
    with torch.no_grad():
        eager = model([y])[0]
    exported = onnx_model([y])[0]
    assert "referring" not in exported and exported["open_vocab_seg"].shape[0] == 1
    _assert_segdep_results_match(exported, eager)
    # a logits-only file cannot answer queries, and says so
    tool.export(cfg, 64, 96, str(tmp_path / "plain"), "onnx", model=model)
    plain = load_onnx_model(str(tmp_path / "plain" / "model.onnx"), cfg, model=model)
    with pytest.raises(ValueError, match="has 'queries' but the network has no referring output"):
        plain([x])


def test_segdep_torch_export_takes_any_vocabulary_size(tool, tiny_segdep_opts, tmp_path):
    """torch.export keeps the vocabulary size dynamic: one .pt2 file scores 3 names, 14 or a single one."""
    from segdep_d2.modeling.export import exported_inference

    cfg, model = _segdep(tool, tiny_segdep_opts)
    _, info = tool.export(cfg, 64, 96, str(tmp_path), "torch_export", model=model)
    assert set(info["parity"]) == {"64x96", "64x96#1"} and info["parity_ok"]
    network = torch.export.load(str(tmp_path / "model.pt2")).module()
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(11))
    for names, count in ((["car", "road", "sky"], 3), (None, 14), ("car", 1)):
        x = {"image": image} if names is None else {"image": image, "class_names": names}
        with torch.no_grad():
            eager = model([x])[0]
            exported = exported_inference(network, model, [x])[0]
        assert exported["open_vocab_seg"].shape[0] == count
        _assert_segdep_results_match(exported, eager)


def test_segdep_file_from_another_config_is_refused(tool, tiny_segdep_opts, tmp_path):
    from segdep_d2.modeling.export import load_onnx_model

    cfg, model = _segdep(tool, tiny_segdep_opts)
    tool.export(cfg, 64, 96, str(tmp_path), "onnx", model=model)
    path = str(tmp_path / "model.onnx")
    other_clip = tool.setup_cfg(SEGDEP_CONFIG, ["MODEL.DEVICE", "cpu"])  # ViT-S-32-alt
    with pytest.raises(ValueError, match=r"clip_model: file 'segdep-test-tiny-clip', config 'ViT-S-32-alt'"):
        load_onnx_model(path, other_clip, model=model)
    temporal = tool.setup_cfg(SEGDEP_CONFIG,
                              ["MODEL.DEVICE", "cpu", *tiny_segdep_opts, "MODEL.SEGDEP.TEMPORAL", "True"])
    with pytest.raises(ValueError, match=r"output_names: .*'features'.*input_names: .*'prev_features'"):
        load_onnx_model(path, temporal, model=model)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_load_deployed_runs_a_depth_completion_export_like_the_model(tool, completion_labels_onnx, tmp_path, fmt):
    """``--deployed`` (load_deployed) takes the multi-input families too: images, sparse depth and labels
    reach the file from the detectron2 inputs, and the result is the eager model's."""
    from segdep_d2.modeling.deployed import load_deployed

    cfg, model, path, _ = completion_labels_onnx
    if fmt != "onnx":
        tool.export(cfg, 64, 96, str(tmp_path), fmt, model=model)
        path = str(tmp_path)
    deployed = load_deployed(path, cfg, model=model)
    assert deployed.runtime == ("onnxruntime" if fmt == "onnx" else fmt)
    for x in (_completion_input(64, 96, 5, labels=5), _completion_input(64, 96, 6, labels=5, height=128, width=192)):
        with torch.no_grad():
            eager = model([x])[0]
        got = deployed([x])[0]
        assert got["depth"].shape == eager["depth"].shape == (x["height"], x["width"])
        assert float(eager["depth"].max() - eager["depth"].min()) > 1.0
        assert float((got["depth"] - eager["depth"]).abs().max()) <= 1e-3
        torch.testing.assert_close(got["depth_confidence"], eager["depth_confidence"], rtol=0, atol=1e-4)
