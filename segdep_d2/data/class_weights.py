"""Class weights for a weighted cross-entropy, from the pixel frequencies of a dataset's labels.

``datasets/prepare_sidewalk.py`` counts the pixels of every class and writes the weights beside the data
(:func:`write_class_weights`); a config names that file in ``MODEL.HYDRANET.CLASS_WEIGHTS_FILE`` and the
model reads it (:func:`read_class_weights`). The rule is the SafeTrip-Q seed's: the inverse square root of
each class's pixel frequency, normalised to mean 1 over the classes that occur.
"""
import json
import os

import numpy as np

from ..utils.files import json_writer, replace_into

__all__ = [
    "ClassWeightsError",
    "class_frequency_weights",
    "write_class_weights",
    "read_class_weights",
    "dataset_path",
]

RULE = "inverse square root of the pixel frequency, normalised to mean 1 over the classes that occur"


class ClassWeightsError(ValueError):
    """A class-weights file that cannot be used (the message names it)."""


def class_frequency_weights(pixel_counts) -> np.ndarray:
    """(C,) pixel counts -> (C,) float64 weights ``f_c ** -0.5`` with ``f_c = n_c / sum n``, scaled to
    mean 1 over the classes with pixels. A class without pixels gets 0: cross-entropy weights apply
    by the target's class, so its weight is never used."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"expected a 1-D array of non-negative pixel counts, got {counts!r}")
    present = counts > 0
    if not present.any():
        raise ValueError("no class has any labelled pixel: cannot derive class weights")
    weights = np.zeros_like(counts)
    weights[present] = (counts[present] / counts.sum()) ** -0.5
    weights[present] /= weights[present].mean()
    return weights


def write_class_weights(path, classes, pixel_counts, **provenance):
    """Write ``{"classes", "pixel_counts", "frequencies", "weights", "rule", **provenance}`` to ``path``
    (atomically). Returns the weights."""
    counts = np.asarray(pixel_counts, dtype=np.int64)
    if len(classes) != len(counts):
        raise ValueError(f"{len(classes)} class names for {len(counts)} pixel counts")
    weights = class_frequency_weights(counts)
    total = max(int(counts.sum()), 1)
    payload = {
        "classes": list(classes),
        "pixel_counts": counts.tolist(),
        "frequencies": [int(n) / total for n in counts],
        "weights": [round(float(w), 6) for w in weights],
        "rule": RULE,
        **provenance,
    }
    replace_into(path, json_writer(payload, indent=1))
    return weights


def read_class_weights(path, num_classes=None, classes=None):
    """The ``weights`` list of a :func:`write_class_weights` file, checked against ``num_classes`` and
    (when given) the class names it was computed for."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Class-weights file not found: {path} (datasets/prepare_sidewalk.py writes it beside the data)"
        )
    with open(path) as f:
        try:
            payload = json.load(f)
        except json.JSONDecodeError as e:
            raise ClassWeightsError(f"{path}: not valid JSON ({e})") from e
    weights = payload.get("weights") if isinstance(payload, dict) else None
    if not isinstance(weights, list) or not all(isinstance(w, (int, float)) for w in weights):
        raise ClassWeightsError(f"{path}: expected a JSON object with a 'weights' list of numbers")
    if num_classes is not None and len(weights) != num_classes:
        raise ClassWeightsError(f"{path}: {len(weights)} weights for a model with {num_classes} classes")
    if classes is not None and payload.get("classes") not in (None, list(classes)):
        raise ClassWeightsError(f"{path}: computed for classes {payload['classes']}, not {list(classes)}")
    if not all(np.isfinite(weights)) or min(weights) < 0:
        raise ClassWeightsError(f"{path}: weights must be finite and non-negative")
    return [float(w) for w in weights]


def dataset_path(path):
    """A relative path is under ``$DETECTRON2_DATASETS`` (default ``datasets``), as the builtin datasets."""
    if not path or os.path.isabs(path):
        return path
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), path)
