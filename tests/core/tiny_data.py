"""A tiny VOC dataset copied from the bundled BCCD images, and overrides for a tiny fast model."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np

BCCD = Path(__file__).resolve().parents[2] / "data" / "BCCD"


def make_tiny_voc(root: Path, n_train: int = 8, n_val: int = 5) -> Path:
    """Copy the first n_train BCCD train and n_val BCCD val images (with xml) under root."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        ids = (BCCD / "ImageSets/Main" / f"{split}.txt").read_text().split()[:n]
        for i in ids:
            shutil.copy(BCCD / "Annotations" / f"{i}.xml", root / "Annotations")
            shutil.copy(BCCD / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
        (root / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def tiny_overrides(root: Path, yolo: bool = True, **extra) -> list[str]:
    """Overrides for a small, fast, deterministic CPU run on make_tiny_voc data; ``yolo``: the config's
    model is the simple YOLO (only it reads model.channel_sparsity, which these make 0.25)."""
    base = {
        "data.root": str(root), "data.img_size": 64, "data.num_workers": 0,
        "train.batch_size": 4, "eval.batch_size": 4, "train.epochs": 2, "sched.warmup_epochs": 0.5,
        "aug.mosaic_prob": 0.5, "train.num_threads": 1,
        "data.cache_dir": str(Path(root).parent / f"{Path(root).name}_cache"),  # not the repo's runs/cache
    }
    if yolo and extra.get("model.name", "yolo") == "yolo":
        base["model.channel_sparsity"] = 0.25
    base.update(extra)
    return [f"{k}={v!r}" for k, v in base.items()]


def randomize_bn(model, mean: float = 0.2, var: tuple[float, float] = (0.5, 2.0),
                 weight: tuple[float, float] = (0.5, 1.5), bias: float = 0.1):
    """Non-trivial BatchNorm statistics and affine terms (BN folding and fake quantisation must carry
    them), drawn uniformly (global torch RNG) per BN layer in this order: running mean in [-mean, mean], running var
    in ``var``, weight in ``weight``, bias in [-bias, bias] (left alone when bias is 0). Returns model."""
    import torch
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-mean, mean)
                m.running_var.uniform_(*var)
                m.weight.uniform_(*weight)
                if bias:
                    m.bias.uniform_(-bias, bias)
    return model


def train_tiny(tmp: Path, n_train: int = 4, n_val: int = 3) -> tuple[Path, Path]:
    """make_tiny_voc data under tmp/data and a bccd_yolo_r18 checkpoint trained one epoch on it
    (tmp/run/last.pth); returns (data root, checkpoint)."""
    from main import main
    root = make_tiny_voc(tmp / "data", n_train=n_train, n_val=n_val)
    ov = tiny_overrides(root, **{"train.epochs": 1})
    assert main(["--config", "bccd_yolo_r18", "--task", "train", "--out", str(tmp / "run")] + ov) == 0
    return root, tmp / "run" / "last.pth"


# -- data a tiny model learns in seconds: its val scores are well inside (0, 1) -----------------------
EASY_NAMES = ["cat", "dog"]
EASY = {  # 16 epochs of 4 steps at 128 px: mAP about 0.27 on the val split (seeds 0 and 1), ~15 s on one core
    "data.img_size": 128, "train.epochs": 16, "train.batch_size": 2, "optim.lr": 0.02, "sched.warmup_epochs": 1.0,
    "aug.mosaic_prob": 0.0, "aug.scale": (1.0, 1.0), "aug.translate": 0.0, "aug.hsv_h": 0.0, "aug.hsv_s": 0.0,
    "aug.hsv_v": 0.0, "train.ema_decay": 0.6, "train.ema_tau": 1.0,  # an EMA that follows, yet differs from, the weights
    "train.eval_interval": 8, "eval.plots": False, "eval.dashboard": False, "data.class_names": EASY_NAMES,
}


def make_easy_voc(root: Path, n_train: int = 8, n_val: int = 5) -> Path:
    """VOC data of flat 64x80 images with one or two large rectangles of two class colours."""
    from tests.datasets.three_formats import rect_image, write_voc
    rng = np.random.default_rng(0)

    def item(k: int, split: str):
        objs = []
        for j in range(1 + k % 2):
            c, bw, bh = int(rng.integers(2)), int(rng.integers(18, 34)), int(rng.integers(18, 30))
            x1 = int(rng.integers(0, 80 - bw)) if j == 0 else (0 if objs[0][1] > 40 else 80 - bw)
            y1 = int(rng.integers(0, 64 - bh))
            objs.append((c, x1, y1, x1 + bw, y1 + bh))
        return f"{split}{k:03d}", rect_image((64, 80), objs, k), objs

    return write_voc(root, {"train": [item(k, "train") for k in range(n_train)],
                            "val": [item(k, "val") for k in range(n_val)]})


def easy_overrides(root: Path, **extra) -> list[str]:
    """tiny_overrides with the EASY recipe (``extra`` on top)."""
    return tiny_overrides(root, **{**EASY, **extra})


def by_image(rows: list[dict]) -> dict[int, list[dict]]:
    """A COCO results list (predictions.json) as {image_id: [{"cls", "box" [x, y, w, h], "score"}]}."""
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(r["image_id"], []).append({"cls": r["category_id"], "box": r["bbox"], "score": r["score"]})
    return out


def assert_same_detections(a: list[dict], b: list[dict], box_tol: float, score_tol: float) -> None:
    """Two detection lists of one image ({"cls", "box", "score"}) agree, order-free (near-equal scores
    may be listed in either order): one to one, each detection of ``a`` has its own in ``b`` of its
    class with the box and score within the tolerances."""
    assert sorted(d["cls"] for d in a) == sorted(d["cls"] for d in b)
    if not a:
        return
    cost = np.array([[max(np.abs(np.subtract(e["box"], d["box"])).max() / box_tol,
                          abs(e["score"] - d["score"]) / score_tol) if e["cls"] == d["cls"] else np.inf
                      for e in b] for d in a])
    nearest = cost.argmin(1)
    assert len(set(nearest.tolist())) == len(b), "two detections have the same nearest one"
    worst = int(cost[np.arange(len(a)), nearest].argmax())
    assert cost[worst, nearest[worst]] <= 1.0, (a[worst], b[nearest[worst]])


def assert_same_predictions(a: list[dict], b: list[dict], box_tol: float = 1e-3, score_tol: float = 1e-5) -> None:
    """Two predictions.json lists hold the same detections, image by image: float noise of another
    memory layout or batch composition passes, other weights do not."""
    pa, pb = by_image(a), by_image(b)
    assert sorted(pa) == sorted(pb)
    for image_id, dets in pa.items():
        assert_same_detections(dets, pb[image_id], box_tol, score_tol)


def free_port() -> int:
    """A TCP port free on localhost now (for a process group's or torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
