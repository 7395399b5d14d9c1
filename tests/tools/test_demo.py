"""The demo's training time budget (tools/demo.py): stop with a checkpoint before overrunning."""
import os
import types

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RecordingCheckpointer:
    def __init__(self):
        self.saved = []

    def save(self, name, **extra):
        self.saved.append((name, extra))


def _hook(demo, budget_s, start_iter, max_iter, clock):
    hook = demo.time_budget_hook(budget_s)
    hook.trainer = types.SimpleNamespace(iter=start_iter, max_iter=max_iter, checkpointer=RecordingCheckpointer())
    demo.time.perf_counter = lambda: clock[0]
    hook.before_train()
    return hook


def test_budget_hook_stops_before_the_step_that_would_overrun(demo, monkeypatch):
    monkeypatch.setattr(demo, "time", types.SimpleNamespace(perf_counter=None))
    clock = [100.0]
    hook = _hook(demo, budget_s=35.0, start_iter=0, max_iter=100, clock=clock)
    for it in range(3):  # 10 s a step: after 3 steps 30 s are spent, a 4th would end at 40 s > 35 s
        hook.trainer.iter = it
        clock[0] += 10.0
        if it < 2:
            hook.after_step()
    with pytest.raises(demo.TrainingBudgetReached) as stop:
        hook.after_step()
    assert stop.value.args == (3,)
    assert hook.trainer.checkpointer.saved == [("model_final", {"iteration": 2})]
    assert not isinstance(stop.value, Exception)  # detectron2's loop must not log it as a crash


def test_budget_hook_counts_only_this_runs_steps_and_never_stops_the_last(demo, monkeypatch):
    monkeypatch.setattr(demo, "time", types.SimpleNamespace(perf_counter=None))
    clock = [0.0]
    # resumed at iteration 50: one step of 10 s in 25 s of budget leaves room for another
    hook = _hook(demo, budget_s=25.0, start_iter=50, max_iter=100, clock=clock)
    clock[0] = 10.0
    hook.after_step()
    # the schedule's final step never raises, whatever the time
    hook.trainer.iter, clock[0] = 99, 1e6
    hook.after_step()
    assert hook.trainer.checkpointer.saved == []


# ---- the schedule: what the user asked wins, and says so ----

def _no_measure():
    raise AssertionError("the step time is measured only when a schedule is sized")


def test_max_iter_override_is_refused_with_a_pointer_to_the_flag(demo, capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "10"])
    assert "use --max-iter" in capsys.readouterr().err


def test_other_overrides_and_max_iter_flag_pass(demo):
    args = demo.parse_args(["--max-iter", "5", "--record", "benchmarks", "SOLVER.CHECKPOINT_PERIOD", "7"])
    assert (args.max_iter, args.record, args.opts) == (5, "benchmarks", ["SOLVER.CHECKPOINT_PERIOD", "7"])
    assert demo.parse_args([]).max_iter is None  # "not given" is distinguishable from the default


def test_user_checkpoint_period_wins_over_the_computed_one(demo):
    assert demo.checkpoint_period(["SOLVER.CHECKPOINT_PERIOD", "7"], 900)[0] == 7
    assert demo.checkpoint_period(["MODEL.DEVICE", "cpu"], 900)[0] == 225
    assert demo.checkpoint_period([], 120)[0] == 50


def test_fresh_run_fits_the_asked_schedule_to_the_budget(demo):
    schedule, message = demo.plan_schedule(None, None, False, 600.0, lambda: 1.0)
    assert (schedule["max_iter"], schedule["asked"], schedule["source"]) == (570, 900, "measured")
    assert "570" in message
    assert demo.plan_schedule(100, None, False, 600.0, lambda: 1.0)[0]["max_iter"] == 100
    # a slow machine still trains the minimum, but a user asking fewer gets fewer
    assert demo.plan_schedule(None, None, False, 600.0, lambda: 100.0)[0]["max_iter"] == 50
    assert demo.plan_schedule(10, None, False, 600.0, lambda: 100.0)[0]["max_iter"] == 10


def test_rerun_keeps_the_saved_schedule_unless_max_iter_is_given(demo):
    saved = {"max_iter": 812, "seconds_per_iter": 0.81}
    for given in (None, 812):
        schedule, message = demo.plan_schedule(given, saved, True, 780.0, _no_measure)
        assert (schedule["max_iter"], schedule["source"]) == (812, "resumed")
        assert "resuming" in message


def test_rerun_with_a_new_max_iter_replaces_the_saved_schedule(demo):
    saved = {"max_iter": 812, "seconds_per_iter": 0.81}
    schedule, message = demo.plan_schedule(3000, saved, True, 780.0, _no_measure)
    assert (schedule["max_iter"], schedule["source"]) == (3000, "replaced")
    assert "--max-iter 3000 replaces the saved schedule of 812" in message
    assert saved["max_iter"] == 812  # the caller's dict is not modified


def test_a_schedule_without_checkpoint_is_sized_afresh(demo):
    schedule, _ = demo.plan_schedule(None, {"max_iter": 812}, False, 600.0, lambda: 1.0)
    assert (schedule["max_iter"], schedule["source"]) == (570, "measured")


# ---- metrics.json: traceable, per-class IoU kept, optionally recorded ----

def test_metrics_report_is_traceable_and_recorded(demo, tmp_path):
    import datetime
    import json

    args = demo.parse_args(["--output", str(tmp_path), "--frames", "3", "--record", str(tmp_path / "bench"),
                            "MODEL.DEVICE", "cpu"])
    trained = {"sem_seg": {"mIoU": 30.7, "IoU-Car": 56.0, "IoU-TrafficLight": float("nan"), "ACC-Car": 70.0},
               "depth": {"AbsRel": 0.23}}
    schedule = {"max_iter": 812, "asked": 900, "seconds_per_iter": 0.81, "source": "measured"}
    report = demo.build_report(
        args=args, schedule=schedule, checkpoint_every=203, iterations=812, iterations_this_run=812,
        train_seconds=780.5, untrained={"sem_seg": {"mIoU": 2.5}}, trained=trained,
        visualizations=["visualizations/a.png"], torch_threads=2, commit="0" * 40, clean=True,
        now=datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    )
    paths = demo.write_metrics(report, str(tmp_path), args.record)
    assert paths == [str(tmp_path / "metrics.json"), str(tmp_path / "bench" / "demo_panoptic_depthlab_2025-01-02.json")]
    with open(paths[0]) as f:
        text = f.read()
    assert "NaN" not in text  # strict JSON: a class absent from the ground truth has IoU null
    written = json.loads(text)
    with open(paths[1]) as f:
        assert json.load(f) == written
    assert written["trained"]["sem_seg"]["IoU-Car"] == 56.0
    assert written["trained"]["sem_seg"]["IoU-TrafficLight"] is None
    assert (written["commit"], written["worktree_clean"], written["date"]) == ("0" * 40, True, "2025-01-02T03:04:05+00:00")
    assert written["generator"]["frames"] == 3
    assert written["settings"]["schedule"] == schedule and written["settings"]["checkpoint_period"] == 203
    assert (written["max_iter"], written["iterations_trained"], written["iterations_this_run"]) == (812, 812, 812)
    assert written["train_seconds_this_run"] == 780.5
    assert written["config_overrides"] == ["MODEL.DEVICE", "cpu"]


def test_metrics_without_record_writes_only_metrics_json(demo, tmp_path):
    report = {"date": "2025-01-02T00:00:00+00:00"}
    assert demo.write_metrics(report, str(tmp_path)) == [str(tmp_path / "metrics.json")]
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_git_commit_is_null_outside_a_checkout(demo, tmp_path):
    assert demo.git_commit(str(tmp_path)) == (None, None)
    if os.path.isdir(os.path.join(REPO_ROOT, ".git")):
        commit, clean = demo.git_commit(REPO_ROOT)
        assert len(commit) == 40 and isinstance(clean, bool)


def test_a_replaced_schedule_reaches_the_resumed_lr_scheduler(demo):
    import torch
    from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR

    def scheduler(max_iters):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return WarmupPolyLR(optimizer, max_iters=max_iters, warmup_iters=0)

    old = scheduler(3)
    for _ in range(3):
        old.optimizer.step()
        old.step()
    resumed = scheduler(5)
    resumed.load_state_dict(old.state_dict())  # what resume_or_load does: the old length comes back
    assert resumed.max_iters == 3
    assert demo.fit_scheduler_to_schedule(resumed, 5) == 3
    resumed.optimizer.step()
    resumed.step()  # iteration 4 of 5: past the old length, this raised "math domain error"
    assert 0.0 < resumed.get_last_lr()[0] < 1.0
    assert demo.fit_scheduler_to_schedule(resumed, 5) is None


# ---- --model hydranet: the same flow, its own config, columns, folder and record name ----

def test_each_model_has_its_config_folder_and_columns(demo):
    assert demo.DEFAULT_MODEL == "panoptic_depthlab" and demo.parse_args([]).model == "panoptic_depthlab"
    for name, spec in demo.MODELS.items():
        assert os.path.isfile(os.path.join(REPO_ROOT, spec.config)), (name, spec.config)
    assert demo.parse_args([]).output == os.path.join(REPO_ROOT, "output", "demo")
    args = demo.parse_args(["--model", "hydranet"])
    assert args.output == os.path.join(REPO_ROOT, "output", "demo_hydranet") and not args.inference
    columns = [name for name, *_ in demo.MODELS["hydranet"].table]
    assert columns == ["mIoU", "pACC", "AbsRel", "RMSE [m]", "d1"]  # HydraNet predicts no panoptic segments
    assert [name for name, *_ in demo.MODELS["panoptic_depthlab"].table] == [
        "mIoU", "PQ", "DPQ", "AbsRel", "d1", "segment AbsRel"]
    assert [name for name, *_ in demo.MODELS["segdep"].table] == [
        "mIoU", "AbsRel", "d1", "OV seen", "OV synonyms", "OV held-out"]
    assert demo.parse_args(["--model", "segdep"]).output == os.path.join(REPO_ROOT, "output", "demo_segdep")
    with pytest.raises(SystemExit):
        demo.parse_args(["--model", "segformer"])


def test_hydranet_table_reads_its_sections(demo):
    trained = {"sem_seg": {"mIoU": 30.7, "pACC": 81.25}, "depth": {"AbsRel": 0.23, "RMSE": 6.5, "d1": 0.71}}
    lines = demo.table([("trained", trained), ("untrained", {"sem_seg": {"mIoU": 2.5}})],
                       demo.MODELS["hydranet"].table).splitlines()
    assert lines[0].split() == ["model", "mIoU", "pACC", "AbsRel", "RMSE", "[m]", "d1"]
    assert lines[2].split() == ["trained", "0.307", "0.812", "0.230", "6.500", "0.710"]
    assert lines[3].split() == ["untrained", "0.025", "-", "-", "-", "-"]  # a missing metric is "-"
    assert "PQ" not in demo.table([("a", trained)], demo.MODELS["hydranet"].table)
    assert "PQ" in demo.table([("a", trained)])  # the default columns stay Panoptic-DepthLab's


def test_segdep_table_reads_the_open_vocabulary_section(demo):
    trained = {"sem_seg": {"mIoU": 30.0}, "depth": {"AbsRel": 0.25, "d1": 0.6},
               "open_vocab": {"mIoU_seen": 28.0, "mIoU_synonyms": 12.5}}
    line = demo.table([("trained", trained)], demo.MODELS["segdep"].table).splitlines()[2]
    assert line.split() == ["trained", "0.300", "0.250", "0.600", "0.280", "0.125", "-"]  # no held-out names


def test_hydranet_report_names_its_model_and_record(demo, tmp_path):
    import datetime
    import json

    args = demo.parse_args(["--model", "hydranet", "--output", str(tmp_path), "--record", str(tmp_path / "bench")])
    report = demo.build_report(
        args=args, schedule={"max_iter": 20, "asked": 20, "seconds_per_iter": 1.0, "source": "measured"},
        checkpoint_every=50, iterations=20, iterations_this_run=20, train_seconds=20.0,
        untrained={"sem_seg": {"mIoU": 1.5}}, trained={"sem_seg": {"mIoU": 40.0}}, visualizations=[],
        torch_threads=2, commit=None, clean=None,
        now=datetime.datetime(2025, 1, 2, tzinfo=datetime.timezone.utc),
    )
    assert report["model"] == "hydranet"
    assert report["config"] == "projects/HydraNet/configs/Synthetic-HydraNet/hydranet_mbv2_cpu.yaml"
    paths = demo.write_metrics(report, str(tmp_path), args.record)
    assert paths[1] == str(tmp_path / "bench" / "demo_hydranet_2025-01-02.json")
    with open(paths[1]) as f:
        assert json.load(f)["trained"]["sem_seg"]["mIoU"] == 40.0


# ---- the inference mode: images or a video in, overlay + depth out, frames per second ----

def test_inference_mode_arguments(demo, capsys):
    args = demo.parse_args(["--model", "hydranet", "--input", "a.png", "frames/*.jpg", "MODEL.WEIGHTS", "w.pth",
                            "INPUT.MIN_SIZE_TEST", "64"])
    # --input takes words up to the next flag: the overrides after it go back to the overrides
    assert args.input == ["a.png", "frames/*.jpg"]
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "INPUT.MIN_SIZE_TEST", "64"]
    assert args.inference and args.output == os.path.join(REPO_ROOT, "output", "demo_hydranet", "inference")
    args = demo.parse_args(["--video-input", "clip.mp4", "--output", "out", "--onnx", "m.onnx"])
    assert (args.video_input, args.output, args.onnx, args.input) == ("clip.mp4", "out", "m.onnx", None)
    for argv, message in (
        (["--config-file", "c.yaml"], "--config-file and --onnx belong to the inference mode"),
        (["--onnx", "m.onnx"], "--config-file and --onnx belong to the inference mode"),
        (["--input", "a.png", "--video-input", "clip.mp4"], "not allowed with argument"),
        (["--input", "MODEL.WEIGHTS", "w.pth"], "--input needs at least one image"),
        (["--input", "a.png", "MODEL.WEIGHTS"], "odd number"),
    ):
        with pytest.raises(SystemExit):
            demo.parse_args(argv)
        assert message in capsys.readouterr().err, argv


def _write_images(folder, n, height=48, width=80):
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        yy, xx = np.mgrid[0:height, 0:width]
        image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 70 * i)], axis=-1)
        Image.fromarray(image.astype(np.uint8)).save(folder / f"street_{i}.png")
    return folder


TINY = ["MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "64"]  # random weights, never the repository's demo model


def test_inference_mode_cli_writes_pictures_and_fps(tmp_path):
    import json
    import subprocess
    import sys

    images = _write_images(tmp_path / "images", 2)
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "demo.py"), "--model", "hydranet",
           "--input", str(images / "street_0.png"), str(images / "*_1.png"), "--output", str(out), *TINY]
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "HydraNet (eager) on 2 images: model" in proc.stdout and "FPS" in proc.stdout
    assert sorted(os.listdir(out)) == sorted(
        ["inference.json"] + [f"street_{i}_{k}.png" for i in range(2) for k in ("seg", "depth", "panel")])
    info = json.loads((out / "inference.json").read_text())
    assert (info["frames"], info["runtime"], info["meta_architecture"]) == (2, "eager", "HydraNet")
    assert info["weights"] is None  # MODEL.WEIGHTS "": the repository's demo model was not picked up
    for key in ("model_fps", "end_to_end_fps", "model_ms_median", "end_to_end_ms_median"):
        assert isinstance(info[key], float) and info[key] > 0, key
    assert info["model_fps"] > info["end_to_end_fps"]


def test_inference_mode_bad_input_names_the_path(demo, tmp_path):
    missing = str(tmp_path / "nowhere" / "frame.png")
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--model", "hydranet", "--input", missing, "--output", str(tmp_path / "out"), *TINY])
    assert str(exit_.value) == f"demo.py: error: {missing!r}: no such file, folder or glob match"
    (tmp_path / "broken.mp4").write_text("not a video")
    with pytest.raises(SystemExit, match=r"cannot read video .*broken\.mp4"):
        demo.main(["--model", "hydranet", "--video-input", str(tmp_path / "broken.mp4"),
                   "--output", str(tmp_path / "out"), *TINY])
    assert not (tmp_path / "out" / "inference.json").exists()


def test_inference_mode_cli_runs_a_video_through_onnx(tmp_path):
    """The real-time path: an ONNX export of the config, a video in, an MP4 out."""
    import json
    import subprocess
    import sys

    import cv2
    import numpy as np
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from segdep_d2 import add_segdep_config
    from segdep_d2.modeling.export import export_onnx

    pytest.importorskip("onnxruntime")
    config = os.path.join(REPO_ROOT, "projects/HydraNet/configs/Synthetic-HydraNet/hydranet_mbv2_cpu.yaml")
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(config)
    torch.manual_seed(0)
    export_onnx(build_model(cfg).eval(), cfg, 64, 96, str(tmp_path / "hydranet.onnx"))
    writer = cv2.VideoWriter(str(tmp_path / "drive.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (80, 48))
    for i in range(3):
        writer.write(np.full((48, 80, 3), 60 * i + 20, dtype=np.uint8))
    writer.release()

    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "demo.py"), "--config-file", config,
           "--video-input", str(tmp_path / "drive.mp4"), "--onnx", str(tmp_path / "hydranet.onnx"),
           "--output", str(out), "INPUT.MIN_SIZE_TEST", "64"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "HydraNet (onnxruntime) on 3 video frames: model" in proc.stdout
    info = json.loads((out / "inference.json").read_text())
    assert (info["runtime"], info["frames"], info["written"]) == ("onnxruntime", 3, [str(out / "drive.mp4")])
    assert info["video_fps"] == pytest.approx(10.0) and info["model_fps"] > 0 and info["end_to_end_fps"] > 0
    capture = cv2.VideoCapture(str(out / "drive.mp4"))
    frames = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames += 1
        assert frame.shape[0] == 48 and frame.shape[1] > 2 * 80  # overlay | depth with its colour bar
    capture.release()
    assert frames == 3
