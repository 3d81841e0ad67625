"""A tiny VOC dataset copied from the bundled BCCD images, and overrides for a tiny fast model."""
from __future__ import annotations

import shutil
import socket
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


def free_port() -> int:
    """A TCP port free on localhost now (for a process group's or torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
