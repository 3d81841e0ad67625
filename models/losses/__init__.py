"""Loss registry, keyed by model family (DetectorBase.family): which loss trains which head."""
from models.losses.v9_loss import V9Loss
from models.losses.yolo_loss import YoloAnchorLoss, focal_bce

LOSSES = {"anchor": YoloAnchorLoss, "dfl": V9Loss}

__all__ = ["LOSSES", "V9Loss", "YoloAnchorLoss", "focal_bce"]
