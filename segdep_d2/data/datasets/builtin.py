"""Register every builtin dataset under ``$DETECTRON2_DATASETS`` (default ``datasets``), once."""
import os

from detectron2.data import DatasetCatalog

from .cityscapes_depth import register_all_cityscapes_depth
from .nyuv2 import register_all_nyuv2
from .kitti import register_all_kitti
from .kitti_completion import register_all_kitti_completion
from .sidewalk import register_all_sidewalk
from .vkitti2 import register_all_vkitti2
from .vkitti2_prepared import register_all_vkitti2_prepared


def register_all(datasets_root=None):
    """Idempotent: a second call (or a second ``import segdep_d2``) registers nothing."""
    if "vkitti2_train" in DatasetCatalog.list():
        return
    if datasets_root is None:
        datasets_root = os.getenv("DETECTRON2_DATASETS", "datasets")
    register_all_vkitti2(datasets_root)  # depth-aware names, VKITTI2's own label files
    register_all_vkitti2_prepared(datasets_root)  # detectron2-standard views (prepare_vkitti2.py)
    register_all_cityscapes_depth(datasets_root)
    register_all_nyuv2(datasets_root)  # nyuv2_{train,test} (prepare_nyuv2.py)
    register_all_kitti(datasets_root)  # depth benchmark, Eigen split, semantics
    register_all_kitti_completion(datasets_root)  # kitti_depth_completion_{train,val,val_selection,test}
    register_all_sidewalk(datasets_root)  # sidewalk_{surface,polygon,depth}_{train,val} (AI Hub release)
