"""One synthetic whole-slide image with its ground truth: :func:`write_slide` (deterministic per arguments).

Steps: check the request; draw the tissue layout (:mod:`pipeline.synth.layout`); render level-0 bands
(:mod:`pipeline.synth.bands`, in worker processes) and encode them as they come -- level 0 straight into the
file, the reduced levels accumulated in raw temporary files and written afterwards (:mod:`pipeline.synth.pyramid`),
so memory is bounded by one band (width x 512 px), not the slide; write the TIFF directories
(:mod:`pipeline.synth.tiff_writer`); write the truth files (:mod:`pipeline.synth.truth`). The file appears
atomically; the same seed gives byte-identical files.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import TriageError
from pipeline.synth.bands import BAND_PX, band_spec, render_factor, rendered_bands
from pipeline.synth.classes import COMPARTMENT
from pipeline.synth.colour import Stain
from pipeline.synth.layout import LAYOUTS, Layout, make_layout
from pipeline.synth.pyramid import TILE_PX, level0_tiles, level_sizes, raw_tiles
from pipeline.synth.tiff_writer import TiffSpec, objective_power
from pipeline.synth.truth import truth_record, write_truth


def _check_request(fmt: str, layout: str, stain: str, width: int, height: int, mpp: float) -> str:
    """The normalised format ("svs" or "tiff"); TriageError for what the generator cannot write."""
    fmt = "tiff" if fmt in ("tif", "tiff") else fmt
    if fmt not in ("svs", "tiff"):
        raise TriageError(f"unknown slide format {fmt!r}: use svs or tif")
    if layout not in LAYOUTS:
        raise TriageError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if stain != "HE" and stain not in COMPARTMENT:
        raise TriageError(f"unknown stain {stain!r} for the generator: use HE or one of {', '.join(COMPARTMENT)}")
    if width < 256 or height < 256 or not 0.05 <= mpp <= 10:
        raise TriageError(f"slide size {width}x{height} px at {mpp} um/px is out of range (>= 256 px, 0.05-10 um/px)")
    return fmt


def _encode(path: Path, spec: TiffSpec, lay: Layout, stain: Stain, *, seed: int, render_mpp: float | None,
            workers: int) -> list[tuple[int, int]]:
    """Render and write the slide file at ``path`` (atomically); returns the level sizes."""
    import tifffile

    width, height, mpp = spec.width, spec.height, spec.mpp
    f = render_factor(mpp, render_mpp)
    bands_spec = band_spec(mpp, f, -(-width // (TILE_PX * f)) * TILE_PX * f, seed)
    sizes = level_sizes(width, height)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.levels.") as tmpdir, \
            atomic_path(path) as tmp:
        raws = [Path(tmpdir) / f"level{k}.raw" for k in range(len(sizes))]
        raw_fhs = [open(r, "wb") for r in raws[1:]]  # noqa: SIM115 (closed in finally, after level 0)
        try:
            with tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 3_500_000_000) as tw:
                bands = rendered_bands(lay, stain, bands_spec, -(-height // BAND_PX), workers)
                spec.write_level0(tw, level0_tiles(bands, sizes, raw_fhs))
                for fh in raw_fhs:
                    fh.close()
                if spec.fmt == "svs":  # thumbnail: the second directory, from the smallest level
                    lw, lh = sizes[-1]
                    small = np.fromfile(raws[-1], np.uint8)[: lw * lh * 3].reshape(lh, lw, 3) \
                        if len(sizes) > 1 else None
                    spec.write_thumbnail(tw, small)
                for k in range(1, len(sizes)):
                    spec.write_reduced_level(tw, raw_tiles(raws[k], *sizes[k]), sizes[k])
                if spec.fmt == "svs" and spec.identifiers:
                    spec.write_label_and_macro(tw, seed)
        finally:
            for fh in raw_fhs:
                if not fh.closed:
                    fh.close()
    return sizes


def write_slide(path: str | os.PathLike, *, width: int, height: int, mpp: float = 0.25, seed: int = 0,
                stain: str = "HE", layout: str = "mixed", fmt: str = "svs", tissue_fraction: float = 0.4,
                layout_seed: int | None = None, artefacts: tuple[str, ...] = (), identifiers: bool = False,
                quality: int = 85, workers: int = 1, render_mpp: float | None = None, truth: bool = True) -> dict:
    """Write one synthetic slide (and its truth files); returns the truth record. Deterministic per arguments."""
    path = Path(path)
    fmt = _check_request(fmt, layout, stain, width, height, mpp)
    layout_seed = seed if layout_seed is None else layout_seed
    lay = make_layout(layout_seed, width * mpp, height * mpp, layout, tissue_fraction, tuple(artefacts))
    spec = TiffSpec(fmt, width, height, mpp, quality, identifiers)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sizes = _encode(path, spec, lay, Stain.for_slide(stain, seed), seed=seed, render_mpp=render_mpp,
                    workers=workers)
    seconds = time.perf_counter() - t0
    record = truth_record(path, lay, fmt=fmt, stain=stain, layout=layout, seed=seed, layout_seed=layout_seed,
                          mpp=mpp, objective_power=objective_power(mpp), sizes=sizes, artefacts=artefacts,
                          truth=truth)
    if truth:
        write_truth(path, record, lay)
    record["write_seconds"] = round(seconds, 2)
    return record
