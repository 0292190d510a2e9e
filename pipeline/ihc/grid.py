"""quantify-ihc's tile grid measured tile by tile, in worker processes: :class:`GridJob`, :func:`measure_grid_tile`,
:func:`measure_grid` and the order the tiles are read in, :func:`band_order`. x, y are level-0 pixels of a grid
tile's top-left corner."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.ihc.measure import quantify_tile
from pipeline.ihc.params import IhcParams
from pipeline.ihc.stain import Deconvolver


@dataclass(frozen=True)
class GridJob:
    """What measuring one grid tile needs besides the slide (see :func:`quantify_ihc`); ``level0_per_px`` is a
    read pixel's side in level-0 px, ``want_cells`` whether cell tables come back, ``cell_json`` what to make of a
    tile's cell table in the worker too (quantify-ihc: its cells.geojson features)."""

    grid_x: np.ndarray
    grid_y: np.ndarray
    tile_px: int
    params: IhcParams
    nuclear: bool
    deconvolver: Deconvolver
    nucleus_od_min: float
    compartment: str
    cell_tiles: np.ndarray | None
    tumour_cells: tuple[float, float] | None
    level0_per_px: float
    want_cells: bool
    cell_json: Callable[[dict], bytes] | None = None


def measure_grid_tile(slide, job: GridJob, i: int) -> tuple[dict, dict | None, bytes | None]:
    """(counts, cell table or None, ``job.cell_json`` of the table or None) of grid tile ``i``; the cells' nucleus
    centroids in level-0 px (``x0``, ``y0``)."""
    p = job.params
    rgb = slide.read_tile(int(job.grid_x[i]), int(job.grid_y[i]), job.tile_px, p.quantify_mpp)
    compartment = job.compartment if job.cell_tiles is not None and job.cell_tiles[i] else None
    counts, cells = quantify_tile(rgb, p.quantify_mpp, p, job.nuclear, job.deconvolver, job.nucleus_od_min,
                                  compartment=compartment, tumour_cells=job.tumour_cells, return_cells=True)
    if cells is None or not job.want_cells:
        return counts, None, None
    cells["x0"] = job.grid_x[i] + (cells["cx_px"] + 0.5) * job.level0_per_px
    cells["y0"] = job.grid_y[i] + (cells["cy_px"] + 0.5) * job.level0_per_px
    return counts, cells, None if job.cell_json is None else job.cell_json(cells)


_WORKER: dict = {}  # the worker process's own open slide and job (set by _start_worker)


def _start_worker(path, mpp_override, job: GridJob) -> None:
    from pipeline.slides.reader import open_slide

    _WORKER.update(slide=open_slide(path, mpp=mpp_override), job=job)


def _worker_tile(i: int) -> tuple[dict, dict | None, bytes | None]:
    return measure_grid_tile(_WORKER["slide"], _WORKER["job"], i)


def measure_grid(slide, job: GridJob, workers: int = 1) -> list[tuple[dict, dict | None, bytes | None]]:
    """:func:`measure_grid_tile` of every grid tile, in grid order. With ``workers`` > 1 the tiles are shared
    among that many processes, each opening the slide itself (the work holds the GIL too often for threads, and
    slide readers' tile caches are not thread-safe); the results are the same, tile for tile."""
    n = len(job.grid_x)
    path = getattr(slide, "path", None)
    order = band_order(job.grid_x, job.grid_y)
    if workers <= 1 or n < 2 or path is None:
        results = [measure_grid_tile(slide, job, int(i)) for i in order]
    else:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)  # fork: no re-import per worker
        override = slide.mpp if getattr(slide, "mpp_source", None) == "override" else None
        with ProcessPoolExecutor(max_workers=min(workers, n), mp_context=context, initializer=_start_worker,
                                 initargs=(path, override, job)) as pool:
            results = list(pool.map(_worker_tile, order.tolist(), chunksize=max(1, min(16, n // (8 * workers)))))
    in_grid_order = [None] * n
    for i, r in zip(order.tolist(), results, strict=True):
        in_grid_order[i] = r
    return in_grid_order


def band_order(grid_x: np.ndarray, grid_y: np.ndarray, band_tiles: int = 4) -> np.ndarray:
    """Grid tile indices in bands ``band_tiles`` tiles wide, each read top to bottom, row by row: a tile then
    shares the slide's decoded segments (the reader's cache) with the tile before it and the one above it, not only
    its left neighbour (on the 60000 x 40000 benchmark slide, 16 segments touched per tile, 12.5 each decoded once).
    Corners are level-0 px; the tile pitch is the smallest step between distinct x."""
    x, y = np.asarray(grid_x), np.asarray(grid_y)
    if len(x) < 2:
        return np.arange(len(x))
    steps = np.diff(np.unique(x))
    pitch = int(steps.min()) if len(steps) else 1
    band = (x - x.min()) // (pitch * band_tiles)
    return np.lexsort((x, y, band))
