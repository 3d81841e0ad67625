"""BaseConfig: every knob of an experiment, grouped in small sections.

An experiment is a subclass that changes only what differs, in ``__init__``::

    class BccdYoloR18(BaseConfig):
        def __init__(self):
            super().__init__()
            self.model.backbone = "resnet18"

A config file is Python and is executed when loaded: only run configs you trust.
Checkpoints store ``to_dict()`` (plain data), never the class, so val/predict/export
from a checkpoint do not import the config module.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

COCO_ANCHORS = [
    [[10, 13], [16, 30], [33, 23]],  # stride 8
    [[30, 61], [62, 45], [59, 119]],  # stride 16
    [[116, 90], [156, 198], [373, 326]],  # stride 32
]


@dataclass
class DataCfg:
    format: str = "voc"  # dataset layout: "voc" (registry datasets.DATASETS)
    root: str = "data/BCCD"  # dataset root; a relative path resolves against the repo root
    train_sets: list = field(default_factory=lambda: ["train"])  # VOC "YEAR/SET" or "SET" (root is one year dir)
    val_sets: list = field(default_factory=lambda: ["val"])  # image sets scored by --task val
    class_names: list = field(default_factory=list)  # [] = sorted names found in the train annotations
    img_size: int = 416  # square network input side, pixels (multiple of 32)
    difficult_as_ignore: bool = True  # VOC difficult=1 objects become ignore regions (not positives, not negatives)
    strict: bool = False  # True: bad training data raises instead of being skipped with a warning
    allow_outside_root: bool = False  # True: image paths may resolve outside the dataset root
    num_workers: int = 2  # DataLoader worker processes per rank (0 = load in the main process)
    pin_memory: bool = True  # page-locked host memory for faster host-to-GPU copies (CUDA only)


@dataclass
class AugCfg:
    mosaic_prob: float = 0.5  # probability that a training sample is a 2x2 mosaic of four images
    scale: tuple = (0.5, 1.5)  # random scale range applied after letterbox, as a factor of img_size
    translate: float = 0.1  # random shift, fraction of img_size
    degrees: float = 0.0  # random rotation range, +- degrees
    shear: float = 0.0  # random shear range, +- degrees
    perspective: float = 0.0  # perspective distortion strength (albumentations Perspective scale max)
    hflip_prob: float = 0.5  # probability of a left-right flip
    vflip_prob: float = 0.0  # probability of an up-down flip
    brightness: float = 0.2  # colour jitter: brightness factor range +-
    contrast: float = 0.2  # colour jitter: contrast factor range +-
    saturation: float = 0.5  # colour jitter: saturation factor range +-
    hue: float = 0.015  # colour jitter: hue shift range +-, fraction of the hue circle
    color_prob: float = 0.8  # probability of applying the colour jitter
    min_box_size: float = 2.0  # boxes narrower or shorter than this after augmentation are dropped, pixels
    min_visibility: float = 0.25  # boxes keeping less than this fraction of their area after cropping are dropped


@dataclass
class ModelCfg:
    name: str = "yolo"  # detector family (registry models.MODELS)
    backbone: str = "resnet18"  # resnet18 | resnet34 | resnet50 | darknet53 | darknet_tiny
    channel_sparsity: float = 0.75  # width factor applied to every conv layer's channel count (1.0 = full width)
    activation: str = "leaky_relu"  # relu | leaky_relu | silu | mish | hardswish
    neck: str = "spp_pan"  # feature pyramid: SPP on the deepest map, then a top-down + bottom-up PAN
    neck_channels: list = field(default_factory=lambda: [128, 256, 512])  # neck output channels per level before channel_sparsity
    strides: list = field(default_factory=lambda: [8, 16, 32])  # output strides of the three head levels, pixels
    anchors: list = field(default_factory=lambda: [list(map(list, lv)) for lv in COCO_ANCHORS])  # per level, per anchor [w, h] in pixels at a 640 input
    anchor_ref_size: int = 640  # input side the anchors are given for; they are scaled by img_size / anchor_ref_size
    pretrained: str = ""  # local path of a backbone state dict (e.g. torchvision ResNet ImageNet weights); "" = from scratch
    obj_bias_prior: float = 0.01  # initial objectness probability (sets the head bias)


@dataclass
class AssignCfg:
    method: str = "nearby_grid"  # single_grid | nearby_grid | all_grid (registry models.assigners.ASSIGNERS)
    match_iou_thres: float = 0.0625  # a prior matches a GT when IoU(prior box, GT) >= this
    filter_by_max_iou: bool = True  # a slot claimed by several GTs keeps only the GT of highest IoU
    ensure_one_match: bool = True  # a GT with no prior above the threshold still gets its best-IoU prior


@dataclass
class LossCfg:
    box: str = "ciou"  # iou | giou | diou | ciou
    box_weight: float = 5.0  # weight of the box term
    obj_weight: float = 1.0  # weight of the objectness term on positive slots
    noobj_weight: float = 1.0  # weight of the objectness term on negative slots (0 = no no-object term)
    cls_weight: float = 1.0  # weight of the class term
    focal_gamma: float = 0.0  # focal modulation of objectness and class BCE (0 = plain BCE)
    obj_target: str = "iou"  # objectness target on positives: "iou" (detached IoU of the decoded box) or "constant" (1)
    level_weights: list = field(default_factory=lambda: [4.0, 1.0, 0.4])  # objectness weight per head level (stride 8, 16, 32)
    ignore_iou: float = 0.5  # negatives whose decoded box overlaps an ignore region above this IoU get no objectness loss
    label_smoothing: float = 0.0  # class target smoothing epsilon


@dataclass
class OptimCfg:
    name: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3  # base learning rate for `base_batch` images per step
    base_batch: int = 16  # global batch at which `lr` applies; lr scales linearly with the global batch
    momentum: float = 0.937  # SGD momentum / Adam beta1
    weight_decay: float = 5e-4  # applied to conv/linear weights only (not to norms and biases)
    nesterov: bool = True  # SGD only
    grad_clip: float = 10.0  # max global gradient norm (0 = no clipping)


@dataclass
class SchedCfg:
    name: str = "cosine"  # learning-rate schedule after warm-up (cosine)
    warmup_epochs: float = 3.0  # linear warm-up length, epochs (fractions allowed)
    warmup_start_factor: float = 0.01  # lr at step 0, as a fraction of the base lr
    min_lr_ratio: float = 0.05  # final lr as a fraction of the base lr


@dataclass
class TrainCfg:
    epochs: int = 40  # training epochs
    batch_size: int = 16  # global batch (all ranks together), images
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    ema: bool = True  # keep an exponential moving average of the weights (used for val and best)
    ema_decay: float = 0.9999  # asymptotic EMA decay
    ema_tau: float = 2000.0  # EMA warm-up: decay = ema_decay * (1 - exp(-updates / ema_tau))
    seed: int = 0  # seed of Python, NumPy, torch and the DataLoader workers
    deterministic: bool = False  # torch deterministic algorithms (slower)
    eval_interval: int = 1  # validate every N epochs (and always after the last)
    save_dir: str = "runs"  # parent of run directories when --out is not given
    log_interval: int = 10  # iterations between TensorBoard loss scalars
    max_bad_steps: int = 10  # consecutive non-finite losses before training stops with an error
    num_threads: int = 0  # torch intra-op CPU threads per rank (0 = cores / local world size)
    channels_last: bool = True  # NHWC memory format for the model and inputs (faster convs on CPU and with AMP)


@dataclass
class EvalCfg:
    backend: str = "faster_coco_eval"  # faster_coco_eval | pycocotools
    conf_thres: float = 0.001  # minimum score kept for scoring (COCO protocol: keep almost everything)
    nms_iou: float = 0.6  # IoU threshold of class-wise NMS
    max_det: int = 100  # detections kept per image (COCO maxDets)
    pre_nms_topk: int = 3000  # candidates per image entering NMS
    batch_size: int = 16  # images per step per rank


@dataclass
class PredictCfg:
    source: str = ""  # image file or folder
    conf_thres: float = 0.25  # minimum score drawn and saved
    nms_iou: float = 0.45  # IoU threshold of class-wise NMS
    max_det: int = 300  # detections kept per image
    save_images: bool = True  # write annotated copies of the images
    line_width: int = 2  # box outline width in the annotated images, pixels


@dataclass
class DebugCfg:
    num_batches: int = 1  # batches drawn by --task debug
    split: str = "train"  # which split to draw
    augment: bool = False  # draw augmented training samples (True) or letterboxed originals (False)
    batch_size: int = 4  # images per drawn batch


SECTIONS = {
    "data": DataCfg, "aug": AugCfg, "model": ModelCfg, "assign": AssignCfg, "loss": LossCfg,
    "optim": OptimCfg, "sched": SchedCfg, "train": TrainCfg, "eval": EvalCfg,
    "predict": PredictCfg, "debug": DebugCfg,
}


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it and says what to do."""


class BaseConfig:
    """All sections with their defaults. Subclass it and change fields in ``__init__``."""

    name: str = "base"  # experiment name; run directories are named after it

    def __init__(self) -> None:
        for sec, cls in SECTIONS.items():
            setattr(self, sec, cls())

    # -- plain data ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for sec in SECTIONS:
            out[sec] = _plain(dataclasses.asdict(getattr(self, sec)))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BaseConfig":
        """Rebuild a config from ``to_dict()`` output (e.g. from a checkpoint)."""
        cfg = cls()
        cfg.name = d.get("name", cfg.name)
        for sec, values in d.items():
            if sec == "name":
                continue
            if sec not in SECTIONS:
                raise ConfigError(f"unknown config section {sec!r}; valid: {sorted(SECTIONS)}")
            for k, v in values.items():
                cfg.set(f"{sec}.{k}", v)
        return cfg

    # -- overrides ----------------------------------------------------------------
    def keys(self) -> list[str]:
        return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(SECTIONS[s])]

    def get(self, key: str) -> Any:
        sec, fld = self._split(key)
        return getattr(getattr(self, sec), fld)

    def set(self, key: str, value: Any) -> None:
        """Set ``section.field``; the value must have the type of the current value."""
        sec, fld = self._split(key)
        current = getattr(getattr(self, sec), fld)
        setattr(getattr(self, sec), fld, _coerce(key, current, value))

    def _split(self, key: str) -> tuple[str, str]:
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in SECTIONS or parts[1] not in {
                f.name for f in dataclasses.fields(SECTIONS[parts[0]])}:
            import difflib
            close = difflib.get_close_matches(key, self.keys(), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see configs/base_config.py"
            raise ConfigError(f"unknown config key {key!r}{hint}")
        return parts[0], parts[1]

    # -- checks -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.data.class_names)

    def validate(self) -> "BaseConfig":
        """Check cross-field rules; raise ConfigError naming the key."""
        from configs.validation import validate_config
        validate_config(self)
        return self

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}(name={self.name!r})"]
        for sec in SECTIONS:
            lines.append(f"  {sec}: {dataclasses.asdict(getattr(self, sec))}")
        return "\n".join(lines)


def _plain(x: Any) -> Any:
    """Tuples to lists, recursively: a checkpoint holds only plain Python values."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Return ``value`` in the type of ``current``, or raise ConfigError."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
    elif isinstance(current, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(current)(value)
    else:
        return value
    raise ConfigError(f"{key}: expected {type(current).__name__} (like {current!r}), got {value!r}")
