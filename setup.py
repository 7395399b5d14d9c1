"""segdep_d2: panoptic segmentation with per-segment metric depth and dense depth for detectron2
(Panoptic-DepthLab on Virtual KITTI 2, Cityscapes + disparity, or data registered generically).

torch/torchvision and detectron2 are installed before this package (see Makefile and
tools/install_detectron2.py): detectron2 is not on PyPI, so it cannot be an install_requires entry.
"""
from setuptools import find_packages, setup

setup(
    name="segdep_d2",
    version="0.1.0",
    description="Panoptic segmentation with per-segment metric depth (Panoptic-DepthLab) for detectron2",
    packages=find_packages(include=["segdep_d2", "segdep_d2.*"]),
    package_data={"segdep_d2.data.vocabularies": ["*.json"]},  # the synonym vocabulary
    python_requires=">=3.10",
    install_requires=[
        # detectron2's own metadata pins numpy<2; everything below is resolved against that.
        "numpy<2",
        # detectron2.model_zoo imports pkg_resources, which setuptools 81 removed.
        "setuptools<81",
        "fvcore>=0.1.5.post20221221",  # list-valued _BASE_ in configs/ (merged in order)
        "iopath",
        "pycocotools",
        "panopticapi-lite",  # provides the `panopticapi` module (panopticapi itself is not on PyPI)
        "cityscapesscripts",
        "open_clip_torch",
        "timm",
        "opencv-python-headless",
        "Pillow",
        "matplotlib",
        "tabulate",
        "scipy",  # depth completion's baselines (nearest / Delaunay fills) and evaluation
        "tqdm",  # progress bars of the datasets/prepare_*.py converters and tools/generate_pseudo_labels.py
        "h5py",  # datasets/prepare_nyuv2.py reads the MATLAB v7.3 (HDF5) nyu_depth_v2_labeled.mat
        "tensorboard",
        # tools/export_model.py --format onnx and tools/benchmark.py --model hydranet (measured with
        # these). onnx pulls ml_dtypes, whose 0.6 wants numpy>=2: keep the numpy 1.x build.
        "onnx==1.23.2",
        "onnxruntime==1.32.0",
        "ml_dtypes<0.6",
        # tools/generate_pseudo_labels.py with a Hugging Face SegFormer checkpoint folder as teacher (the
        # SafeTrip-Q seed's mit-b2); imported only for such a teacher. Tested with 5.x on numpy 1.26.
        "transformers",
    ],
    extras_require={"test": ["pytest>=7.3"]},
)
