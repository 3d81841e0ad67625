"""What the benchmarks share: the tiny switch, the RESULT line, quiet logging and a synthetic VOC set.

Tiny mode (``--tiny`` anywhere on a benchmark's command line, or ``BENCH_TINY=1`` in the
environment) runs a benchmark's own code path on a few images, a few steps and small sizes, so
that it finishes in seconds and still prints its table and its ``RESULT {json}`` last line. It
exists so that tests/test_benchmarks.py can run every script as a user would and check its
figures: a benchmark that nothing runs rots. The figures of a tiny run measure nothing; without
the switch every script keeps its full protocol.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar
from xml.sax.saxutils import escape

T = TypeVar("T")
TINY_FLAG = "--tiny"
TINY_ENV = "BENCH_TINY"


def tiny_mode(argv: list[str]) -> bool:
    """True when ``argv`` holds --tiny (removed from it, in place) or the environment sets BENCH_TINY=1.

    The variable is then set for this process, so the child processes a benchmark starts (scale.py's
    stages, DataLoader workers) run tiny too.
    """
    tiny = TINY_FLAG in argv or os.environ.get(TINY_ENV, "") == "1"
    argv[:] = [a for a in argv if a != TINY_FLAG]
    if tiny:
        os.environ[TINY_ENV] = "1"
    return tiny


def pick(tiny: bool, full: T, small: T) -> T:
    """``small`` in tiny mode, else ``full`` (the protocol's value)."""
    return small if tiny else full


def print_result(result: dict[str, Any]) -> None:
    """The last line of every benchmark: ``RESULT {json}``, for scripts and tests to read."""
    print("RESULT " + json.dumps(result), flush=True)


def run_json_child(script: str, args: list[str], code: Path, what: str, threads: int = 1) -> Any:
    """Run ``python <script> <args>`` with cwd ``code`` (the checkout under test) and ``threads`` OpenMP
    threads; the JSON of its last stdout line. A failure exits naming ``what`` and the stderr's tail."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, cwd=str(code))
    if out.returncode:
        sys.exit(f"measuring {what} with the code in {code} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port free on localhost now (for a process group's MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_logging() -> None:
    """Warnings and errors only on stderr: the scan summary and per-run lines would bury the table."""
    from loguru import logger
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}


def write_voc_dataset(root: Path, n_train: int = 16, n_val: int = 4, img_hw: tuple[int, int] = (96, 96),
                      seed: int = 0) -> Path:
    """Coloured rectangles (classes red, green, blue) on noise, VOC layout under ``root``: JPEGImages,
    Annotations (1-3 boxes per image, sides 1/6..1/2 of the image) and ImageSets/Main/{train,val}.txt.
    ``img_hw``: image (height, width), pixels. Returns root."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names, (h_img, w_img) = list(COLOURS), img_hw
    ids = [f"img{i:03d}" for i in range(n_train + n_val)]
    for image_id in ids:
        img = rng.integers(0, 256, (h_img, w_img, 3), dtype=np.uint8)
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            w, h = (int(v) for v in rng.integers((w_img // 6, h_img // 6), (w_img // 2, h_img // 2)))
            x, y = int(rng.integers(0, w_img - w)), int(rng.integers(0, h_img - h))
            name = names[int(rng.integers(len(names)))]
            img[y:y + h, x:x + w] = COLOURS[name]
            objects.append(f"<object><name>{escape(name)}</name><difficult>0</difficult><bndbox>"
                           f"<xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + w}</xmax><ymax>{y + h}</ymax>"
                           "</bndbox></object>")
        Image.fromarray(img).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{w_img}</width>"
            f"<height>{h_img}</height><depth>3</depth></size>{''.join(objects)}</annotation>")
    (root / "ImageSets/Main/train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "ImageSets/Main/val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root
