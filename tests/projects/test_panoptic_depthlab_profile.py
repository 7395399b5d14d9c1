"""projects/PanopticDepthLab/tools/profile_inference.py: stage times, operators and their scaling."""
import importlib.util
import json
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_CONFIG = os.path.join(REPO_ROOT, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml")


@pytest.fixture(scope="module")
def tool():
    path = os.path.join(REPO_ROOT, "projects/PanopticDepthLab/tools/profile_inference.py")
    spec = importlib.util.spec_from_file_location("profile_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_writes_stages_ops_and_scaling(tool, tmp_path):
    out = tmp_path / "profile.json"
    tool.main(["--config", CPU_CONFIG, "--sizes", "64x128,128x256", "--threads", "1", "--output", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(report)) and report["sizes"] == ["64x128", "128x256"]
    ours = report["profiles"]["panoptic_depthlab"]
    stock = report["profiles"]["panoptic_deeplab_stock"]
    for size in report["sizes"]:
        profile = ours[size]
        assert set(profile["stages_ms"]) == set(tool.STAGES) and all(v > 0 for v in profile["stages_ms"].values())
        assert sum(profile["stage_share"].values()) == pytest.approx(1.0)
        assert profile["total_ms"] == pytest.approx(sum(profile["stages_ms"].values()))
        assert profile["top_ops"][0]["self_ms"] >= profile["top_ops"][-1]["self_ms"] > 0
        assert "aten::mkldnn_convolution" in profile["ops_ms"] or "aten::convolution" in profile["ops_ms"]
        assert "depth_decoder" not in stock[size]["stages_ms"]  # the stock model has no depth branch
    scaling = ours["scaling"]
    assert scaling["pixel_ratio"] == 4.0
    for stage, ratio in scaling["stages"].items():
        assert ratio == pytest.approx(ours["128x256"]["stages_ms"][stage] / ours["64x128"]["stages_ms"][stage])
