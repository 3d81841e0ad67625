"""AES-256-GCM for encrypted images (``.enc`` files) and encrypted cache values.

The key comes only from an environment variable named by ``data.key_env`` and must be 32
bytes written as 64 hex characters (``python -c "import secrets; print(secrets.token_hex(32))"``).
It is never written anywhere: the config holds only the variable's name, errors name the
variable and never its value, and the cipher's repr hides it.

Blob layout: ``MAGIC (5 bytes) | nonce (12 bytes) | ciphertext + 16-byte tag``. A fresh random
nonce per blob; ``aad`` binds a cache value to its slot and an encrypted image to its file name
(``image_aad``), so values or files cannot be swapped or renamed unnoticed.

Encrypt a folder of images for the encrypted loader (``a.jpg`` -> ``a.jpg.enc``)::

    python -m datasets.crypto ENV_VAR_NAME SRC_DIR DST_DIR
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from datasets.paths import ENC_SUFFIX, is_image_name

MAGIC = b"YENC1"
_NONCE = 12
_KEY_HEX = 64


def image_aad(plain_name: str) -> bytes:
    """Associated data of an encrypted image: its plain file name (``a.jpg`` for ``a.jpg.enc``), so
    the file decrypts only under its own name, wherever its folder is moved."""
    return b"image:" + plain_name.encode("utf-8")


class CryptoError(ValueError):
    """A key is missing or malformed, or data cannot be decrypted; never contains the key."""


def load_key(env_name: str) -> bytes:
    """The 32-byte key held (as 64 hex characters) by the environment variable ``env_name``."""
    if not env_name:
        raise CryptoError("encryption needs data.key_env: the name of the environment variable "
                          "holding the key")
    value = os.environ.get(env_name)
    if value is None:
        raise CryptoError(f"environment variable {env_name} (data.key_env) is not set; it must hold "
                          "a 256-bit key as 64 hex characters")
    value = value.strip()
    if len(value) != _KEY_HEX:
        raise CryptoError(f"environment variable {env_name} holds {len(value)} characters; expected a "
                          "256-bit key as 64 hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise CryptoError(f"environment variable {env_name} is not hexadecimal; expected a 256-bit key "
                          "as 64 hex characters") from None


class Cipher:
    """AES-256-GCM with the key of one environment variable; ``env_name`` is used in messages."""

    def __init__(self, key: bytes, env_name: str) -> None:
        self._aead = AESGCM(key)
        self._key = key  # kept only to rebuild the AEAD in spawned DataLoader workers
        self.env_name = env_name

    @classmethod
    def from_env(cls, env_name: str) -> Cipher:
        return cls(load_key(env_name), env_name)

    def __repr__(self) -> str:
        return f"Cipher(key from ${self.env_name})"

    def __getstate__(self) -> dict:
        return {"key": self._key, "env_name": self.env_name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["key"], state["env_name"])

    def encrypt(self, plain: bytes, aad: bytes = b"") -> bytes:
        nonce = os.urandom(_NONCE)
        return MAGIC + nonce + self._aead.encrypt(nonce, plain, aad)

    def decrypt(self, blob: bytes, what: str, aad: bytes = b"") -> bytes:
        """Plain bytes of ``blob``; CryptoError naming ``what`` when it is not ours or the key is wrong."""
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _NONCE + 16:
            raise CryptoError(f"{what}: not encrypted by this repo (missing {MAGIC.decode()} header)")
        nonce = blob[len(MAGIC):len(MAGIC) + _NONCE]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + _NONCE:], aad)
        except InvalidTag:
            raise CryptoError(f"cannot decrypt {what} with the key in ${self.env_name} (wrong key, or "
                              "the data is corrupt)") from None


def encrypt_tree(src: Path, dst: Path, cipher: Cipher) -> int:
    """Write ``dst/<rel>.enc`` for every image under ``src`` (other files are copied as they are).

    Returns the number of images encrypted.
    """
    count = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        if is_image_name(path.name) and not path.name.lower().endswith(ENC_SUFFIX):
            out.with_name(out.name + ENC_SUFFIX).write_bytes(cipher.encrypt(data, image_aad(path.name)))
            count += 1
        else:
            out.write_bytes(data)
    return count


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("Encrypt a folder")[1].strip(), file=sys.stderr)
        return 2
    env_name, src, dst = argv
    n = encrypt_tree(Path(src), Path(dst), Cipher.from_env(env_name))
    print(f"{n} images encrypted into {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
