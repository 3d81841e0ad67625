"""A tiny VOC dataset copied from the bundled BCCD images, and overrides for a tiny fast model."""
from __future__ import annotations

import shutil
from pathlib import Path

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


def tiny_overrides(root: Path, **extra) -> list[str]:
    """Overrides for a small, fast, deterministic CPU run on make_tiny_voc data."""
    base = {
        "data.root": str(root), "data.img_size": 64, "data.num_workers": 0, "model.channel_sparsity": 0.25,
        "train.batch_size": 4, "eval.batch_size": 4, "train.epochs": 2, "sched.warmup_epochs": 0.5,
        "aug.mosaic_prob": 0.5, "train.num_threads": 1,
    }
    base.update(extra)
    return [f"{k}={v!r}" for k, v in base.items()]
