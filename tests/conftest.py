import os
import warnings

import pytest

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


CPU_TEACHER_CONFIG = os.path.join(
    REPO_ROOT, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml"
)
CPU_TEACHER_OPTS = ["INPUT.MIN_SIZE_TEST", "32", "MODEL.DEVICE", "cpu"]


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


# A tiny open_clip model config (CLIP's real tokenizer and vocabulary, a 2-layer 64-wide text tower):
# SegDep tests build their text encoder from it in a fraction of a second.
TINY_OPEN_CLIP = "segdep-test-tiny-clip"
SEGDEP_CPU_CONFIG = os.path.join(REPO_ROOT, "projects/SegDep/configs/Synthetic-SegDep/segdep_hrnet18s_cpu.yaml")
# SegDep's CPU config with that text tower and one prompt template (use with the fixture below)
TINY_SEGDEP_OPTS = ["MODEL.SEGDEP.CLIP_MODEL", TINY_OPEN_CLIP, "MODEL.SEGDEP.PROMPT_TEMPLATES", "['a photo of a {}.']"]


def segdep_cfg(*opts, path=SEGDEP_CPU_CONFIG):
    """A SegDep config from ``path`` (default: the CPU config) on the CPU, with ``opts`` merged (not frozen);
    ``segdep_cfg(*TINY_SEGDEP_OPTS, ...)`` for the tiny text tower."""
    from detectron2.config import get_cfg

    from segdep_d2 import add_segdep_config

    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def tiny_segdep_model(*opts, seed=0):
    """SegDep (CPU config, tiny text tower, ``opts``) with the weights of ``seed``: needs the
    ``tiny_open_clip`` fixture."""
    import warnings

    import torch
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init CLIP warning
        return build_model(segdep_cfg(*TINY_SEGDEP_OPTS, *opts))


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


def save_tiny_segformer(folder, classes, processor_size=(32, 48), seed=0):
    """A tiny random SegformerForSemanticSegmentation (+ its image processor) saved as training saves one."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 1], sr_ratios=[2, 1],
        strides=[4, 2], patch_sizes=[7, 3], mlp_ratios=[2, 2], decoder_hidden_size=16,
        num_labels=len(classes), id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)},
    )
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(config)
    with torch.no_grad():  # random logits far apart, as a trained model's: argmax without near-ties
        model.decode_head.classifier.weight.mul_(50.0)
    model.save_pretrained(str(folder))
    if processor_size is not None:
        height, width = processor_size
        SegformerImageProcessor(size={"height": height, "width": width}, image_mean=[0.5, 0.4, 0.3],
                                image_std=[0.2, 0.25, 0.3]).save_pretrained(str(folder))
    return str(folder)


def register_records(name, records, **metadata):
    """Register ``records`` (deep copies on every get) as ``name`` with ``metadata``, replacing a former ``name``."""
    import copy

    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    records = copy.deepcopy(records)
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    MetadataCatalog.get(name).set(**metadata)
    return name


def drop_keys(records, keys):
    """Copies of ``records`` without ``keys``."""
    return [{k: v for k, v in r.items() if k not in keys} for r in records]


@pytest.fixture
def one_torch_thread():
    """torch on one intra-op thread for the test (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
