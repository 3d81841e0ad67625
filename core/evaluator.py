"""Evaluator: model predictions on a split -> COCO metrics from faster-coco-eval or pycocotools."""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from datasets.transforms import boxes_from_letterbox
from models.postprocess import postprocess
from utils.coco_eval import coco_evaluate, detections_to_coco_results, records_to_coco_gt, write_json_atomic
from utils.dist import DistInfo, all_gather_object, broadcast_object, unwrap


class Evaluator:
    """run(model, loader, out_dir) -> metrics dict (same on every rank).

    Each rank predicts its share; predictions are gathered and de-duplicated by image id
    (DistributedSampler pads with repeated images), so N processes score like one.
    """

    def __init__(self, cfg, records: list, dist: DistInfo) -> None:
        self.cfg, self.records, self.dist = cfg, records, dist
        self.class_names = list(cfg.data.class_names)
        self.cat_ids = list(range(1, len(self.class_names) + 1))
        self._gt: dict | None = None  # COCO ground truth, built once on first scoring

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, loader) -> dict[int, dict]:
        """{image_id: {"boxes" [K,4] original pixels, "scores" [K], "labels" [K]}} for this rank."""
        net = unwrap(model)
        was_training = net.training
        net.eval()
        e, out = self.cfg.eval, {}
        device = next(net.parameters()).device
        for images, _, metas in tqdm(loader, desc="val", disable=not self.dist.is_main, leave=False):
            images = images.to(device, non_blocking=True)
            boxes, scores = net.decode(net(images), tuple(images.shape[2:]))
            dets = postprocess(boxes, scores, e.conf_thres, e.nms_iou, e.max_det, e.pre_nms_topk)
            for det, meta in zip(dets, metas):
                out[int(meta["image_id"])] = _to_original(det, meta)
        net.train(was_training)
        return out

    def run(self, model: torch.nn.Module, loader, out_dir: Path | None = None) -> dict:
        local = self.predict(model, loader)
        merged: dict[int, dict] = {}
        for part in all_gather_object(local):
            merged.update(part)  # duplicates from sampler padding collapse onto one image id
        metrics = self._score(merged, out_dir) if self.dist.is_main else None
        return broadcast_object(metrics)

    def _score(self, dets: dict[int, dict], out_dir: Path | None) -> dict:
        if self._gt is None:
            self._gt = records_to_coco_gt(self.records, self.class_names, self.cat_ids)
        gt = self._gt
        missing = {r.image_id for r in self.records} - set(dets)
        if missing:
            raise RuntimeError(f"no predictions were produced for {len(missing)} val images "
                               f"(e.g. image ids {sorted(missing)[:5]})")
        det_list = [{"image_id": i, **d} for i, d in sorted(dets.items())]
        results = detections_to_coco_results(det_list, self.cat_ids)
        metrics = coco_evaluate(gt, results, self.class_names, backend=self.cfg.eval.backend)
        if out_dir is not None:
            out_dir = Path(out_dir)
            write_json_atomic(out_dir / "metrics.json", metrics)
            write_json_atomic(out_dir / "predictions.json", results)
            write_json_atomic(out_dir / "ground_truth.json", gt)
        return metrics


def _to_original(det: dict, meta: dict) -> dict:
    """Letterboxed input pixels -> original-image pixels, as numpy arrays."""
    boxes = boxes_from_letterbox(det["boxes"].cpu().numpy(), meta["scale"], meta["pad"], meta["orig_hw"])
    return {"boxes": boxes, "scores": det["scores"].cpu().numpy(), "labels": det["labels"].cpu().numpy()}
