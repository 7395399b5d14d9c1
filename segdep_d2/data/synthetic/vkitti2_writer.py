"""Virtual KITTI 2 writer: the merged layout (frames/rgb, depth, classSegmentation, instanceSegmentation,
forwardFlow, backwardFlow and the per-variation text files intrinsic / extrinsic / info / bbox / pose / colors).

The text files follow the real ones column for column (``pose.txt`` has VKITTI2's 19 columns; ``isMoving``
lives only in ``bbox.txt``). Flow follows VKITTI2's file naming: ``forwardFlow/Camera_k/flow_%05d.png``
maps frame t to the next written frame (the last written frame has none) and
``backwardFlow/Camera_k/backwardFlow_%05d.png`` maps frame t to the previous one (the first has none).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from segdep_d2.data.datasets.vkitti2_categories import VKITTI2_CATEGORIES

from .camera import variation_yaw, vkitti2_intrinsics
from .constants import MAX_FRAMES, VKITTI2_SCENES, VKITTI2_TRAIN_ID_COLORS, VKITTI2_TRAIN_ID_TO_NAME
from segdep_d2.data.flow_io import write_vkitti2_flow

from .encoding import ClassStats, format_number, save_png, vkitti2_depth_png
from .flow import frame_flow
from .frame import SyntheticFrame, finish_frame
from .layout import build_scene
from .raycast import cast_geometry


@dataclasses.dataclass
class _TextTables:
    """Lines of one variation's text files, collected frame by frame."""

    intrinsic: List[str] = dataclasses.field(default_factory=list)
    extrinsic: List[str] = dataclasses.field(default_factory=list)
    bbox: List[str] = dataclasses.field(default_factory=list)
    pose: List[str] = dataclasses.field(default_factory=list)
    tracks: Dict[int, Tuple[str, str, str]] = dataclasses.field(default_factory=dict)  # id -> label, model, colour


def _parse_cameras(cameras) -> List[int]:
    """0 / "0" / "Camera_0" (or a sequence of them) -> camera ids."""
    out = []
    for camera in ([cameras] if isinstance(cameras, (int, str)) else cameras):
        camera = str(camera)
        out.append(int(camera.split("_")[-1]) if camera.lower().startswith("camera") else int(camera))
    return out


def generate_vkitti2(out_dir: str, *, scenes: Sequence[str] = VKITTI2_SCENES,
                     variations: Sequence[str] = ("clone",), cameras: Sequence[Union[int, str]] = (0,),
                     frames: int = 10, height: int = 188, width: int = 621, seed: int = 0,
                     frame_step: int = 1, flow: bool = True) -> dict:
    """Write scenes in the merged Virtual KITTI 2 layout under ``out_dir``; return a summary dict.

    ``frames`` frames are written per scene, variation and camera: frame indices 0, ``frame_step``,
    2 ``frame_step``, ... of the drive (a step above 1 spreads few frames over a longer stretch of
    street, i.e. more distinct views for the same number of files). With ``flow`` (default), every frame
    also gets its exact optical flow to the next / previous *written* frame (``frame_step`` frames away)
    in VKITTI2's 16-bit PNG encoding (:mod:`segdep_d2.data.flow_io`; semantics in :mod:`.flow`).

    The summary has ``frames`` (one dict per written frame/camera with the paths of ``rgb``, ``depth``,
    ``class``, ``instance`` and, where written, ``forward_flow`` / ``backward_flow``), ``counts``
    (scene -> variation -> frames), ``class_fractions``, ``depth_range``.
    """
    start = time.perf_counter()
    if frame_step < 1 or (frames - 1) * frame_step >= MAX_FRAMES:
        raise ValueError(f"frames={frames} x frame_step={frame_step} exceeds a scene's {MAX_FRAMES} frames")
    camera_ids = _parse_cameras(cameras)
    K = vkitti2_intrinsics(height, width)
    stats = ClassStats(VKITTI2_TRAIN_ID_TO_NAME)
    written, counts = [], {}
    for scene in scenes:
        layout = build_scene(scene, seed, profile="vkitti2")
        counts[scene] = {}
        for variation in variations:
            variation_yaw(variation)  # validate early
        tables = {variation: _TextTables() for variation in variations}
        last_frame = (frames - 1) * frame_step
        for frame_index in range(0, frames * frame_step, frame_step):
            for camera in camera_ids:
                gbuffer_by_yaw = {}  # appearance variations share one geometry pass (and its flow)
                flow_by_yaw = {}
                for variation in variations:
                    yaw = variation_yaw(variation)
                    if yaw not in gbuffer_by_yaw:
                        gbuffer_by_yaw[yaw] = cast_geometry(layout, frame_index, K, height, width, variation, camera)
                        if flow:
                            flow_by_yaw[yaw] = {
                                name: frame_flow(layout, gbuffer_by_yaw[yaw], target, variation=variation,
                                                 camera=camera)
                                for name, target in (("forward_flow", frame_index + frame_step),
                                                     ("backward_flow", frame_index - frame_step))
                                if 0 <= target <= last_frame}
                    frame = finish_frame(layout, gbuffer_by_yaw[yaw], frame_index, variation, camera)
                    frames_dir = os.path.join(out_dir, scene, variation, "frames")
                    paths = _write_frame_images(frame, frames_dir, frame_index, camera)
                    paths.update(_write_frame_flow(flow_by_yaw.get(yaw, {}), frames_dir, frame_index, camera))
                    written.append(dict(scene=scene, variation=variation, camera=camera, frame=frame_index, **paths))
                    stats.add(frame.category, frame.depth)
                    _collect_text_lines(tables[variation], frame, frame_index, camera)
        for variation in variations:
            _write_text_files(os.path.join(out_dir, scene, variation), tables[variation])
            counts[scene][variation] = frames
    return dict(format="vkitti2", root=os.path.abspath(out_dir), height=height, width=width, cameras=camera_ids,
                frames=written, counts=counts, class_fractions=stats.fractions(),
                depth_range=(stats.depth_min, stats.depth_max), seconds=time.perf_counter() - start)


def _write_frame_images(frame: SyntheticFrame, frames_dir: str, frame_index: int, camera: int) -> Dict[str, str]:
    camera_dir = f"Camera_{camera}"
    paths = {
        "rgb": os.path.join(frames_dir, "rgb", camera_dir, f"rgb_{frame_index:05d}.jpg"),
        "depth": os.path.join(frames_dir, "depth", camera_dir, f"depth_{frame_index:05d}.png"),
        "class": os.path.join(frames_dir, "classSegmentation", camera_dir, f"classgt_{frame_index:05d}.png"),
        "instance": os.path.join(frames_dir, "instanceSegmentation", camera_dir, f"instancegt_{frame_index:05d}.png"),
    }
    os.makedirs(os.path.dirname(paths["rgb"]), exist_ok=True)
    Image.fromarray(frame.rgb).save(paths["rgb"], format="JPEG", quality=92)
    save_png(vkitti2_depth_png(frame.depth), paths["depth"])
    save_png(VKITTI2_TRAIN_ID_COLORS[frame.category], paths["class"])
    save_png((frame.track_id + 1).astype(np.uint8), paths["instance"], mode="P")  # 0 = no vehicle
    return paths


_FLOW_FILES = {"forward_flow": ("forwardFlow", "flow_{:05d}.png"),
               "backward_flow": ("backwardFlow", "backwardFlow_{:05d}.png")}


def _write_frame_flow(flows, frames_dir: str, frame_index: int, camera: int) -> Dict[str, str]:
    """Write the frame's forward / backward flow (VKITTI2 names and encoding); return their paths."""
    paths = {}
    for name, (flow, valid) in flows.items():
        folder, pattern = _FLOW_FILES[name]
        paths[name] = os.path.join(frames_dir, folder, f"Camera_{camera}", pattern.format(frame_index))
        write_vkitti2_flow(paths[name], flow, valid)
    return paths


def _collect_text_lines(tables: _TextTables, frame: SyntheticFrame, frame_index: int, camera: int):
    K, E = frame.intrinsics, frame.extrinsic
    num = format_number
    tables.intrinsic.append(f"{frame_index} {camera} {num(K[0, 0])} {num(K[1, 1])} {num(K[0, 2])} {num(K[1, 2])}")
    tables.extrinsic.append(f"{frame_index} {camera} " + " ".join(num(x) for x in E.reshape(-1)))
    for track in frame.tracks:
        tables.tracks[track.track_id] = (track.label, track.model, track.color)
        moving = "True" if track.is_moving else "False"
        left, right, top, bottom = track.bbox
        tables.bbox.append(f"{frame_index} {camera} {track.track_id} {left} {right} {top} {bottom} "
                           f"{track.number_pixels} {num(track.truncation_ratio)} {num(track.occupancy_ratio)} {moving}")
        values = [track.alpha, track.width, track.height, track.length, *track.world_xyz, *track.rotation_world,
                  *track.camera_xyz, *track.rotation_camera]
        tables.pose.append(f"{frame_index} {camera} {track.track_id} " + " ".join(num(x) for x in values))


def _write_text_files(variation_dir: str, tables: _TextTables):
    os.makedirs(variation_dir, exist_ok=True)

    def write(name, header, lines):
        with open(os.path.join(variation_dir, name), "w") as fh:
            fh.write(header + "\n" + "".join(line + "\n" for line in lines))

    write("colors.txt", "Category r g b",
          [f"{c['name']} {c['color'][0]} {c['color'][1]} {c['color'][2]}" for c in VKITTI2_CATEGORIES]
          + ["Undefined 0 0 0"])
    write("intrinsic.txt", "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]", tables.intrinsic)
    write("extrinsic.txt", "frame cameraID r1,1 r1,2 r1,3 t1 r2,1 r2,2 r2,3 t2 r3,1 r3,2 r3,3 t3 0 0 0 1",
          tables.extrinsic)
    write("info.txt", "trackID label model color",
          [f"{t} {label} {model} {color}" for t, (label, model, color) in sorted(tables.tracks.items())])
    write("bbox.txt", "frame cameraID trackID left right top bottom number_pixels truncation_ratio "
                      "occupancy_ratio isMoving", tables.bbox)
    write("pose.txt", "frame cameraID trackID alpha width height length world_space_X world_space_Y "
                      "world_space_Z rotation_world_space_y rotation_world_space_x rotation_world_space_z "
                      "camera_space_X camera_space_Y camera_space_Z rotation_camera_space_y "
                      "rotation_camera_space_x rotation_camera_space_z", tables.pose)
