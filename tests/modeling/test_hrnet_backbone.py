import logging
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

import segdep_d2  # noqa: F401
from segdep_d2 import add_segdep_config
from segdep_d2.modeling.backbone import HRNetBackbone, ScaleAlignmentFPN, load_hrnet_weights
from segdep_d2.modeling.backbone.hrnet import hrnet_key_to_backbone

# timm's hrnet_w18_small is HRNet "small v1": 16-wide branches
W18_SMALL = {"hr1": (16, 4), "hr2": (32, 8), "hr3": (64, 16), "hr4": (128, 32)}
W32 = {"hr1": (32, 4), "hr2": (64, 8), "hr3": (128, 16), "hr4": (256, 32)}


def _cfg(*opts, name="hrnet_w18_small"):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_list([
        "MODEL.BACKBONE.NAME", "build_hrnet_backbone", "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.SEGDEP.HRNET_NAME", name, *opts,
    ])
    return cfg


def _shapes(backbone):
    return {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()}


@pytest.fixture(scope="module")
def w32():
    torch.manual_seed(0)
    return build_backbone(_cfg(name="hrnet_w32"), ShapeSpec(channels=3))


def test_config_defaults_and_idempotence():
    cfg = get_cfg()
    add_segdep_config(cfg)
    node = cfg.MODEL.SEGDEP
    assert (node.HRNET_NAME, node.HRNET_WEIGHTS, node.FPN_CHANNELS, node.FPN_FUSE) == ("hrnet_w32", "", 256, "concat")
    assert node.HRNET_OUT_FEATURES == ["hr1", "hr2", "hr3", "hr4"]
    node.FPN_FUSE = "sum"
    add_segdep_config(cfg)
    assert cfg.MODEL.SEGDEP.FPN_FUSE == "sum"


def test_registered_and_output_shapes_strides_channels():
    assert "build_hrnet_backbone" in BACKBONE_REGISTRY
    backbone = build_backbone(_cfg(), ShapeSpec(channels=3))
    assert isinstance(backbone, HRNetBackbone) and backbone.size_divisibility == 32
    assert _shapes(backbone) == W18_SMALL
    with torch.no_grad():
        out = backbone.eval()(torch.zeros(1, 3, 64, 96))
    assert list(out) == ["hr1", "hr2", "hr3", "hr4"]
    for name, (channels, stride) in W18_SMALL.items():
        assert out[name].shape == (1, channels, 64 // stride, 96 // stride), name


def test_hrnet_w32_from_the_default_config(w32):
    # the SegDep model's backbone: built from the default MODEL.SEGDEP (only the builder name set)
    assert w32.model_name == "hrnet_w32" and _shapes(w32) == W32
    # HRNetV2's raw branches: no ImageNet incre / classification head in the backbone
    assert not any(k.startswith(("incre_modules", "final_layer", "classifier")) for k in w32.state_dict())


def test_same_network_as_timms_raw_branch_features():
    torch.manual_seed(1)
    reference = timm.create_model(
        "hrnet_w18_small", pretrained=False, features_only=True, feature_location="", out_indices=(1, 2, 3, 4)
    ).eval()
    backbone = HRNetBackbone("hrnet_w18_small").eval()
    backbone.load_state_dict(reference.state_dict())  # same names, strict
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, out = reference(x), backbone(x)
    for name, y in zip(["hr1", "hr2", "hr3", "hr4"], expected):
        assert torch.allclose(out[name], y, atol=1e-5), name


def test_sizes_not_divisible_by_32_are_rejected_and_padding_fixes_them():
    backbone = HRNetBackbone("hrnet_w18_small", out_features=["hr1", "hr4"]).eval()
    image = torch.randn(3, 70, 90)
    with pytest.raises(ValueError, match="multiples of 32"):
        backbone(image[None])
    # what a detectron2 meta-architecture does: pad to size_divisibility (70x90 -> 96x96)
    padded = ImageList.from_tensors([image], size_divisibility=backbone.size_divisibility).tensor
    assert padded.shape == (1, 3, 96, 96)
    with torch.no_grad():
        out = backbone(padded)
    assert list(out) == ["hr1", "hr4"]
    assert out["hr1"].shape == (1, 16, 24, 24) and out["hr4"].shape == (1, 128, 3, 3)


def test_out_features_subset_and_bad_names():
    backbone = build_backbone(_cfg("MODEL.SEGDEP.HRNET_OUT_FEATURES", "['hr2', 'hr3']"), ShapeSpec(channels=3))
    assert _shapes(backbone) == {"hr2": (32, 8), "hr3": (64, 16)}
    with pytest.raises(ValueError, match="out_features"):
        HRNetBackbone("hrnet_w18_small", out_features=["res5"])
    with pytest.raises(ValueError, match="3-channel"):
        build_backbone(_cfg(), ShapeSpec(channels=4))


def test_norm_and_freeze_at():
    frozen = build_backbone(_cfg("MODEL.SEGDEP.NORM", "FrozenBN"), ShapeSpec(channels=3))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert isinstance(frozen.bn1, FrozenBatchNorm2d)
    synced = HRNetBackbone("hrnet_w18_small", norm="SyncBN")
    assert isinstance(synced.stage4[0].fuse_layers[0][3][1], nn.SyncBatchNorm)
    with pytest.raises(ValueError, match="norm"):
        HRNetBackbone("hrnet_w18_small", norm="GN")
    backbone = build_backbone(_cfg("MODEL.BACKBONE.FREEZE_AT", "2"), ShapeSpec(channels=3))
    assert not any(p.requires_grad for m in (backbone.conv1, backbone.bn2, backbone.layer1) for p in m.parameters())
    assert isinstance(backbone.bn1, FrozenBatchNorm2d) and isinstance(backbone.layer1[0].bn1, FrozenBatchNorm2d)
    assert all(p.requires_grad for p in backbone.stage2.parameters())
    assert isinstance(backbone.stage2[0].branches[0][0].bn1, nn.BatchNorm2d)


@pytest.mark.parametrize("fuse", ["sum", "concat"])
def test_scale_alignment_fpn_shapes_and_fusion(fuse):
    torch.manual_seed(2)
    cfg = _cfg("MODEL.SEGDEP.FPN_CHANNELS", "24", "MODEL.SEGDEP.FPN_FUSE", fuse)
    backbone = build_backbone(cfg, ShapeSpec(channels=3)).eval()
    fpn = ScaleAlignmentFPN(cfg, backbone.output_shape()).eval()
    assert fpn.in_features == ["hr1", "hr2", "hr3", "hr4"]
    assert fpn.output_shape() == ShapeSpec(channels=24, stride=4)
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 64, 96))
        out = fpn(features)
        assert out.shape == (2, 24, 16, 24)
        aligned = [
            F.interpolate(fpn.lateral[k](features[k]), size=(16, 24), mode="bilinear", align_corners=False)
            for k in ["hr1", "hr2", "hr3", "hr4"]
        ]
        expected = sum(aligned) if fuse == "sum" else fpn.fuse_conv(torch.cat(aligned, 1))
    assert torch.allclose(out, expected, atol=1e-5)
    if fuse == "concat":
        assert fpn.fuse_conv.weight.shape == (24, 4 * 24, 1, 1)
    else:
        assert fpn.fuse_conv is None
    # gradients reach every branch through the fused tensor
    fpn.train()
    fpn(backbone.train()(torch.randn(2, 3, 64, 96))).sum().backward()
    assert all(backbone.stage4[0].branches[i][0].conv1.weight.grad is not None for i in range(4))


def test_fpn_rejects_unknown_fuse():
    with pytest.raises(ValueError, match="fuse"):
        ScaleAlignmentFPN({"hr1": ShapeSpec(channels=8, stride=4)}, channels=8, fuse="max")


_HEADS = ("incre", "downsamp", "final", "classifier")  # timm's classification head


def _timm_state(name="hrnet_w18_small", seed=123):
    """timm's full (classification) state dict, as its ImageNet file holds it, with known non-default
    values everywhere (running stats too)."""
    torch.manual_seed(seed)
    state = timm.create_model(name, pretrained=False).state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        elif value.is_floating_point():
            state[key] = torch.randn_like(value) * 0.2
    return state


def _assert_loaded(backbone, state, prefix=""):
    own = backbone.state_dict()
    checked = 0
    for key, value in state.items():
        target = key[len(prefix):]
        if key.startswith(prefix) and target in own:
            assert torch.equal(own[target], value), key
            checked += 1
    assert checked == len(own)  # every backbone tensor (num_batches_tracked included) came from the file


def test_loads_timms_imagenet_state_dict_through_the_config(tmp_path, caplog):
    path = str(tmp_path / "hrnet_w18_small.pth")
    state = _timm_state()
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="segdep_d2"):
        backbone = build_backbone(_cfg("MODEL.SEGDEP.HRNET_WEIGHTS", path), ShapeSpec(channels=3))
    _assert_loaded(backbone, state)
    # the classification head (incre / downsamp / final layer / classifier) is reported as unused
    assert "classifier.weight" in caplog.text and "incre_modules.0.0.conv1.weight" in caplog.text
    assert "final_layer.0.weight" in caplog.text and "downsamp_modules.0.0.weight" in caplog.text
    assert f"loaded {len([k for k in backbone.state_dict() if 'num_batches' not in k])} of" in caplog.text


def test_loads_an_hrnet_semantic_segmentation_checkpoint(tmp_path, caplog):
    # HRNet-Semantic-Segmentation saves FullModel(model, loss): "model." keys, the HRNetV2 head
    # "last_layer" (1x1 conv, BN, ReLU, classifier) and the loss' class weights; DataParallel adds "module."
    timm_state = _timm_state(seed=7)
    state = {f"module.model.{k}": v for k, v in timm_state.items() if not k.startswith(_HEADS)}
    c = 16 + 32 + 64 + 128
    state.update({
        "module.model.last_layer.0.weight": torch.randn(c, c, 1, 1), "module.model.last_layer.0.bias": torch.randn(c),
        "module.model.last_layer.1.weight": torch.randn(c), "module.model.last_layer.1.running_var": torch.rand(c),
        "module.model.last_layer.3.weight": torch.randn(19, c, 1, 1), "module.model.last_layer.3.bias": torch.randn(19),
        "module.loss.criterion.weight": torch.rand(19),
    })
    path = str(tmp_path / "hrnet_w18_small_v1_cityscapes.pth")
    del state["module.model.stage3.0.fuse_layers.2.0.0.0.weight"]  # a key the file lacks
    torch.save({"epoch": 484, "best_mIoU": 0.7, "state_dict": state}, path)
    backbone = HRNetBackbone("hrnet_w18_small")
    with caplog.at_level(logging.INFO, logger="segdep_d2"):
        report = load_hrnet_weights(backbone, path)
    own = backbone.state_dict()
    for key, value in state.items():
        target = hrnet_key_to_backbone(key)
        if target is not None:
            assert torch.equal(own[target], value), key
    assert report["missing"] == ["stage3.0.fuse_layers.2.0.0.0.weight"]
    assert sorted(report["unused"]) == sorted(k for k in state if "last_layer" in k or "loss." in k)
    assert "module.model.last_layer.3.weight" in caplog.text and "module.loss.criterion.weight" in caplog.text
    assert "stage3.0.fuse_layers.2.0.0.0.weight" in caplog.text  # the missing key is named too
    assert hrnet_key_to_backbone("backbone.stage2.0.branches.1.0.conv2.weight") == "stage2.0.branches.1.0.conv2.weight"
    assert hrnet_key_to_backbone("model.last_layer.0.weight") is None


def test_loads_detectron2_pth_and_pkl_checkpoints(tmp_path):
    state = {k: v for k, v in _timm_state(seed=11).items() if not k.startswith(_HEADS)}
    model = {f"backbone.{k}": v for k, v in state.items()}
    model["sem_seg_head.predictor.weight"] = torch.randn(15, 256, 1, 1)
    pth, pkl = str(tmp_path / "model_final.pth"), str(tmp_path / "model_final.pkl")
    torch.save({"model": model, "iteration": 1000}, pth)
    with open(pkl, "wb") as f:  # detectron2 model-zoo .pkl: numpy arrays under "model"
        pickle.dump({"model": {k: v.numpy() for k, v in model.items()}, "__author__": "segdep"}, f)
    for path in (pth, pkl):
        backbone = HRNetBackbone("hrnet_w18_small")
        report = load_hrnet_weights(backbone, path)
        _assert_loaded(backbone, model, prefix="backbone.")
        assert report["unused"] == ["sem_seg_head.predictor.weight"] and report["missing"] == []


def test_a_checkpoint_of_another_width_errors_naming_the_file(tmp_path, w32):
    path = str(tmp_path / "hrnet_w18_small_imagenet.pth")
    torch.save(_timm_state(), path)
    before = w32.conv1.weight.clone()
    with pytest.raises(ValueError, match=r"hrnet_w18_small_imagenet\.pth do not fit hrnet_w32: \d+ tensors differ"):
        load_hrnet_weights(w32, path)
    assert torch.equal(w32.conv1.weight, before)  # nothing was half-loaded
    unrelated = str(tmp_path / "resnet.pth")
    torch.save({"res2.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, unrelated)
    with pytest.raises(ValueError, match=r"resnet\.pth: no tensor matches hrnet_w18_small"):
        HRNetBackbone("hrnet_w18_small", weights=unrelated)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        HRNetBackbone("hrnet_w18_small", weights=str(tmp_path / "missing.pth"))


def test_weights_load_before_the_norm_is_frozen(tmp_path):
    path = str(tmp_path / "hrnet.pth")
    state = _timm_state(seed=5)
    torch.save(state, path)
    backbone = build_backbone(
        _cfg("MODEL.SEGDEP.HRNET_WEIGHTS", path, "MODEL.SEGDEP.NORM", "FrozenBN"), ShapeSpec(channels=3)
    )
    assert isinstance(backbone.stage4[0].branches[3][0].bn2, FrozenBatchNorm2d)
    bn = backbone.stage4[0].branches[3][0].bn2
    assert torch.equal(bn.running_var, state["stage4.0.branches.3.0.bn2.running_var"])
