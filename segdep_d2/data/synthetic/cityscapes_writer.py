"""Cityscapes writer: leftImg8bit / gtFine / disparity / camera per frame, then cityscapesscripts' own
panoptic conversion (gtFine/cityscapes_panoptic_<split>.json and PNGs)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from typing import Dict, Mapping, Union

import numpy as np

from .camera import cityscapes_intrinsics
from .constants import CITYSCAPES_CITIES, CITYSCAPES_DEFAULT_SPLITS, CLASS_INDEX, cityscapes_tables
from .encoding import ClassStats, cityscapes_disparity_png, save_png
from .frame import SyntheticFrame, render_frame
from .layout import SceneLayout, build_scene


def _parse_splits(splits) -> Dict[str, int]:
    """{"train": 2} or "train:2,val" (a missing count means 1) -> split -> number of sequences."""
    if isinstance(splits, str):
        out = {}
        for part in filter(None, (p.strip() for p in splits.split(","))):
            name, _, count = part.partition(":")
            out[name] = int(count or 1)
        return out
    return dict(splits)


def generate_cityscapes(out_dir: str, *, splits: Union[str, Mapping[str, int]] = CITYSCAPES_DEFAULT_SPLITS,
                        frames: int = 3, height: int = 256, width: int = 512, seed: int = 0) -> dict:
    """Write Cityscapes-layout sequences under ``out_dir`` and convert them to panoptic with cityscapesscripts.

    ``splits`` maps split -> number of sequences ("train:2,val:1" also works); sequences are spread over the
    split's cities. The summary's ``frames`` lists, per frame, the paths of ``image``, ``label_ids``,
    ``instance_ids``, ``train_ids``, ``color``, ``disparity``, ``camera`` and ``panoptic``, plus ``layout``
    (the scene name to pass to :func:`build_scene` with ``profile="cityscapes"``).
    """
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    start = time.perf_counter()
    sequences_per_split = _parse_splits(splits)
    K = cityscapes_intrinsics(height, width)
    stats = ClassStats(cityscapes_tables().id_to_name)
    written, counts = [], {}
    for split, n_sequences in sequences_per_split.items():
        cities = CITYSCAPES_CITIES.get(split, (split,))
        counts[split] = {}
        for index in range(n_sequences):  # round-robin over the split's cities
            city, sequence = cities[index % len(cities)], index // len(cities)
            name = f"{city}_{sequence:06d}"
            layout = build_scene(name, seed, profile="cityscapes")
            counts[split][city] = counts[split].get(city, 0) + frames
            for frame_index in range(frames):
                frame = render_frame(layout, frame_index, height=height, width=width, intrinsics=K)
                prefix = f"{city}_{sequence:06d}_{frame_index:06d}"
                paths = _write_frame(frame, layout, out_dir, split, city, prefix, K)
                written.append(dict(split=split, city=city, sequence=sequence, frame=frame_index, prefix=prefix,
                                    layout=name, **paths))
                stats.add(frame.cityscapes_id, frame.depth)
    gt_dir = os.path.join(out_dir, "gtFine")
    with contextlib.redirect_stdout(io.StringIO()):  # it reports progress on stdout
        convert2panoptic(cityscapesPath=gt_dir, outputFolder=gt_dir, useTrainId=False,
                         setNames=list(sequences_per_split))
    for entry in written:
        entry["panoptic"] = os.path.join(gt_dir, f"cityscapes_panoptic_{entry['split']}",
                                         f"{entry['prefix']}_gtFine_panoptic.png")
    return dict(format="cityscapes", root=os.path.abspath(out_dir), height=height, width=width, frames=written,
                counts=counts, class_fractions=stats.fractions(), depth_range=(stats.depth_min, stats.depth_max),
                panoptic_json={split: os.path.join(gt_dir, f"cityscapes_panoptic_{split}.json")
                               for split in sequences_per_split},
                seconds=time.perf_counter() - start)


def _write_frame(frame: SyntheticFrame, layout: SceneLayout, out_dir, split, city, prefix, K) -> Dict[str, str]:
    tables = cityscapes_tables()
    city_dir = os.path.join(split, city)
    gt_prefix = os.path.join(out_dir, "gtFine", city_dir, prefix + "_gtFine_")
    paths = {
        "image": os.path.join(out_dir, "leftImg8bit", city_dir, prefix + "_leftImg8bit.png"),
        "label_ids": gt_prefix + "labelIds.png",
        "instance_ids": gt_prefix + "instanceIds.png",
        "train_ids": gt_prefix + "labelTrainIds.png",
        "color": gt_prefix + "color.png",
        "disparity": os.path.join(out_dir, "disparity", city_dir, prefix + "_disparity.png"),
        "camera": os.path.join(out_dir, "camera", city_dir, prefix + "_camera.json"),
    }
    ids = frame.cityscapes_id
    save_png(frame.rgb, paths["image"])
    save_png(ids, paths["label_ids"])
    save_png(_instance_ids(ids, frame.track_id), paths["instance_ids"])
    save_png(tables.id_to_train_id[ids], paths["train_ids"])
    save_png(np.concatenate([tables.id_to_color[ids], np.full(ids.shape + (1,), 255, np.uint8)], -1), paths["color"])
    hood = frame.label == CLASS_INDEX["ego_vehicle"]
    save_png(cityscapes_disparity_png(frame.depth, layout.stereo_baseline, K[0, 0], invalid=hood), paths["disparity"])
    os.makedirs(os.path.dirname(paths["camera"]), exist_ok=True)
    with open(paths["camera"], "w") as fh:
        json.dump(_camera_json(layout, K), fh, indent=4)
    return paths


def _instance_ids(ids: np.ndarray, track_id: np.ndarray) -> np.ndarray:
    """Cityscapes instanceIds: label id * 1000 + instance on things with a track, the bare label id elsewhere."""
    instance = ids.astype(np.uint16)
    thing = cityscapes_tables().id_has_instances[ids] & (track_id >= 0)
    instance[thing] = ids[thing].astype(np.uint16) * 1000 + track_id[thing].astype(np.uint16)
    return instance


def _camera_json(layout: SceneLayout, K) -> dict:
    return {"extrinsic": {"baseline": layout.stereo_baseline, "pitch": round(layout.pitch, 6), "roll": 0.0,
                          "x": 1.7, "y": 0.0, "yaw": 0.0, "z": round(layout.camera_height, 6)},
            "intrinsic": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "u0": float(K[0, 2]), "v0": float(K[1, 2])}}
