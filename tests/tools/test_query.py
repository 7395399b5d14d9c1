"""tools/query.py and the referring evaluation wiring, end to end on the synthetic VKITTI2 fixture:
SegDepTrainer trains a tiny SegDep for a few iterations on a referring dataset, SegDepTrainer.test scores
the referring val set (ReferringEvaluator added by build_evaluators, the queries delivered by the test
loader), then the query tool answers --text / --classes about one image with the trained weights
(printed lines, answers.json, overlays) and --interactive questions from stdin without running the
backbone again. In-process, one thread; the CPU config with a tiny open_clip text tower at 64 px."""
import importlib.util
import io
import json
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from PIL import Image


import segdep_d2  # noqa: E402,F401
from segdep_d2 import add_segdep_config  # noqa: E402
from segdep_d2.data.datasets.vkitti2 import register_vkitti2_referring  # noqa: E402
from segdep_d2.engine import SegDepTrainer, build_evaluators  # noqa: E402
from segdep_d2.engine.query import format_answer, format_class_answer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "projects/SegDep/configs/Synthetic-SegDep/segdep_hrnet18s_cpu.yaml")
HYDRANET_CONFIG = os.path.join(REPO, "projects/HydraNet/configs/Synthetic-HydraNet/hydranet_mbv2_cpu.yaml")
TINY_CLIP = "segdep-test-tiny-clip"
TRAIN, VAL = "test_query_referring_train", "test_query_referring_val"
OPTS = [
    "MODEL.SEGDEP.CLIP_MODEL", TINY_CLIP, "MODEL.SEGDEP.PROMPT_TEMPLATES", "['a photo of a {}.']",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "4",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    # a light BCE: after a few iterations some masks are not empty, so the distance error is measured
    "MODEL.SEGDEP.REFERRING_BCE_WEIGHT", "0.1", "DATASETS.TRAIN", f"('{TRAIN}',)", "DATASETS.TEST", f"('{VAL}',)",
]
# "the nearest car: 1830 px, 12.4 m away, score 0.91" / "the nearest car: not found (score 0.12)"
ANSWER = re.compile(r"^(?P<text>.+): (\d+ px(, \d+\.\d m away)?, score \d\.\d\d|not found \(score \d\.\d\d\))$")
# "car: 1830 px, 12.4 m away" / "sky: 5200 px, no distance" / "bicycle: not found"
CLASS = re.compile(r"^(?P<name>[^:]+): (\d+ px, (\d+\.\d m away|no distance)|not found)$")


@pytest.fixture(scope="module")
def tool():
    """tools/query.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("segdep_tool_query", os.path.join(REPO, "tools", "query.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_config(tiny_open_clip):
    assert tiny_open_clip == TINY_CLIP  # registered once for the session (tests/conftest.py)


# torch on one thread: the tests run side by side with others on 2 cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(output_dir):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([*OPTS, "OUTPUT_DIR", str(output_dir)])
    return cfg


@pytest.fixture(scope="module")
def trained(synthetic_vkitti2, tmp_path_factory):
    """A few training iterations on referring records, then the evaluation: (cfg, weights, results)."""
    root, _ = synthetic_vkitti2
    register_vkitti2_referring(TRAIN, root, scenes=("Scene01",), variations=("clone", "fog"))
    register_vkitti2_referring(VAL, root, scenes=("Scene20",), variations=("clone",))
    output = tmp_path_factory.mktemp("query_train")
    cfg = _cfg(output)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random-init CLIP warning
            trainer = SegDepTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        storage = trainer.storage
        referring_losses = [v for v, _ in storage.history("loss_referring_bce").values()]
        assert len(referring_losses) == 4 and np.isfinite(referring_losses).all()
        results = SegDepTrainer.test(cfg, trainer.model)
    finally:
        torch.set_num_threads(threads)
    weights = os.path.join(str(output), "model_final.pth")
    assert os.path.isfile(weights)
    return cfg, weights, results


def test_referring_val_set_is_evaluated(trained):
    cfg, _, results = trained
    assert [type(e).__name__ for e in build_evaluators(cfg, VAL)._evaluators] == [
        "LabelledSemSegEvaluator", "DepthEvaluator", "OpenVocabEvaluator", "ReferringEvaluator"
    ]
    # the test loader hands the records' query dicts to the model
    batch = next(iter(SegDepTrainer.build_test_loader(cfg, VAL)))[0]
    assert batch["queries"] and all("text" in q for q in batch["queries"])
    assert {"sem_seg", "depth", "open_vocab", "referring"} <= set(results)
    referring = results["referring"]
    assert referring["num_queries"] > 0 and referring["num_images"] > 0
    assert math.isfinite(referring["mIoU"]) and 0.0 <= referring["mIoU"] <= 100.0
    assert referring["num_without_depth"] < referring["num_queries"] and math.isfinite(referring["distance_error"])


def _image(synthetic_vkitti2):
    from segdep_d2.data.datasets.vkitti2 import load_vkitti2_referring

    root, _ = synthetic_vkitti2
    return load_vkitti2_referring(root, scenes=("Scene20",), variations=("clone",))[0]["file_name"]


def _args(weights, image, output, *extra):
    return ["--config", CONFIG, "--weights", weights, "--input", image, "--output", str(output), *extra, *OPTS]


def test_query_tool_prints_answers_and_writes_overlays(tool, trained, synthetic_vkitti2, tmp_path):
    _, weights, _ = trained
    image = _image(synthetic_vkitti2)
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = tool.main(_args(weights, image, tmp_path, "--text", "the nearest car", "--text",
                                 "the van on the left", "--classes", "car, road,sky"), out=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5, lines
    for line, text in zip(lines[:2], ("the nearest car", "the van on the left")):
        match = ANSWER.match(line)
        assert match and match["text"] == text, line
    for line, name in zip(lines[2:], ("car", "road", "sky")):
        match = CLASS.match(line)
        assert match and match["name"] == name, line

    with open(tmp_path / "answers.json") as f:
        saved = json.load(f)
    (entry,) = saved["images"]
    assert entry["file_name"] == image and (entry["height"], entry["width"]) == (64, 208)
    assert [q["text"] for q in entry["queries"]] == ["the nearest car", "the van on the left"]
    assert [q["line"] for q in entry["queries"]] + [c["line"] for c in entry["classes"]] == lines
    for q in entry["queries"]:
        assert q["found"] == (q["area"] > 0) and 0.0 <= q["score"] <= 1.0
        assert (q["depth_median"] is not None) == q["found"]
    assert [c["name"] for c in entry["classes"]] == ["car", "road", "sky"]
    assert sum(c["area"] for c in entry["classes"]) == 64 * 208  # the argmax covers every pixel once
    for kind in ("query", "classes"):
        path = tmp_path / f"{os.path.splitext(os.path.basename(image))[0]}_{kind}.png"
        assert str(path) in entry["overlays"] and str(path) in report["written"]
        with Image.open(path) as im:
            assert im.size[0] >= 208 and im.size[1] > 64  # the image over its legend


def test_interactive_reuses_the_image_features(tool, trained, synthetic_vkitti2, tmp_path, monkeypatch):
    _, weights, _ = trained
    image = _image(synthetic_vkitti2)
    calls = []
    load_model = tool.load_model

    def counting_load_model(cfg):
        model = load_model(cfg)
        model.backbone.register_forward_hook(lambda *_: calls.append(1))
        return model

    monkeypatch.setattr(tool, "load_model", counting_load_model)
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tool.main(_args(weights, image, tmp_path, "--interactive"), stdin=io.StringIO("q1\nq2\n"), out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("== ") and len(lines) == 3, lines
    assert [ANSWER.match(line)["text"] for line in lines[1:]] == ["q1", "q2"]
    assert len(calls) == 1  # one backbone run for the image, none per question
    with open(tmp_path / "answers.json") as f:
        assert [q["text"] for q in json.load(f)["images"][0]["queries"]] == ["q1", "q2"]

    # two images: an empty line moves on, ':classes' asks names, ':quit' ends; one backbone run per image
    calls.clear()
    out = io.StringIO()
    stdin = io.StringIO("the nearest car\n\n:classes car,sky\n:quit\nnever asked\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = tool.main(["--config", CONFIG, "--weights", weights, "--input", image, image, "--output",
                            str(tmp_path / "two"), "--interactive", *OPTS], stdin=stdin, out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("(1/2) ==") and ANSWER.match(lines[1])
    assert lines[2].endswith("(2/2) ==") and [CLASS.match(line)["name"] for line in lines[3:]] == ["car", "sky"]
    assert len(calls) == 2
    assert [len(e["queries"]) for e in report["images"]] == [1, 0]
    assert [len(e["classes"]) for e in report["images"]] == [0, 2]


def test_query_tool_errors(tool, tmp_path):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(image)
    with pytest.raises(SystemExit, match="--text needs a model with a referring head: HydraNet"):
        tool.main(["--config", HYDRANET_CONFIG, "--input", str(image), "--text", "the nearest car"])
    with pytest.raises(SystemExit, match="--classes needs a model with an open-vocabulary head: HydraNet"):
        tool.main(["--config", HYDRANET_CONFIG, "--input", str(image), "--classes", "car"])
    with pytest.raises(SystemExit, match="nothing to ask"):
        tool.main(["--config", CONFIG, "--input", str(image)])
    missing = str(tmp_path / "missing.png")
    with pytest.raises(SystemExit, match=re.escape(missing)):
        tool.main(["--config", CONFIG, "--input", missing, "--text", "a car", *OPTS])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="cannot read image .*broken.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tool.main(["--config", CONFIG, "--input", str(broken), "--text", "a car", "--output",
                       str(tmp_path / "out"), *OPTS], out=io.StringIO())


def test_answer_lines():
    answer = {"text": "the nearest car", "area": 1830, "score": 0.912, "depth_median": 12.43}
    assert format_answer(answer) == "the nearest car: 1830 px, 12.4 m away, score 0.91"
    assert format_answer({**answer, "area": 0, "score": 0.123, "depth_median": math.nan}) == (
        "the nearest car: not found (score 0.12)"
    )
    assert format_class_answer({"name": "car", "found": True, "area": 12, "depth_median": 3.04,
                                "depth_valid": True}) == "car: 12 px, 3.0 m away"
    assert format_class_answer({"name": "sky", "found": True, "area": 5, "depth_median": 600.0,
                                "depth_valid": False}) == "sky: 5 px, no distance"
    assert format_class_answer({"name": "bicycle", "found": False}) == "bicycle: not found"
