"""One synthetic whole-slide image with its ground truth: :func:`write_slide` (deterministic per arguments).

Steps: check the request; draw the tissue layout (:mod:`pipeline.synth.layout`); render level-0 bands
(:mod:`pipeline.synth.bands`, in worker processes) and encode them as they come -- level 0 straight into the
file, the reduced levels accumulated in raw temporary files and written afterwards (:mod:`pipeline.synth.pyramid`),
so memory is bounded by one band (width x 512 px), not the slide; write the TIFF directories
(:mod:`pipeline.synth.tiff_writer`); write the truth files (:mod:`pipeline.synth.truth`). The file appears
atomically; the same seed gives byte-identical files. An IHC slide may lie on its glass under a known rigid
transform relative to its case's H&E slide (:mod:`pipeline.synth.placement`); without one its pixels are those of
the untransformed generator, byte for byte.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import TriageError
from pipeline.synth.bands import BAND_PX, band_spec, render_factor, rendered_bands
from pipeline.synth.cell_truth import cell_truth
from pipeline.synth.classes import COMPARTMENT
from pipeline.synth.colour import Stain
from pipeline.synth.layout import LAYOUTS, Layout, make_layout
from pipeline.synth.placement import Placement, placed_labels, random_placement
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
            workers: int, placement: Placement | None = None) -> list[tuple[int, int]]:
    """Render and write the slide file at ``path`` (atomically); returns the level sizes."""
    import tifffile

    width, height, mpp = spec.width, spec.height, spec.mpp
    f = render_factor(mpp, render_mpp)
    bands_spec = band_spec(mpp, f, -(-width // (TILE_PX * f)) * TILE_PX * f, seed, placement)
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
                quality: int = 85, workers: int = 1, render_mpp: float | None = None, truth: bool = True,
                placement: Placement | None = None, placement_seed: int | None = None,
                he_slide: str | None = None, layout_size: tuple[int, int] | None = None) -> dict:
    """Write one synthetic slide (and its truth files); returns the truth record. Deterministic per arguments.

    ``placement`` puts the section on the glass under that rigid transform relative to the layout (= the H&E
    slide of the same ``layout_seed``); ``placement_seed`` draws one (:func:`random_placement`) that keeps the
    tissue on the slide; ``he_slide`` names the H&E slide in the truth file's ``registration``; ``layout_size``
    (level-0 px, default the slide's size) is the size of the frame the layout is drawn in: the H&E slide's."""
    path = Path(path)
    fmt = _check_request(fmt, layout, stain, width, height, mpp)
    if placement is not None and placement_seed is not None:
        raise TriageError("give a placement or a placement_seed, not both")
    layout_seed = seed if layout_seed is None else layout_seed
    lw, lh = layout_size or (width, height)
    lay = make_layout(layout_seed, lw * mpp, lh * mpp, layout, tissue_fraction, tuple(artefacts))
    if placement_seed is not None:
        placement = random_placement(placement_seed, lay, width * mpp, height * mpp)
    spec = TiffSpec(fmt, width, height, mpp, quality, identifiers)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sizes = _encode(path, spec, lay, Stain.for_slide(stain, seed), seed=seed, render_mpp=render_mpp,
                    workers=workers, placement=placement)
    seconds = time.perf_counter() - t0
    seen = lay  # the class map in the slide's frame
    if placement is not None or (lw, lh) != (width, height):
        seen = replace(lay, labels=placed_labels(lay, placement or Placement(), width * mpp, height * mpp))
    record = truth_record(path, seen, fmt=fmt, stain=stain, layout=layout, seed=seed, layout_seed=layout_seed,
                          mpp=mpp, objective_power=objective_power(mpp), sizes=sizes, artefacts=artefacts,
                          truth=truth)
    record["registration"] = None if placement is None else placement.record(mpp, he_slide)
    if truth and stain != "HE":
        record["cells"] = cell_truth(lay, stain, width * mpp, height * mpp, placement)
    if truth:
        write_truth(path, record, seen)
    record["write_seconds"] = round(seconds, 2)
    return record
