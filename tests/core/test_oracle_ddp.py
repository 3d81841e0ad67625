"""The real eval loader, Evaluator and gather under a 2-process gloo group, driven by the oracles of
tests/core/oracle.py: split over two ranks (8 images, 3 per batch: the sampler pads), square and
rectangular batches score exactly like one process -- mAP 1.0 for the oracle, the by-construction
mAP for the perturbed oracle -- and write the same predictions.json, image by image."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from oracle import CPU, Perturbation, coco_xyxy, evaluate, expected_coco, make_oracle_voc, oracle_cfg, oracle_for
from tiny_data import free_port

from core.evaluation.evaluator import Evaluator
from core.loaders import build_eval_loader
from datasets import build_records
from utils import dist as D

CASES = {"square": (False, None), "rect": (True, None), "rect_perturbed": (True, Perturbation(iou=0.625))}


def _worker(rank: int, world_size: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    info = D.init_distributed(timeout_s=120)
    try:
        for name, (rect, perturb) in CASES.items():
            cfg = oracle_cfg(Path(root), **{"eval.rect": rect, "data.img_size": 416})
            loader = build_eval_loader(cfg, info, "val")
            # every rank's oracle knows the whole split; its loader shows it its own share only
            oracle = oracle_for(build_records(cfg, "val")[0], 3, perturb)
            seen = sorted(int(m["image_id"]) for _, _, metas in loader for m in metas)
            metrics = Evaluator(cfg, loader.dataset.records, info).run(
                oracle, loader, Path(out) / name if rank == 0 else None)
            (Path(out) / f"{name}_rank{rank}.json").write_text(json.dumps({"metrics": metrics, "seen": seen}))
    finally:
        D.cleanup()


@pytest.mark.slow
def test_two_ranks_score_the_oracles_like_one_process(tmp_path):
    root = make_oracle_voc(tmp_path / "voc")
    records, _ = build_records(oracle_cfg(root), "val")  # the label cache both ranks then read
    mp.spawn(_worker, args=(2, free_port(), str(root), str(tmp_path)), nprocs=2, join=True)
    for name, (rect, perturb) in CASES.items():
        ranks = [json.loads((tmp_path / f"{name}_rank{r}.json").read_text()) for r in range(2)]
        assert ranks[0]["metrics"] == ranks[1]["metrics"], name
        # each rank saw a real share, not the whole split; together they cover it
        assert 0 < len(ranks[0]["seen"]) < 8 and set(ranks[0]["seen"]) | set(ranks[1]["seen"]) == set(range(1, 9))
        cfg = oracle_cfg(root, **{"eval.rect": rect, "data.img_size": 416})
        loader = build_eval_loader(cfg, CPU, "val")
        single, preds1, recs = evaluate(cfg, oracle_for(loader.dataset.records, 3, perturb), tmp_path / f"{name}_1")
        single = json.loads(json.dumps(single))  # the ranks' metrics went through json too
        want = 1.0 if perturb is None else expected_coco(recs, perturb, 3)["mAP"]
        assert single["mAP"] == pytest.approx(want, abs=1e-9) and want > 0.5, name
        assert ranks[0]["metrics"] == single, name
        preds2 = json.loads((tmp_path / name / "predictions.json").read_text())
        assert len(preds2) == len(preds1) == sum(len(r.labels) for r in records)  # no padded duplicates
        for r in records:
            assert coco_xyxy(preds2, r.image_id).tolist() == coco_xyxy(preds1, r.image_id).tolist(), (name, r.file)
