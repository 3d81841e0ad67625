"""YOLOv9-S on COCO with the original training recipe (configs/coco_v9.py)."""
from configs.coco_v9 import CocoV9


class CocoV9S(CocoV9):
    name = "coco_v9s"
    model_name = "v9-s"
