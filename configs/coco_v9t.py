"""YOLOv9-T on COCO with the original training recipe (configs/coco_v9.py)."""
from configs.coco_v9 import CocoV9


class CocoV9T(CocoV9):
    name = "coco_v9t"
    model_name = "v9-t"
