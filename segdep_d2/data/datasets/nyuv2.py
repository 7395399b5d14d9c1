"""NYU Depth v2 (the 1449 labelled frames), converted once from the official ``.mat`` and registered
as ``nyuv2_train`` (795 frames) / ``nyuv2_test`` (654) with the 40 classes of Gupta et al.

Inputs (the user downloads them; datasets/README.md says from where), by default in
``$DETECTRON2_DATASETS/nyuv2/``:

* ``nyu_depth_v2_labeled.mat``: MATLAB v7.3, i.e. HDF5, read with h5py. MATLAB stores arrays
  column-major and h5py reports them with the axes reversed, so the MATLAB arrays
  ``images`` 480x640x3xN, ``depths`` 480x640xN, ``labels`` 480x640xN arrive as
  ``images`` (N, 3, W, H) uint8, ``depths`` (N, W, H) float metres and ``labels`` (N, W, H) uint16
  (the 894-class ids, 0 = unlabelled). One frame is therefore ``images[i].transpose(2, 1, 0)``
  -> (H, W, 3) RGB and ``depths[i].T`` / ``labels[i].T`` -> (H, W): a plain reshape instead of
  the transpose would give a scrambled, not merely rotated, picture. ``names`` (the 894 class
  names), when present, fixes how long the class mapping must be.
* the 894 -> 40 class mapping (:func:`read_class_mapping`): ``classMapping40.mat`` (``mapClass``,
  894 values 1..40 for the ids 1..894; MATLAB v5 via scipy or v7.3 via h5py), or a ``.npy`` /
  ``.txt`` of 895 integers where index = 894-class id and value = 1..40 (0 = void; index 0, the
  unlabelled id, must hold 0).
* the split (:func:`read_splits`): ``splits.mat`` (``trainNdxs`` / ``testNdxs``, 1-based), a
  ``.json`` ``{"train": [...], "test": [...]}`` or a ``.txt`` of ``<train|test> <index>`` lines,
  indices 1-based as in MATLAB.

:func:`prepare_nyuv2` (CLI: ``python datasets/prepare_nyuv2.py``) writes, per frame ``<stem>`` =
the 1-based index as ``%04d`` (``0001`` .. ``1449``)::

    <output>/                        default $DETECTRON2_DATASETS/nyuv2
      images/<stem>.png              RGB, H x W (480 x 640)
      sem_seg/<stem>.png             uint8 train ids 0..39 (NYU-40 class id - 1), 255 = void
      depth/<stem>.png               uint16 millimetres, 0 = no depth (depth_format "nyu_mm")
      nyuv2_{train,test}.txt         the stems of each split, one a line

Every file is written under a temporary name and renamed, so a final name never holds a
half-written file; a re-run removes leftover temporary files, skips frames whose three PNGs are all
complete and redoes the others (a PNG without its closing IEND chunk, e.g. from an interrupted
copy, counts as missing).
"""
import json
import logging
import multiprocessing
import os
import time

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ...utils.files import png_writer, remove_leftovers, replace_into
from ..depth_io import encode_depth

__all__ = [
    "NYUV2_CLASSES",
    "NYUV2_COLORS",
    "NYUV2_DEPTH_RANGE",
    "NYUV2_SPLITS",
    "NYUv2FormatError",
    "read_class_mapping",
    "read_splits",
    "NYUv2LabeledMat",
    "prepare_nyuv2",
    "nyuv2_frame_paths",
    "load_nyuv2",
    "nyuv2_metadata",
    "register_nyuv2",
    "register_all_nyuv2",
]

logger = logging.getLogger(__name__)

# The 40 classes of Gupta et al. (classMapping40.mat's className, in its order, spelling kept):
# NYU-40 class id k (1..40) is train id k - 1.
NYUV2_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)
# The usual NYU-40 palette (ScanNet's BenchmarkScripts/util.py create_color_palette, ids 1..40).
NYUV2_COLORS = (
    (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34),
    (140, 86, 75), (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189),
    (196, 156, 148), (23, 190, 207), (178, 76, 76), (247, 182, 210), (66, 188, 102),
    (219, 219, 141), (140, 57, 197), (202, 185, 52), (51, 176, 203), (200, 54, 131),
    (92, 193, 61), (78, 71, 183), (172, 114, 82), (255, 127, 14), (91, 163, 138),
    (153, 98, 156), (140, 153, 101), (158, 218, 229), (100, 125, 154), (178, 127, 135),
    (120, 185, 128), (146, 111, 194), (44, 160, 44), (112, 128, 144), (96, 207, 209),
    (227, 119, 194), (213, 92, 176), (94, 106, 211), (82, 84, 163), (100, 85, 144),
)
NYUV2_NUM_CLASSES = len(NYUV2_CLASSES)
NYUV2_IGNORE_LABEL = 255
NYUV2_DEPTH_RANGE = (1e-3, 10.0)  # metres; DESIGN.md §3
NYUV2_SPLITS = ("train", "test")
NYUV2_DEPTH_FORMAT = "nyu_mm"

PREPARE_COMMAND = "python datasets/prepare_nyuv2.py"
MAT_NAME = "nyu_depth_v2_labeled.mat"
MAPPING_NAME = "classMapping40.mat"
SPLITS_NAME = "splits.mat"
_SUBDIRS = ("images", "sem_seg", "depth")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the closing chunk of every PNG


class NYUv2FormatError(ValueError):
    """An NYUv2 input (labelled .mat, class mapping, split) does not hold what it should."""


# ---------------------------------------------------------------------------------------------
# the inputs
# ---------------------------------------------------------------------------------------------


def _load_mat_vars(path, names):
    """``{name: ndarray}`` of plain numeric variables from a MATLAB file of any version: v5 / v7
    through scipy, v7.3 (HDF5) through h5py (whose arrays are transposed; callers ravel)."""
    import scipy.io

    try:
        data = scipy.io.loadmat(path)
        return {n: data[n] for n in names if n in data}
    except NotImplementedError:  # "Please use HDF reader for matlab v7.3 files"
        pass
    except ValueError as e:
        raise NYUv2FormatError(f"{path}: not a readable MATLAB file ({e})") from e
    import h5py

    with h5py.File(path, "r") as f:
        return {
            n: np.asarray(f[n]) for n in names
            if n in f and isinstance(f[n], h5py.Dataset) and f[n].dtype.kind in "iuf"
        }


def _as_int_vector(values, path, what):
    array = np.asarray(values)
    if array.dtype.kind not in "iuf" or array.size == 0:
        raise NYUv2FormatError(f"{path}: {what} must be a non-empty list of integers, got dtype {array.dtype}")
    array = array.ravel()
    as_int = np.rint(array).astype(np.int64)
    if not np.array_equal(as_int, array):
        raise NYUv2FormatError(f"{path}: {what} holds non-integer values")
    return as_int


def read_class_mapping(path):
    """The 894 -> 40 class mapping as a lookup table: ``table[id_894]`` = train id (0..39) or 255.

    Formats: ``.mat`` with ``mapClass`` (one value 1..40 per class id 1..K, as
    ``classMapping40.mat`` of Gupta et al.; 0 = void also accepted); ``.npy`` / ``.txt`` (whitespace
    separated, ``#`` comments) of K + 1 integers, index = class id, value = NYU-40 class 1..40 or 0
    = void, where index 0 (unlabelled) must be 0. Returns uint8 of length K + 1, ``table[0] == 255``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"NYUv2 class mapping not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".mat":
        found = _load_mat_vars(path, ("mapClass",))
        if "mapClass" not in found:
            raise NYUv2FormatError(f"{path}: no 'mapClass' variable (expected classMapping40.mat of Gupta et al.)")
        per_id = _as_int_vector(found["mapClass"], path, "mapClass")
        values = np.concatenate([[0], per_id])  # ids are 1-based in mapClass
        _check_class_names(path)
    elif ext in (".npy", ".txt"):
        try:
            raw = np.load(path, allow_pickle=False) if ext == ".npy" else np.loadtxt(path, dtype=np.float64, ndmin=1)
        except ValueError as e:
            raise NYUv2FormatError(f"{path}: cannot be read as a list of integers ({e})") from e
        values = _as_int_vector(raw, path, "the class mapping")
        if values[0] != 0:
            hint = (
                " It has 894 entries: if it lists the classes of ids 1..894 (as mapClass does), put a 0 in front."
                if values.size == 894 else ""
            )
            raise NYUv2FormatError(
                f"{path}: entry 0 (the unlabelled id) maps to {values[0]}; a .npy / .txt mapping has one entry "
                f"per 894-class id starting at id 0 (index = id, value = NYU-40 class 1..40, 0 = void), so "
                f"entry 0 must be 0.{hint}"
            )
    else:
        raise NYUv2FormatError(f"{path}: unknown class mapping format {ext!r}; expected .mat, .npy or .txt")
    if values.min() < 0 or values.max() > NYUV2_NUM_CLASSES:
        raise NYUv2FormatError(
            f"{path}: values range from {values.min()} to {values.max()}; expected NYU-40 classes "
            f"1..{NYUV2_NUM_CLASSES} and 0 for void"
        )
    return np.where(values == 0, NYUV2_IGNORE_LABEL, values - 1).astype(np.uint8)


def _check_class_names(path):
    """Warn when a v5 ``classMapping40.mat`` names its classes differently from NYUV2_CLASSES."""
    import scipy.io

    try:
        names = scipy.io.loadmat(path).get("className")
    except (NotImplementedError, ValueError):
        return
    if names is None:
        return
    names = [str(np.asarray(n).ravel()[0]) if np.asarray(n).size else "" for n in np.asarray(names).ravel()]
    if [n.strip().lower() for n in names] != list(NYUV2_CLASSES):
        logger.warning(
            f"{path}: className {names} differs from segdep_d2's NYU-40 names {list(NYUV2_CLASSES)}; "
            "classes are taken by number (mapClass value k -> train id k - 1)"
        )


def read_splits(path):
    """``{"train": [...], "test": [...]}`` of 1-based frame indices into the labelled ``.mat``.

    Formats: ``splits.mat`` (``trainNdxs`` / ``testNdxs``), ``.json`` (``{"train": [...],
    "test": [...]}``) or ``.txt`` (lines ``train 5`` / ``test 1``; ``#`` starts a comment).
    Duplicates and frames in both splits are refused.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"NYUv2 split file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".mat":
        found = _load_mat_vars(path, ("trainNdxs", "testNdxs"))
        missing = [n for n in ("trainNdxs", "testNdxs") if n not in found]
        if missing:
            raise NYUv2FormatError(f"{path}: no {' / '.join(missing)} (expected the official splits.mat)")
        raw = {"train": found["trainNdxs"], "test": found["testNdxs"]}
    elif ext == ".json":
        with open(path) as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise NYUv2FormatError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(raw, dict):
            raise NYUv2FormatError(f'{path}: expected {{"train": [...], "test": [...]}}')
    elif ext == ".txt":
        raw = {}
        with open(path) as f:
            for number, line in enumerate(f, 1):
                fields = line.split("#", 1)[0].split()
                if not fields:
                    continue
                if len(fields) != 2 or not fields[1].isdigit():
                    raise NYUv2FormatError(f"{path}:{number}: expected '<train|test> <1-based index>', got {line.strip()!r}")
                raw.setdefault(fields[0], []).append(int(fields[1]))
    else:
        raise NYUv2FormatError(f"{path}: unknown split format {ext!r}; expected .mat, .json or .txt")
    unknown = sorted(set(raw) - set(NYUV2_SPLITS))
    if unknown:
        raise NYUv2FormatError(f"{path}: unknown split names {unknown}; expected {list(NYUV2_SPLITS)}")
    splits = {}
    for split in NYUV2_SPLITS:
        if split not in raw:
            raise NYUv2FormatError(f"{path}: no {split!r} split")
        indices = _as_int_vector(raw[split], path, f"the {split} split")
        if indices.min() < 1:
            raise NYUv2FormatError(f"{path}: {split} index {indices.min()}; indices are 1-based (MATLAB)")
        if np.unique(indices).size != indices.size:
            raise NYUv2FormatError(f"{path}: the {split} split lists a frame twice")
        splits[split] = [int(i) for i in indices]
    both = sorted(set(splits["train"]) & set(splits["test"]))
    if both:
        raise NYUv2FormatError(f"{path}: {len(both)} frames are in both train and test (first: {both[0]})")
    return splits


class NYUv2LabeledMat:
    """Read access to ``nyu_depth_v2_labeled.mat`` (HDF5) one frame at a time, in (H, W) order.

    Use as a context manager; :meth:`frame` takes the 1-based index MATLAB and ``splits.mat`` use.
    """

    def __init__(self, path):
        import h5py

        if not os.path.isfile(path):
            raise FileNotFoundError(f"NYUv2 labelled .mat not found: {path}")
        try:
            self._file = h5py.File(path, "r")
        except OSError as e:
            raise NYUv2FormatError(
                f"{path}: not an HDF5 file ({e}); the official nyu_depth_v2_labeled.mat is MATLAB v7.3 (HDF5)"
            ) from e
        try:
            self._validate(path)
        except Exception:
            self._file.close()
            raise
        self.path = path

    def _validate(self, path):
        f = self._file
        missing = [n for n in ("images", "depths", "labels") if n not in f]
        if missing:
            raise NYUv2FormatError(f"{path}: no {', '.join(missing)} dataset(s); expected nyu_depth_v2_labeled.mat")
        self.images, self.depths, self.labels = f["images"], f["depths"], f["labels"]
        shape = self.images.shape
        if self.images.ndim != 4 or shape[1] != 3 or self.images.dtype != np.uint8:
            raise NYUv2FormatError(
                f"{path}: images is {shape} {self.images.dtype}; expected (N, 3, W, H) uint8 "
                "(MATLAB's H x W x 3 x N as h5py reports it)"
            )
        self.num_frames, self.width, self.height = shape[0], shape[2], shape[3]
        for name, ds in (("depths", self.depths), ("labels", self.labels)):
            if ds.shape != (self.num_frames, self.width, self.height):
                raise NYUv2FormatError(
                    f"{path}: {name} is {ds.shape}, images {shape}; expected ({self.num_frames}, {self.width}, "
                    f"{self.height}) (N, W, H)"
                )
        if self.depths.dtype.kind != "f":
            raise NYUv2FormatError(f"{path}: depths has dtype {self.depths.dtype}; expected floating-point metres")
        if self.labels.dtype.kind not in "iu":
            raise NYUv2FormatError(f"{path}: labels has dtype {self.labels.dtype}; expected integer class ids")
        # MATLAB's ``names`` (a 1 x K cell of the class names): how many class ids exist
        self.num_names = int(np.prod(f["names"].shape)) if "names" in f else None

    def frame(self, index):
        """``(rgb (H, W, 3) uint8, depth (H, W) float64 metres, labels (H, W) int64 894-class ids)``."""
        if not 1 <= index <= self.num_frames:
            raise IndexError(f"{self.path}: frame {index} out of 1..{self.num_frames}")
        i = index - 1
        rgb = np.ascontiguousarray(np.asarray(self.images[i]).transpose(2, 1, 0))  # (3, W, H) -> (H, W, 3)
        depth = np.ascontiguousarray(np.asarray(self.depths[i], dtype=np.float64).T)  # (W, H) -> (H, W)
        labels = np.ascontiguousarray(np.asarray(self.labels[i]).astype(np.int64).T)
        return rgb, depth, labels

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def depth_to_mm(depth_m):
    """Metres -> uint16 millimetres (``nyu_mm``), rounded; non-finite or non-positive -> 0 (no depth)."""
    depth_m = np.asarray(depth_m, dtype=np.float64)
    valid = np.isfinite(depth_m) & (depth_m > 0)
    return encode_depth(np.where(valid, depth_m, 0.0), "nyu_mm")


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def frame_stem(index):
    """The file stem of a 1-based frame index: ``0001``."""
    return f"{index:04d}"


def nyuv2_frame_paths(root, stem):
    """The prepared files of one frame: ``image``, ``sem_seg``, ``depth``."""
    return {
        "image": os.path.join(root, "images", stem + ".png"),
        "sem_seg": os.path.join(root, "sem_seg", stem + ".png"),
        "depth": os.path.join(root, "depth", stem + ".png"),
    }


def split_list_path(root, split):
    return os.path.join(root, f"nyuv2_{split}.txt")


def _complete_png(path):
    """The file exists and ends with PNG's IEND chunk (a truncated copy does not)."""
    try:
        size = os.path.getsize(path)
        if size < len(_PNG_END):
            return False
        with open(path, "rb") as f:
            f.seek(size - len(_PNG_END))
            return f.read() == _PNG_END
    except OSError:
        return False


def apply_class_mapping(labels, table):
    """894-class ids (any integer array) -> train ids through ``table`` (see :func:`read_class_mapping`)."""
    outside = (labels < 0) | (labels >= table.size)
    if outside.any():
        raise NYUv2FormatError(
            f"label id {int(labels[outside].flat[0])} is outside the class mapping (ids 0..{table.size - 1})"
        )
    return table[labels]


_WORKER = {}


def _init_worker(mat_path, table, output, overwrite):
    _close_worker()
    _WORKER.update(mat=NYUv2LabeledMat(mat_path), table=table, output=output, overwrite=overwrite)


def _close_worker():
    if "mat" in _WORKER:
        _WORKER["mat"].close()
    _WORKER.clear()


def _convert_frame(index):
    """Write one frame's missing outputs. Returns (stem, "converted" | "skipped")."""
    stem = frame_stem(index)
    paths = nyuv2_frame_paths(_WORKER["output"], stem)
    if not _WORKER["overwrite"] and all(_complete_png(p) for p in paths.values()):
        return stem, "skipped"
    mat = _WORKER["mat"]
    try:
        rgb, depth, labels = mat.frame(index)
        train_ids = apply_class_mapping(labels, _WORKER["table"])
        replace_into(paths["sem_seg"], png_writer(train_ids, compress_level=3))
        replace_into(paths["depth"], _uint16_png_writer(depth_to_mm(depth)))
        replace_into(paths["image"], png_writer(rgb, compress_level=3))
    except Exception as e:
        raise RuntimeError(f"NYUv2 frame {index} of {mat.path}: {type(e).__name__}: {e}") from e
    return stem, "converted"


def _uint16_png_writer(array):
    # png_writer is for uint8 labels and RGB; depth millimetres need 16 bits
    array = np.ascontiguousarray(array, dtype=np.uint16)
    return lambda tmp: Image.fromarray(array).save(tmp, format="PNG", compress_level=3)


def _remove_leftovers(output):
    return remove_leftovers([output] + [os.path.join(output, d) for d in _SUBDIRS])


def default_root(datasets_root=None):
    if datasets_root is None:
        datasets_root = os.getenv("DETECTRON2_DATASETS", "datasets")
    return os.path.join(datasets_root, "nyuv2")


def prepare_nyuv2(mat, mapping, splits, output, *, workers=1, overwrite=False, progress=True):
    """Convert the frames of ``splits`` from the labelled ``.mat`` into ``output`` (module docstring).

    Args:
        mat: ``nyu_depth_v2_labeled.mat``.
        mapping: the 894 -> 40 class mapping (:func:`read_class_mapping`).
        splits: the train / test split (:func:`read_splits`).
        output: the folder the builtin names read (``$DETECTRON2_DATASETS/nyuv2``).
        workers: > 1 converts frames in a process pool (each process opens the .mat itself).
        overwrite: redo frames that are already complete.

    Returns a summary dict: ``output``, ``frames``, ``converted``, ``skipped``, ``splits``
    (split -> (list file, frames)), ``seconds``.
    """
    start = time.perf_counter()
    output = os.path.abspath(output)
    with NYUv2LabeledMat(mat) as labelled:  # validated, then closed before any worker forks
        num_frames, num_names = labelled.num_frames, labelled.num_names
    table = read_class_mapping(mapping)
    split_indices = read_splits(splits)
    if num_names is not None and table.size != num_names + 1:
        raise NYUv2FormatError(
            f"{mapping}: maps {table.size - 1} class ids but {mat} names {num_names} classes"
        )
    for split, indices in split_indices.items():
        if max(indices) > num_frames:
            raise NYUv2FormatError(f"{splits}: {split} index {max(indices)} but {mat} holds {num_frames} frames")
    indices = sorted(set(split_indices["train"]) | set(split_indices["test"]))
    for sub in _SUBDIRS:
        os.makedirs(os.path.join(output, sub), exist_ok=True)
    leftovers = _remove_leftovers(output)
    if leftovers:
        logger.info(f"removed {leftovers} unfinished temporary files under {output}")

    counts = {"converted": 0, "skipped": 0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc="NYUv2 .mat -> PNG images / labels / depth", unit="frame")
    init_args = (mat, table, output, overwrite)
    try:
        if workers > 1:
            with multiprocessing.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
                for _, outcome in pool.imap_unordered(_convert_frame, indices, chunksize=4):
                    counts[outcome] += 1
                    if bar is not None:
                        bar.update()
        else:
            _init_worker(*init_args)
            try:
                for index in indices:
                    counts[_convert_frame(index)[1]] += 1
                    if bar is not None:
                        bar.update()
            finally:
                _close_worker()
    finally:
        if bar is not None:
            bar.close()

    written = {}
    for split in NYUV2_SPLITS:  # last: the lists name only frames that are complete
        path = split_list_path(output, split)
        stems = [frame_stem(i) for i in split_indices[split]]
        replace_into(path, _write_lines(stems))
        written[split] = (path, len(stems))
    return {"output": output, "frames": len(indices), **counts, "splits": written, "seconds": time.perf_counter() - start}


def _write_lines(lines):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in lines))

    return write


# ---------------------------------------------------------------------------------------------
# reading: the builtin names
# ---------------------------------------------------------------------------------------------


def _not_prepared(root, detail):
    if os.path.abspath(root) == os.path.abspath(default_root()):
        how = f"`{PREPARE_COMMAND}` (with $DETECTRON2_DATASETS set to the folder holding nyuv2/)"
    else:
        how = f"`{PREPARE_COMMAND} --output {root}` (see --help for the inputs)"
    return FileNotFoundError(
        f"NYU Depth v2 is not prepared under {root}: {detail}. The names nyuv2_train / nyuv2_test read PNG "
        f"images, label and depth files converted once from nyu_depth_v2_labeled.mat: run {how}; it reads "
        f"{MAT_NAME}, {MAPPING_NAME} and {SPLITS_NAME} from {root} by default (a re-run converts only what "
        "is missing)"
    )


def load_nyuv2(root, split):
    """Records of one split of a prepared NYUv2 root: ``file_name``, ``image_id`` (the stem),
    ``height``, ``width``, ``sem_seg_file_name`` (uint8 train ids, 255 void), ``depth_file_name``
    and ``depth_format`` ``"nyu_mm"``."""
    if split not in NYUV2_SPLITS:
        raise ValueError(f"NYUv2 split {split!r}; expected one of {NYUV2_SPLITS}")
    list_file = split_list_path(root, split)
    if not os.path.isfile(list_file):
        raise _not_prepared(root, f"{list_file} does not exist")
    with open(list_file) as f:
        stems = [line.strip() for line in f if line.strip()]
    if not stems:
        raise _not_prepared(root, f"{list_file} lists no frames")
    listings = {
        sub: set(os.listdir(os.path.join(root, sub))) if os.path.isdir(os.path.join(root, sub)) else set()
        for sub in _SUBDIRS
    }
    keys = {"image": "images", "sem_seg": "sem_seg", "depth": "depth"}
    missing = [
        path for stem in stems for key, path in nyuv2_frame_paths(root, stem).items()
        if os.path.basename(path) not in listings[keys[key]]
    ]
    if missing:
        raise _not_prepared(root, f"{len(missing)} files of the {split} split are missing (first: {missing[0]})")
    # every frame comes from one array of the .mat: one size for all
    with Image.open(nyuv2_frame_paths(root, stems[0])["image"]) as im:
        width, height = im.size
    records = []
    for stem in stems:
        paths = nyuv2_frame_paths(root, stem)
        records.append(
            {
                "file_name": paths["image"],
                "image_id": stem,
                "height": height,
                "width": width,
                "sem_seg_file_name": paths["sem_seg"],
                "depth_file_name": paths["depth"],
                "depth_format": NYUV2_DEPTH_FORMAT,
            }
        )
    return records


def nyuv2_metadata():
    """detectron2 semantic-segmentation metadata (``stuff_classes`` / ``stuff_colors``,
    ``ignore_label``, ``evaluator_type "sem_seg"``; no thing classes, as there are no instance
    labels) plus ``depth_range`` and the ``eval_crop`` hint ``"nyu"`` (set ``TEST.DEPTH.CROP:
    "nyu"`` to apply it)."""
    return dict(
        stuff_classes=list(NYUV2_CLASSES),
        stuff_colors=[list(c) for c in NYUV2_COLORS],
        stuff_dataset_id_to_contiguous_id={k + 1: k for k in range(NYUV2_NUM_CLASSES)},  # NYU-40 id -> train id
        thing_dataset_id_to_contiguous_id={},  # semantic labels only: no instances, so no things
        ignore_label=NYUV2_IGNORE_LABEL,
        depth_range=NYUV2_DEPTH_RANGE,
        classes_without_depth=[],
        depth_format="nyu_mm",
        evaluator_type="sem_seg",
        eval_crop="nyu",
    )


def register_nyuv2(name, root, split):
    """Register one split of a prepared NYUv2 root under ``name`` (lazy: nothing is read here)."""
    DatasetCatalog.register(name, lambda: load_nyuv2(root, split))
    MetadataCatalog.get(name).set(
        dataset_root=root,
        image_root=os.path.join(root, "images"),
        sem_seg_root=os.path.join(root, "sem_seg"),
        split=split,
        **nyuv2_metadata(),
    )


def register_all_nyuv2(datasets_root):
    """``nyuv2_train`` and ``nyuv2_test`` from ``<datasets_root>/nyuv2`` (prepared by
    ``datasets/prepare_nyuv2.py``)."""
    root = os.path.join(datasets_root, "nyuv2")
    for split in NYUV2_SPLITS:
        register_nyuv2(f"nyuv2_{split}", root, split)
