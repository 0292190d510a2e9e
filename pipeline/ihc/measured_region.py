"""Where an IHC slide's marker is read: in the tumour region (from its H&E slide, through the registration) or,
flagged, over the whole tissue.

:func:`measured_region` decides from the registration record (``register-ihc``), the H&E slide's tile grid and
scores: the IHC grid tiles in the tumour region (:mod:`pipeline.ihc.tumour_region`), or none with the reason the
figures are not restricted (no H&E slide in the case, registration failed or below its quality threshold, no
tumour on the H&E slide, too few tiles in the region). :func:`summarise_rows` sums the per-tile counts of a set of
tiles into metrics, distribution and the marker's reading, as the slide totals are made.
"""

from __future__ import annotations

import numpy as np

from pipeline import atomic
from pipeline.ihc.measure import COUNT_COLUMNS, SUM_COLUMNS, derived_metrics
from pipeline.ihc.params import IhcParams
from pipeline.ihc.reading import distribution, marker_result
from pipeline.ihc.tumour_region import in_region, region_fraction, tumour_tiles
from pipeline.tables import try_read_columns

DEFAULTS = {"prob_min": None, "margin_um": 100.0, "min_tiles": 3}


def per_tumour_cell_entry(entry: dict) -> dict:
    """The marker's entry as read in the tumour region: with a ``per_tumour_cell`` cut-off, % of tumour cells
    positive (``cells_positive_pct``) against it; without one, the entry unchanged."""
    reading = entry["reading"]
    per_cell = reading.get("per_tumour_cell")
    if not per_cell:
        return entry
    how = (f"{' '.join(reading['how'].split())} In the tumour region: % of tumour-like cells positive in the "
           f"marker's compartment, positive at >= {per_cell['positive_at']:g} % ({per_cell['source']}).")
    return {**entry, "reading": {**reading, "metric": "cells_positive_pct", "positive_at": per_cell["positive_at"],
                                 "how": how}}


def summarise_rows(rows: list[dict], entry: dict, params: IhcParams) -> dict:
    """Counts, metrics, distribution and the marker's reading over ``rows`` (per-tile rows of quantify-ihc)."""
    totals = {k: sum(r[k] for r in rows) for k in COUNT_COLUMNS + SUM_COLUMNS}
    metrics = derived_metrics(totals)
    metrics["nuclei"] = totals["nuclei"]
    metrics["cells"] = totals["cells"]
    metrics["cells_set_aside"] = totals["cells_set_aside"]
    tissue_mm2 = totals["tissue_px"] * (params.quantify_mpp / 1000.0) ** 2
    reading = entry["reading"]
    values = np.array([np.nan if r[reading["metric"]] is None else r[reading["metric"]] for r in rows], float)
    dist = distribution(values, float(reading["positive_at"]), params.diffuse_tiles_pct)
    return {"tiles": len(rows), "tissue_mm2": round(tissue_mm2, 4),
            "counts": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in totals.items()},
            "metrics": metrics, "distribution": dist,
            "result": marker_result(metrics, entry, params, tissue_mm2, dist)}


def _not_restricted(reason: str, registration: dict | None = None) -> dict:
    return {"restricted_to_tumour": False, "reason": f"not restricted to tumour: {reason}; whole-tissue figures",
            "registration": registration, "in_region": None}


def _registration_brief(record: dict) -> dict:
    q = record.get("quality") or {}
    return {"status": record.get("status"), "reason": record.get("reason"), "he_slide_id": record.get("he_slide_id"),
            "score": q.get("score"), "residual_median_um": q.get("residual_median_um"),
            "residual_p95_um": q.get("residual_p95_um"),
            "rotation_deg": (record.get("transform") or {}).get("rotation_deg"),
            "flip": (record.get("transform") or {}).get("flip")}


def measured_region(xs, ys, ihc_tile_level0: float, registration_path: str | None,
                    he_tiles_path: str | None, he_scores_path: str | None, settings: dict, default_prob_min: float
                    ) -> dict:
    """The region record (``restricted_to_tumour``, ``reason``, ``registration``, ``in_region``: per IHC grid tile
    at level-0 top-left ``xs``, ``ys``, or None when not restricted)."""
    s = {**DEFAULTS, **(settings or {})}
    prob_min = default_prob_min if s["prob_min"] is None else float(s["prob_min"])
    if not registration_path:
        return _not_restricted("the case has no H&E slide to take the tumour from")
    record = atomic.try_read_json(registration_path)
    if record is None:
        return _not_restricted("the registration record cannot be read")
    brief = _registration_brief(record)
    if record.get("status") != "ok":
        return _not_restricted(f"registration onto the H&E slide failed ({record.get('reason')})", brief)
    he_grid = try_read_columns(he_tiles_path)
    he_scores = try_read_columns(he_scores_path)
    if he_grid is None or he_scores is None:
        return _not_restricted("the H&E slide's tile grid or scores cannot be read", brief)
    (_, he_meta), (scores, scores_meta) = he_grid, he_scores
    if scores_meta.get("status") not in (None, "ok") or not len(scores.get("x", [])):
        return _not_restricted("the H&E slide has no tile scores", brief)
    tumour = tumour_tiles(scores["prob_carcinoma"], scores["prob_sarcoma"], prob_min)
    if not tumour.any():
        return _not_restricted(f"no H&E tile reaches tumour probability {prob_min:g}", brief)
    matrix = np.array(record["transform"]["matrix_level0_px"], np.float64)
    fraction = region_fraction(np.asarray(xs, np.float64), np.asarray(ys, np.float64), ihc_tile_level0,
                               scores["x"], scores["y"], float(he_meta["tile_size_level0"]), tumour, matrix,
                               float(he_meta["mpp"]), float(s["margin_um"]))
    inside = in_region(fraction)
    if int(inside.sum()) < int(s["min_tiles"]):
        return _not_restricted(f"only {int(inside.sum())} IHC tiles lie in the registered tumour region "
                               f"(need {int(s['min_tiles'])})", brief)
    return {"restricted_to_tumour": True,
            "reason": (f"tumour region: the {int(tumour.sum())} H&E tiles with tumour probability >= {prob_min:g}, "
                       f"registered onto this slide and widened by {float(s['margin_um']):g} um"),
            "registration": brief, "in_region": inside, "he_tumour_tiles": int(tumour.sum()),
            "margin_um": float(s["margin_um"]), "prob_min": prob_min}
