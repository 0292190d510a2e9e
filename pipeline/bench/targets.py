"""The figures across slides judged: the scaling fit and the issue's targets, met or missed.

End-to-end seconds against tissue area should be a line; peak RSS should be flat across slide sizes.

Public: :func:`linear_fit`, :func:`scaling`, :func:`check_targets`.
"""

from __future__ import annotations

import numpy as np

# The targets (issue 7): end to end on the 60000 x 40000 slide, ratios to the bounds, RSS on 100k^2.
TARGET_E2E_S, TARGET_E2E_SIZE = 30.0, (60000, 40000)
TARGET_READ_RATIO, TARGET_SCORE_RATIO = 0.8, 0.8
TARGET_RSS_BYTES, TARGET_RSS_SIZE = 2 << 30, (100000, 100000)
# Issue 14: registration + per-cell scoring (register-ihc + quantify-ihc, median) of one 60000 x 40000 IHC slide.
TARGET_IHC_S, TARGET_IHC_SIZE = 20.0, (60000, 40000)


def linear_fit(xs: list[float], ys: list[float]) -> dict | None:
    """Least-squares ``y = intercept + slope * x`` with R^2; None for fewer than two distinct x."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    pred = intercept + slope * np.asarray(xs, float)
    ss_res = float(((np.asarray(ys) - pred) ** 2).sum())
    ss_tot = float(((np.asarray(ys) - np.mean(ys)) ** 2).sum())
    return {"slope": float(slope), "intercept": float(intercept),
            "r2": round(1.0 - ss_res / ss_tot, 4) if ss_tot > 0 else 1.0}


def scaling(slides: list[dict]) -> dict:
    """End-to-end seconds against tissue area and tile count; peak RSS spread (max / min)."""
    done = [s for s in slides if "end_to_end" in s]
    area = [s["qc"]["tissue_area_mm2"] for s in done]
    seconds = [s["end_to_end"]["seconds_median"] for s in done]
    fit = linear_fit(area, seconds)
    rss = [s["end_to_end"]["peak_rss_bytes"] for s in done]
    out = {"seconds_vs_tissue_mm2": None, "peak_rss_max_over_min": round(max(rss) / min(rss), 3) if rss else None}
    if fit:
        out["seconds_vs_tissue_mm2"] = {"seconds_per_mm2": round(fit["slope"], 4),
                                        "fixed_seconds": round(fit["intercept"], 2), "r2": fit["r2"]}
    return out


def check_targets(slides: list[dict]) -> list[dict]:
    """The issue's targets against the measured figures (only those this run measured)."""
    targets = []
    for s in slides:
        size = (s["qc"].get("width_px"), s["qc"].get("height_px"))
        e2e = s.get("end_to_end")
        if e2e and size == TARGET_E2E_SIZE:
            targets.append({"target": f"end to end {size[0]}x{size[1]} <= {TARGET_E2E_S:g} s (median)",
                            "measured": e2e["seconds_median"], "met": e2e["seconds_median"] <= TARGET_E2E_S})
        ihc = s.get("ihc")
        if ihc and "seconds_median" in ihc and size == TARGET_IHC_SIZE:
            targets.append({"target": f"IHC registration + per-cell scoring {size[0]}x{size[1]} <= "
                                      f"{TARGET_IHC_S:g} s (median)",
                            "measured": ihc["seconds_median"], "met": ihc["seconds_median"] <= TARGET_IHC_S})
        if e2e and size == TARGET_RSS_SIZE:
            targets.append({"target": f"peak RSS {size[0]}x{size[1]} < 2 GiB",
                            "measured": round(e2e["peak_rss_bytes"] / 2**30, 3),
                            "met": e2e["peak_rss_bytes"] < TARGET_RSS_BYTES})
    for key, name, goal in (("reader", "reading / decode bound", TARGET_READ_RATIO),
                            ("scoring", "scoring / compute bound", TARGET_SCORE_RATIO)):
        ratios = [s[key]["ratio"] for s in slides if "ratio" in s.get(key, {})]
        if ratios:
            targets.append({"target": f"{name} >= {goal:.0%} (worst slide)", "measured": min(ratios),
                            "met": min(ratios) >= goal})
    return targets
