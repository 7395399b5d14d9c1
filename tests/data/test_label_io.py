import numpy as np
import pytest
from PIL import Image

from segdep_d2.data import LabelFormatError, read_panoptic, read_sem_seg
from segdep_d2.data.datasets.vkitti2_categories import VKITTI2_CATEGORIES

CITYSCAPES_LABELS = "cityscapes/mmsegmentation/tests/data/pseudo_cityscapes_dataset/gtFine/val/frankfurt"
PANOPTIC = "cityscapes_panoptic_format/deeplab2/data/testdata"
COLOR = {c["name"]: tuple(c["color"]) for c in VKITTI2_CATEGORIES}
TRAIN_ID = {c["name"]: c["trainId"] for c in VKITTI2_CATEGORIES}


def _write_colors(path):
    lines = ["Category r g b"] + [f"{c['name']} {' '.join(map(str, c['color']))}" for c in VKITTI2_CATEGORIES]
    path.write_text("\n".join(lines + ["Undefined 0 0 0"]) + "\n")
    return str(path)


def _vkitti2_record(tmp_path, classes, tracks):
    rgb = np.array([[COLOR.get(name, (0, 0, 0)) for name in row] for row in classes], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "classgt_00000.png")
    instance = Image.fromarray(np.array(tracks, np.uint8))
    instance.putpalette([v for i in range(256) for v in (i, 255 - i, (37 * i) % 256)])  # mode "P"
    instance.save(tmp_path / "instancegt_00000.png")
    return {
        "sem_seg_file_name": str(tmp_path / "classgt_00000.png"),
        "instance_file_name": str(tmp_path / "instancegt_00000.png"),
        "colors_file_name": _write_colors(tmp_path / "colors.txt"),
        "label_format": "vkitti2",
    }


def test_vkitti2_semantic_and_panoptic(tmp_path):
    classes = [["Sky", "Sky", "Car", "Car"], ["Road", "Van", "Car", "Undefined"], ["Road", "Road", "Truck", "Car"]]
    tracks = [[0, 0, 3, 3], [0, 8, 3, 0], [0, 0, 1, 0]]  # trackID + 1; last Car pixel has no track
    record = _vkitti2_record(tmp_path, classes, tracks)

    sem = read_sem_seg(record)
    expected = [[TRAIN_ID.get(n, 255) for n in row] for row in classes]
    np.testing.assert_array_equal(sem, expected)

    ids, segments = read_panoptic(record)
    car, van, truck, road, sky = (TRAIN_ID[n] + 1 for n in ("Car", "Van", "Truck", "Road", "Sky"))
    np.testing.assert_array_equal(
        ids,
        [[sky * 1000, sky * 1000, car * 1000 + 3, car * 1000 + 3],
         [road * 1000, van * 1000 + 8, car * 1000 + 3, 0],
         [road * 1000, road * 1000, truck * 1000 + 1, car * 1000]],
    )
    by_id = {s["id"]: s for s in segments}
    assert by_id[car * 1000 + 3] == {"id": car * 1000 + 3, "category_id": TRAIN_ID["Car"], "isthing": True, "iscrowd": 0, "area": 3}
    assert by_id[car * 1000]["iscrowd"] == 1  # a car pixel without a track id
    assert by_id[road * 1000]["area"] == 3 and by_id[road * 1000]["iscrowd"] == 0
    assert 0 not in by_id


def test_vkitti2_unknown_colour_names_file_and_pixel(tmp_path):
    record = _vkitti2_record(tmp_path, [["Sky", "Road"]], [[0, 0]])
    rgb = np.array([[COLOR["Sky"], (1, 2, 3)]], np.uint8)
    Image.fromarray(rgb).save(record["sem_seg_file_name"])
    with pytest.raises(LabelFormatError, match=r"classgt_00000\.png: colour \(1, 2, 3\) at \(x=1, y=0\) is not in .*colors\.txt"):
        read_sem_seg(record)


def test_vkitti2_colors_txt_checked(tmp_path):
    record = _vkitti2_record(tmp_path, [["Sky"]], [[0]])
    (tmp_path / "bad_colors.txt").write_text("Category r g b\nSky 1 1 1\n")
    record["colors_file_name"] = str(tmp_path / "bad_colors.txt")
    with pytest.raises(LabelFormatError, match=r"bad_colors\.txt: Sky has colour \(1, 1, 1\)"):
        read_sem_seg(record)


def test_cityscapes_train_ids_real_sample(real_samples):
    path = f"{real_samples}/{CITYSCAPES_LABELS}/frankfurt_000000_000294_gtFine_labelTrainIds.png"
    sem = read_sem_seg({"sem_seg_file_name": path})
    assert sem.shape == (128, 256) and sem.dtype == np.uint8
    assert set(np.unique(sem).tolist()) == {0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 255}


def test_panoptic_png_real_sample(real_samples):
    import json

    with open(f"{real_samples}/{PANOPTIC}/gtFine/cityscapes_panoptic_dummy_trainId.json") as f:
        annotation = json.load(f)["annotations"][0]
    record = {
        "pan_seg_file_name": f"{real_samples}/{PANOPTIC}/gtFine/cityscapes_panoptic_dummy_trainId/{annotation['file_name']}",
        "segments_info": annotation["segments_info"],
    }
    ids, segments = read_panoptic(record)
    assert ids.shape == (800, 800)
    for seg in segments:  # every area in the JSON equals the pixel count of its id in the PNG
        assert (ids == seg["id"]).sum() == seg["area"]
    assert set(np.unique(ids).tolist()) == {0} | {s["id"] for s in segments}


def _write_16bit_png(path, values):
    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)  # PIL writes a 16-bit grey PNG
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")  # really 16-bit on disk
    return str(path)


def test_16bit_label_png_with_8bit_values_reads_like_uint8(tmp_path):
    values = [[0, 1, 2, 255], [18, 255, 7, 0]]
    path16 = _write_16bit_png(tmp_path / "sem16.png", values)
    Image.fromarray(np.asarray(values, np.uint8)).save(tmp_path / "sem8.png")
    sem16 = read_sem_seg({"sem_seg_file_name": path16})
    sem8 = read_sem_seg({"sem_seg_file_name": str(tmp_path / "sem8.png")})
    assert sem16.dtype == np.uint8 and sem8.dtype == np.uint8
    np.testing.assert_array_equal(sem16, values)
    np.testing.assert_array_equal(sem16, sem8)


def test_16bit_label_png_above_255_is_rejected_not_wrapped(tmp_path):
    path = _write_16bit_png(tmp_path / "sem_wide.png", [[0, 3, 255], [256, 1000, 4]])
    with pytest.raises(LabelFormatError, match=r"sem_wide\.png: .*maximum 1000\b.*< 256.*255"):
        read_sem_seg({"sem_seg_file_name": path})
