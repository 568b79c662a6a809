"""The candidate cache on disk: one record per candidate, content hashes of every input, atomic writes.

Candidates are keyed by (model hash, expanded spec, data hashes, seed, :data:`CACHE_VERSION`): an interrupted
search resumes where it stopped, and a changed input or preset definition is evaluated again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from sftonnx import verify
from sftonnx.errors import InputError

__all__ = [
    "CACHE_VERSION",
    "atomic_write",
    "hash_arrays",
    "hash_source",
    "read_record",
    "save_npz",
    "sha256_file",
    "stack_feeds",
    "write_record",
]

#: Bump when the record format or the evaluation method changes (old cache entries are then ignored).
CACHE_VERSION = 1


def read_record(folder: pathlib.Path, key: str) -> dict[str, Any] | None:
    """The cached record of ``key``, or ``None`` (none, unreadable, or its model file is gone)."""
    path = folder / f"{key}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("status") == "ok" and not pathlib.Path(record.get("model_path") or "").is_file():
        return None  # the model was removed: evaluate again
    return record


def write_record(folder: pathlib.Path, record: dict[str, Any]) -> None:
    """Write a candidate's record: last and atomically, so its presence means the candidate is complete."""
    atomic_write(folder / f"{record['key']}.json", json.dumps(record, default=_json_default).encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def sha256_file(path: pathlib.Path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_source(source: Any) -> str:
    """Content hash of a data/eval source: a file, a folder of ``.npz``, ``module:function`` or a callable."""
    if source is None:
        return "none"
    if callable(source):
        return f"callable:{getattr(source, '__module__', '?')}.{getattr(source, '__qualname__', '?')}"
    path = pathlib.Path(os.fspath(source))
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for item in sorted(path.glob("*.npz")):
            digest.update(item.name.encode() + sha256_file(item).encode())
        return digest.hexdigest()
    text = os.fspath(source)
    module = text.rpartition(":")[0]
    if module.endswith(".py") and pathlib.Path(module).is_file():
        return text + ":" + sha256_file(pathlib.Path(module))
    return text


def save_npz(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> str:
    """Save ``arrays`` to ``path`` once (atomically; an existing file is kept: the name holds a hash)."""
    if not path.exists():
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(path, buffer.getvalue())
    return str(path)


def stack_feeds(feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Feed dicts concatenated along axis 0, one array per input (an ``.npz``-able sample set)."""
    items = list(feeds)
    if not items:
        raise InputError("auto: the calibration data holds no samples")
    return verify.stack_feeds(items)



def hash_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """Short content hash of named arrays (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(name.encode() + str(array.dtype).encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()[:16]


def atomic_write(path: pathlib.Path, payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path`` and move it into place."""
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(payload)
    os.replace(handle.name, path)
