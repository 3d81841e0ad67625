"""Model registry and builder."""
from __future__ import annotations

from configs.base_config import ConfigError
from models.assigners import assigner_class, build_assigner
from models.backbones import build_backbone
from models.coders import AnchorCoder
from models.detector import Detector
from models.heads.anchor_head import AnchorHead
from models.layers import scale_channels
from models.necks import build_neck


def scaled_anchors(model_cfg, img_size: int) -> list:
    """Anchors of the config (given for anchor_ref_size) scaled to img_size, input pixels."""
    k = img_size / model_cfg.anchor_ref_size
    return [[[w * k, h * k] for w, h in lv] for lv in model_cfg.anchors]


def build_yolo(cfg) -> Detector:
    """The simple anchor-based YOLO: backbone (width channel_sparsity) + SPP/PAN + anchor head."""
    m = cfg.model
    backbone = build_backbone(m.backbone, width=m.channel_sparsity, activation=m.activation,
                              pretrained=m.pretrained)
    neck_out = [scale_channels(c, m.channel_sparsity) for c in m.neck_channels]
    neck = build_neck(m.neck, backbone.out_channels, neck_out, m.activation)
    head = AnchorHead(neck_out, cfg.num_classes, len(m.anchors[0]), m.activation, m.obj_bias_prior)
    coder = AnchorCoder(assigner_class(cfg.assign.method).coder_mode)
    return Detector(backbone, neck, head, m.strides, scaled_anchors(m, cfg.data.img_size), coder)


MODELS = {"yolo": build_yolo}


def build_model(cfg) -> Detector:
    if cfg.num_classes <= 0:
        raise ConfigError("data.class_names is empty: set it in the config or let the trainer "
                         "discover the names from the training annotations")
    if cfg.model.name not in MODELS:
        raise ConfigError(f"unknown model.name {cfg.model.name!r}; valid: {sorted(MODELS)}")
    return MODELS[cfg.model.name](cfg)


__all__ = ["MODELS", "build_model", "build_assigner", "scaled_anchors"]
