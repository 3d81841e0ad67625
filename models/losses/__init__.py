"""Loss registry: which loss trains which head family."""
from models.losses.yolo_loss import YoloAnchorLoss, focal_bce

LOSSES = {"yolo": YoloAnchorLoss}

__all__ = ["LOSSES", "YoloAnchorLoss", "focal_bce"]
