"""Cross-field checks of a config. Each error names the key and what to do."""
from __future__ import annotations

import math
import re
from typing import Any

from configs.errors import ConfigError

METRIC_KEYS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR1", "AR10", "AR100")  # COCO stats
EXPORT_FORMATS = ("onnx", "saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8")
BENCH_DEVICES = ("auto", "cpu", "cuda", "all")
TASKS = ("train", "val", "predict", "debug", "benchmark", "export", "qat", "compare")
MIN_OPSET = 11  # NonMaxSuppression with center_point_box, TopK with a tensor k

CHOICES = {
    "task": TASKS,
    "model.activation": ("relu", "leaky_relu", "silu", "mish", "hardswish"),
    "loss.box": ("iou", "giou", "diou", "ciou"),
    "loss.obj_target": ("iou", "constant"),
    "optim.name": ("sgd", "adam", "adamw"),
    "sched.name": ("cosine", "linear", "step", "one_cycle"),
    "eval.backend": ("faster_coco_eval", "pycocotools"),
    "debug.split": ("train", "val"),
    "debug.mode": ("assign", "samples", "dataset"),
    "train.amp_dtype": ("fp16", "bf16"),
    "data.cache_images": ("none", "ram", "disk"),
    "eval.bench_device": BENCH_DEVICES,
    "train.monitor": METRIC_KEYS,
}


def validate_config(cfg: Any) -> None:
    """Every rule the config itself can check; the registries are checked by the packages that own
    them (models.check_config, datasets.check_config, passed to BaseConfig.validate)."""
    for key, choices in CHOICES.items():
        if cfg.get(key) not in choices:
            raise ConfigError(f"{key}={cfg.get(key)!r} is not one of {list(choices)}")
    _check_name(cfg.name)
    names = cfg.data.class_names
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"data.class_names has duplicates: {dup}")
    if cfg.data.img_size % max(cfg.model.strides) or cfg.data.img_size <= 0:
        raise ConfigError(f"data.img_size={cfg.data.img_size} must be a positive multiple of "
                          f"the largest stride {max(cfg.model.strides)}")
    _check_anchors(cfg)
    ms, stride = cfg.train.multi_scale, max(cfg.model.strides)
    if ms and (len(ms) != 2 or not 0 < ms[0] <= ms[1] or math.ceil(ms[0] / stride) * stride > ms[1]):
        raise ConfigError(f"train.multi_scale={ms} must be [min, max] input sides (pixels) holding a multiple of "
                          f"the largest stride {stride}, or [] (off)")
    if cfg.train.cudnn_benchmark and cfg.train.deterministic:
        raise ConfigError("train.cudnn_benchmark=True picks convolution algorithms by timing them, which "
                          "train.deterministic=True rules out: set one of them to False")
    if not 0.0 < cfg.model.channel_sparsity <= 4.0:
        raise ConfigError(f"model.channel_sparsity={cfg.model.channel_sparsity} must be in (0, 4]")
    if not isinstance(cfg.assign.options, dict) or any(not isinstance(k, str) for k in cfg.assign.options):
        raise ConfigError(f"assign.options={cfg.assign.options!r} must be a dict of option names of "
                          f"assign.method, e.g. {{'topk': 13}}")
    _check_data_and_aug(cfg)
    lo, hi = cfg.aug.scale
    if not 0 < lo <= hi:
        raise ConfigError(f"aug.scale={cfg.aug.scale} must be (low, high) with 0 < low <= high")
    for key in ("train.epochs", "train.batch_size", "eval.batch_size", "eval.max_det", "predict.max_det"):
        if cfg.get(key) <= 0:
            raise ConfigError(f"{key}={cfg.get(key)} must be positive")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr} must be positive")
    _check_training(cfg)
    _check_eval(cfg)
    _check_predict(cfg)
    _check_deploy(cfg)


def _check_training(cfg: Any) -> None:
    """Optimizer, schedule, freezing, checkpoint selection and early stopping."""
    for key in ("optim.weight_decay", "optim.grad_clip", "optim.nominal_batch", "sched.warmup_epochs",
                "sched.warmup_min_iters", "sched.warmup_bias_lr", "train.freeze_epochs", "train.min_delta",
                "train.patience", "train.save_top_k", "train.save_interval_min"):
        if cfg.get(key) < 0:
            raise ConfigError(f"{key}={cfg.get(key)} must not be negative")
    for key in ("optim.base_batch", "train.max_bad_steps"):
        if cfg.get(key) < 1:
            raise ConfigError(f"{key}={cfg.get(key)} must be at least 1")
    for key in ("optim.momentum", "sched.warmup_momentum"):
        if not 0.0 <= cfg.get(key) < 1.0:
            raise ConfigError(f"{key}={cfg.get(key)} must be in [0, 1)")
    for key in ("sched.warmup_start_factor", "sched.min_lr_ratio"):
        _range(cfg, key, 0.0, 1.0)
    s = cfg.sched
    if s.name == "step":
        if not s.step_epochs or any(not isinstance(e, (int, float)) or e <= 0 for e in s.step_epochs) \
                or list(s.step_epochs) != sorted(s.step_epochs):
            raise ConfigError(f"sched.step_epochs={s.step_epochs} must list increasing positive epochs for "
                              "sched.name='step', e.g. [30, 40]")
        if not 0.0 < s.step_gamma <= 1.0:
            raise ConfigError(f"sched.step_gamma={s.step_gamma} must be in (0, 1]")
    if not 0.0 < s.one_cycle_pct < 1.0:
        raise ConfigError(f"sched.one_cycle_pct={s.one_cycle_pct} must be in (0, 1)")
    if s.one_cycle_div < 1.0:
        raise ConfigError(f"sched.one_cycle_div={s.one_cycle_div} must be at least 1")
    if cfg.train.dist_timeout_min <= 0:
        raise ConfigError(f"train.dist_timeout_min={cfg.train.dist_timeout_min} must be positive (minutes a "
                          "collective may wait before the job fails)")
    if any(not isinstance(e, str) or not e for e in cfg.train.freeze):
        raise ConfigError(f"train.freeze={cfg.train.freeze} must list non-empty strings: 'backbone' or "
                          "module prefixes / fnmatch patterns of parameter names")


def _check_eval(cfg: Any) -> None:
    """eval.* and the class ids the results are written with."""
    e = cfg.eval
    for key, value, lo, hi in (("eval.conf_prod", e.conf_prod, 0.0, 1.0), ("eval.match_iou", e.match_iou, 1e-6, 1.0)):
        if not lo <= value <= hi:
            raise ConfigError(f"{key}={value} must be in [{lo:g}, {hi:g}]")
    if e.conf_prod < e.conf_thres:
        raise ConfigError(f"eval.conf_prod={e.conf_prod} is below eval.conf_thres={e.conf_thres}: detections "
                          "under conf_thres are dropped before scoring; lower eval.conf_thres")
    if any(not 0.0 <= float(c) <= 1.0 for c in e.sweep_confs):
        raise ConfigError(f"eval.sweep_confs={e.sweep_confs} must hold confidences in [0, 1]")
    for key in ("eval.max_images", "eval.bench_warmup", "eval.rect_pad"):
        if cfg.get(key) < 0:
            raise ConfigError(f"{key}={cfg.get(key)} must be >= 0")
    for key in ("eval.trend_epochs", "eval.bench_iters", "eval.bench_batch"):
        if cfg.get(key) <= 0:
            raise ConfigError(f"{key}={cfg.get(key)} must be positive")
    ids, nc = cfg.data.category_ids, cfg.num_classes
    if ids and nc and (len(ids) != nc or len(set(ids)) != nc):
        raise ConfigError(f"data.category_ids={list(ids)} must hold {nc} distinct ids, one per class of "
                          f"data.class_names={list(cfg.data.class_names)} (or be [] for 1..nc)")


def _check_predict(cfg: Any) -> None:
    """predict.* counts and the stream deadline."""
    for key in ("predict.batch_size", "predict.video_stride", "predict.stream_timeout_s"):
        if cfg.get(key) <= 0:
            raise ConfigError(f"{key}={cfg.get(key)} must be positive")
    if cfg.predict.max_frames < 0:
        raise ConfigError(f"predict.max_frames={cfg.predict.max_frames} must be >= 0 (0 = all frames)")


def _check_deploy(cfg: Any) -> None:
    """export.* and qat.*."""
    e, p, q = cfg.export, cfg.predict, cfg.qat
    bad = [f for f in e.formats if f not in EXPORT_FORMATS]
    if not e.formats or bad:
        raise ConfigError(f"export.formats={list(e.formats)}: {'unknown ' + str(bad) if bad else 'empty'}; "
                          f"valid: {list(EXPORT_FORMATS)}")
    if e.opset < MIN_OPSET:
        raise ConfigError(f"export.opset={e.opset} must be >= {MIN_OPSET}")
    if e.calib_count <= 0 and "tflite_int8" in e.formats:
        raise ConfigError(f"export.calib_count={e.calib_count} must be positive for tflite_int8")
    if e.nms and not (0.0 <= p.conf_thres < 1.0 and 0.0 < p.nms_iou <= 1.0 and p.max_det > 0):
        raise ConfigError(f"export.nms=True takes predict.conf_thres={p.conf_thres} (in [0, 1)), "
                          f"predict.nms_iou={p.nms_iou} (in (0, 1]) and predict.max_det={p.max_det} (> 0)")
    if q.epochs < 0:
        raise ConfigError(f"qat.epochs={q.epochs} must be >= 0 (0: calibrate and evaluate only)")
    if not (math.isfinite(q.lr) and q.lr > 0):
        raise ConfigError(f"qat.lr={q.lr} must be a positive learning rate")
    if q.freeze_bn_epoch < 0:
        raise ConfigError(f"qat.freeze_bn_epoch={q.freeze_bn_epoch} must be >= 0 (0 = BN frozen throughout)")
    if q.batch_size < 1:
        raise ConfigError(f"qat.batch_size={q.batch_size} must be >= 1")


def _check_data_and_aug(cfg: Any) -> None:
    for key in ("aug.mosaic_prob", "aug.mosaic_9_prob", "aug.mixup_prob", "aug.cutmix_prob", "aug.hflip_prob",
                "aug.vflip_prob", "aug.extras_prob", "aug.min_visibility", "aug.hsv_h", "aug.hsv_s",
                "aug.hsv_v", "aug.translate"):
        _range(cfg, key, 0.0, 1.0)
    _range(cfg, "aug.degrees", 0.0, 180.0)
    _range(cfg, "aug.shear", 0.0, 89.0)
    _range(cfg, "aug.perspective", 0.0, 0.001)  # larger values fold the 2x canvas over itself
    for key in ("aug.mixup_beta", "aug.cutmix_beta"):
        if cfg.get(key) <= 0:
            raise ConfigError(f"{key}={cfg.get(key)} must be positive (a Beta distribution parameter)")
    if cfg.aug.max_aspect_ratio <= 1:
        raise ConfigError(f"aug.max_aspect_ratio={cfg.aug.max_aspect_ratio} must be greater than 1")
    for key in ("aug.close_mosaic_epochs", "aug.min_box_size", "data.num_workers", "data.loader_timeout_s"):
        if cfg.get(key) < 0:
            raise ConfigError(f"{key}={cfg.get(key)} must not be negative")
    if cfg.data.mosaic_buffer < -1:
        raise ConfigError(f"data.mosaic_buffer={cfg.data.mosaic_buffer} must be -1 (auto), 0 (off) or a number of images")
    if cfg.data.prefetch_factor < 1:
        raise ConfigError(f"data.prefetch_factor={cfg.data.prefetch_factor} must be at least 1")
    if not 0.0 < cfg.data.data_fraction <= 1.0:
        raise ConfigError(f"data.data_fraction={cfg.data.data_fraction} must be in (0, 1]")
    needs_key = cfg.data.encrypt_cache or cfg.data.image_loader.endswith("EncryptedLoader")
    if needs_key and not cfg.data.key_env:
        raise ConfigError("data.encrypt_cache / the encrypted image loader need data.key_env: the name of "
                          "the environment variable holding the key (never the key itself)")
    if (cfg.data.image_loader.endswith("EncryptedLoader") and cfg.data.cache_images != "none"
            and not cfg.data.encrypt_cache):
        raise ConfigError(f"data.cache_images={cfg.data.cache_images!r} with the encrypted image loader would "
                          "keep the decrypted images in plain form: set data.encrypt_cache=True (the cache is "
                          "then encrypted with the same key) or data.cache_images='none'")


def _check_anchors(cfg: Any) -> None:
    n_lv = len(cfg.model.strides)
    if len(cfg.loss.level_weights) != n_lv:
        raise ConfigError(f"loss.level_weights ({len(cfg.loss.level_weights)}) must have one entry per stride "
                          f"({n_lv})")
    anchors = cfg.model.anchors
    if anchors == "auto":
        return
    if len(anchors) != n_lv:
        raise ConfigError(f"model.anchors ({len(anchors)} levels) must have one entry per stride ({n_lv}), or be "
                          "'auto' (fitted to the train boxes)")
    if len({len(lv) for lv in anchors}) != 1 or any(len(a) != 2 or min(a) <= 0 for lv in anchors for a in lv):
        raise ConfigError("model.anchors must list the same number of positive [w, h] pairs per level")


_NAME = re.compile(r"[\w+-][\w.+-]*")


def _check_name(name: str) -> None:
    """``name`` names run directories: a plain file name, never a path."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"name={name!r} must be a plain name (letters, digits, _ . + -, not starting with "
                          "a dot): run directories are named after it")


def _range(cfg: Any, key: str, lo: float, hi: float) -> None:
    v = cfg.get(key)
    if not lo <= v <= hi:
        raise ConfigError(f"{key}={v} must be in [{lo}, {hi}]")
