"""DAB measured on one RGB tile (pure: arrays in, dicts out): :func:`pixel_counts` (tissue pixels and DAB
intensity classes 0 / 1+ / 2+ / 3+), :func:`quantify_tile` (pixels, nuclei and, with a compartment, cells of one
tile, see :data:`COUNT_COLUMNS` and :mod:`pipeline.ihc.cells`) and :func:`derived_metrics` (percentages and
H-scores from summed counts).

Units: OD is log10 optical density along a unit stain vector (:mod:`pipeline.ihc.stain`); percentages 0-100;
H-scores 0-300."""

from __future__ import annotations

import numpy as np

from pipeline import filters
from pipeline.ihc.cells import CELL_COUNT_COLUMNS, cell_metrics, cell_table, counts_from_table, empty_counts
from pipeline.ihc.nuclei import detect_nuclei, estimate_nucleus_threshold, nucleus_counts, nucleus_means
from pipeline.ihc.params import IhcParams
from pipeline.ihc.stain import Deconvolver

# Per-tile count columns, summed over tiles for the slide totals (so slide percentages weigh every pixel
# and every nucleus and cell equally, not every tile).


COUNT_COLUMNS = ("pixels", "tissue_px", "px_1plus", "px_2plus", "px_3plus", "nuclei", "nuclei_1plus",
                 "nuclei_2plus", "nuclei_3plus", *CELL_COUNT_COLUMNS)


SUM_COLUMNS = ("dab_od_sum", "h_od_sum")


def tissue_pixels(rgb_od: np.ndarray, mpp: float, od_min: float = 0.015, sigma_um: float = 2.0,
                  max_hole_um2: float = 100.0) -> np.ndarray:
    """Tissue mask of a tile: mean OD over R, G, B (glass divided out), smoothed over ``sigma_um``, at least
    ``od_min``; holes up to ``max_hole_um2`` (pale cytoplasm between nuclei) filled.

    The smoothing and the low threshold are for scanners that render cytoplasm almost as glass (the OS-2 VSI
    scan: median tissue OD 0.018 against the NDPI scan's 0.049); lumens and glass stay out. A smoothing of 2 px
    or more is done on 2 x 2 block means (a quarter of the pixels; the mask's edge then falls on even pixels).
    """
    mean_od = rgb_od @ np.full(3, 1 / 3, rgb_od.dtype)
    sigma = max(sigma_um / mpp, 0.1)
    hole_px = int(max_hole_um2 / (mpp * mpp))
    if sigma < 2.0 or min(mean_od.shape) < 2:
        mask = filters.gaussian(mean_od, sigma) >= od_min
        return ~filters.remove_small(~mask, hole_px) if hole_px > 0 else mask
    h, w = mean_od.shape
    half = filters.block_mean(mean_od, 2)
    # a 2-px block mean is itself a smoothing of variance 1/4 px^2 along each axis
    mask = filters.gaussian(half, float(np.sqrt(sigma * sigma - 0.25)) / 2) >= od_min
    if hole_px >= 4:
        mask = ~filters.remove_small(~mask, hole_px // 4)
    return np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)[:h, :w]


def pixel_counts(h_od: np.ndarray, dab_od: np.ndarray, tissue: np.ndarray, thresholds=(0.2, 0.4, 0.6)) -> dict:
    """Counts over one image: pixels, tissue pixels, tissue pixels per DAB class (exclusive), OD sums."""
    if h_od.shape != dab_od.shape or tissue.shape != dab_od.shape:
        raise ValueError(f"shape mismatch: H {h_od.shape}, DAB {dab_od.shape}, tissue {tissue.shape}")
    dab_in = dab_od[tissue]
    at_least = [int(np.count_nonzero(dab_in >= np.float32(t))) for t in thresholds]  # 1+, 2+, 3+ and above
    return {
        "pixels": int(dab_od.size), "tissue_px": int(dab_in.size),
        "px_1plus": at_least[0] - at_least[1], "px_2plus": at_least[1] - at_least[2], "px_3plus": at_least[2],
        "dab_od_sum": float(dab_in.sum(dtype=np.float64)),
        "h_od_sum": float(h_od[tissue].sum(dtype=np.float64)),
    }


def _detect(h: np.ndarray, dab: np.ndarray, mpp: float, params: IhcParams, nucleus_od_min, include_dab: bool,
            return_pixels: bool = False):
    """Nucleus labels of a tile (see :func:`quantify_tile` for ``nucleus_od_min``), with ``return_pixels`` also
    their :func:`pipeline.ihc.nuclei.label_pixels`."""
    if nucleus_od_min is None:
        nucleus_od_min = params.nucleus_od_min
        if nucleus_od_min == "auto":
            nucleus_od_min = estimate_nucleus_threshold(h, dab, mpp, params.nucleus_sigma_um,
                                                        params.dab_od_thresholds[0] / 2, params.nucleus_od_range)
    return detect_nuclei(h, dab if include_dab else np.zeros_like(dab), mpp, sigma_um=params.nucleus_sigma_um,
                         od_min=nucleus_od_min, min_area_um2=params.nucleus_min_area_um2,
                         max_area_um2=params.nucleus_max_area_um2, min_distance_um=params.nucleus_min_distance_um,
                         return_pixels=return_pixels)


def quantify_tile(rgb: np.ndarray, mpp: float, params: IhcParams, nuclear: bool,
                  deconvolver: Deconvolver | None = None, nucleus_od_min: float | None = None,
                  return_images: bool = False, nuclei_include_dab: bool = True, compartment: str | None = None,
                  tumour_cells: tuple[float, float] | None = None, return_cells: bool = False):
    """Counts for one RGB tile at ``mpp`` um/px (see COUNT_COLUMNS); with ``return_images`` also the maps.

    ``nucleus_od_min`` is the slide's calibrated threshold; None uses the configured number, or with
    ``auto`` estimates it from this tile alone. ``nuclei_include_dab=False`` finds nuclei on haematoxylin
    alone (for pictures of cytoplasmic stains, where DAB fills the cytoplasm around the nuclei).

    ``compartment`` (markers.yaml: nuclear, cytoplasmic, membranous, nuclear_cytoplasmic) adds per-cell counts
    (:func:`pipeline.ihc.cells.cell_counts`; None: those counts are 0). Cells of a nuclear marker are its nuclei;
    the other compartments grow cells from nuclei found on haematoxylin alone (DAB outside the nucleus would
    merge neighbours). The pixel and nucleus counts do not depend on ``compartment``. ``tumour_cells`` (min nucleus
    area um2, min width um) counts only tumour-like cells (:mod:`pipeline.ihc.tumour_cells`). ``return_cells``
    returns ``(counts, cells)``: the :func:`pipeline.ihc.cells.cell_table` of the tile (None without a compartment).
    """
    deconvolver = deconvolver or Deconvolver()
    h, dab, od = deconvolver(rgb)
    tissue = tissue_pixels(od, mpp, params.tissue_od_min, params.tissue_sigma_um, params.tissue_max_hole_um2)
    counts = pixel_counts(h, dab, tissue, params.dab_od_thresholds)
    labels = cell_labels = cells = means = pixels = None
    if nuclear:
        # the nuclei's pixels, found once: the means and a nuclear compartment's cells read them again
        labels, pixels = _detect(h, dab, mpp, params, nucleus_od_min, nuclei_include_dab, return_pixels=True)
        means = nucleus_means(labels, h, dab, pixels)
        counts.update(nucleus_counts(labels, h, dab, params.dab_od_thresholds, params.nucleus_dab_fraction_min,
                                     params.nucleus_dab_od_min, means=means))
    else:
        counts.update(nuclei=0, nuclei_1plus=0, nuclei_2plus=0, nuclei_3plus=0)
    if compartment is None:
        counts.update(empty_counts())
    else:
        reuse = compartment == "nuclear" and labels is not None and nuclei_include_dab
        cell_labels = labels if reuse else _detect(h, dab, mpp, params, nucleus_od_min,
                                                    compartment == "nuclear")
        cells = cell_table(cell_labels, h, dab, mpp, compartment, params.dab_od_thresholds,
                           params.nucleus_dab_fraction_min, params.nucleus_dab_od_min, tumour_cells=tumour_cells,
                           means=means if reuse else None, pixels=pixels if reuse else None)
        counts.update(counts_from_table(cells))
    if return_cells:
        return counts, cells
    if return_images:
        return counts, {"h": h, "dab": dab, "tissue": tissue, "labels": labels, "cell_nuclei": cell_labels}
    return counts


def _pct(num: float, den: float) -> float | None:
    return round(100.0 * num / den, 3) if den > 0 else None


def derived_metrics(c: dict) -> dict:
    """Percentages, H-scores and mean ODs from (tile or summed slide) counts; None where undefined.

    * ``area_positive_pct`` = tissue pixels at DAB >= 1+ / tissue pixels;
    * ``h_score`` (pixel) = 1 x %1+ + 2 x %2+ + 3 x %3+ over tissue pixels (0-300);
    * ``nuclei_positive_pct`` = nuclei with mean DAB >= 1+ / nuclei (labelling index);
    * ``nuclear_h_score`` = the same H-score over nuclei (the classic cell-based H-score);
    * the per-cell figures of :func:`pipeline.ihc.cells.cell_metrics` (cells scored in the marker's compartment).
    """
    t, n = c["tissue_px"], c["nuclei"]
    pos_px = c["px_1plus"] + c["px_2plus"] + c["px_3plus"]
    pos_n = c["nuclei_1plus"] + c["nuclei_2plus"] + c["nuclei_3plus"]
    out = {
        "tissue_pct": _pct(t, c["pixels"]),
        "area_positive_pct": _pct(pos_px, t),
        "pct_1plus": _pct(c["px_1plus"], t), "pct_2plus": _pct(c["px_2plus"], t), "pct_3plus": _pct(c["px_3plus"], t),
        "h_score": round(100.0 * (c["px_1plus"] + 2 * c["px_2plus"] + 3 * c["px_3plus"]) / t, 2) if t else None,
        "dab_mean_od": round(c["dab_od_sum"] / t, 4) if t else None,
        "h_mean_od": round(c["h_od_sum"] / t, 4) if t else None,
        "nuclei_positive": pos_n,
        "nuclei_positive_pct": _pct(pos_n, n),
        "nuclear_h_score": round(100.0 * (c["nuclei_1plus"] + 2 * c["nuclei_2plus"] + 3 * c["nuclei_3plus"]) / n, 2)
        if n else None,
    }
    out.update(cell_metrics(c))
    return out
