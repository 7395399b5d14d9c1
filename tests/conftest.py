import os
import warnings

import pytest

from segdep_testing import CPU_TEACHER_CONFIG, CPU_TEACHER_OPTS, TINY_OPEN_CLIP

# detectron2 and torch emit deprecation noise (pkg_resources, torch.jit.script) on import.
warnings.filterwarnings("ignore", category=UserWarning, module="detectron2")
warnings.filterwarnings("ignore", category=FutureWarning)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_SAMPLES = os.path.join(os.path.dirname(REPO_ROOT), "shared", "real_samples")


@pytest.fixture(scope="session")
def real_samples():
    """../shared/real_samples, read in place; tests that need it skip where it is absent."""
    if not os.path.isdir(REAL_SAMPLES):
        pytest.skip("../shared/real_samples is not present in this checkout")
    return REAL_SAMPLES


@pytest.fixture(scope="session")
def synthetic_vkitti2(tmp_path_factory):
    """A tiny synthetic dataset in the merged Virtual KITTI 2 layout (and its summary)."""
    from segdep_d2.data.synthetic import generate_vkitti2

    root = str(tmp_path_factory.mktemp("vkitti2"))
    summary = generate_vkitti2(
        root, scenes=("Scene01", "Scene20"), variations=("clone", "fog"), frames=2, height=64, width=208, seed=0
    )
    return root, summary


@pytest.fixture(scope="session")
def synthetic_cityscapes(tmp_path_factory):
    """A tiny synthetic dataset in the Cityscapes layout, panoptic JSON/PNG included."""
    from segdep_d2.data.synthetic import generate_cityscapes

    root = os.path.join(str(tmp_path_factory.mktemp("datasets")), "cityscapes")
    summary = generate_cityscapes(root, splits={"train": 1, "val": 1}, frames=2, height=64, width=128, seed=0)
    return root, summary


@pytest.fixture(scope="session")
def synthetic_kitti(tmp_path_factory):
    """A tiny synthetic dataset in the KITTI layout at ``<tmp>/datasets/kitti`` (depth benchmark with raw
    images, data_semantics with its prepared train-id PNGs, eigen_test_files.txt) and its summary."""
    from segdep_d2.data.synthetic import generate_kitti

    root = os.path.join(str(tmp_path_factory.mktemp("datasets")), "kitti")
    summary = generate_kitti(root, frames=3, semantic_frames=2, height=64, width=212, seed=0)
    return root, summary


@pytest.fixture(scope="session")
def teacher_weights(tmp_path_factory):
    """A checkpoint of the tiny CPU PanopticDepthLab (random weights, seed 0), saved the way training
    saves one, for tools that load a trained model (pseudo-labels)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from segdep_d2 import add_segdep_config

    folder = str(tmp_path_factory.mktemp("teacher"))
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(CPU_TEACHER_CONFIG)
    cfg.merge_from_list(CPU_TEACHER_OPTS)
    import torch

    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=folder).save("teacher")
    return os.path.join(folder, "teacher.pth")


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory):
    """Registers :data:`TINY_OPEN_CLIP` with open_clip (once per session) and returns its name."""
    import json

    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_configs")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    (folder / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(folder))
    return TINY_OPEN_CLIP


@pytest.fixture
def one_torch_thread():
    """torch on one intra-op thread for the test (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
