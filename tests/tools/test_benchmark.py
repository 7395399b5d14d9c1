"""tools/benchmark.py on a tiny input: every variant timed, ratios and their spread consistent with
the recorded latencies, the default config found from any folder, sizes below the training crop."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_CONFIG = os.path.join(
    REPO_ROOT, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml"
)
CITYSCAPES_CONFIG = "projects/PanopticDepthLab/configs/Cityscapes-PanopticDepth/panoptic_depthlab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.yaml"
VARIANTS = ("panoptic_depthlab", "panoptic_depthlab_channels_last", "panoptic_deeplab", "panoptic_deeplab_stock",
            "two_networks", "deployed")
DEPLOYED_RATIOS = {"deployed_vs_stock_eager": ("deployed", "panoptic_deeplab_stock"),
                   "deployed_vs_stock_eager_same_pooling": ("deployed", "panoptic_deeplab"),
                   "deployed_vs_eager": ("panoptic_depthlab", "deployed"),
                   "channels_last_vs_eager": ("panoptic_depthlab", "panoptic_depthlab_channels_last")}


def _check_spread(stats, values):
    """A variant's (or ratio's) recorded spread against numpy on the recorded values."""
    q1, median, q3 = np.percentile(values, [25, 50, 75])  # linear interpolation, as the tool's
    assert stats["min"] == min(values) and stats["max"] == max(values)
    assert stats["median"] == pytest.approx(median)
    assert stats["q1"] == pytest.approx(q1) and stats["q3"] == pytest.approx(q3)
    assert stats["iqr"] == pytest.approx(q3 - q1)
    assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]


def test_benchmark_writes_latencies_spread_memory_and_ratios(benchmark_tool, tmp_path):
    out = tmp_path / "bench.json"
    benchmark_tool.main(
        ["--config", CPU_CONFIG, "--sizes", "64x128", "--runs", "5", "--warmup", "1",
         "--threads", "1", "--device", "cpu", "--output", str(out)]
    )
    report = json.loads(out.read_text())
    assert report["settings"]["height"] == 64 and report["settings"]["runs"] == 5 and report["device"].startswith("cpu")
    assert report["settings"]["config"] == os.path.relpath(CPU_CONFIG, REPO_ROOT)
    lat = report["latency_ms"]
    for name in (*VARIANTS, "segment_depths"):
        assert len(lat[name]) == 5
        assert report["median_ms"][name] > 0
        assert report["median_ms"][name] == report["latency_stats_ms"][name]["median"]
        _check_spread(report["latency_stats_ms"][name], lat[name])
    m, r = report["median_ms"], report["ratios"]
    assert r["vs_panoptic_deeplab"] == pytest.approx(m["panoptic_depthlab"] / m["panoptic_deeplab"])
    assert r["vs_two_networks"] == pytest.approx(m["panoptic_depthlab"] / m["two_networks"])
    assert r["segment_depth_fraction"] == pytest.approx(m["segment_depths"] / m["panoptic_depthlab"])

    pairs = {"vs_panoptic_deeplab": ("panoptic_depthlab", "panoptic_deeplab"),
             "vs_two_networks": ("panoptic_depthlab", "two_networks"),
             "segment_depth_fraction": ("segment_depths", "panoptic_depthlab"), **DEPLOYED_RATIOS}
    for key, (num, den) in pairs.items():
        spread = report["ratio_spread"][key]
        paired = [a / b for a, b in zip(lat[num], lat[den])]  # repetition i of each variant is a pair
        assert spread["paired"] == pytest.approx(paired)
        assert spread["ratio_of_medians"] == r[key]
        _check_spread({k[len("paired_"):]: v for k, v in spread.items() if k.startswith("paired_") and k != "paired"},
                      paired)
    for key in ("vs_panoptic_deeplab", "vs_two_networks", *DEPLOYED_RATIOS):
        spread = report["ratio_spread"][key]
        expected = spread["paired_q1"] > 1 if r[key] > 1 else spread["paired_q3"] < 1
        assert spread["spread_narrower_than_difference"] is bool(expected)
    assert "spread_narrower_than_difference" not in report["ratio_spread"]["segment_depth_fraction"]
    flagged = [k for k, s in report["ratio_spread"].items() if s.get("spread_narrower_than_difference") is False]
    assert report["spread_narrower_than_difference"] is (not flagged)
    assert len(report["warnings"]) == len(flagged)

    # the deployed model (onnxruntime) against the eager one, and the issue-15 keys at the top level
    parity = report["deployed_parity"]
    assert parity["argmax_agreement"] >= 0.999 and parity["max_rel_diff_depth"] <= 1e-3
    assert parity["same_segments"] is True and parity["panoptic_agreement"] == 1.0
    assert parity["num_segments"] == report["segments_per_image"] and parity["max_abs_diff_segment_depth_m"] < 1e-3
    for key in DEPLOYED_RATIOS:
        assert report[key] == r[key]
    assert report["targets"]["deployed_vs_stock_eager_below_1"] is (r["deployed_vs_stock_eager"] < 1.0)

    memory = report["peak_memory_mb"]
    # at least the input image (3 x 64 x 128 floats) is allocated by every eager variant; torch's
    # profiler does not see onnxruntime's allocations, so the deployed variant has no figure
    assert all(memory[name] > 3 * 64 * 128 * 4 / 2**20 for name in VARIANTS if name != "deployed")
    assert "deployed" not in memory


def test_panoptic_depthlab_sizes_default_to_cityscapes_half_and_full(benchmark_tool):
    """The issue-15 command (``--height 512 --width 1024``) measures 512x1024 and 1024x2048 in one run."""
    args = benchmark_tool.get_parser().parse_args(["--height", "512", "--width", "1024", "--output", "x.json"])
    assert benchmark_tool.sizes_to_measure(args) == [(512, 1024), (1024, 2048)]
    args = benchmark_tool.get_parser().parse_args(["--sizes", "64x128", "--output", "x.json"])
    assert benchmark_tool.sizes_to_measure(args) == [(64, 128)]


def test_ratio_spread_by_hand(benchmark_tool):
    narrow = benchmark_tool.ratio_spread([110, 120, 130, 140], [100, 100, 100, 100], True)
    assert narrow["ratio_of_medians"] == pytest.approx(1.25)
    assert narrow["paired"] == pytest.approx([1.1, 1.2, 1.3, 1.4])
    assert (narrow["paired_min"], narrow["paired_max"]) == pytest.approx((1.1, 1.4))
    assert (narrow["paired_q1"], narrow["paired_q3"]) == pytest.approx((1.175, 1.325))
    assert narrow["spread_narrower_than_difference"] is True
    # ratio of medians 1.125, but the paired ratios 0.8, 0.95, 1.3, 1.5 have IQR [0.9125, 1.35] around 1.0
    wide = benchmark_tool.ratio_spread([80, 95, 130, 150], [100, 100, 100, 100], True)
    assert wide["ratio_of_medians"] == pytest.approx(1.125)
    assert (wide["paired_q1"], wide["paired_q3"]) == pytest.approx((0.9125, 1.35))
    assert wide["spread_narrower_than_difference"] is False
    faster = benchmark_tool.ratio_spread([70, 80, 90, 95], [100, 100, 100, 100], True)
    assert faster["spread_narrower_than_difference"] is True
    one = benchmark_tool.ratio_spread([5.0], [4.0], False)
    assert one["paired_iqr"] == 0 and one["paired_median"] == 1.25 and "spread_narrower_than_difference" not in one
    # a single pair has no spread: it cannot back a claimed difference
    assert benchmark_tool.ratio_spread([5.0], [4.0], True)["spread_narrower_than_difference"] is False


def test_a_registered_family_and_the_spread_warning(benchmark_tool, monkeypatch, tmp_path, capsys):
    """--model is a registry: a new family benchmarks through the same loop. Scripted latencies
    whose paired ratios straddle 1.0 are flagged in the JSON and on the console."""
    family = benchmark_tool.BenchmarkFamily(
        default_config=os.path.relpath(CPU_CONFIG, REPO_ROOT),
        variants=("mine", "theirs"),
        build=lambda cfg: {"mine": lambda inputs: "m", "theirs": lambda inputs: "t"},
        ratios={"vs_theirs": ("mine", "theirs")},
        compared_to_one=("vs_theirs",),
    )
    monkeypatch.setitem(benchmark_tool.BENCHMARKS, "toy", family)
    script = iter([80, 100, 95, 100, 130, 100, 150, 100])  # mine, theirs, mine, theirs, ...
    monkeypatch.setattr(benchmark_tool, "time_call", lambda fn, device: (next(script), fn()))
    out = tmp_path / "toy.json"
    report = benchmark_tool.main(["--model", "toy", "--runs", "4", "--warmup", "0", "--device", "cpu",
                                  "--skip-memory", "--output", str(out)])
    assert report == json.loads(out.read_text())
    assert report["model"] == "toy" and report["latency_ms"] == {"mine": [80, 95, 130, 150], "theirs": [100] * 4}
    assert report["ratios"]["vs_theirs"] == pytest.approx(1.125)
    assert report["spread_narrower_than_difference"] is False
    assert report["ratio_spread"]["vs_theirs"]["spread_narrower_than_difference"] is False
    assert len(report["warnings"]) == 1 and "vs_theirs" in report["warnings"][0]
    assert "WARNING: vs_theirs" in capsys.readouterr().out


def test_benchmark_runs_from_another_folder_with_the_default_config(tmp_path):
    """The default config (Cityscapes R52, crop 512x1024) is found from any working directory, and
    runs at 64x128, below its ASPP pooling kernel: every variant but detectron2's unmodified model,
    which raises there and is dropped with its reason."""
    out = tmp_path / "bench.json"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "benchmark.py"), "--sizes", "64x128",
         "--runs", "1", "--warmup", "0", "--threads", "1", "--device", "cpu", "--skip-memory", "--output", str(out)],
        cwd=cwd, check=True, capture_output=True, text=True, timeout=300,
    )
    report = json.loads(out.read_text())
    assert report["settings"]["config"] == CITYSCAPES_CONFIG
    assert all(len(report["latency_ms"][name]) == 1 for name in VARIANTS if name != "panoptic_deeplab_stock")
    assert "pool_kernel_size" in report["unavailable"]["panoptic_deeplab_stock"]
    assert "deployed_vs_stock_eager" not in report["ratios"] and "targets" not in report
    assert report["ratio_spread"]["vs_panoptic_deeplab"]["paired_iqr"] == 0
    assert report["spread_narrower_than_difference"] is False  # one repetition: flagged, not claimed
    # vs_panoptic_deeplab, vs_two_networks, deployed_vs_stock_eager_same_pooling, deployed_vs_eager,
    # channels_last_vs_eager
    assert all("single repetition" in w for w in report["warnings"]) and len(report["warnings"]) == 5


def test_benchmark_below_the_training_crop_size(benchmark_tool, tmp_path):
    """A cropped-training config (crop 128x256 at OS32: ASPP pooling kernel 4x8) timed at 64x128,
    where detectron2's ASPP raises: every variant's ASPPs pool globally."""
    args = benchmark_tool.get_parser().parse_args(
        ["--config", CPU_CONFIG, "--sizes", "64x128", "--runs", "1", "--warmup", "0",
         "--threads", "1", "--device", "cpu", "--skip-memory", "--output", str(tmp_path / "b.json"),
         "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "(128, 256)"]
    )
    report = benchmark_tool.benchmark(args)
    assert all(len(report["latency_ms"][name]) == 1 for name in VARIANTS if name != "panoptic_deeplab_stock")
    assert "panoptic_deeplab_stock" in report["unavailable"]  # detectron2's own ASPP raises here
    from detectron2.layers import ASPP
    from segdep_d2.modeling import ImagePooling2d

    runners = benchmark_tool.build_variants(benchmark_tool.setup_cfg(args))
    stock = runners["panoptic_deeplab"]
    pools = [m.convs[-1][0] for m in stock.modules() if isinstance(m, ASPP)]
    assert len(pools) == 2 and all(isinstance(p, ImagePooling2d) and p.kernel_size == (4, 8) for p in pools)


def test_benchmark_ignores_config_weight_urls(benchmark_tool):
    """The R52 configs name detectron2:// ImageNet weights; timing must not try to download them."""
    config = os.path.join(REPO_ROOT, CITYSCAPES_CONFIG)
    args = benchmark_tool.argparse.Namespace(config=config, device="cpu", opts=[])
    assert benchmark_tool.setup_cfg(args).MODEL.WEIGHTS == ""
    args.opts = ["MODEL.WEIGHTS", "/tmp/mine.pth"]
    assert benchmark_tool.setup_cfg(args).MODEL.WEIGHTS == "/tmp/mine.pth"


# ---- HydraNet: eager / onnxruntime / torch.compile -----------------------------------------------
NYU_CONFIG = "projects/HydraNet/configs/NYUv2-HydraNet/hydranet_mbv2_nyuv2_40.yaml"


def _no_compiler(module, **kwargs):
    """torch.compile on a machine without a working compiler: it fails when first called."""
    def compiled(*args, **kw):
        raise RuntimeError("InductorError: no C++ compiler found")
    return compiled


def test_hydranet_benchmark_writes_every_key(benchmark_tool, tmp_path, monkeypatch):
    """--model hydranet at two tiny sizes, 2 runs: the keys other tools read, consistent with the
    recorded latencies; params / gflops of the model; torch.compile failing is recorded, not fatal."""
    import statistics

    import torch
    from detectron2.modeling import build_model

    monkeypatch.setattr(torch, "compile", _no_compiler)
    out = tmp_path / "hydranet.json"
    report = benchmark_tool.main(["--model", "hydranet", "--sizes", "64x96,45x77", "--runs", "2", "--warmup", "1",
                                  "--threads", "1", "--device", "cpu", "--output", str(out)])
    assert report == json.loads(out.read_text())
    assert report["model"] == "hydranet" and report["device"].startswith("cpu")
    assert report["settings"]["config"] == NYU_CONFIG  # the family's default: NYUDv2, 40 classes
    assert (report["settings"]["height"], report["settings"]["width"]) == (64, 96)
    assert report["settings"]["sizes"] == ["64x96", "45x77"] and set(report["sizes"]) == {"64x96", "45x77"}

    cfg = benchmark_tool.setup_cfg(benchmark_tool.get_parser().parse_args(["--model", "hydranet", "--output", "x"]))
    params = sum(p.numel() for p in build_model(cfg).parameters())
    for size, sized in report["sizes"].items():
        lat = sized["latency_ms"]
        assert set(lat) == {"eager", "eager_nchw", "eager_channels_last", "onnxruntime", "onnxruntime_labels",
                            "onnxruntime_plain", "onnxruntime_deployed"}  # no compile
        assert all(len(v) == 2 and min(v) > 0 for v in lat.values())
        chosen = sized["chosen"]["eager"]
        assert lat["eager"] == lat[chosen]
        other = {"eager_nchw", "eager_channels_last"} - {chosen}
        assert statistics.median(lat[chosen]) <= statistics.median(lat[other.pop()])
        assert sized["eager_memory_format"] == {"eager_nchw": "nchw", "eager_channels_last": "channels_last"}[chosen]
        ratio = statistics.median(lat["eager"]) / statistics.median(lat["onnxruntime"])
        assert sized["onnxruntime_vs_eager"] == pytest.approx(ratio)
        assert sized["ratio_spread"]["onnxruntime_vs_eager"]["paired"] == pytest.approx(
            [a / b for a, b in zip(lat["eager"], lat["onnxruntime"])])
        for key, (num, den) in {"onnxruntime_labels_vs_eager": ("eager", "onnxruntime_labels"),
                                "labels_vs_logits_onnxruntime": ("onnxruntime", "onnxruntime_labels"),
                                "graph_rewrites_speedup": ("onnxruntime_plain", "onnxruntime"),
                                "onnxruntime_deployed_vs_eager": ("eager", "onnxruntime_deployed"),
                                "spinning_speedup": ("onnxruntime_labels", "onnxruntime_deployed")}.items():
            assert sized["ratios"][key] == pytest.approx(statistics.median(lat[num]) / statistics.median(lat[den]))
        assert sized["onnxruntime_labels_vs_eager"] == sized["ratios"]["onnxruntime_labels_vs_eager"]
        assert sized["onnxruntime_deployed_vs_eager"] == sized["ratios"]["onnxruntime_deployed_vs_eager"]
        assert sized["onnxruntime_settings"]["outputs"] == {"onnxruntime": "logits", "onnxruntime_labels": "labels",
                                                            "onnxruntime_plain": "logits",
                                                            "onnxruntime_deployed": "labels"}
        assert sized["onnxruntime_settings"]["graph_rewrites"]["onnxruntime_plain"] is False
        assert sized["onnxruntime_settings"]["allow_spinning"] == {"onnxruntime": False, "onnxruntime_labels": False,
                                                                   "onnxruntime_plain": False,
                                                                   "onnxruntime_deployed": True}
        assert sized["params"] == params == 3_068_969
        assert sized["gflops"] > 0 and sized["gflops_paper_640x480"] == 6.5
        assert sized["compile"]["used"] is False and "no C++ compiler" in sized["compile"]["reason"]
        assert "compile" in sized["unavailable"] and "compile_vs_eager" not in sized["ratios"]
        fastest = min(("eager", "onnxruntime", "onnxruntime_labels", "onnxruntime_deployed"),
                      key=lambda k: statistics.median(lat[k]))
        assert sized["fastest_runtime"] == fastest
        profile = sized["onnxruntime_profile"]  # onnxruntime's own profiler on the deployed file
        assert sum(profile["share"].values()) == pytest.approx(1.0)
        assert {"Conv /backbone", "Conv /decoder", "Conv /sem_seg_head", "MaxPool"} <= set(profile["share"])
        assert list(profile["kernel_ms_per_run"].values()) == sorted(profile["kernel_ms_per_run"].values(), reverse=True)
        stream = sized["stream"]  # the fastest runtime again, frame after frame
        assert stream["runtime"] == fastest and len(stream["latency_ms"]) == 2 and min(stream["latency_ms"]) > 0
        assert stream["median"] == pytest.approx(statistics.median(stream["latency_ms"]))
        assert set(sized["peak_memory_mb"]) == {"eager_nchw", "eager_channels_last"}
        assert "targets" not in sized  # targets are for 480x640
    # both sizes pad to 64x96: the same network, the same FLOPs
    assert report["sizes"]["64x96"]["gflops"] == pytest.approx(report["sizes"]["45x77"]["gflops"])
    for key in ("latency_ms", "params", "gflops", "onnxruntime_vs_eager"):  # the first size at the top level
        assert report[key] == report["sizes"]["64x96"][key]


def test_hydranet_benchmark_with_torch_compile(benchmark_tool, tmp_path):
    """The real torch.compile (inductor) at one tiny size: timed beside the others, and whether it
    beat eager recorded (one compilation: tens of seconds on a 2-core CPU)."""
    report = benchmark_tool.main(["--model", "hydranet", "--sizes", "32x32", "--runs", "1", "--warmup", "1",
                                  "--threads", "1", "--device", "cpu", "--skip-memory", "--output",
                                  str(tmp_path / "b.json")])
    assert "sizes" not in report and len(report["latency_ms"]["compile"]) == 1
    faster = report["median_ms"]["compile"] < report["median_ms"]["eager"]
    assert report["compile"]["used"] is faster
    assert report["ratios"]["compile_vs_eager"] == pytest.approx(
        report["median_ms"]["eager"] / report["median_ms"]["compile"])


def test_hydranet_targets_at_640x480(benchmark_tool):
    """The 640x480 summary states issue 11's targets from the medians."""
    report = {"median_ms": {"eager": 300.0, "onnxruntime": 140.0, "compile": 180.0},
              "ratios": {"onnxruntime_vs_eager": 300.0 / 140.0}, "chosen": {"eager": "eager_channels_last"}}
    summary = benchmark_tool.hydranet_summary(report, None, 480, 640)
    assert summary["fastest_runtime"] == "onnxruntime" and summary["fastest_median_ms"] == 140.0
    assert summary["targets"]["fastest_median_ms_met"] and summary["targets"]["onnxruntime_vs_eager_met"]
    assert summary["compile"]["used"] is True
    report["median_ms"].update(onnxruntime=160.0, compile=400.0)
    report["ratios"]["onnxruntime_vs_eager"] = 300.0 / 160.0
    summary = benchmark_tool.hydranet_summary(report, None, 480, 640)
    assert not summary["targets"]["fastest_median_ms_met"] and summary["targets"]["onnxruntime_vs_eager_met"]
    assert summary["compile"]["used"] is False and "slower than eager" in summary["compile"]["reason"]
    # the labels deployment counts for the fastest runtime (and the target); onnxruntime_vs_eager stays like for like
    report["median_ms"]["onnxruntime_labels"] = 145.0
    report["ratios"]["onnxruntime_labels_vs_eager"] = 300.0 / 145.0
    summary = benchmark_tool.hydranet_summary(report, None, 480, 640)
    assert summary["fastest_runtime"] == "onnxruntime_labels" and summary["targets"]["fastest_median_ms_met"]
    assert summary["onnxruntime_vs_eager"] == pytest.approx(300.0 / 160.0)
    assert summary["onnxruntime_labels_vs_eager"] == pytest.approx(300.0 / 145.0)
    # the streamed figure (frame after frame) is judged against the same 150 ms, beside the interleaved one
    report["median_ms"]["onnxruntime_labels"] = 155.0
    report["stream"] = {"runtime": "onnxruntime_labels", "latency_ms": [149.0, 147.0, 160.0], "median": 149.0}
    summary = benchmark_tool.hydranet_summary(report, None, 480, 640)
    assert not summary["targets"]["fastest_median_ms_met"] and summary["targets"]["stream_median_ms_met"]
    assert summary["targets"]["stream_median_ms"] == 149.0
    assert summary["targets"]["stream_runtime"] == "onnxruntime_labels"
    assert any("interleaved NOT met; streamed (onnxruntime_labels, frame after frame): 149.0 ms, met" in n
               for n in summary["notes"])


# ---- SegDep: 19 vs 100 class names, the text cache cold / warm, three separate networks -----------
SEGDEP_CPU_CONFIG = os.path.join(REPO_ROOT, "projects/SegDep/configs/Synthetic-SegDep/segdep_hrnet18s_cpu.yaml")
SEGDEP_CONFIG = "projects/SegDep/configs/VKITTI2-SegDep/segdep_hrnet32_vkitti2.yaml"
BENCH_CLIP = "segdep-test-tiny-clip"  # tests/conftest.py tiny_open_clip
# A tiny text tower (width 64, 2 layers, CLIP's real vocabulary) and one prompt template, so that the
# real 19 / 100 class names and 20 queries cost little to encode on a loaded CPU.
SEGDEP_TINY = ["MODEL.SEGDEP.CLIP_MODEL", BENCH_CLIP, "MODEL.SEGDEP.PROMPT_TEMPLATES", "['a photo of a {}.']"]


@pytest.fixture(scope="module")
def bench_tiny_clip(tiny_open_clip):
    return tiny_open_clip  # tests/conftest.py


def test_segdep_vocabularies(benchmark_tool):
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    vocab = benchmark_tool.segdep_vocabularies()
    assert set(vocab) == {"names19", "names100"}
    assert vocab["names19"] == _get_builtin_metadata("cityscapes")["stuff_classes"]
    assert len(vocab["names100"]) == len(set(vocab["names100"])) == 100
    assert vocab["names100"][:19] == vocab["names19"]
    assert vocab == benchmark_tool.segdep_vocabularies()  # deterministic
    assert all(n == n.strip().lower() and "-" not in n and "_" not in n for n in vocab["names100"])


def test_segdep_benchmark_writes_every_key(benchmark_tool, bench_tiny_clip, tmp_path):
    """--model segdep, Synthetic CPU config at 64x96, 2 runs: every key, consistent with the recorded
    latencies; the warm variants only hit the text cache, the cold one only misses."""
    import statistics

    out = tmp_path / "segdep.json"
    report = benchmark_tool.main(["--model", "segdep", "--config", SEGDEP_CPU_CONFIG, "--height", "64", "--width", "96",
                                  "--runs", "2", "--warmup", "1", "--threads", "1", "--device", "cpu",
                                  "--output", str(out), *SEGDEP_TINY])
    assert report == json.loads(out.read_text())
    assert report["model"] == "segdep" and report["device"].startswith("cpu")
    assert report["settings"]["config"] == os.path.relpath(SEGDEP_CPU_CONFIG, REPO_ROOT)
    assert (report["settings"]["height"], report["settings"]["width"], report["settings"]["runs"]) == (64, 96, 2)
    lat, med = report["latency_ms"], report["median_ms"]
    queries = "queries20" in lat  # with the referring head
    variants = {"names19", "names100", "names100_cold", "separate", "names19_motion", "names19_deployed"} | (
        {"queries1", "queries20"} if queries else set())
    assert set(lat) == variants
    for name in variants:
        assert len(lat[name]) == 2 and min(lat[name]) > 0
        assert med[name] == report["latency_stats_ms"][name]["median"] == pytest.approx(statistics.median(lat[name]))
        _check_spread(report["latency_stats_ms"][name], lat[name])
    pairs = {"names100_vs_names19": ("names100", "names19"), "cold_vs_warm_names100": ("names100_cold", "names100"),
             "segdep_vs_separate": ("names19", "separate"), "motion_vs_plain": ("names19_motion", "names19"),
             "deployed_vs_eager": ("names19", "names19_deployed")}
    if queries:
        pairs.update(queries20_vs_queries1=("queries20", "queries1"), queries1_vs_names19=("queries1", "names19"))
    else:
        assert "queries20_vs_queries1" not in report
    for key, (num, den) in pairs.items():
        assert report[key] == report["ratios"][key] == pytest.approx(med[num] / med[den]) and report[key] > 0
        spread = report["ratio_spread"][key]
        assert spread["paired"] == pytest.approx([a / b for a, b in zip(lat[num], lat[den])])
    for key in ("cold_vs_warm_names100", "segdep_vs_separate", "deployed_vs_eager"):  # checked against 1.0
        assert isinstance(report["ratio_spread"][key]["spread_narrower_than_difference"], bool)
    assert "spread_narrower_than_difference" not in report["ratio_spread"]["names100_vs_names19"]

    # the text cache: warm variants hit only, the cold one misses every prompt (100 names x 1 template)
    cache = report["text_cache"]
    assert report["text_cache_hit_rate"] == 1.0
    for name in ("names19", "names100", "separate", "names19_deployed", *(("queries1", "queries20") if queries else ())):
        assert cache[name]["calls"] == 3 and cache[name]["misses"] == 0 and cache[name]["hits"] > 0
    assert cache["names100"]["hits"] == 3 * 100 and cache["names19"]["hits"] == 3 * 19
    assert cache["names100_cold"] == {"calls": 3, "hits": 0, "misses": 3 * 100, "hit_rate": 0.0}
    assert report["prompt_templates"] == 1
    assert [len(report["class_names"][k]) for k in ("names19", "names100")] == [19, 100]

    params = report["params"]
    assert params["total"] > params["trainable"] > 0
    assert params["total"] - params["trainable"] >= params["text_encoder"] > 0  # the frozen text tower
    assert report["separate_params"]["total"] > params["total"]  # three image encoders against one
    targets = report["targets"]
    assert targets["names100_vs_names19_max"] == 1.3
    assert targets["names100_vs_names19_met"] is (report["names100_vs_names19"] <= 1.3)
    assert targets["names100_vs_names19_paired_q3_met"] is (
        report["ratio_spread"]["names100_vs_names19"]["paired_q3"] <= 1.3)
    # the motion module ran on every frame after the first (warm-up) one of its sequence
    assert report["motion_calls"] == 3 and report["motion_refined_calls"] == 2
    assert report["motion_module_params"] > 0 and cache["names19_motion"]["misses"] == 0
    assert set(report["peak_memory_mb"]) == {"names19", "names100", "separate"}
    assert any("separate" in n for n in report["notes"])
    # the exported network answers as the eager one (calibrated random weights: the logits and depth are
    # the network's, so the differences are float noise, not zero)
    parity = report["deployed_parity"]
    assert parity["argmax_agreement"] >= 0.999 and parity["open_vocab_argmax_agreement"] >= 0.999
    assert 0 < parity["max_relative_depth_error"] < 1e-3
    assert any(n.startswith("names19_deployed") for n in report["notes"])


def test_segdep_separate_networks_baseline(benchmark_tool, bench_tiny_clip):
    """The baseline: three image encoders of its own (none shared with SegDep, none with each other)
    and its own text tower; with SegDep's weights its closed-set logits and depth equal SegDep's."""
    import torch

    args = benchmark_tool.get_parser().parse_args(
        ["--model", "segdep", "--config", SEGDEP_CPU_CONFIG, "--device", "cpu", "--output", "x", *SEGDEP_TINY])
    runners = benchmark_tool.build_segdep_variants(benchmark_tool.setup_cfg(args))
    model, separate = runners["segdep"], runners["separate_networks"]
    storage = {p.data_ptr() for p in model.parameters()}
    encoders = [separate.seg_encoder, separate.depth_encoder, separate.clip_encoder]
    pointers = [{p.data_ptr() for p in e.parameters()} for e in encoders]
    assert all(ptrs and not (ptrs & storage) for ptrs in pointers)
    assert not (pointers[0] & pointers[1]) and not (pointers[1] & pointers[2]) and not (pointers[0] & pointers[2])
    assert not {p.data_ptr() for p in separate.text_encoder.parameters()} & storage
    assert separate.text_encoder is not model.text_encoder

    inputs = benchmark_tool.make_inputs(args, 64, 96)
    with torch.no_grad():
        ours = runners["names19"](inputs)[0]
        theirs = runners["separate"](inputs)[0]
        cold = runners["names100_cold"](inputs)[0]
    torch.testing.assert_close(theirs["sem_seg"], ours["sem_seg"])
    torch.testing.assert_close(theirs["depth"], ours["depth"])
    assert theirs["open_vocab_seg"].shape == ours["open_vocab_seg"].shape == (19, 64, 96)
    assert cold["open_vocab_seg"].shape == (100, 64, 96)
    # the cold variant's cache is its own: emptying it leaves SegDep's warm
    assert model.text_encoder.cache_info()["size"] >= 100
    assert runners[benchmark_tool.TEXT_CACHE_LOG]["names100_cold"][-1]["hits"] == 0


# ---- DepthCompletion: the network against nearest / bilinear interpolation of the sparse points -----
COMPLETION_CPU_CONFIG = os.path.join(
    REPO_ROOT, "projects/DepthCompletion/configs/Synthetic-DepthCompletion/depth_completion_cpu.yaml")
COMPLETION_CONFIG = "projects/DepthCompletion/configs/KITTI-DepthCompletion/depth_completion_kitti.yaml"
COMPLETION_VARIANTS = {"eager", "eager_semantic_guide", "nearest_fill", "bilinear_fill", "deployed",
                       "deployed_semantic_guide"}
COMPLETION_RATIOS = {"eager_vs_nearest_fill": ("eager", "nearest_fill"),
                     "eager_vs_bilinear_fill": ("eager", "bilinear_fill"),
                     "semantic_guide_vs_eager": ("eager_semantic_guide", "eager"),
                     "deployed_vs_eager": ("eager", "deployed"),
                     "semantic_guide_deployed_vs_eager": ("eager_semantic_guide", "deployed_semantic_guide")}


def test_depth_completion_sparse_input_is_lidar_like(benchmark_tool):
    """A KITTI frame's sparse map: ~4.5 % of the pixels, only in the lower two-thirds, 5-80 m, the
    same for the same seed; and the family's defaults (KITTI config, 352x1216)."""
    import torch

    sparse = benchmark_tool.lidar_like_sparse_depth(352, 1216)
    assert sparse.shape == (352, 1216) and sparse.dtype == torch.float32
    measured = sparse > 0
    assert 0.04 <= float(measured.float().mean()) <= 0.05
    rows = measured.any(dim=1).nonzero()[:, 0]
    assert int(rows.min()) >= 352 // 3 and int(rows.max()) >= 340  # the lower two-thirds, down to the bottom
    assert 5.0 <= float(sparse[measured].min()) and float(sparse[measured].max()) <= 80.0
    assert float(sparse[measured].std()) > 5.0  # a range of depths, not one value
    # points every few pixels along a scan line
    assert 2 <= 1216 / measured.sum(dim=1)[measured.any(dim=1)].float().max() <= 8
    assert torch.equal(sparse, benchmark_tool.lidar_like_sparse_depth(352, 1216))
    assert not torch.equal(sparse, benchmark_tool.lidar_like_sparse_depth(352, 1216, seed=1))
    small = benchmark_tool.lidar_like_sparse_depth(64, 192) > 0
    assert 0.03 <= float(small.float().mean()) <= 0.06
    family = benchmark_tool.BENCHMARKS["depth_completion"]
    assert family.default_config == COMPLETION_CONFIG and family.default_size == (352, 1216)
    assert os.path.isfile(os.path.join(REPO_ROOT, family.default_config))


def test_depth_completion_benchmark_writes_every_key(benchmark_tool, tmp_path, capsys):
    """--model depth_completion, the synthetic CPU config at 64x192, 2 runs: every variant with its median
    and IQR, the ratios against the fills (paired), params / GFLOPs, the sparse input, memory."""
    import statistics

    from detectron2.modeling import build_model

    out = tmp_path / "depth_completion.json"
    argv = ["--model", "depth_completion", "--config", COMPLETION_CPU_CONFIG, "--height", "64", "--width", "192",
            "--runs", "2", "--warmup", "1", "--threads", "1", "--device", "cpu", "--output", str(out)]
    report = benchmark_tool.main(argv)
    assert report == json.loads(out.read_text())
    assert report["model"] == "depth_completion" and report["device"].startswith("cpu")
    assert report["settings"]["config"] == os.path.relpath(COMPLETION_CPU_CONFIG, REPO_ROOT)
    assert (report["settings"]["height"], report["settings"]["width"], report["settings"]["runs"]) == (64, 192, 2)
    lat, med = report["latency_ms"], report["median_ms"]
    assert set(lat) == COMPLETION_VARIANTS and "unavailable" not in report
    for name in COMPLETION_VARIANTS:
        assert len(lat[name]) == 2 and min(lat[name]) > 0
        assert med[name] == report["latency_stats_ms"][name]["median"] == pytest.approx(statistics.median(lat[name]))
        _check_spread(report["latency_stats_ms"][name], lat[name])
        assert report["latency_stats_ms"][name]["iqr"] >= 0
    for key, (num, den) in COMPLETION_RATIOS.items():
        assert report[key] == report["ratios"][key] == pytest.approx(med[num] / med[den]) and report[key] > 0
        spread = report["ratio_spread"][key]
        paired = [a / b for a, b in zip(lat[num], lat[den])]
        assert spread["paired"] == pytest.approx(paired) and min(paired) > 0
        _check_spread({k[len("paired_"):]: v for k, v in spread.items() if k.startswith("paired_") and k != "paired"},
                      paired)
        assert isinstance(spread["spread_narrower_than_difference"], bool)

    cfg = benchmark_tool.setup_cfg(benchmark_tool.get_parser().parse_args(argv))
    assert report["params"] == sum(p.numel() for p in build_model(cfg).parameters()) > 0
    assert report["gflops"] > 0
    guided = report["semantic_guide_params"]
    assert guided["total"] > report["params"] and 0 < guided["guide"] < guided["total"]
    flops = report["semantic_guide_gflops"]
    assert flops["total"] == pytest.approx(flops["completion_network"] + flops["guide"])
    assert flops["completion_network"] > report["gflops"] and flops["guide"] > 0  # two more input channels

    sparse = benchmark_tool.lidar_like_sparse_depth(64, 192)
    facts = report["sparse_input"]
    assert facts["points"] == int((sparse > 0).sum()) > 0
    assert facts["density"] == pytest.approx(facts["points"] / (64 * 192)) and facts["scan_rows"] == 64
    assert set(report["peak_memory_mb"]) == {"eager", "eager_semantic_guide"}
    assert all(v > 0 for v in report["peak_memory_mb"].values())
    # the exported graphs give the eager depth up to float noise; calibrated random weights make the
    # depth the network's (a fresh build outputs its input fill, identical in every runtime: exactly 0)
    parity = report["deployed_parity"]
    assert set(parity) == {"deployed", "deployed_semantic_guide"}
    for entry in parity.values():
        assert 0 < entry["max_relative_depth_error"] < 1e-3 and 0 < entry["max_abs_depth_error_m"] < 1e-2
    assert any(n.startswith("deployed / deployed_semantic_guide") for n in report["notes"])
    printed = capsys.readouterr().out
    assert all(name in printed for name in (*COMPLETION_VARIANTS, *COMPLETION_RATIOS))


def test_depth_completion_variants_and_a_guide_that_cannot_be_built(benchmark_tool, monkeypatch, tmp_path):
    """The fills are the evaluation's baselines on the inputs' sparse map and eager is model(inputs); a
    guide that cannot be built drops eager_semantic_guide with the reason, the rest is measured."""
    import torch

    from segdep_d2.evaluation.depth_completion import bilinear_fill, nearest_fill

    args = benchmark_tool.get_parser().parse_args(
        ["--model", "depth_completion", "--config", COMPLETION_CPU_CONFIG, "--height", "64", "--width", "192",
         "--runs", "1", "--warmup", "0", "--threads", "1", "--device", "cpu", "--skip-memory",
         "--output", str(tmp_path / "b.json")])
    cfg = benchmark_tool.setup_cfg(args)
    inputs = benchmark_tool.depth_completion_inputs(args, cfg, 64, 192)
    assert torch.equal(inputs[0]["sparse_depth"], benchmark_tool.lidar_like_sparse_depth(64, 192))
    runners = benchmark_tool.build_depth_completion_variants(cfg)
    with torch.no_grad():
        outputs = {name: runners[name](inputs)[0]["depth"] for name in ("eager", "nearest_fill", "bilinear_fill")}
    assert all(d.shape == (64, 192) for d in outputs.values())
    np.testing.assert_array_equal(outputs["nearest_fill"].numpy(), nearest_fill(inputs[0]["sparse_depth"]))
    np.testing.assert_array_equal(outputs["bilinear_fill"].numpy(), bilinear_fill(inputs[0]["sparse_depth"]))
    assert not runners["eager"].training and runners["eager"].guide is None
    assert runners["eager_semantic_guide"].guide is not None

    with torch.no_grad():
        deployed = runners["deployed"](inputs)[0]["depth"]
    torch.testing.assert_close(deployed, outputs["eager"], rtol=1e-4, atol=1e-4)

    monkeypatch.setattr(benchmark_tool, "DEPTH_COMPLETION_GUIDE_CONFIG", "projects/no/such/guide.yaml")
    report = benchmark_tool.benchmark(args)
    assert set(report["latency_ms"]) == COMPLETION_VARIANTS - {"eager_semantic_guide", "deployed_semantic_guide"}
    assert "no/such/guide.yaml" in report["unavailable"]["eager_semantic_guide"]
    assert "semantic_guide_vs_eager" not in report["ratios"] and "semantic_guide_params" not in report
    assert set(report["deployed_parity"]) == {"deployed"} and report["deployed_vs_eager"] > 0
    assert report["eager_vs_bilinear_fill"] > 0 and report["params"] > 0
