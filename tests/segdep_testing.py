"""Helpers the tests share: constants, config builders and small writers (imported as
``from segdep_testing import ...``; fixtures stay in conftest.py). A module of its own name,
because ``from conftest import`` binds whichever of the suite's conftest.py files was imported
last."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CPU_TEACHER_CONFIG = os.path.join(
    REPO_ROOT, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml"
)
CPU_TEACHER_OPTS = ["INPUT.MIN_SIZE_TEST", "32", "MODEL.DEVICE", "cpu"]


# A tiny open_clip model config (CLIP's real tokenizer and vocabulary, a 2-layer 64-wide text tower):
# SegDep tests build their text encoder from it in a fraction of a second.
TINY_OPEN_CLIP = "segdep-test-tiny-clip"
SEGDEP_CPU_CONFIG = os.path.join(REPO_ROOT, "projects/SegDep/configs/Synthetic-SegDep/segdep_hrnet18s_cpu.yaml")
# SegDep's CPU config with that text tower and one prompt template (use with the fixture below)
TINY_SEGDEP_OPTS = ["MODEL.SEGDEP.CLIP_MODEL", TINY_OPEN_CLIP, "MODEL.SEGDEP.PROMPT_TEMPLATES", "['a photo of a {}.']"]


def cpu_cfg(path, *opts):
    """The config at ``path`` (with segdep_d2's keys) on the CPU, with ``opts`` merged (not frozen)."""
    from detectron2.config import get_cfg

    from segdep_d2 import add_segdep_config

    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def segdep_cfg(*opts, path=SEGDEP_CPU_CONFIG):
    """A SegDep config from ``path`` (default: the CPU config) on the CPU, with ``opts`` merged (not frozen);
    ``segdep_cfg(*TINY_SEGDEP_OPTS, ...)`` for the tiny text tower."""
    return cpu_cfg(path, *opts)


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
