"""Bundled BCCD blood-cell data, ResNet-18 at width 0.75, nearby_grid assignment, 416 px."""
from configs.base_config import BaseConfig


class BccdYoloR18(BaseConfig):
    name = "bccd_yolo_r18"

    def __init__(self):
        super().__init__()
        self.data.root = "data/BCCD"
        self.data.train_sets = ["train"]
        self.data.val_sets = ["val"]
        self.data.class_names = ["RBC", "WBC", "Platelets"]
        self.data.img_size = 416
        self.aug.vflip_prob = 0.5  # microscopy has no up or down
        self.model.backbone = "resnet18"
        self.model.channel_sparsity = 0.75
        self.assign.method = "auto"  # the family's own: nearby_grid for this model; set model.name to switch family
        self.train.epochs = 40
        self.train.batch_size = 16
