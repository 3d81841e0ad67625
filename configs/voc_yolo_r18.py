"""The reference simple-YOLO recipe: VOC07+12 trainval, VOC07 test, ResNet-18 at width 0.75."""
from configs.base_config import BaseConfig

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"]


class VocYoloR18(BaseConfig):
    name = "voc_yolo_r18"

    def __init__(self):
        super().__init__()
        self.data.root = "data/VOCdevkit"  # holds VOC2007/ and VOC2012/
        self.data.train_sets = ["VOC2007/trainval", "VOC2012/trainval"]
        self.data.val_sets = ["VOC2007/test"]
        self.data.class_names = list(VOC_CLASSES)
        self.data.img_size = 416
        self.model.backbone = "resnet18"
        self.model.channel_sparsity = 0.75
        self.assign.method = "nearby_grid"
        self.assign.options = {"match_iou_thres": 0.0625, "filter_by_max_iou": True}
        self.loss.box = "ciou"
        self.loss.focal_gamma = 3.5
        self.optim.name = "adam"
        self.train.ema = True
        self.train.epochs = 400
        self.train.batch_size = 64
