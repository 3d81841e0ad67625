"""YOLOv9-M on COCO with the original training recipe (configs/coco_v9.py)."""
from configs.coco_v9 import CocoV9


class CocoV9M(CocoV9):
    name = "coco_v9m"
    model_name = "v9-m"
