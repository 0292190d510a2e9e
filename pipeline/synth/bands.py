"""Level-0 bands of a synthetic slide, rendered in order (in worker processes when asked).

A band is :data:`BAND_PX` level-0 rows over the padded slide width, rendered at ``factor`` x the level-0 um/px
in column chunks of at most :data:`CHUNK_PX` px (memory bounded by one chunk), upsampled with a fixed
per-slide grain, so a band costs memory for width x 512 px, not for the slide.

Public: :func:`render_factor`, :func:`band_spec`, :func:`rendered_bands` (the bands in order, at most
``workers + 1`` ahead) and :func:`render_band` (one band, run in a worker).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from pipeline.synth.colour import Stain
from pipeline.synth.layout import Layout
from pipeline.synth.placement import Placement
from pipeline.synth.render import render_region

BAND_PX = 512  # level-0 rows rendered at a time (a multiple of the tile and of 4^3)
CHUNK_PX = 2048  # rendered px per column chunk of a band

_WORKER: dict = {}


def _init_worker(layout: Layout, stain: Stain, spec: dict) -> None:
    _WORKER.update(layout=layout, stain=stain, spec=spec)


def _grain(spec: dict) -> np.ndarray:
    rng = np.random.default_rng([spec["seed"], 404])
    return rng.integers(-3, 4, size=(256, 256, 3), dtype=np.int16)


def render_factor(mpp: float, render_mpp: float | None) -> int:
    """Level-0 px per rendered px: tissue is rendered at ``render_mpp`` (default 1.0 um/px) and upsampled."""
    target = render_mpp if render_mpp else 1.0
    return max(1, int(round(target / mpp)))


def band_spec(mpp: float, factor: int, width_pad: int, seed: int, placement: Placement | None = None) -> dict:
    """What a worker needs besides layout and stain: um/px, render factor, padded width, slide seed, placement."""
    return {"mpp": mpp, "factor": factor, "width_pad": width_pad, "seed": seed, "placement": placement}


def render_band(band: int) -> np.ndarray:
    """Level-0 rows [band * BAND_PX, (band + 1) * BAND_PX) over the padded width, uint8 RGB."""
    layout, stain, spec = _WORKER["layout"], _WORKER["stain"], _WORKER["spec"]
    mpp, f, width_pad = spec["mpp"], spec["factor"], spec["width_pad"]
    r_mpp = mpp * f
    rows = BAND_PX // f
    pad = 2  # render rows beyond the band so the upsampling has neighbours (seamless bands)
    y0_um = band * BAND_PX * mpp - pad * r_mpp
    # columns of at most CHUNK_PX rendered px at a time: memory is bounded by the chunk, not the slide's width
    # (rendering is a pure function of position, so the chunks join without seams)
    nx = width_pad // f
    img = np.concatenate([render_region(layout, stain, x * r_mpp, y0_um, min(CHUNK_PX, nx - x), rows + 2 * pad, r_mpp,
                                        placement=spec.get("placement")) for x in range(0, nx, CHUNK_PX)], axis=1)
    if f > 1:
        from PIL import Image

        big = Image.fromarray(img).resize((width_pad, (rows + 2 * pad) * f), Image.Resampling.BILINEAR)
        img = np.asarray(big)[pad * f: pad * f + BAND_PX]
        grain = _grain(spec)
        reps = (BAND_PX // 256, width_pad // 256, 1)
        img = np.clip(img.astype(np.int16) + np.tile(grain, reps), 0, 255).astype(np.uint8)
    else:  # rendered at level 0: only the padding rows to drop
        img = img[pad: pad + BAND_PX]
    return np.ascontiguousarray(img)


def rendered_bands(layout: Layout, stain: Stain, spec: dict, n_bands: int, workers: int = 1) -> Iterator[np.ndarray]:
    """Bands 0 .. n_bands - 1 in order; with ``workers`` > 1 rendered in a process pool, at most workers + 1 ahead."""
    _init_worker(layout, stain, spec)
    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(layout, stain, spec)) \
        if workers > 1 else None
    try:
        pending = []
        nxt = 0
        for b in range(n_bands):
            while pool is not None and nxt < n_bands and len(pending) < workers + 1:
                pending.append(pool.submit(render_band, nxt))
                nxt += 1
            yield pending.pop(0).result() if pool is not None else render_band(b)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
