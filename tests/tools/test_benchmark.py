"""tools/benchmark.py on a tiny input: every variant timed, ratios consistent with the medians."""
import json
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_benchmark_writes_latencies_memory_and_ratios(benchmark_tool, tmp_path):
    out = tmp_path / "bench.json"
    config = os.path.join(
        REPO_ROOT, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml"
    )
    benchmark_tool.main(
        ["--config", config, "--height", "64", "--width", "128", "--runs", "2", "--warmup", "1",
         "--threads", "1", "--device", "cpu", "--output", str(out)]
    )
    report = json.loads(out.read_text())
    assert report["settings"]["height"] == 64 and report["device"].startswith("cpu")
    for name in ("panoptic_depthlab", "panoptic_deeplab", "two_networks", "segment_depths"):
        assert len(report["latency_ms"][name]) == 2
        assert report["median_ms"][name] > 0
    m, r = report["median_ms"], report["ratios"]
    assert r["vs_panoptic_deeplab"] == pytest.approx(m["panoptic_depthlab"] / m["panoptic_deeplab"])
    assert r["vs_two_networks"] == pytest.approx(m["panoptic_depthlab"] / m["two_networks"])
    assert r["segment_depth_fraction"] == pytest.approx(m["segment_depths"] / m["panoptic_depthlab"])
    memory = report["peak_memory_mb"]
    # at least the input image (3 x 64 x 128 floats) is allocated by every variant
    assert all(memory[name] > 3 * 64 * 128 * 4 / 2**20 for name in ("panoptic_depthlab", "panoptic_deeplab", "two_networks"))


def test_benchmark_ignores_config_weight_urls(benchmark_tool):
    """The R52 configs name detectron2:// ImageNet weights; timing must not try to download them."""
    config = os.path.join(
        REPO_ROOT,
        "projects/PanopticDepthLab/configs/Cityscapes-PanopticDepth/panoptic_depthlab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.yaml",
    )
    args = benchmark_tool.argparse.Namespace(config=config, device="cpu", opts=[])
    assert benchmark_tool.setup_cfg(args).MODEL.WEIGHTS == ""
    args.opts = ["MODEL.WEIGHTS", "/tmp/mine.pth"]
    assert benchmark_tool.setup_cfg(args).MODEL.WEIGHTS == "/tmp/mine.pth"
