"""A marker read from slide metrics by its knowledge-base rule (pure): :func:`marker_result` (positive /
negative / equivocal / not_evaluable), :func:`distribution` (diffuse / focal / none over tiles) and
:func:`internal_control` (is the expected control staining seen)."""

from __future__ import annotations

import numpy as np

from pipeline.ihc.params import IhcParams


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
    counted = {"nuclei_positive_pct": "nuclei", "cells_positive_pct": "cells"}.get(metric)
    if counted and metrics.get(counted, 0) < params.min_nuclei:
        what = "nuclei" if counted == "nuclei" else "tumour cells"
        return {**out, "call": "equivocal",
                "reason": f"only {metrics.get(counted, 0)} {what} counted (< {params.min_nuclei}); too few to call"}
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
