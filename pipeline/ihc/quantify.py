"""DAB quantification of an IHC slide: per tile and per slide, pixel- and cell-level, with a marker result.

Core functions are pure (arrays in, arrays/dicts out):

* :func:`pixel_counts` - tissue pixels and DAB intensity classes 0 / 1+ / 2+ / 3+ from H and DAB OD images;
* :func:`detect_nuclei` - nuclei from the haematoxylin + DAB image (Gaussian smoothing, OD threshold,
  distance-transform watershed), sized for the um/px;
* :func:`nucleus_counts` - nuclei per DAB class by each nucleus's mean DAB OD;
* :func:`quantify_tile` - both on one RGB tile; :func:`derived_metrics` - percentages and H-scores from counts;
* :func:`marker_result` - positive / negative / equivocal / not_evaluable by the knowledge-base cut-off.

:func:`quantify_ihc` runs them over a slide's tile grid (the slide opened once, ``threads`` workers);
``python -m pipeline quantify-ihc`` is the CLI (rule ``quantify_ihc``), which also draws a contact sheet
(RGB | haematoxylin | DAB | intensity classes | nuclei) of an image or of a slide's tiles.

Units: OD is log10 optical density along a unit stain vector (see :mod:`pipeline.ihc.stain`); x, y are level-0
pixels of a grid tile's top-left corner; percentages are 0-100; H-scores 0-300.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pipeline import DISCLAIMER, atomic
from pipeline.ihc import stain
from pipeline.ihc.stain import stain_check  # noqa: F401 - re-exported for the summary stage

log = logging.getLogger(__name__)

IHC_VERSION = 1
CLASS_NAMES = ("0", "1+", "2+", "3+")
# Per-tile count columns, summed over tiles for the slide totals (so slide percentages weigh every pixel
# and every nucleus equally, not every tile).
COUNT_COLUMNS = ("pixels", "tissue_px", "px_1plus", "px_2plus", "px_3plus", "nuclei", "nuclei_1plus",
                 "nuclei_2plus", "nuclei_3plus")
SUM_COLUMNS = ("dab_od_sum", "h_od_sum")


@dataclass(frozen=True)
class IhcParams:
    """Science parameters of DAB quantification (config section ``ihc``; defaults documented there)."""

    quantify_mpp: float = 0.5
    stain_vectors: str = "reference"
    background: str = "estimated"
    tissue_od_min: float = 0.015
    tissue_sigma_um: float = 2.0
    tissue_max_hole_um2: float = 100.0
    dab_od_thresholds: tuple[float, float, float] = (0.2, 0.4, 0.6)
    nucleus_sigma_um: float = 1.0
    nucleus_od_min: float | str = "auto"
    nucleus_od_range: tuple[float, float] = (0.05, 0.3)
    nucleus_min_area_um2: float = 10.0
    nucleus_max_area_um2: float = 400.0
    nucleus_min_distance_um: float = 3.0
    nucleus_dab_fraction_min: float = 0.35
    nucleus_dab_od_min: float = 0.05
    min_nuclei: int = 200
    min_tissue_mm2: float = 0.05
    equivocal_band: float = 0.5
    diffuse_tiles_pct: float = 30.0
    thumb_mpp: float = 8.0
    vector_sample_tiles: int = 24
    stain_check_he_dab_max: float = 0.05
    stain_check_ihc_dab_min: float = 0.01
    stain_check_ihc_eosin_min: float = 0.3

    @classmethod
    def from_config(cls, section: dict | None) -> IhcParams:
        section = dict(section or {})
        check = section.pop("stain_check", {}) or {}
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in section.items() if k in known}
        for k, v in check.items():
            if f"stain_check_{k}" in known:
                kwargs[f"stain_check_{k}"] = v
        for key in ("dab_od_thresholds", "nucleus_od_range"):
            if key in kwargs:
                kwargs[key] = tuple(float(t) for t in kwargs[key])
        params = cls(**kwargs)
        params.check()
        return params

    def check(self) -> None:
        t = self.dab_od_thresholds
        if len(t) != 3 or not (0 < t[0] < t[1] < t[2]):
            raise ValueError(f"dab_od_thresholds must be 3 increasing positive ODs, got {t}")
        if not self.quantify_mpp > 0:
            raise ValueError(f"quantify_mpp must be > 0, got {self.quantify_mpp}")
        if self.stain_vectors not in {"reference", "estimated"}:
            raise ValueError(f"stain_vectors must be 'reference' or 'estimated', got {self.stain_vectors!r}")
        if not (self.nucleus_od_min == "auto" or isinstance(self.nucleus_od_min, (int, float))):
            raise ValueError(f"nucleus_od_min must be 'auto' or an OD, got {self.nucleus_od_min!r}")
        if self.background not in {"estimated", "white"}:
            raise ValueError(f"background must be 'estimated' or 'white', got {self.background!r}")


# ---- pixel level ---------------------------------------------------------------------------------------
def intensity_classes(dab_od: np.ndarray, thresholds=(0.2, 0.4, 0.6)) -> np.ndarray:
    """DAB class per pixel (uint8 0..3): 0 below thresholds[0], 1+ from it, 2+ from thresholds[1], 3+ from [2]."""
    return np.searchsorted(np.asarray(thresholds, np.float32), dab_od, side="right").astype(np.uint8)


def tissue_pixels(rgb_od: np.ndarray, mpp: float, od_min: float = 0.015, sigma_um: float = 2.0,
                  max_hole_um2: float = 100.0) -> np.ndarray:
    """Tissue mask of a tile: mean OD over R, G, B (glass divided out), smoothed over ``sigma_um``, at least
    ``od_min``; holes up to ``max_hole_um2`` (pale cytoplasm between nuclei) filled.

    The smoothing and the low threshold are for scanners that render cytoplasm almost as glass (the OS-2 VSI
    scan: median tissue OD 0.018 against the NDPI scan's 0.049); lumens and glass stay out.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import remove_small_holes

    smooth = ndi.gaussian_filter(rgb_od.mean(axis=-1), sigma=max(sigma_um / mpp, 0.1))
    mask = smooth >= od_min
    hole_px = int(max_hole_um2 / (mpp * mpp))
    return remove_small_holes(mask, max_size=hole_px) if hole_px > 0 else mask


def pixel_counts(h_od: np.ndarray, dab_od: np.ndarray, tissue: np.ndarray, thresholds=(0.2, 0.4, 0.6)) -> dict:
    """Counts over one image: pixels, tissue pixels, tissue pixels per DAB class (exclusive), OD sums."""
    if h_od.shape != dab_od.shape or tissue.shape != dab_od.shape:
        raise ValueError(f"shape mismatch: H {h_od.shape}, DAB {dab_od.shape}, tissue {tissue.shape}")
    cls = intensity_classes(dab_od[tissue], thresholds)
    per_class = np.bincount(cls, minlength=4)
    return {
        "pixels": int(dab_od.size), "tissue_px": int(tissue.sum()),
        "px_1plus": int(per_class[1]), "px_2plus": int(per_class[2]), "px_3plus": int(per_class[3]),
        "dab_od_sum": float(dab_od[tissue].sum(dtype=np.float64)),
        "h_od_sum": float(h_od[tissue].sum(dtype=np.float64)),
    }


# ---- cell level ----------------------------------------------------------------------------------------
def detect_nuclei(h_od: np.ndarray, dab_od: np.ndarray, mpp: float, *, sigma_um: float = 1.0,
                  od_min: float = 0.15, min_area_um2: float = 10.0, max_area_um2: float = 400.0,
                  min_distance_um: float = 3.0) -> np.ndarray:
    """Label image (int32, 0 = background) of nuclei in an H-DAB image at ``mpp`` um/px.

    Nuclei are stained by haematoxylin, or by DAB where a nuclear marker covers it, so the signal is
    H + DAB OD, smoothed with a Gaussian of ``sigma_um`` and thresholded at ``od_min``; touching nuclei are
    split by a watershed on the distance transform seeded at maxima at least ``min_distance_um`` apart
    (about a nucleus radius: nuclei are 5-15 um across). Objects outside
    [``min_area_um2``, ``max_area_um2``] (debris, unsplit clumps) are dropped. Defaults follow QuPath's
    positive-cell detection (0.5 um/px, 10-400 um2, smoothing ~1 um).
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    if mpp <= 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    signal = ndi.gaussian_filter((h_od + dab_od).astype(np.float32), sigma=max(sigma_um / mpp, 0.1))
    mask = signal >= od_min
    px_area = mpp * mpp
    min_px, max_px = max(1, int(round(min_area_um2 / px_area))), int(round(max_area_um2 / px_area))
    mask = ndi.binary_opening(mask, iterations=1)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = ndi.distance_transform_edt(mask)
    components, _ = ndi.label(mask)
    min_dist_px = max(1, int(round(min_distance_um / mpp)))
    # Smooth the distance map a little so that irregular outlines do not seed several maxima per nucleus.
    dist_s = ndi.gaussian_filter(dist, sigma=min_dist_px / 3.0)
    # Seeds: local maxima of the smoothed distance map within a (2 min_dist + 1) window (a plateau = one seed).
    # One maximum filter over the tile; skimage's peak_local_max with labels loops over objects in Python.
    size = 2 * min_dist_px + 1
    peaks = (dist_s >= ndi.maximum_filter(dist_s, size=size) - 1e-6) & mask
    markers, n_peaks = ndi.label(peaks)
    # Components with no seed (a bigger neighbour's maximum within the window) get one so they are not lost.
    seeded = np.zeros(components.max() + 1, bool)
    seeded[components[markers > 0]] = True
    unseeded = np.flatnonzero(~seeded[1:]) + 1
    if len(unseeded):
        extra = ndi.maximum_position(dist, components, unseeded)
        for i, pos in enumerate(extra, start=n_peaks + 1):
            markers[pos] = i
    labels = watershed(-dist_s, markers, mask=mask)
    areas = np.bincount(labels.ravel())
    bad = (areas < min_px) | (areas > max_px)
    bad[0] = True
    labels[bad[labels]] = 0
    return labels.astype(np.int32)


def estimate_nucleus_threshold(h_od: np.ndarray, dab_od: np.ndarray, mpp: float, sigma_um: float = 1.0,
                               dab_negative_max: float = 0.1, od_range=(0.05, 0.3)) -> float:
    """Per-slide nucleus OD threshold: Otsu's threshold of smoothed haematoxylin where DAB is absent.

    DAB-negative nuclei against cytoplasm set the threshold (DAB-positive nuclei are found at any sensible
    threshold). Scanners differ by a factor of two here (OS-2: NDPI 0.16, VSI 0.09 OD), which a fixed
    threshold would turn into a Ki-67 difference. Clipped to ``od_range``.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    sigma = max(sigma_um / mpp, 0.1)
    h_s = ndi.gaussian_filter(h_od.astype(np.float32), sigma)
    dab_s = ndi.gaussian_filter(dab_od.astype(np.float32), sigma)
    values = h_s[(dab_s < dab_negative_max) & (h_s > 0.01)]
    if values.size < 100 or np.ptp(values) <= 0:
        return float(od_range[0])
    return float(np.clip(threshold_otsu(values), *od_range))


def nucleus_means(labels: np.ndarray, h_od: np.ndarray, dab_od: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean H and mean DAB OD of each nucleus (index i-1 for label i; labels without pixels are dropped)."""
    n = int(labels.max())
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    h_sum = np.bincount(flat, weights=h_od.ravel().astype(np.float64), minlength=n + 1)[1:]
    dab_sum = np.bincount(flat, weights=dab_od.ravel().astype(np.float64), minlength=n + 1)[1:]
    keep = area > 0
    return (h_sum[keep] / area[keep]).astype(np.float32), (dab_sum[keep] / area[keep]).astype(np.float32)


def nucleus_classes(h_mean: np.ndarray, dab_mean: np.ndarray, thresholds=(0.2, 0.4, 0.6),
                    dab_fraction_min: float = 0.35, dab_od_min: float = 0.05) -> np.ndarray:
    """DAB class per nucleus (0..3). A nucleus is positive when it looks brown rather than blue: DAB is at least
    ``dab_fraction_min`` of its H + DAB OD and its mean DAB at least ``dab_od_min``; positive nuclei get 1+, 2+
    or 3+ by mean DAB OD (``thresholds``), weak ones (below thresholds[0]) 1+.

    Brown-vs-blue is a ratio, so it survives scanner contrast: the OS-2 VSI scan renders every OD about 0.55x
    the NDPI scan, which moved a fixed 0.2 OD cut from 20 % to 10 % Ki-67, while the ratio rule gives 24.8 %
    and 25.0 % on the same nuclei.
    """
    total = h_mean + dab_mean
    positive = (dab_mean >= dab_od_min) & (dab_mean >= dab_fraction_min * np.maximum(total, 1e-6))
    cls = np.maximum(intensity_classes(dab_mean, thresholds), 1)
    return np.where(positive, cls, 0).astype(np.uint8)


def nucleus_counts(labels: np.ndarray, h_od: np.ndarray, dab_od: np.ndarray, thresholds=(0.2, 0.4, 0.6),
                   dab_fraction_min: float = 0.35, dab_od_min: float = 0.05) -> dict:
    """Nuclei and nuclei per DAB class (see :func:`nucleus_classes`); positive = 1+ or more."""
    h_mean, dab_mean = nucleus_means(labels, h_od, dab_od)
    per_class = np.bincount(nucleus_classes(h_mean, dab_mean, thresholds, dab_fraction_min, dab_od_min), minlength=4)
    return {"nuclei": int(per_class.sum()), "nuclei_1plus": int(per_class[1]),
            "nuclei_2plus": int(per_class[2]), "nuclei_3plus": int(per_class[3])}


# ---- one tile ------------------------------------------------------------------------------------------
class Deconvolver:
    """Stain matrix + glass colour for one slide (estimated once, applied to every tile)."""

    def __init__(self, matrix: np.ndarray = stain.HDAB_REFERENCE, background=(255.0, 255.0, 255.0)):
        self.matrix = np.asarray(matrix, np.float64)
        self.background = tuple(float(v) for v in background)
        self._inverse = np.linalg.inv(self.matrix).astype(np.float32)

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(H OD, DAB OD, per-channel RGB OD) of an RGB tile."""
        od = stain.rgb_to_od(rgb, self.background)
        conc = np.maximum(od @ self._inverse, 0.0)
        return conc[..., 0], conc[..., 1], od


def quantify_tile(rgb: np.ndarray, mpp: float, params: IhcParams, nuclear: bool,
                  deconvolver: Deconvolver | None = None, nucleus_od_min: float | None = None,
                  return_images: bool = False, nuclei_include_dab: bool = True):
    """Counts for one RGB tile at ``mpp`` um/px (see COUNT_COLUMNS); with ``return_images`` also the maps.

    ``nucleus_od_min`` is the slide's calibrated threshold; None uses the configured number, or with
    ``auto`` estimates it from this tile alone. ``nuclei_include_dab=False`` finds nuclei on haematoxylin
    alone (for pictures of cytoplasmic stains, where DAB fills the cytoplasm around the nuclei).
    """
    deconvolver = deconvolver or Deconvolver()
    h, dab, od = deconvolver(rgb)
    tissue = tissue_pixels(od, mpp, params.tissue_od_min, params.tissue_sigma_um, params.tissue_max_hole_um2)
    counts = pixel_counts(h, dab, tissue, params.dab_od_thresholds)
    labels = None
    if nuclear:
        if nucleus_od_min is None:
            nucleus_od_min = params.nucleus_od_min
            if nucleus_od_min == "auto":
                nucleus_od_min = estimate_nucleus_threshold(h, dab, mpp, params.nucleus_sigma_um,
                                                            params.dab_od_thresholds[0] / 2, params.nucleus_od_range)
        labels = detect_nuclei(h, dab if nuclei_include_dab else np.zeros_like(dab), mpp,
                               sigma_um=params.nucleus_sigma_um, od_min=nucleus_od_min,
                               min_area_um2=params.nucleus_min_area_um2, max_area_um2=params.nucleus_max_area_um2,
                               min_distance_um=params.nucleus_min_distance_um)
        counts.update(nucleus_counts(labels, h, dab, params.dab_od_thresholds, params.nucleus_dab_fraction_min,
                                     params.nucleus_dab_od_min))
    else:
        counts.update(nuclei=0, nuclei_1plus=0, nuclei_2plus=0, nuclei_3plus=0)
    if return_images:
        return counts, {"h": h, "dab": dab, "tissue": tissue, "labels": labels}
    return counts


def _pct(num: float, den: float) -> float | None:
    return round(100.0 * num / den, 3) if den > 0 else None


def derived_metrics(c: dict) -> dict:
    """Percentages, H-scores and mean ODs from (tile or summed slide) counts; None where undefined.

    * ``area_positive_pct`` = tissue pixels at DAB >= 1+ / tissue pixels;
    * ``h_score`` (pixel) = 1 x %1+ + 2 x %2+ + 3 x %3+ over tissue pixels (0-300);
    * ``nuclei_positive_pct`` = nuclei with mean DAB >= 1+ / nuclei (labelling index);
    * ``nuclear_h_score`` = the same H-score over nuclei (the classic cell-based H-score).
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
    return out


# ---- slide-level result ----------------------------------------------------------------------------------
def marker_result(metrics: dict, entry: dict, params: IhcParams, tissue_mm2: float,
                  distribution: dict | None = None) -> dict:
    """positive / negative / equivocal / not_evaluable for a marker from slide metrics and its KB reading.

    Values in [cut-off x (1 - ``equivocal_band``), cut-off) are equivocal (automated counts carry a few
    points of error: the OS-2 scanner pair differs by that much), as is any nuclear count below
    ``min_nuclei`` or tissue below ``min_tissue_mm2``.
    """
    reading = entry["reading"]
    metric, cutoff = reading["metric"], float(reading["positive_at"])
    value = metrics.get(metric)
    lower = cutoff * (1.0 - params.equivocal_band)
    unit = "" if metric == "h_score" else " %"
    rule = (f"{metric} >= {cutoff:g}{unit} positive; {lower:g}-{cutoff:g}{unit} equivocal; below negative")
    out = {"metric": metric, "value": value, "cutoff": cutoff, "equivocal_from": round(lower, 4), "rule": rule,
           "how": " ".join(reading["how"].split()), "qualifier": None}
    if tissue_mm2 < params.min_tissue_mm2:
        return {**out, "call": "not_evaluable",
                "reason": f"only {tissue_mm2:.3f} mm2 of tissue quantified (< {params.min_tissue_mm2:g} mm2)"}
    if value is None:
        return {**out, "call": "not_evaluable", "reason": f"{metric} undefined (no tissue or no nuclei)"}
    if metric == "nuclei_positive_pct" and metrics.get("nuclei", 0) < params.min_nuclei:
        return {**out, "call": "equivocal",
                "reason": f"only {metrics.get('nuclei', 0)} nuclei counted (< {params.min_nuclei}); too few to call"}
    if value >= cutoff:
        call = "positive"
        low = reading.get("low_positive_below")
        if low is not None and value < low:
            out["qualifier"] = f"low positive ({cutoff:g}-{low:g}{unit})"
        reason = f"{metric} {value:g}{unit} >= {cutoff:g}{unit}"
    elif value >= lower:
        call, reason = "equivocal", f"{metric} {value:g}{unit} just below the cut-off {cutoff:g}{unit}: review"
    else:
        call, reason = "negative", f"{metric} {value:g}{unit} < {lower:g}{unit}"
    if distribution and call == "positive":
        reason += (f"; {distribution['pattern']} ({distribution['tiles_positive_pct']:g} % of tiles at or above "
                   "the cut-off)")
    return {**out, "call": call, "reason": reason}


def distribution(tile_values: np.ndarray, cutoff: float, diffuse_tiles_pct: float) -> dict:
    """How the positivity is spread over tiles: diffuse / focal / none (share of tiles at or above the cut-off)."""
    values = tile_values[np.isfinite(tile_values)]
    if len(values) == 0:
        return {"tiles_positive_pct": 0.0, "pattern": "none", "tiles": 0}
    pct = round(100.0 * float((values >= cutoff).mean()), 2)
    pattern = "none" if pct == 0 else "diffuse" if pct >= diffuse_tiles_pct else "focal"
    return {"tiles_positive_pct": pct, "pattern": pattern, "tiles": int(len(values))}


def internal_control(counts: list[dict], entry: dict, params: IhcParams) -> dict | None:
    """Whether any tile has strong (2+/3+) DAB over at least 1 % of its tissue: the control structures
    (vessel walls for desmin, endothelium for CD34 ...) should show it even when the tumour is negative."""
    expected = entry.get("internal_control")
    if not expected or expected.startswith("none"):
        return None
    strong = [c for c in counts if c["tissue_px"] and (c["px_2plus"] + c["px_3plus"]) >= 0.01 * c["tissue_px"]]
    return {"expected": expected, "tiles_with_strong_staining": len(strong), "seen": bool(strong)}


# ---- slide I/O ----------------------------------------------------------------------------------------
def calibrate_slide(slide, grid_x, grid_y, grid_size_um: float, params: IhcParams, thumb=None):
    """Per-slide constants, estimated once: glass colour (thumbnail), stain vectors and the nucleus threshold
    (both from up to ``vector_sample_tiles`` tiles spread evenly over the grid).

    Returns ``(deconvolver, nucleus_od_min, method)`` where ``method`` records what was used, for ihc.json.
    """
    method: dict = {"stain_vectors": params.stain_vectors, "background": params.background}
    background = np.full(3, 255.0)
    if params.background == "estimated" and thumb is not None:
        background = stain.estimate_background(thumb)
    matrix = stain.HDAB_REFERENCE
    nucleus_od_min = params.nucleus_od_min
    needs_sample = params.stain_vectors == "estimated" or nucleus_od_min == "auto"
    sample = None
    if needs_sample and len(grid_x):
        tile_px = int(round(grid_size_um / params.quantify_mpp))
        picks = np.unique(np.linspace(0, len(grid_x) - 1, num=min(params.vector_sample_tiles, len(grid_x)))
                          .round().astype(int))
        sample = [slide.read_tile(int(grid_x[i]), int(grid_y[i]), tile_px, params.quantify_mpp) for i in picks]
    if params.stain_vectors == "estimated" and sample:
        matrix, est = stain.estimate_hdab_vectors(np.concatenate([t.reshape(-1, 3) for t in sample])[None],
                                                  background)
        method["estimate"] = est
    deconvolver = Deconvolver(matrix, background)
    if nucleus_od_min == "auto":
        if sample:
            h = np.concatenate([deconvolver(t)[0] for t in sample], axis=0)
            dab = np.concatenate([deconvolver(t)[1] for t in sample], axis=0)
            nucleus_od_min = estimate_nucleus_threshold(h, dab, params.quantify_mpp, params.nucleus_sigma_um,
                                                        params.dab_od_thresholds[0] / 2, params.nucleus_od_range)
        else:
            nucleus_od_min = params.nucleus_od_range[0]
    method["background_rgb"] = [round(float(v), 1) for v in background]
    method["h_vector"] = [round(float(v), 4) for v in matrix[0]]
    method["dab_vector"] = [round(float(v), 4) for v in matrix[1]]
    method["nucleus_od_min"] = round(float(nucleus_od_min), 4)
    return deconvolver, float(nucleus_od_min), method


def quantify_ihc(slide, grid_x: np.ndarray, grid_y: np.ndarray, grid_size_um: float, entry: dict,
                 params: IhcParams, threads: int = 1, thumb=None) -> tuple[list[dict], dict]:
    """Quantify every grid tile of an open slide; returns (per-tile rows, slide summary).

    Each grid tile (top-left ``grid_x[i], grid_y[i]`` level-0 px, side ``grid_size_um``) is read once at
    ``params.quantify_mpp`` (same physical area, more pixels). Reads are serialised by a lock (the reader's
    tile cache is not thread-safe); deconvolution and nucleus detection run on ``threads`` workers.
    """
    from pipeline.ihc.markers import is_nuclear

    nuclear = is_nuclear(entry)
    tile_px = int(round(grid_size_um / params.quantify_mpp))
    deconvolver, nucleus_od_min, method = calibrate_slide(slide, grid_x, grid_y, grid_size_um, params, thumb)
    lock = threading.Lock()

    def work(i: int) -> dict:
        with lock:
            rgb = slide.read_tile(int(grid_x[i]), int(grid_y[i]), tile_px, params.quantify_mpp)
        return quantify_tile(rgb, params.quantify_mpp, params, nuclear, deconvolver, nucleus_od_min)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        counts = list(pool.map(work, range(len(grid_x))))
    elapsed = time.perf_counter() - start
    rows = []
    for i, c in enumerate(counts):
        rows.append({"x": int(grid_x[i]), "y": int(grid_y[i]), **c, **derived_metrics(c)})
    totals = {k: sum(c[k] for c in counts) for k in COUNT_COLUMNS + SUM_COLUMNS}
    metrics = derived_metrics(totals)
    metrics["nuclei"] = totals["nuclei"]
    tissue_mm2 = totals["tissue_px"] * (params.quantify_mpp / 1000.0) ** 2
    reading = entry["reading"]
    tile_vals = np.array([np.nan if r[reading["metric"]] is None else r[reading["metric"]] for r in rows], float)
    dist = distribution(tile_vals, float(reading["positive_at"]), params.diffuse_tiles_pct)
    summary = {
        "tiles": {"quantified": len(rows), "tile_px": tile_px, "tile_um": round(grid_size_um, 3)},
        "tissue_mm2": round(tissue_mm2, 4),
        "counts": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in totals.items()},
        "metrics": metrics,
        "distribution": dist,
        "internal_control": internal_control(counts, entry, params),
        "result": marker_result(metrics, entry, params, tissue_mm2, dist),
        "method": method,
    }
    log.info("quantified %d tiles of %d px at %g um/px in %.1f s (%.1f tiles/s, %d threads)", len(rows), tile_px,
             params.quantify_mpp, elapsed, len(rows) / elapsed if elapsed > 0 else math.inf, threads)
    return rows, summary


TILE_COLUMNS = ("x", "y", *COUNT_COLUMNS, *SUM_COLUMNS, "tissue_pct", "area_positive_pct", "pct_1plus",
                "pct_2plus", "pct_3plus", "h_score", "dab_mean_od", "h_mean_od", "nuclei_positive",
                "nuclei_positive_pct", "nuclear_h_score")


def write_tiles(path, rows: list[dict], meta: dict) -> None:
    """Per-tile Parquet: int64 x, y (level-0 top-left), int64 counts, float64 metrics (null = undefined)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for name in TILE_COLUMNS:
        values = [r[name] for r in rows]
        if name in ("x", "y", *COUNT_COLUMNS, "nuclei_positive"):
            columns[name] = pa.array(values, pa.int64())
        else:
            columns[name] = pa.array(values, pa.float64())
    table = pa.table(columns).replace_schema_metadata({b"slide_triage": json.dumps(meta, sort_keys=True).encode()})
    with atomic.atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_tiles(path):
    """(pyarrow Table, metadata dict) of an ihc.parquet."""
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table, json.loads((table.schema.metadata or {}).get(b"slide_triage", b"{}"))


# ---- contact sheet -------------------------------------------------------------------------------------
CLASS_COLOURS = np.array([[235, 235, 235], [255, 220, 60], [255, 140, 0], [200, 0, 0]], np.uint8)


def contact_sheet(rgb: np.ndarray, mpp: float, params: IhcParams, nuclear: bool = True,
                  deconvolver: Deconvolver | None = None, title: str = "",
                  nucleus_od_min: float | None = None, nuclear_marker: bool = True) -> tuple[np.ndarray, dict]:
    """RGB | haematoxylin | DAB | intensity classes | nuclei (blue negative, red positive), one row.

    Nuclei are always drawn; for a cytoplasmic/membranous marker (``nuclear_marker=False``) they are found on
    haematoxylin alone, and their counts are for the picture only (such markers are read by area).
    """
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    deconvolver = deconvolver or Deconvolver()
    counts, maps = quantify_tile(rgb, mpp, params, nuclear, deconvolver, nucleus_od_min, return_images=True,
                                 nuclei_include_dab=nuclear_marker)
    h, dab, tissue = maps["h"], maps["dab"], maps["tissue"]
    zero = np.zeros_like(h)
    h_img = stain.compose(h, zero, deconvolver.matrix)
    dab_img = stain.compose(zero, dab, deconvolver.matrix)
    cls = intensity_classes(dab, params.dab_od_thresholds)
    cls_img = CLASS_COLOURS[cls]
    cls_img[~tissue] = 255
    nuc_img = rgb.copy()
    if maps["labels"] is not None and maps["labels"].max() > 0:
        labels = maps["labels"]
        positive = np.zeros(labels.max() + 1, bool)
        ids = np.unique(labels[labels > 0])
        positive[ids] = nucleus_classes(*nucleus_means(labels, h, dab), params.dab_od_thresholds,
                                        params.nucleus_dab_fraction_min, params.nucleus_dab_od_min) > 0
        edge = find_boundaries(labels, mode="inner")
        nuc_img[edge & positive[labels]] = (230, 0, 0)
        nuc_img[edge & ~positive[labels]] = (0, 90, 255)
    panels = [rgb, h_img, dab_img, cls_img, nuc_img]
    names = ["RGB", "haematoxylin", "DAB", "classes 0/1+/2+/3+", "nuclei (red = positive)"]
    m = derived_metrics(counts)
    hgt, wid = rgb.shape[:2]
    band = 34
    sheet = Image.new("RGB", (wid * len(panels) + 4 * (len(panels) - 1), hgt + band), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, name) in enumerate(zip(panels, names, strict=True)):
        sheet.paste(Image.fromarray(np.ascontiguousarray(panel)), (i * (wid + 4), band))
        draw.text((i * (wid + 4) + 4, 18), name, fill="black")
    summary = (f"{title} {mpp:g} um/px | DAB+ area {m['area_positive_pct']}% | H-score {m['h_score']} | "
               f"nuclei {counts['nuclei']}, positive {m['nuclei_positive_pct']}%")
    draw.text((4, 3), summary.strip(), fill="black")
    return np.asarray(sheet), {**counts, **m}


# ---- CLI -------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--slide", help="IHC slide file")
    src.add_argument("--image", help="a plain RGB image (PNG/JPEG) instead of a slide: contact sheet only")
    parser.add_argument("--slide-id", default=None, help="slide id (default: the tile grid's, else file stem)")
    parser.add_argument("--mpp", type=float, default=None,
                        help="level-0 um/px override for --slide (sample sheet `mpp`); required with --image: "
                             "the image's um/px (never assumed)")
    parser.add_argument("--marker", default=None,
                        help="marker name from the knowledge base (the slide's stain); --image defaults to Ki67")
    parser.add_argument("--tiles", help="tiles.parquet from tile-slide")
    parser.add_argument("--qc", help="qc.json from qc-slide")
    parser.add_argument("--config", default="configs/config.yaml", help="config file")
    parser.add_argument("--markers", default=None, help="marker knowledge base (default: the config's `markers`)")
    parser.add_argument("--out-tiles", help="ihc.parquet to write (per-tile metrics)")
    parser.add_argument("--out", help="ihc.json to write (slide totals and marker result)")
    parser.add_argument("--threads", type=int, default=1, help="worker threads")
    parser.add_argument("--contact-sheet", help="PNG contact sheet: RGB | H | DAB | classes | nuclei")


def run(args) -> None:
    from PIL import Image

    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.ihc.markers import is_nuclear, load_markers, marker_entry

    config = load_config(args.config)
    params = IhcParams.from_config(config.get("ihc"))
    kb = load_markers(args.markers or config["markers"])
    if args.marker is None and args.image:
        args.marker = "Ki67"
    if args.marker is None:
        raise ConfigError("--slide needs --marker (the slide's stain, a marker of the knowledge base)")
    entry = marker_entry(kb, args.marker)
    if args.image:
        mpp = image_mpp(args.image, args.mpp, params.quantify_mpp)
        rgb = np.asarray(Image.open(args.image).convert("RGB"))
        if abs(mpp - params.quantify_mpp) / params.quantify_mpp > 0.05:
            scale = mpp / params.quantify_mpp
            rgb = np.asarray(Image.fromarray(rgb).resize((round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                                                         Image.Resampling.LANCZOS))
        deconvolver = Deconvolver(stain.HDAB_REFERENCE, tuple(stain.estimate_background(rgb))
                                  if params.background == "estimated" else (255.0, 255.0, 255.0))
        sheet, m = contact_sheet(rgb, params.quantify_mpp, params, True, deconvolver,
                                 title=f"{Path(args.image).name} ({args.marker})", nuclear_marker=is_nuclear(entry))
        out = args.contact_sheet or "contact_sheet.png"
        atomic.write_bytes(out, _png_bytes(sheet))
        log.info("%s: DAB+ area %s %%, H-score %s, %d nuclei (%s %% positive); contact sheet %s", args.image,
                 m["area_positive_pct"], m["h_score"], m["nuclei"], m["nuclei_positive_pct"], out)
        return
    if not (args.tiles and args.out and args.out_tiles):
        raise ConfigError("--slide needs --tiles (tiles.parquet), --out-tiles and --out")
    run_slide(args, config, params, kb, entry)


def image_mpp(path, mpp: float | None, quantify_mpp: float) -> float:
    """The um/px of a plain image given with ``--mpp``: required, plausible, and not coarser than
    ``quantify_mpp`` (an image is never enlarged); raises :class:`SlideError` naming the file and the fix."""
    from pipeline.errors import SlideError
    from pipeline.slides.reader import check_mpp, resolution_problem

    if mpp is None:
        raise SlideError(f"{path}: --image needs --mpp, the image's um/px (a plain image carries none; it is "
                         "never assumed)")
    check_mpp(mpp, path, "--mpp")
    problem = resolution_problem(mpp, quantify_mpp, "IHC quantification (ihc.quantify_mpp)")
    if problem:
        raise SlideError(f"{path}: {problem}")
    return mpp


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _read_json(path) -> dict | None:
    import json

    if not path:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def run_slide(args, config: dict, params: IhcParams, kb: dict, entry: dict) -> None:
    from pipeline.errors import SlideError
    from pipeline.slides.reader import check_resolution, open_slide
    from pipeline.slides.tiling import read_tile_grid

    grid = read_tile_grid(args.tiles)
    slide_id = args.slide_id or grid.meta.get("slide_id") or Path(args.slide).stem
    qc = _read_json(args.qc) or {"status": "unknown", "reasons": []}
    target_mpp = float(grid.meta.get("target_mpp", config["tiling"]["target_mpp"]))
    tile_px = int(grid.meta.get("tile_px", config["tiling"]["tile_px"]))
    grid_size_um = tile_px * target_mpp
    record = {
        "version": IHC_VERSION, "slide_id": slide_id, "marker": args.marker,
        "compartment": entry["compartment"], "lineage": entry["lineage"], "supports": entry["supports"],
        "qc": {"status": qc.get("status"), "reasons": qc.get("reasons", [])},
        "params": _params_record(params), "warnings": [], "disclaimer": DISCLAIMER,
    }
    rows: list[dict] = []
    meta = {"slide_id": slide_id, "marker": args.marker, "quantify_mpp": params.quantify_mpp,
            "grid_target_mpp": target_mpp, "grid_tile_px": tile_px}
    failure = None
    if qc.get("status") == "failed":
        failure = "QC failed: " + "; ".join(qc.get("reasons", []))
    elif grid.meta.get("status") not in (None, "ok"):
        failure = f"tile grid {grid.meta.get('status')}: {grid.meta.get('reason', '')}".strip()
    if failure is None:
        try:
            with open_slide(args.slide, mpp=args.mpp) as slide:
                check_resolution(slide, params.quantify_mpp, "IHC quantification (ihc.quantify_mpp)")
                read_px = int(round(grid_size_um / params.quantify_mpp))  # as quantify_ihc reads each tile
                record["effective_mpp"] = round(slide.tile_geometry(read_px, params.quantify_mpp)[2], 6)
                thumb, _ = slide.read_downsampled(max(params.thumb_mpp, slide.mpp))
                check = stain_check(thumb, args.marker, he_dab_max=params.stain_check_he_dab_max,
                                    ihc_dab_min=params.stain_check_ihc_dab_min,
                                    ihc_eosin_min=params.stain_check_ihc_eosin_min)
                record["stain_check"] = check
                rows, summary = quantify_ihc(slide, grid.x, grid.y, grid_size_um, entry, params, args.threads, thumb)
                record.update(summary)
                if args.contact_sheet and rows:
                    _slide_contact_sheet(slide, rows, grid_size_um, params, entry, summary, args.contact_sheet)
        except SlideError as exc:
            from pipeline.redact import redact

            failure = redact(str(exc), args.slide)
    if failure is not None:
        log.error("%s: not quantified: %s", slide_id, failure)
        record.update(status="failed", reason=failure, result={"call": "not_evaluable", "reason": failure,
                                                                "metric": entry["reading"]["metric"], "value": None})
    else:
        record["status"], record["reason"] = "ok", ""
        check = record["stain_check"]
        if check["probable_mislabel"]:
            record["status"] = "warn"
            record["warnings"].append(f"probable mislabel: {check['reason']}")
            record["result"] = {**record["result"], "call": "not_evaluable", "measured_call": record["result"]["call"],
                                "reason": f"not scored: {check['reason']}"}
            log.warning("%s: %s", slide_id, check["reason"])
        if qc.get("status") == "warn":
            record["warnings"].append("QC warnings: " + "; ".join(qc.get("reasons", [])))
        ic = record.get("internal_control")
        if ic and not ic["seen"] and record["result"]["call"] == "negative":
            record["warnings"].append(f"negative without visible internal control ({ic['expected']}): "
                                      "a technical failure cannot be excluded")
    meta["status"] = record["status"]
    write_tiles(args.out_tiles, rows, meta)
    atomic.write_json(args.out, record)
    res = record["result"]
    log.info("%s %s: %s (%s = %s)", slide_id, args.marker, res["call"], res.get("metric"), res.get("value"))


def _params_record(params: IhcParams) -> dict:
    out = {}
    for f in fields(params):
        v = getattr(params, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _slide_contact_sheet(slide, rows, grid_size_um, params, entry, summary, path) -> None:
    """Contact sheet of the slide's most and median positive tiles (by the marker's metric)."""
    from pipeline.ihc.markers import is_nuclear

    metric = entry["reading"]["metric"]
    vals = np.array([-1.0 if r[metric] is None else r[metric] for r in rows])
    order = np.argsort(vals)
    picks = [int(order[-1]), int(order[len(order) // 2])]
    tile_px = int(round(grid_size_um / params.quantify_mpp))
    deconvolver = Deconvolver(_matrix_from(summary["method"]), tuple(summary["method"]["background_rgb"]))
    sheets = []
    for i in picks:
        rgb = slide.read_tile(rows[i]["x"], rows[i]["y"], tile_px, params.quantify_mpp)
        sheet, _ = contact_sheet(rgb, params.quantify_mpp, params, True, deconvolver,
                                 title=f"tile x={rows[i]['x']} y={rows[i]['y']}",
                                 nucleus_od_min=summary["method"]["nucleus_od_min"], nuclear_marker=is_nuclear(entry))
        sheets.append(sheet)
    atomic.write_bytes(path, _png_bytes(np.concatenate(sheets, axis=0)))


def _matrix_from(method: dict) -> np.ndarray:
    return stain.stain_matrix(method["h_vector"], method["dab_vector"])
