import glob
import math
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from fvcore.nn import FlopCountAnalysis
from torch import nn

import segdep_d2  # noqa: F401
from segdep_d2 import add_segdep_config
from segdep_d2.engine import SegDepTrainer
from segdep_d2.modeling.heads.refinenet import CRPBlock
from segdep_d2.data.class_weights import write_class_weights
from segdep_d2.modeling.losses import UncertaintyWeighting, berhu_loss
from segdep_testing import cpu_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_CONFIG = os.path.join(REPO, "projects/HydraNet/configs/Synthetic-HydraNet/hydranet_mbv2_cpu.yaml")
ALL_CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "projects/HydraNet/configs/**/*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


# torch on one thread: the tests run side by side with others on 2 cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_cfg(path=CPU_CONFIG, *opts):
    return cpu_cfg(path, *opts)


def _model(*opts, seed=0):
    torch.manual_seed(seed)
    return build_model(load_cfg(CPU_CONFIG, *opts))


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _sample(h=64, w=96, *, labels=True, depth=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"image": _image(h, w, seed)}
    if labels:
        x["sem_seg"] = torch.randint(0, 14, (h, w), generator=g)
    if depth:
        d = torch.rand(h, w, generator=g) * 40 + 1
        x.update(depth=d, depth_valid=d > 0)
    return x


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_every_shipped_config_builds(path, tmp_path, monkeypatch):
    cfg = load_cfg(path)
    weights_file = cfg.MODEL.HYDRANET.CLASS_WEIGHTS_FILE  # the file the dataset preparation writes
    if weights_file:
        monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        os.makedirs(os.path.dirname(str(tmp_path / weights_file)), exist_ok=True)
        write_class_weights(str(tmp_path / weights_file), [str(i) for i in range(num_classes)], range(1, num_classes + 1))
    model = build_model(cfg)
    assert type(model).__name__ == "HydraNet" and model.OUTPUTS == ("sem_seg", "depth")
    assert model.depth_head.predictor.out_channels == 1
    assert (model.class_weights is not None) == bool(weights_file or cfg.MODEL.HYDRANET.CLASS_WEIGHTS)


def test_structure_params_and_flops_match_the_paper():
    """40 classes + depth: 3.07M parameters, ~5.9 G multiply-adds at 640x480 (fvcore)."""
    model = _model("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "40").eval()
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(3.07e6, rel=0.02)
    assert params == 3_068_969  # backbone 1,811,712 + decoder 1,162,240 + heads 92,456 + 2,561
    # the last CRP block's 1x1 convs and the heads' first convs are depthwise (256 groups)
    assert all(c.groups == 256 for c in model.decoder.crps[3].convs)
    assert all(c.groups == 1 for crp in model.decoder.crps[:3] for c in crp.convs)
    assert model.sem_seg_head.pre.groups == model.depth_head.pre.groups == 256
    assert all(m.bias is None for m in model.decoder.modules() if isinstance(m, nn.Conv2d))

    class Network(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.head_outputs(x)

    flops = FlopCountAnalysis(Network(model), torch.zeros(1, 3, 480, 640))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    assert flops.total() == pytest.approx(5.9e9, rel=0.10)


def test_crp_block_is_a_chain_of_pool_then_conv_summed():
    crp = CRPBlock(4, stages=2)
    x = torch.randn(1, 4, 6, 7)
    pool = nn.functional.max_pool2d
    t1 = crp.convs[0](pool(x, 5, 1, 2))
    t2 = crp.convs[1](pool(t1, 5, 1, 2))
    assert torch.allclose(crp(x), x + t1 + t2, atol=1e-6)


def test_decoder_and_heads_run_at_a_quarter_of_the_input():
    model = _model().eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        decoded = model.decoder(model.backbone(images))
        sem, depth = model.head_outputs(images)
    assert decoded.shape == (2, 256, 16, 24)
    assert sem.shape == (2, 14, 16, 24) and depth.shape == (2, 1, 16, 24)


def test_inference_outputs_at_the_original_size_for_any_input_size():
    model = _model().eval()
    inputs = [{"image": _image(50, 70), "height": 100, "width": 140}, {"image": _image(45, 83, seed=1)}]
    with torch.no_grad():
        outputs = model(inputs)  # padded to 64 x 96 inside, not refused
    assert set(outputs[0]) == {"sem_seg", "depth"}
    assert outputs[0]["sem_seg"].shape == (14, 100, 140) and outputs[0]["depth"].shape == (100, 140)
    assert outputs[1]["sem_seg"].shape == (14, 45, 83) and outputs[1]["depth"].shape == (45, 83)
    for out in outputs:
        assert torch.isfinite(out["sem_seg"]).all()
        assert (out["depth"] > 0).all() and (out["depth"] <= 80.0).all()


@pytest.mark.parametrize(
    "batch,present",
    [
        ([_sample(), _sample(seed=1)], {"sem_seg", "depth"}),
        ([_sample(depth=False), _sample(labels=False, seed=1)], {"sem_seg", "depth"}),  # one label type each
        ([_sample(depth=False), _sample(depth=False, seed=1)], {"sem_seg"}),  # no depth at all
        ([_sample(labels=False), _sample(labels=False, seed=1)], {"depth"}),  # no segmentation at all
    ],
    ids=["both", "asymmetric", "seg-only", "depth-only"],
)
@pytest.mark.parametrize("uncertainty", [False, True], ids=["fixed", "uncertainty"])
def test_asymmetric_batches(batch, present, uncertainty):
    model = _model("MODEL.HYDRANET.UNCERTAINTY_WEIGHTING", str(uncertainty)).train()
    with EventStorage() as storage:
        losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_depth"}
    for task, key in (("sem_seg", "loss_sem_seg"), ("depth", "loss_depth")):
        if task in present:
            assert losses[key].item() > 0
        else:
            assert losses[key].item() == 0.0  # exactly zero, not NaN
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        # every head is touched (DDP), every gradient finite
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    counts = {k: storage.history(f"hydranet/num_{k}_samples").latest() for k in ("sem_seg", "depth")}
    assert counts == {
        "sem_seg": sum("sem_seg" in x for x in batch), "depth": sum("depth" in x for x in batch)
    }


def test_losses_by_hand():
    """L = CE + 0.5 * BerHu (metres), at the input resolution, over labelled / valid pixels only."""
    model = _model().train()
    x = _sample(64, 96)
    x["sem_seg"][:10] = 255  # unlabelled rows
    x["depth_valid"][:, :20] = False
    losses = model([x])
    with torch.no_grad():
        sem, depth = model.network_outputs(model.preprocess_image([x]).tensor)
    ce = nn.functional.cross_entropy(sem, x["sem_seg"][None], ignore_index=255)
    bh = berhu_loss(depth[:, 0], x["depth"][None], x["depth_valid"][None], threshold=0.2)
    assert losses["loss_sem_seg"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert losses["loss_depth"].item() == pytest.approx(0.5 * bh.item(), rel=1e-5)


def test_sigmoid_depth_berhu_on_the_normalised_scale_and_class_weights():
    weights = [float(i + 1) for i in range(14)]
    model = _model("MODEL.DEPTH_HEAD.OUTPUT_TYPE", "sigmoid", "MODEL.HYDRANET.CLASS_WEIGHTS", str(weights)).train()
    x = _sample(64, 96)
    losses = model([x])
    with torch.no_grad():
        sem, depth = model.network_outputs(model.preprocess_image([x]).tensor)
    assert depth.min() > 0 and depth.max() < 80.0
    bh = berhu_loss(depth[:, 0] / 80.0, x["depth"][None] / 80.0, x["depth_valid"][None], threshold=0.2)
    ce = nn.functional.cross_entropy(sem, x["sem_seg"][None], weight=torch.tensor(weights))
    assert losses["loss_depth"].item() == pytest.approx(0.5 * bh.item(), rel=1e-5)
    assert losses["loss_sem_seg"].item() == pytest.approx(ce.item(), rel=1e-5)
    with pytest.raises(ValueError, match="CLASS_WEIGHTS"):
        _model("MODEL.HYDRANET.CLASS_WEIGHTS", "[1.0, 2.0]")


def test_safetrip_depth_loss_and_class_weights_file(tmp_path, monkeypatch):
    # SafeTrip-Q: BerHu with a fixed delta 0.1 on depth / 80 m; class weights from the file
    # datasets/prepare_sidewalk.py writes (a relative path is under $DETECTRON2_DATASETS)
    counts = [100 * (i + 1) for i in range(14)]
    weights = write_class_weights(str(tmp_path / "class_weights.json"), [f"c{i}" for i in range(14)], counts)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    model = _model(
        "MODEL.DEPTH_HEAD.OUTPUT_TYPE", "sigmoid", "MODEL.DEPTH_HEAD.BERHU_THRESHOLD", "0.1",
        "MODEL.DEPTH_HEAD.BERHU_THRESHOLD_MODE", "absolute", "MODEL.HYDRANET.CLASS_WEIGHTS_FILE", "class_weights.json",
    ).train()
    assert model.class_weights.tolist() == pytest.approx(weights.tolist(), rel=1e-5)
    x = _sample(64, 96)
    losses = model([x])
    with torch.no_grad():
        sem, depth = model.network_outputs(model.preprocess_image([x]).tensor)
    bh = berhu_loss(depth[:, 0] / 80.0, x["depth"][None] / 80.0, x["depth_valid"][None], 0.1, relative=False)
    ce = nn.functional.cross_entropy(sem, x["sem_seg"][None], weight=model.class_weights)
    assert losses["loss_depth"].item() == pytest.approx(0.5 * bh.item(), rel=1e-5)
    assert losses["loss_sem_seg"].item() == pytest.approx(ce.item(), rel=1e-5)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        _model("MODEL.HYDRANET.CLASS_WEIGHTS_FILE", "missing.json")
    with pytest.raises(ValueError, match="not both"):
        _model("MODEL.HYDRANET.CLASS_WEIGHTS_FILE", "class_weights.json", "MODEL.HYDRANET.CLASS_WEIGHTS", str([1.0] * 14))


def test_uncertainty_weighting_formula():
    weighting = UncertaintyWeighting(["sem_seg", "depth"])
    with torch.no_grad():
        weighting.log_variances.copy_(torch.tensor([0.5, -1.0]))
    losses = {"sem_seg": torch.tensor(2.0), "depth": torch.tensor(3.0)}
    out = weighting(losses)
    assert out["sem_seg"].item() == pytest.approx(math.exp(-0.5) * 2.0 + 0.5)
    assert out["depth"].item() == pytest.approx(math.exp(1.0) * 3.0 - 1.0)
    total = sum(out.values())
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    expected_grad = [1 - math.exp(-0.5) * 2.0, 1 - math.exp(1.0) * 3.0]
    assert weighting.log_variances.grad.tolist() == pytest.approx(expected_grad)
    absent = weighting(losses, present={"sem_seg": True, "depth": False})
    assert absent["depth"].item() == 0.0 and absent["sem_seg"].item() == pytest.approx(math.exp(-0.5) * 2.0 + 0.5)


def test_optimizer_sees_the_log_variances_without_weight_decay():
    cfg = load_cfg(CPU_CONFIG, "MODEL.HYDRANET.UNCERTAINTY_WEIGHTING", "True")
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = SegDepTrainer.build_optimizer(cfg, model)
    groups = [g for g in optimizer.param_groups if any(p is model.uncertainty.log_variances for p in g["params"])]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    n_opt = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    # every parameter: the 40-class count with a 14-class segmentation predictor, + 2 log-variances
    expected = 3_068_969 - (256 * 9 * 40 + 40) + (256 * 9 * 14 + 14) + 2
    assert n_opt == sum(p.numel() for p in model.parameters()) == expected


def test_whole_model_checkpoint_round_trip(tmp_path):
    model = _model(seed=1)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("hydranet")
    fresh = _model(seed=2)
    DetectionCheckpointer(fresh).load(str(tmp_path / "hydranet.pth"))
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_bad_depth_settings_are_rejected():
    with pytest.raises(ValueError, match="OUTPUT_TYPE"):
        _model("MODEL.DEPTH_HEAD.OUTPUT_TYPE", "linear")
    with pytest.raises(ValueError, match="LOSSES"):
        _model("MODEL.DEPTH_HEAD.LOSSES", "['l2']")


def test_losses_are_float32_under_autocast():
    """SOLVER.AMP.ENABLED runs the forward under autocast (on GPU; bfloat16 on CPU here): the
    losses are computed in float32 and stay finite."""
    model = _model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([_sample(), _sample(labels=False, seed=1)])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_add_segdep_config_keeps_hydranet_values():
    cfg = get_cfg()
    add_segdep_config(cfg)
    assert cfg.MODEL.HYDRANET.DEPTH_LOSS_WEIGHT == 0.5 and cfg.MODEL.HYDRANET.UNCERTAINTY_WEIGHTING is False
    cfg.MODEL.HYDRANET.DEPTH_LOSS_WEIGHT = 0.25
    add_segdep_config(cfg)
    assert cfg.MODEL.HYDRANET.DEPTH_LOSS_WEIGHT == 0.25


def test_postprocess_takes_labels_from_a_labels_export():
    """An exported network with outputs="labels" ends in the argmax; model.postprocess crops those
    labels (and resizes them with nearest neighbours) into ``sem_seg_labels``, depth as before."""
    from segdep_d2.modeling.export import HydraNetNetwork, network_for

    model = _model().eval()
    logits_net, labels_net = network_for(model), network_for(model, "labels")
    assert isinstance(labels_net, HydraNetNetwork) and labels_net.output_names == ("sem_seg_labels", "depth")
    inputs = [{"image": _image(50, 70), "height": 50, "width": 70},
              {"image": _image(45, 83, seed=1), "height": 90, "width": 166}]
    with torch.no_grad():
        eager = model(inputs)
        for x, out in zip(inputs, eager):
            image = x["image"].float()[None]
            size = [tuple(image.shape[-2:])]
            labels, depth = labels_net(image)
            sem, depth_logits_net = logits_net(image)
            assert labels.dtype == torch.int64 and labels.shape == (1, 64, 96)
            assert torch.equal(labels, sem.argmax(1)) and torch.equal(depth, depth_logits_net)
            result = model.postprocess(labels, depth, [x], size)[0]
            assert set(result) == {"sem_seg_labels", "depth"}
            assert result["sem_seg_labels"].shape == (x["height"], x["width"])
            assert result["sem_seg_labels"].dtype == torch.int64
            torch.testing.assert_close(result["depth"], out["depth"])
            if (x["height"], x["width"]) == size[0]:
                assert torch.equal(result["sem_seg_labels"], out["sem_seg"].argmax(0))
            else:  # nearest neighbour: every output label is one of the cropped labels, 2x2 blocks here
                cropped = labels[0, :45, :83]
                assert torch.equal(result["sem_seg_labels"][::2, ::2], cropped)
    # the logits path is unchanged: sem_seg logits (C, H, W)
    assert set(eager[0]) == {"sem_seg", "depth"} and eager[0]["sem_seg"].shape == (14, 50, 70)


@pytest.mark.parametrize("align_corners", [True, False])
def test_upsample_bilinear_by_a_factor_equals_the_resize_to_size(align_corners):
    from segdep_d2.modeling.heads.refinenet import upsample_bilinear

    x = torch.randn(1, 5, 7, 9, generator=torch.Generator().manual_seed(0))
    for size in ((14, 18), (28, 36), (15, 18), (7, 9)):  # x2, x4, not a common factor, the same size
        expected = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
        assert torch.equal(upsample_bilinear(x, size, align_corners), expected)
