"""Register any depth (+ semantic / panoptic) dataset from a JSON manifest or from folders.

Other detectron2 projects call :func:`register_depth_panoptic_dataset` to make their own data
usable by every segdep_d2 model, mapper and evaluator.
"""
import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..depth_io import DEPTH_FORMATS
from .metadata import depth_panoptic_metadata

# record keys that hold paths: relative to the manifest in a manifest (pseudo_labels.py writes them so)
MANIFEST_PATH_KEYS = (
    "file_name", "depth_file_name", "camera_file_name", "confidence_file_name", "sem_seg_file_name",
    "pan_seg_file_name",
)
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# the file extension each depth_format is stored with (see depth_io.py)
_FORMAT_EXTENSION = {fmt: ".npy" if fmt == "npy_m" else ".png" for fmt in DEPTH_FORMATS}


def load_depth_manifest(manifest, dataset_id_to_contiguous_id=None):
    """Records from a JSON manifest: a list of detectron2 dicts (or ``{"images": [...]}``).

    Relative paths are resolved against the manifest's folder; ``segments_info`` category ids are
    mapped from dataset ids to contiguous ids when ``dataset_id_to_contiguous_id`` is given.
    """
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"Dataset manifest not found: {manifest}")
    with open(manifest) as f:
        data = json.load(f)
    records = data["images"] if isinstance(data, dict) else data
    if not records:
        raise ValueError(f"{manifest}: the manifest lists no images")
    base = os.path.dirname(os.path.abspath(manifest))
    for i, record in enumerate(records):
        if "file_name" not in record:
            raise ValueError(f"{manifest}: entry {i} has no 'file_name'")
        for key in MANIFEST_PATH_KEYS:
            if key in record and not os.path.isabs(record[key]):
                record[key] = os.path.join(base, record[key])
        if "depth_file_name" in record and record.get("depth_format") not in DEPTH_FORMATS:
            raise ValueError(
                f"{manifest}: entry {i} ({record['file_name']}) has depth_format "
                f"{record.get('depth_format')!r}; expected one of {', '.join(DEPTH_FORMATS)}"
            )
        record.setdefault("image_id", os.path.splitext(os.path.basename(record["file_name"]))[0])
        if dataset_id_to_contiguous_id is not None:
            for seg in record.get("segments_info", []):
                seg["category_id"] = dataset_id_to_contiguous_id[seg["category_id"]]
    return records


def resolve_depth_format(depth_format=None, depth_ext=None):
    """``(depth_format, depth_ext)`` for the folder form, each inferred from the other.

    ``npy_m`` is stored as ``.npy``, every other format as a uint16 ``.png``. Neither given:
    ``("npy_m", ".npy")``; only the format: its extension; only ``.npy``: ``npy_m``. Only
    ``.png`` is ambiguous (four PNG encodings) and a pair that disagrees would hand a file to the
    wrong decoder: both raise ``ValueError``.
    """
    if depth_format is not None and depth_format not in DEPTH_FORMATS:
        raise ValueError(f"depth_format {depth_format!r}; expected one of {', '.join(DEPTH_FORMATS)}")
    if depth_format is None and depth_ext is None:
        return "npy_m", ".npy"
    if depth_ext is None:
        return depth_format, _FORMAT_EXTENSION[depth_format]
    ext = depth_ext.lower()
    if ext not in _FORMAT_EXTENSION.values():
        raise ValueError(
            f"depth_ext {depth_ext!r}; depth files are '.npy' (npy_m) or '.png' (uint16 formats)"
        )
    if depth_format is None:
        if ext == ".npy":
            return "npy_m", depth_ext
        png_formats = [f for f in DEPTH_FORMATS if _FORMAT_EXTENSION[f] == ".png"]
        raise ValueError(
            f"depth_ext {depth_ext!r} is ambiguous: PNG depth is one of {', '.join(png_formats)}; "
            f"pass depth_format= to say which"
        )
    if ext != _FORMAT_EXTENSION[depth_format]:
        raise ValueError(
            f"depth_format {depth_format!r} reads {_FORMAT_EXTENSION[depth_format]} files but "
            f"depth_ext {depth_ext!r} was given; pass a matching pair (or only one of them)"
        )
    return depth_format, depth_ext


def load_depth_folders(image_root, depth_root, depth_format=None, depth_ext=None, sem_seg_root=None):
    """Records pairing every image in ``image_root`` with ``depth_root/<stem><depth_ext>``
    (and ``sem_seg_root/<stem>.png`` when given). Images without a depth file are listed
    without depth (asymmetric datasets are normal). ``depth_format`` / ``depth_ext`` default
    as in :func:`resolve_depth_format`."""
    depth_format, depth_ext = resolve_depth_format(depth_format, depth_ext)
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"Image folder not found: {image_root}")
    records = []
    for name in sorted(os.listdir(image_root)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in _IMAGE_EXTENSIONS:
            continue
        record = {"file_name": os.path.join(image_root, name), "image_id": stem}
        depth_file = os.path.join(depth_root, stem + depth_ext)
        if os.path.isfile(depth_file):
            record.update(depth_file_name=depth_file, depth_format=depth_format)
        if sem_seg_root is not None:
            sem_file = os.path.join(sem_seg_root, stem + ".png")
            if os.path.isfile(sem_file):
                record["sem_seg_file_name"] = sem_file
        records.append(record)
    if not records:
        raise FileNotFoundError(f"No images ({', '.join(_IMAGE_EXTENSIONS)}) in {image_root}")
    return records


def register_depth_panoptic_dataset(
    name,
    *,
    categories,
    manifest=None,
    image_root=None,
    depth_root=None,
    depth_format=None,
    depth_ext=None,
    sem_seg_root=None,
    depth_range=(1e-3, 80.0),
    label_divisor=1000,
    ignore_label=255,
):
    """Register a dataset with depth (and optionally semantic / panoptic labels).

    Args:
        name: the DatasetCatalog name.
        categories: ``[{"id", "name", "isthing", "color"?}]`` (panopticapi style); contiguous
            training ids follow ascending ``id``.
        manifest: a JSON list of detectron2 dicts (``file_name``, ``depth_file_name``,
            ``depth_format``, optional ``camera_file_name``, ``sem_seg_file_name``,
            ``pan_seg_file_name`` + ``segments_info`` with dataset category ids), paths relative
            to the manifest. Either this or ``image_root`` + ``depth_root``.
        image_root, depth_root, depth_format, depth_ext, sem_seg_root: the folder form; files
            pair up by stem. ``depth_format`` and ``depth_ext`` infer each other: neither given
            means ``"npy_m"`` / ``".npy"``; a format alone takes its extension (``.npy`` for
            ``npy_m``, ``.png`` for the uint16 formats); ``".npy"`` alone means ``npy_m``;
            ``".png"`` alone is ambiguous and, like a mismatched pair, raises ``ValueError``
            here, at registration.
        depth_range: valid ground-truth depth (min, max) in metres, for losses and metrics.
    """
    if (manifest is None) == (image_root is None):
        raise ValueError("give either manifest= or image_root= (with depth_root=)")
    meta = depth_panoptic_metadata(
        categories, depth_range=depth_range, label_divisor=label_divisor, ignore_label=ignore_label
    )
    if manifest is not None:
        loader = lambda: load_depth_manifest(manifest, meta["stuff_dataset_id_to_contiguous_id"])  # noqa: E731
    else:
        if depth_root is None:
            raise ValueError("the folder form needs depth_root=")
        depth_format, depth_ext = resolve_depth_format(depth_format, depth_ext)
        loader = lambda: load_depth_folders(image_root, depth_root, depth_format, depth_ext, sem_seg_root)  # noqa: E731
        meta["depth_format"] = depth_format  # the folder's one encoding (manifests name it per record)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**meta)
