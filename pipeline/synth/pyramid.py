"""The resolution pyramid of a slide, streamed from level-0 bands: level sizes, tiles and 4x reductions.

Level 0 is cut into tiles as its bands come; the reduced levels are accumulated in raw RGB files (one per level)
and tiled from them afterwards, so memory holds one band, not the slide.

Public: :data:`TILE_PX`, :func:`level_sizes`, :func:`level0_tiles` (tiles of the bands, reduced levels written
on the way) and :func:`raw_tiles` (tiles of a raw level file).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np

from pipeline.synth.bands import BAND_PX

TILE_PX = 256


def level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """Level dimensions: 4x reductions while the level's longer side stays >= 512 px (at most 4 levels)."""
    sizes = [(width, height)]
    while len(sizes) < 4 and max(sizes[-1]) // 4 >= 512:
        w, h = sizes[-1]
        sizes.append((-(-w // 4), -(-h // 4)))
    return sizes


def _downsample4(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    h4, w4 = -(-h // 4) * 4, -(-w // 4) * 4
    if (h4, w4) != (h, w):
        img = np.pad(img, ((0, h4 - h), (0, w4 - w), (0, 0)), mode="edge")
    s = img.reshape(h4 // 4, 4, w4 // 4, 4, 3).astype(np.uint16).sum(axis=(1, 3))
    return ((s + 8) // 16).astype(np.uint8)


def _tiles_from_band(band: np.ndarray, width: int) -> Iterator[np.ndarray]:
    """Row-major TILE_PX tiles of a band whose height is a multiple of TILE_PX (edge tiles padded)."""
    for y in range(0, band.shape[0], TILE_PX):
        for x in range(0, width, TILE_PX):
            tile = band[y:y + TILE_PX, x:x + TILE_PX]
            if tile.shape[1] < TILE_PX:
                tile = np.pad(tile, ((0, 0), (0, TILE_PX - tile.shape[1]), (0, 0)), mode="edge")
            yield tile


def _write_reductions(band: np.ndarray, b: int, width: int, sizes: list[tuple[int, int]],
                      raw_fhs: list[BinaryIO]) -> None:
    """Append band ``b``'s rows of each reduced level (4x, 16x, ...) to that level's raw file."""
    lvl = band[:, :width]
    for k, fh in enumerate(raw_fhs, start=1):
        lvl = _downsample4(lvl)
        keep = min(lvl.shape[0], max(0, sizes[k][1] - b * BAND_PX // 4 ** k))
        fh.write(np.ascontiguousarray(lvl[:keep, :sizes[k][0]]).tobytes())


def level0_tiles(bands: Iterable[np.ndarray], sizes: list[tuple[int, int]],
                 raw_fhs: list[BinaryIO]) -> Iterator[np.ndarray]:
    """Level-0 tiles (row-major) of the slide's bands; each band's reduced levels go to ``raw_fhs`` first.

    Tile rows below the slide (the last band is padded to BAND_PX rows) are dropped."""
    width, height = sizes[0]
    per_row = -(-width // TILE_PX)
    n_tile_rows = -(-height // TILE_PX)

    def all_tiles():
        for b, band in enumerate(bands):
            _write_reductions(band, b, width, sizes, raw_fhs)
            yield from _tiles_from_band(band, width)

    for i, tile in enumerate(all_tiles()):
        if i // per_row < n_tile_rows:
            yield tile


def raw_tiles(raw_path, width: int, height: int) -> Iterator[np.ndarray]:
    """Tiles (row-major) of a raw RGB file of ``width`` x (>= ``height``) px, one tile row in memory."""
    stride = width * 3
    with open(raw_path, "rb") as fh:
        for y in range(0, height, TILE_PX):
            n = min(TILE_PX, height - y)
            fh.seek(y * stride)
            rows = np.frombuffer(fh.read(n * stride), np.uint8).reshape(n, width, 3)
            if n < TILE_PX:
                rows = np.pad(rows, ((0, TILE_PX - n), (0, 0), (0, 0)), mode="edge")
            yield from _tiles_from_band(rows, width)
