"""Evaluator: model predictions on a split -> COCO metrics, operative metrics, plots, JSON, dashboard.

The headline numbers come from faster-coco-eval or pycocotools (utils/coco_eval.py); the
operative metrics (utils/metrics.py) and plots are computed from the same predictions.
Predictions travel as flat arrays (utils.detections.Detections): each rank sends its share to
rank 0 only, which scores and broadcasts the metrics, so no rank but one ever holds them all.
Files written per validation into ``out_dir``: metrics.json (everything, including the
confusion matrix and threshold sweep), predictions.json and ground_truth.json (COCO format,
with the dataset's own category ids ``data.category_ids``), history.json (one line of scalars
per epoch, for the trends), dashboard.txt, and the PNGs under plots/ (plots/epochNNN/ during
training).

Rectangular evaluation (``eval.rect``, ``core.loaders.build_eval_loader``): the loader's batches
have one canvas each, not the square; the boxes go back to original pixels through each item's
meta (scale, pad) either way. The forward runs under the training's autocast (``utils.amp``);
decoding, NMS and scoring run in fp32. ``metrics["max_det"]`` says how many images had more boxes
after NMS than eval.max_det (the rest were dropped).
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from torch import Tensor
from tqdm import tqdm

from configs.base_config import ConfigError
from datasets.dataset import to_input
from datasets.records import RecordTable
from datasets.transforms import boxes_from_letterbox
from models.postprocess import postprocess
from utils.amp import autocast_for, fp32
from utils.coco_eval import coco_evaluate, records_to_coco_gt, with_source_image_ids, write_results_json
from utils.coco_results import CocoResults
# At import, not at the first validation: importing rich draws from Python's global RNG, which a
# resumed run would then do at another point of its stream than the uninterrupted run.
from utils.dashboard import build_dashboard, history_entry, print_dashboard, render_text
from utils.detections import Detections
from utils.dist import DistInfo, broadcast_object, gather_object, unwrap
from utils.files import write_json_atomic
from utils.metrics import max_det_report, operative_metrics
from utils.model_info import is_runtime_model, model_device


def compute_metrics(gt: dict, records, dets: Detections | Mapping[int, dict], class_names: list[str], eval_cfg,
                    backend: str | None = None, cat_ids: list[int] | None = None) -> tuple[dict, dict, CocoResults]:
    """The whole metric computation of one validation, from predictions to numbers.

    gt: ``records_to_coco_gt(records, class_names, cat_ids)``; records: a RecordTable (or a list
    of Records); dets: Detections, or {image_id: {"boxes" [k, 4] xyxy original pixels, "scores"
    [k], "labels" [k], optionally "num_nms"}}, covering every record. backend: overrides
    eval_cfg.backend. cat_ids: COCO category id of each label, as in ``gt`` (default 1..nc).
    Returns (metrics, curves, coco_results): metrics = COCO numbers (utils.coco_eval) plus
    "operative" (utils.metrics report) and "max_det" (``utils.metrics.max_det_report``); curves for
    the plots; the COCO results as arrays.
    """
    ids = _image_ids(records)
    cat_ids = list(cat_ids) if cat_ids is not None else list(range(1, len(class_names) + 1))
    dets = (dets if isinstance(dets, Detections) else Detections.from_dict(dets)).select(ids)
    results = CocoResults.from_detections(dets, cat_ids)
    metrics = coco_evaluate(gt, results, class_names, backend=backend or eval_cfg.backend, img_ids=ids)
    gts = [{"boxes": r.boxes, "labels": r.labels, "ignore": r.ignore, "file": r.file} for r in records]
    report, curves = operative_metrics(dets.per_image(), gts, class_names, conf=eval_cfg.conf_prod,
                                       match_iou=eval_cfg.match_iou, sweep_confs=eval_cfg.sweep_confs,
                                       max_det=eval_cfg.max_det)
    metrics["operative"] = report
    metrics["max_det"] = max_det_report(np.diff(dets.offsets), eval_cfg.max_det, dets.num_nms)
    return metrics, curves, results


def _image_ids(records) -> list[int]:
    """Image ids of a RecordTable (one array) or of any sequence of records."""
    ids = getattr(records, "image_ids", None)
    return ids.tolist() if ids is not None else [int(r.image_id) for r in records]


class Evaluator:
    """run(model, loader, out_dir, epoch) -> metrics dict (same on every rank); show() prints the dashboard.

    Each rank predicts its share; predictions are gathered to rank 0 and de-duplicated by image id
    (DistributedSampler pads with repeated images), so N processes score like one.
    records: the images scored (a RecordTable; a list of Records is converted); num_images_total:
    images in the split (default len(records)).
    """

    def __init__(self, cfg, records: list, dist: DistInfo, num_images_total: int | None = None) -> None:
        self.cfg, self.records, self.dist = cfg, RecordTable.coerce(records), dist
        self.class_names = list(cfg.data.class_names)
        self.cat_ids = cfg.coco_category_ids()  # results and ground truth keep the dataset's ids
        self.num_images_total = len(records) if num_images_total is None else int(num_images_total)
        self._gt: dict | None = None  # COCO ground truth, built once on first scoring
        self._warned_ids = False  # the "json files share image ids" warning, said once
        self.history: list[dict] | None = None  # per-epoch scalars, loaded from out_dir on first scoring
        self.seconds: float | None = None  # duration of the last metric computation

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, loader) -> dict[int, dict]:
        """{image_id: {"boxes" [K,4] original pixels, "scores" [K], "labels" [K], "num_nms" int}} for
        this rank ("num_nms": boxes NMS kept before the eval.max_det cap).

        ``model``: a PyTorch detector or a runtime model of core.deploy.runtime (same images, decode, NMS).

        Only the evaluator's records are predicted. The loader may cover more images (its first
        ones being the records, as with eval.max_images): an eval loader yields image ids in
        increasing order on each rank, so the loop stops at the first batch past the last record
        (rectangular batches come in aspect-ratio order: there the loop reads them all).
        """
        net = unwrap(model)  # a runtime model (core.deploy.runtime: .onnx, .tflite) is its own net
        was_training = getattr(net, "training", False)
        net.eval()
        e, out = self.cfg.eval, {}
        wanted = set(self.records.image_ids.tolist())
        last = max(wanted, default=0)
        ordered = getattr(getattr(loader, "dataset", None), "canvas_hw", None) is None
        device = model_device(net)
        for images, _, metas in tqdm(loader, desc="val", disable=not self.dist.is_main, leave=False):
            ids = [int(m["image_id"]) for m in metas]
            if ordered and min(ids) > last:
                break
            boxes, scores = infer(net, to_input(images, device), self.cfg.train)
            dets = postprocess(boxes, scores, e.conf_thres, e.nms_iou, e.max_det, e.pre_nms_topk,
                               agnostic=e.agnostic_nms)
            for det, meta, i in zip(dets, metas, ids):
                if i in wanted:
                    out[i] = _to_original(det, meta)
        net.train(was_training)
        return out

    def run(self, model: torch.nn.Module, loader, out_dir: Path | None = None,
            epoch: int | None = None) -> dict:
        """Predict, gather to rank 0, score there (files into out_dir), broadcast the metrics."""
        parts = gather_object(Detections.from_dict(self.predict(model, loader)))  # num_nms travels along
        metrics = None
        if self.dist.is_main:  # duplicates from sampler padding collapse onto one image id
            metrics = self.score(Detections.concat(parts), out_dir, epoch)
        return broadcast_object(metrics)

    def score(self, dets: Detections | Mapping[int, dict], out_dir: Path | None = None,
              epoch: int | None = None) -> dict:
        """All metrics of ``dets`` (Detections, or {image_id: {"boxes", "scores", "labels"}, optionally
        "num_nms": boxes NMS kept before the max_det cap}). Writes JSON and plots into out_dir when given."""
        t0 = time.perf_counter()
        if self._gt is None:
            self._gt = records_to_coco_gt(self.records, self.class_names, self.cat_ids)
        if not isinstance(dets, Detections):
            dets = Detections.from_dict(dets)
        missing = set(self.records.image_ids.tolist()) - set(dets.image_ids.tolist())
        if missing:
            raise RuntimeError(f"no predictions were produced for {len(missing)} val images "
                               f"(e.g. image ids {sorted(missing)[:5]})")
        metrics, curves, results = compute_metrics(self._gt, self.records, dets, self.class_names,
                                                   self.cfg.eval, cat_ids=self.cat_ids)
        metrics["num_images_total"] = self.num_images_total
        self.seconds = time.perf_counter() - t0  # kept out of the metrics: they stay reproducible
        self._log(metrics)
        if epoch is not None:
            self._add_history(metrics, epoch, out_dir)
        if out_dir is not None:
            self._write(Path(out_dir), metrics, curves, results, epoch)
        return metrics

    def show(self, metrics: dict, out_dir: Path | None = None, epoch: int | None = None,
             total_epochs: int | None = None, best_before: float | None = None,
             reference: dict | None = None) -> str:
        """Print the dashboard (if eval.dashboard) and save it as dashboard.txt; returns its plain text."""
        board = build_dashboard(metrics, self.history or [], epoch=epoch, total_epochs=total_epochs,
                                best_before=best_before, reference=reference,
                                trend_epochs=self.cfg.eval.trend_epochs, seconds=self.seconds)
        if self.cfg.eval.dashboard:
            print_dashboard(board)
        text = render_text(board)
        if out_dir is not None:
            (Path(out_dir) / "dashboard.txt").write_text(text, encoding="utf-8")
        return text

    def best_epoch(self) -> int | None:
        """Epoch of the highest mAP in the history (None before the first scored epoch, and off rank 0)."""
        return max(self.history, key=lambda h: h["mAP"])["epoch"] if self.history else None

    # -- helpers ----------------------------------------------------------------------
    def _log(self, metrics: dict) -> None:
        n, m, op = metrics["num_images"], self.num_images_total, metrics["operative"]
        if n != m:
            logger.warning(f"evaluated {n} of {m} images ({m - n} excluded); the scores cover those {n} only")
        def f(v: float) -> str:
            return f"{v:.4f}" if v >= 0 else "-"  # -1: not measurable

        logger.info(f"val: mAP {f(metrics['mAP'])}, AP50 {f(metrics['mAP50'])}, "
                    f"AR100 {f(metrics['AR100'])} | "
                    f"@conf {op['conf']:.2f}: P {f(op['precision'])} R {f(op['recall'])} F1 {f(op['f1'])} "
                    f"({metrics['backend']}, {n} images)")

    def _add_history(self, metrics: dict, epoch: int, out_dir: Path | None) -> None:
        if self.history is None:
            path = Path(out_dir) / "history.json" if out_dir is not None else None
            self.history = json.loads(path.read_text()) if path is not None and path.is_file() else []
        # A resumed run validates an epoch again: its new line replaces the old ones from there on.
        self.history = [h for h in self.history if h["epoch"] < epoch] + [history_entry(metrics, epoch)]

    def _write(self, out_dir: Path, metrics: dict, curves: dict, results: CocoResults, epoch: int | None) -> None:
        e = self.cfg.eval
        if e.save_json:
            write_json_atomic(out_dir / "metrics.json", metrics)
            gt, results = self._exported(results)
            write_results_json(out_dir / "predictions.json", results)
            write_json_atomic(out_dir / "ground_truth.json", gt)
        if self.history is not None:
            write_json_atomic(out_dir / "history.json", self.history)
        if e.plots:
            from utils.plots import plot_confusion_matrix, plot_metric_curves
            plot_dir = out_dir / "plots" / (f"epoch{epoch:03d}" if epoch is not None else "")
            title = f"(epoch {epoch})" if epoch is not None else ""
            conf = metrics["operative"]["confusion"]
            cm_title = f"confusion at conf {e.conf_prod:.2f}, IoU {e.match_iou:.2f} {title}".strip()
            plot_confusion_matrix(conf["matrix"], conf["labels"], plot_dir / "confusion_matrix.png",
                                  title=cm_title)
            plot_metric_curves(curves, self.class_names, plot_dir, title=title)

    def _exported(self, results: CocoResults) -> tuple[dict, CocoResults]:
        """Ground truth and results as the files hold them: under the dataset's own image ids (a COCO
        json's), so predictions.json scores against the original annotation file; split positions
        when the data has no such ids (VOC, YOLO txt) or its json files share ids."""
        mapped = with_source_image_ids(self._gt, results, self.records.image_ids, self.records.source_ids)
        if mapped is None:
            if not self._warned_ids and (self.records.source_ids >= 0).any():
                self._warned_ids = True
                logger.warning("the val json files share image ids: predictions.json and ground_truth.json "
                               "number the images 1..N in split order instead")
            return self._gt, results
        return mapped


def infer(net, images: Tensor, train_cfg) -> tuple[Tensor, Tensor]:
    """(boxes [B, P, 4] xyxy input pixels, scores [B, P, nc]) in fp32 of images [B, 3, H, W] float 0..1.

    A PyTorch net runs its forward under the training's autocast (``utils.amp.autocast_for`` of
    train.amp, train.amp_dtype) and decodes in fp32; a runtime model (.onnx, .tflite) runs as
    exported, and only at the one input size it was exported for (a clear error otherwise).
    """
    hw = tuple(images.shape[2:])
    if is_runtime_model(net):
        if hw != tuple(net.img_hw):
            raise ConfigError(f"{net.path} was exported for fixed {net.img_hw[0]}x{net.img_hw[1]} inputs and cannot "
                              f"run a {hw[0]}x{hw[1]} batch; score it with eval.rect=False (square letterbox)")
        return net.decode(net(images), hw)
    with autocast_for(images.device, train_cfg.amp, train_cfg.amp_dtype):
        raw = net(images)
    return net.decode(fp32(raw), hw)


def rect_for(cfg, model) -> bool:
    """eval.rect for ``model``. An exported model (.onnx, .tflite) takes one fixed input size, so it
    is scored on the square letterbox instead, with a warning: the config stored in an export may
    carry eval.rect=True from training, and the square numbers are still the model's own."""
    if cfg.eval.rect and is_runtime_model(model):
        h, w = model.img_hw
        logger.warning(f"eval.rect=True, but {model.path} was exported for fixed {h}x{w} inputs: scoring it on "
                       f"the square letterbox (eval.rect=False)")
        return False
    return bool(cfg.eval.rect)


def _to_original(det: dict, meta: dict) -> dict:
    """Letterboxed input pixels -> original-image pixels, as numpy arrays (plus the NMS count)."""
    boxes = boxes_from_letterbox(det["boxes"].cpu().numpy(), meta["scale"], meta["pad"], meta["orig_hw"])
    return {"boxes": boxes, "scores": det["scores"].cpu().numpy(), "labels": det["labels"].cpu().numpy(),
            "num_nms": int(det["num_nms"])}
