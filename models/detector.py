"""Detectors. forward() returns raw per-slot predictions only (no loss, no NMS, no decode).

``DetectorBase`` owns what every family shares: strides, anchors, the coder, priors and
decode. ``Detector`` is the simple YOLO (backbone + neck + head); the YOLOv9 / GELAN / v7
networks in models/nets subclass DetectorBase directly.

Output contract of forward(images [B, 3, H, W] float in [0, 1]):
- a tensor raw [B, P, D], slot p described by prior p (order: level, row, column, anchor);
- models with a PGI auxiliary branch return the tuple (main_raw, aux_raw) while training
  with the branch built; in eval mode and in the deploy form they return main_raw only.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.priors import Priors, make_priors

# Inputs are RGB in [0, 1]; normalising inside the model keeps ImageNet-pretrained backbones
# valid and lets exported models take plain [0, 1] images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def main_output(raw: Tensor | tuple) -> Tensor:
    """The main-branch predictions of a forward output (drops the auxiliary branch if present)."""
    return raw[0] if isinstance(raw, (tuple, list)) else raw


class DetectorBase(nn.Module):
    """Shared detector plumbing.

    strides: output stride per head level; anchors: per level [[w, h], ...] in input pixels
    (None for anchor-free heads); coder: decodes raw slots (models.coders).
    ``family`` names the loss that trains it (models.losses.LOSSES).
    """

    family: str = "anchor"

    def __init__(self, strides: list[int], anchors: list | None, coder) -> None:
        super().__init__()
        self.strides, self.anchors, self.coder = list(strides), anchors, coder
        self._priors_cache: dict = {}

    def priors(self, img_hw: tuple[int, int], device: torch.device | None = None) -> Priors:
        if device is None:
            device = next(self.parameters()).device
        key = (tuple(img_hw), str(device))
        if key not in self._priors_cache:
            self._priors_cache[key] = make_priors(img_hw, self.strides, self.anchors, device)
        return self._priors_cache[key]

    @torch.no_grad()
    def decode(self, raw: Tensor | tuple, img_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """raw [B, P, D] (or a (main, aux) tuple) -> (boxes [B, P, 4] xyxy input pixels,
        scores [B, P, nc]) of the main branch."""
        raw = main_output(raw).float()
        priors = self.priors(img_hw, raw.device)
        return self.coder.decode_boxes(raw, priors), self.coder.scores(raw)


class Detector(DetectorBase):
    """The simple YOLO: forward(images [B, 3, H, W] float in [0, 1]) -> raw [B, P, D].

    ImageNet normalisation happens inside, so pretrained ResNet weights stay valid.
    """

    family = "anchor"

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, strides: list[int],
                 anchors: list | None, coder) -> None:
        super().__init__(strides, anchors, coder)
        self.backbone, self.neck, self.head = backbone, neck, head
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = (images - self.mean) / self.std
        return self.head(self.neck(self.backbone(x)))

    def backbone_prefixes(self) -> list[str]:
        """Module names of the backbone (what ``train.freeze = ["backbone"]`` freezes)."""
        return ["backbone"]
