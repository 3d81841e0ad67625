"""What a checkpoint, a dataset or an --out directory may not do: a stored config cannot import code
or choose where files go, encrypted images stay encrypted and bound to their names, and a run
never writes into another run's directory."""
import secrets
import sys

import numpy as np
import pytest
from tiny_data import train_tiny

from configs import load_config
from configs.base_config import ConfigError
from core.tasks import config_from_data
from datasets.crypto import Cipher, encrypt_tree
from datasets.image_io import ImageError
from datasets.loaders import EncryptedLoader
from main import main
from tests.datasets.three_formats import cfg_for, default_items, write_yolo
from utils.checkpoint import load_checkpoint, save_checkpoint

ENV = "YOLO_TEST_TRUST_KEY"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    root, ckpt = train_tiny(tmp)
    return root, ckpt


def tampered(ckpt, tmp_path, **fields) -> str:
    """A copy of ``ckpt`` whose stored config has ``fields`` ({"data.cache_dir": ...})."""
    state = load_checkpoint(ckpt)
    for key, value in fields.items():
        if "." in key:
            sec, name = key.split(".")
            state["config"][sec][name] = value
        else:
            state["config"][key] = value
    path = tmp_path / "tampered.pth"
    save_checkpoint(state, path)
    return str(path)


# -- a stored config is data ------------------------------------------------------------------
def test_a_checkpoint_cannot_name_a_loader_to_import(trained, tmp_path, monkeypatch):
    _, ckpt = trained
    (tmp_path / "evil_loader.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\nclass Loader:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bad = tampered(ckpt, tmp_path, **{"data.image_loader": "evil_loader.Loader"})
    with pytest.raises(ConfigError, match=r"data.image_loader='evil_loader.Loader', which is not a built-in "
                                          r"loader.*cannot import code"):
        config_from_data(load_checkpoint(bad)["config"], bad)
    assert main(["--task", "val", "--ckpt", bad, "--out", str(tmp_path / "v")]) == 2
    assert not (tmp_path / "imported").exists() and "evil_loader" not in sys.modules
    assert not (tmp_path / "v").exists()


def test_a_checkpoint_does_not_choose_where_files_are_written(trained, tmp_path, monkeypatch):
    _, ckpt = trained
    elsewhere = tmp_path / "elsewhere"
    bad = tampered(ckpt, tmp_path, **{"train.save_dir": str(elsewhere / "runs"),
                                      "data.cache_dir": str(elsewhere / "cache")})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["--task", "val", "--ckpt", bad]) == 0  # no --out: runs/<name>_val under this directory
    assert not elsewhere.exists()
    assert (work / "runs" / "bccd_yolo_r18_val" / "metrics.json").is_file()
    assert list((work / "runs" / "cache").glob("voc_val_*/labels.npz"))  # this machine's default cache dir
    cfg = config_from_data(load_checkpoint(bad)["config"], bad)
    assert (cfg.train.save_dir, cfg.data.cache_dir) == ("runs", "")


@pytest.mark.parametrize("name", ["../../escape", "/abs/path", ".hidden", "a/b"])
def test_a_stored_name_must_not_be_a_path(trained, tmp_path, name):
    _, ckpt = trained
    bad = tampered(ckpt, tmp_path, name=name)
    with pytest.raises(ConfigError, match="must be a plain name"):
        config_from_data(load_checkpoint(bad)["config"], bad).validate()
    assert main(["--task", "val", "--ckpt", bad]) == 2


# -- run directories -------------------------------------------------------------------------
def test_out_never_reuses_another_runs_directory(trained, tmp_path):
    """The README's old main job validated into the training run's own val/ folder: refused now."""
    _, ckpt = trained
    run = ckpt.parent
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["--task", "val", "--ckpt", str(ckpt), "--out", str(run / "val")]) == 2
    root = trained[0]
    assert main(["--config", "bccd_yolo_r18", "--task", "train", "--out", str(run), f"data.root={str(root)!r}",
                 "train.epochs=1"]) == 2  # a fresh training into a dir holding checkpoints
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(["--task", "val", "--ckpt", str(ckpt), "--out", str(tmp_path / "new_val")]) == 0


# -- encrypted data --------------------------------------------------------------------------
def test_an_encrypted_dataset_is_never_cached_in_plain_form():
    cfg = cfg_for(".", "yolo", key_env=ENV, image_loader="datasets.loaders.EncryptedLoader", cache_images="ram")
    with pytest.raises(ConfigError, match="data.cache_images='ram' with the encrypted image loader.*"
                                          "data.encrypt_cache=True"):
        cfg.validate()
    cfg.data.encrypt_cache = True
    cfg.validate()
    cfg.data.encrypt_cache, cfg.data.cache_images = False, "none"
    cfg.validate()
    assert load_config("bccd_yolo_r18").data.cache_images == "none"


def test_encrypted_images_decrypt_only_under_their_own_names(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, secrets.token_hex(32))
    plain = write_yolo(tmp_path / "plain", default_items())
    cipher = Cipher.from_env(ENV)
    encrypt_tree(plain, tmp_path / "enc", cipher)
    folder = tmp_path / "enc" / "images" / "train"
    a, b = sorted(folder.glob("*.enc"))[:2]
    loader = EncryptedLoader(cfg_for(tmp_path / "enc", "yolo", key_env=ENV).data)
    img_a = loader.load(a)
    assert img_a.shape[2] == 3
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)  # swapped: each file now holds the other's image
    b.write_bytes(a_bytes)
    with pytest.raises(ImageError, match=rf"{a}: cannot decrypt the image .*only under the name it was "
                                         r"encrypted with"):
        loader.load(a)
    renamed = folder / "renamed.jpg.enc"
    renamed.write_bytes(a_bytes)
    with pytest.raises(ImageError, match="renamed.jpg.enc: cannot decrypt"):
        loader.hw(renamed)
    a.write_bytes(a_bytes)
    assert np.array_equal(loader.load(a), img_a)
    legacy = folder / "legacy.jpg.enc"
    legacy.write_bytes(cipher.encrypt((plain / "images" / "train" / a.name[:-4]).read_bytes()))  # no name bound
    with pytest.raises(ImageError, match="encrypted without binding to its file name.*encrypt the plain images"):
        loader.load(legacy)
