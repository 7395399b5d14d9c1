"""CVAT for-images 1.1 XML: one reader, one rasteriser, detectron2 records and registration.

A CVAT "for images" export is one XML for a whole task (hundreds of images)::

    <annotations>
      <version>1.1</version>
      <meta>...labels and their attributes...</meta>
      <image id="0" name="a.jpg" width="1920" height="1080">
        <polygon label="sidewalk" occluded="0" points="x,y;x,y;..." z_order="6">
          <attribute name="attribute">blocks</attribute>
        </polygon>
        <box label="car" occluded="1" xtl="..." ytl="..." xbr="..." ybr="..." z_order="0"/>
        <polyline .../>  <points .../>      (read, never drawn)
      </image>
      ...
    </annotations>

:func:`read_cvat` parses it once per (path, modification time) and returns the images by name.
:func:`rasterize_cvat` draws one image's polygons into a uint8 label map: in ascending ``z_order``,
ties in document order, a later polygon over an earlier one; pixels no drawn polygon covers are
``ignore_label``; polygons whose label is not in ``label_to_id`` are not drawn at all (whatever lies
beneath them stays). ``attribute_to_id`` ``{(label, value): id}`` takes precedence for a polygon
whose attribute named ``"attribute"`` (:data:`CVAT_ATTRIBUTE_NAME`, the name the AI Hub sidewalk
release gives its one radio attribute) has that value; ``(label, None)`` matches polygons without
that attribute. Other attributes are read (``CvatShape.attributes``) but never select a class.

The fill is OpenCV's ``cv2.fillPoly`` (8-connected edges) on the vertices floored to integer
pixels. Among the fills tried (PIL ``ImageDraw.polygon``, pycocotools ``frPyObjects``,
``cv2.fillPoly`` on rounded or sub-pixel vertices) it is the one that reproduces the released
sidewalk colour masks: 100 % of the pixels of ``Sidewalk_19009_surface_mask_000001_2.png`` and
99.999 % (20 pixels on one diagonal edge) of ``..._000002_2.png`` (PIL: 99.990 % / 99.958 %).

Records (:func:`load_cvat_dataset`) of an XML with polygons share ``sem_seg_file_name`` = the XML
and carry ``label_format "cvat"``, ``cvat_image_name``, ``cvat_label_to_id`` (and
``cvat_attribute_to_id``), which :func:`segdep_d2.data.label_io.read_sem_seg` hands back to
:func:`rasterize_cvat`. Boxes become detectron2 ``annotations`` (``XYXY_ABS``).
"""
import os
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, Optional, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

__all__ = [
    "CVAT_ATTRIBUTE_NAME",
    "CvatFormatError",
    "CvatShape",
    "CvatImage",
    "read_cvat",
    "rasterize_cvat",
    "load_cvat_dataset",
    "cvat_metadata",
    "register_cvat_dataset",
]


CVAT_ATTRIBUTE_NAME = "attribute"  # the attribute whose value attribute_to_id is keyed by
SHAPE_KINDS = ("polygon", "box", "polyline", "points")


class CvatFormatError(ValueError):
    """A CVAT XML is malformed or does not hold what was asked of it."""


@dataclass(frozen=True, eq=False)
class CvatShape:
    """One annotation of an image.

    ``points`` is a read-only float64 (N, 2) array of (x, y) pixel coordinates; for a box it is
    ``[[xtl, ytl], [xbr, ybr]]``. ``attributes`` maps ``<attribute name>`` to its text.
    """

    kind: str
    label: str
    points: np.ndarray
    z_order: int = 0
    occluded: bool = False
    attributes: Dict[str, str] = field(default_factory=dict)

    @property
    def attribute(self) -> Optional[str]:
        """The value of the attribute named :data:`CVAT_ATTRIBUTE_NAME`, None without one."""
        return self.attributes.get(CVAT_ATTRIBUTE_NAME)


@dataclass(frozen=True, eq=False)
class CvatImage:
    """One ``<image>``: ``shapes`` in document order."""

    name: str
    id: int
    width: int
    height: int
    shapes: Tuple[CvatShape, ...] = ()

    def of_kind(self, kind):
        return tuple(s for s in self.shapes if s.kind == kind)


def _points(text, where):
    try:
        points = np.array(
            [[float(v) for v in xy.split(",")] for xy in text.strip().split(";") if xy.strip()], dtype=np.float64
        )
    except ValueError:
        points = None
    if points is None or points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise CvatFormatError(f"{where}: points={text!r} is not 'x,y;x,y;...'")
    return points


def _number(element, key, where, kind=float):
    value = element.get(key)
    if value is None:
        raise CvatFormatError(f"{where}: no {key!r} attribute")
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        raise CvatFormatError(f"{where}: {key}={value!r} is not a number") from None


def _shape(element, where):
    kind = element.tag
    label = element.get("label")
    if label is None:
        raise CvatFormatError(f"{where}: <{kind}> without a label")
    if kind == "box":
        points = np.array([[_number(element, k, where) for k in pair] for pair in (("xtl", "ytl"), ("xbr", "ybr"))])
    else:
        points = _points(element.get("points", ""), where)
    points.flags.writeable = False
    attributes = {a.get("name", ""): (a.text or "").strip() for a in element.findall("attribute")}
    return CvatShape(
        kind=kind,
        label=label,
        points=points,
        z_order=int(element.get("z_order", 0) or 0),
        occluded=element.get("occluded", "0").strip() in ("1", "true", "True"),
        attributes=attributes,
    )


@lru_cache(maxsize=32)
def _parse(path, mtime_ns, size):  # mtime_ns / size: a rewritten file is parsed again
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise CvatFormatError(f"{path}: not well-formed XML ({e})") from None
    if root.tag != "annotations":
        raise CvatFormatError(f"{path}: the root element is <{root.tag}>, a CVAT XML has <annotations>")
    images = OrderedDict()
    for number, image in enumerate(root.findall("image")):
        where = f"{path}: <image> #{number} (name={image.get('name')!r})"
        name = image.get("name")
        if not name:
            raise CvatFormatError(f"{where}: no name")
        if name in images:
            raise CvatFormatError(f"{path}: image {name!r} is listed twice")
        shapes = tuple(
            _shape(child, f"{where}, <{child.tag}> #{i}")
            for i, child in enumerate(image)
            if child.tag in SHAPE_KINDS
        )
        images[name] = CvatImage(
            name=name,
            id=_number(image, "id", where, int),
            width=_number(image, "width", where, int),
            height=_number(image, "height", where, int),
            shapes=shapes,
        )
    if not images and root.find("track") is not None:
        raise CvatFormatError(
            f"{path}: holds <track> elements (a CVAT for-video export); export as CVAT for images 1.1"
        )
    return images


def _read(xml_path):
    path = os.path.abspath(os.fspath(xml_path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CVAT XML not found: {path}")
    stat = os.stat(path)
    return _parse(path, stat.st_mtime_ns, stat.st_size)


def read_cvat(xml_path) -> "OrderedDict[str, CvatImage]":
    """``{image name: CvatImage}`` in document order. The parse is cached per (path, mtime, size);
    the images and shapes are shared between calls: do not modify them."""
    return OrderedDict(_read(xml_path))


def _image(xml_path, image_name):
    images = _read(xml_path)
    if image_name not in images:
        examples = ", ".join(repr(n) for n in list(images)[:3])
        raise CvatFormatError(
            f"{os.path.abspath(xml_path)}: no <image name={image_name!r}> (the XML has {len(images)} images"
            + (f", e.g. {examples})" if images else ")")
        )
    return images[image_name]


def _check_ids(mapping, what):
    for key, value in mapping.items():
        if not (isinstance(value, (int, np.integer)) and 0 <= int(value) <= 255):
            raise ValueError(f"{what}[{key!r}] = {value!r}: label ids must be integers in 0..255")


def _polygon_id(shape, label_to_id, attribute_to_id):
    if attribute_to_id:
        value = attribute_to_id.get((shape.label, shape.attribute))
        if value is not None:
            return value
    return label_to_id.get(shape.label)


def rasterize_cvat(xml_path, image_name, label_to_id, ignore_label=255, attribute_to_id=None) -> np.ndarray:
    """uint8 H x W label map of one image's polygons (H, W from the XML); see the module docstring
    for the drawing order, ``attribute_to_id`` and the fill. Boxes, polylines and points are not drawn."""
    _check_ids(label_to_id, "label_to_id")
    if attribute_to_id:
        _check_ids(attribute_to_id, "attribute_to_id")
    image = _image(xml_path, image_name)
    labels = np.full((image.height, image.width), ignore_label, dtype=np.uint8)
    polygons = sorted(enumerate(image.of_kind("polygon")), key=lambda item: (item[1].z_order, item[0]))
    for _, shape in polygons:
        value = _polygon_id(shape, label_to_id, attribute_to_id)
        if value is None:
            continue
        vertices = np.floor(shape.points).astype(np.int32)  # the fill the released masks were drawn with
        cv2.fillPoly(labels, [vertices], int(value), lineType=cv2.LINE_8)
    return labels


def _box_annotations(image, label_to_id):
    annotations = []
    for shape in image.of_kind("box"):
        if shape.label not in label_to_id:
            continue
        (x0, y0), (x1, y1) = shape.points.tolist()
        annotations.append(
            {"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(label_to_id[shape.label]),
             "iscrowd": 0}
        )
    return annotations


def load_cvat_dataset(xml, image_root, label_to_id, attribute_to_id=None):
    """detectron2 records of every image of a CVAT XML, in document order.

    Every record has ``file_name`` (``image_root/<name>``), ``image_id`` (the name without its
    extension), ``height`` and ``width`` (from the XML). An XML with polygons adds the semantic
    keys (``sem_seg_file_name`` = the XML, ``label_format "cvat"``, ``cvat_image_name``,
    ``cvat_label_to_id``, ``cvat_attribute_to_id`` when given) to every image; an XML with boxes
    adds ``annotations`` (``bbox`` XYXY_ABS, ``category_id`` from ``label_to_id``; boxes of other
    labels are skipped). Raises when an image file is missing or the XML has no image.
    """
    xml = os.path.abspath(os.fspath(xml))
    images = _read(xml)
    if not images:
        raise CvatFormatError(f"{xml}: no <image> element: the dataset would be empty")
    _check_ids(label_to_id, "label_to_id")
    if attribute_to_id:
        _check_ids(attribute_to_id, "attribute_to_id")
    has_polygons = any(s.kind == "polygon" for im in images.values() for s in im.shapes)
    has_boxes = any(s.kind == "box" for im in images.values() for s in im.shapes)
    listing = set(os.listdir(image_root)) if os.path.isdir(image_root) else set()
    records, missing = [], []
    for name, image in images.items():
        file_name = os.path.join(image_root, name)
        if name not in listing and not os.path.isfile(file_name):
            missing.append(file_name)
            continue
        record = {
            "file_name": file_name,
            "image_id": os.path.splitext(name)[0],
            "height": image.height,
            "width": image.width,
        }
        if has_polygons:
            record.update(
                sem_seg_file_name=xml, label_format="cvat", cvat_image_name=name, cvat_label_to_id=dict(label_to_id)
            )
            if attribute_to_id is not None:
                record["cvat_attribute_to_id"] = dict(attribute_to_id)
        if has_boxes:
            record["annotations"] = _box_annotations(image, label_to_id)
        records.append(record)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(images)} images named in {xml} are missing under {image_root} "
            f"(first: {missing[0]})"
        )
    return records


def _class_names(label_to_id, attribute_to_id):
    names = {}
    for label, i in sorted(label_to_id.items(), key=lambda kv: kv[1]):
        names.setdefault(int(i), label)
    for (label, value), i in (attribute_to_id or {}).items():
        names.setdefault(int(i), label if value is None else f"{label}/{value}")
    count = max(names) + 1 if names else 0
    return [names.get(i, f"class_{i}") for i in range(count)]


def cvat_metadata(label_to_id, attribute_to_id=None, ignore_label=255):
    """Semantic-segmentation metadata: ``stuff_classes`` (and ``thing_classes``, for box
    datasets) = the label names ordered by id (the first label of an id names it; ids only
    ``attribute_to_id`` gives are named ``label/value``), ``ignore_label``, ``evaluator_type "sem_seg"``."""
    names = _class_names(label_to_id, attribute_to_id)
    return dict(stuff_classes=names, thing_classes=list(names), ignore_label=ignore_label, evaluator_type="sem_seg")


def register_cvat_dataset(name, xml, image_root, label_to_id, attribute_to_id=None, metadata=None):
    """Register the images of one CVAT XML (lazy: nothing is read here) under ``name``, with
    :func:`cvat_metadata` updated by ``metadata``. A name registered before is replaced."""
    label_to_id = dict(label_to_id)
    attribute_to_id = None if attribute_to_id is None else dict(attribute_to_id)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_cvat_dataset(xml, image_root, label_to_id, attribute_to_id))
    meta = dict(xml_file=os.fspath(xml), image_root=os.fspath(image_root))
    meta.update(cvat_metadata(label_to_id, attribute_to_id))
    meta.update(metadata or {})
    MetadataCatalog.get(name).set(**meta)
    return name
