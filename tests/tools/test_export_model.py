"""tools/export_model.py: the exported network computes what the eager model computes."""
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
