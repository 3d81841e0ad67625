"""--task debug debug.mode=samples: augmented training samples saved with their boxes."""
import numpy as np
from PIL import Image

from core.train.debugger import IGNORE_RGB, draw_sample
from main import main
from tests.datasets.three_formats import NAMES, default_items, write_voc
from utils.plots import class_color


def test_debug_samples_mode_writes_augmented_samples(tmp_path):
    root = write_voc(tmp_path / "v", default_items())
    ov = [f"data.root={str(root)!r}", f"data.class_names={NAMES!r}", "data.img_size=64", "data.num_workers=0",
          "debug.mode='samples'", "debug.batch_size=2", "debug.num_batches=2", "aug.mosaic_prob=1.0",
          "model.channel_sparsity=0.25"]
    out = tmp_path / "dbg"
    assert main(["--config", "bccd_yolo_r18", "--task", "debug", "--out", str(out)] + ov) == 0
    pngs = sorted((out / "debug" / "samples").glob("*.png"))
    assert len(pngs) == 4 and pngs[0].name.startswith("batch0_0_train")
    assert all(Image.open(p).size == (64, 64) for p in pngs)
    assert not list((out / "debug").glob("*.png"))  # no assignment plots in this mode


def test_draw_sample_outlines_classes_and_ignore_regions():
    img = np.full((40, 40, 3), 60, np.uint8)
    target = np.array([[1, 5, 5, 20, 20], [-1, 25, 25, 35, 35]], np.float32)
    out = draw_sample(img, target, NAMES)
    assert tuple(out[12, 5]) == class_color(1)  # left edge of the class box
    assert tuple(out[30, 25]) == IGNORE_RGB  # left edge of the ignore region
    assert tuple(out[30, 30]) == (60, 60, 60)  # inside stays untouched
