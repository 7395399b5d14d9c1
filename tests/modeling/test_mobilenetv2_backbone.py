import logging

import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

import segdep_d2  # noqa: F401
from segdep_d2 import add_segdep_config
from segdep_d2.modeling.backbone import MobileNetV2Backbone, load_torchvision_mobilenetv2
from segdep_d2.modeling.backbone.mobilenetv2 import torchvision_key_to_backbone

EXPECTED = {"l1": (24, 4), "l2": (32, 8), "l3": (64, 16), "l4": (96, 16), "l5": (160, 32), "l6": (320, 32)}


def _cfg(*opts):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "build_mobilenetv2_backbone", "MODEL.BACKBONE.FREEZE_AT", "0", *opts])
    return cfg


def test_registered_and_output_shapes_strides_channels():
    assert "build_mobilenetv2_backbone" in BACKBONE_REGISTRY
    backbone = build_backbone(_cfg(), ShapeSpec(channels=3))
    assert isinstance(backbone, MobileNetV2Backbone) and backbone.size_divisibility == 32
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == EXPECTED
    with torch.no_grad():
        out = backbone.eval()(torch.zeros(1, 3, 64, 96))
    for name, (channels, stride) in EXPECTED.items():
        assert out[name].shape == (1, channels, 64 // stride, 96 // stride), name


def test_stages_are_torchvision_blocks_without_the_last_conv():
    backbone = MobileNetV2Backbone()
    reference = torchvision.models.mobilenet_v2(weights=None).features
    # the 1280-channel conv (features[18]) is not part of the backbone
    assert sum(p.numel() for p in backbone.parameters()) == sum(p.numel() for p in reference[:18].parameters())
    assert type(backbone.l6[0]) is type(reference[17])
    assert torchvision_key_to_backbone("features.0.0.weight") == "stem.0.0.weight"
    assert torchvision_key_to_backbone("features.2.conv.0.0.weight") == "l1.0.conv.0.0.weight"
    assert torchvision_key_to_backbone("features.13.conv.3.bias") == "l4.2.conv.3.bias"
    assert torchvision_key_to_backbone("features.17.conv.2.weight") == "l6.0.conv.2.weight"
    assert torchvision_key_to_backbone("features.18.0.weight") is None
    assert torchvision_key_to_backbone("classifier.1.weight") is None


def _torchvision_checkpoint(path, drop=()):
    torch.manual_seed(123)
    reference = torchvision.models.mobilenet_v2(weights=None)
    state = reference.state_dict()
    for key, value in state.items():  # known, non-default values everywhere (running stats too)
        if key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        elif value.is_floating_point():
            state[key] = torch.randn_like(value) * 0.2
    for key in drop:
        del state[key]
    torch.save(state, path)
    return state


def test_loads_a_torchvision_checkpoint_through_the_config(tmp_path, caplog):
    path = str(tmp_path / "mobilenet_v2.pth")
    dropped = "features.5.conv.1.0.weight"
    state = _torchvision_checkpoint(path, drop=(dropped,))
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO):
        backbone = build_backbone(_cfg("MODEL.HYDRANET.BACKBONE_WEIGHTS", path), ShapeSpec(channels=3))
    own = backbone.state_dict()
    for key, value in state.items():
        target = torchvision_key_to_backbone(key)
        if target is not None:
            assert torch.equal(own[target], value), key
    assert not torch.equal(own["l2.1.conv.1.0.weight"], torch.zeros_like(own["l2.1.conv.1.0.weight"]))
    # the missing key and the unused 1280-channel conv / classifier are named in the log
    assert "l2.1.conv.1.0.weight" in caplog.text
    assert "features.18.0.weight" in caplog.text and "classifier.1.weight" in caplog.text

    # the same network as torchvision's, block for block
    reference = torchvision.models.mobilenet_v2(weights=None).eval()
    full = dict(state)
    full[dropped] = own["l2.1.conv.1.0.weight"]
    reference.load_state_dict(full)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone.eval()(x)["l6"], reference.features[:18](x), atol=1e-4)


def test_loader_report_and_wrapped_checkpoints(tmp_path):
    path = str(tmp_path / "wrapped.pth")
    _torchvision_checkpoint(str(tmp_path / "plain.pth"))
    state = torch.load(str(tmp_path / "plain.pth"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    report = load_torchvision_mobilenetv2(MobileNetV2Backbone(), path)
    assert report["missing"] == [] and report["mismatched"] == []
    assert set(report["unused"]) == {k for k in state if k.startswith(("features.18.", "classifier."))}


def test_freeze_at_freezes_the_stem_and_stages():
    backbone = build_backbone(_cfg("MODEL.BACKBONE.FREEZE_AT", "2"), ShapeSpec(channels=3))
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for p in backbone.l1.parameters())
    assert all(p.requires_grad for p in backbone.l2.parameters())
    assert isinstance(backbone.stem[0][1], FrozenBatchNorm2d)


def test_unknown_out_feature_is_rejected():
    with pytest.raises(ValueError, match="out_features"):
        MobileNetV2Backbone(out_features=("res5",))
