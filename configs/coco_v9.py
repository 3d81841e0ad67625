"""COCO recipes of the YOLOv9 paper code (hyp.scratch-high, train_dual: 500 epochs, 640 px).

``CocoV9`` holds the recipe; configs/coco_v9t.py ... coco_v9e.py subclass it with the model
size (``--config coco_v9c``). Data: the official
layout under data/coco (annotations/instances_{train,val}2017.json, images in train2017/ and
val2017/). All defaults below are the original's (YOLOV9.md section 7), including SGD whose
lr 0.01 applies to the loss times the per-GPU batch: our losses are per-batch means, so the
same update needs lr 0.01 * 16 = 0.16 at 16 images per step, accumulated to 64 (nominal_batch).
"""
from configs.base_config import BaseConfig

COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush"]
# The category_id of each class in the COCO 2017 json (1..90 with 10 ids unused): stated here so no
# rank parses the 450 MB train json only to map them.
COCO_CATEGORY_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
                     31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54,
                     55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81,
                     82, 84, 85, 86, 87, 88, 89, 90]


class CocoV9(BaseConfig):
    name = "coco_v9c"
    model_name = "v9-c"  # the network; each size file sets its own

    def __init__(self):
        super().__init__()
        d = self.data
        d.format, d.root = "coco", "data/coco"
        d.train_sets = ["annotations/instances_train2017.json"]
        d.val_sets = ["annotations/instances_val2017.json"]
        d.class_names = list(COCO_CLASSES)
        d.category_ids = list(COCO_CATEGORY_IDS)
        d.img_size = 640
        d.num_workers = 8
        self.model.name = type(self).model_name
        self.assign.method = "task_aligned"
        self.assign.options = {"topk": 10, "alpha": 0.5, "beta": 6.0}
        lo = self.loss
        lo.box, lo.box_weight, lo.cls_weight, lo.dfl_weight, lo.aux_weight = "ciou", 7.5, 0.5, 1.5, 0.25
        a = self.aug
        a.mosaic_prob, a.mixup_prob, a.mixup_beta = 1.0, 0.15, 32.0
        a.close_mosaic_epochs = 15
        a.scale, a.translate, a.degrees, a.shear, a.perspective = (0.1, 1.9), 0.1, 0.0, 0.0, 0.0
        a.hflip_prob, a.vflip_prob = 0.5, 0.0
        a.hsv_h, a.hsv_s, a.hsv_v = 0.015, 0.7, 0.4
        a.extras_prob = 0.01  # Blur, MedianBlur, ToGray, CLAHE
        a.min_box_size, a.min_visibility, a.max_aspect_ratio = 2.0, 0.1, 100.0
        o = self.optim
        o.name, o.momentum, o.nesterov, o.weight_decay, o.grad_clip = "sgd", 0.937, True, 5e-4, 10.0
        o.lr, o.base_batch = 0.16, 16  # = lr0 0.01 x per-GPU batch 16 (see the module docstring)
        o.nominal_batch = 64
        s = self.sched
        s.name, s.min_lr_ratio = "linear", 0.01
        s.warmup_epochs, s.warmup_min_iters, s.warmup_start_factor = 3.0, 100, 0.0
        s.warmup_bias_lr, s.warmup_momentum = 0.1 * 16, 0.8  # bias lr 0.1 on the x-batch loss scale
        t = self.train
        t.epochs, t.batch_size = 500, 16
        t.ema, t.ema_decay, t.ema_tau = True, 0.9999, 2000.0
        e = self.eval
        e.conf_thres, e.nms_iou, e.max_det = 0.001, 0.7, 300

