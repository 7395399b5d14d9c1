"""Class-name vocabularies for open-vocabulary segmentation, and the held-out-names protocol.

A *vocabulary* is the list of names an open-vocabulary model is queried with, in the dataset's
class order: name ``i`` stands for contiguous class ``i``, so channel ``i`` of the model's scores
for that vocabulary is class ``i``'s score and the argmax is directly a class id.

* ``"seen"``: the training class names, verbatim (what the text encoder saw in training).
* ``"synonyms"``: the primary synonym of every class, from ``synonyms.json`` next to this file
  (data, not code: "automobile" for car, "lorry" for truck, "roadway" for road, ...).

The held-out protocol trains without some class names and evaluates them zero-shot:
:func:`held_out_split` gives the names the open-vocabulary head trains with and
:func:`held_out_label_map` the matching remap of the training labels.
"""
import copy
import json
import re
from functools import lru_cache
from importlib import resources
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "VOCABULARY_KINDS",
    "canonical_name",
    "load_synonyms",
    "synonyms_of",
    "vocabulary",
    "held_out_split",
    "held_out_label_map",
]

VOCABULARY_KINDS = ("seen", "synonyms")
_SYNONYMS_FILE = "synonyms.json"


def canonical_name(name: str) -> str:
    """The form class names take in ``synonyms.json``: lower case, words separated by single
    spaces. ``"TrafficLight"`` and ``"traffic_light"`` both become ``"traffic light"``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", str(name))
    return " ".join(w for w in re.split(r"[\s_\-/]+", words.strip()) if w).lower()


@lru_cache(maxsize=1)
def _load_synonyms_file() -> Dict[str, List[str]]:
    text = resources.files(__name__).joinpath(_SYNONYMS_FILE).read_text(encoding="utf-8")
    table = json.loads(text)["synonyms"]
    synonyms = {}
    for name, names in table.items():
        key = canonical_name(name)
        if isinstance(names, str):
            names = [names]
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"{_SYNONYMS_FILE}: {name!r} needs a non-empty list of synonyms")
        if key in synonyms:
            raise ValueError(f"{_SYNONYMS_FILE}: {name!r} is listed twice (as {key!r})")
        synonyms[key] = list(names)
    return synonyms


def load_synonyms() -> Dict[str, List[str]]:
    """``{canonical class name: [primary synonym, alternates...]}`` from the package's
    ``synonyms.json`` (a fresh copy: callers may modify it)."""
    return copy.deepcopy(_load_synonyms_file())


def synonyms_of(name: str, synonyms: Optional[Mapping[str, Sequence[str]]] = None) -> List[str]:
    """Every synonym of a class name (primary first); ``name`` may be in any case convention."""
    table = _load_synonyms_file() if synonyms is None else {canonical_name(k): v for k, v in synonyms.items()}
    key = canonical_name(name)
    if key not in table:
        raise KeyError(
            f"No synonym for class {name!r} (looked up as {key!r}): add it to "
            f"segdep_d2/data/vocabularies/{_SYNONYMS_FILE} or pass synonyms="
        )
    names = table[key]
    return [names] if isinstance(names, str) else list(names)


def vocabulary(
    class_names: Sequence[str],
    kind: str = "seen",
    *,
    synonyms: Optional[Mapping[str, Sequence[str]]] = None,
) -> List[str]:
    """The names to query for ``class_names``, in the same order (query ``i`` ↔ class ``i``).

    Args:
        class_names: the dataset's classes in contiguous-id order (metadata ``stuff_classes``).
        kind: ``"seen"`` (the names themselves in words, :func:`canonical_name`: "TrafficLight"
            -> "traffic light", as SegDep prompts its text encoder with them in training) or
            ``"synonyms"`` (each class's primary synonym).
        synonyms: a ``{class name: [synonyms]}`` table to use instead of ``synonyms.json``.
    """
    if kind not in VOCABULARY_KINDS:
        raise ValueError(f"Unknown vocabulary kind {kind!r}; expected one of {VOCABULARY_KINDS}")
    if kind == "seen":
        return [canonical_name(name) for name in class_names]
    return [synonyms_of(name, synonyms)[0] for name in class_names]


def held_out_split(
    class_names: Sequence[str], held_out: Sequence[Union[str, int]]
) -> Tuple[List[str], List[int]]:
    """The held-out-names protocol: train the open-vocabulary head without some class names,
    then query them zero-shot at evaluation (``OpenVocabEvaluator(held_out_classes=...)``).

    Args:
        class_names: all classes, in contiguous-id order.
        held_out: class names (any case convention) or contiguous ids to hold out.

    Returns:
        ``(training_names, held_out_indices)``: the class names with the held-out ones removed
        (order kept; the training side embeds only these), and the sorted contiguous ids of the
        held-out classes. Training labels must be remapped to index ``training_names`` and the
        held-out classes' pixels ignored: :func:`held_out_label_map` gives that lookup table.
    """
    lookup = {canonical_name(n): i for i, n in enumerate(class_names)}
    indices = set()
    for item in held_out:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= int(item) < len(class_names):
                raise ValueError(f"Held-out class id {item} is outside [0, {len(class_names)})")
            indices.add(int(item))
        elif canonical_name(item) in lookup:
            indices.add(lookup[canonical_name(item)])
        else:
            raise ValueError(f"Held-out class {item!r} is not one of {list(class_names)}")
    if not indices:
        raise ValueError("held_out is empty: name at least one class to hold out")
    if len(indices) == len(class_names):
        raise ValueError("Every class is held out: nothing would be left to train on")
    held_out_indices = sorted(indices)
    training_names = [n for i, n in enumerate(class_names) if i not in indices]
    return training_names, held_out_indices


def held_out_label_map(num_classes: int, held_out_indices: Sequence[int], ignore_label: int = 255) -> np.ndarray:
    """A lookup table ``lut`` (int64) such that ``lut[labels]`` turns contiguous class ids into
    indices of :func:`held_out_split`'s ``training_names``, with the held-out classes (and the
    ignore label itself) mapped to ``ignore_label``. Covers every value up to ``ignore_label``
    (which must exceed every class id), so uint8 label maps with ignore 255 index it directly."""
    held = set(int(i) for i in held_out_indices)
    if any(not 0 <= i < num_classes for i in held):
        raise ValueError(f"Held-out ids {sorted(held)} must lie in [0, {num_classes})")
    if ignore_label < num_classes:
        raise ValueError(f"ignore_label {ignore_label} must not be a class id (num_classes={num_classes})")
    lut = np.full(ignore_label + 1, ignore_label, dtype=np.int64)
    kept = [i for i in range(num_classes) if i not in held]
    lut[kept] = np.arange(len(kept))
    return lut
