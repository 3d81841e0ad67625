"""Pluggable image loaders, the open-file / shared-memory checks and data_fraction subsets."""
import resource
import sys
import types
from collections import Counter

import cv2
import numpy as np
import pytest
from PIL import Image

from configs.base_config import BaseConfig, ConfigError
from datasets import limits
from datasets.image_io import load_image
from datasets.loaders import PilLoader, TurboJpegLoader, build_loader
from datasets.records import Record
from datasets.subset import main_class, stratified_subset
from tests.datasets.synth import image_with_rect


def _data(loader: str):
    cfg = BaseConfig()
    cfg.data.image_loader = loader
    return cfg.data


def test_build_loader_by_import_path():
    assert isinstance(build_loader(_data("datasets.loaders.PilLoader")), PilLoader)
    assert isinstance(build_loader(_data("datasets.loaders:PilLoader")), PilLoader)
    with pytest.raises(ConfigError,
                       match=r"data.image_loader='datasets.loaders.Nope' cannot be imported.*built in"):
        build_loader(_data("datasets.loaders.Nope"))
    with pytest.raises(ConfigError, match=r"must be an import path"):
        build_loader(_data("PilLoader"))
    with pytest.raises(ConfigError, match=r"must offer load\(path\) and hw\(path\)"):
        build_loader(_data("builtins.str"))


def test_turbojpeg_loader_needs_the_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "turbojpeg", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs the PyTurboJPEG package.*pip install PyTurboJPEG"):
        TurboJpegLoader(None)


@pytest.fixture
def fake_turbojpeg(monkeypatch):
    """A stand-in for PyTurboJPEG that decodes with OpenCV (RGB order and, like libjpeg-turbo, the
    stored orientation: EXIF is ignored)."""
    calls = []

    class TurboJPEG:
        def decode(self, data, pixel_format):
            calls.append(len(data))
            flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
            if img is None:
                raise OSError("not a JPEG")
            return img[:, :, ::-1]

    monkeypatch.setitem(sys.modules, "turbojpeg", types.SimpleNamespace(TurboJPEG=TurboJPEG, TJPF_RGB=0))
    return calls


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_turbojpeg_loader_applies_exif_like_pil(tmp_path, fake_turbojpeg, orientation):
    img = image_with_rect((40, 60), (5, 5, 25, 15))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "x.jpg"
    Image.fromarray(img).save(path, exif=exif, quality=95)
    loader = TurboJpegLoader(None)
    out = loader.load(path)
    assert fake_turbojpeg  # the JPEG went through the turbo decoder
    ref = load_image(path)
    assert out.shape == ref.shape
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 8  # same frame; decoders differ slightly
    assert loader.hw(path) == ref.shape[:2]


def test_turbojpeg_loader_falls_back_to_pil(tmp_path, fake_turbojpeg):
    png = tmp_path / "x.png"
    Image.fromarray(image_with_rect()).save(png)
    np.testing.assert_array_equal(TurboJpegLoader(None).load(png), load_image(png))
    assert fake_turbojpeg == []  # PNG never reaches the JPEG decoder
    bad = tmp_path / "bad.jpg"
    bad.write_text("text")
    with pytest.raises(ValueError, match="bad.jpg: not an image"):
        TurboJpegLoader(None).load(bad)


# -- limits ---------------------------------------------------------------------------------
def _limit(monkeypatch, soft, hard, settable):
    state = {"soft": soft}

    def getrlimit(_):
        return state["soft"], hard

    def setrlimit(_, value):
        if not settable:
            raise ValueError("not allowed")
        state["soft"] = value[0]

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    monkeypatch.setattr(limits, "_open_fds", lambda: 20)
    return state


def test_open_file_limit_is_raised_when_the_hard_limit_allows(monkeypatch, caplog_loguru):
    state = _limit(monkeypatch, soft=100, hard=100_000, settable=True)
    assert limits.workers_within_file_limit(16, 2) == 16
    assert state["soft"] == 20 + limits.fds_needed(16, 2)
    assert not any("open-file limit" in m for m in caplog_loguru)


def test_open_file_limit_lowers_workers_with_a_clear_message(monkeypatch, caplog_loguru):
    _limit(monkeypatch, soft=200, hard=200, settable=False)
    n = limits.workers_within_file_limit(32, 2)
    per_worker = limits.fds_needed(1, 2) - limits.fds_needed(0, 2)
    assert n == (200 - 20 - limits.fds_needed(0, 2)) // per_worker and 0 < n < 32
    assert any("open-file limit (ulimit -n) is 200" in m and f"using {n} workers" in m
               and "ulimit -n 65536" in m for m in caplog_loguru)
    assert limits.workers_within_file_limit(0, 2) == 0


def test_small_shm_warns(monkeypatch, caplog_loguru):
    class Stat:
        f_bavail, f_frsize = 16, 4096  # 64 KiB free
    monkeypatch.setattr(limits.os, "statvfs", lambda _: Stat())
    limits.warn_small_shm(4 * 3 * 640 * 640 * 16, num_workers=2, prefetch_factor=2)
    assert any("/dev/shm has 0 MiB free" in m and "--shm-size" in m for m in caplog_loguru)


# -- data_fraction ----------------------------------------------------------------------------
def _records(label_lists):
    return [Record(image_id=i + 1, file=f"{i}.jpg", img_hw=(10, 10),
                   boxes=np.zeros((len(ls), 4), np.float32), labels=np.array(ls, np.int64))
            for i, ls in enumerate(label_lists)]


def test_main_class_and_stratified_subset():
    assert main_class(_records([[2, 1, 2]])[0]) == 2
    assert main_class(_records([[1, 0]])[0]) == 0  # ties: lowest index
    assert main_class(_records([[]])[0]) == -1
    labels = [[0]] * 40 + [[1, 1, 0]] * 20 + [[2]] * 10 + [[]] * 10
    records = _records(labels)
    sub = stratified_subset(records, 0.25, seed=3)
    assert Counter(main_class(r) for r in sub) == {0: 10, 1: 5, 2: 2, -1: 2}  # 2.5 rounds to 2
    assert [r.image_id for r in sub] == sorted(r.image_id for r in sub)  # original order kept
    assert [r.image_id for r in stratified_subset(records, 0.25, seed=3)] == [r.image_id for r in sub]
    assert [r.image_id for r in stratified_subset(records, 0.25, seed=4)] != [r.image_id for r in sub]
    assert len(stratified_subset(records, 0.01)) == 4  # at least one per stratum
    assert stratified_subset(records, 1.0) == records
