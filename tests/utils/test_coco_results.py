"""COCO results as arrays: the same numbers, files and scores as the list-of-dicts route, and the
two backends agree at a scaled-down COCO size."""
import contextlib
import copy
import io
import json

import numpy as np
import pytest

from tests.utils.test_coco_eval import NAMES, make_records, noisy_dets
from utils.coco_eval import (
    BACKENDS,
    METRIC_KEYS,
    coco_evaluate,
    detections_to_coco_results,
    records_to_coco_gt,
    write_results_json,
)
from utils.coco_results import CocoResults
from utils.detections import Detections
from utils.files import write_json_atomic

CAT_IDS = [3, 5, 8, 13]


def _dets(recs, seed=1) -> Detections:
    return Detections.from_dict({d["image_id"]: d for d in noisy_dets(recs, seed)})


def test_arrays_give_the_results_list_and_its_json_text(tmp_path):
    recs = make_records(seed=2)
    listed = noisy_dets(recs)
    arrays = CocoResults.from_detections(_dets(recs), CAT_IDS)
    dicts = detections_to_coco_results(listed, CAT_IDS)
    assert len(arrays) == len(dicts) == sum(len(d["scores"]) for d in listed)
    assert CocoResults.from_dicts(dicts).bbox.tolist() == arrays.bbox.tolist()
    write_json_atomic(tmp_path / "dicts.json", dicts)
    write_results_json(tmp_path / "arrays.json", arrays, chunk=7)  # many chunks
    assert (tmp_path / "arrays.json").read_text() == (tmp_path / "dicts.json").read_text()
    write_results_json(tmp_path / "empty.json", CocoResults.from_dicts([]))
    assert json.loads((tmp_path / "empty.json").read_text()) == []
    bad = _dets(recs)
    bad.labels[5] = 4
    with pytest.raises(ValueError, match=r"predicted label 4 has no category id"):
        CocoResults.from_detections(bad, CAT_IDS)


def _load_res_stats(gt: dict, results: list[dict], backend: str) -> tuple[np.ndarray, np.ndarray]:
    """stats and precision through the backend's own loadRes (the reference route)."""
    be = BACKENDS[backend]()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = be.coco_cls()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = be.make_eval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:9]), np.asarray(ev.eval["precision"])


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_results_built_directly_score_exactly_like_load_res(backend):
    recs = make_records(seed=3, n_images=40, with_ignore=True)
    gt = records_to_coco_gt(recs, NAMES, CAT_IDS)
    results = CocoResults.from_detections(_dets(recs, seed=5), CAT_IDS)
    m = coco_evaluate(gt, results, NAMES, backend=backend)
    stats, _ = _load_res_stats(gt, detections_to_coco_results(noisy_dets(recs, 5), CAT_IDS), backend)
    assert 0.05 < m["mAP"] < 0.95
    assert [m[k] for k in METRIC_KEYS] == stats.tolist()  # exactly, not approximately
    same = coco_evaluate(gt, detections_to_coco_results(noisy_dets(recs, 5), CAT_IDS), NAMES, backend=backend)
    assert same == m


def _coco_like(n_images: int, dets_per_image: int, nc: int = 80, seed: int = 0):
    """Records with 0-6 boxes over ``nc`` classes; detections: the GT boxes jittered, then random ones."""
    rng = np.random.default_rng(seed)
    recs, dets = make_records(seed=seed, n_images=n_images), {}
    for r in recs:
        r.labels = rng.integers(0, nc, len(r.labels))
        k = dets_per_image - len(r.boxes)
        xy, wh = rng.uniform(0, 500, (k, 2)), rng.uniform(4, 200, (k, 2))
        boxes = np.concatenate([r.boxes + rng.normal(0, 3, r.boxes.shape), np.concatenate([xy, xy + wh], 1)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(r.boxes)), rng.uniform(0.0, 0.6, k)])  # found boxes rank high
        dets[r.image_id] = {"boxes": boxes.astype(np.float32), "scores": scores.astype(np.float32),
                            "labels": np.concatenate([r.labels, rng.integers(0, nc, k)])}
    return recs, Detections.from_dict(dets)


def test_backends_agree_at_500_images_x_300_detections_over_80_classes():
    names = [f"c{i}" for i in range(80)]
    recs, dets = _coco_like(500, 300)
    gt = records_to_coco_gt(recs, names)
    results = CocoResults.from_detections(dets, list(range(1, 81)))
    assert len(results) == 150_000
    fast = coco_evaluate(gt, results, names, backend="faster_coco_eval")
    ref = coco_evaluate(gt, results, names, backend="pycocotools")
    assert 0.05 < ref["mAP"] < 0.95
    for k in METRIC_KEYS:
        assert fast[k] == pytest.approx(ref[k], abs=1e-6), k
    for a, b in zip(fast["per_class"], ref["per_class"]):
        assert a["AP"] == pytest.approx(b["AP"], abs=1e-6) and a["AR100"] == pytest.approx(b["AR100"], abs=1e-6)
        assert (a["num_gt"], a["num_det"]) == (b["num_gt"], b["num_det"])
    assert sum(c["num_det"] for c in fast["per_class"]) == 150_000


def test_detections_concat_drops_repeated_images_and_select_orders():
    recs = make_records(seed=4, n_images=6)
    whole = _dets(recs)
    rank0, rank1 = whole.select([1, 3, 5]), whole.select([2, 4, 6, 1])  # rank 1 padded with image 1
    merged = Detections.concat([rank0, rank1])
    assert merged.image_ids.tolist() == [1, 3, 5, 2, 4, 6] and merged.num_dets == whole.num_dets
    back = merged.select(whole.image_ids)
    for name in ("offsets", "boxes", "scores", "labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(whole, name))
    assert Detections.concat([]).num_dets == 0 and len(whole.image(2)["scores"]) == whole.offsets[3] - whole.offsets[2]
    with pytest.raises(ValueError, match=r"no predictions were produced for 1 images \(e.g. image ids \[9\]\)"):
        whole.select([1, 9])


def test_nms_counts_travel_with_the_detections_through_concat_and_select():
    """Each rank's per-image NMS counts reach rank 0 inside Detections: padding duplicates dropped,
    order followed; a part without counts makes them unknown (None)."""
    def part(ids, nms):
        return Detections.from_dict({i: {"boxes": np.zeros((1, 4)), "scores": np.ones(1), "labels": np.zeros(1),
                                         "num_nms": n} for i, n in zip(ids, nms)})
    whole = Detections.concat([part([1, 3], [7, 0]), part([2, 1], [150, 7])])  # image 1 twice (padding)
    assert whole.image_ids.tolist() == [1, 3, 2] and whole.num_nms.tolist() == [7, 0, 150]
    assert whole.select([2, 1, 3]).num_nms.tolist() == [150, 7, 0]
    bare = Detections.from_dict({4: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}})
    assert bare.num_nms is None and Detections.concat([whole, bare]).num_nms is None
