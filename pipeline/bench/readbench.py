"""Tile-reading throughput against its physical bound: decoding the same JPEG tiles with libjpeg-turbo.

The bound for a set of grid tiles is the time libjpeg-turbo takes to decode, once each, the JPEG tiles
(segments) of the file those grid tiles overlap, with the compressed bytes already in memory, into one reused
buffer (at libjpeg-turbo's faster alignment, :func:`pipeline.slides.tiff_slide.decode_buffer`) -- no file access, no
allocation, no copying, no Python per tile. A reader at the bound would cost nothing but decoding.

Pure measurement helpers used by ``python -m pipeline benchmark``; no torch.

Public: :func:`segments_for_tiles`, :func:`jpeg_segments`, :func:`decode_all`, :func:`decode_bound`,
:func:`read_all`, :func:`reader_throughput`.
"""

from __future__ import annotations

import math
import time

import numpy as np

from pipeline.slides.slide import Slide
from pipeline.slides.tiff_slide import TiffSlide, decode_buffer


def segments_for_tiles(slide: TiffSlide, xs: np.ndarray, ys: np.ndarray, tile_px: int, target_mpp: float):
    """The (level, sorted segment indices) the reader must decode to produce the given tiles."""
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
        for ty in range(max(y, 0) // seg_h, (y1 - 1) // seg_h + 1):
            for tx in range(max(x, 0) // seg_w, (x1 - 1) // seg_w + 1):
                needed.add(ty * across + tx)
    return level, sorted(needed)


def jpeg_segments(slide: TiffSlide, xs, ys, tile_px: int, target_mpp: float) -> tuple[list[bytes], dict]:
    """The compressed bytes of the JPEG tiles the grid tiles need, and the decoder's arguments for them."""
    level, needed = segments_for_tiles(slide, xs, ys, tile_px, target_mpp)
    args = slide._jpeg[level]
    if args is None:
        raise ValueError(f"{slide.path}: level {level} is not JPEG-tiled; no decode bound")
    page = slide._pages[level]
    fh = slide._tif.filehandle
    blobs = []
    for i in needed:
        fh.seek(page.dataoffsets[i])
        blobs.append(fh.read(page.databytecounts[i]))
    return blobs, args


def decode_all(blobs: list[bytes], args: dict) -> None:
    """Decode every blob once with libjpeg-turbo into one reused buffer (the bound's work: no allocation)."""
    import imagecodecs

    out = decode_buffer((*args["shape"], 3))
    for blob in blobs:
        imagecodecs.jpeg8_decode(blob, out=out, **args)


def decode_bound(slide: TiffSlide, xs, ys, tile_px: int, target_mpp: float, repeats: int = 1) -> dict:
    """Grid tiles per second if reading cost nothing but decoding the JPEG tiles they need (best of ``repeats``)."""
    blobs, args = jpeg_segments(slide, xs, ys, tile_px, target_mpp)
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        decode_all(blobs, args)
        best = min(best, time.perf_counter() - t0)
    return {"segments": len(blobs), "seconds": best, "tiles_per_s": len(xs) / best,
            "segments_per_tile": len(blobs) / max(1, len(xs))}


def read_all(slide: Slide, xs, ys, tile_px: int, target_mpp: float, batch_size: int | None = None) -> None:
    """Read the tiles as scoring does (``read_tiles`` in batches into one buffer) with a cold segment cache;
    ``batch_size=None`` reads them one ``read_tile`` call each."""
    if isinstance(slide, TiffSlide):
        with slide._lock:
            slide._cache.clear()
    if batch_size is None:
        for x0, y0 in zip(xs, ys, strict=True):
            slide.read_tile(int(x0), int(y0), tile_px, target_mpp)
        return
    buf = np.empty((batch_size, tile_px, tile_px, 3), np.uint8)
    for a in range(0, len(xs), batch_size):
        b = min(len(xs), a + batch_size)
        slide.read_tiles(xs[a:b], ys[a:b], tile_px, target_mpp, out=buf[: b - a])


def reader_throughput(slide: Slide, xs, ys, tile_px: int, target_mpp: float, batch_size: int | None = None) -> dict:
    """Grid tiles per second through the slide reader on this thread (cold cache, grid order)."""
    t0 = time.perf_counter()
    read_all(slide, xs, ys, tile_px, target_mpp, batch_size)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tiles_per_s": len(xs) / seconds}
