"""Write-then-rename helpers (no output is ever visible half-written under its final name), and the one JSON
reader for what they wrote: :func:`atomic_path`, :func:`write_bytes`, :func:`write_json`, :func:`read_json`,
:func:`try_read_json`; and :func:`file_sha256`, the checksum of a file (weights, slides, knowledge base)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync and rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. Temporary files
    of ``path`` left behind by a killed earlier run (SIGKILL skips the clean-up) are removed first;
    only one job ever writes a given output, so none of them can be in use.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):  # left by a killed earlier attempt
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, 2-space indent, trailing newline (byte-stable across runs)."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps_json(obj))


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 8 << 20) -> str:
    """Full SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document at ``path`` (UTF-8), as written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def try_read_json(path: str | os.PathLike, log=None) -> Any | None:
    """:func:`read_json`, or None (logged when ``log`` is given) when the file is missing or not JSON."""
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        if log is not None:
            log.error("%s: cannot read (%s)", path, exc)
        return None
