"""YOLOv9-E on COCO with the original training recipe (configs/coco_v9.py)."""
from configs.coco_v9 import CocoV9


class CocoV9E(CocoV9):
    name = "coco_v9e"
    model_name = "v9-e"
