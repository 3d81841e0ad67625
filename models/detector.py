"""Detector = backbone + neck + head. forward() returns raw per-slot predictions only."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.priors import Priors, make_priors

# Inputs are RGB in [0, 1]; normalising inside the model keeps ImageNet-pretrained backbones
# valid and lets exported models take plain [0, 1] images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Detector(nn.Module):
    """forward(images [B, 3, H, W] float in [0, 1]) -> raw [B, P, D].

    ``priors(img_hw)`` describes the P slots for that input size; ``coder`` decodes them.
    anchors: per level [[w, h], ...] in input pixels (None for anchor-free heads).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, strides: list[int],
                 anchors: list | None, coder) -> None:
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head
        self.strides, self.anchors, self.coder = list(strides), anchors, coder
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._priors_cache: dict = {}

    def forward(self, images: Tensor) -> Tensor:
        x = (images - self.mean) / self.std
        return self.head(self.neck(self.backbone(x)))

    def priors(self, img_hw: tuple[int, int], device: torch.device | None = None) -> Priors:
        device = device or self.mean.device
        key = (tuple(img_hw), str(device))
        if key not in self._priors_cache:
            self._priors_cache[key] = make_priors(img_hw, self.strides, self.anchors, device)
        return self._priors_cache[key]

    @torch.no_grad()
    def decode(self, raw: Tensor, img_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """raw [B, P, D] -> (boxes [B, P, 4] xyxy input pixels, scores [B, P, nc])."""
        priors = self.priors(img_hw, raw.device)
        raw = raw.float()
        return self.coder.decode_boxes(raw, priors), self.coder.scores(raw)
