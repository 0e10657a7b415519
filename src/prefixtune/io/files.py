"""Files that are never seen half-written: atomic writes, and tensor files listed with their
SHA-256 in a JSON manifest that is written last."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A saved directory cannot be loaded; the message says which file and why."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_with_manifest(path: Path, files: dict[str, bytes], manifest: dict[str, Any], manifest_name: str,
                        checksums_key: str = "files") -> None:
    """Write ``files`` (name -> bytes) into directory ``path``, then ``manifest`` with
    ``manifest[checksums_key]`` = name -> SHA-256: a manifest exists only for complete files."""
    manifest = {**manifest, checksums_key: {name: sha256(data) for name, data in files.items()}}
    for name, data in files.items():
        atomic_write(path / name, data)
    atomic_write(path / manifest_name, json.dumps(manifest, indent=2, sort_keys=True).encode())


def read_verified(path: Path, name: str, checksums: dict[str, str], manifest_name: str) -> bytes:
    """The bytes of ``path/name`` if they match their listed SHA-256; else :class:`CheckpointError`."""
    file = Path(path) / name
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (listed in {manifest_name})")
    data = file.read_bytes()
    if sha256(data) != checksums[name]:
        raise CheckpointError(f"{file}: checksum mismatch: the file is corrupt or was partly written")
    return data
