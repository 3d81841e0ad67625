"""YOLOv9-C on COCO with the original training recipe (configs/coco_v9.py)."""
from configs.coco_v9 import CocoV9


class CocoV9C(CocoV9):
    name = "coco_v9c"
    model_name = "v9-c"
