"""Evaluator.run under a 2-process gloo group: each rank's predictions reach rank 0 only, padded
duplicates collapse, and both ranks get the metrics of a 1-process scoring of all predictions."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp
from tiny_data import free_port

from core.evaluation.evaluator import Evaluator
from datasets import build_records
from tests.datasets.three_formats import NAMES, cfg_for, rect_image, write_yolo
from utils import dist as D
from utils.dist import DistInfo

SHARES = {0: [1, 3, 5, 2], 1: [2, 4, 6, 1]}  # what a padded DistributedSampler gives 2 ranks of 6 images


def _data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    items = []
    for k in range(6):
        objs = [(int(rng.integers(3)), 4 + 9 * j, 5, 14 + 9 * j, 30) for j in range(1 + k % 3)]
        items.append((f"val{k:03d}", rect_image((48, 64), objs, k), objs))
    return write_yolo(root, {"train": items, "val": items})


def _cfg(root: Path):
    cfg = cfg_for(root, "yolo", root.parent / "cache", class_names=list(NAMES))
    cfg.eval.plots = False
    return cfg


def _predictions(records) -> dict[int, dict]:
    """GT boxes jittered, one label flipped per image, plus two false positives, seeded per image."""
    out = {}
    for r in records:
        rng = np.random.default_rng(r.image_id)
        boxes = np.concatenate([r.boxes + rng.normal(0, 1.5, r.boxes.shape), [[40, 30, 60, 45], [1, 1, 9, 9]]])
        labels = np.concatenate([r.labels, [0, 2]])
        labels[0] = (labels[0] + 1) % 3
        out[r.image_id] = {"boxes": boxes.astype(np.float32), "scores": rng.random(len(labels)).astype(np.float32),
                           "labels": labels}
    return out


def _worker(rank: int, world_size: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    info = D.init_distributed(timeout_s=60)
    try:
        records, _ = build_records(_cfg(Path(root)), "val")
        evaluator = Evaluator(_cfg(Path(root)), records, info)
        mine = {i: d for i, d in _predictions(records).items() if i in SHARES[rank]}
        evaluator.predict = lambda model, loader: mine  # this rank's share, as the val loop gives it
        metrics = evaluator.run(None, None, Path(out) / "val" if rank == 0 else None)
        gathered = D.gather_object(sorted(mine))
        (Path(out) / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "gathered": gathered}))
    finally:
        D.cleanup()


def test_two_ranks_gather_to_rank0_and_score_like_one_process(tmp_path):
    root = _data(tmp_path / "y")
    records, _ = build_records(_cfg(root), "val")  # builds the label cache the ranks then share
    mp.spawn(_worker, args=(2, free_port(), str(root), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["gathered"] == [[1, 2, 3, 5], [1, 2, 4, 6]] and ranks[1]["gathered"] is None
    cpu = DistInfo.single()
    single = Evaluator(_cfg(root), records, cpu).score(_predictions(records), tmp_path / "single")
    single = json.loads(json.dumps(single))  # the ranks' metrics went through json too
    assert 0.1 < single["mAP"] < 0.9 and single["num_images"] == 6
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == single
    preds = [json.loads((tmp_path / d / "predictions.json").read_text()) for d in ("val", "single")]
    assert preds[0] == preds[1] and len(preds[0]) == sum(len(r.labels) + 2 for r in records)


def test_scoring_names_images_without_predictions(tmp_path):
    root = _data(tmp_path / "y")
    records, _ = build_records(_cfg(root), "val")
    cpu = DistInfo.single()
    dets = _predictions(records)
    del dets[4]
    with pytest.raises(RuntimeError, match=r"no predictions were produced for 1 val images \(e.g. image ids \[4\]\)"):
        Evaluator(_cfg(root), records, cpu).score(dets)
