"""YOLOv9-T on the bundled BCCD blood-cell data, from scratch, 416 px.

Only the model line and the recipe differ from configs/bccd_yolo_r18.py: the network is
v9-t with its PGI auxiliary branch, assigned by task alignment (assign.method "auto").
"""
from configs.bccd_yolo_r18 import BccdYoloR18


class BccdV9T(BccdYoloR18):
    name = "bccd_v9t"

    def __init__(self):
        super().__init__()
        self.model.name = "v9-t"
        self.assign.method = "auto"  # task_aligned: top-k 10, alpha 0.5, beta 6.0, CIoU
        self.loss.box_weight = 7.5  # the YOLOv9 weights: box 7.5, class 0.5, DFL 1.5, aux x0.25
        self.loss.cls_weight = 0.5
        self.loss.dfl_weight = 1.5
        self.loss.aux_weight = 0.25
        # 205 images x 40 epochs is ~520 optimizer steps: AdamW converges in that budget where
        # the 500-epoch SGD recipe of the COCO configs would still be warming up.
        self.optim.name = "adamw"
        self.optim.lr = 2e-3
        self.optim.momentum = 0.9
        self.sched.warmup_epochs = 2.0
        self.aug.mosaic_prob = 1.0
        self.aug.close_mosaic_epochs = 8  # the last epochs see whole, unwarped-by-mosaic images, as at test time
        self.train.ema_tau = 200.0  # EMA ramp in optimizer steps, sized for the short run
