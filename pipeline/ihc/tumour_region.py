"""The tumour region on an IHC slide: the H&E tiles the model calls tumour, carried through the registration onto
the IHC slide's tile grid and widened by a margin (pure numpy/scipy: arrays in, arrays out).

* :func:`tumour_tiles` - which H&E tiles are tumour (P(carcinoma) + P(sarcoma) >= ``prob_min``);
* :func:`region_fraction` - for each IHC grid tile, the share of its area inside the region: points spread over
  the tile (level-0 px of the IHC slide) are mapped by ``ihc_to_he`` (3x3, IHC level-0 px -> H&E level-0 px) and
  count as inside when they lie within ``margin_um`` of a tumour tile of the H&E slide;
* :func:`in_region` - the IHC tiles whose area is at least half inside.

The region is as precise as the H&E tiles (224 um at 1 um/px) plus the margin: a tumour tile holds stroma too, so
figures in the region are "tumour region", not "tumour cells only".
"""

from __future__ import annotations

import numpy as np

from pipeline.ihc.registration import map_points


def tumour_tiles(prob_carcinoma: np.ndarray, prob_sarcoma: np.ndarray, prob_min: float) -> np.ndarray:
    """Boolean per H&E tile: the model's tumour probability (carcinoma + sarcoma) reaches ``prob_min``."""
    return (np.asarray(prob_carcinoma, np.float64) + np.asarray(prob_sarcoma, np.float64)) >= prob_min


def _distance_map(he_x: np.ndarray, he_y: np.ndarray, he_tile_level0: float, tumour: np.ndarray,
                  cell_level0: float) -> tuple[np.ndarray, np.ndarray]:
    """(distance in H&E level-0 px from each raster cell to the nearest tumour tile, raster origin in level-0 px);
    the raster covers the H&E grid plus one tile on every side."""
    from scipy import ndimage

    origin = np.array([he_x.min() - he_tile_level0, he_y.min() - he_tile_level0], np.float64)
    extent = np.array([he_x.max(), he_y.max()], np.float64) + 2 * he_tile_level0 - origin
    shape = (int(np.ceil(extent[1] / cell_level0)) + 1, int(np.ceil(extent[0] / cell_level0)) + 1)
    raster = np.zeros(shape, bool)
    per_tile = max(1, int(round(he_tile_level0 / cell_level0)))
    for x0, y0 in zip(he_x[tumour], he_y[tumour], strict=True):
        c, r = int(round((x0 - origin[0]) / cell_level0)), int(round((y0 - origin[1]) / cell_level0))
        raster[r: r + per_tile, c: c + per_tile] = True
    return ndimage.distance_transform_edt(~raster) * cell_level0, origin


def region_fraction(ihc_x: np.ndarray, ihc_y: np.ndarray, ihc_tile_level0: float, he_x: np.ndarray,
                    he_y: np.ndarray, he_tile_level0: float, tumour: np.ndarray, ihc_to_he: np.ndarray,
                    he_mpp: float, margin_um: float, samples: int = 4) -> np.ndarray:
    """Share (0-1) of each IHC tile's area within ``margin_um`` of an H&E tumour tile, from ``samples`` x
    ``samples`` points per tile. Tile corners (``ihc_x``, ``ihc_y``, ``he_x``, ``he_y``) are level-0 top-left px."""
    ihc_x, ihc_y = np.asarray(ihc_x, np.float64), np.asarray(ihc_y, np.float64)
    tumour = np.asarray(tumour, bool)
    if len(ihc_x) == 0 or not tumour.any():
        return np.zeros(len(ihc_x))
    cell = he_tile_level0 / 8.0
    dist, origin = _distance_map(np.asarray(he_x, np.float64), np.asarray(he_y, np.float64), he_tile_level0,
                                 tumour, cell)
    offsets = (np.arange(samples) + 0.5) / samples * ihc_tile_level0
    ox, oy = np.meshgrid(offsets, offsets)
    px = (ihc_x[:, None] + ox.ravel()[None, :]).ravel()
    py = (ihc_y[:, None] + oy.ravel()[None, :]).ravel()
    hx, hy = map_points(ihc_to_he, px, py)
    col = np.floor((hx - origin[0]) / cell).astype(np.int64)
    row = np.floor((hy - origin[1]) / cell).astype(np.int64)
    inside_raster = (row >= 0) & (row < dist.shape[0]) & (col >= 0) & (col < dist.shape[1])
    d = np.full(len(px), np.inf)
    d[inside_raster] = dist[row[inside_raster], col[inside_raster]]
    near = (d * he_mpp) <= margin_um
    return near.reshape(len(ihc_x), -1).mean(axis=1)


def in_region(fraction: np.ndarray, min_share: float = 0.5) -> np.ndarray:
    """IHC tiles whose area is at least ``min_share`` inside the tumour region."""
    return np.asarray(fraction) >= min_share
