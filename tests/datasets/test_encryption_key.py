"""Encrypted images and caches: the key (from an environment variable) never appears in any byte
written under the run and cache directories; a wrong or missing key is a clear error without it."""
import secrets
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.base_config import ConfigError
from core.loaders import build_train_loader
from datasets import build_records
from datasets.crypto import MAGIC, Cipher, CryptoError, encrypt_tree, load_key
from datasets.loaders import EncryptedLoader
from datasets.scan import DatasetError
from datasets.transforms import resize_long_side
from main import main
from tests.datasets.three_formats import NAMES, cfg_for, default_items, write_yolo
from utils.dist import DistInfo

ENV = "YOLO_TEST_DATA_KEY"


@pytest.fixture
def enc_data(tmp_path, monkeypatch):
    key = secrets.token_hex(32)
    monkeypatch.setenv(ENV, key)
    plain = write_yolo(tmp_path / "plain", default_items())
    n = encrypt_tree(plain, tmp_path / "enc", Cipher.from_env(ENV))
    assert n == 6 and not list((tmp_path / "enc").rglob("*.jpg"))
    return tmp_path / "enc", key


def _overrides(root: Path, cache: Path) -> list[str]:
    ov = {"data.format": "yolo", "data.root": str(root), "data.train_sets": ["images/train"],
          "data.val_sets": ["images/val"], "data.class_names": list(NAMES), "data.img_size": 64,
          "data.image_loader": "datasets.loaders.EncryptedLoader", "data.key_env": ENV,
          "data.encrypt_cache": True, "data.cache_labels": True, "data.cache_images": "disk",
          "data.cache_dir": str(cache), "data.num_workers": 0, "model.channel_sparsity": 0.25,
          "train.epochs": 1, "train.batch_size": 2, "eval.batch_size": 2, "train.num_threads": 1,
          "aug.mosaic_prob": 0.5, "debug.batch_size": 2}
    return [f"{k}={v!r}" for k, v in ov.items()]


def _all_bytes(*dirs: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for d in dirs for p in sorted(d.rglob("*")) if p.is_file()]


def test_key_never_written_by_train_and_debug(enc_data, tmp_path):
    root, key = enc_data
    cache, run = tmp_path / "cache", tmp_path / "run"
    ov = _overrides(root, cache)
    # train validates at the end of its epoch: the val split is read and cached too
    assert main(["--config", "bccd_yolo_r18", "--task", "train", "--out", str(run)] + ov) == 0
    assert main(["--config", "bccd_yolo_r18", "--task", "debug", "--out", str(tmp_path / "dbg"),
                 "debug.mode='samples'"] + ov) == 0
    files = _all_bytes(run, tmp_path / "dbg", cache)
    names = {p.name for p, _ in files}
    assert {"last.pth", "config.json", "train.log", "labels.npz", "images_s64.lmdb"} <= names
    assert len(list(cache.rglob("images_s64.lmdb"))) == 2  # train and val images, both cached
    needles = [key.encode(), key.upper().encode(), bytes.fromhex(key)]
    for path, data in files:
        for needle in needles:
            assert needle not in data, f"the key is in {path}"
    assert f'"key_env": "{ENV}"'.encode() in (run / "config.json").read_bytes()  # only the variable's name
    for path, data in files:  # the caches hold ciphertext only
        if path.name == "labels.npz":
            assert data.startswith(MAGIC) and b"train000" not in data


def test_encrypted_image_cache_holds_no_plain_pixels(enc_data, tmp_path):
    root, _ = enc_data
    cfg = cfg_for(root, "yolo", tmp_path / "cache", class_names=list(NAMES), cache_images="disk",
                  image_loader="datasets.loaders.EncryptedLoader", key_env=ENV, encrypt_cache=True)
    ds = build_train_loader(cfg, DistInfo(0, 0, 1, torch.device("cpu")))[0].dataset
    pixels = ds.image_cache.get(1)  # decrypted on access
    np.testing.assert_array_equal(pixels, resize_long_side(ds.loader.load(ds.records[1].file), 64))
    lmdb_bytes = next((tmp_path / "cache").rglob("images_s64.lmdb")).read_bytes()
    assert pixels[20].tobytes() not in lmdb_bytes


def test_wrong_key_is_a_clear_error_without_any_key(enc_data, tmp_path, monkeypatch, caplog_loguru):
    root, key = enc_data
    cache = tmp_path / "cache"
    cfg = cfg_for(root, "yolo", cache, class_names=list(NAMES), cache_labels=True, encrypt_cache=True,
                  image_loader="datasets.loaders.EncryptedLoader", key_env=ENV)
    build_records(cfg, "train")
    wrong = secrets.token_hex(32)
    monkeypatch.setenv(ENV, wrong)
    with pytest.raises(DatasetError) as ei:
        build_records(cfg, "train")
    msg = str(ei.value)
    assert "cannot decrypt label cache" in msg and f"${ENV}" in msg and "cache_refresh=True" in msg
    assert key not in msg and wrong not in msg
    # without the cache, every .enc image fails to decrypt: validation data is an error naming it
    cfg.data.cache_labels = False
    with pytest.raises(DatasetError,
                       match=rf"val000\.jpg\.enc: cannot decrypt the image with the key in \${ENV} \(wrong"):
        build_records(cfg, "val")
    assert all(key not in m and wrong not in m for m in caplog_loguru)


@pytest.mark.parametrize("value,message", [
    (None, f"{ENV} \\(data.key_env\\) is not set"),
    ("abc", f"{ENV} holds 3 characters; expected a 256-bit key"),
    ("z" * 64, f"{ENV} is not hexadecimal"),
])
def test_missing_or_malformed_key_names_the_variable_only(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, value)
    with pytest.raises(CryptoError, match=message) as ei:
        load_key(ENV)
    assert value is None or value not in str(ei.value)
    cfg = cfg_for(Path("."), "yolo", key_env=ENV)
    with pytest.raises(ConfigError, match=f"EncryptedLoader: .*{ENV}"):
        EncryptedLoader(cfg.data)


def test_cipher_round_trip_binds_values_to_their_slot(monkeypatch):
    monkeypatch.setenv(ENV, secrets.token_hex(32))
    c = Cipher.from_env(ENV)
    blob = c.encrypt(b"pixels", b"slot1")
    assert c.decrypt(blob, "x", b"slot1") == b"pixels" and b"pixels" not in blob
    with pytest.raises(CryptoError, match="cannot decrypt x"):
        c.decrypt(blob, "x", b"slot2")  # a value moved to another slot is refused
    assert ENV in repr(c) and "key" in repr(c)
