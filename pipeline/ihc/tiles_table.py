"""The per-tile IHC table ihc.parquet: :data:`TILE_COLUMNS` and :func:`write_tiles` (read back with
:func:`pipeline.tables.read_columns`). x, y are the level-0 pixels of a grid tile's top-left corner."""

from __future__ import annotations

from pipeline.ihc.cells import CELL_METRIC_COLUMNS
from pipeline.ihc.measure import COUNT_COLUMNS, SUM_COLUMNS
from pipeline.tables import write_table

TILE_COLUMNS = ("x", "y", *COUNT_COLUMNS, *SUM_COLUMNS, "tissue_pct", "area_positive_pct", "pct_1plus",
                "pct_2plus", "pct_3plus", "h_score", "dab_mean_od", "h_mean_od", "nuclei_positive",
                "nuclei_positive_pct", "nuclear_h_score", *CELL_METRIC_COLUMNS, "in_tumour_region")


def write_tiles(path, rows: list[dict], meta: dict) -> None:
    """Per-tile Parquet: int64 x, y (level-0 top-left), int64 counts, float64 metrics (null = undefined)."""
    import pyarrow as pa

    columns = {}
    for name in TILE_COLUMNS:
        values = [r.get(name) for r in rows]
        if name in ("x", "y", *COUNT_COLUMNS, "nuclei_positive", "cells_positive"):
            columns[name] = pa.array(values, pa.int64())
        elif name == "in_tumour_region":  # null: no tumour region (not restricted)
            columns[name] = pa.array(values, pa.bool_())
        else:
            columns[name] = pa.array(values, pa.float64())
    write_table(path, columns, meta)


