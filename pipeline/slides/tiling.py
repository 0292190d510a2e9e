"""Tile grid at a fixed physical scale over the tissue mask; written per slide as Parquet.

Tiles are squares of ``tile_px`` pixels at ``target_mpp`` um/px, i.e. ``tile_px * target_mpp / mpp``
level-0 pixels wide. ``x``, ``y`` are the level-0 pixel coordinates of each tile's top-left corner.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from pipeline import atomic
from pipeline.errors import SlideError
from pipeline.tables import read_table, write_table

log = logging.getLogger(__name__)


def tile_grid(mask: np.ndarray, mask_mpp: float, slide_mpp: float, width_px: int, height_px: int,
              target_mpp: float, tile_px: int, min_tissue_fraction: float):
    """Tiles whose tissue fraction is at least ``min_tissue_fraction``.

    ``mask`` covers the whole slide at ``mask_mpp`` um/px; ``width_px``/``height_px`` are level-0 sizes.
    Returns ``(x, y, tissue_fraction)``: int64 level-0 top-left corners (row-major order) and float32.
    Only whole tiles inside the slide are laid.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if min(mask_mpp, slide_mpp, target_mpp) <= 0 or tile_px <= 0:
        raise ValueError("mpp values and tile_px must be > 0")
    size0 = tile_px * target_mpp / slide_mpp  # tile side in level-0 px (float)
    cols, rows = int(width_px // size0), int(height_px // size0)
    if cols == 0 or rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    x = np.round(np.arange(cols) * size0).astype(np.int64)
    y = np.round(np.arange(rows) * size0).astype(np.int64)
    # Tissue fraction per tile from an integral image of the mask (mask px edges by rounding).
    scale = slide_mpp / mask_mpp  # mask px per level-0 px
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    mh, mw = mask.shape
    mx0 = np.clip(np.round(x * scale).astype(int), 0, mw)
    mx1 = np.clip(np.round((x + size0) * scale).astype(int), 0, mw)
    my0 = np.clip(np.round(y * scale).astype(int), 0, mh)
    my1 = np.clip(np.round((y + size0) * scale).astype(int), 0, mh)
    area = np.maximum(1, (my1 - my0)[:, None] * (mx1 - mx0)[None, :])
    inside = (integral[my1][:, mx1] - integral[my0][:, mx1] - integral[my1][:, mx0] + integral[my0][:, mx0])
    fraction = (inside / area).astype(np.float32)
    keep = fraction >= min_tissue_fraction
    rr, cc = np.nonzero(keep)
    return x[cc], y[rr], fraction[rr, cc]


@dataclass
class TileGrid:
    """A slide's tiles: level-0 top-left corners and the grid's metadata."""

    x: np.ndarray
    y: np.ndarray
    tissue_fraction: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)


def write_tile_grid(path, grid: TileGrid) -> None:
    import pyarrow as pa

    write_table(path, {
        "x": pa.array(grid.x, pa.int64()),
        "y": pa.array(grid.y, pa.int64()),
        "tissue_fraction": pa.array(grid.tissue_fraction, pa.float32()),
    }, grid.meta)


def read_tile_grid(path) -> TileGrid:
    table, meta = read_table(path)
    return TileGrid(
        x=table.column("x").to_numpy().astype(np.int64),
        y=table.column("y").to_numpy().astype(np.int64),
        tissue_fraction=table.column("tissue_fraction").to_numpy().astype(np.float32),
        meta=meta,
    )


def grid_for_slide(slide, mask: np.ndarray, mask_mpp: float, tiling: dict, slide_id: str) -> TileGrid:
    """Lay the grid over an open slide; metadata records scale, level and the reader's effective um/px.

    Raises :class:`SlideError` when the slide is coarser than ``target_mpp`` (beyond
    :data:`pipeline.slides.resolution.MPP_COARSER_TOLERANCE`): its tiles would be enlarged.
    """
    from pipeline.slides.resolution import check_resolution

    check_resolution(slide, tiling["target_mpp"], "the tiles (tiling.target_mpp)")
    level, region_px, effective_mpp = slide.tile_geometry(tiling["tile_px"], tiling["target_mpp"])
    width, height = slide.dimensions
    x, y, frac = tile_grid(mask, mask_mpp, slide.mpp, width, height, tiling["target_mpp"], tiling["tile_px"],
                           tiling["min_tissue_fraction"])
    size0 = tiling["tile_px"] * tiling["target_mpp"] / slide.mpp
    meta = {
        "slide_id": slide_id, "status": "ok", "reason": "",
        "mpp": slide.mpp, "mpp_source": slide.mpp_source,
        "target_mpp": tiling["target_mpp"], "tile_px": tiling["tile_px"],
        "tile_size_level0": round(size0, 4), "min_tissue_fraction": tiling["min_tissue_fraction"],
        "level": level, "level_downsample": round(slide.level_downsamples[level], 6),
        "region_px": region_px, "effective_mpp": round(effective_mpp, 6),
        "width_px": width, "height_px": height, "mask_mpp": round(mask_mpp, 6),
    }
    if len(x) == 0:
        meta.update(status="empty", reason="no tile reaches the minimum tissue fraction")
    return TileGrid(x, y, frac, meta)


def failed_grid(slide_id: str, reason: str, tiling: dict) -> TileGrid:
    meta = {"slide_id": slide_id, "status": "failed", "reason": reason,
            "target_mpp": tiling["target_mpp"], "tile_px": tiling["tile_px"]}
    empty = np.zeros(0, np.int64)
    return TileGrid(empty, empty.copy(), np.zeros(0, np.float32), meta)


# ---- CLI -------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    parser.add_argument("--slide", required=True, help="slide file")
    parser.add_argument("--slide-id", default=None, help="slide id (default: file name stem)")
    parser.add_argument("--mpp", type=float, default=None, help="level-0 um/px override (sample sheet `mpp`)")
    parser.add_argument("--config", default="configs/config.yaml", help="config file")
    parser.add_argument("--qc", default=None,
                        help="qc.json from qc-slide (with --mask); without it QC runs here and errors are fatal")
    parser.add_argument("--mask", default=None, help="tissue mask PNG from qc-slide")
    parser.add_argument("--out", required=True, help="tiles.parquet to write")


def run(args) -> None:
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.slides.reader import open_slide

    config = load_config(args.config)
    slide_id = args.slide_id or Path(args.slide).stem
    tiling = config["tiling"]
    if args.qc:
        qc = atomic.read_json(args.qc)
        if qc["status"] == "failed":
            log.warning("%s: QC failed, writing an empty grid: %s", slide_id, "; ".join(qc["reasons"]))
            write_tile_grid(args.out, failed_grid(slide_id, "QC failed: " + "; ".join(qc["reasons"]), tiling))
            return
        from PIL import Image

        mask = np.asarray(Image.open(args.mask)) > 127
        try:
            with open_slide(args.slide, mpp=args.mpp) as slide:
                grid = grid_for_slide(slide, mask, qc["thumb_mpp"], tiling, slide_id)
        except SlideError as exc:
            log.error("%s", exc)
            from pipeline.redact import redact

            grid = failed_grid(slide_id, redact(str(exc), args.slide), tiling)
    else:
        from pipeline.slides.qc import qc_slide

        with open_slide(args.slide, mpp=args.mpp) as slide:
            record, _, mask = qc_slide(slide, config)
            if record["status"] == "failed":
                raise SlideError(f"{args.slide}: QC failed: {'; '.join(record['reasons'])}")
            grid = grid_for_slide(slide, mask, record["thumb_mpp"], tiling, slide_id)
    write_tile_grid(args.out, grid)
    log.info("%s: %d tiles of %d px at %g um/px (level %s, effective %s um/px)", slide_id, len(grid),
             tiling["tile_px"], tiling["target_mpp"], grid.meta.get("level"), grid.meta.get("effective_mpp"))

