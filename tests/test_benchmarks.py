"""Every benchmarks/*.py run as a user runs it, in tiny mode (benchmarks/common.py), its last line
``RESULT {json}`` read and its figures checked: keys, finite values in their ranges, and the
invariants each script promises (two COCO backends agree, ONNX scores as PyTorch does, the fused
parameter counts are the published ones, a ratio is the ratio of the figures it reports...).

A tiny run measures nothing, so no figure is compared against a time. Each script runs in its own
process (cwd = the repo, one OpenMP thread); most start DataLoader workers or child processes too,
hence ``slow``. The checkpoint that rect_eval.py and export.py score is the one bccd.py --tiny trains,
on a synthetic set of 2:1 images (benchmarks.common.write_voc_dataset) where even a one-epoch model
scores above zero.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from benchmarks.common import COLOURS, TINY_ENV, write_voc_dataset

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # a tiny run takes 3-30 s on a quiet 2-core machine
# Two lanes, one per core, each run in order: rect_eval and export score the checkpoint bccd trains.
LANES = (("bccd", "rect_eval", "export", "assigner_memory", "step_syncs"),
         ("gpu", "scale", "train_speed", "memory", "dataloader", "model_info", "eval_speed"))


def bench_args(script: str, tmp: Path) -> list[str]:
    """The command line of each tiny run (the switch itself is added by ``Runs._run``)."""
    ckpt = str(tmp / "runs" / "bench_bccd_yolo_r18" / "last.pth")
    cache = f"data.cache_dir={str(tmp / 'cache')!r}"  # label caches out of the repo's runs/cache
    return {
        # 8 + 8 synthetic 64x128 (h x w) images: big boxes that anchors fitted to them already hit
        "bccd": ["configs/bccd_yolo_r18.py", f"data.root={str(tmp / 'data')!r}", f"data.class_names={list(COLOURS)!r}",
                 "data.data_fraction=1.0", "model.channel_sparsity=0.25", "model.anchors='auto'",
                 f"train.save_dir={str(tmp / 'runs')!r}", cache],
        "export": [ckpt, "--out", str(tmp / "export"), cache],
        "rect_eval": [ckpt, "eval.rect_pad=0.0", cache],
        "scale": ["--dir", str(tmp / "scale")],
        "train_speed": ["v9-t", "--baseline", str(REPO), cache],  # this checkout against itself
        "dataloader": ["--baseline", str(REPO), "--train-epoch"],  # this checkout against itself
        "eval_speed": [cache],
        "memory": [cache],
        "assigner_memory": ["--baseline", str(REPO)],  # this checkout against itself
        "step_syncs": ["--baseline", str(REPO)],  # this checkout against itself
    }.get(script, [])


ENV_SWITCH = {"dataloader"}  # runs with BENCH_TINY=1; the others with --tiny
EXPORT_EXTRA = ("onnx", "onnxruntime", "onnx2tf", "tensorflow")  # requirements-export.txt


class Runs:
    """The benchmarks the session selected, started at once in LANES (a thread per lane waits on its
    processes). Each runs as ``python benchmarks/<script>.py ...`` in tiny mode, cwd = the repo, one
    OpenMP thread, temporary files under ``tmp``."""

    def __init__(self, wanted: set[str], tmp: Path) -> None:
        self.tmp, self.closed, self.procs = tmp, False, []
        self.futures = {s: Future() for lane in LANES for s in lane if s in wanted}
        for lane in LANES:
            threading.Thread(target=self._lane, args=(lane,), daemon=True).start()

    def _lane(self, lane: tuple[str, ...]) -> None:
        for script in (s for s in lane if s in self.futures):
            try:
                self.futures[script].set_result(self._run(script))
            except BaseException as e:  # noqa: BLE001 - handed to the test that reads this run
                self.futures[script].set_exception(e)

    def _run(self, script: str) -> tuple[int, str, str, float]:
        """(exit code, stdout, stderr, wall seconds) of ``script``'s tiny run."""
        if self.closed:
            raise RuntimeError(f"{script}: not started, the module's tests ended")
        env = {k: v for k, v in os.environ.items() if k != TINY_ENV}
        env |= {"OMP_NUM_THREADS": "1", "TMPDIR": str(self.tmp)} | ({TINY_ENV: "1"} if script in ENV_SWITCH else {})
        cmd = [sys.executable, f"benchmarks/{script}.py", *bench_args(script, self.tmp)]
        cmd += [] if script in ENV_SWITCH else ["--tiny"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        finally:
            proc.kill()  # a no-op once it has exited
        return proc.returncode, out, err, time.perf_counter() - t0

    def result(self, script: str) -> tuple[dict, str]:
        """(RESULT json, stdout) of ``script``'s run; fails the test on a non-zero exit or no RESULT line."""
        code, out, err, seconds = self.futures[script].result(timeout=len(self.futures) * TIMEOUT_S)
        assert code == 0, f"benchmarks/{script}.py {' '.join(bench_args(script, self.tmp))} exited {code}:\n{err[-4000:]}"
        last = out.strip().splitlines()[-1]
        assert last.startswith("RESULT "), f"{script}: last line is not RESULT: {last!r}"
        print(f"{script} --tiny: {seconds:.1f} s")
        return json.loads(last.removeprefix("RESULT ")), out

    def close(self) -> None:
        """Start nothing more and stop what still runs (when a test failed with -x, or was interrupted)."""
        self.closed = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()


def reads(script: str):
    """Marks a test as reading ``script``'s run (so the runs fixture starts it) and as slow."""
    def mark(test):
        test.script = script
        return pytest.mark.slow(test)
    return mark


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    wanted = {getattr(getattr(item, "function", None), "script", None) for item in request.session.items} - {None}
    if any(importlib.util.find_spec(package) is None for package in EXPORT_EXTRA):
        wanted.discard("export")  # its test skips
    if wanted & {"export", "rect_eval"}:
        wanted.add("bccd")
    tmp = tmp_path_factory.mktemp("bench")
    write_voc_dataset(tmp / "data", n_train=8, n_val=8, img_hw=(64, 128))
    started = Runs(wanted, tmp)
    yield started
    started.close()


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


# -- the benchmarks ----------------------------------------------------------------------------
@reads("bccd")
def test_bccd_scores_with_both_backends_alike(runs):
    result, out = runs.result("bccd")
    tmp = runs.tmp
    assert set(result) == {"mAP", "mAP50", "train_img_per_s", "peak_rss_gb", "run_dir"}
    run = Path(result["run_dir"])
    assert run.parent == tmp / "runs" and (run / "last.pth").is_file()
    assert 0 < result["mAP"] <= result["mAP50"] <= 1  # the anchors fitted to big boxes already hit some
    # RESULT's mAP is pycocotools'; the trainer's validation logged faster-coco-eval's: they agree (DESIGN)
    epoch = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()][-1]
    assert epoch["epoch"] == 1 and epoch["images"] == 8  # --tiny: one epoch; 8 images, data_fraction=1.0
    assert result["mAP"] == pytest.approx(epoch["mAP"], abs=1e-4)
    assert result["mAP50"] == pytest.approx(epoch["mAP50"], abs=1e-4)
    assert result["train_img_per_s"] == pytest.approx(epoch["images_per_s"], abs=0.01)  # both images / train s
    assert 0.05 < result["peak_rss_gb"] < 64  # torch alone holds > 50 MB
    assert re.search(r"^mAP\s+(\S+)\s+(\S+)$", out, re.M).groups() == (f"{epoch['mAP']:.4f}", f"{result['mAP']:.4f}")


@reads("rect_eval")
def test_rect_eval_pads_2to1_images_to_half_the_square(runs):
    result, _ = runs.result("rect_eval")
    assert result["ckpt"] == bench_args("rect_eval", runs.tmp)[0] and result["images"] == 4  # --tiny: max_images=4
    # 128x64 (w x h) images at 64 px: scale 64 / 128 = 0.5 -> 64 x 32; the rect canvas pads the height
    # to the next multiple of the largest stride (32): 32, the square one to 64.
    assert result["square"]["canvases"] == ["64x64"] and result["rect"]["canvases"] == ["32x64"]
    for run in ("square", "rect"):
        r = result[run]
        assert all(0 <= r[k] <= 1 or r[k] == -1 for k in ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium"))
        s = r["seconds"]  # rounded to 1 ms; img_per_s (to 0.01) is 4 images over the unrounded time
        assert s > 0.0005 and 4 / (s + 0.0005) - 0.01 <= r["img_per_s"] <= 4 / (s - 0.0005) + 0.01
        assert result["seconds_all"][run] == [r["seconds"]]  # --tiny: --repeats 1
    assert result["square"]["mAP"] > 0  # the same images as the training's val: not a vacuous diff below
    assert result["mAP_diff"] == pytest.approx(result["rect"]["mAP"] - result["square"]["mAP"], abs=1e-4)
    assert result["speedup"] == pytest.approx(result["square"]["seconds"] / result["rect"]["seconds"], abs=1e-3)


@reads("export")
def test_export_runtimes_score_as_pytorch(runs):
    for package in EXPORT_EXTRA:
        pytest.importorskip(package)
    result, _ = runs.result("export")
    maps = {k.removeprefix("map_"): v for k, v in result.items() if k.startswith("map_")}
    assert set(maps) == {"torch", "onnx", "tflite_fp32", "tflite_fp16", "int8_ptq", "int8_qat"}
    assert all(0 <= v <= 1 for v in maps.values()) and maps["torch"] > 0  # > 0: the comparisons mean something
    assert abs(maps["onnx"] - maps["torch"]) <= 1e-4 and result["onnx_equal"] is True
    assert abs(maps["tflite_fp32"] - maps["torch"]) <= 0.005  # float32 graph, other kernels
    assert abs(maps["tflite_fp16"] - maps["torch"]) <= 0.005 and result["fp16_within_half_point"] is True
    assert set(result["latency_ms"]) == {"torch_eager", "onnxruntime", "litert_fp32", "litert_fp16", "litert_int8"}
    assert all(finite(v) and v > 0 for v in result["latency_ms"].values())
    assert result["qat_epochs"] == 1  # --tiny: --qat-epochs 1
    loss = maps["torch"] - maps["int8_ptq"]
    if loss > 1e-4:  # the figures are rounded to 4 decimals
        assert result["qat_recovered"] == pytest.approx((maps["int8_qat"] - maps["int8_ptq"]) / loss, abs=0.01)
    if abs(maps["int8_qat"] - (maps["int8_ptq"] + loss / 2)) > 1e-4:
        assert result["qat_recovers_half"] is (maps["int8_qat"] >= maps["int8_ptq"] + loss / 2)
    out = runs.tmp / "export"
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.suffix in (".onnx", ".tflite")}
    expected = {"ptq/bench_bccd_yolo_r18.onnx", "ptq/model_fp32.tflite", "ptq/model_fp16.tflite",
                "ptq/model_int8.tflite", "qat/model_int8.tflite"}  # --out holds what was scored
    assert expected <= written, written


@reads("train_speed")
def test_train_speed_times_the_trainer_step(runs):
    result, out = runs.result("train_speed")
    assert set(result) == {"full_img_per_s", "bare_img_per_s", "ratio", "runs"}
    full, bare = result["full_img_per_s"], result["bare_img_per_s"]
    assert finite(full, bare) and full > 0 and bare > 0
    assert result["ratio"] == pytest.approx(full / bare, rel=0.01, abs=1e-3)
    assert set(result["runs"]) == {"this code/1", "baseline/1"}  # --baseline: the same figures for the other code
    assert {k: result[k] for k in ("full_img_per_s", "bare_img_per_s", "ratio")} == result["runs"]["this code/1"]
    row = re.search(r"^baseline, 1 threads\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert float(row[1]) == pytest.approx(result["runs"]["baseline/1"]["full_img_per_s"], abs=0.006)
    assert "v9-t at 64 px, batch 2" in out  # --tiny sizes
    assert out.count("round ") == 2  # --tiny: one round, this code then the baseline, one thread


@reads("dataloader")
def test_dataloader_rates_and_their_ratios(runs):
    result, out = runs.result("dataloader")
    per_core = ("uncached", "lmdb_cached", "ram_cached", "large_uncached")
    keys = {*per_core, *(f"baseline_{k}" for k in per_core), *(f"{k}_speedup" for k in per_core),
            "epoch_s", "baseline_epoch_s", "epoch_speedup", "epoch_data_s", "baseline_epoch_data_s",
            "epoch_data_ceiling", "workers2", "train_step_img_per_s", "cpu_threads", "decode_ms"}
    assert set(result) == keys
    for k in per_core:  # the speedup is new / baseline from the figures it printed (2 decimals: ~1%)
        assert finite(result[k], result[f"baseline_{k}"]) and result[k] > 0 and result[f"baseline_{k}"] > 0
        assert result[f"{k}_speedup"] == pytest.approx(result[k] / result[f"baseline_{k}"], rel=2e-3)
        row = re.search(rf"^{k}\s+([\d.]+)\s+([\d.]+)\s", out, re.M)  # the table shows the same figures
        assert abs(float(row[1]) - result[k]) <= 0.06 and abs(float(row[2]) - result[f"baseline_{k}"]) <= 0.06
    assert result["epoch_speedup"] == pytest.approx(result["baseline_epoch_s"] / result["epoch_s"], rel=2e-3)
    # the wait for data is a part of the epoch; a loader taking no time would leave the baseline's steps
    assert 0 < result["epoch_data_s"] < result["epoch_s"] and 0 < result["baseline_epoch_data_s"] < result["baseline_epoch_s"]
    old, wait = result["baseline_epoch_s"], result["baseline_epoch_data_s"]
    assert result["epoch_data_ceiling"] == pytest.approx(old / (old - wait), rel=2e-3)
    assert result["workers2"] > 0 and result["train_step_img_per_s"] > 0
    assert set(result["decode_ms"]) == {"pil", "pil_draft_half", "opencv", "opencv_half", "load_image"}
    assert all(v["bccd"] > 0 and v["large"] > 0 for v in result["decode_ms"].values())
    # BENCH_TINY=1 took effect: 64 px, batch 4, a tenth of the split, 8 large images of 192x108, one round
    assert "(0.1 of it), 64 px, batch 4" in out and "best of 1 rounds" in out and "8 synthetic 192x108 JPEGs" in out
    assert "bccd_v9t training epoch (64 px" in out
    assert out.count("round 1: new      uncached") == 1 and out.count("round 1: baseline uncached") == 1


@reads("eval_speed")
def test_eval_speed_backends_give_identical_numbers(runs):
    result, out = runs.result("eval_speed")
    assert set(result) == {"identical", "speedup", "speedup_median", "faster_coco_eval_s", "pycocotools_s",
                           "max_abs_diff", "numbers_compared", "images", "detections", "mAP"}
    assert result["identical"] is True and result["max_abs_diff"] == 0
    assert result["numbers_compared"] > 100  # COCO stats, per-class APs, operative metrics...
    assert result["images"] == 24  # --tiny: the first 24 val images
    # every image is filled with false positives up to eval.max_det = 100; boxes under 1 px are dropped
    assert 0.95 * 24 * 100 <= result["detections"] <= 24 * 100
    # 92% of the GT found with corners jittered by 6% of the box: most matches hold to IoU 0.75, few to 0.95
    assert 0.3 < result["mAP"] < 0.92
    assert finite(result["faster_coco_eval_s"], result["pycocotools_s"]) and result["faster_coco_eval_s"] > 0
    assert result["speedup"] == pytest.approx(result["pycocotools_s"] / result["faster_coco_eval_s"], rel=0.02)
    assert "1 runs per backend" in out  # --tiny: --repeats 1


@reads("memory")
def test_memory_records_every_epoch(runs):
    result, out = runs.result("memory")
    assert set(result) == {"rss_growth", "rss_first_mb", "rss_last_mb", "slope_mb_per_epoch", "epochs"}
    assert result["epochs"] == 3  # --tiny: 3 epochs, each logged memory/rss_mb once
    first, last = result["rss_first_mb"], result["rss_last_mb"]
    assert 50 < first < 64_000 and 50 < last < 64_000  # a process holding torch
    rows = re.findall(r"^\s+(\d)\s+([\d.]+)\s+", out, re.M)
    assert [int(e) for e, _ in rows] == [1, 2, 3] and float(rows[0][1]) == first and float(rows[-1][1]) == last
    # growth = (max RSS of epochs 2..3 - RSS of epoch 1) / RSS of epoch 1, from the table's own rows
    peak = max(float(v) for _, v in rows[1:])
    assert result["rss_growth"] == pytest.approx((peak - first) / first, abs=2e-4)
    assert finite(result["slope_mb_per_epoch"])
    assert [p.name for p in runs.tmp.glob("memory_bench_*/run/last.pth")] == ["last.pth"]  # TMPDIR honoured


@reads("model_info")
def test_model_info_fused_counts_are_the_published_ones(runs):
    result, _ = runs.result("model_info")
    assert set(result) == {"v9-t", "gelan-t"}  # --tiny default
    # YOLOv9 paper / MIT release: v9-t trains 3,717,680 parameters (auxiliary branch built) and deploys
    # 2,407,632 (aux removed, RepConv and Conv+BN fused): 9.9 GFLOPs at 640
    t, g = result["v9-t"], result["gelan-t"]
    assert t["params_train"] == 3_717_680 and t["params_fused"] == 2_407_632
    assert abs(t["gflops"] - 9.9) <= 0.099  # within 1%
    # gelan-t is v9-t without the auxiliary branch: training and inference build the same network
    assert g["params_train"] == g["params_infer"] == t["params_infer"] and g["params_fused"] == 2_407_632
    assert t["params_train"] > t["params_infer"] > t["params_fused"]  # aux removed, then BN folded away
    assert g["gflops"] == t["gflops"]


@reads("scale")
def test_scale_stages_run_tiny_and_records_stay_compact(runs):
    result, out = runs.result("scale")
    keys = {"images", "scan_cold_s", "scan_warm_s", "first_batch_s", "pss_total_mb", "pss_total_mb_bccd", "pss_ratio",
            "pss_total_mb_cold", "pss_ratio_cold", "record_bytes_per_image", "eval_5k_s", "eval_5k_peak_rss_mb"}
    assert set(result) == keys and all(finite(v) for v in result.values())
    assert result["images"] == 40  # --tiny: 40 train images
    n_boxes = int(re.search(r"\(40 train images, (\d+) boxes, 80 classes", out).group(1))
    assert 40 * 4 < n_boxes < 40 * 12  # Poisson with mean 7.3 per image
    # RecordTable bytes: per box 4 float32 + 1 int64 = 24; per image its file name (the link's absolute path)
    # plus a few int64 (id, h, w, offsets): under 100 bytes
    name = len(str(runs.tmp / "scale" / "coco_synth" / "images" / "train" / "train000000000000.jpg"))
    floor = 24 * n_boxes / 40 + name
    assert floor <= result["record_bytes_per_image"] <= floor + 100
    assert result["pss_total_mb"] > 0 and result["pss_total_mb_bccd"] > 0 and result["pss_total_mb_cold"] > 0
    # the ratios are those of the printed totals (0.1 MB), rounded to 3 decimals
    for ratio, total in (("pss_ratio", "pss_total_mb"), ("pss_ratio_cold", "pss_total_mb_cold")):
        assert result[ratio] == pytest.approx(result[total] / result["pss_total_mb_bccd"], abs=6e-4)
    table = re.finditer(r"^ *(synthetic, warm|synthetic, cold|BCCD, cold) .* (\d+)$", out, re.M)
    totals = {"synthetic, warm": "pss_total_mb", "synthetic, cold": "pss_total_mb_cold",
              "BCCD, cold": "pss_total_mb_bccd"}
    rows = {totals[m.group(1)]: float(m.group(2)) for m in table}  # the table's PSS totals, whole MB
    assert rows == pytest.approx({k: result[k] for k in totals.values()}, abs=0.51)
    assert result["first_batch_s"] > 0 and result["eval_5k_s"] > 0 and result["eval_5k_peak_rss_mb"] > 50
    # the stages are child processes: BENCH_TINY (set by --tiny) gave them the tiny defaults too
    assert "evaluation: 8 images" in out and "160 random detections" in out  # 8 val images x 20 detections


@reads("assigner_memory")
def test_assigner_memory_measures_every_method_on_every_head(runs):
    from models.assigners import ASSIGNERS
    result, out = runs.result("assigner_memory")
    cases = {f"{m}/{head}" for m, cls in ASSIGNERS.items() for head in cls.coders}
    assert (result["batch"], result["img_size"], result["gts"]) == (2, 128, [2, 5, 12])  # --tiny sizes
    assert result["priors"] == {"anchor": 3 * (16 ** 2 + 8 ** 2 + 4 ** 2), "dfl": 16 ** 2 + 8 ** 2 + 4 ** 2}
    for key in ("peak_mib", "ms", "baseline_peak_mib", "baseline_ms"):
        assert set(result[key]) == cases and all(set(v) == {"2", "5", "12"} for v in result[key].values())
    for case, peaks in result["peak_mib"].items():
        assert all(finite(peaks[n], result["ms"][case][n]) and peaks[n] > 0 for n in peaks)
        # live bytes are deterministic: this checkout against itself measures the same peaks
        assert peaks == result["baseline_peak_mib"][case]
        row = re.search(rf"^{case}\s+12\s+([\d.]+)\s", out, re.M)  # the table shows the same figure
        assert float(row[1]) == pytest.approx(peaks["12"], abs=0.051)
    for n, worst in result["worst_peak_mib"].items():
        assert worst == max(v[n] for v in result["peak_mib"].values()) == result["baseline_worst_peak_mib"][n]


@reads("step_syncs")
def test_step_syncs_counts_the_budget(runs):
    """Tiny: v9-t/task_aligned and yolo/nearby_grid, against this checkout itself: no sync in a
    micro-batch, one per optimizer step, one all-reduce per optimizer step and nothing else."""
    result, out = runs.result("step_syncs")
    assert set(result) == {"v9-t/task_aligned", "yolo/nearby_grid"}
    for case, row in result.items():
        mine = {k: row[k] for k in ("syncs_per_iter", "syncs_micro", "syncs_opt", "collectives_per_opt_step")}
        assert mine == {"syncs_per_iter": 0.5, "syncs_micro": 0, "syncs_opt": 1, "collectives_per_opt_step": 1.0}, case
        assert row["collective_kinds"] == ["all_reduce"] and row["baseline"] == {k: v for k, v in row.items()
                                                                                 if k != "baseline"}
        line = re.search(rf"^{re.escape(case)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
        assert [float(v) for v in line.groups()] == [0.5, 0.5, 1.0, 1.0]


@reads("gpu")
def test_gpu_script_runs_every_section_on_the_cpu(runs):
    result, out = runs.result("gpu")
    assert result["tiny"] is True and result["versions"]["cuda"] is None and result["versions"]["gpus"] == []
    steps = result["train_steps"]
    assert set(steps) == {"v9-t fp16", "v9-t bf16", "r18 fp16"}
    assert all(v["img_per_s"] > 0 and v["sync_warnings"] == 0 for v in steps.values())
    # 2 steps, each an optimizer step reading its flags once; nothing else reads the device
    assert all(v["syncs_per_step"] == 1.0 for v in steps.values()), steps
    from models.assigners import ASSIGNERS
    assert set(result["assigner_memory"]) == {f"{m}/{h}/G20" for m, c in ASSIGNERS.items() for h in c.coders}
    assert set(result["throughput"]) == {"cudnn_benchmark off", "cudnn_benchmark on"}  # tiny: no compile
    nms = result["nms"]
    assert nms["boxes"] == 300 and 0 < nms["fallback_kept"] <= 300
    tr = result["torchrun"]
    assert tr["epochs"] == 2 and tr["processes"] == 1 and set(tr["mAP"]) == {"fp32", "fp16", "bf16"}
    assert tr["mAP_spread"] <= 0.005 and tr["mAP"]["fp32"] == tr["mAP"]["fp16"]  # CPU autocast fp16 runs fp32
    multi = result["multi_process"]
    assert multi["processes"] == 2 and multi["ddp_val_equal"] is True
    assert "SIGTERM stopped 2 ranks" in out
