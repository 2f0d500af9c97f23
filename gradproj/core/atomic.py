"""Atomic writes: a file is either its old content or its complete new content, never a part.

Every writer of the package goes through :func:`atomic_path` (a temporary name beside the
target, renamed over it on success, removed on failure); :func:`write_atomic` and
:func:`write_json_atomic` are the common cases.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that infer the format
    from it still do; unique to this process) to write into; on normal exit it is renamed over
    ``path``, on an exception removed and ``path`` left as it was. ``durable``: fsync the file
    before and its directory after the rename (a power cut keeps one of the two versions)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        _fsync(path.parent, directory=True)


def write_atomic(path: str | os.PathLike, data: str | bytes, durable: bool = False) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path, durable) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj, durable: bool = True) -> None:
    """``obj`` as indented JSON, atomically and durably (manifests, run records)."""
    write_atomic(path, json.dumps(obj, indent=2), durable)
