"""A 2-process gloo DDP run of train and val on CPU: its val numbers equal a 1-process val."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_data import free_port, make_tiny_voc, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def run(args, **env):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    p = subprocess.run(args, check=False, cwd=REPO, env=e, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.slow
def test_ddp_train_and_val_equal_single_process(tmp_path):
    root = make_tiny_voc(tmp_path / "data", n_train=8, n_val=5)  # odd val size: sampler pads
    ov = tiny_overrides(root, **{"train.epochs": 1})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={free_port()}", "main.py"]
    run(torchrun + ["--config", "bccd_yolo_r18", "--task", "train", "--out", str(tmp_path / "train")] + ov)
    ckpt = tmp_path / "train" / "last.pth"
    assert ckpt.is_file()
    log = (tmp_path / "train" / "train.log").read_text()
    assert "world size 2" in log
    run(torchrun + ["--task", "val", "--ckpt", str(ckpt), "--out", str(tmp_path / "val2")])
    run([sys.executable, "main.py", "--task", "val", "--ckpt", str(ckpt), "--out", str(tmp_path / "val1")])
    m2 = json.loads((tmp_path / "val2" / "metrics.json").read_text())
    m1 = json.loads((tmp_path / "val1" / "metrics.json").read_text())
    assert m1["num_images"] == m2["num_images"] == 5
    for k in ("mAP", "mAP50", "mAP75", "AR1", "AR10", "AR100"):
        assert m1[k] == m2[k], k
    p1 = json.loads((tmp_path / "val1" / "predictions.json").read_text())
    p2 = json.loads((tmp_path / "val2" / "predictions.json").read_text())
    assert len(p1) == len(p2)  # no duplicated padded images
    # the last-epoch validation inside the DDP training scored the same weights
    mt = json.loads((tmp_path / "train" / "val" / "metrics.json").read_text())
    assert mt["mAP"] == m1["mAP"]
