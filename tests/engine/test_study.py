"""segdep_d2.engine.study, the scaffolding of projects/*/tools/synthetic_study.py: the synthetic data written
once per generator settings (and rewritten whole when they change), the table, the command line checks and
the JSON record. The studies themselves: tests/projects/test_*_synthetic_study.py."""
import argparse
import datetime
import json
import math
import os

import pytest

from segdep_d2.engine import study

TINY = dict(scenes=["Scene01"], variations=["clone"], frames=2, frame_step=1, height=32, width=96, seed=0)


def _rgb_frames(root):
    return sorted(os.listdir(os.path.join(root, "Scene01", "clone", "frames", "rgb", "Camera_0")))


def test_synthetic_data_is_written_once_per_settings(tmp_path):
    root = str(tmp_path / "vkitti2")
    assert study.prepare_synthetic_vkitti2(root, dict(TINY)) is True
    with open(os.path.join(root, study.STAMP)) as f:
        assert json.load(f) == TINY
    assert _rgb_frames(root) == ["rgb_00000.jpg", "rgb_00001.jpg"]
    # no flow unless the settings ask for it
    assert not os.path.isdir(os.path.join(root, "Scene01", "clone", "frames", "forwardFlow"))
    stamp_time = os.path.getmtime(os.path.join(root, "Scene01", "clone", "frames", "rgb", "Camera_0", "rgb_00000.jpg"))

    assert study.prepare_synthetic_vkitti2(root, dict(TINY)) is False  # reused, untouched
    assert os.path.getmtime(
        os.path.join(root, "Scene01", "clone", "frames", "rgb", "Camera_0", "rgb_00000.jpg")) == stamp_time

    # other settings: written again from an empty folder (no frame of the former data left behind)
    fewer = {**TINY, "frames": 1, "flow": True}
    assert study.prepare_synthetic_vkitti2(root, fewer) is True
    assert _rgb_frames(root) == ["rgb_00000.jpg"]
    with open(os.path.join(root, study.STAMP)) as f:
        assert json.load(f) == fewer


def test_generator_settings_keep_the_held_out_scene_last():
    args = argparse.Namespace(train_scenes="Scene01,Scene02", val_scene="Scene20", variations="clone,fog",
                              frames=8, frame_step=1, height=96, width=320, seed=3)
    assert study.generator_settings(args, flow=True) == {
        "scenes": ["Scene01", "Scene02", "Scene20"], "variations": ["clone", "fog"], "frames": 8, "frame_step": 1,
        "height": 96, "width": 320, "seed": 3, "flow": True,
    }
    args.val_scene = "Scene02"
    with pytest.raises(SystemExit, match="also a training scene"):
        study.generator_settings(args)


def test_markdown_table():
    columns = (
        ("mIoU [%]", "sem_seg", "mIoU", "{:.1f}"),
        study.Column("ref mIoU [%]", "referring", "mIoU", "{:.1f}", "ref_mIoU"),
        ("AbsRel", "depth", "AbsRel", "{:.3f}"),
    )
    extra = (("iterations", "iterations", "{}", 0), ("train s", "train_seconds", "{:.0f}", 0))
    results = {"sem_seg": {"mIoU": 12.34}, "referring": {"mIoU": 56.78}}
    row = study.with_metrics({"row": "plain", "iterations": 5, "train_seconds": 12.6}, results, columns)
    # same key in two sections: the column's own name keeps them apart; a missing metric is None
    assert (row["mIoU"], row["ref_mIoU"], row["AbsRel"]) == (12.34, 56.78, None)
    assert row["results"] == results
    table = study.markdown_table([row, {"row": "untrained"}], columns, extra)
    assert table.splitlines() == [
        "| row | mIoU [%] | ref mIoU [%] | AbsRel | iterations | train s |",
        "|---|---:|---:|---:|---:|---:|",
        "| plain | 12.3 | 56.8 | - | 5 | 13 |",
        "| untrained | - | - | - | 0 | 0 |",
    ]


def test_study_arguments_are_checked():
    rows = ("untrained", "plain")

    def parse(*argv):
        p = argparse.ArgumentParser()
        study.add_study_arguments(p, output="output/x", record_name="x.json", rows=rows, frames=3)
        return study.check_study_args(p, p.parse_args(list(argv)), rows)

    args = parse("--rows", "plain", "--max-iter", "7", "MODEL.DEVICE", "cpu")
    assert (args.rows, args.max_iter, args.frames, args.opts) == (["plain"], 7, 3, ["MODEL.DEVICE", "cpu"])
    assert parse().rows == list(rows)
    for argv in (("--rows", "plain,nope"), ("MODEL.DEVICE",), ("SOLVER.MAX_ITER", "3")):
        with pytest.raises(SystemExit):
            parse(*argv)


def test_record_is_strict_json_with_the_command(tmp_path):
    now = datetime.datetime(2025, 1, 2, tzinfo=datetime.timezone.utc)
    script = os.path.join(study.REPO, "projects", "X", "tools", "synthetic_study.py")
    report = study.study_record(script, ["--output", "out dir", "KEY", "(1, 2)"], now=now,
                                device="cpu", rows=[{"row": "a", "mIoU": math.nan, "d1": [math.inf, 0.5]}])
    assert list(report)[:5] == ["commit", "worktree_clean", "date", "command", "device"]
    assert report["date"] == "2025-01-02T00:00:00+00:00"
    assert report["command"] == "python projects/X/tools/synthetic_study.py --output 'out dir' KEY '(1, 2)'"
    assert report["rows"] == [{"row": "a", "mIoU": None, "d1": [None, 0.5]}]

    assert study.write_study_record(report, str(tmp_path / "out")) == [str(tmp_path / "out" / "study.json")]
    paths = study.write_study_record(report, str(tmp_path / "out"), str(tmp_path / "rec"), "x_study.json")
    assert paths == [str(tmp_path / "out" / "study.json"), str(tmp_path / "rec" / "x_study.json")]
    for path in paths:
        with open(path) as f:
            assert json.load(f) == report
