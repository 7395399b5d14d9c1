"""Array conversion shared by the metric functions and the evaluators, and the evaluators' gathering of
per-image results."""
import itertools
import json
import os

import numpy as np

__all__ = ["to_numpy", "gather_results"]


def to_numpy(x, dtype=None) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device) or a nested sequence."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch in pure-numpy callers
        x = x.detach().cpu().numpy()
    return np.asarray(x) if dtype is None else np.asarray(x).astype(dtype, copy=False)


def gather_results(results, distributed, output_dir=None, file_name=None):
    """The per-image (or per-query) result dicts of every process on the main process (``None`` on the others),
    also written to ``output_dir/file_name`` (JSON) when an output folder is given."""
    from detectron2.utils import comm
    from detectron2.utils.file_io import PathManager

    if distributed:
        comm.synchronize()
        results = list(itertools.chain(*comm.gather(results)))
        if not comm.is_main_process():
            return None
    if output_dir:
        PathManager.mkdirs(output_dir)
        with PathManager.open(os.path.join(output_dir, file_name), "w") as f:
            json.dump(results, f)
    return results
