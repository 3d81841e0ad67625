"""Quantisation-aware fine-tuning (``--task qat``) for TFLite INT8 deployment.

``QatFineTuner`` loads a checkpoint's (EMA) weights, scores the float model, rewrites it with the
fake quantisers of core/deploy/quant.py (the TFLite INT8 scheme: per-channel symmetric int8 weights of
the folded convolutions, per-tensor affine int8 activations), calibrates the activation ranges on
letterboxed training images, fine-tunes for ``qat.epochs`` epochs (BatchNorm statistics frozen
from ``qat.freeze_bn_epoch``), scores every epoch with the quantisers off and on, and writes the
best fake-quant epoch as ``qat.pth``, an ordinary checkpoint of the float model (``strip_qat``).
With ``qat.export_int8`` the result is exported as INT8 TFLite (core/deploy/export.py).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path

import torch
from loguru import logger
from torch import nn
from tqdm import tqdm

from core.deploy.export import export_model
from core.deploy.quant import calibrate, freeze_bn, prepare_qat, qat_summary, set_fake_quant, strip_qat
from core.deploy.wire import MissingDependencyError
from core.evaluation.evaluator import Evaluator
from core.loaders import build_eval_loader, build_train_loader
from core.train.step import TrainStep, read_floats
from core.weights import load_weights
from datasets import resolve_class_names
from datasets.dataset import to_input
from models import build_loss, build_model
from utils.checkpoint import save_checkpoint
from utils.dist import DistInfo, seed_everything, wrap_ddp
from utils.ema import ModelEMA
from utils.optim import build_optimizer
from utils.scheduler import build_scheduler


def load_float_model(cfg, ckpt: str, device: torch.device) -> nn.Module:
    """The checkpoint's (EMA) weights in cfg's model, trainable as a freshly built model is
    (load_weights freezes everything; frozen-by-design tensors such as the DFL bins stay frozen)."""
    model = load_weights(cfg, ckpt, device)
    ref_cfg = copy.deepcopy(cfg)
    ref_cfg.model.pretrained = ""  # the reference only tells which tensors train
    trainable = {n for n, p in build_model(ref_cfg).named_parameters() if p.requires_grad}
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    return model


def qat_table(rows: list[dict], best_epoch: int) -> str:
    """The per-epoch table: float mAP (quantisers off) and fake-quant mAP of the same weights."""
    lines = ["epoch  BN        float mAP  fake-quant mAP  fq - float",
             "-----  --------  ---------  --------------  ----------"]
    for r in rows:
        mark = "  <- best" if r["epoch"] == best_epoch else ""
        lines.append(f"{r['epoch']:>5}  {r['bn']:<8}  {r['float_mAP']:>9.4f}  {r['fake_quant_mAP']:>14.4f}  "
                     f"{r['fake_quant_mAP'] - r['float_mAP']:>+10.4f}{mark}")
    return "\n".join(lines)


class QatFineTuner:
    """Fake-quantised fine-tuning of a checkpoint: calibrate, evaluate, train cfg.qat.epochs epochs
    (BN frozen from cfg.qat.freeze_bn_epoch), evaluate each epoch, keep the best.

    Reuses the trainer's pieces: loaders (core.loaders), loss (models.build_loss), optimizer
    parameter groups (no weight decay on norms and biases), the per-iteration schedule, the
    training step with its non-finite guard (core.train.step.TrainStep, which also restores the
    observers a skipped step moved), the EMA and the Evaluator. Epoch 0 of the results is the
    calibrated model before any training (post-training quantisation).
    """

    def __init__(self, cfg, dist, run_dir: Path, ckpt: str) -> None:
        self.cfg, self.dist, self.run_dir, self.ckpt = cfg, dist, Path(run_dir), str(ckpt)
        self.device = dist.device
        seed_everything(cfg.train.seed, dist.rank, cfg.train.deterministic)
        self.model = load_float_model(cfg, ckpt, self.device)
        resolve_class_names(cfg)
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        tcfg = copy.deepcopy(cfg)  # the loaders' view: the QAT batch and epoch count (cfg stays as given)
        tcfg.train.batch_size, tcfg.train.epochs = cfg.qat.batch_size, max(1, cfg.qat.epochs)
        self.train_loader, self.train_sampler = build_train_loader(tcfg, dist)
        # Every rank calibrates on the same images, so the ranges agree without a collective.
        single = DistInfo.single(dist.device)
        self.calib_loader = build_eval_loader(cfg, single, "train")
        self.val_loader = build_eval_loader(cfg, dist, "val")
        self.evaluator = Evaluator(cfg, self.val_loader.dataset.records, dist)
        self.criterion = build_loss(cfg, self.model)
        self.rows: list[dict] = []
        self.best: dict = {"epoch": -1, "mAP": -1.0, "state": None, "metrics": {}}

    # -- steps ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Float mAP of the checkpoint, then prepare_qat and calibration on training images."""
        out = self.run_dir / "val_float" if self.dist.is_main else None
        self.float_mAP = float(self.evaluator.run(self.model, self.val_loader, out)["mAP"])
        prepare_qat(self.model)
        logger.info(f"prepare_qat: {qat_summary(self.model)}")
        e = self.cfg.eval
        limit = max(1, math.ceil(self.cfg.export.calib_count / e.batch_size))
        batches = (to_input(imgs, self.device, self.memory_format)
                   for i, (imgs, _, _) in zip(range(limit), self.calib_loader))
        seen = calibrate(self.model, batches)
        self.calib_loader = None  # its worker processes are not needed any more
        logger.info(f"calibrated the activation ranges on {seen} training images (export.calib_count="
                    f"{self.cfg.export.calib_count}, letterboxed, no augmentation)")

    def build_training(self) -> None:
        cfg = self.cfg
        name = "sgd" if cfg.optim.name == "sgd" else "adamw"
        optim_cfg = dataclasses.replace(cfg.optim, name=name, lr=cfg.qat.lr, base_batch=cfg.qat.batch_size,
                                        nominal_batch=0)
        optimizer = build_optimizer(optim_cfg, self.model, cfg.qat.batch_size)
        iters = len(self.train_loader)
        warmup = max(1, min(100, iters // 4))  # short: the weights are trained already
        sched_cfg = dataclasses.replace(cfg.sched, name="linear", min_lr_ratio=1.0, warmup_epochs=0.0,
                                        warmup_min_iters=warmup, warmup_start_factor=0.1, warmup_bias_lr=0.0,
                                        warmup_momentum=0.0)
        scheduler = build_scheduler(sched_cfg, optimizer, iters, max(1, cfg.qat.epochs))
        self.ema = ModelEMA(self.model, cfg.train.ema_decay, cfg.train.ema_tau) if cfg.train.ema else None
        self.stepper = TrainStep(self.model, self.criterion, optimizer, scheduler, self.ema, device=self.device,
                                 memory_format=self.memory_format, grad_clip=cfg.optim.grad_clip,
                                 max_bad_steps=cfg.train.max_bad_steps)  # fp32: fake quantisation under AMP is not TFLite's
        self.stepper.ddp_model = wrap_ddp(self.model, self.dist)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of fake-quantised training; returns the mean loss terms."""
        if epoch >= self.cfg.qat.freeze_bn_epoch and not bool(self.model.qat.bn_frozen):
            freeze_bn(self.model)
            logger.info(f"epoch {epoch + 1}: BatchNorm statistics frozen (qat.freeze_bn_epoch="
                        f"{self.cfg.qat.freeze_bn_epoch})")
        self.model.train()
        self.train_sampler.set_epoch(epoch)
        self.train_loader.dataset.set_epoch(epoch)
        sums: dict = {}  # device tensors: read once at the epoch's end
        n = max(1, len(self.train_loader))
        bar = tqdm(self.train_loader, desc=f"qat {epoch + 1}/{self.cfg.qat.epochs}",
                   disable=not self.dist.is_main, dynamic_ncols=True, leave=False)
        for i, (images, targets, _) in enumerate(bar):
            for k, v in self.stepper(images, targets, flush=i == n - 1).items():
                sums[k] = sums.get(k, 0.0) + v.double()
        return {k: round(v / n, 4) for k, v in read_floats(sums).items()}

    def evaluate(self, epoch: int) -> None:
        """Float and fake-quant mAP of the evaluated weights (EMA when on); keeps the best."""
        net = self.ema.ema if getattr(self, "ema", None) is not None else self.model
        set_fake_quant(net, False)
        float_map = float(self.evaluator.run(net, self.val_loader)["mAP"]) if epoch else self.float_mAP
        set_fake_quant(net, True)
        out = self.run_dir / "val" if self.dist.is_main else None
        metrics = self.evaluator.run(net, self.val_loader, out, epoch=epoch)
        bn = "-" if epoch == 0 else "frozen" if epoch - 1 >= self.cfg.qat.freeze_bn_epoch else "updating"
        self.rows.append({"epoch": epoch, "bn": bn, "float_mAP": float_map,
                          "fake_quant_mAP": float(metrics["mAP"])})
        logger.info(f"qat epoch {epoch}: float mAP {float_map:.4f}, fake-quant mAP {metrics['mAP']:.4f}")
        if math.isfinite(metrics["mAP"]) and metrics["mAP"] > self.best["mAP"]:
            self.best = {"epoch": epoch, "mAP": float(metrics["mAP"]), "state": strip_qat(net).state_dict(),
                         "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)}}
        self.save()

    def save(self) -> Path | None:
        """qat.pth: the best epoch's float weights (a normal checkpoint: --task val / export read it)."""
        if not self.dist.is_main or self.best["state"] is None:
            return None
        state = {"model": self.best["state"], "config": self.cfg.to_dict(),
                 "class_names": list(self.cfg.data.class_names), "epoch": int(self.best["epoch"]),
                 "metrics": dict(self.best["metrics"]),
                 "qat": {"source": self.ckpt, "best_epoch": int(self.best["epoch"]), "rows": list(self.rows),
                         "float_mAP": float(self.float_mAP), "epochs": int(self.cfg.qat.epochs),
                         "freeze_bn_epoch": int(self.cfg.qat.freeze_bn_epoch)}}
        path = self.run_dir / "qat.pth"
        save_checkpoint(state, path)
        return path

    def fit(self) -> dict:
        """The whole run; returns a summary (plain data)."""
        t0 = time.time()
        self.prepare()
        self.build_training()
        self.evaluate(0)
        for epoch in range(self.cfg.qat.epochs):
            t1 = time.time()
            losses = self.train_epoch(epoch)
            logger.info(f"qat epoch {epoch + 1}/{self.cfg.qat.epochs}: losses {losses} "
                        f"({time.time() - t1:.0f} s)")
            self.evaluate(epoch + 1)
        best = self.best["epoch"]
        logger.info(f"QAT results on {self.cfg.data.val_sets} (mAP@[.5:.95]; epoch 0 = calibrated, before "
                    f"fine-tuning; BN = state during the epoch):\n{qat_table(self.rows, best)}")
        logger.info(f"qat.pth = epoch {best} (fake-quant mAP {self.best['mAP']:.4f}; float checkpoint "
                    f"{self.float_mAP:.4f}) in {self.run_dir} ({time.time() - t0:.0f} s)")
        return {"rows": list(self.rows), "best_epoch": best, "float_mAP": self.float_mAP,
                "checkpoint": str(self.run_dir / "qat.pth")}

    def best_float_model(self) -> nn.Module:
        """The float model (strip_qat) holding the best epoch's weights, in eval mode."""
        model = strip_qat(self.model)
        model.load_state_dict(self.best["state"])
        return model.eval()


def export_int8(cfg, model: nn.Module, run_dir: Path) -> dict[str, Path]:
    """ONNX and INT8 TFLite files of ``model`` in ``run_dir`` (core.deploy.export.export_model with
    export.formats = ["onnx", "tflite_int8"]); {} with a warning when the export extra
    (requirements-export.txt) is not installed."""
    ecfg = copy.deepcopy(cfg)
    ecfg.export.formats = ["onnx", "tflite_int8"]
    try:
        return export_model(ecfg, model, run_dir)
    except (MissingDependencyError, ImportError) as e:
        logger.warning(f"qat.export_int8: no INT8 TFLite written, the export extra is missing ({e}). "
                       "Install it with `pip install -r requirements-export.txt`, then run --task export "
                       f"--ckpt {Path(run_dir) / 'qat.pth'} export.formats=['tflite_int8']; qat.pth is saved")
        return {}


def run_qat(cfg, args, dist, run_dir: Path) -> dict:
    """--task qat --ckpt best.pth: fake-quantised fine-tuning, qat.pth in run_dir, and (with
    qat.export_int8) an INT8 TFLite export of the result. Returns the summary of QatFineTuner.fit
    plus ``exported`` ({format: path}, rank 0)."""
    tuner = QatFineTuner(cfg, dist, run_dir, args.ckpt)
    summary = tuner.fit()
    summary["exported"] = {}
    if cfg.qat.export_int8 and dist.is_main:
        paths = export_int8(cfg, tuner.best_float_model(), Path(run_dir))
        summary["exported"] = {k: str(v) for k, v in paths.items()}
        for fmt, path in paths.items():
            logger.info(f"exported {fmt}: {path}")
    return summary
