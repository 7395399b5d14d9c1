"""--deployed: an exported PanopticDepthLab opened with load_deployed gives the eager model's panoptic
segments and per-segment distances, in tools/train_net.py --eval-only and in the visualiser."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from PIL import Image

from segdep_d2.data.datasets.vkitti2 import register_vkitti2
from segdep_d2.data.mappers import DepthPanopticDatasetMapper
from segdep_d2.modeling.deployed import DeployedModel, deployed_file, load_deployed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO_ROOT, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml")
VAL = "test_deployed_val"
# the synthetic frames are 64x208; at MIN_SIZE_TEST 64 they stay so, padded to 64x224 (OS32)
OPTS = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "DATASETS.TEST", f"('{VAL}',)",
        "MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "16", "MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD", "0.05",
        "DATALOADER.NUM_WORKERS", "0"]
EXPORT_SIZE = (64, 224)


@pytest.fixture(scope="module")
def setup(synthetic_vkitti2, export_tool, tmp_path_factory):
    """A checkpoint (random weights, depth about exp(3) m) and its three exports at the padded
    size of the validation frames."""
    root, _ = synthetic_vkitti2
    if VAL not in DatasetCatalog.list():
        register_vkitti2(VAL, root, scenes=("Scene20",), variations=("clone", "fog"))
    folder = tmp_path_factory.mktemp("deployed")
    cfg = export_tool.setup_cfg(CONFIG, OPTS + ["MODEL.WEIGHTS", ""])
    from detectron2.modeling import build_model

    torch.manual_seed(3)
    model = build_model(cfg)
    with torch.no_grad():
        model.depth_head.predictor.bias.fill_(3.0)
    DetectionCheckpointer(model, save_dir=str(folder)).save("model")
    weights = str(folder / "model.pth")
    exports = {}
    for fmt in ("onnx", "torchscript", "torch_export"):
        out = folder / fmt
        export_tool.main(["--config-file", CONFIG, "--height", str(EXPORT_SIZE[0]), "--width", str(EXPORT_SIZE[1]),
                          "--format", fmt, "--output", str(out), *OPTS, "MODEL.WEIGHTS", weights])
        exports[fmt] = str(out)
    return {"cfg": export_tool.setup_cfg(CONFIG, OPTS + ["MODEL.WEIGHTS", weights]), "exports": exports,
            "weights": weights}


def _segments(result):
    return {s["id"]: s for s in result["panoptic_seg"][1]}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "torch_export"])
def test_deployed_segments_and_distances_equal_the_eager_ones(setup, export_tool, fmt):
    cfg = setup["cfg"]
    eager = export_tool.load_model(cfg)
    deployed = load_deployed(setup["exports"][fmt], cfg)
    assert isinstance(deployed, DeployedModel)
    assert deployed.runtime == {"onnx": "onnxruntime"}.get(fmt, fmt)
    mapper = DepthPanopticDatasetMapper(cfg, is_train=False)
    segments = 0
    for record in DatasetCatalog.get(VAL):
        inputs = [mapper(record)]
        with torch.no_grad():
            expected, got = eager(inputs)[0], deployed(inputs)[0]
        assert got["sem_seg"].shape == expected["sem_seg"].shape
        assert got["depth"].shape == expected["depth"].shape == tuple(inputs[0]["image"].shape[-2:])
        agreement = (got["sem_seg"].argmax(0) == expected["sem_seg"].argmax(0)).float().mean()
        assert agreement >= 0.999
        relative = ((got["depth"] - expected["depth"]).abs() / expected["depth"]).max()
        assert relative <= 1e-3
        assert torch.equal(got["panoptic_seg"][0], expected["panoptic_seg"][0])
        want, have = _segments(expected), _segments(got)
        assert have.keys() == want.keys()
        for seg_id, segment in want.items():
            assert have[seg_id]["category_id"] == segment["category_id"]
            assert have[seg_id]["area"] == segment["area"]
            assert have[seg_id]["depth_valid"] == segment["depth_valid"]
            for key in ("depth", "depth_median"):
                assert have[seg_id][key] == pytest.approx(segment[key], rel=1e-3)
        segments += len(want)
    assert segments >= 4  # the comparison covered real segments, stuff and things


def test_train_net_eval_only_with_deployed_gives_the_eager_metrics(setup, train_net_tool, tmp_path):
    train_net = train_net_tool
    common = ["--config-file", CONFIG, "--eval-only", *OPTS, "MODEL.WEIGHTS", setup["weights"]]
    eager = train_net.main(train_net.parse_args(common[:3] + ["OUTPUT_DIR", str(tmp_path / "e")] + common[3:]))
    deployed = train_net.main(train_net.parse_args(
        common[:3] + ["--deployed", os.path.join(setup["exports"]["onnx"], "model.onnx"),
                      "OUTPUT_DIR", str(tmp_path / "d")] + common[3:]))
    assert {"sem_seg", "depth", "panoptic_depth"} <= set(eager) and set(deployed) == set(eager)
    for task, metrics in eager.items():
        for key, value in metrics.items():
            if isinstance(value, float) and np.isfinite(value):
                assert deployed[task][key] == pytest.approx(value, rel=1e-3, abs=1e-3), (task, key)
    assert np.isfinite(eager["panoptic_depth"]["DPQ"])


def test_deployed_needs_eval_only(train_net_tool, capsys):
    train_net = train_net_tool
    with pytest.raises(SystemExit):
        train_net.parse_args(["--config-file", CONFIG, "--deployed", "x.onnx"])
    assert "give --eval-only too" in capsys.readouterr().err
    assert train_net.parse_args(["--config-file", CONFIG, "--eval-only", "--deployed", "x.onnx"]).deployed == "x.onnx"


def test_visualize_with_deployed_draws_what_the_eager_model_draws(setup, visualize_tool, tmp_path):
    common = ["--config-file", CONFIG, "--dataset", VAL, "--num-images", "1"]
    eager = visualize_tool.main(common + ["--output", str(tmp_path / "eager"), *OPTS, "MODEL.WEIGHTS", setup["weights"]])
    deployed = visualize_tool.main(common + ["--output", str(tmp_path / "deployed"), "--deployed",
                                             setup["exports"]["torchscript"], *OPTS])
    assert [os.path.basename(p) for p in deployed] == [os.path.basename(p) for p in eager] and len(eager) >= 3
    for a, b in zip(eager, deployed):
        diff = np.abs(np.asarray(Image.open(a), np.int16) - np.asarray(Image.open(b), np.int16))
        assert diff.mean() < 0.05, os.path.basename(a)  # the same picture up to a rare rounding


def test_deployed_file_and_bad_paths(setup, tmp_path):
    onnx_folder = setup["exports"]["onnx"]
    assert deployed_file(onnx_folder) == os.path.join(onnx_folder, "model.onnx")  # export.json names it
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_deployed(str(tmp_path / "missing.onnx"), setup["cfg"])
    with pytest.raises(FileNotFoundError, match="expected one of"):
        load_deployed(str(tmp_path), setup["cfg"])
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown deployed model type '.pth'"):
        load_deployed(str(tmp_path / "weights.pth"), setup["cfg"])


def test_a_torchscript_export_of_another_family_is_refused(setup, tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    source = setup["exports"]["torchscript"]
    (folder / "model.ts").write_bytes(open(os.path.join(source, "model.ts"), "rb").read())
    info = json.loads(open(os.path.join(source, "export.json")).read())
    info["meta_architecture"] = "HydraNet"
    (folder / "export.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="exported from a HydraNet config"):
        load_deployed(str(folder), setup["cfg"])
