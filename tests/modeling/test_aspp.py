"""ASPP image pooling at test-time sizes: unchanged where detectron2's ASPP works, global pooling
below the training crop, through the full model and through export."""
import copy
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ASPP
from detectron2.modeling import build_model
from torch.nn import functional as F

import segdep_d2  # noqa: F401
from segdep_d2 import add_segdep_config
from segdep_d2.modeling import ImagePooling2d, adapt_aspp_pooling
from segdep_d2.modeling.export import export_panoptic_depthlab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CITYSCAPES_CONFIG = os.path.join(
    REPO,
    "projects/PanopticDepthLab/configs/Cityscapes-PanopticDepth/panoptic_depthlab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.yaml",
)
CPU_CONFIG = os.path.join(REPO, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml")
KERNEL = (4, 8)  # a training crop whose feature map is 4x8


def _aspp(pool_kernel_size=KERNEL, seed=0):
    torch.manual_seed(seed)
    aspp = ASPP(8, 6, [1, 2, 3], norm="BN", activation=F.relu, pool_kernel_size=pool_kernel_size).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that every branch matters
        for m in aspp.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return aspp


def _features(h, w, seed=1):
    return torch.randn(2, 8, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [(4, 8), (8, 16), (12, 8)], ids=str)
def test_same_output_as_detectrons_aspp_where_that_works(size):
    plain = _aspp()
    adapted = copy.deepcopy(plain)
    assert adapt_aspp_pooling(adapted) == 1
    x = _features(*size)
    with torch.no_grad():
        # a sliding window is pooled separably: the same sums in another order
        torch.testing.assert_close(adapted(x), plain(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [(2, 4), (1, 1), (4, 4), (3, 5)], ids=str)
def test_smaller_than_the_crop_is_global_average_pooling(size):
    plain = _aspp()
    x = _features(*size)
    with pytest.raises(ValueError, match="pool_kernel_size"):
        plain(x)
    adapted = copy.deepcopy(plain)
    adapt_aspp_pooling(adapted)
    global_pool = _aspp(pool_kernel_size=None)  # detectron2's own global-pooling ASPP, same weights
    global_pool.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), global_pool(x), rtol=1e-6, atol=1e-6)


def test_kernel_is_the_training_kernel_capped_per_dimension():
    pool = ImagePooling2d(KERNEL)
    # 2x20: height is global, width slides the training kernel (and 20 is not divisible by 8)
    x = _features(2, 20)
    expected = F.avg_pool2d(x, (2, 8), stride=1)
    assert pool(x).shape == (2, 8, 1, 13)
    torch.testing.assert_close(pool(x), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pool(_features(6, 12)), F.avg_pool2d(_features(6, 12), KERNEL, stride=1),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(pool(_features(4, 8)), F.avg_pool2d(_features(4, 8), KERNEL, stride=1))  # global: one pool


def test_sliding_pool_at_cityscapes_scale_is_the_2d_mean():
    """The Cityscapes kernel (32x64) sliding over a 1024x2048 input's 64x128 features: the separable
    pool gives each window's mean (checked against float64 by hand on a few windows)."""
    pool = ImagePooling2d((32, 64))
    x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    y = pool(x)
    assert y.shape == (1, 3, 33, 65)
    for i, j in [(0, 0), (32, 64), (7, 40), (20, 3)]:
        expected = x[0, :, i:i + 32, j:j + 64].double().mean((-2, -1))
        torch.testing.assert_close(y[0, :, i, j].double(), expected, rtol=0, atol=1e-6)


def test_adapt_keeps_weights_and_is_idempotent():
    aspp = _aspp()
    keys = list(aspp.state_dict())
    assert adapt_aspp_pooling(aspp) == 1
    assert adapt_aspp_pooling(aspp) == 0
    assert list(aspp.state_dict()) == keys
    assert isinstance(aspp.convs[-1][0], ImagePooling2d) and aspp.convs[-1][0].kernel_size == KERNEL
    assert adapt_aspp_pooling(_aspp(pool_kernel_size=None)) == 0  # global pooling stays as built


@pytest.mark.parametrize("size", [(2, 4), (8, 16)], ids=str)
def test_adapted_aspp_traces_scripts_and_exports(size):
    aspp = _aspp()
    adapt_aspp_pooling(aspp)
    x = _features(*size)
    with torch.no_grad():
        eager = aspp(x)
        torch.testing.assert_close(torch.jit.trace(aspp, x)(x), eager)
        torch.testing.assert_close(torch.jit.script(aspp.convs[-1][0])(x), aspp.convs[-1][0](x))
        torch.testing.assert_close(torch.export.export(aspp, (x,)).module()(x), eager)


def _cfg(path, *opts):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


def test_cityscapes_model_runs_below_its_crop_size():
    """The 512x1024-crop config (pool kernel 32x64 at OS16) on a 64x128 image: all three decoders
    pool globally instead of raising."""
    torch.manual_seed(0)
    model = build_model(_cfg(CITYSCAPES_CONFIG)).eval()
    heads = [model.sem_seg_head, model.ins_embed_head, model.depth_head]
    for head in heads:
        aspp = head.decoder["res5"]["project_conv"]
        assert isinstance(aspp.convs[-1][0], ImagePooling2d) and aspp.convs[-1][0].kernel_size == (32, 64)
    image = torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model([{"image": image, "height": 64, "width": 128}])[0]
    assert out["sem_seg"].shape[-2:] == (64, 128)
    assert out["depth"].shape == (64, 128) and torch.isfinite(out["depth"]).all()
    assert out["panoptic_seg"][0].shape == (64, 128)


@pytest.mark.parametrize("fmt", ["torch_export", "torchscript"])
def test_export_below_the_crop_size(fmt):
    """A cropped-training config (crop 128x256, OS32: kernel 4x8) exported at 64x128."""
    cfg = _cfg(CPU_CONFIG, "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "(128, 256)")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.sem_seg_head.decoder["res5"]["project_conv"].convs[-1][0].kernel_size == (4, 8)
    _, max_abs_diff = export_panoptic_depthlab(model, 64, 128, fmt)
    assert max(max_abs_diff.values()) < 1e-4
