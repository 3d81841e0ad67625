"""Training end to end on a tiny dataset. A resume restores every value of the training state (weights,
EMA, optimizer moments, schedule, scaler, position, best score, the global RNG streams) and continues
exactly as the uninterrupted run; a resume with another model or class list is refused."""
import copy
import json
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from loguru import logger
from tiny_data import make_tiny_voc, tiny_overrides

from configs import load_config
from core.loaders import build_train_loader
from core.train import Trainer
from core.train.state import check_resume_config, epoch_batches
from main import main
from utils.checkpoint import CheckpointError, load_checkpoint, rng_state
from utils.dist import DistInfo, seed_everything

CPU = DistInfo.single()
FAST = {"eval.plots": False, "eval.dashboard": False}
# The tiny run (tiny_overrides): 8 train images / batch 4 = 2 iterations per epoch, each an optimizer step;
# Adam at lr 1e-3 for 16 images, so 1e-3 * 4 / 16 = 2.5e-4 for a batch of 4; cosine to 0.05 over 2 epochs =
# 4 steps, warm-up round(0.5 * 2) = 1 step. The lr after step s >= 1: 2.5e-4 * (0.05 + 0.95 * (1 + cos(pi s / 4)) / 2).
LR_AFTER = {2: 2.5e-4 * 0.525,  # cos(pi / 2) = 0
            3: 2.5e-4 * (0.05 + 0.475 * (1 - 0.5 ** 0.5)),  # cos(3 pi / 4) = -1/sqrt(2): 4.7281e-5
            4: 2.5e-4 * 0.05}  # cos(pi) = -1: the floor, 1.25e-5


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp("tiny_voc"))


def cfg_for(root, **extra):
    return load_config("bccd_yolo_r18", tiny_overrides(root, **extra))


def assert_same_values(a, b, path: str = "") -> None:
    """``a`` equals ``b`` value by value, recursively: tensors in dtype, shape and every element, dicts in
    their keys, lists and tuples in length, anything else by ==. The message names the key path."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), path
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert torch.equal(a, b), f"{path}: differs by up to {(a.double() - b.double()).abs().max().item():.3g}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(map(str, a)) == sorted(map(str, b)), f"{path}: other keys"
        for k in a:
            assert_same_values(a[k], b[k], f"{path}.{k}" if path else str(k))
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_values(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), (path, a, b)  # NaN == NaN here


def stop_at_step(trainer: Trainer, step: int) -> None:
    """A stop request (as from SIGTERM) arriving while ``step`` runs, before its optimizer step reads
    the requests (a request after that read is honoured at the next optimizer step)."""
    real = trainer.stepper.host_flags

    def ask_then_read():
        if trainer.step == step:  # the step counter already counts the step being finished
            trainer.request_stop(signal.SIGTERM)
        return real()
    trainer.stepper.host_flags = ask_then_read


def test_resume_restores_the_saved_values_and_equals_the_uninterrupted_run(data_root, tmp_path):
    straight = Trainer(cfg_for(data_root, **FAST), CPU, tmp_path / "a")
    straight.fit()
    first = Trainer(cfg_for(data_root, **FAST), CPU, tmp_path / "b")
    first.fit(stop_after_epoch=1)
    saved = load_checkpoint(tmp_path / "b" / "last.pth")
    assert (saved["epoch"], saved["epoch_iter"], saved["step"], saved["last_opt_step"]) == (1, 0, 2, 2)
    assert saved["ema"]["updates"] == 2 and saved["scheduler"]["last_step"] == 2
    assert [g["lr"] for g in saved["optimizer"]["param_groups"]] == pytest.approx([LR_AFTER[2]] * 3)
    moments = saved["optimizer"]["state"]
    assert len(moments) == sum(1 for p in first.model.parameters() if p.requires_grad)
    assert all(int(s["step"]) == 2 and s["exp_avg"].abs().sum() > 0 for s in moments.values())
    assert saved["scaler"] == {}  # CPU: no fp16 GradScaler (a scaler's state: the mid-epoch test below)
    assert (saved["best_score"], saved["best_epoch"]) == (saved["metrics"]["mAP"], 1)
    resumed = Trainer(cfg_for(data_root, **FAST), CPU, tmp_path / "b", resume=str(tmp_path / "b" / "last.pth"))
    # Every value is the checkpoint's; the RNG states wait for the next epoch's batches (epoch_batches).
    assert_same_values(resumed.state_dict(rngs=saved["rng"]), saved)
    assert_same_values(resumed._pending_rng, saved["rng"][0])
    resumed.fit()
    a = load_checkpoint(tmp_path / "a" / "last.pth")
    b = load_checkpoint(tmp_path / "b" / "last.pth")
    assert a["step"] == 2 * straight.iters_per_epoch == 4 and a["ema"]["updates"] == 4
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == pytest.approx([LR_AFTER[4]] * 3)
    assert_same_values(b, a)  # weights, EMA, moments, schedule, RNG streams, metrics: the uninterrupted run's


def cpu_grad_scaler(monkeypatch) -> None:
    """The trainer's GradScaler made an enabled CPU one (fp16 AMP, and with it a scaler state, is CUDA
    only): scale 2**10, doubled after every finite optimizer step (growth_interval 1). Powers of two
    scale and unscale exactly, so training gives the same numbers."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda device, enabled=True: real("cpu", init_scale=2.0 ** 10, growth_interval=1))


def test_mid_epoch_resume_restores_every_value_and_takes_the_same_next_step(data_root, tmp_path, monkeypatch):
    cpu_grad_scaler(monkeypatch)
    first = Trainer(cfg_for(data_root, **FAST), CPU, tmp_path)
    stop_at_step(first, 3)  # epoch 2, iteration 1 of 2
    first.fit()
    saved = load_checkpoint(tmp_path / "last.pth")
    assert first.interrupted and (saved["epoch"], saved["epoch_iter"], saved["step"]) == (1, 1, 3)
    assert saved["scaler"]["scale"] == 2.0 ** 13 and saved["scaler"]["_growth_tracker"] == 0  # 3 doublings
    assert saved["ema"]["updates"] == 3 and saved["scheduler"]["last_step"] == 3
    assert [g["lr"] for g in saved["optimizer"]["param_groups"]] == pytest.approx([LR_AFTER[3]] * 3)
    assert saved["epoch_sums"]["total"] > 0 and saved["best_epoch"] == 1  # epoch 2's first loss; epoch 1 validated
    resumed = Trainer(cfg_for(data_root, **FAST), CPU, tmp_path, resume=str(tmp_path / "last.pth"))
    assert_same_values(resumed.state_dict(rngs=saved["rng"]), saved)
    assert resumed.stepper.scaler.get_scale() == 2.0 ** 13 and resumed.ema.updates == 3
    assert (resumed.epoch, resumed.epoch_iter, resumed.step, resumed.selection.best_epoch) == (1, 1, 3, 1)
    ema_weights = resumed.ema.ema.state_dict()
    assert any(not torch.equal(v, saved["model"][k]) for k, v in ema_weights.items())  # EMA is not the model
    assert_same_values(ema_weights, saved["ema"]["model"])
    # Epoch 2's last batch on both: the same weights, moments, EMA, scale (2**14) and lr afterwards.
    images, targets, _ = next(epoch_batches(resumed.train_loader, resumed.train_sampler, 1, 1, None))
    for t in (first, resumed):
        t.train_step(images, targets, flush=True)
    after = resumed.state_dict(rngs=[])
    assert_same_values(after, first.state_dict(rngs=[]))
    assert after["scaler"]["scale"] == 2.0 ** 14 and after["step"] == 4 and after["ema"]["updates"] == 4
    assert [g["lr"] for g in after["optimizer"]["param_groups"]] == pytest.approx([LR_AFTER[4]] * 3)


# -- the global RNG streams ------------------------------------------------------------------------
def draw() -> tuple[float, float, float]:
    """One value of each global RNG stream a training step could use: torch, NumPy, Python."""
    return torch.rand(1).item(), float(np.random.rand()), random.random()


def drawing_trainer(cfg, run_dir: Path, draws: list, resume: str | None = None, copies: Path | None = None):
    """A Trainer whose steps only draw from the global RNGs (the run is its loop, saves and resume) and
    whose validation is a fixed score. ``copies``: before step k + 1, last.pth (with
    train.save_interval_min tiny it holds the state after step k) is copied to copies/after<k>.pth."""
    t = Trainer(cfg, CPU, run_dir, resume=resume)

    def step(images, targets, flush=False):
        if copies is not None and (run_dir / "last.pth").is_file():
            shutil.copy(run_dir / "last.pth", copies / f"after{len(draws)}.pth")
        draws.append(draw())
        t.stepper.flags = t.control.local()  # what a real step's optimizer step agrees (one process)
        return {}
    t.train_step, t.validate = step, lambda: {"mAP": 0.5}
    return t


def test_resume_continues_the_global_rng_streams_exactly(data_root, tmp_path):
    """Mid-epoch 1, at the epoch boundary and mid-epoch 2: the resumed run's draws are the uninterrupted
    run's from that point (the augmentation is seeded per sample, so only a draw sees the global streams)."""
    cfg = lambda: cfg_for(data_root, **{"train.save_interval_min": 1e-9})  # noqa: E731 - last.pth after every step
    straight, copies = [], tmp_path / "copies"
    copies.mkdir()
    drawing_trainer(cfg(), tmp_path / "straight", straight, copies=copies).fit()
    assert len(set(straight)) == len(straight) == 4
    for k, position in ((1, (0, 1)), (2, (1, 0)), (3, (1, 1))):  # (epochs done, batches of the next done)
        ckpt = copies / f"after{k}.pth"
        assert (load_checkpoint(ckpt)["epoch"], load_checkpoint(ckpt)["epoch_iter"]) == position
        rest = []
        drawing_trainer(cfg(), tmp_path / f"resumed{k}", rest, resume=str(ckpt)).fit()
        assert rest == straight[k:], f"resumed after step {k}"


@pytest.mark.parametrize("start", [0, 1])
def test_epoch_batches_restores_the_rng_where_the_uninterrupted_run_had_it(data_root, start):
    """start 0: the state saved at the epoch's end is restored before the next epoch's iterator; start 1:
    the state saved after batch 1 is restored after the iterator. The real train loader, without its own
    generator (torch's default), so that its iterator draws a base seed from the global torch RNG."""
    loader, sampler = build_train_loader(cfg_for(data_root), CPU)
    loader.generator = None
    before = torch.get_rng_state()
    iter(loader)
    assert not torch.equal(torch.get_rng_state(), before)  # the order of restore and iterator shows
    seed_everything(1)
    saved = rng_state()  # an epoch-end save: taken before the next epoch's iterator
    batches = epoch_batches(loader, sampler, 1, 0, None)  # the uninterrupted epoch 2
    for _ in range(start):
        next(batches)
        saved = rng_state()  # an in-epoch save after this batch
    want_images, want = next(batches)[0], draw()
    seed_everything(2)  # the resumed process: other streams until epoch_batches restores
    images = next(epoch_batches(loader, sampler, 1, start, saved))[0]
    assert torch.equal(images, want_images)  # the batch the uninterrupted run took next
    assert draw() == want


# -- what a checkpoint holds; refused resumes -------------------------------------------------------
@pytest.fixture(scope="module")
def one_epoch(data_root, tmp_path_factory):
    """A finished one-epoch run: (run dir, the metrics fit returned, its steps, the RNG state after fit)."""
    run = tmp_path_factory.mktemp("one_epoch")
    t = Trainer(cfg_for(data_root, **{"train.epochs": 1}), CPU, run)
    metrics = t.fit()
    return run, metrics, t.step, rng_state()


def test_checkpoint_holds_the_full_training_state(one_epoch):
    run, metrics, steps, rng_after = one_epoch
    ck = load_checkpoint(run / "last.pth")
    assert (ck["epoch"], ck["epoch_iter"], ck["step"], steps, ck["ema"]["updates"]) == (1, 0, 2, 2, 2)
    assert ck["scheduler"] == {"last_step": 2, "total_steps": 2, "warmup_steps": 1}  # 1 epoch: 2 steps
    assert ck["class_names"] == ["RBC", "WBC", "Platelets"] == ck["config"]["data"]["class_names"]
    assert ck["config"]["data"]["img_size"] == 64 and ck["config"]["train"]["epochs"] == 1
    assert all(int(s["step"]) == 2 for s in ck["optimizer"]["state"].values())
    assert_same_values(ck["rng"], [rng_after])  # nothing drew from the RNGs after the save
    # The metrics fit returned are the validation's, saved in the checkpoint and val/metrics.json.
    on_disk = json.loads((run / "val" / "metrics.json").read_text())
    assert ck["metrics"] == {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    assert ck["metrics"]["mAP"] == on_disk["mAP"] == ck["best_score"] and ck["best_epoch"] == 1
    assert ck["metrics"]["num_images"] == 5  # every val image scored
    assert (run / "best.pth").is_file()  # the first measurable mAP is the best so far
    for f in ("metrics.json", "predictions.json", "ground_truth.json"):
        assert (run / "val" / f).stat().st_size > 0
    assert list((run / "tb").glob("events.*"))


def test_resume_of_finished_run_says_so(data_root, one_epoch, tmp_path):
    run, _, steps, _ = one_epoch
    again = Trainer(cfg_for(data_root, **{"train.epochs": 1}), CPU, tmp_path, resume=str(run / "last.pth"))
    messages = []
    sink = logger.add(messages.append, level="WARNING")
    try:
        again.fit()
    finally:
        logger.remove(sink)
    assert again.step == steps  # nothing trained
    assert any("already trained 1 of 1 epochs" in m for m in messages)


@pytest.mark.parametrize("key,value", [("data.class_names", ["WBC", "RBC", "Platelets"]),
                                       ("model.activation", "silu")])  # shapes unchanged: the weights would load
def test_resume_with_another_class_list_or_model_is_refused(data_root, one_epoch, tmp_path, key, value):
    ckpt = one_epoch[0] / "last.pth"
    old = {"data.class_names": ["RBC", "WBC", "Platelets"], "model.activation": "leaky_relu"}[key]
    errors = []
    sink = logger.add(lambda m: errors.append(str(m.record["message"])), level="ERROR")
    try:
        code = main(["--config", "bccd_yolo_r18", "--task", "train", "--ckpt", str(ckpt), "--out", str(tmp_path / "r")]
                    + tiny_overrides(data_root, **{"train.epochs": 2, key: value}))
    finally:
        logger.remove(sink)
    assert code == 2
    assert errors == [f"CheckpointError: {ckpt}: cannot resume with another model or class list ({key}: {old!r} -> "
                      f"{value!r}); to fine-tune from it, start a new run with train.init_weights='{ckpt}'"]
    assert not (tmp_path / "r" / "last.pth").exists()


def test_check_resume_config_refuses_model_and_class_changes_and_lists_the_others():
    saved = load_config("bccd_yolo_r18").to_dict()
    now = copy.deepcopy(saved)
    now["data"]["class_names"] = ["RBC", "WBC"]
    now["model"]["channel_sparsity"] = 0.5
    now["train"]["epochs"] = 50  # allowed, not listed among the refused keys
    with pytest.raises(CheckpointError) as refused:
        check_resume_config("x.pth", saved, now)
    assert str(refused.value) == (
        "x.pth: cannot resume with another model or class list (data.class_names: ['RBC', 'WBC', 'Platelets'] -> "
        "['RBC', 'WBC']; model.channel_sparsity: 0.75 -> 0.5); to fine-tune from it, start a new run with "
        "train.init_weights='x.pth'")
    allowed = copy.deepcopy(saved)
    allowed["model"]["pretrained"] = "w.pth"  # only the initial weights: resuming overwrites them anyway
    allowed["train"]["epochs"] = 50
    messages = []
    sink = logger.add(lambda m: messages.append(str(m.record["message"])), level="WARNING")
    try:
        check_resume_config("x.pth", saved, allowed)
        check_resume_config("x.pth", saved, copy.deepcopy(saved))  # no change: nothing said
    finally:
        logger.remove(sink)
    assert messages == ["resuming with config changes (checkpoint -> now): model.pretrained: '' -> 'w.pth'; "
                        "train.epochs: 40 -> 50"]


def test_non_finite_loss_steps_are_skipped_then_stop(data_root, tmp_path, monkeypatch):
    from core.train import NonFiniteLossError
    t = Trainer(cfg_for(data_root, **{"train.max_bad_steps": 2}), CPU, tmp_path)
    before = {k: v.clone() for k, v in t.model.named_parameters()}
    real = t.criterion

    def nan_loss(raw, targets, priors, **kw):
        loss, parts = real(raw, targets, priors, **kw)
        return loss * float("nan"), parts
    t.criterion = nan_loss
    with pytest.raises(NonFiniteLossError, match="step 2"):
        t.fit()
    for k, v in t.model.named_parameters():
        assert torch.equal(v, before[k]), k  # the skipped steps never reached the weights
    assert not (Path(tmp_path) / "last.pth").exists()
