"""--task compare: three tiny real runs side by side (seed repeats folded into mean ± std), the files it
writes, run statuses, skipped folders, and main.py's split of positionals into overrides and run dirs."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from tiny_data import make_tiny_voc, tiny_overrides

from configs.base_config import ConfigError
from core.evaluation.compare import compare_runs, csv_text, tables
from core.evaluation.run_table import RunSummary, differing_keys, expand_run_dirs, group_runs, load_run, load_runs
from main import main, parse_args, split_positionals
from utils.run_info import now_iso

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """runs/a and runs/b: one configuration with train.seed 0 and 1; runs/c: seed 0 and another optim.lr.
    Each trains one epoch of a tiny model for real (a few seconds)."""
    tmp = tmp_path_factory.mktemp("compare")
    root = make_tiny_voc(tmp / "data", n_train=4, n_val=3)
    for name, extra in (("a", {"train.seed": 0}), ("b", {"train.seed": 1}),
                        ("c", {"train.seed": 0, "optim.lr": 0.002})):
        ov = tiny_overrides(root, **{"train.epochs": 1, **extra})
        assert main(["--config", "bccd_yolo_r18", "--task", "train", "--out", str(tmp / "runs" / name)] + ov) == 0
    return tmp / "runs"


def _copy_runs(runs: Path, dest: Path) -> Path:
    """The three runs without checkpoints and event files (cheap to edit)."""
    for name in ("a", "b", "c"):
        shutil.copytree(runs / name, dest / name, ignore=shutil.ignore_patterns("*.pth", "tb"))
    return dest


def _set_map(run: Path, maps: list[float], rbc_ap: float) -> None:
    """val/history.json with one validation per value of ``maps`` and val/metrics.json's AP of RBC."""
    history = json.loads((run / "val" / "history.json").read_text())
    (run / "val" / "history.json").write_text(json.dumps(
        [{**history[0], "epoch": e, "mAP": m, "mAP50": m + 0.25, "mAP75": m / 2} for e, m in enumerate(maps, 1)]))
    metrics = json.loads((run / "val" / "metrics.json").read_text())
    for c in metrics["per_class"]:
        c["AP"] = rbc_ap if c["name"] == "RBC" else -1.0  # -1: not measurable, no number
    (run / "val" / "metrics.json").write_text(json.dumps(metrics))


def counted_size(ckpt: Path) -> tuple[int, float]:
    """(parameters, GFLOPs) of a checkpoint's model, counted here without utils.model_info: the parameter
    elements of its weights (BatchNorm running statistics are buffers), and for one forward pass at
    data.img_size 2 FLOPs per multiply-add of every convolution, 2 * Cout * Hout * Wout * (Cin / groups) * kh * kw
    (the network has no other layer with multiply-adds: pooling, upsampling and activations have none)."""
    import torch

    from configs.base_config import BaseConfig
    from models import build_model
    from utils.checkpoint import load_checkpoint
    ck = load_checkpoint(ckpt)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(v.numel() for k, v in ck["model"].items() if not k.endswith(buffers))
    cfg = BaseConfig.from_dict(ck["config"])
    model, flops = build_model(cfg).eval(), []

    def conv_flops(m, _inputs, out) -> None:
        flops.append(2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv_flops)
        assert not isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d))  # what the sum would miss
    with torch.no_grad():
        model(torch.zeros(1, 3, cfg.data.img_size, cfg.data.img_size))
    return params, sum(flops) / 1e9


def test_trainer_writes_run_info_epochs_and_tensorboard_hparams(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    params, gflops = counted_size(runs / "a" / "last.pth")
    assert params > 0 and gflops > 0
    for name in ("a", "b", "c"):
        info = json.loads((runs / name / "run_info.json").read_text())
        assert (info["status"], info["reason"], info["epochs_done"], info["epochs_planned"]) == ("finished", "", 1, 1)
        assert (info["pid"], info["host"], info["wall_s_before"], info["resumed_from"]) == (os.getpid(), HOST, 0.0, None)
        assert info["ended"] is not None
        assert (info["parameters"], info["gflops"]) == (params, round(gflops, 3))  # the same model in all 3
        lines = (runs / name / "epochs.jsonl").read_text().splitlines()
        assert len(lines) == 1
        line = json.loads(lines[0])
        history = json.loads((runs / name / "val" / "history.json").read_text())
        assert (line["epoch"], line["images"]) == (1, 4)  # 4 training images, one epoch
        assert line["mAP"] == history[0]["mAP"] and {"box", "obj", "cls", "total"} <= set(line["losses"])
        assert line["images_per_s"] == pytest.approx(4 / line["train_seconds"], rel=0.02)
    acc = EventAccumulator(str(runs / "c" / "tb"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["optim.lr"].number_value == pytest.approx(0.002)
    assert hp["train.seed"].number_value == 0 and hp["data.img_size"].number_value == 64
    assert hp["loss.level_weights"].string_value == "[4.0, 1.0, 0.4]"  # a list as json text
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    assert end.session_end_info.status == api_pb2.STATUS_SUCCESS
    assert [e.value for e in acc.Scalars("hparams/epochs_done")] == [1.0]
    assert [e.value for e in acc.Scalars("hparams/best_epoch")] == [1.0]


def test_real_runs_fold_seeds_into_one_row(runs):
    found, skipped = load_runs(expand_run_dirs([str(runs / "*")]))
    assert skipped == [] and [r.name for r in found] == ["a", "b", "c"]
    keys = differing_keys(found)
    assert keys == ["optim.lr"]  # the seed is no column
    rows = group_runs(found, keys)
    assert [[r.name for r in row.runs] for row in rows] == [["a", "b"], ["c"]]
    assert [row.config for row in rows] == [{"optim.lr": 0.001}, {"optim.lr": 0.002}]
    assert (rows[0].seeds, rows[0].status, rows[0].epochs) == ([0, 1], "finished", "1/1")
    s = rows[0].stats["final_mAP"]
    assert s.count == 2 and s.mean == pytest.approx(
        sum(json.loads((runs / n / "val" / "history.json").read_text())[0]["mAP"] for n in "ab") / 2)
    assert rows[1].stats["final_mAP"].count == 1 and rows[1].stats["final_mAP"].std is None
    for _title, headers, _cells in tables(rows, keys):
        assert "optim.lr" in headers and "train.seed" not in headers


def test_compare_table_mean_std_and_files(runs, tmp_path, capsys):
    copies = _copy_runs(runs, tmp_path / "runs")
    _set_map(copies / "a", [0.30], rbc_ap=0.10)
    _set_map(copies / "b", [0.50], rbc_ap=0.30)
    _set_map(copies / "c", [0.25, 0.20], rbc_ap=0.05)  # best at epoch 1, final at epoch 2
    (copies / "notes").mkdir()  # no config.json: listed, skipped
    out = tmp_path / "cmp"
    rows = compare_runs([str(copies / "*")], out, width=250)
    console = capsys.readouterr().out
    assert [[r.name for r in row.runs] for row in rows] == [["a", "b"], ["c"]]
    best = rows[0].stats["best_mAP"]
    assert (best.mean, best.std, best.count) == (pytest.approx(0.4), pytest.approx(0.141421356), 2)
    assert rows[1].stats["best_epoch"].mean == 1 and rows[1].stats["final_mAP"].mean == pytest.approx(0.2)
    assert "optim.lr" in console and "0.4000 ± 0.1414" in console and "0.2000 ± 0.1414" in console  # mAP, AP RBC
    assert "skipped (not training runs)" in console and "notes" in console
    # compare.csv: unrounded means, the std in <column>_std, n and the seeds
    with open(out / "compare.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert "optim.lr" in table[0] and "train.seed" not in table[0]
    r1, r2 = table
    assert (r1["runs"], r1["n"], r1["seeds"], r1["status"], r1["optim.lr"]) == ("a;b", "2", "0;1", "finished", "0.001")
    assert float(r1["best_mAP"]) == pytest.approx(0.4) and float(r1["best_mAP_std"]) == pytest.approx(0.1414214)
    assert float(r1["best_mAP50"]) == pytest.approx(0.65) and float(r1["AP_RBC"]) == pytest.approx(0.2)
    assert float(r1["AP_RBC_std"]) == pytest.approx(0.1414214) and r1["AP_WBC"] == r1["AP_WBC_std"] == ""
    assert (r2["n"], r2["optim.lr"], r2["best_mAP_std"], r2["epochs_done"]) == ("1", "0.002", "", "1")
    assert (float(r2["best_mAP"]), float(r2["final_mAP"]), float(r2["best_epoch"])) == (0.25, 0.2, 1.0)
    # compare.md: the same table, the best mean of a column in bold
    md = (out / "compare.md").read_text()
    assert "| 1 | a, b | 2 | finished | 0.001 | 1/1 |" in md
    assert "| 1 | 0.001 | 1 ± 0 | **0.4000 ± 0.1414** |" in md and "| 2 | 0.002 | 1 | 0.2500 |" in md
    assert "Skipped (not training runs, no config.json)" in md and "notes" in md
    assert "train.seed` share a row" in md and "`optim.lr`" in md
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_main_compare_task_and_its_errors(runs, tmp_path):
    out = tmp_path / "cmp"
    assert main(["--task", "compare", str(runs / "a"), str(runs / "*"), "--out", str(out)]) == 0
    with open(out / "compare.csv", newline="") as f:
        assert [r["runs"] for r in csv.DictReader(f)] == ["a;b", "c"]  # a named twice counts once
    assert main(["--task", "compare", str(tmp_path / "nothing*"), "--out", str(tmp_path / "x")]) == 2


def _fake_run(runs: Path, dest: Path, seed: int, info: dict | None, history: list | None = None) -> Path:
    """A run folder with run a's config (another seed), ``info`` as run_info.json and ``history``."""
    dest.mkdir(parents=True)
    config = json.loads((runs / "a" / "config.json").read_text())
    config["train"]["seed"] = seed
    (dest / "config.json").write_text(json.dumps(config))
    if info is not None:
        (dest / "run_info.json").write_text(json.dumps({"epochs_done": 0, "epochs_planned": 1, **info}))
    if history is not None:
        (dest / "val").mkdir()
        (dest / "val" / "history.json").write_text(json.dumps(history))
    return dest


def test_statuses_skipped_folders_and_missing_patterns(runs, tmp_path, capsys):
    d = tmp_path / "runs"
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process
    t0 = time.time()
    running = {"status": "running", "host": HOST, "started": now_iso(t0 - 60), "updated": now_iso(t0 - 30)}
    _fake_run(runs, d / "dead", 1, running | {"pid": dead.pid})
    _fake_run(runs, d / "alive", 2, running | {"pid": os.getpid(), "started": now_iso(t0)})  # began before the run
    _fake_run(runs, d / "remote_quiet", 3, running | {"pid": os.getpid(), "host": "elsewhere"})
    old = t0 - 3 * 3600
    os.utime(d / "remote_quiet" / "run_info.json", (old, old))  # nothing written for 3 h: crashed
    _fake_run(runs, d / "remote_busy", 4, running | {"pid": os.getpid(), "host": "elsewhere"})
    _fake_run(runs, d / "done", 5, {"status": "finished", "epochs_done": 1, "pid": 1, "host": HOST,
                                    "started": now_iso(t0 - 100), "ended": now_iso(t0 - 10)},
              history=[{"epoch": 1, "mAP": 0.3, "mAP50": 0.5, "mAP75": 0.2}])
    _fake_run(runs, d / "legacy", 6, None, history=[{"epoch": 1, "mAP": 0.1, "mAP50": 0.2, "mAP75": 0.0}])
    _fake_run(runs, d / "legacy_cut", 7, None)  # no run_info.json, no epoch trained
    (d / "cache").mkdir()
    (d / "bad").mkdir()
    (d / "bad" / "config.json").write_text('{"train": {"ep')  # cut: skipped with a warning, no crash
    rows = compare_runs([str(d / "*")], tmp_path / "cmp", width=250)
    console = capsys.readouterr().out
    status = {r.name: r.status for row in rows for r in row.runs}
    assert status == {"alive": "in progress", "dead": "crashed", "done": "finished", "legacy": "finished",
                      "legacy_cut": "unknown", "remote_busy": "in progress", "remote_quiet": "crashed"}
    (row,) = rows  # equal configs but for the seed: one row, its statuses counted
    assert row.status == "in progress ×2, crashed ×2, finished ×2, unknown ×1"
    assert row.stats["best_mAP"].count == 2 and "0.2000 ± 0.1414 (2/7)" in console
    assert "crashed ×2" in console and f"skipped (not training runs): {d / 'bad'}, {d / 'cache'}" in console
    for pattern in (str(d / "nomatch*"), str(tmp_path / "absent")):
        with pytest.raises(FileNotFoundError, match=re.escape(pattern)):
            compare_runs([pattern], tmp_path / "cmp2")
    with pytest.raises(FileNotFoundError, match="is a training run directory"):
        compare_runs([str(d / "cache")], tmp_path / "cmp3")
    with pytest.raises(FileNotFoundError, match="needs run directories"):
        compare_runs([], tmp_path / "cmp4")


def test_folder_named_like_a_glob_and_runs_named_twice(runs, tmp_path):
    odd = tmp_path / "exp[1]"
    shutil.copytree(runs / "a", odd, ignore=shutil.ignore_patterns("*.pth", "tb"))
    assert expand_run_dirs([str(odd), str(tmp_path / "exp*"), str(odd) + "/"]) == [odd]


def test_best_is_the_epoch_best_pth_holds(runs, tmp_path):
    hist = [{"epoch": e, "mAP": m, "mAP50": m, "mAP75": m} for e, m in ((1, -1.0), (2, 0.30), (3, 0.305), (4, 0.30))]
    run = _fake_run(runs, tmp_path / "r", 0, {"status": "finished", "epochs_done": 4, "epochs_planned": 4},
                    history=hist)
    values = load_run(run).values
    assert (values["best_epoch"], values["best_mAP"], values["final_mAP"]) == (3, 0.305, 0.30)
    config = json.loads((run / "config.json").read_text())
    config["train"]["min_delta"] = 0.01  # 0.305 is no improvement over 0.30: best.pth keeps epoch 2
    (run / "config.json").write_text(json.dumps(config))
    assert (load_run(run).values["best_epoch"], load_run(run).values["best_mAP"]) == (2, 0.30)


def test_differing_keys_ignore_number_spelling_and_mark_absent_keys():
    def summary(name: str, **config) -> RunSummary:
        return RunSummary(Path(name), config, "finished", 1, 1, [], [], {})
    found = [summary("a", **{"train.epochs": 1, "loss.level_weights": [4.0, 1.0], "train.seed": 0}),
             summary("b", **{"train.epochs": 1.0, "loss.level_weights": [4, 1], "train.seed": 1}),
             summary("c", **{"train.epochs": 1, "loss.level_weights": [4, 1], "assign.options.k": 9})]
    assert differing_keys(found) == ["assign.options.k"]
    rows = group_runs(found, ["assign.options.k"])
    assert [[r.name for r in row.runs] for row in rows] == [["a", "b"], ["c"]]
    _, headers, cells = tables(rows, ["assign.options.k"])[0]
    assert headers[4] == "assign.options.k" and [c[4][0] for c in cells] == ["(absent)", "9"]


def test_split_positionals_and_run_dirs_refused_by_other_tasks(tmp_path, monkeypatch):
    values = ["train.epochs=3", "runs/a", "runs/lr=0.1", "runs/*", "*lr=0.1*", "data.root=/data/x", "name=my run"]
    assert split_positionals(values) == (["train.epochs=3", "data.root=/data/x", "name=my run"],
                                         ["runs/a", "runs/lr=0.1", "runs/*", "*lr=0.1*"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr=0.1").mkdir()  # an existing folder is a run dir even without a "/"
    assert split_positionals(["lr=0.1", "optim.lr=0.1"]) == (["optim.lr=0.1"], ["lr=0.1"])
    args = parse_args(["--task", "compare", "runs/a", "train.epochs=3", "runs/b"])
    assert (args.overrides, args.run_dirs) == (["train.epochs=3"], ["runs/a", "runs/b"])
    from core.tasks import run_task
    with pytest.raises(ConfigError, match=r"'runs/a' is not an override.*--task train"):
        run_task(parse_args(["--config", "bccd_yolo_r18", "--task", "train", "runs/a", "train.epochs=1"]))
    assert not (tmp_path / "runs").exists()  # refused before any run dir was made
    assert main(["--config", "bccd_yolo_r18", "--task", "val", "runs/a"]) == 2


def test_plot_legend_keeps_every_run(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from utils.plots import plot_run_curves
    legends, save = [], Figure.savefig

    def spy(fig, *a, **kw):
        legends.append([t.get_text().strip() for t in fig.legends[0].get_texts()])
        return save(fig, *a, **kw)
    monkeypatch.setattr(Figure, "savefig", spy)
    curves = [{"label": "optim.lr=0.001 seed=0 (a)", "group": 0, "member": 0, "map": [(1, 0.1), (2, 0.2)],
               "loss": [(1, 3.0), (2, 2.5)]},
              {"label": "_scratch", "group": 1, "member": 0, "map": [], "loss": [(1, 3.1)]}]  # no validation yet
    path = plot_run_curves(curves, tmp_path / "deep" / "compare.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and legends == [["optim.lr=0.001 seed=0 (a)", "_scratch"]]


def test_long_values_are_cut_in_the_tables_and_whole_in_the_csv():
    anchors = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]]]
    found = [RunSummary(Path("a"), {"model.anchors": "auto"}, "finished", 1, 1, [], [], {}),
             RunSummary(Path("b"), {"model.anchors": anchors}, "finished", 1, 1, [], [], {})]
    rows = group_runs(found, ["model.anchors"])
    cells = [c[4][0] for c in tables(rows, ["model.anchors"])[0][2]]
    assert cells == ["auto", "[[[10, 13], [16, 30], […"] and len(cells[1]) == 24
    line = list(csv.reader(csv_text(rows, ["model.anchors"]).splitlines()))[2]
    assert json.loads(line[5]) == anchors
