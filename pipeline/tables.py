"""The project's Parquet tables (tiles.parquet, scores.parquet, ihc.parquet): one writer and one reader.

A stage's metadata (slide id, um/px, model, status ...) travels in the table's schema metadata as sorted JSON
under :data:`META_KEY`. Public: :func:`write_table` (atomic, zstd), :func:`read_table` (pyarrow table and
metadata), :func:`read_columns` (numpy columns and metadata) and :func:`try_read_columns` (None when the file
cannot be read, for stages that report a missing input instead of failing).
"""

from __future__ import annotations

import json
import logging

from pipeline import atomic

META_KEY = b"slide_triage"


def write_table(path, arrays: dict, meta: dict) -> None:
    """Write ``arrays`` (column name -> pyarrow Array, in order) with ``meta`` atomically, zstd-compressed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(arrays).replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    with atomic.atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path):
    """(pyarrow Table, metadata dict) of a table written by :func:`write_table`. Read as one Parquet file:
    ``pq.read_table`` would import pyarrow's dataset layer first (0.36 s of every verb's start-up)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as handle:
        table = handle.read()
    return table, json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))


def read_columns(path) -> tuple[dict, dict]:
    """(column name -> numpy array, metadata dict)."""
    table, meta = read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}, meta


def try_read_columns(path, log: logging.Logger | None = None) -> tuple[dict, dict] | None:
    """:func:`read_columns`, or None (logged when ``log`` is given) when the file is missing or unreadable."""
    try:
        return read_columns(path)
    except (OSError, ValueError) as exc:
        if log is not None:
            log.error("%s: cannot read (%s)", path, exc)
        return None
