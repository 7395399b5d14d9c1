"""Virtual KITTI 2 ``textgt``: the per-variation text files that describe every vehicle and camera.

One folder per ``SceneXX/<variation>/`` (merged layout) or ``vkitti_2.0.3_textgt/SceneXX/<variation>/``
holds, each with a header line and space-separated rows (checked column for column against the real files):

* ``info.txt``      ``trackID label model color``  (label: Car / Van / Truck; model e.g. Sedan4Door, Hatchback)
* ``bbox.txt``      ``frame cameraID trackID left right top bottom number_pixels truncation_ratio
  occupancy_ratio isMoving``  (one row per vehicle with pixels in the frame; box corners are pixel indices;
  ``occupancy_ratio = number_pixels / ((right - left) * (bottom - top))``; ``isMoving`` is True / False)
* ``pose.txt``      19 columns: ``frame cameraID trackID alpha width height length world_space_{X,Y,Z}
  rotation_world_space_{y,x,z} camera_space_{X,Y,Z} rotation_camera_space_{y,x,z}``  (no ``isMoving``)
* ``intrinsic.txt`` ``frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]``
* ``extrinsic.txt`` ``frame cameraID r1,1 r1,2 r1,3 t1 r2,1 ... t3 0 0 0 1``  (world -> camera, row-major 4x4)

(``colors.txt`` is read by :func:`segdep_d2.data.label_io.read_vkitti2_colors`.)

:func:`load_vkitti2_textgt` joins them into :class:`VKITTI2Object` per (frame, camera): identity from
``info.txt``, box / visibility / ``isMoving`` from ``bbox.txt`` and 3D pose from ``pose.txt``. Every reader
raises :class:`TextGTFormatError` naming the file and line on a wrong header, a wrong column count or a
value that does not parse.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "INFO_COLUMNS",
    "BBOX_COLUMNS",
    "POSE_COLUMNS",
    "INTRINSIC_COLUMNS",
    "EXTRINSIC_COLUMNS",
    "TextGTFormatError",
    "TrackInfo",
    "BoxRecord",
    "PoseRecord",
    "VKITTI2Object",
    "VKITTI2TextGT",
    "read_info",
    "read_bbox",
    "read_pose",
    "read_intrinsic",
    "read_extrinsic",
    "load_vkitti2_textgt",
]

INFO_COLUMNS = ("trackID", "label", "model", "color")
BBOX_COLUMNS = ("frame", "cameraID", "trackID", "left", "right", "top", "bottom", "number_pixels",
                "truncation_ratio", "occupancy_ratio", "isMoving")
POSE_COLUMNS = ("frame", "cameraID", "trackID", "alpha", "width", "height", "length",
                "world_space_X", "world_space_Y", "world_space_Z",
                "rotation_world_space_y", "rotation_world_space_x", "rotation_world_space_z",
                "camera_space_X", "camera_space_Y", "camera_space_Z",
                "rotation_camera_space_y", "rotation_camera_space_x", "rotation_camera_space_z")
INTRINSIC_COLUMNS = ("frame", "cameraID", "K[0,0]", "K[1,1]", "K[0,2]", "K[1,2]")
EXTRINSIC_COLUMNS = ("frame", "cameraID", "r1,1", "r1,2", "r1,3", "t1", "r2,1", "r2,2", "r2,3", "t2",
                     "r3,1", "r3,2", "r3,3", "t3", "0", "0", "0", "1")

FrameKey = Tuple[int, int]  # (frame, cameraID)


class TextGTFormatError(ValueError):
    """A textgt file does not have the columns / values of the real Virtual KITTI 2 file."""


@dataclasses.dataclass(frozen=True)
class TrackInfo:
    """One row of ``info.txt``."""

    track_id: int
    label: str   # "Car" | "Van" | "Truck"
    model: str   # e.g. "Sedan4Door", "Hatchback", "SUV"
    color: str   # e.g. "Black", "Silver"


@dataclasses.dataclass(frozen=True)
class BoxRecord:
    """One row of ``bbox.txt``."""

    frame: int
    camera: int
    track_id: int
    left: int
    right: int
    top: int
    bottom: int
    number_pixels: int
    truncation_ratio: float
    occupancy_ratio: float
    is_moving: bool


@dataclasses.dataclass(frozen=True)
class PoseRecord:
    """One row of ``pose.txt`` (positions in metres, angles in radians)."""

    frame: int
    camera: int
    track_id: int
    alpha: float
    dimensions: Tuple[float, float, float]       # width, height, length
    world_xyz: Tuple[float, float, float]
    rotation_world: Tuple[float, float, float]   # (y, x, z) as the file lists them
    camera_xyz: Tuple[float, float, float]
    rotation_camera: Tuple[float, float, float]  # (y, x, z)


@dataclasses.dataclass(frozen=True)
class VKITTI2Object:
    """A vehicle visible in one (frame, camera): ``info.txt`` + ``bbox.txt`` + ``pose.txt`` joined."""

    track_id: int
    label: str
    model: str
    color: str
    frame: int
    camera: int
    bbox: Tuple[int, int, int, int]   # left, right, top, bottom (pixel indices)
    number_pixels: int
    truncation_ratio: float
    occupancy_ratio: float
    is_moving: bool
    alpha: float
    dimensions: Tuple[float, float, float]
    world_xyz: Tuple[float, float, float]
    rotation_world: Tuple[float, float, float]
    camera_xyz: Tuple[float, float, float]
    rotation_camera: Tuple[float, float, float]

    @property
    def instance_id(self) -> int:
        """The object's value in ``instanceSegmentation/instancegt_%05d.png`` (trackID + 1; 0 = no vehicle)."""
        return self.track_id + 1

    @property
    def depth(self) -> float:
        """Metres ahead of the camera along its optical axis (``camera_space_Z``), the quantity of the
        depth maps."""
        return self.camera_xyz[2]

    @property
    def distance(self) -> float:
        """Euclidean distance (metres) from the camera centre to the object's position."""
        return math.sqrt(sum(c * c for c in self.camera_xyz))

    @property
    def box_center_x(self) -> float:
        return 0.5 * (self.bbox[0] + self.bbox[1])


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ValueError(f"expected True or False, got {text!r}")


def _rows(path: str, columns: Sequence[str], hint: str = "") -> Iterator[Tuple[int, List[str]]]:
    """(line number, fields) of every data row, after checking the header against ``columns``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Virtual KITTI 2 textgt file not found: {path}")
    with open(path) as fh:
        header = fh.readline().split()
        if tuple(header) != tuple(columns):
            raise TextGTFormatError(
                f"{path}: line 1: expected the header {' '.join(columns)!r} ({len(columns)} columns), got "
                f"{' '.join(header)!r} ({len(header)} columns){hint}")
        for line_number, line in enumerate(fh, start=2):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(columns):
                raise TextGTFormatError(
                    f"{path}: line {line_number}: expected {len(columns)} columns, got {len(fields)}{hint}")
            yield line_number, fields


def _parse_rows(path: str, columns: Sequence[str], parse: Callable[[List[str]], object], hint: str = ""):
    for line_number, fields in _rows(path, columns, hint):
        try:
            yield parse(fields)
        except ValueError as e:
            raise TextGTFormatError(f"{path}: line {line_number}: {e}") from None


def _per_frame(path: str, records) -> Dict[FrameKey, Dict[int, object]]:
    out: Dict[FrameKey, Dict[int, object]] = {}
    for record in records:
        tracks = out.setdefault((record.frame, record.camera), {})
        if record.track_id in tracks:
            raise TextGTFormatError(f"{path}: frame {record.frame}, camera {record.camera}: track "
                                    f"{record.track_id} is listed twice")
        tracks[record.track_id] = record
    return out


def read_info(path: str) -> Dict[int, TrackInfo]:
    """``info.txt`` -> {trackID: :class:`TrackInfo`}."""
    info: Dict[int, TrackInfo] = {}
    for row in _parse_rows(path, INFO_COLUMNS, lambda f: TrackInfo(int(f[0]), f[1], f[2], f[3])):
        if row.track_id in info:
            raise TextGTFormatError(f"{path}: track {row.track_id} is listed twice")
        info[row.track_id] = row
    return info


def _box(f: List[str]) -> BoxRecord:
    return BoxRecord(int(f[0]), int(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[5]), int(f[6]), int(f[7]),
                     float(f[8]), float(f[9]), _parse_bool(f[10]))


def read_bbox(path: str) -> Dict[FrameKey, Dict[int, BoxRecord]]:
    """``bbox.txt`` -> {(frame, cameraID): {trackID: :class:`BoxRecord`}}."""
    return _per_frame(path, _parse_rows(path, BBOX_COLUMNS, _box))


def _pose(f: List[str]) -> PoseRecord:
    v = [float(x) for x in f[3:]]
    return PoseRecord(int(f[0]), int(f[1]), int(f[2]), v[0], (v[1], v[2], v[3]), (v[4], v[5], v[6]),
                      (v[7], v[8], v[9]), (v[10], v[11], v[12]), (v[13], v[14], v[15]))


def read_pose(path: str) -> Dict[FrameKey, Dict[int, PoseRecord]]:
    """``pose.txt`` (the real 19 columns) -> {(frame, cameraID): {trackID: :class:`PoseRecord`}}."""
    hint = (" (the real pose.txt has 19 columns and no isMoving, which lives in bbox.txt; files from an older "
            "segdep_d2 synthetic generator add it: regenerate them)")
    return _per_frame(path, _parse_rows(path, POSE_COLUMNS, _pose, hint))


def read_intrinsic(path: str) -> Dict[FrameKey, np.ndarray]:
    """``intrinsic.txt`` -> {(frame, cameraID): 3x3 K}."""
    def parse(f):
        fx, fy, cx, cy = (float(x) for x in f[2:])
        return (int(f[0]), int(f[1])), np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    return dict(_parse_rows(path, INTRINSIC_COLUMNS, parse))


def read_extrinsic(path: str) -> Dict[FrameKey, np.ndarray]:
    """``extrinsic.txt`` -> {(frame, cameraID): 4x4 world -> camera matrix}."""
    def parse(f):
        return (int(f[0]), int(f[1])), np.array([float(x) for x in f[2:]]).reshape(4, 4)

    return dict(_parse_rows(path, EXTRINSIC_COLUMNS, parse))


# --------------------------------------------------------------------------------------------------
# One variation's textgt, joined
# --------------------------------------------------------------------------------------------------


class VKITTI2TextGT:
    """The vehicles of one scene/variation: ``objects(frame, camera)`` joins info, bbox and pose rows."""

    def __init__(self, info: Dict[int, TrackInfo], boxes: Dict[FrameKey, Dict[int, BoxRecord]],
                 poses: Dict[FrameKey, Dict[int, PoseRecord]], source: str = "<memory>"):
        self.info, self.boxes, self.poses, self.source = info, boxes, poses, source

    def frames(self) -> List[FrameKey]:
        """Every (frame, cameraID) that ``bbox.txt`` lists, sorted."""
        return sorted(self.boxes)

    def objects(self, frame: int, camera: int = 0) -> List[VKITTI2Object]:
        """Vehicles with pixels in (``frame``, ``camera``) (the rows of ``bbox.txt``), in trackID order.

        A frame ``bbox.txt`` does not list has no visible vehicle: the list is empty.
        """
        poses = self.poses.get((frame, camera), {})
        out = []
        for track_id, box in sorted(self.boxes.get((frame, camera), {}).items()):
            if track_id not in self.info:
                raise TextGTFormatError(f"{self.source}: bbox.txt lists track {track_id} (frame {frame}, camera "
                                        f"{camera}) that info.txt does not describe")
            if track_id not in poses:
                raise TextGTFormatError(f"{self.source}: bbox.txt lists track {track_id} in frame {frame}, camera "
                                        f"{camera}, but pose.txt has no row for it")
            info, pose = self.info[track_id], poses[track_id]
            out.append(VKITTI2Object(
                track_id=track_id, label=info.label, model=info.model, color=info.color, frame=frame,
                camera=camera, bbox=(box.left, box.right, box.top, box.bottom), number_pixels=box.number_pixels,
                truncation_ratio=box.truncation_ratio, occupancy_ratio=box.occupancy_ratio,
                is_moving=box.is_moving, alpha=pose.alpha, dimensions=pose.dimensions, world_xyz=pose.world_xyz,
                rotation_world=pose.rotation_world, camera_xyz=pose.camera_xyz,
                rotation_camera=pose.rotation_camera))
        return out


def load_vkitti2_textgt(variation_dir: Optional[str] = None, *, info_file: Optional[str] = None,
                        bbox_file: Optional[str] = None, pose_file: Optional[str] = None) -> VKITTI2TextGT:
    """Read ``info.txt``, ``bbox.txt`` and ``pose.txt`` of one scene/variation folder (or the files given)."""
    def path(given, name):
        if given is not None:
            return given
        if variation_dir is None:
            raise ValueError(f"give variation_dir or the path of {name}")
        return os.path.join(variation_dir, name)

    info_file, bbox_file, pose_file = (path(info_file, "info.txt"), path(bbox_file, "bbox.txt"),
                                       path(pose_file, "pose.txt"))
    return VKITTI2TextGT(read_info(info_file), read_bbox(bbox_file), read_pose(pose_file),
                         source=variation_dir or os.path.dirname(bbox_file))
