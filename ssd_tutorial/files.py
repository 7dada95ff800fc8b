"""Small file helpers shared by the package and its scripts (no torch import:
download_voc uses it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_digest"]


def file_digest(
    path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20
) -> "hashlib._Hash":
    """The ``hashlib`` digest of a file's bytes, read ``chunk`` bytes at a time (any
    file size)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest
