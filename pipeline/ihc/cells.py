"""Cells built from nuclei and scored by the marker's compartment (pure numpy/scikit-image; arrays in, dicts out).

The job: turn a nucleus label image (:func:`pipeline.ihc.nuclei.detect_nuclei`) into cells and count them per DAB
class the way a marker is read, per cell rather than per pixel, so DAB-negative stroma does not dilute a result.
Every cell of the image counts unless the caller asks for tumour-like cells only (:mod:`pipeline.ihc.tumour_cells`).

* :func:`cells_from_nuclei` - cells (each nucleus grown by ``cytoplasm_um``, never into a neighbour), their
  cytoplasm ring (cell minus nucleus) and membrane band (the cell's outer ``membrane_um``);
* :func:`measure_cells` - per cell: nucleus H and DAB means, ring DAB mean, membrane band DAB mean, membrane
  intensity and completeness (:class:`CellMeasurements`);
* :func:`cell_classes` - each cell's DAB class 0 / 1+ / 2+ / 3+ read in the marker's compartment;
* :func:`membrane_classes` - the HER2-style research class of each cell (rule below);
* :func:`cell_counts` - the per-tile counts of :data:`CELL_COUNT_COLUMNS` (summed over tiles like the pixel counts);
* :func:`cell_metrics` - percentages, the cell H-score and the HER2-style research score from (summed) counts.

Compartments (configs/markers.yaml ``compartment``) and the mean each reads:

* ``nuclear`` - the nucleus, with the brown-versus-blue rule of :func:`pipeline.ihc.nuclei.nucleus_classes` (the
  cell counts then equal the nucleus counts);
* ``cytoplasmic`` - the ring's mean DAB OD;
* ``membranous`` - the membrane intensity where the membrane is stained: the mean of the strongest DAB of each
  stained angular sector of the membrane band (a thin brown line anywhere in the band counts fully, whatever its
  width), for cells whose membrane is stained over at least 30 % of the perimeter (else 0);
* ``nuclear_cytoplasmic`` - the higher of the nucleus class and the ring class.

Classes by mean DAB OD: 1+ from ``thresholds[0]``, 2+ from ``thresholds[1]``, 3+ from ``thresholds[2]`` (config
``ihc.dab_od_thresholds``, 0.2 / 0.4 / 0.6).

HER2-style membrane class per cell (a research score for comparison, never an ASCO/CAP HER2 result: no
validated cut-offs, no fixation or control checks, no pathologist). Completeness C is the fraction of the
membrane band's sectors whose strongest DAB reaches 1+; intensity I the mean of those sectors' peaks:

* 3+: complete (C >= 0.9) and intense (I >= 3+ OD);
* 2+: complete and weak to moderate (I < 3+ OD), or incomplete (0.3 <= C < 0.9) and at least moderate (I >= 2+ OD);
* 1+: incomplete (0.3 <= C < 0.9) and faint (I < 2+ OD);
* 0: no membrane staining (C < 0.3; a neighbour's membrane alone touches a sector or two).

The tile set's HER2-style research score follows the ASCO/CAP 2018 shape on these per-cell classes: 3+ when more
than 10 % of cells are 3+, else 2+ when more than 10 % are 2+ or 3+, else 1+ when more than 10 % are 1+ or more,
else 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.ihc.nuclei import LabelPixels, label_pixels, nucleus_classes, nucleus_means
from pipeline.ihc.stain import intensity_classes
from pipeline.ihc.tumour_cells import nucleus_geometry, tumour_like

COMPARTMENTS = ("nuclear", "cytoplasmic", "membranous", "nuclear_cytoplasmic")
CELL_COUNT_COLUMNS = ("cells", "cells_1plus", "cells_2plus", "cells_3plus",
                      "membrane_0", "membrane_1", "membrane_2", "membrane_3", "cells_set_aside")
CELL_METRIC_COLUMNS = ("cells_positive", "cells_positive_pct", "cell_h_score", "membrane_pct_2plus",
                       "membrane_pct_3plus", "her2_style_research_score")

# Cytoplasm grown around each nucleus: QuPath's cell detection grows 5 um by default; 3 um keeps the ring of a cell
# at the edge of a nest out of the stroma beside it (inside a nest the neighbours stop the growth first).
CYTOPLASM_UM = 3.0
# Outer band of each cell read as its membrane. The grown cell's edge is a guess at the real one: on drawn cells with
# their membrane 1-2 um inside the grown edge, a 1 um band found 64 % of complete membranes' sectors, 1.5 um 92 %,
# 2 um all of them (tests/test_cells.py); the strongest DAB per sector is read, so a wider band costs little.
MEMBRANE_UM = 2.0
SECTORS = 24  # angular sectors of the membrane band (15 degrees each)
COMPLETE_MIN = 0.9  # membrane completeness of a "complete" membrane
PARTIAL_MIN = 0.3  # least completeness counted as membrane staining at all
SCORE_CELLS_PCT = 10.0  # per cent of cells a HER2-style class needs (ASCO/CAP 2018 shape)


@dataclass(frozen=True)
class CellCompartments:
    """Label images (int32, 0 = none) sharing cell ids 1..n: ``cells``, ``nucleus``, ``ring`` (cytoplasm = cell
    minus nucleus) and ``membrane`` (the cell's outer band; may overlap the nucleus in a tight cell)."""

    cells: np.ndarray
    nucleus: np.ndarray
    ring: np.ndarray
    membrane: np.ndarray
    n: int


@dataclass(frozen=True)
class CellMeasurements:
    """Per-cell arrays (index i-1 for cell i); means are OD, NaN where a compartment has no pixel."""

    area_px: np.ndarray
    nucleus_h: np.ndarray
    nucleus_dab: np.ndarray
    ring_dab: np.ndarray
    membrane_dab: np.ndarray
    membrane_intensity: np.ndarray  # mean strongest DAB of the stained sectors (NaN when none)
    membrane_completeness: np.ndarray  # fraction of the band's sectors whose strongest DAB reaches 1+


def cells_from_nuclei(labels: np.ndarray, mpp: float, cytoplasm_um: float = CYTOPLASM_UM,
                      membrane_um: float | None = MEMBRANE_UM) -> CellCompartments:
    """Cells of a nucleus label image at ``mpp`` um/px: each nucleus grown by ``cytoplasm_um`` (scikit-image
    ``expand_labels``: a pixel joins the nearest nucleus within reach, so neighbours split the space between them),
    ids renumbered 1..n in label order. The membrane band is the cell's pixels with another label (another cell or
    the outside) within ``membrane_um`` (a disc; the tile's own border is not a membrane); None
    leaves it empty (it is only read for membranous markers)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    if mpp <= 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label image, got shape {labels.shape}")
    if cytoplasm_um < 0 or (membrane_um is not None and membrane_um <= 0):
        raise ValueError(f"cytoplasm_um must be >= 0 and membrane_um > 0, got {cytoplasm_um}, {membrane_um}")
    labels = np.asarray(labels, np.int32)
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    lut = np.zeros(present.size, np.int32)
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    nucleus = lut[labels]
    n = int(present.sum())
    if n == 0:
        return CellCompartments(nucleus, nucleus, nucleus, nucleus, 0)
    cells = expand_labels(nucleus, distance=cytoplasm_um / mpp).astype(np.int32)
    ring = np.where(nucleus > 0, 0, cells)
    membrane = np.zeros_like(cells)
    if membrane_um is not None:
        r = max(int(round(membrane_um / mpp)), 1)
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        disc = yy * yy + xx * xx <= r * r
        edge = ((ndi.maximum_filter(cells, footprint=disc) != cells)
                | (ndi.minimum_filter(cells, footprint=disc) != cells))
        membrane = np.where(edge, cells, 0)
    return CellCompartments(cells, nucleus, ring, membrane, n)


def _means(labels: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    total = np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, total / np.maximum(area, 1), np.nan)


def _membrane_sectors(comp: CellCompartments, dab_od: np.ndarray, threshold: float, sectors: int):
    """(intensity, completeness) per cell from the strongest DAB of each angular sector of the membrane band,
    angles taken about the cell's centroid; sectors without band pixels (the tile's border) do not count."""
    n = comp.n
    ys, xs = np.nonzero(comp.membrane)
    ids = comp.membrane[ys, xs]
    flat = comp.cells.ravel()
    area = np.maximum(np.bincount(flat, minlength=n + 1), 1).astype(np.float64)
    yy, xx = np.indices(comp.cells.shape)
    cy = np.bincount(flat, weights=yy.ravel(), minlength=n + 1) / area
    cx = np.bincount(flat, weights=xx.ravel(), minlength=n + 1) / area
    angle = np.arctan2(ys - cy[ids], xs - cx[ids])
    sector = np.minimum(((angle + np.pi) / (2 * np.pi) * sectors).astype(np.int64), sectors - 1)
    key = (ids.astype(np.int64) - 1) * sectors + sector
    peak = np.full(n * sectors, -np.inf)
    np.maximum.at(peak, key, dab_od[ys, xs].astype(np.float64))
    peak = peak.reshape(n, sectors)
    present = np.isfinite(peak)
    stained = present & (peak >= threshold)
    n_present, n_stained = present.sum(axis=1), stained.sum(axis=1)
    stained_sum = np.where(stained, peak, 0.0).sum(axis=1)
    intensity = np.where(n_stained > 0, stained_sum / np.maximum(n_stained, 1), np.nan)
    completeness = np.where(n_present > 0, n_stained / np.maximum(n_present, 1), 0.0)
    return intensity, completeness


def measure_cells(comp: CellCompartments, h_od: np.ndarray, dab_od: np.ndarray, threshold_1plus: float = 0.2,
                  sectors: int = SECTORS, membrane: bool = True) -> CellMeasurements:
    """Per-cell means of each compartment; membrane intensity and completeness against ``threshold_1plus`` OD
    over ``sectors`` angular sectors (the membrane is skipped, NaN / 0, with ``membrane=False``)."""
    if h_od.shape != comp.cells.shape or dab_od.shape != comp.cells.shape:
        raise ValueError(f"shape mismatch: cells {comp.cells.shape}, H {h_od.shape}, DAB {dab_od.shape}")
    n = comp.n
    if membrane and n:
        intensity, completeness = _membrane_sectors(comp, dab_od, threshold_1plus, sectors)
    else:
        intensity, completeness = np.full(n, np.nan), np.zeros(n)
    return CellMeasurements(
        area_px=np.bincount(comp.cells.ravel(), minlength=n + 1)[1:],
        nucleus_h=_means(comp.nucleus, h_od, n), nucleus_dab=_means(comp.nucleus, dab_od, n),
        ring_dab=_means(comp.ring, dab_od, n),
        membrane_dab=_means(comp.membrane, dab_od, n) if membrane else np.full(n, np.nan),
        membrane_intensity=intensity, membrane_completeness=completeness)


def _classes(mean: np.ndarray, thresholds) -> np.ndarray:
    return intensity_classes(np.nan_to_num(mean, nan=0.0), thresholds)


def cell_classes(m: CellMeasurements, compartment: str, thresholds=(0.2, 0.4, 0.6), dab_fraction_min: float = 0.35,
                 dab_od_min: float = 0.05) -> np.ndarray:
    """DAB class (uint8 0..3) of each cell read in ``compartment`` (see the module docstring); the nucleus uses
    :func:`pipeline.ihc.nuclei.nucleus_classes` with ``dab_fraction_min`` and ``dab_od_min``."""
    if compartment not in COMPARTMENTS:
        raise ValueError(f"compartment must be one of {COMPARTMENTS}, got {compartment!r}")
    if compartment == "cytoplasmic":
        return _classes(m.ring_dab, thresholds)
    if compartment == "membranous":
        return np.where(m.membrane_completeness >= PARTIAL_MIN, _classes(m.membrane_intensity, thresholds), 0)
    nuc = nucleus_classes(np.nan_to_num(m.nucleus_h), np.nan_to_num(m.nucleus_dab), thresholds, dab_fraction_min,
                          dab_od_min)
    if compartment == "nuclear":
        return nuc
    return np.maximum(nuc, _classes(m.ring_dab, thresholds))


def membrane_classes(m: CellMeasurements, thresholds=(0.2, 0.4, 0.6), complete_min: float = COMPLETE_MIN,
                     partial_min: float = PARTIAL_MIN) -> np.ndarray:
    """HER2-style research class (uint8 0..3) of each cell's membrane (rule in the module docstring); a research
    score, never an ASCO/CAP result."""
    c = m.membrane_completeness
    i = np.nan_to_num(m.membrane_intensity, nan=0.0)
    complete, partial = c >= complete_min, (c >= partial_min) & (c < complete_min)
    out = np.zeros(c.shape, np.uint8)
    out[partial] = 1
    out[(partial & (i >= thresholds[1])) | complete] = 2
    out[complete & (i >= thresholds[2])] = 3
    return out


def cell_table(labels: np.ndarray, h_od: np.ndarray, dab_od: np.ndarray, mpp: float, compartment: str,
               thresholds=(0.2, 0.4, 0.6), dab_fraction_min: float = 0.35, dab_od_min: float = 0.05,
               cytoplasm_um: float = CYTOPLASM_UM, membrane_um: float = MEMBRANE_UM,
               tumour_cells: tuple[float, float] | None = None, means=None,
               pixels: LabelPixels | None = None) -> dict[str, np.ndarray]:
    """One row per nucleus of ``labels`` (in label order): its geometry (:func:`pipeline.ihc.tumour_cells
    .nucleus_geometry`: ``cx_px``, ``cy_px``, ``area_um2``, ``width_um``, ``length_um``, ``angle_rad``), the mean
    DAB OD of its nucleus and (grown cells) its cytoplasm ring, its DAB class 0-3 in ``compartment``, its HER2-style
    research class (membranous; else -1) and ``tumour_like`` (all True without ``tumour_cells`` = (min nucleus area
    um2, min width um), :mod:`pipeline.ihc.tumour_cells`). Every nucleus takes its share of space when cells are
    grown, tumour-like or not. ``means``: the :func:`pipeline.ihc.nuclei.nucleus_means` of ``labels`` when already
    computed (a nuclear compartment reads them); ``pixels``: their :func:`pipeline.ihc.nuclei.label_pixels`."""
    if compartment not in COMPARTMENTS:
        raise ValueError(f"compartment must be one of {COMPARTMENTS}, got {compartment!r}")
    labels = np.asarray(labels, np.int32)
    pixels = pixels if pixels is not None else label_pixels(labels)
    present = pixels.count[1:] > 0
    g = nucleus_geometry(labels, mpp, pixels)
    table = {k: getattr(g, k)[present] for k in ("cx_px", "cy_px", "area_um2", "width_um", "length_um", "angle_rad")}
    n = int(present.sum())
    table["tumour_like"] = (tumour_like(table["area_um2"], table["width_um"], *tumour_cells)
                            if tumour_cells is not None else np.ones(n, bool))
    if compartment == "nuclear":  # the cells' class is their nucleus's: no need to grow them
        h_mean, dab_mean = means if means is not None else nucleus_means(labels, h_od, dab_od, pixels)
        table.update(nucleus_dab=dab_mean, ring_dab=np.full(n, np.nan), her2_class=np.full(n, -1, np.int8),
                     dab_class=nucleus_classes(h_mean, dab_mean, thresholds, dab_fraction_min, dab_od_min))
        return table
    membranous = compartment == "membranous"
    comp = cells_from_nuclei(labels, mpp, cytoplasm_um, membrane_um if membranous else None)
    m = measure_cells(comp, h_od, dab_od, thresholds[0], membrane=membranous)
    table.update(nucleus_dab=m.nucleus_dab, ring_dab=m.ring_dab,
                 dab_class=cell_classes(m, compartment, thresholds, dab_fraction_min, dab_od_min),
                 her2_class=(membrane_classes(m, thresholds).astype(np.int8) if membranous
                             else np.full(n, -1, np.int8)))
    return table


def counts_from_table(table: dict[str, np.ndarray]) -> dict:
    """Counts of :data:`CELL_COUNT_COLUMNS` from a :func:`cell_table`: tumour-like cells per DAB class and per
    HER2-style class (0 where the compartment has none); the others in ``cells_set_aside``."""
    keep = table["tumour_like"]
    per_class = np.bincount(table["dab_class"][keep], minlength=4)
    her2 = np.bincount(np.maximum(table["her2_class"][keep], 0), minlength=4)
    if not (table["her2_class"] >= 0).any():
        her2 = np.zeros(4, int)
    return {"cells": int(keep.sum()), "cells_1plus": int(per_class[1]), "cells_2plus": int(per_class[2]),
            "cells_3plus": int(per_class[3]), **{f"membrane_{k}": int(her2[k]) for k in range(4)},
            "cells_set_aside": int((~keep).sum())}


def cell_counts(labels: np.ndarray, h_od: np.ndarray, dab_od: np.ndarray, mpp: float, compartment: str,
                thresholds=(0.2, 0.4, 0.6), dab_fraction_min: float = 0.35, dab_od_min: float = 0.05,
                cytoplasm_um: float = CYTOPLASM_UM, membrane_um: float = MEMBRANE_UM,
                tumour_cells: tuple[float, float] | None = None) -> dict:
    """Counts of :data:`CELL_COUNT_COLUMNS` for one tile: cells and cells per DAB class in ``compartment``;
    for membranous markers also cells per HER2-style research class (``membrane_0`` .. ``membrane_3``, else 0).

    ``tumour_cells`` = (min nucleus area um2, min nucleus width um) counts only the cells whose nucleus looks like
    a tumour cell's (:mod:`pipeline.ihc.tumour_cells`); the others are counted in ``cells_set_aside``."""
    return counts_from_table(cell_table(labels, h_od, dab_od, mpp, compartment, thresholds, dab_fraction_min,
                                        dab_od_min, cytoplasm_um, membrane_um, tumour_cells))


def empty_counts() -> dict:
    """Cell counts of a tile scored without cells (all 0)."""
    return dict.fromkeys(CELL_COUNT_COLUMNS, 0)


def her2_style_research_score(membrane: tuple[int, int, int, int], cells_pct: float = SCORE_CELLS_PCT) -> int | None:
    """0-3 from the cells per HER2-style class (``membrane_0`` .. ``membrane_3``) of a tile set: the highest class
    reached by more than ``cells_pct`` % of cells (counting higher classes in). None without membrane counts.
    A research score, never an ASCO/CAP HER2 result."""
    total = sum(membrane)
    if total == 0:
        return None
    for cls in (3, 2, 1):
        if 100.0 * sum(membrane[cls:]) / total > cells_pct:
            return cls
    return 0


def cell_metrics(c: dict) -> dict:
    """Per-cell figures from (tile or summed slide) counts; None where undefined (no cells, or no membrane class):

    * ``cells_positive_pct`` = cells at 1+ or more / cells;
    * ``cell_h_score`` = 1 x %1+ + 2 x %2+ + 3 x %3+ over cells (0-300);
    * ``membrane_pct_2plus`` / ``membrane_pct_3plus`` = cells of HER2-style research class >= 2+ / = 3+, per cent;
    * ``her2_style_research_score`` = :func:`her2_style_research_score` (research only, never ASCO/CAP).
    """
    n = c.get("cells", 0)
    pos = c.get("cells_1plus", 0) + c.get("cells_2plus", 0) + c.get("cells_3plus", 0)
    membrane = tuple(int(c.get(f"membrane_{k}", 0)) for k in range(4))
    with_membrane = sum(membrane) > 0
    return {
        "cells_positive": pos,
        "cells_positive_pct": round(100.0 * pos / n, 3) if n else None,
        "cell_h_score": round(100.0 * (c.get("cells_1plus", 0) + 2 * c.get("cells_2plus", 0)
                                       + 3 * c.get("cells_3plus", 0)) / n, 2) if n else None,
        "membrane_pct_2plus": round(100.0 * (membrane[2] + membrane[3]) / sum(membrane), 3) if with_membrane else None,
        "membrane_pct_3plus": round(100.0 * membrane[3] / sum(membrane), 3) if with_membrane else None,
        "her2_style_research_score": her2_style_research_score(membrane),
    }
