"""Model registry and builder.

``model.name`` picks the network: "yolo" (the simple anchor-based YOLO: backbone + SPP/PAN
+ anchor head) or one of the YOLOv9-family graph networks of models/nets ("v9-t" ... "v7",
"rd-9c"). Everything downstream (priors, coder, assigner, loss, postprocess, trainer) is
shared, so switching family is one config line: ``assign.method = "auto"`` picks the
family's own assignment.
"""
from __future__ import annotations

from loguru import logger

from configs.base_config import BaseConfig, ConfigError
from models.assigners import ASSIGNERS, assigner_class, build_assigner
from models.backbones import BACKBONES, build_backbone
from models.coders import CODERS
from models.detector import Detector, DetectorBase
from models.heads.anchor_head import AnchorHead
from models.layers import scale_channels
from models.losses import LOSSES
from models.necks import NECKS, build_neck
from models.nets import NETS, build_net

DEFAULT_ANCHORS = BaseConfig().model.anchors  # the COCO anchors of model.anchors' default
# The assignment a family trains with when assign.method = "auto".
AUTO_ASSIGNER = {"yolo": "nearby_grid", "v7": "ratio_grid"}
DFL_ASSIGNER = "task_aligned"


def scaled_anchors(model_cfg, img_size: int) -> list:
    """Anchors of the config (given for anchor_ref_size) scaled to img_size, input pixels."""
    k = img_size / model_cfg.anchor_ref_size
    return [[[w * k, h * k] for w, h in lv] for lv in model_cfg.anchors]


def configured_anchors(cfg) -> list | None:
    """The anchors cfg gives the network, input pixels: the simple YOLO reads model.anchors; an
    anchor-based graph net (v7) its own ANCHORS unless model.anchors differs from the default (fitted
    by model.anchors="auto", or set); None for the anchor-free nets."""
    if cfg.model.name != "yolo" and (model_family(cfg.model.name) == "dfl" or cfg.model.anchors == DEFAULT_ANCHORS):
        return None
    return scaled_anchors(cfg.model, cfg.data.img_size)


def model_family(name: str) -> str:
    """"anchor" (trained by the anchor-head loss) or "dfl" (the anchor-free DFL loss)."""
    if name == "yolo":
        return "anchor"
    if name not in NETS:
        raise ConfigError(f"unknown model.name {name!r}; valid: {sorted(MODELS)}")
    return NETS[name].family


def assign_method(cfg) -> str:
    """cfg.assign.method with "auto" resolved to the model family's own assignment."""
    if cfg.assign.method != "auto":
        return cfg.assign.method
    return AUTO_ASSIGNER.get(cfg.model.name, DFL_ASSIGNER)


def check_assignment(cfg) -> None:
    """The method must serve the model's head (``Assigner.coders``) and accept assign.options."""
    method, family = assign_method(cfg), model_family(cfg.model.name)
    if family not in assigner_class(method).coders:
        fits = sorted(m for m, cls in ASSIGNERS.items() if family in cls.coders)
        raise ConfigError(f"assign.method={method!r} does not train the {family} head of model.name="
                          f"{cfg.model.name!r}; methods that do: {fits} (or 'auto')")
    build_assigner(method, cfg.assign.options)


# Config fields read by one network family only; the others ignore them, and a config that sets one
# for a family that ignores it is refused (or, when the experiment class set it, warned about once).
_YOLO_FIELDS = ("model.backbone", "model.channel_sparsity", "model.activation", "model.neck",
                "model.neck_channels", "model.strides", "model.obj_bias_prior")
_ANCHOR_FIELDS = ("model.anchors", "model.anchor_ref_size")  # the anchor-based families read them
_ANCHOR_LOSS_FIELDS = ("loss.obj_weight", "loss.noobj_weight", "loss.focal_gamma", "loss.obj_target",
                       "loss.level_weights", "loss.ignore_iou", "loss.label_smoothing")
_DFL_LOSS_FIELDS = ("loss.dfl_weight", "loss.aux_weight")
_warned: set[tuple[str, str]] = set()  # (model name, field) already warned about in this process


def ignored_fields(name: str) -> tuple[str, ...]:
    """The config fields model.name=``name`` does not read (its network and its loss)."""
    if name == "yolo":
        return ("model.aux", *_DFL_LOSS_FIELDS)
    if model_family(name) == "dfl":
        return (*_YOLO_FIELDS, *_ANCHOR_FIELDS, *_ANCHOR_LOSS_FIELDS)
    return (*_YOLO_FIELDS, *_DFL_LOSS_FIELDS, "model.aux")


def check_ignored_fields(cfg) -> None:
    """Refuse a field the model family ignores when it differs from the default: an ablation that
    changes nothing must not look like one. A value the experiment class itself set (a setting it
    shares with other families, or a stored config) is warned about once instead."""
    defaults, own = BaseConfig(), type(cfg)()
    for key in ignored_fields(cfg.model.name):
        value = cfg.get(key)
        if value == defaults.get(key):
            continue
        if value != own.get(key) and type(cfg) is not BaseConfig:
            raise ConfigError(f"{key}={value!r} has no effect: model.name={cfg.model.name!r} does not read it "
                              f"(fields it ignores: {', '.join(ignored_fields(cfg.model.name))})")
        if (cfg.model.name, key) not in _warned:
            _warned.add((cfg.model.name, key))
            logger.warning(f"{key}={value!r} is set by {type(cfg).__name__} but model.name={cfg.model.name!r} "
                           "does not read it")


def check_config(cfg) -> None:
    """The model part of the config gate (configs.BaseConfig.validate): registry names, the assigner
    and its options for this head, and fields the family ignores. ConfigError names the key."""
    choices = {"model.name": MODELS, "assign.method": ("auto", *ASSIGNERS)}
    if cfg.model.name == "yolo":
        choices |= {"model.backbone": BACKBONES, "model.neck": NECKS}
    for key, valid in choices.items():
        if cfg.get(key) not in valid:
            raise ConfigError(f"{key}={cfg.get(key)!r} is not one of {sorted(valid)}")
    check_assignment(cfg)
    check_ignored_fields(cfg)


def build_assigner_for(cfg):
    """The assigner of cfg, with assign.method 'auto' resolved for the model family."""
    check_assignment(cfg)
    return build_assigner(assign_method(cfg), cfg.assign.options)


def coder_for(cfg):
    """The coder the assignment method needs for the model's head (``Assigner.coders``)."""
    return CODERS[assigner_class(assign_method(cfg)).coders[model_family(cfg.model.name)]]()


def build_loss(cfg, model: DetectorBase):
    """The loss of the model's family (models.losses.LOSSES) with cfg's assigner and the model's coder."""
    return LOSSES[model.family](cfg.loss, build_assigner_for(cfg), model.coder, cfg.num_classes)


def build_yolo(cfg) -> Detector:
    """The simple anchor-based YOLO: backbone (width channel_sparsity) + SPP/PAN + anchor head."""
    m = cfg.model
    backbone = build_backbone(m.backbone, width=m.channel_sparsity, activation=m.activation,
                              pretrained=m.pretrained)
    neck_out = [scale_channels(c, m.channel_sparsity) for c in m.neck_channels]
    neck = build_neck(m.neck, backbone.out_channels, neck_out, m.activation)
    head = AnchorHead(neck_out, cfg.num_classes, len(m.anchors[0]), m.activation, m.obj_bias_prior)
    return Detector(backbone, neck, head, m.strides, scaled_anchors(m, cfg.data.img_size), coder_for(cfg))


def build_graph_net(cfg) -> DetectorBase:
    """A YOLOv9-family network by name; model.pretrained loads full-model weights (see load_pretrained)."""
    model = build_net(cfg.model.name, cfg.num_classes, coder=coder_for(cfg), aux=cfg.model.aux,
                      anchors=configured_anchors(cfg))
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained)
    return model


def load_pretrained(model: DetectorBase, path: str) -> None:
    """Whole-model weights: a checkpoint of this repo (its EMA weights when present) or an
    official release state dict. Matching tensors load; mismatched ones (e.g. another class
    count) are listed in one warning."""
    from models.official import load_official_state_dict
    from utils.checkpoint import load_checkpoint, load_matching, preferred_weights
    try:
        ckpt = load_checkpoint(path, required=())
    except Exception as e:  # noqa: BLE001 - re-raised as a config error naming the file
        raise ConfigError(f"model.pretrained={path!r} cannot be loaded: {e}") from None
    if "model" in ckpt and isinstance(ckpt["model"], dict) and "config" in ckpt:  # this repo's checkpoint
        loaded, skipped = load_matching(model, preferred_weights(ckpt))
    else:
        loaded, skipped = load_official_state_dict(model, ckpt)
    if not loaded:
        raise ConfigError(f"model.pretrained={path!r}: no tensor of the file fits model {type(model).__name__}")
    logger.info(f"pretrained weights {path}: {len(loaded)} tensors loaded, {len(skipped)} skipped")


MODELS = {"yolo": build_yolo, **{name: build_graph_net for name in NETS}}


def build_model(cfg) -> DetectorBase:
    if cfg.num_classes <= 0:
        raise ConfigError("data.class_names is empty: set it in the config or let the trainer "
                         "discover the names from the training annotations")
    if cfg.model.name not in MODELS:
        raise ConfigError(f"unknown model.name {cfg.model.name!r}; valid: {sorted(MODELS)}")
    check_assignment(cfg)
    return MODELS[cfg.model.name](cfg)


__all__ = ["MODELS", "assign_method", "build_assigner", "build_assigner_for", "build_loss", "build_model",
           "check_config", "model_family", "scaled_anchors"]
