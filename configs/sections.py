"""The sections of a config: small dataclasses, every field with its meaning and unit on its line.

``configs.base_config.BaseConfig`` holds one instance of each (``SECTIONS``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

COCO_ANCHORS = [
    [[10, 13], [16, 30], [33, 23]],  # stride 8
    [[30, 61], [62, 45], [59, 119]],  # stride 16
    [[116, 90], [156, 198], [373, 326]],  # stride 32
]


@dataclass
class DataCfg:
    format: str = "voc"  # dataset layout: "voc", "coco" (json) or "yolo" (txt) (registry datasets.DATASETS)
    root: str = "data/BCCD"  # dataset root; a relative path resolves against the repo root
    train_sets: list = field(default_factory=lambda: ["train"])  # voc SET; coco json; yolo folder/list
    val_sets: list = field(default_factory=lambda: ["val"])  # the same for the split scored by --task val
    class_names: list = field(default_factory=list)  # [] = from the data (voc, coco json, data.yaml)
    category_ids: list = field(default_factory=list)  # COCO category_id per class, from the json ([] = 1..nc)
    img_size: int = 416  # square network input side, pixels (multiple of 32)
    difficult_as_ignore: bool = True  # VOC difficult=1 objects become ignore regions (not positives, not negatives)
    strict: bool = False  # True: bad training data raises instead of being skipped with a warning
    allow_outside_root: bool = False  # True: image paths may resolve outside the dataset root
    image_loader: str = "datasets.loaders.PilLoader"  # loader class path (or TurboJpegLoader, EncryptedLoader)
    key_env: str = ""  # env variable holding the AES-256 key (64 hex chars); never the key itself
    cache_labels: bool = True  # reuse the scan until files, sizes, mtimes, class names or settings change (one process scans, the others wait for it)
    cache_images: str = "none"  # decoded-image LMDB cache: "none", "ram" (shared memory) or "disk" (mmap)
    cache_resize: bool = True  # cache images resized to img_size on the long side, else at full size
    cache_dir: str = ""  # caches (the only files written outside the run dir); "" = <train.save_dir>/cache
    cache_refresh: bool = False  # rebuild the label and image caches even when they are valid
    encrypt_cache: bool = False  # AES-GCM encrypt cached labels and images with the key in key_env
    data_fraction: float = 1.0  # train on this stratified fraction of the train split (val whole)
    num_workers: int = 2  # DataLoader worker processes per rank (0 = load in the main process)
    mosaic_buffer: int = -1  # resized images each worker keeps as mosaic/MixUp/CutMix partners (its last primaries): -1 = min(8 batches, 192 MB), 0 = off (partners from the whole split)
    pin_memory: bool = True  # page-locked host memory for faster host-to-GPU copies (CUDA only)
    prefetch_factor: int = 2  # batches each worker prepares ahead
    persistent_workers: bool = True  # keep workers alive between epochs (the epoch still reaches them)
    loader_timeout_s: float = 600.0  # a batch not delivered by the workers within this many seconds is an error naming the stall (0 = wait forever)


@dataclass
class AugCfg:
    mosaic_prob: float = 0.5  # probability that a sample is a mosaic (tiles on a 2*img_size canvas, warped)
    mosaic_9_prob: float = 0.0  # given a mosaic, probability that it tiles 9 images (3x3) instead of 4 (2x2)
    mixup_prob: float = 0.0  # given a mosaic, probability of blending it with a second mosaic (MixUp)
    mixup_beta: float = 32.0  # MixUp weight r ~ Beta(mixup_beta, mixup_beta)
    cutmix_prob: float = 0.0  # given no mosaic, probability of pasting a rectangle of another sample (CutMix)
    cutmix_beta: float = 1.0  # CutMix kept-area fraction ~ Beta(cutmix_beta, cutmix_beta)
    close_mosaic_epochs: int = 0  # the last N epochs use no mosaic, MixUp or CutMix (0 = never close)
    scale: tuple = (0.5, 1.5)  # random zoom range of the perspective warp (1 = long side fills img_size)
    translate: float = 0.1  # random shift, fraction of img_size
    degrees: float = 0.0  # random rotation range, +- degrees
    shear: float = 0.0  # random shear range, +- degrees
    perspective: float = 0.0  # perspective coefficient range +- (YOLO convention; useful values 0..0.001)
    hflip_prob: float = 0.5  # probability of a left-right flip
    vflip_prob: float = 0.0  # probability of an up-down flip
    hsv_h: float = 0.015  # hue gain range +- (fraction), applied in OpenCV HSV
    hsv_s: float = 0.7  # saturation gain range +- (fraction)
    hsv_v: float = 0.4  # value (brightness) gain range +- (fraction)
    extras_prob: float = 0.01  # probability of each of Blur, MedianBlur, ToGray and CLAHE (albumentations)
    min_box_size: float = 2.0  # boxes not wider and taller than this after augmentation are dropped, pixels
    min_visibility: float = 0.1  # boxes keeping less than this fraction of their (zoomed) area are dropped
    max_aspect_ratio: float = 100.0  # boxes more elongated than this after augmentation are dropped


@dataclass
class ModelCfg:
    name: str = "yolo"  # network: "yolo" (backbone + SPP/PAN + anchor head) or v9-t/s/m/c/e, gelan-t/s/m/c/e, v7, rd-9c (registry models.MODELS)
    aux: bool = True  # YOLOv9 family: build the PGI auxiliary branch for training (never used at inference)
    backbone: str = "resnet18"  # resnet18 | resnet34 | resnet50 | darknet53 | darknet_tiny
    channel_sparsity: float = 0.75  # width factor applied to every conv layer's channel count (1.0 = full width)
    activation: str = "leaky_relu"  # relu | leaky_relu | silu | mish | hardswish
    neck: str = "spp_pan"  # feature pyramid: SPP on the deepest map, then a top-down + bottom-up PAN
    neck_channels: list = field(default_factory=lambda: [128, 256, 512])  # neck output channels per level before channel_sparsity
    strides: list = field(default_factory=lambda: [8, 16, 32])  # output strides of the three head levels, pixels
    anchors: list = field(default_factory=lambda: [list(map(list, lv)) for lv in COCO_ANCHORS])  # per level, per anchor [w, h] in pixels at anchor_ref_size, or "auto": fitted to the train boxes at the start of training (the fitted ones are stored)
    anchor_ref_size: int = 640  # input side the anchors are given for; they are scaled by img_size / anchor_ref_size
    pretrained: str = ""  # local weights file, "" = from scratch. yolo: a backbone state dict (torchvision ResNet names); YOLOv9 family: a checkpoint of this repo or an official release state dict (other class counts load what fits)
    obj_bias_prior: float = 0.01  # initial objectness probability (sets the head bias)


@dataclass
class AssignCfg:
    method: str = "auto"  # auto (the model family's own: yolo nearby_grid, v7 ratio_grid, v9 task_aligned) or a name of models.assigners.ASSIGNERS
    options: dict = field(default_factory=dict)  # the method's options by name, e.g. {"topk": 13}; the others keep the defaults of its Options (models/assigners/<method>.py)


@dataclass
class LossCfg:
    box: str = "ciou"  # iou | giou | diou | ciou
    box_weight: float = 5.0  # weight of the box term
    obj_weight: float = 1.0  # weight of the objectness term on positive slots
    noobj_weight: float = 1.0  # weight of the objectness term on negative slots (0 = no no-object term)
    cls_weight: float = 1.0  # weight of the class term
    focal_gamma: float = 0.0  # focal modulation of objectness and class BCE (0 = plain BCE)
    obj_target: str = "iou"  # objectness target on positives: "iou" (detached IoU of the decoded box) or "constant" (1)
    level_weights: list = field(default_factory=lambda: [4.0, 1.0, 0.4])  # objectness weight per head level (stride 8, 16, 32)
    ignore_iou: float = 0.5  # negatives whose decoded box overlaps an ignore region above this IoU get no objectness loss
    label_smoothing: float = 0.0  # class target smoothing epsilon
    dfl_weight: float = 1.5  # DFL loss (YOLOv9 family): weight of the distribution focal term
    aux_weight: float = 0.25  # DFL loss (YOLOv9 family): weight of the PGI auxiliary branch's loss


@dataclass
class OptimCfg:
    name: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3  # base learning rate for `base_batch` images per step
    base_batch: int = 16  # global batch at which `lr` applies; lr scales linearly with the global batch
    momentum: float = 0.937  # SGD momentum / Adam beta1
    weight_decay: float = 5e-4  # applied to conv/linear weights only (not to norms and biases)
    nesterov: bool = True  # SGD only
    grad_clip: float = 10.0  # max global gradient norm (0 = no clipping)
    nominal_batch: int = 0  # images per optimizer step by accumulation, ramped in warm-up (0 = off; YOLO: 64)


@dataclass
class SchedCfg:
    name: str = "cosine"  # lr decay over the run, per iteration: cosine | linear | step | one_cycle
    warmup_epochs: float = 3.0  # linear warm-up length, epochs (fractions allowed)
    warmup_min_iters: int = 0  # the warm-up lasts at least this many iterations (YOLO: 100)
    warmup_start_factor: float = 0.01  # lr at step 0, as a fraction of the base lr (YOLO: 0)
    warmup_bias_lr: float = 0.0  # bias lr at step 0, absolute, falling to the scheduled lr (YOLO 0.1; 0 = off)
    warmup_momentum: float = 0.0  # momentum / Adam beta1 at step 0, rising to optim.momentum (YOLO 0.8; 0 = off)
    min_lr_ratio: float = 0.05  # cosine, linear, one_cycle: final lr, fraction of the base lr (YOLO lrf 0.01)
    step_epochs: list = field(default_factory=list)  # step: epochs where the lr is multiplied by step_gamma
    step_gamma: float = 0.1  # step: lr factor applied at each of step_epochs
    one_cycle_pct: float = 0.3  # one_cycle: fraction of the run rising to the peak lr (use warmup_epochs=0)
    one_cycle_div: float = 25.0  # one_cycle: the lr starts at the base lr / one_cycle_div


@dataclass
class TrainCfg:
    epochs: int = 40  # training epochs
    batch_size: int = 16  # global batch (all ranks together), images
    amp: bool = True  # mixed precision on CUDA (fp16 is ignored on CPU; bf16 also runs there)
    amp_dtype: str = "fp16"  # autocast dtype of train, val and benchmark forwards: fp16 (with a grad scaler) or bf16 (none needed)
    multi_scale: list = field(default_factory=list)  # [min, max] input sides, pixels: each batch a random multiple of the largest stride in that range, the same on every rank ([] = off)
    ema: bool = True  # keep an exponential moving average of the weights (used for val and best)
    ema_decay: float = 0.9999  # asymptotic EMA decay
    ema_tau: float = 2000.0  # EMA warm-up: decay = ema_decay * (1 - exp(-updates / ema_tau))
    seed: int = 0  # seed of Python, NumPy, torch and the DataLoader workers
    deterministic: bool = False  # torch deterministic algorithms (slower)
    eval_interval: int = 1  # validate every N epochs (and always after the last)
    save_dir: str = "runs"  # parent of run directories when --out is not given
    save_interval_min: float = 30.0  # also write last.pth inside an epoch every N minutes, so a kill loses at most that (0 = at epoch ends only)
    dist_timeout_min: float = 30.0  # process-group timeout: a collective waiting longer than this ends the job with an error, minutes
    log_interval: int = 10  # iterations between TensorBoard loss scalars
    max_bad_steps: int = 10  # consecutive skipped steps (non-finite loss or gradient) before an error
    init_weights: str = ""  # checkpoint of this repo (any family or class count) to fine-tune from
    freeze: list = field(default_factory=list)  # frozen, BN stats too: "backbone", module prefixes, fnmatch patterns
    freeze_epochs: int = 0  # train.freeze holds for the first N epochs, then thaws (0 = whole run)
    monitor: str = "mAP"  # val metric (higher = better) for best.pth, the top-K files and early stopping
    min_delta: float = 0.0  # an improvement must beat the best monitored value by more than this
    patience: int = 0  # stop after this many epochs without improvement (0 = never stop early)
    save_top_k: int = 0  # also keep the K best epochs as epoch<E>_<monitor>_<value>.pth (0 = none)
    num_threads: int = 0  # torch intra-op CPU threads per rank (0 = cores / local world size)
    channels_last: bool = True  # NHWC memory format for the model and inputs (faster convs on CPU and with AMP)
    sync_bn: bool = False  # BatchNorm statistics over the whole global batch under DDP (SyncBatchNorm; CUDA only): for a few images per GPU
    cudnn_benchmark: bool = False  # let cuDNN time its convolution algorithms for the input shapes and keep the fastest (fixed shapes; not with train.deterministic)
    compile: bool = False  # torch.compile the training forward (first steps compile for minutes; see README for its effect)
    wandb: bool = False  # also log the scalars to Weights & Biases (needs `pip install wandb`)
    wandb_project: str = "yolo"  # W&B project name
    wandb_mode: str = "offline"  # offline: files under <run dir>/wandb, upload later with `wandb sync`; online: needs login and network


@dataclass
class EvalCfg:
    backend: str = "faster_coco_eval"  # faster_coco_eval | pycocotools
    conf_thres: float = 0.001  # minimum score kept for scoring (COCO protocol: keep almost everything)
    nms_iou: float = 0.6  # IoU threshold of class-wise NMS
    agnostic_nms: bool = False  # NMS across classes (a box suppresses overlapping boxes of any class)
    rect: bool = False  # batches of similar aspect ratio, each padded only to the next multiple of the stride (not to a square)
    rect_pad: float = 0.5  # eval.rect: context added to each short side before rounding up, in strides (never past the square); 0 = tightest
    max_det: int = 100  # detections kept per image (COCO maxDets)
    pre_nms_topk: int = 3000  # candidates per image entering NMS
    batch_size: int = 16  # images per step per rank
    conf_prod: float = 0.25  # production confidence of the operative metrics (P, R, F1, confusion matrix)
    match_iou: float = 0.5  # IoU for a detection to match a GT in the operative metrics and confusion matrix
    sweep_confs: list = field(default_factory=lambda: [0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9])  # confidences of the threshold sweep table
    plots: bool = True  # write the confusion matrix and PR / F1 / P / R curve PNGs at each validation
    save_json: bool = True  # write metrics.json, predictions.json and ground_truth.json at each validation
    dashboard: bool = True  # print the evaluation dashboard (rich tables) after each validation
    trend_epochs: int = 10  # epochs shown by the dashboard's sparkline trends
    max_images: int = 0  # --task val: score only the first N val images (0 = all); the report says "evaluated N of M"
    benchmark: bool = False  # --task val: also measure speed (as --task benchmark)
    bench_device: str = "auto"  # benchmark on: auto (the run's device) | cpu | cuda | all (each available)
    bench_warmup: int = 10  # untimed forward passes before each timing
    bench_iters: int = 50  # timed batch-1 passes (latency mean and percentiles)
    bench_batch: int = 16  # batch size of the throughput measurement, images


@dataclass
class PredictCfg:
    source: str = ""  # image, folder, video, glob, .txt list of paths, webcam index ("0") or rtsp/rtmp/http(s) URL
    conf_thres: float = 0.25  # minimum score drawn and saved
    nms_iou: float = 0.45  # IoU threshold of class-wise NMS
    agnostic_nms: bool = False  # NMS across classes (a box suppresses overlapping boxes of any class)
    max_det: int = 300  # detections kept per image
    save_images: bool = True  # write annotated copies of the images
    line_width: int = 2  # box outline width in the annotated images, pixels
    batch_size: int = 8  # images (or video frames) per forward pass
    class_names_file: str = ""  # JSON list of class names (or {"0": name, ...}); "" = the names in the checkpoint
    save_txt: bool = False  # per image labels/<name>.txt in YOLO format: "class cx cy w h score", normalised
    save_coco: bool = True  # predictions_coco.json: COCO images, categories and scored annotations
    video_stride: int = 1  # videos, webcams and streams: predict every N-th frame
    stream_timeout_s: float = 10.0  # webcam/stream: no frame for this many seconds = dropped, run ends
    max_frames: int = 0  # stop after this many predicted images/frames; 0 = all (a stream: until it drops)


@dataclass
class DebugCfg:
    num_batches: int = 1  # batches drawn by --task debug
    split: str = "train"  # which split to draw
    augment: bool = False  # mode "assign": draw augmented samples (True) or letterboxed originals (False)
    batch_size: int = 4  # images per drawn batch
    mode: str = "assign"  # "assign": label-assignment plots; "samples": augmented training samples with boxes; "dataset": a report of the training boxes (counts, sizes, anchors)


@dataclass
class ExportCfg:
    formats: list = field(default_factory=lambda: ["onnx"])  # any of onnx, saved_model, tflite_fp32, tflite_fp16, tflite_int8
    opset: int = 17  # ONNX opset
    dynamic: bool = True  # symbolic batch dimension (ONNX; TFLite files are exported at batch 1)
    half: bool = False  # ONNX with FP16 weights and input
    simplify: bool = False  # simplify the ONNX graph with onnxslim (or onnxsim), when installed
    nms: bool = False  # ONNX with NMS in the graph (thresholds predict.conf_thres, nms_iou, max_det)
    hardswish: bool = False  # replace SiLU by HardSwish before export (cheaper on some NPUs/int8 kernels); changes outputs
    calib_dir: str = ""  # INT8 calibration images (a folder); "" = the train images of the data config
    calib_count: int = 100  # calibration images used (the first N, sorted by name)


@dataclass
class QatCfg:
    epochs: int = 3  # fake-quantised fine-tuning epochs from --ckpt
    lr: float = 1e-4  # learning rate of the fine-tuning (constant after a short warm-up)
    freeze_bn_epoch: int = 1  # from this epoch on (0-based) BatchNorm statistics stay fixed
    batch_size: int = 16  # global batch of the fine-tuning
    export_int8: bool = True  # write an INT8 TFLite model of the result (needs requirements-export.txt)


SECTIONS = {
    "data": DataCfg, "aug": AugCfg, "model": ModelCfg, "assign": AssignCfg, "loss": LossCfg,
    "optim": OptimCfg, "sched": SchedCfg, "train": TrainCfg, "eval": EvalCfg,
    "predict": PredictCfg, "debug": DebugCfg, "export": ExportCfg, "qat": QatCfg,
}
