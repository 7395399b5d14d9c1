"""tools/export_model.py's walk: every leaf config under projects/*/configs (every yaml not named
``Base-*``: those are partial bases, never built on their own) exports by torch.export, TorchScript
and ONNX at the small size (64x128) on the CPU, and each export computes what the eager network
computes.

One test per config (a failure names its config); the model is built once per config and shared by
the three formats. Random weights (``MODEL.WEIGHTS ""``, nothing downloaded), made informative by
``calibrate_random_weights`` so that the parity figures are real ones (logits of unit scale, a
depth map that varies). The model files are removed once measured (export.json stays).
"""
import glob
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Leaf configs per project: a new config (or a lost one) changes these counts, so none is skipped silently.
EXPECTED_CONFIGS = {"DepthCompletion": 6, "HydraNet": 5, "PanopticDepthLab": 4, "SegDep": 3}
CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO_ROOT, "projects", "*", "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)
FORMATS = ("torch_export", "torchscript", "onnx")
# The graph inputs / outputs of each family's shipped configs (SegDep: the temporal config adds the state).
INPUTS = {"PanopticDepthLab": ["images"], "HydraNet": ["images"], "DepthCompletion": ["images", "sparse_depth"],
          "SegDep": ["images", "text_embeddings"]}
OUTPUTS = {"PanopticDepthLab": ["sem_seg_logits", "center_heatmap", "offsets", "depth"],
           "HydraNet": ["sem_seg_logits", "depth"], "DepthCompletion": ["depth"],
           "SegDep": ["sem_seg_logits", "depth", "open_vocab_logits"]}


def _project(path):
    return os.path.relpath(path, os.path.join(REPO_ROOT, "projects")).split(os.sep)[0]


# torch on one thread: the tests run side by side with others on 2 cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_walk_finds_every_leaf_config(export_tool):
    counts = {}
    for path in CONFIGS:
        counts[_project(path)] = counts.get(_project(path), 0) + 1
    assert counts == EXPECTED_CONFIGS
    assert export_tool.leaf_configs() == CONFIGS
    assert not any(os.path.basename(p).startswith("Base-") for p in export_tool.leaf_configs())


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.relpath(p, os.path.join(REPO_ROOT, "projects"))
                                                 for p in CONFIGS])
def test_config_exports_in_every_format_with_parity(export_tool, config, tmp_path):
    record = export_tool.export_config(config, sizes=("small",), formats=FORMATS, output_dir=str(tmp_path),
                                       referring=False, keep_files=False)
    key = os.path.relpath(config, REPO_ROOT)
    assert export_tool.record_failures(key, record) == []
    family = record["meta_architecture"]
    assert family == _project(config)
    temporal = family == "SegDep" and "temporal" in config
    entry = record["sizes"]["small"]
    assert entry["size"] == [64, 128]
    assert set(entry["formats"]) == set(FORMATS)
    for fmt, result in entry["formats"].items():
        assert result["ok"] and result["parity_ok"], (fmt, result)
        assert result["inputs"] == INPUTS[family] + (["prev_features", "has_prev"] if temporal else [])
        assert result["outputs"] == OUTPUTS[family] + (["features"] if temporal else [])
        assert result["file_mb"] > 0.1 and result["file"] is None  # written, measured, removed
        for size, parity in result["parity"].items():
            assert parity["max_abs_diff_depth"] <= 1e-3, (fmt, size)
            low, high = parity["reference_depth_range_m"]
            assert high - low > 0.5, (fmt, size)  # a depth map that varies: the check is not trivial
            if family != "DepthCompletion":
                assert parity["argmax_agreement"] >= 0.999, (fmt, size)
                assert parity["max_abs_diff_sem_seg_logits"] < 1e-2, (fmt, size)
            if family == "SegDep":
                assert parity["open_vocab_argmax_agreement"] >= 0.999, (fmt, size)
        if fmt == "onnx":
            # dynamic height / width, checked at a second size too; static-size only where an ASPP pools
            # with a fixed kernel (the Cityscapes configs, trained on crops)
            static = "Cityscapes-PanopticDepth" in config
            assert result["onnx_dynamic_hw"] is not static
            assert len(result["parity"]) == (1 if static else 2), result["parity"].keys()
        elif family == "SegDep":
            assert set(result["parity"]) == {"64x128", "64x128#1"}  # another vocabulary size (and has_prev)
    assert os.path.isfile(os.path.join(str(tmp_path), os.path.splitext(key.replace(os.sep, "__"))[0], "64x128",
                                       "onnx", "export.json"))


# The natural test size of each config: its test dataset's native frame resized as inference resizes it
# (ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)), rounded up to the size divisibility.
TEST_SIZES = {
    "Cityscapes": (1024, 2048),  # 1024 x 2048 frames; the model pads nothing (divisibility 0)
    "VKITTI2": (384, 1248), "KITTI-HydraNet": (384, 1248),  # 375 x 1242 -> 384 x 1248
    "KITTI-DepthCompletion": (352, 1216),  # the benchmark's 352 x 1216 crops
    "NYUv2": (480, 640),
    "Sidewalk": (512, 928),  # 1080 x 1920 at a 512 short side: 512 x 910
    "Synthetic-DepthCompletion": (192, 640),  # KITTI frames at a 188 short side: 188 x 623
    "Synthetic": (128, 448),  # VKITTI2 frames at a 128 short side: 128 x 424
}


def test_natural_test_sizes(export_tool):
    for config in CONFIGS:
        cfg = export_tool.setup_cfg(config, export_tool.walk_opts(config))
        divisibility = 0 if "Cityscapes" in config else 32
        expected = next(size for key, size in TEST_SIZES.items() if key in config)
        assert export_tool.natural_test_size(cfg, divisibility) == expected, config


def test_all_configs_cli_writes_the_summary(export_tool, tmp_path, monkeypatch, capsys):
    """--all-configs through main(): the walk over (here) one config, one format, a given size, and its
    summary.json; a failed export is recorded with its error and makes the exit status 1."""
    import json

    config = os.path.join(REPO_ROOT, "projects/DepthCompletion/configs/Synthetic-DepthCompletion",
                          "depth_completion_cpu.yaml")
    monkeypatch.setattr(export_tool, "leaf_configs", lambda: [config])
    summary = export_tool.main(["--all-configs", "--format", "onnx", "--size", "64x96", "--output", str(tmp_path)])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    key = os.path.relpath(config, REPO_ROOT)
    result = summary["configs"][key]["sizes"]["64x96"]["formats"]["onnx"]
    assert result["ok"] and result["file_mb"] > 0.1 and os.path.isfile(result["file"]) and result["seconds"] > 0
    assert summary["failures"] == [] and summary["formats"] == ["onnx"]
    assert f"ok   {key} 64x96 onnx" in capsys.readouterr().out
    # a size PanopticDepthLab's backbone cannot take: the error is recorded, the walk goes on, exit 1
    pdl = os.path.join(REPO_ROOT, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth",
                       "panoptic_depthlab_R_18_os32_cpu.yaml")
    monkeypatch.setattr(export_tool, "leaf_configs", lambda: [pdl, config])
    with pytest.raises(SystemExit) as exit_info:
        export_tool.main(["--all-configs", "--format", "torchscript", "--size", "50x96",
                          "--output", str(tmp_path / "b")])
    assert exit_info.value.code == 1
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    failed = summary["configs"][os.path.relpath(pdl, REPO_ROOT)]["sizes"]["50x96"]["formats"]["torchscript"]
    assert not failed["ok"] and "must be a multiple of the backbone's size divisibility 32" in failed["error"]
    assert summary["configs"][key]["sizes"]["50x96"]["formats"]["torchscript"]["ok"]  # the walk went on
    assert len(summary["failures"]) == 1
