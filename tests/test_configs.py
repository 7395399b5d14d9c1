"""The shipped configs: every yaml merges, project configs build on the shared ``configs/`` bases, and
the merged result of every project config is the recorded one (restructuring the files must not change
what a config means).

``tests/expected_merged_configs.json`` holds, per project config, every key whose merged value differs
from ``get_cfg()`` + ``add_segdep_config`` defaults, as ``repr`` (so a tuple stays a tuple). Keys added
to ``add_segdep_config`` later do not disturb it. After a deliberate config change, re-record with
``python tests/test_configs.py --record`` and review the diff.

It was recorded from the configs as they were before ``configs/`` existed, minus
``SOLVER.WEIGHT_DECAY_BIAS: 0.0``, which the Base file set but ``SegDepTrainer.build_optimizer`` never
reads (detectron2's ``get_default_optimizer_params`` without a bias decay): it is now detectron2's
default (None) in every config, the only change to any merged config.
"""
import glob
import json
import os
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECTED = os.path.join(REPO, "tests", "expected_merged_configs.json")
SHARED_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
PROJECT_YAMLS = sorted(glob.glob(os.path.join(REPO, "projects", "*", "configs", "**", "*.yaml"), recursive=True))
# Complete configs a user trains with (Base-* files are building blocks, merged but not pinned).
PROJECT_CONFIGS = [p for p in PROJECT_YAMLS if not os.path.basename(p).startswith("Base-")]


def _rel(path):
    return os.path.relpath(path, REPO).replace(os.sep, "/")


def _default_cfg():
    from detectron2.config import get_cfg

    from segdep_d2 import add_segdep_config

    cfg = get_cfg()
    add_segdep_config(cfg)
    return cfg


def _load(path):
    cfg = _default_cfg()
    cfg.merge_from_file(path)
    return cfg


def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def non_default_keys(path):
    """{key: repr(value)} for every key of the merged config that differs from the defaults."""
    defaults = _flat(_default_cfg())
    merged = _flat(_load(path))
    missing = object()
    return {k: repr(v) for k, v in sorted(merged.items()) if defaults.get(k, missing) != v}


def _bases(path):
    """The files a yaml inherits from, nearest first, following ``_BASE_`` (a string or a list)."""
    with open(path) as f:
        base = (yaml.safe_load(f) or {}).get("_BASE_")
    if base is None:
        return []
    out = []
    for b in [base] if isinstance(base, str) else base:
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), b))
        out += [resolved] + _bases(resolved)
    return out


def test_there_are_shared_and_project_configs():
    assert SHARED_CONFIGS, "configs/ holds the shared Base-*.yaml files"
    assert len(PROJECT_CONFIGS) >= 4


@pytest.mark.parametrize("path", SHARED_CONFIGS + PROJECT_YAMLS, ids=_rel)
def test_every_yaml_merges_and_names_only_existing_bases(path):
    for base in _bases(path):
        assert os.path.isfile(base), f"{_rel(path)}: _BASE_ {base} does not exist"
    _load(path)


@pytest.mark.parametrize("path", SHARED_CONFIGS, ids=_rel)
def test_shared_configs_do_not_depend_on_a_project(path):
    for base in _bases(path):
        assert os.path.dirname(base) == os.path.join(REPO, "configs"), f"{_rel(path)} inherits {_rel(base)}"


@pytest.mark.parametrize("path", PROJECT_CONFIGS, ids=_rel)
def test_project_configs_build_on_the_shared_configs(path):
    shared = [b for b in _bases(path) if os.path.dirname(b) == os.path.join(REPO, "configs")]
    assert shared, f"{_rel(path)} does not inherit any configs/Base-*.yaml"


def test_every_shared_config_is_used_by_a_project_config():
    used = {b for p in PROJECT_CONFIGS for b in _bases(p)}
    assert set(SHARED_CONFIGS) <= used, sorted(_rel(p) for p in set(SHARED_CONFIGS) - used)


@pytest.mark.parametrize("path", PROJECT_CONFIGS, ids=_rel)
def test_merged_config_is_the_recorded_one(path):
    with open(EXPECTED) as f:
        expected = json.load(f)["configs"]
    assert _rel(path) in expected, f"{_rel(path)} is not recorded: run python tests/test_configs.py --record"
    assert non_default_keys(path) == expected[_rel(path)]


def test_no_config_sets_the_unused_bias_weight_decay():
    # SegDepTrainer.build_optimizer uses get_default_optimizer_params without bias_lr_factor /
    # weight_decay_bias: a value here would be silently ignored.
    for path in SHARED_CONFIGS + PROJECT_YAMLS:
        assert _load(path).SOLVER.WEIGHT_DECAY_BIAS is None, _rel(path)


# What each config is for, spelled out (the recorded dump above pins everything else).
KEY_FACTS = {
    "projects/PanopticDepthLab/configs/Cityscapes-PanopticDepth/panoptic_depthlab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.yaml": {
        "DATASETS.TRAIN": ("cityscapes_fine_panoptic_depth_train",),
        "DATASETS.TEST": ("cityscapes_fine_panoptic_depth_val",),
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19, "MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.NORM": "SyncBN",
        "INPUT.CROP.ENABLED": True, "INPUT.CROP.SIZE": [512, 1024], "INPUT.MIN_SIZE_TEST": 1024,
        "INPUT.MAX_SIZE_TEST": 2048, "SOLVER.OPTIMIZER": "ADAM", "SOLVER.BASE_LR": 0.001,
        "SOLVER.LR_SCHEDULER_NAME": "WarmupPolyLR", "SOLVER.MAX_ITER": 90000, "SOLVER.IMS_PER_BATCH": 32,
        "MODEL.DEPTH_HEAD.MAX_DEPTH": 80.0, "TEST.DEPTH.CROP": "",
    },
    "projects/PanopticDepthLab/configs/Cityscapes-PanopticDepth/panoptic_depthlab_R_52_os16_finetune_10k_bs14.yaml": {
        "DATASETS.TRAIN": ("cityscapes_fine_panoptic_depth_train",), "INPUT.CROP.SIZE": [512, 1024],
        "SOLVER.MAX_ITER": 10000, "SOLVER.IMS_PER_BATCH": 14, "SOLVER.CHECKPOINT_PERIOD": 2000,
        "TEST.EVAL_PERIOD": 2000,
    },
    "projects/PanopticDepthLab/configs/VKITTI2-PanopticDepth/panoptic_depthlab_R_52_os16_mg124_poly_40k_bs16.yaml": {
        "DATASETS.TRAIN": ("vkitti2_train",), "DATASETS.TEST": ("vkitti2_val",),
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 14, "MODEL.RESNETS.DEPTH": 50, "INPUT.CROP.ENABLED": False,
        "INPUT.MIN_SIZE_TEST": 375, "INPUT.MAX_SIZE_TEST": 1280,
        "INPUT.MIN_SIZE_TRAIN": (256, 288, 320, 352, 375, 416, 448, 480, 512),
        "MODEL.PANOPTIC_DEEPLAB.SIZE_DIVISIBILITY": 32, "SOLVER.OPTIMIZER": "ADAM",
        "SOLVER.MAX_ITER": 40000, "SOLVER.IMS_PER_BATCH": 16, "MODEL.DEPTH_HEAD.MAX_DEPTH": 80.0,
    },
    "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml": {
        "DATASETS.TRAIN": ("vkitti2_train",), "DATASETS.TEST": ("vkitti2_val",), "MODEL.DEVICE": "cpu",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 14, "MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.NORM": "BN",
        "MODEL.DEPTH_HEAD.LOSSES": ["silog"], "MODEL.SEM_SEG_HEAD.LOSS_TOP_K": 1.0,
        "INPUT.CROP.ENABLED": False, "INPUT.MIN_SIZE_TRAIN": (112, 128, 144), "INPUT.MIN_SIZE_TEST": 128,
        "SOLVER.IMS_PER_BATCH": 2, "SOLVER.MAX_ITER": 900, "DATALOADER.NUM_WORKERS": 1, "TEST.EVAL_PERIOD": 0,
    },
}


@pytest.mark.parametrize("rel", sorted(KEY_FACTS))
def test_key_settings_of_each_config(rel):
    cfg = _flat(_load(os.path.join(REPO, rel)))
    assert {k: cfg[k] for k in KEY_FACTS[rel]} == KEY_FACTS[rel]


def record():
    configs = {_rel(p): non_default_keys(p) for p in PROJECT_CONFIGS}
    with open(EXPECTED, "w") as f:
        json.dump({"about": "tests/test_configs.py: merged project configs, keys that differ from the defaults",
                   "configs": configs}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"recorded {len(configs)} configs in {_rel(EXPECTED)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_configs.py --record")
    sys.path.insert(0, REPO)
    import segdep_d2  # noqa: F401

    record()
