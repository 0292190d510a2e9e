"""Slide call from tile probabilities: tumour burden, carcinoma-vs-sarcoma score and a call with its reason.

Pure numpy (no torch): :func:`call_slide` takes the calibrated tile probabilities of scores.parquet, the
tiles' OOD scores, the QC verdict and areas, and the config's ``slide_call`` thresholds. Calls:

* ``refer`` -- QC failure, too little tissue, tissue unlike the training data, a borderline amount of
  tumour, mixed carcinoma/sarcoma signal or low confidence. Referral is the safe answer, never a guess.
* ``no_tumour`` -- (almost) no tile reaches the tumour threshold, the model is sure (confidence at least
  ``min_confidence``) and at most ``no_tumour_ood_max_fraction`` of the tiles are unlike the training data:
  tumour the model has never seen could hide in those tiles, so a no-tumour call tolerates no more of them
  than it tolerates tumour tiles. Otherwise the call is refer, saying so and what would help
  (:data:`NO_TUMOUR_HELP`); it is never silently ranked last.
* ``carcinoma`` / ``sarcoma`` -- enough tumour, and its tiles agree on the lineage.

Every call carries a one-sentence ``reason`` and a ``confidence`` in [0, 1]: for a carcinoma, sarcoma or
no_tumour call, how strongly the tiles support it; for ``refer``, how sure the rule is that a person must
look (1.0 for QC failure / too little tissue, else 1 minus the confidence of the leading alternative).
Decision support, not a diagnosis.
"""

from __future__ import annotations

import numpy as np

TUMOUR_CLASSES = ("carcinoma", "sarcoma")
NON_TUMOUR = "non_tumour"
CALLS = ("carcinoma", "sarcoma", "no_tumour", "refer")
DEFAULT_PARAMS = {
    "tumour_prob_min": 0.5,
    "min_tissue_mm2": 0.25,
    "min_tumour_mm2": 0.2,
    "min_tumour_fraction": 0.05,
    "no_tumour_max_mm2": 0.1,
    "no_tumour_max_fraction": 0.02,
    "top_k": 16,
    "lineage_min": 0.75,
    "mixed_max_fraction": 0.25,
    "min_confidence": 0.5,
    "ood_max_fraction": 0.3,
    "no_tumour_ood_max_fraction": 0.02,
    "top_tiles": 8,
}
# What would help when the model cannot rule tumour out, or cannot read the tissue.
NO_TUMOUR_HELP = "review the slide; IHC (pan-keratin, desmin) would help"


def _top_indices(values: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` largest values, largest first (ties: lower index first)."""
    if len(values) == 0 or n <= 0:
        return []
    order = np.lexsort((np.arange(len(values)), -values))
    return [int(i) for i in order[:n]]


def _topk_mean(values: np.ndarray, k: int) -> float:
    if len(values) == 0:
        return 0.0
    k = min(k, len(values))
    return float(np.mean(np.partition(values, len(values) - k)[-k:]))


def no_tumour_doubt(confidence: float, ood_fraction: float, params: dict) -> str | None:
    """Why a no-tumour reading must be referred (low confidence, tiles unlike the training data), or None.

    ``ood_fraction``: share of tiles with OOD score > 1. A no-tumour call tolerates at most
    ``no_tumour_ood_max_fraction`` of them (tumour unlike anything the model saw could be there), far fewer
    than a tumour call's ``ood_max_fraction``.
    """
    limit = params["no_tumour_ood_max_fraction"]
    if ood_fraction > limit:
        return (f"tissue unlike the training data in {100 * ood_fraction:.1f}% of tiles (a no-tumour call "
                f"tolerates {100 * limit:g}%)")
    if confidence < params["min_confidence"]:
        return f"low confidence ({confidence:.2f} < {params['min_confidence']:g})"
    return None


def call_slide(probs: dict[str, np.ndarray], ood: np.ndarray | None, qc_status: str, tissue_area_mm2: float,
               tile_area_mm2: float, params: dict | None = None) -> dict:
    """The slide call with its evidence.

    ``probs``: calibrated probabilities per class (``carcinoma``, ``sarcoma``, ``non_tumour``), one value per
    tile. ``ood``: per-tile OOD score (> 1 = unlike the training data) or None. ``qc_status``: ok | warn |
    failed. ``tissue_area_mm2``: tissue found by QC. ``tile_area_mm2``: physical area of one tile.
    ``params``: the config's ``slide_call`` section (missing keys take :data:`DEFAULT_PARAMS`).

    Returns a JSON-ready dict: call, confidence, reason, tumour_burden (fraction of analysed tiles),
    tumour_area_mm2, per-class burden, lineage score (carcinoma share of the top-k tumour evidence),
    OOD fraction, counts, top tile indices per class, the leading alternative when the call is refer, and
    ``would_help`` (what a reviewer can do when a no-tumour reading is referred; empty otherwise).
    """
    p = {**DEFAULT_PARAMS, **(params or {})}
    missing = [c for c in (*TUMOUR_CLASSES, NON_TUMOUR) if c not in probs]
    if missing:
        raise ValueError(f"probabilities for {', '.join(missing)} are missing (got {', '.join(probs)})")
    pc, ps = (np.asarray(probs[c], np.float64) for c in TUMOUR_CLASSES)
    n = len(pc)
    if len(ps) != n or len(probs[NON_TUMOUR]) != n or (ood is not None and len(ood) != n):
        raise ValueError("every probability array and the OOD array need one value per tile")
    if tile_area_mm2 <= 0:
        raise ValueError(f"tile_area_mm2 must be > 0, got {tile_area_mm2}")
    ood_arr = np.zeros(n) if ood is None else np.nan_to_num(np.asarray(ood, np.float64), nan=np.inf)

    p_tumour = pc + ps
    tumour = p_tumour >= p["tumour_prob_min"]
    carc_tiles, sarc_tiles = tumour & (pc >= ps), tumour & (pc < ps)
    unlike = ood_arr > 1.0
    n_tumour = int(tumour.sum())
    analysed_mm2 = n * tile_area_mm2
    tumour_mm2 = n_tumour * tile_area_mm2
    fraction = n_tumour / n if n else 0.0
    c_topk, s_topk = _topk_mean(pc[tumour], p["top_k"]), _topk_mean(ps[tumour], p["top_k"])
    lineage = c_topk / (c_topk + s_topk) if n_tumour else None
    ood_fraction = float(unlike.mean()) if n else 0.0
    ood_tumour_fraction = float(unlike[tumour].mean()) if n_tumour else 0.0

    def burden(mask: np.ndarray) -> dict:
        k = int(mask.sum())
        return {"tiles": k, "fraction": round(k / n, 4) if n else 0.0, "area_mm2": round(k * tile_area_mm2, 4)}

    record = {
        "call": "refer", "confidence": 1.0, "reason": "",
        "tumour_burden": round(fraction, 4), "tumour_area_mm2": round(tumour_mm2, 4),
        "burden": {"carcinoma": burden(carc_tiles), "sarcoma": burden(sarc_tiles), "non_tumour": burden(~tumour)},
        "lineage_score": None if lineage is None else round(lineage, 4),
        "carcinoma_topk_mean": round(c_topk, 4), "sarcoma_topk_mean": round(s_topk, 4),
        "n_tiles": n, "n_tumour_tiles": n_tumour, "analysed_area_mm2": round(analysed_mm2, 4),
        "tissue_area_mm2": round(float(tissue_area_mm2), 4), "qc_status": qc_status,
        "ood_fraction": round(ood_fraction, 4), "ood_tumour_fraction": round(ood_tumour_fraction, 4),
        "leading_call": None, "leading_confidence": None, "would_help": [],
        "top_tiles": {
            "carcinoma": _top_indices(pc, p["top_tiles"]), "sarcoma": _top_indices(ps, p["top_tiles"]),
            "non_tumour": _top_indices(np.asarray(probs[NON_TUMOUR], np.float64), p["top_tiles"]),
            "ood": _top_indices(ood_arr, p["top_tiles"]) if ood is not None else [],
        },
    }

    def refer(reason: str, leading: str | None = None, leading_conf: float | None = None) -> dict:
        conf = 1.0 if leading_conf is None else 1.0 - leading_conf
        record.update(call="refer", reason=reason, confidence=round(float(np.clip(conf, 0, 1)), 4),
                      leading_call=leading,
                      leading_confidence=None if leading_conf is None else round(float(leading_conf), 4))
        return record

    # 1. Slide-level reasons to stop before reading the tiles.
    if qc_status == "failed":
        return refer("QC failed: the slide cannot be assessed automatically")
    min_mm2 = p["min_tissue_mm2"]
    if n == 0 or min(tissue_area_mm2, analysed_mm2) < min_mm2:
        return refer(f"too little tissue: {min(tissue_area_mm2, analysed_mm2):.2f} mm2 analysable "
                     f"({n} tiles), need {min_mm2:g} mm2")
    qc_note = "; QC warnings: review the slide quality" if qc_status == "warn" else ""
    in_dist = 1.0 - ood_fraction

    # 2. Tumour present?
    if n_tumour == 0 or (tumour_mm2 < p["no_tumour_max_mm2"] and fraction < p["no_tumour_max_fraction"]):
        conf = float(np.mean(probs[NON_TUMOUR])) * in_dist
        what = (f"no tumour: {n_tumour} of {n} tiles reach tumour probability {p['tumour_prob_min']:g} "
                f"({tumour_mm2:.2f} mm2, {100 * fraction:.1f}%)")
        doubt = no_tumour_doubt(conf, ood_fraction, p)
        if doubt:
            record["would_help"] = [NO_TUMOUR_HELP]
            return refer(f"{doubt}: the model's {what} cannot rule tumour out; {NO_TUMOUR_HELP}", "no_tumour", conf)
        record.update(call="no_tumour", confidence=round(conf, 4), reason=what + qc_note)
        return record
    if tumour_mm2 < p["min_tumour_mm2"] or fraction < p["min_tumour_fraction"]:
        return refer(f"borderline tumour burden: {n_tumour} tumour tiles ({tumour_mm2:.2f} mm2, "
                     f"{100 * fraction:.1f}% of tissue) -- a call needs {p['min_tumour_mm2']:g} mm2 and "
                     f"{100 * p['min_tumour_fraction']:g}%")

    # 3. Which lineage?
    leading = "carcinoma" if lineage >= 0.5 else "sarcoma"
    lead_tiles = carc_tiles if leading == "carcinoma" else sarc_tiles
    agree = lead_tiles.sum() / n_tumour
    strength = lineage if leading == "carcinoma" else 1.0 - lineage
    conf = float(min(agree, strength)) * (1.0 - ood_tumour_fraction)
    shares = (f"carcinoma-like {100 * carc_tiles.sum() / n_tumour:.0f}% / sarcoma-like "
              f"{100 * sarc_tiles.sum() / n_tumour:.0f}% of {n_tumour} tumour tiles")
    if max(ood_fraction, ood_tumour_fraction) > p["ood_max_fraction"]:
        return refer(f"tissue unlike the training data in {100 * ood_fraction:.0f}% of tiles "
                     f"({100 * ood_tumour_fraction:.0f}% of tumour tiles; limit "
                     f"{100 * p['ood_max_fraction']:.0f}%): the model's {leading} reading is not reliable",
                     leading, conf)
    if 1.0 - agree > p["mixed_max_fraction"] or strength < p["lineage_min"]:
        return refer(f"mixed carcinoma/sarcoma signal: {shares}, lineage score {lineage:.2f} "
                     f"(a call needs >= {p['lineage_min']:g} one way and <= "
                     f"{100 * p['mixed_max_fraction']:.0f}% dissent)", leading, conf)
    if conf < p["min_confidence"]:
        return refer(f"low confidence ({conf:.2f}) in {leading}: {shares}", leading, conf)
    record.update(call=leading, confidence=round(conf, 4),
                  reason=(f"{leading}: tumour in {100 * fraction:.0f}% of tissue ({tumour_mm2:.2f} mm2); "
                          f"{shares}; lineage score {lineage:.2f}{qc_note}"))
    return record
