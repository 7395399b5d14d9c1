"""projects/DepthCompletion/tools/synthetic_study.py at toy size: every row trains (the guide first), the record
holds the rows, the baselines of the same scans and the settings."""
import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
    spec = importlib.util.spec_from_file_location(
        "depth_completion_study_tool", os.path.join(REPO, "projects/DepthCompletion/tools/synthetic_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_row_and_baseline_is_recorded(tmp_path):
    tool = _tool()
    argv = ["--output", str(tmp_path / "study"), "--record", str(tmp_path / "benchmarks"), "--max-iter", "2",
            "--frames", "3", "--semantic-frames", "2", "--height", "64", "--width", "208", "--min-size-train", "64",
            "--min-size-test", "64", "--threads", "1"]
    report = tool.main(argv)
    recorded = json.loads((tmp_path / "benchmarks" / tool.RECORD_NAME).read_text())
    assert recorded["rows"] == report["rows"] and recorded["command"].endswith(" ".join(argv))
    rows = {r["row"]: r for r in recorded["rows"]}
    assert [r["row"] for r in recorded["rows"]][:3] == ["untrained", "seed network", "rgb+sparse"]
    assert {"nearest fill", "bilinear fill", "sparse only (at its points)"} <= set(rows)
    for name in ("rgb+sparse", "rgb+sparse+semantics", "monocular (Panoptic-DepthLab, no LiDAR input)"):
        assert rows[name]["iterations"] == 2 and rows[name]["RMSE"] > 0
    # the baselines come from the same scans as the model rows (one held-out drive, 2 annotated frames)
    assert rows["nearest fill"]["results"]["depth_completion"]["num_images"] == 2
    assert recorded["guide"]["iterations"] == 2 and recorded["splits"][tool.SEMANTICS] == 2
    assert recorded["generator"]["frames"] == 3 and "RMSE [mm]" in recorded["table_markdown"]
