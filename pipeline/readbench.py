"""Tile-reading throughput against its physical bound: decoding the same JPEG tiles with libjpeg-turbo.

Pure measurement helpers used by ``python -m pipeline benchmark``; no torch.
"""

from __future__ import annotations

import math
import time

import numpy as np

from pipeline.slide import Slide, TiffSlide


def segments_for_tiles(slide: TiffSlide, xs: np.ndarray, ys: np.ndarray, tile_px: int, target_mpp: float):
    """The (level, segment index) pairs the reader must decode to produce the given tiles."""
    level, region_px, _ = slide.tile_geometry(tile_px, target_mpp)
    page = slide._pages[level]
    seg_w, seg_h = int(page.tilewidth), int(page.tilelength)
    lw, lh = slide.level_dimensions[level]
    across = math.ceil(lw / seg_w)
    ds = slide.level_downsamples[level]
    needed = set()
    for x0, y0 in zip(xs, ys, strict=True):
        x, y = int(x0 // ds), int(y0 // ds)
        x1, y1 = min(x + region_px, lw), min(y + region_px, lh)
        for ty in range(y // seg_h, (y1 - 1) // seg_h + 1):
            for tx in range(x // seg_w, (x1 - 1) // seg_w + 1):
                needed.add(ty * across + tx)
    return level, sorted(needed)


def decode_bound(slide: TiffSlide, xs, ys, tile_px: int, target_mpp: float, repeats: int = 1) -> dict:
    """Grid tiles per second if reading cost nothing but decoding the JPEG tiles they need (bytes in memory)."""
    import imagecodecs

    level, needed = segments_for_tiles(slide, xs, ys, tile_px, target_mpp)
    page = slide._pages[level]
    blobs = []
    fh = slide._tif.filehandle
    for i in needed:
        fh.seek(page.dataoffsets[i])
        blobs.append(fh.read(page.databytecounts[i]))
    tables = page.jpegtables
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for blob in blobs:
            imagecodecs.jpeg8_decode(blob, tables=tables)
        best = min(best, time.perf_counter() - t0)
    return {"segments": len(needed), "seconds": best, "tiles_per_s": len(xs) / best,
            "segments_per_tile": len(needed) / max(1, len(xs))}


def reader_throughput(slide: Slide, xs, ys, tile_px: int, target_mpp: float) -> dict:
    """Grid tiles per second through ``Slide.read_tile`` in this thread (cold cache, raster order)."""
    if hasattr(slide, "_cache"):
        slide._cache.clear()
    t0 = time.perf_counter()
    for x0, y0 in zip(xs, ys, strict=True):
        slide.read_tile(int(x0), int(y0), tile_px, target_mpp)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tiles_per_s": len(xs) / seconds}
