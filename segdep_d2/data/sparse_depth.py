"""The sparse depth *input* of depth completion, one place for the mapper and the evaluator.

A record gives its sparse input in one of three ways:

* a file (``sparse_depth_file_name`` + ``sparse_depth_format``, e.g. KITTI's ``velodyne_raw`` PNGs), read by
  :func:`segdep_d2.data.depth_io.read_sparse_depth`;
* ``sparse_depth_simulation: "lidar64"``: a simulated scan of a 64-beam LiDAR over the record's dense ground truth
  through its ``intrinsics`` (:func:`simulated_lidar_depth`; datasets with dense depth such as Virtual KITTI 2,
  :func:`segdep_d2.data.datasets.register_simulated_lidar`), a property of the frame like a file: the azimuth
  phase is seeded by the image's ``file_name``;
* ``num_samples`` points drawn from the record's dense ground truth (``INPUT.SPARSE_DEPTH.NUM_SAMPLES``; NYUv2
  as Sparse-to-Dense and FastDepth evaluate it: 200 or 500 points uniformly over the valid pixels). In
  training every draw is new; in evaluation the points of an image are fixed (the generator is seeded by the
  image's ``file_name``), so a protocol gives the same input every run, to every model and to the baselines.
"""
import zlib

import numpy as np

from .depth_io import read_depth, read_sparse_depth

__all__ = ["SPARSE_DEPTH_SIMULATIONS", "sample_sparse_depth", "simulated_lidar_depth", "evaluation_rng",
           "sparse_depth_input"]

SPARSE_DEPTH_SIMULATIONS = ("lidar64",)


def sample_sparse_depth(depth: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``num_samples`` pixels drawn without replacement, uniformly over ``depth > 0``, keep their depth;
    every other pixel is 0. All valid pixels are kept when there are fewer than ``num_samples``."""
    depth = np.asarray(depth, dtype=np.float32)
    valid = np.flatnonzero(depth > 0)
    sparse = np.zeros_like(depth)
    if len(valid) <= num_samples:
        chosen = valid
    else:
        chosen = rng.choice(valid, size=int(num_samples), replace=False)
    sparse.flat[chosen] = depth.flat[chosen]
    return sparse


def simulated_lidar_depth(depth: np.ndarray, K, rng: np.random.Generator) -> np.ndarray:
    """A 64-beam LiDAR scan (HDL-64E-like beam elevations and azimuth steps, at the camera centre, a random
    azimuth phase from ``rng``) of a dense depth map seen through the 3x3 ``K``: the depth at the pixels the
    beams hit, 0 elsewhere. The sensor's resolution follows the image size as in the synthetic KITTI depth
    completion writer (about 4-5 % of the pixels, as KITTI's ``velodyne_raw``)."""
    from .synthetic.kitti_completion_writer import HDL64E_ELEVATIONS_DEG, lidar_resolution, lidar_scan_mask

    depth = np.asarray(depth, dtype=np.float32)
    stride, step = lidar_resolution(*depth.shape)
    mask = lidar_scan_mask(depth, K, elevations_deg=HDL64E_ELEVATIONS_DEG[::stride], azimuth_step_deg=step,
                           azimuth_phase=float(rng.random()))
    return np.where(mask, depth, np.float32(0.0)).astype(np.float32)


def evaluation_rng(record) -> np.random.Generator:
    """The fixed generator of an image's evaluation samples: seeded by its ``file_name`` (CRC-32), so it does
    not depend on the order, the process or the machine."""
    return np.random.default_rng(zlib.crc32(str(record["file_name"]).encode("utf-8")))


def sparse_depth_input(record, num_samples: int = 0, rng: np.random.Generator = None) -> np.ndarray:
    """float32 (H, W) metres, 0 = no point, at the record's original size.

    ``num_samples > 0``: drawn from the dense ground truth with ``rng`` (default: :func:`evaluation_rng`, the
    fixed evaluation points); otherwise the record's simulated LiDAR scan (``sparse_depth_simulation``) or its
    ``sparse_depth_file_name``.
    """
    if num_samples and num_samples > 0:
        return sample_sparse_depth(read_depth(record), num_samples, rng or evaluation_rng(record))
    simulation = record.get("sparse_depth_simulation")
    if simulation is not None:
        if simulation not in SPARSE_DEPTH_SIMULATIONS:
            raise ValueError(f"{record.get('file_name')}: sparse_depth_simulation {simulation!r}; expected one of "
                             f"{SPARSE_DEPTH_SIMULATIONS}")
        if "intrinsics" not in record:
            raise KeyError(f"{record.get('file_name')}: a simulated LiDAR scan needs the record's 'intrinsics' (3x3)")
        return simulated_lidar_depth(read_depth(record), record["intrinsics"], evaluation_rng(record))
    if "sparse_depth_file_name" not in record:
        raise KeyError(
            f"{record.get('file_name')}: the record has no 'sparse_depth_file_name' and INPUT.SPARSE_DEPTH.NUM_SAMPLES "
            "is 0; give the dataset's sparse input, or sample it from the dense ground truth (NUM_SAMPLES > 0)"
        )
    return read_sparse_depth(record)
