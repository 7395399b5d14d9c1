#!/usr/bin/env python
"""Write KITTI semantics' train-id label PNGs once (``data_semantics/training/semantic_trainid/``),
as cityscapesscripts' ``createTrainIdLabelImgs`` does for Cityscapes, so that ``kitti_sem_seg_train``
and detectron2's stock ``DatasetMapper`` read train ids.

    DETECTRON2_DATASETS=/path/to/datasets python datasets/prepare_kitti_semantics.py [--root R] [--overwrite]

A thin command line over ``segdep_d2.data.datasets.kitti.main`` (decoding is segdep_d2's own).
"""
import os
import sys

try:
    from segdep_d2.data.datasets.kitti import main
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from segdep_d2.data.datasets.kitti import main

if __name__ == "__main__":
    sys.exit(main())
