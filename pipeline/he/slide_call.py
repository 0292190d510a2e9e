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
# The tile classifier's classes, in the order of its outputs (models, training, summaries and maps use these).
CLASSES = (*TUMOUR_CLASSES, NON_TUMOUR)
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
    pc, ps, pn, ood_arr = _checked_arrays(probs, ood, tile_area_mm2)
    ev = _tile_evidence(pc, ps, ood_arr, tile_area_mm2, p)
    record = _evidence_record(ev, pc, ps, pn, ood_arr if ood is not None else None, qc_status, tissue_area_mm2,
                              tile_area_mm2, p)
    # 1. Slide-level reasons to stop before reading the tiles.
    if qc_status == "failed":
        return _refer(record, "QC failed: the slide cannot be assessed automatically")
    n, min_mm2 = ev["n"], p["min_tissue_mm2"]
    if n == 0 or min(tissue_area_mm2, ev["analysed_mm2"]) < min_mm2:
        return _refer(record, f"too little tissue: {min(tissue_area_mm2, ev['analysed_mm2']):.2f} mm2 analysable "
                              f"({n} tiles), need {min_mm2:g} mm2")
    qc_note = "; QC warnings: review the slide quality" if qc_status == "warn" else ""
    # 2. Tumour present?  3. Which lineage?
    n_tumour, tumour_mm2, fraction = ev["n_tumour"], ev["tumour_mm2"], ev["fraction"]
    if n_tumour == 0 or (tumour_mm2 < p["no_tumour_max_mm2"] and fraction < p["no_tumour_max_fraction"]):
        return _no_tumour_call(record, ev, probs[NON_TUMOUR], p, qc_note)  # mean in the input dtype, as before
    if tumour_mm2 < p["min_tumour_mm2"] or fraction < p["min_tumour_fraction"]:
        return _refer(record, f"borderline tumour burden: {n_tumour} tumour tiles ({tumour_mm2:.2f} mm2, "
                              f"{100 * fraction:.1f}% of tissue) -- a call needs {p['min_tumour_mm2']:g} mm2 and "
                              f"{100 * p['min_tumour_fraction']:g}%")
    return _lineage_call(record, ev, p, qc_note)


def _checked_arrays(probs: dict[str, np.ndarray], ood: np.ndarray | None, tile_area_mm2: float):
    """(carcinoma, sarcoma, non-tumour probabilities as float64, OOD scores with NaN as +inf) after checks."""
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
    return pc, ps, np.asarray(probs[NON_TUMOUR], np.float64), ood_arr


def _tile_evidence(pc: np.ndarray, ps: np.ndarray, ood_arr: np.ndarray, tile_area_mm2: float, p: dict) -> dict:
    """Tumour tiles, their lineage split, areas, the top-k lineage score and the OOD shares."""
    n = len(pc)
    tumour = pc + ps >= p["tumour_prob_min"]
    unlike = ood_arr > 1.0
    n_tumour = int(tumour.sum())
    c_topk, s_topk = _topk_mean(pc[tumour], p["top_k"]), _topk_mean(ps[tumour], p["top_k"])
    return {
        "n": n, "tumour": tumour, "carc_tiles": tumour & (pc >= ps), "sarc_tiles": tumour & (pc < ps),
        "n_tumour": n_tumour, "analysed_mm2": n * tile_area_mm2, "tumour_mm2": n_tumour * tile_area_mm2,
        "fraction": n_tumour / n if n else 0.0, "c_topk": c_topk, "s_topk": s_topk,
        "lineage": c_topk / (c_topk + s_topk) if n_tumour else None,
        "ood_fraction": float(unlike.mean()) if n else 0.0,
        "ood_tumour_fraction": float(unlike[tumour].mean()) if n_tumour else 0.0,
    }


def _evidence_record(ev: dict, pc, ps, pn, ood_arr, qc_status: str, tissue_area_mm2: float,
                     tile_area_mm2: float, p: dict) -> dict:
    """The JSON-ready record of the evidence, with the call still ``refer`` and no reason."""
    n, lineage = ev["n"], ev["lineage"]

    def burden(mask: np.ndarray) -> dict:
        k = int(mask.sum())
        return {"tiles": k, "fraction": round(k / n, 4) if n else 0.0, "area_mm2": round(k * tile_area_mm2, 4)}

    return {
        "call": "refer", "confidence": 1.0, "reason": "",
        "tumour_burden": round(ev["fraction"], 4), "tumour_area_mm2": round(ev["tumour_mm2"], 4),
        "burden": {"carcinoma": burden(ev["carc_tiles"]), "sarcoma": burden(ev["sarc_tiles"]),
                   "non_tumour": burden(~ev["tumour"])},
        "lineage_score": None if lineage is None else round(lineage, 4),
        "carcinoma_topk_mean": round(ev["c_topk"], 4), "sarcoma_topk_mean": round(ev["s_topk"], 4),
        "n_tiles": n, "n_tumour_tiles": ev["n_tumour"], "analysed_area_mm2": round(ev["analysed_mm2"], 4),
        "tissue_area_mm2": round(float(tissue_area_mm2), 4), "qc_status": qc_status,
        "ood_fraction": round(ev["ood_fraction"], 4), "ood_tumour_fraction": round(ev["ood_tumour_fraction"], 4),
        "leading_call": None, "leading_confidence": None, "would_help": [],
        "top_tiles": {
            "carcinoma": _top_indices(pc, p["top_tiles"]), "sarcoma": _top_indices(ps, p["top_tiles"]),
            "non_tumour": _top_indices(pn, p["top_tiles"]),
            "ood": _top_indices(ood_arr, p["top_tiles"]) if ood_arr is not None else [],
        },
    }


def _refer(record: dict, reason: str, leading: str | None = None, leading_conf: float | None = None) -> dict:
    """``record`` as a refer: confidence 1 minus the leading alternative's (1.0 when there is none)."""
    conf = 1.0 if leading_conf is None else 1.0 - leading_conf
    record.update(call="refer", reason=reason, confidence=round(float(np.clip(conf, 0, 1)), 4),
                  leading_call=leading,
                  leading_confidence=None if leading_conf is None else round(float(leading_conf), 4))
    return record


def _no_tumour_call(record: dict, ev: dict, pn, p: dict, qc_note: str) -> dict:
    """no_tumour when the model is sure and the tissue is like its training data, else refer with help."""
    conf = float(np.mean(pn)) * (1.0 - ev["ood_fraction"])
    what = (f"no tumour: {ev['n_tumour']} of {ev['n']} tiles reach tumour probability {p['tumour_prob_min']:g} "
            f"({ev['tumour_mm2']:.2f} mm2, {100 * ev['fraction']:.1f}%)")
    doubt = no_tumour_doubt(conf, ev["ood_fraction"], p)
    if doubt:
        record["would_help"] = [NO_TUMOUR_HELP]
        return _refer(record, f"{doubt}: the model's {what} cannot rule tumour out; {NO_TUMOUR_HELP}", "no_tumour",
                      conf)
    record.update(call="no_tumour", confidence=round(conf, 4), reason=what + qc_note)
    return record


def _lineage_call(record: dict, ev: dict, p: dict, qc_note: str) -> dict:
    """carcinoma or sarcoma when the tumour tiles agree and are like the training data, else refer."""
    lineage, n_tumour = ev["lineage"], ev["n_tumour"]
    carc_tiles, sarc_tiles = ev["carc_tiles"], ev["sarc_tiles"]
    ood_fraction, ood_tumour_fraction = ev["ood_fraction"], ev["ood_tumour_fraction"]
    leading = "carcinoma" if lineage >= 0.5 else "sarcoma"
    lead_tiles = carc_tiles if leading == "carcinoma" else sarc_tiles
    agree = lead_tiles.sum() / n_tumour
    strength = lineage if leading == "carcinoma" else 1.0 - lineage
    conf = float(min(agree, strength)) * (1.0 - ood_tumour_fraction)
    shares = (f"carcinoma-like {100 * carc_tiles.sum() / n_tumour:.0f}% / sarcoma-like "
              f"{100 * sarc_tiles.sum() / n_tumour:.0f}% of {n_tumour} tumour tiles")
    if max(ood_fraction, ood_tumour_fraction) > p["ood_max_fraction"]:
        return _refer(record, f"tissue unlike the training data in {100 * ood_fraction:.0f}% of tiles "
                              f"({100 * ood_tumour_fraction:.0f}% of tumour tiles; limit "
                              f"{100 * p['ood_max_fraction']:.0f}%): the model's {leading} reading is not reliable",
                      leading, conf)
    if 1.0 - agree > p["mixed_max_fraction"] or strength < p["lineage_min"]:
        return _refer(record, f"mixed carcinoma/sarcoma signal: {shares}, lineage score {lineage:.2f} "
                              f"(a call needs >= {p['lineage_min']:g} one way and <= "
                              f"{100 * p['mixed_max_fraction']:.0f}% dissent)", leading, conf)
    if conf < p["min_confidence"]:
        return _refer(record, f"low confidence ({conf:.2f}) in {leading}: {shares}", leading, conf)
    record.update(call=leading, confidence=round(conf, 4),
                  reason=(f"{leading}: tumour in {100 * ev['fraction']:.0f}% of tissue ({ev['tumour_mm2']:.2f} mm2); "
                          f"{shares}; lineage score {lineage:.2f}{qc_note}"))
    return record
