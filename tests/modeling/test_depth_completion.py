"""DepthCompletion (seed 004): RGB + sparse depth (+ semantics) -> dense metric depth, and its losses."""
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

import segdep_d2  # noqa: F401
from segdep_d2 import add_segdep_config
from segdep_d2.modeling.losses import (
    depth_confidence_loss,
    edge_aware_smoothness_loss,
    multiscale_depth_l1_loss,
    multiscale_depth_l2_loss,
    nearest_downsample_depth,
)
from segdep_d2.modeling.meta_arch import DepthCompletion, model_outputs, reads_sparse_depth

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HYDRANET_CPU_CONFIG = os.path.join(REPO, "projects/HydraNet/configs/Synthetic-HydraNet/hydranet_mbv2_cpu.yaml")
# A narrow conv encoder / decoder: the same structure as the default, fast on CPU.
TINY = [
    "MODEL.DEPTH_COMPLETION.ENCODER_CHANNELS", "[8, 8, 16, 16, 16]",
    "MODEL.DEPTH_COMPLETION.DECODER_CHANNELS", "[16, 16, 8, 8, 8]",
    "MODEL.DEPTH_COMPLETION.SPARSE_STEM_CHANNELS", "4",
]


# torch on one thread: the tests run side by side with others on 2 cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_cfg(*opts):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "DepthCompletion", "MODEL.DEVICE", "cpu", *opts])
    return cfg


def make_model(*opts, seed=0):
    torch.manual_seed(seed)
    return build_model(make_cfg(*opts))


def sample(h=45, w=70, *, points=60, depth=True, labels=None, seed=0):
    """An input dict: random image, ``points`` sparse points taken from a smooth ground truth in metres."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    gt = 2.0 + 20.0 * ys + 5.0 * xs  # metres
    sparse = torch.zeros(h, w)
    idx = torch.randperm(h * w, generator=g)[:points]
    sparse.view(-1)[idx] = gt.view(-1)[idx]
    x = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), "sparse_depth": sparse}
    if depth:
        valid = torch.rand(h, w, generator=g) > 0.3
        x.update(depth=gt * valid, depth_valid=valid)
    if labels is not None:
        x["sem_seg"] = torch.randint(0, labels, (h, w), generator=g)
        x["sem_seg"][:3] = 255
    return x


# ---------------------------------------------------------------- config / registry


def test_config_keys_and_defaults():
    cfg = make_cfg()
    node = cfg.MODEL.DEPTH_COMPLETION
    assert node.ENCODER == "conv" and node.ENCODER_CHANNELS == [32, 64, 128, 256, 256]
    assert node.SEMANTIC_INPUT == "none" and node.SEMANTIC_ENCODING == "embedding" and node.SEMANTIC_CHANNELS == 2
    assert len(node.LOSS_SCALE_WEIGHTS) == len(node.DECODER_CHANNELS) == 5
    assert cfg.INPUT.SPARSE_DEPTH.NUM_SAMPLES == 0 and cfg.TEST.DEPTH.COMPLETION is False
    again = add_segdep_config(cfg)  # idempotent
    assert again.MODEL.DEPTH_COMPLETION.ENCODER == "conv"
    assert reads_sparse_depth(cfg) and model_outputs(cfg) == ("depth",)
    assert not DepthCompletion.reads_semantic_labels(cfg)
    cfg.MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT = "labels"
    assert DepthCompletion.reads_semantic_labels(cfg)  # the mapper should then deliver sem_seg at test time


def test_default_model_parameter_count():
    model = make_model()
    assert isinstance(model, DepthCompletion) and model.size_divisibility == 32
    assert sum(p.numel() for p in model.parameters()) == 5_681_925
    assert sum(p.numel() for p in model.sparse_stem.parameters()) == 2 * 16 * 9 + 2 * 16  # conv (no bias) + BN
    # image (3) + sparse stem (16) enter the first stage; the seed's 2 extra channels only with semantics
    assert model.encoder.stages[0][0].in_channels == 3 + 16


# ---------------------------------------------------------------- losses by hand


def test_nearest_downsample_samples_block_centres_without_blending():
    target = torch.arange(16, dtype=torch.float32).view(1, 4, 4) + 1
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    target[0, 0, 0], valid[0, 0, 0] = 0.0, False  # not a sampled pixel: must not leak anywhere
    target[0, 3, 3], valid[0, 3, 3] = 0.0, False  # the sample of block (1, 1): that coarse pixel is invalid
    t, v = nearest_downsample_depth(target, valid, (2, 2))
    assert torch.equal(t, torch.tensor([[[6.0, 8.0], [14.0, 0.0]]]))
    assert torch.equal(v, torch.tensor([[[True, True], [True, False]]]))
    # the same pixels as PyTorch's nearest-exact resize
    assert torch.equal(t, F.interpolate(target[None], size=(2, 2), mode="nearest-exact")[0])
    # a 1/16 block takes its centre pixel (row / col 8), also for non-divisible sizes
    big = torch.arange(32 * 48, dtype=torch.float32).view(1, 32, 48)
    t, _ = nearest_downsample_depth(big, big > -1, (2, 3))
    assert torch.equal(t[0], big[0, 8::16, 8::16])
    t, _ = nearest_downsample_depth(big[:, :31, :47], big[:, :31, :47] > -1, (3, 5))
    assert torch.equal(t, F.interpolate(big[None, :, :31, :47], size=(3, 5), mode="nearest-exact")[0])


def test_multiscale_l1_by_hand():
    target = torch.arange(1.0, 17.0).view(1, 4, 4)
    target[0, 3, 3] = 0.0
    valid = target > 0
    target[0, 0, 0], valid[0, 0, 0] = 100.0, False  # an invalid pixel with a wild value: never counted
    fine = torch.full((1, 1, 4, 4), 4.0, requires_grad=True)
    coarse = torch.full((1, 1, 2, 2), 7.0, requires_grad=True)
    # fine: 14 valid pixels (not (0,0), not (3,3)) of |4 - t|; coarse: samples 6, 8, 14 (16 -> invalid 0)
    fine_l1 = sum(abs(4.0 - v) for v in [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]) / 14
    coarse_l1 = (abs(7 - 6) + abs(7 - 8) + abs(7 - 14)) / 3
    loss = multiscale_depth_l1_loss([coarse, fine], target, valid, [0.5, 2.0])
    assert loss.item() == pytest.approx(0.5 * coarse_l1 + 2.0 * fine_l1)
    loss.backward()
    assert coarse.grad[0, 0, 1, 1] == 0 and fine.grad[0, 0, 0, 0] == 0 and fine.grad[0, 0, 3, 3] == 0
    # (N, h, w) predictions work too, and the L2 variant squares the same errors
    l2 = multiscale_depth_l2_loss([coarse.detach()[:, 0]], target, valid, [1.0])
    assert l2.item() == pytest.approx((1 + 1 + 49) / 3)


def test_multiscale_relative_normalisation_by_hand():
    target = torch.tensor([[[2.0, 4.0], [8.0, 0.0]]])
    valid = torch.tensor([[[True, True], [True, True]]])  # a "valid" 0 cannot be divided by: skipped
    pred = torch.tensor([[[[3.0, 3.0], [4.0, 9.0]]]])
    expected = (1 / 2 + 1 / 4 + 4 / 8) / 3
    assert multiscale_depth_l1_loss([pred], target, valid, [1.0], relative=True).item() == pytest.approx(expected)
    expected_l2 = ((1 / 2) ** 2 + (1 / 4) ** 2 + (4 / 8) ** 2) / 3
    assert multiscale_depth_l2_loss([pred], target, valid, [1.0], relative=True).item() == pytest.approx(expected_l2)


def test_multiscale_loss_without_ground_truth_is_zero_and_connected():
    preds = [torch.rand(2, 1, s, s, requires_grad=True) for s in (1, 2, 4)]
    loss = multiscale_depth_l1_loss(preds, torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool), [1, 1, 1])
    assert loss.item() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and (p.grad == 0).all() for p in preds)
    with pytest.raises(ValueError, match="scale weights"):
        multiscale_depth_l1_loss(preds, torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool), [1, 1])


def test_edge_aware_smoothness_and_confidence_by_hand():
    depth = torch.tensor([[[[0.0, 1.0, 3.0]]]])
    image = torch.zeros(1, 3, 1, 3)
    image[..., 2] = 1.0  # an edge between pixels 1 and 2
    expected = (1.0 * 1.0 + 2.0 * torch.exp(torch.tensor(-1.0)).item()) / 2  # x only (one row)
    assert edge_aware_smoothness_loss(depth, image).item() == pytest.approx(expected)
    valid = torch.tensor([[[True, True, False]]])  # the pair (1, 2) leaves the valid area
    assert edge_aware_smoothness_loss(depth, image, valid).item() == pytest.approx(1.0)

    logits = torch.zeros(1, 1, 1, 3, requires_grad=True)
    pred = torch.tensor([[[[1.0, 2.0, 5.0]]]])
    target = torch.tensor([[[1.1, 1.0, 0.0]]])  # accurate, 2x off, no ground truth
    loss = depth_confidence_loss(logits, pred, target, target > 0)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())  # BCE at p = 0.5, either label
    loss.backward()
    assert logits.grad[0, 0, 0, 0] < 0 < logits.grad[0, 0, 0, 1] and logits.grad[0, 0, 0, 2] == 0


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("upsample", ["deconv", "bilinear"])
def test_inference_at_original_size_for_non_multiple_sizes(upsample):
    model = make_model(*TINY, "MODEL.DEPTH_COMPLETION.UPSAMPLE", upsample).eval()
    inputs = [sample(45, 70), dict(sample(37, 61, seed=1), height=74, width=122)]
    with torch.no_grad():
        out = model(inputs)
    assert [o["depth"].shape for o in out] == [(45, 70), (74, 122)]
    assert all(set(o) == {"depth"} for o in out)  # no confidence unless asked
    for o in out:
        assert torch.isfinite(o["depth"]).all()
        assert (o["depth"] >= 1e-3).all() and (o["depth"] <= 80.0).all()
    # the five predictions at 1/16 .. 1/1 of the padded input (64 x 96 here, divisible by 32)
    images, sparse, semantics, sizes = model.preprocess(inputs)
    assert images.shape[-2:] == (64, 96) and semantics is None and sizes == [(45, 70), (37, 61)]
    assert (sparse[0, 45:] == 0).all() and (sparse[1, :, 61:] == 0).all()
    depths, confidence = model.network_outputs(images, sparse)
    assert [tuple(d.shape) for d in depths] == [(2, 1, 64 // s, 96 // s) for s in (16, 8, 4, 2, 1)]
    assert confidence is None


def test_zero_point_sample_predicts_and_losses_stay_finite():
    model = make_model(
        *TINY, "MODEL.DEPTH_COMPLETION.SMOOTHNESS_WEIGHT", "0.1", "MODEL.DEPTH_COMPLETION.L2_WEIGHT", "1.0"
    )
    empty = sample(points=0)
    assert not empty["sparse_depth"].any()
    model.eval()
    with torch.no_grad():
        out = model([empty])
    assert out[0]["depth"].shape == (45, 70) and torch.isfinite(out[0]["depth"]).all()

    model.train()
    with EventStorage():
        losses = model([empty, sample(seed=1)])
    assert set(losses) == {"loss_depth_l1", "loss_depth_l2", "loss_smoothness"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.sparse_stem.weight.grad is not None


def test_losses_without_ground_truth_are_finite_zero():
    model = make_model(
        *TINY, "MODEL.DEPTH_COMPLETION.L2_WEIGHT", "1.0", "MODEL.DEPTH_COMPLETION.PREDICT_CONFIDENCE", "True"
    )
    model.train()
    no_gt = [sample(depth=False), sample(depth=False, points=0, seed=1)]
    with EventStorage():
        losses = model(no_gt)
    assert set(losses) == {"loss_depth_l1", "loss_depth_l2", "loss_depth_confidence"}
    assert all(v.item() == 0 for v in losses.values())
    sum(losses.values()).backward()  # connected to the graph: DDP sees every parameter
    # an invalid pixel's value never matters
    x = sample()
    y = dict(x, depth=torch.where(x["depth_valid"], x["depth"], torch.full_like(x["depth"], 1e4)))
    with EventStorage():
        assert model([x])["loss_depth_l1"].item() == pytest.approx(model([y])["loss_depth_l1"].item())


def test_sparse_input_changes_the_prediction_and_missing_is_not_zero_depth():
    model = make_model(*TINY).eval()
    x = sample(points=200)
    with torch.no_grad():
        with_points = model([x])[0]["depth"]
        without = model([dict(x, sparse_depth=torch.zeros_like(x["sparse_depth"]))])[0]["depth"]
    assert not torch.allclose(with_points, without)
    assert model.sparse_stem.in_channels == 2  # depth / MAX_DEPTH and the validity mask
    with pytest.raises(KeyError, match="sparse_depth"):
        model([{"image": x["image"]}])


def test_loss_goes_down_on_one_fixed_sample():
    model = make_model(*TINY)
    model.train()
    x = sample(32, 48, points=80)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    with EventStorage():
        for _ in range(30):
            loss = model([x])["loss_depth_l1"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())
    assert history[-1] < 0.6 * history[0] and history[-1] == pytest.approx(min(history), abs=0.01)


def test_four_stage_encoder_starts_the_decoder_at_one_sixteenth():
    model = make_model(*TINY, "MODEL.DEPTH_COMPLETION.ENCODER_CHANNELS", "[8, 8, 16, 16]")
    assert model.decoder.level_strides == [16, 8, 4, 2, 1] and not model.decoder.levels[0].upsample
    with torch.no_grad():
        out = model.eval()([sample()])
    assert out[0]["depth"].shape == (45, 70)
    with pytest.raises(ValueError, match="ENCODER_CHANNELS"):
        make_model(*TINY, "MODEL.DEPTH_COMPLETION.ENCODER_CHANNELS", "[8, 8, 16]")


def test_predict_confidence_adds_a_channel_and_output():
    model = make_model(*TINY, "MODEL.DEPTH_COMPLETION.PREDICT_CONFIDENCE", "True").eval()
    assert model.decoder.predictors["1"].out_channels == 2
    assert all(model.decoder.predictors[s].out_channels == 1 for s in ("16", "8", "4", "2"))
    with torch.no_grad():
        out = model([dict(sample(), height=90, width=140)])[0]
    assert set(out) == {"depth", "depth_confidence"} and out["depth_confidence"].shape == (90, 140)
    assert ((out["depth_confidence"] > 0) & (out["depth_confidence"] < 1)).all()


@pytest.mark.parametrize("encoding,channels", [("onehot", 5), ("embedding", 3)])
def test_semantic_labels_channel_counts_come_from_the_config(encoding, channels):
    model = make_model(
        *TINY, "MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT", "labels", "MODEL.DEPTH_COMPLETION.SEMANTIC_ENCODING", encoding,
        "MODEL.DEPTH_COMPLETION.NUM_CLASSES", "5", "MODEL.DEPTH_COMPLETION.SEMANTIC_CHANNELS", "3",
    )
    assert model.encoder.stages[0][0].in_channels == 3 + 4 + channels
    assert model.decoder.levels[-1].fuse.in_channels == 8 + 3 + 4 + channels  # full-resolution skip
    assert (model.semantic_embedding is not None) == (encoding == "embedding")
    x, unlabelled = sample(labels=5), sample(seed=1)  # the second input has no sem_seg: no semantics
    _, _, semantics, _ = model.preprocess([x, unlabelled])
    assert semantics.shape == (2, 5, 64, 96)
    assert (semantics[0, :, 3:45, :70].sum(0) == 1).all() and (semantics[0, :, :3] == 0).all()  # 255 -> none
    assert (semantics[1] == 0).all() and (semantics[0, :, 45:] == 0).all()  # padding: ignore
    assert torch.equal(semantics[0, :, 10, :70].argmax(0), x["sem_seg"][10])
    model.train()
    with EventStorage():
        losses = model([x, unlabelled])
    assert torch.isfinite(losses["loss_depth_l1"])
    with pytest.raises(ValueError, match="labels must lie"):
        model([dict(x, sem_seg=torch.full((45, 70), 7))])


def test_default_num_classes_falls_back_to_the_sem_seg_head():
    model = make_model(*TINY, "MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT", "labels", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "6",
                       "MODEL.DEPTH_COMPLETION.SEMANTIC_ENCODING", "onehot")
    assert model.num_classes == 6 and model.encoder.stages[0][0].in_channels == 3 + 4 + 6


RESNET18 = [
    "MODEL.DEPTH_COMPLETION.ENCODER", "backbone", "MODEL.BACKBONE.NAME", "build_resnet_backbone",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.STRIDE_IN_1X1", "False",
    "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']", "MODEL.RESNETS.NORM", "BN",
    "MODEL.BACKBONE.FREEZE_AT", "0",
]
MOBILENETV2 = [
    "MODEL.DEPTH_COMPLETION.ENCODER", "backbone", "MODEL.BACKBONE.NAME", "build_mobilenetv2_backbone",
    "MODEL.DEPTH_COMPLETION.BACKBONE_FEATURES", "['l1', 'l2', 'l3', 'l4', 'l6']", "MODEL.BACKBONE.FREEZE_AT", "0",
]


@pytest.mark.parametrize("opts", [RESNET18, MOBILENETV2], ids=["resnet18", "mobilenetv2"])
def test_backbone_encoder(opts):
    model = make_model(*opts, "MODEL.DEPTH_COMPLETION.DECODER_CHANNELS", "[32, 16, 16, 8, 8]")
    assert type(model.encoder.backbone).__name__ in ("ResNet", "MobileNetV2Backbone")
    assert model.size_divisibility == 32
    # the sparse stem enters through a zero-initialised projection: the backbone starts unchanged
    assert (model.encoder.inject.weight == 0).all() and model.encoder.inject.in_channels == 16
    model.train()
    with EventStorage():
        losses = model([sample(), sample(37, 61, seed=1)])
    assert torch.isfinite(losses["loss_depth_l1"]) and losses["loss_depth_l1"] > 0
    losses["loss_depth_l1"].backward()
    assert model.encoder.inject.weight.grad.abs().sum() > 0  # the sparse path learns
    model.eval()
    with torch.no_grad():
        out = model([dict(sample(), height=50, width=80)])
    assert out[0]["depth"].shape == (50, 80)


def test_backbone_features_must_exist():
    with pytest.raises(ValueError, match="BACKBONE_FEATURES"):
        make_model(*RESNET18, "MODEL.RESNETS.OUT_FEATURES", "['res4']")


@pytest.fixture
def tiny_hydranet(tmp_path):
    """A random tiny HydraNet (the CPU config, 14 classes) saved with DetectionCheckpointer."""
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(HYDRANET_CPU_CONFIG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.HYDRANET.DECODER_CHANNELS", "32"])
    torch.manual_seed(1)
    hydranet = build_model(cfg)
    DetectionCheckpointer(hydranet, save_dir=str(tmp_path)).save("guide")
    config = tmp_path / "guide.yaml"
    config.write_text(cfg.dump())
    return hydranet, str(config), str(tmp_path / "guide.pth")


def test_guide_mode_with_a_saved_hydranet(tiny_hydranet):
    hydranet, config, weights = tiny_hydranet
    model = make_model(
        *TINY, "MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT", "guide", "MODEL.DEPTH_COMPLETION.NUM_CLASSES", "14",
        "MODEL.DEPTH_COMPLETION.GUIDE_CONFIG", config, "MODEL.DEPTH_COMPLETION.GUIDE_WEIGHTS", weights,
        seed=5,  # other random weights than the saved ones: equality below means they were loaded
    )
    assert type(model.guide).__name__ == "HydraNet"
    for key, value in hydranet.state_dict().items():
        assert torch.equal(model.guide.state_dict()[key], value), key
    assert not any(p.requires_grad for p in model.guide.parameters())
    model.train()
    assert not model.guide.training  # frozen, eval mode even while training
    inputs = [sample(), sample(37, 61, seed=1)]
    _, _, probs, _ = model.preprocess(inputs)
    assert probs.shape == (2, 14, 64, 96)
    assert torch.allclose(probs[1, :, :37, :61].sum(0), torch.ones(37, 61), atol=1e-5)
    assert (probs[1, :, 37:] == 0).all()
    hydranet.eval()
    with torch.no_grad():
        expected = hydranet([{"image": inputs[0]["image"]}])[0]["sem_seg"].softmax(0)
    assert torch.allclose(probs[0, :, :45, :70], expected, atol=1e-5)
    with EventStorage():
        losses = model(inputs)
    losses["loss_depth_l1"].backward()
    assert all(p.grad is None for p in model.guide.parameters())
    assert model.semantic_embedding.weight.grad is not None


def test_guide_class_mismatch_names_the_config(tiny_hydranet):
    _, config, weights = tiny_hydranet
    with pytest.raises(ValueError, match="guide.yaml.*14 classes"):
        make_model(
            *TINY, "MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT", "guide", "MODEL.DEPTH_COMPLETION.NUM_CLASSES", "10",
            "MODEL.DEPTH_COMPLETION.GUIDE_CONFIG", config, "MODEL.DEPTH_COMPLETION.GUIDE_WEIGHTS", weights,
        )
    with pytest.raises(ValueError, match="GUIDE_CONFIG"):
        make_model(*TINY, "MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT", "guide", "MODEL.DEPTH_COMPLETION.NUM_CLASSES", "14")


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="ENCODER"):
        make_model("MODEL.DEPTH_COMPLETION.ENCODER", "transformer")
    with pytest.raises(ValueError, match="LOSS_SCALE_WEIGHTS"):
        make_model(*TINY, "MODEL.DEPTH_COMPLETION.LOSS_SCALE_WEIGHTS", "[1.0, 1.0]")
    with pytest.raises(ValueError, match="SEMANTIC_INPUT"):
        make_model(*TINY, "MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT", "masks")


# ---------------------------------------------------------------- prefill


def test_dilation_fill_by_hand():
    from segdep_d2.modeling.meta_arch.depth_completion import dilation_fill

    sparse = torch.zeros(1, 1, 5, 7)
    sparse[0, 0, 1, 1] = 10.0
    sparse[0, 0, 1, 4] = 2.0
    filled = dilation_fill(sparse, [3])[0, 0]
    assert filled[1, 1] == 10.0 and filled[1, 4] == 2.0  # points keep their value
    assert filled[0, 0] == 10.0 and filled[2, 2] == 10.0  # the 3x3 around (1, 1)
    assert filled[2, 5] == 2.0 and filled[0, 3] == 2.0  # around (1, 4)
    assert filled[4, 0] == 0.0  # out of reach of one 3x3 step
    # two steps: the column between the points is reached by both; the nearer surface (2 m) wins
    twice = dilation_fill(sparse, [3, 3])[0, 0]
    assert twice[1, 3] == 2.0 and twice[1, 2] == 10.0 and twice[3, 1] == 10.0  # (1, 2) was reached first by 10 m


def test_prefill_model_starts_as_the_fill_and_trains():
    from segdep_d2.modeling.meta_arch.depth_completion import dilation_fill

    model = make_model(*TINY, "MODEL.DEPTH_COMPLETION.PREFILL", "dilation").eval()
    x = sample(64, 96, points=300)  # a multiple of 32: no padding for the fill to spread into
    with torch.no_grad():
        out = model([x])[0]["depth"]
    fill = dilation_fill(x["sparse_depth"][None, None], model.prefill_kernels)[0, 0]
    reached = fill > 0
    assert reached.float().mean() > 0.99
    # r = 0 at the start (zero-initialised predictors): the prediction is the fill
    torch.testing.assert_close(out[reached], fill[reached].clamp(1e-3, 80.0), rtol=1e-5, atol=0.0)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(15):
        losses = model([sample(points=200)])
        loss = sum(losses.values())
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss) and loss.item() < first
    with pytest.raises(ValueError, match="PREFILL"):
        make_model(*TINY, "MODEL.DEPTH_COMPLETION.PREFILL", "bilinear")
