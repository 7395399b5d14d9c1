"""Array conversion shared by the metric functions and the evaluators."""
import numpy as np

__all__ = ["to_numpy"]


def to_numpy(x, dtype=None) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device) or a nested sequence."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch in pure-numpy callers
        x = x.detach().cpu().numpy()
    return np.asarray(x) if dtype is None else np.asarray(x).astype(dtype, copy=False)
