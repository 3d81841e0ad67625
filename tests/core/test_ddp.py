"""A 2-process gloo DDP run of train and val on CPU: its val numbers and predictions equal a
1-process val of the checkpoint, on a model whose mAP is well inside (0, 1)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_data import assert_same_predictions, easy_overrides, free_port

REPO = Path(__file__).resolve().parents[2]
KEYS = ("mAP", "mAP50", "mAP75", "AR1", "AR10", "AR100")


def run(args, **env):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    p = subprocess.run(args, check=False, cwd=REPO, env=e, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def outputs(d: Path) -> tuple[dict, list]:
    return json.loads((d / "metrics.json").read_text()), json.loads((d / "predictions.json").read_text())


@pytest.mark.slow
def test_ddp_train_and_val_equal_single_process(easy_run, tmp_path):
    """One more epoch under DDP from the easy run's weights (5 val images: the sampler pads rank 1),
    then val with 2 processes and with 1: the same numbers and detections, and the validation
    inside the DDP training scored those very weights (the EMA in last.pth)."""
    root, easy = easy_run
    ov = easy_overrides(root, **{"train.epochs": 1, "train.init_weights": str(easy / "last.pth")})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={free_port()}", "main.py"]
    run(torchrun + ["--config", "bccd_yolo_r18", "--task", "train", "--out", str(tmp_path / "train")] + ov)
    ckpt = tmp_path / "train" / "last.pth"
    assert "world size 2" in (tmp_path / "train" / "train.log").read_text()
    run(torchrun + ["--task", "val", "--ckpt", str(ckpt), "--out", str(tmp_path / "val2")])
    run([sys.executable, "main.py", "--task", "val", "--ckpt", str(ckpt), "--out", str(tmp_path / "val1")])
    (m1, p1), (m2, p2), (mt, pt) = (outputs(tmp_path / d) for d in ("val1", "val2", "train/val"))
    assert m1["num_images"] == m2["num_images"] == mt["num_images"] == 5
    assert 0.05 < m1["mAP"] < 0.95 and 0.05 < m1["AR100"] < 1.0  # numbers worth comparing
    for k in KEYS:
        assert m1[k] == pytest.approx(m2[k], abs=1e-9) and m1[k] == pytest.approx(mt[k], abs=1e-9), k
    assert len(p1) == len(p2)  # no duplicated padded images
    assert_same_predictions(p1, p2)
    assert_same_predictions(p1, pt)
