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
