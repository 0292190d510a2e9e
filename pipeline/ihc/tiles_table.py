"""The per-tile IHC table ihc.parquet: :data:`TILE_COLUMNS`, :func:`write_tiles` (atomic) and
:func:`read_tiles`. x, y are the level-0 pixels of a grid tile's top-left corner."""

from __future__ import annotations

from pipeline import atomic
from pipeline.ihc.measure import COUNT_COLUMNS, SUM_COLUMNS

TILE_COLUMNS = ("x", "y", *COUNT_COLUMNS, *SUM_COLUMNS, "tissue_pct", "area_positive_pct", "pct_1plus",
                "pct_2plus", "pct_3plus", "h_score", "dab_mean_od", "h_mean_od", "nuclei_positive",
                "nuclei_positive_pct", "nuclear_h_score")


def write_tiles(path, rows: list[dict], meta: dict) -> None:
    """Per-tile Parquet: int64 x, y (level-0 top-left), int64 counts, float64 metrics (null = undefined)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for name in TILE_COLUMNS:
        values = [r[name] for r in rows]
        if name in ("x", "y", *COUNT_COLUMNS, "nuclei_positive"):
            columns[name] = pa.array(values, pa.int64())
        else:
            columns[name] = pa.array(values, pa.float64())
    table = pa.table(columns).replace_schema_metadata({b"slide_triage": json.dumps(meta, sort_keys=True).encode()})
    with atomic.atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_tiles(path):
    """(pyarrow Table, metadata dict) of an ihc.parquet."""
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table, json.loads((table.schema.metadata or {}).get(b"slide_triage", b"{}"))
