"""Per-case call: combine a case's H&E slide calls and IHC marker results into a triage category.

Categories: ``favours metastatic carcinoma`` / ``favours sarcoma`` / ``refer`` / ``no tumour``. The core,
:func:`call_case`, is a pure function of the H&E calls, the IHC results, the marker knowledge base and the
``case`` config section. Every piece of evidence is listed (slide, marker, value, cut-off, what it
supports), every conflict is named with the pitfall behind it, unusable slides are listed and never used, and
the call says which stains would help. Decision support, not a diagnosis: ambiguity gives ``refer``.

Reasoning, in order:

1. Slides that failed QC or quantification, or look mislabelled (stain check), are excluded.
2. H&E: the usable slide calls (confidence >= ``he_min_confidence``) agree on carcinoma / sarcoma /
   no tumour, disagree (conflict), or are uncertain.
3. IHC: each positive marker adds its knowledge-base ``weight`` to the lineage it ``supports``; a lineage is
   supported by IHC at ``lineage_evidence_min`` (pan-keratin or desmin alone suffice; ER alone does not). A
   negative pan-keratin argues against carcinoma.
4. Pitfall patterns and conflicts -> refer: melanocytic (S100/SOX10+, keratin-), haematolymphoid,
   myoepithelial (keratin with S100/SOX10 or SMA+p63/p40), keratin + CD34 (epithelioid sarcoma), keratin +
   myoid co-expression (synovial sarcoma, DSRCT, sarcomatoid carcinoma), H&E vs IHC disagreement, keratin-
   negative "carcinoma", H&E slides that disagree.
5. Otherwise the supported lineage (IHC, H&E, or both) gives the call; a carcinoma gets the matching
   ``site_patterns`` of the knowledge base as primary-site candidates.

Priority (worklist order, 0 first; :data:`CATEGORY_RANK`): 0 = failed, no result (a job of the case
failed, so there is no call to trust: the report lists it with the failed job's log; never made here);
1 = a tumour call (favours metastatic carcinoma or favours sarcoma), conflicts and melanocytic patterns
(possible metastatic melanoma); 2 = other refer; 3 = no tumour. A triage list puts every suspected
malignancy before the cases that still need evidence, and those before the ones with none. An H&E no-tumour
call below ``he_min_confidence`` is uncertain (refer).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline import DISCLAIMER, atomic

log = logging.getLogger(__name__)

CASE_VERSION = 1
HE_STAIN = "HE"
CARCINOMA, SARCOMA, REFER, NO_TUMOUR = ("favours metastatic carcinoma", "favours sarcoma", "refer", "no tumour")
DEFAULT_PARAMS = {"he_min_confidence": 0.5, "lineage_evidence_min": 1.0, "he_only_calls": True}
RESULT_ORDER = {"positive": 3, "equivocal": 2, "negative": 1}
PRIORITY_LABELS = {
    0: "before all: failed, no result (a job of the case failed; its log says why)",
    1: "first: a tumour call (metastatic carcinoma or sarcoma), conflicting evidence or melanocytic pattern",
    2: "next: refer (insufficient or equivocal evidence)",
    3: "last: no tumour",
}
CATEGORY_RANK = {"failed": 0, "carcinoma": 1, "sarcoma": 1, "conflict": 1, "melanocytic": 1, "insufficient": 2,
                 "no_tumour": 3}
CALL_RANK = {CARCINOMA: 1, SARCOMA: 1, REFER: 2, NO_TUMOUR: 3}  # when only the call is known (refer: 2)
# Panels suggested when nothing has been done yet, and per lineage.
LINEAGE_PANEL = ["CK_AE1AE3", "desmin"]
SARCOMA_PANEL = {"desmin": "smooth/skeletal muscle", "SMA": "smooth muscle/myofibroblastic",
                 "h_caldesmon": "smooth muscle", "myogenin": "skeletal muscle", "CD34": "vascular/fibroblastic",
                 "CD31": "vascular", "ERG": "vascular", "S100": "nerve sheath", "SOX10": "nerve sheath/melanocytic"}
SITE_PANEL = {"CK7": "CK7/CK20 pattern", "CK20": "CK7/CK20 pattern", "GATA3": "breast/urothelial",
              "ER": "breast/gynaecological", "TTF1": "lung/thyroid", "p40": "squamous",
              "p16": "HPV-associated squamous (cervix, oropharynx)", "CDX2": "colorectal",
              "PAX8": "Mullerian/renal/thyroid"}


# ---- inputs -----------------------------------------------------------------------------------------
def inputs_from_summaries(summaries: list[dict]) -> tuple[list[dict], list[dict]]:
    """Split per-slide summary.json contents into H&E calls and IHC results (the shapes call_case takes)."""
    he_calls, ihc_results = [], []
    for s in summaries:
        qc = s.get("qc") or {}
        common = {"slide_id": s.get("slide_id"), "qc_status": qc.get("status"), "qc_reasons": qc.get("reasons", []),
                  "stain_check": s.get("stain_check") or (s.get("ihc") or {}).get("stain_check")}
        if s.get("stain") == HE_STAIN:
            call = s.get("slide_call") or {}
            he_calls.append({**common, "call": call.get("call"), "confidence": call.get("confidence"),
                             "reason": call.get("reason", ""), "tumour_burden": call.get("tumour_burden"),
                             "leading_call": call.get("leading_call"),
                             "leading_confidence": call.get("leading_confidence"),
                             "status": s.get("status", "ok")})
        else:
            ihc = s.get("ihc") or {}
            result = ihc.get("result") or {}
            ihc_results.append({**common, "marker": s.get("stain"), "status": ihc.get("status", "failed"),
                                "call": result.get("call"), "metric": result.get("metric"),
                                "value": result.get("value"), "cutoff": result.get("cutoff"),
                                "qualifier": result.get("qualifier"), "reason": result.get("reason", ""),
                                "distribution": ihc.get("distribution"),
                                "internal_control": ihc.get("internal_control"),
                                "warnings": ihc.get("warnings", [])})
    return he_calls, ihc_results


def _mislabel(item: dict) -> str | None:
    check = item.get("stain_check") or {}
    return f"probable mislabel: {check.get('reason', '')}" if check.get("probable_mislabel") else None


def _unusable_he(he: dict) -> str | None:
    if he.get("qc_status") == "failed":
        return "QC failed: " + "; ".join(he.get("qc_reasons") or [])
    if he.get("status") == "failed":
        return "slide processing failed"
    if he.get("call") not in {"carcinoma", "sarcoma", "no_tumour", "refer"}:
        return f"no usable H&E slide call ({he.get('call')!r})"
    return _mislabel(he)


def _unusable_ihc(r: dict, kb: dict) -> str | None:
    if r.get("marker") not in kb["markers"]:
        return f"marker {r.get('marker')!r} is not in the knowledge base"
    if r.get("qc_status") == "failed":
        return "QC failed: " + "; ".join(r.get("qc_reasons") or [])
    if r.get("status") == "failed":
        return f"quantification failed: {r.get('reason', '')}".strip()
    mislabel = _mislabel(r)
    if mislabel:
        return mislabel
    if r.get("call") not in RESULT_ORDER:
        return f"result {r.get('call')!r}: {r.get('reason', '')}".strip()
    return None


# ---- H&E ----------------------------------------------------------------------------------------------
def he_consensus(he_calls: list[dict], min_confidence: float) -> dict:
    """Combine usable H&E slide calls: carcinoma / sarcoma / no_tumour / uncertain / conflict / none."""
    if not he_calls:
        return {"state": "none", "slides": [], "confidence": None, "reason": "no usable H&E slide"}
    confident = [h for h in he_calls if h["call"] in {"carcinoma", "sarcoma"}
                 and (h.get("confidence") or 0.0) >= min_confidence]
    lineages = {h["call"] for h in confident}
    slides = [h["slide_id"] for h in he_calls]
    if len(lineages) > 1:
        return {"state": "conflict", "slides": slides, "confidence": None,
                "reason": "H&E slides disagree: " + ", ".join(f"{h['slide_id']} {h['call']}" for h in confident)}
    if lineages:
        state = lineages.pop()
        conf = max(h["confidence"] for h in confident)
        return {"state": state, "slides": [h["slide_id"] for h in confident], "confidence": conf,
                "reason": f"H&E favours {state} (confidence {conf:.2f})"}
    if all(h["call"] == "no_tumour" and (h.get("confidence") or 0.0) >= min_confidence for h in he_calls):
        conf = min((h.get("confidence") or 0.0) for h in he_calls)
        return {"state": "no_tumour", "slides": slides, "confidence": conf, "reason": "no tumour on H&E"}
    return {"state": "uncertain", "slides": slides, "confidence": None,
            "reason": "H&E call uncertain (refer or below the confidence threshold "
                      f"{min_confidence:g}): " + ", ".join(f"{h['slide_id']} {h['call']}" for h in he_calls)}


# ---- IHC ----------------------------------------------------------------------------------------------
def combine_marker_results(results: list[dict]) -> dict[str, dict]:
    """One result per marker: the strongest call across slides (positive > equivocal > negative); slides
    that disagree are noted, since positivity in any block counts but disagreement deserves a look."""
    by_marker: dict[str, list[dict]] = {}
    for r in results:
        by_marker.setdefault(r["marker"], []).append(r)
    combined = {}
    for marker, rs in by_marker.items():
        best = max(rs, key=lambda r: (RESULT_ORDER[r["call"]], r.get("value") or 0.0))
        calls = {r["call"] for r in rs}
        combined[marker] = {**best, "slides": [r["slide_id"] for r in rs],
                            "discordant": len(calls) > 1}
    return combined


def _fmt_value(r: dict) -> str:
    if r.get("value") is None:
        return "n/a"
    unit = "" if r.get("metric") == "h_score" else " %"
    return f"{r['value']:g}{unit} ({r.get('metric')}, cut-off {r.get('cutoff'):g}{unit})"


def site_candidates(markers: dict[str, dict], kb: dict) -> list[dict]:
    """Site patterns of the knowledge base matched by the positive markers, best supported first."""
    positive = {m for m, r in markers.items() if r["call"] == "positive"}
    done = set(markers)
    out = []
    for pattern in kb["site_patterns"]:
        all_of, any_of = pattern.get("all_of", []), pattern["any_of"]
        against = sorted(positive & set(pattern.get("against", [])))
        if not all(m in positive for m in all_of) or (any_of and not positive & set(any_of)) or against:
            continue
        support = [m for m in all_of if m in positive] + sorted(positive & set(any_of))
        out.append({"site": pattern["site"], "label": pattern["label"], "supported_by": support,
                    "score": len(support), "not_done": sorted(set(any_of) - done),
                    "note": pattern.get("note", "")})
    out.sort(key=lambda c: (-c["score"], c["site"]))
    return out


# ---- the call -----------------------------------------------------------------------------------------
def call_case(he_calls: list[dict], ihc_results: list[dict], kb: dict, params: dict | None = None,
              case_id: str = "") -> dict:
    """Combine H&E calls and IHC results of one case into a triage call with evidence (pure function).

    ``he_calls``: dicts with slide_id, call (carcinoma | sarcoma | no_tumour | refer), confidence, reason,
    tumour_burden, qc_status, qc_reasons[, stain_check, status]. ``ihc_results``: dicts with slide_id, marker,
    status, call (positive | negative | equivocal | not_evaluable), metric, value, cutoff, qualifier, reason,
    qc_status[, stain_check, internal_control, distribution, warnings]. :func:`inputs_from_summaries` builds
    both from summary.json files. ``kb`` is the loaded marker knowledge base, ``params`` the ``case`` config.
    """
    p = {**DEFAULT_PARAMS, **(params or {})}
    evidence, conflicts, would_help, notes, excluded = [], [], [], [], []

    usable_he = []
    for he in he_calls:
        why = _unusable_he(he)
        if why:
            excluded.append({"slide_id": he["slide_id"], "stain": HE_STAIN, "reason": why})
        else:
            usable_he.append(he)
            conf = he.get("confidence")
            note = he.get("reason", "")
            if he["call"] == "refer" and he.get("leading_call"):
                lead_conf = he.get("leading_confidence")
                note += f"; leaning {he['leading_call']}" + (f" ({lead_conf:.2f})" if lead_conf is not None else "")
            if he.get("tumour_burden") is not None:
                note += f"; tumour burden {he['tumour_burden']:.2f}"
            evidence.append({
                "slide_id": he["slide_id"], "stain": HE_STAIN, "kind": "H&E slide call", "finding": he["call"],
                "value": conf, "metric": "confidence", "cutoff": p["he_min_confidence"],
                "supports": he["call"] if he["call"] in {"carcinoma", "sarcoma", "no_tumour"} else "none",
                "weight": None, "note": note.strip("; ")})
    he = he_consensus(usable_he, p["he_min_confidence"])

    usable_ihc = []
    for r in ihc_results:
        why = _unusable_ihc(r, kb)
        if why:
            excluded.append({"slide_id": r["slide_id"], "stain": r.get("marker"), "reason": why})
        else:
            usable_ihc.append(r)
    markers = combine_marker_results(usable_ihc)
    kbm = kb["markers"]

    carc_score = sarc_score = 0.0
    positive, negative, equivocal = set(), set(), set()
    for marker, r in sorted(markers.items()):
        entry = kbm[marker]
        supports = "none"
        if r["call"] == "positive":
            positive.add(marker)
            supports = entry["supports"]
            if supports == "carcinoma":
                carc_score += entry["weight"]
            elif supports == "sarcoma":
                sarc_score += entry["weight"]
        elif r["call"] == "negative":
            negative.add(marker)
            if entry.get("pan_keratin"):
                supports = "against carcinoma"
            elif entry["supports"] != "none":
                supports = f"against {entry['lineage']} differentiation (weak)"
        else:
            equivocal.add(marker)
        note = r.get("reason", "")
        if r.get("qualifier"):
            note = f"{r['qualifier']}; {note}"
        ic = r.get("internal_control")
        if ic and r["call"] == "negative":
            note += "; internal control " + ("seen" if ic.get("seen") else "NOT seen (technical failure possible)")
        if r.get("discordant"):
            note += "; slides disagree: " + ", ".join(r["slides"])
        evidence.append({"slide_id": ",".join(r["slides"]), "stain": marker, "kind": "IHC", "finding": r["call"],
                         "value": r.get("value"), "metric": r.get("metric"), "cutoff": r.get("cutoff"),
                         "supports": supports, "weight": entry["weight"] if r["call"] == "positive" else None,
                         "note": note.strip("; ")})

    def pos(*names):
        return [m for m in names if m in positive]

    pan_ker = [m for m in markers if kbm[m].get("pan_keratin")]
    ker_pos = [m for m in pan_ker if m in positive]
    ker_neg = bool(pan_ker) and not ker_pos and all(m in negative for m in pan_ker)
    thr = p["lineage_evidence_min"]
    ihc_carc, ihc_sarc = carc_score >= thr, sarc_score >= thr
    melano = [m for m in positive if kbm[m]["supports"] == "melanocytic"]
    lymph = [m for m in positive if kbm[m]["supports"] == "haematolymphoid"]
    epithelial_pos = ker_pos or ihc_carc

    def conflict(rule: str, description: str, markers_=(), slides=()):
        conflicts.append({"rule": rule, "description": description, "markers": sorted(markers_),
                          "slides": sorted(slides)})

    melanocytic_pattern = False
    if he["state"] == "conflict":
        conflict("he_disagree", he["reason"], slides=he["slides"])
    if melano and not epithelial_pos:
        melanocytic_pattern = True
        conflict("melanocytic", f"{'/'.join(sorted(melano))} positive without keratin: melanoma (or nerve-sheath "
                 "tumour) pattern - neither carcinoma nor sarcoma; metastatic melanoma must be excluded", melano)
    if lymph:
        conflict("haematolymphoid", f"{'/'.join(lymph)} positive: a lymphoma is neither carcinoma nor sarcoma", lymph)
    if epithelial_pos and (pos("S100", "SOX10") or (pos("SMA") and pos("p63", "p40"))):
        co = ker_pos + pos("S100", "SOX10", "SMA", "p63", "p40")
        conflict("myoepithelial", "keratin co-expressed with S100/SOX10 or SMA + p63/p40: myoepithelial tumour "
                 "(or metaplastic carcinoma) pattern", co)
    if ker_pos and pos("CD34"):
        conflict("epithelioid_sarcoma", "keratin and CD34 both positive: epithelioid sarcoma pattern "
                 "(INI1/SMARCB1 loss would support it)", ker_pos + ["CD34"])
    sarc_pos = [m for m in positive if kbm[m]["supports"] == "sarcoma"]
    carc_pos = [m for m in positive if kbm[m]["supports"] == "carcinoma"]
    if ihc_carc and ihc_sarc:
        conflict("coexpression", "epithelial and mesenchymal lineage markers both positive "
                 f"({', '.join(sorted(positive))}): synovial sarcoma, desmoplastic small round cell tumour or "
                 "sarcomatoid carcinoma in the differential", ker_pos + sarc_pos)
    if he["state"] == "sarcoma" and epithelial_pos and not ihc_sarc:
        conflict("he_sarcoma_keratin", "H&E favours sarcoma but epithelial markers are positive "
                 f"({', '.join(sorted(carc_pos))}): epithelioid or "
                 "synovial sarcoma versus sarcomatoid carcinoma", ker_pos or sorted(positive), he["slides"])
    if he["state"] == "carcinoma" and ihc_sarc and not epithelial_pos:
        conflict("he_carcinoma_mesenchymal", "H&E favours carcinoma but mesenchymal markers are positive "
                 f"({', '.join(sorted(sarc_pos))}) and epithelial markers are not", sarc_pos, he["slides"])
    if he["state"] == "carcinoma" and ker_neg and not ihc_carc:
        conflict("keratin_negative_carcinoma", "H&E favours carcinoma but pan-keratin is negative: melanoma, "
                 "lymphoma or an epithelioid sarcoma must be excluded", pan_ker, he["slides"])
    if he["state"] == "no_tumour" and (ihc_carc or ihc_sarc):
        conflict("he_no_tumour_ihc_positive", "no tumour on H&E but lineage markers are positive "
                 f"({', '.join(sorted(positive))}): review for a small tumour focus", sorted(positive), he["slides"])

    # ---- the call ----
    basis = []
    if usable_he:
        basis.append("H&E")
    if markers:
        basis.append("IHC")
    if conflicts:
        call, category = REFER, ("melanocytic" if melanocytic_pattern and len(conflicts) == 1 else "conflict")
        reason = conflicts[0]["description"] if len(conflicts) == 1 else \
            f"{len(conflicts)} conflicts: " + "; ".join(c["rule"] for c in conflicts)
    elif ihc_carc and he["state"] in {"carcinoma", "uncertain", "none"}:
        call, category = CARCINOMA, "carcinoma"
        reason = f"epithelial markers positive ({', '.join(sorted(carc_pos))})"
        reason += "; H&E agrees" if he["state"] == "carcinoma" else f"; {he['reason']}"
    elif ihc_sarc and not epithelial_pos and he["state"] in {"sarcoma", "uncertain", "none"}:
        call, category = SARCOMA, "sarcoma"
        reason = f"mesenchymal markers positive ({', '.join(sorted(sarc_pos))})"
        reason += "; keratin negative" if ker_neg else "; keratin not done" if not pan_ker else ""
        reason += "; H&E agrees" if he["state"] == "sarcoma" else f"; {he['reason']}"
    elif he["state"] == "carcinoma" and not ker_neg and (p["he_only_calls"] or carc_score > 0):
        call, category = CARCINOMA, "carcinoma"
        reason = he["reason"] + ("; supportive IHC (" + ", ".join(sorted(positive)) + ")" if carc_score > 0
                                 else "; not confirmed by IHC")
    elif he["state"] == "sarcoma" and not epithelial_pos and (p["he_only_calls"] or ker_neg or sarc_score > 0):
        call, category = SARCOMA, "sarcoma"
        reason = he["reason"] + ("; keratin negative" if ker_neg else "") + (
            "; supportive IHC (" + ", ".join(sorted(sarc_pos)) + ")" if sarc_score > 0 else "") + (
            "; not confirmed by IHC" if not markers else "")
    elif he["state"] == "no_tumour" and not (ihc_carc or ihc_sarc):
        call, category = NO_TUMOUR, "no_tumour"
        reason = he["reason"] + ("; no lineage marker positive" if markers else "")
    else:
        call, category = REFER, "insufficient"
        if not usable_he and not markers:
            reason = "no usable slide: nothing to base a call on"
        elif he["state"] == "carcinoma" and ker_neg:
            reason = "H&E favours carcinoma but pan-keratin is negative"
        else:
            reason = f"insufficient evidence: {he['reason']}; IHC carcinoma weight {carc_score:g}, sarcoma weight " \
                     f"{sarc_score:g} (needs {thr:g})"

    # ---- what would help ----
    done = set(markers)

    def help_with(names: dict | list, why: str):
        todo = [m for m in names if m not in done]
        if todo:
            would_help.append(f"{', '.join(todo)}: {why}")

    if not markers and category not in {"no_tumour"}:
        help_with(LINEAGE_PANEL, "pan-keratin and desmin would separate carcinoma from sarcoma")
    elif category == "carcinoma":
        if not ker_pos:
            help_with(["CK_AE1AE3"], "pan-keratin to confirm epithelial lineage")
    elif category == "sarcoma":
        if not pan_ker:
            help_with(["CK_AE1AE3"], "pan-keratin to exclude sarcomatoid carcinoma")
        if not sarc_pos:
            help_with(SARCOMA_PANEL, "lineage of the sarcoma (" + "; ".join(
                f"{m} {w}" for m, w in SARCOMA_PANEL.items() if m not in done) + ")")
    elif category == "insufficient" and markers:
        help_with(LINEAGE_PANEL, "pan-keratin and desmin would separate carcinoma from sarcoma")
    if melanocytic_pattern:  # alone or beside other conflicts: say what confirms or excludes melanoma
        help_with(["HMB45", "MelanA", "CK_AE1AE3"], "melanocytic markers and keratin; check for a melanoma history")
    if category == "conflict":
        would_help.append("review by a soft-tissue pathologist; molecular testing where the pattern suggests it "
                          "(SS18 rearrangement for synovial sarcoma, INI1/SMARCB1 loss for epithelioid sarcoma)")
    for m in sorted(equivocal):
        would_help.append(f"review the {m} slide (equivocal: {markers[m].get('reason', '')})")
    for x in excluded:
        would_help.append(f"repeat or re-label slide {x['slide_id']} ({x['stain']}): {x['reason']}")

    candidates = site_candidates(markers, kb) if category == "carcinoma" else []
    if category == "carcinoma":
        if not candidates:
            help_with(SITE_PANEL, "a site panel to suggest the primary (" + "; ".join(
                f"{m} {w}" for m, w in SITE_PANEL.items() if m not in done) + ")")
        else:
            top = candidates[0]
            if top["site"] == "breast":
                help_with(["GATA3", "ER"], "breast markers")
            if top["site"] == "squamous":
                help_with(["p16"], "block-type p16 points to HPV-associated sites (cervix, oropharynx)")
            if top["site"] == "lung":
                help_with(["NapsinA", "PAX8"], "lung vs thyroid")
        if pos("ER", "PR") and not ker_pos:
            notes.append("ER/PR are positive in uterine smooth-muscle tumours: hormone receptors alone do not "
                         "indicate carcinoma")
    if category == "sarcoma" and pos("ER", "PR"):
        notes.append("ER/PR positivity is expected in uterine-type smooth-muscle tumours (leiomyosarcoma), not "
                     "evidence of breast carcinoma without keratin")

    rank = CATEGORY_RANK[category]
    burden = max((h.get("tumour_burden") or 0.0 for h in usable_he), default=0.0)
    strength = min(1.0, max(carc_score, sarc_score) / 2.0) if markers else (he.get("confidence") or 0.0)
    score = round(0.5 * strength + 0.5 * burden, 4)
    pitfalls = {m: kbm[m]["pitfalls"] for m in sorted(positive | equivocal)}
    if ker_neg:
        pitfalls.update({m: kbm[m]["pitfalls"] for m in pan_ker})

    return {
        "version": CASE_VERSION,
        "case_id": case_id,
        "call": call,
        "category": category,
        "reason": reason,
        "basis": " + ".join(basis) if basis else "none",
        "suggested_primary": candidates[0]["label"] if candidates else None,
        "primary_candidates": candidates,
        "he": he,
        "lineage_scores": {"carcinoma": round(carc_score, 3), "sarcoma": round(sarc_score, 3),
                           "threshold": thr, "pan_keratin": "positive" if ker_pos else "negative" if ker_neg
                           else "not done"},
        "evidence": evidence,
        "conflicts": conflicts,
        "notes": notes,
        "pitfalls": pitfalls,
        "would_help": would_help,
        "slides": {"used": sorted({h["slide_id"] for h in usable_he} | {r["slide_id"] for r in usable_ihc}),
                   "excluded": excluded},
        "priority": {"rank": rank, "label": PRIORITY_LABELS[rank], "score": score,
                     "sort_key": round(rank + (1.0 - score) * 0.99, 4)},
        "disclaimer": DISCLAIMER,
    }


# ---- CLI -------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    parser.add_argument("--case", required=True, help="case id")
    parser.add_argument("--summaries", nargs="*", default=[], help="summary.json of every slide of the case")
    parser.add_argument("--markers", default=None, help="marker knowledge base (default: the config's `markers`)")
    parser.add_argument("--config", default="configs/config.yaml", help="config file")
    parser.add_argument("--out", required=True, help="case.json to write")


def run(args) -> None:
    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.ihc.markers import load_markers

    config = load_config(args.config)
    kb = load_markers(args.markers or config["markers"])
    summaries = []
    for path in args.summaries:
        try:
            summary = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read slide summary ({exc})") from exc
        if summary.get("case_id") not in (None, args.case):
            log.warning("%s: belongs to case %s, not %s; ignored", path, summary.get("case_id"), args.case)
            continue
        summaries.append(summary)
    he_calls, ihc_results = inputs_from_summaries(summaries)
    result = call_case(he_calls, ihc_results, kb, config.get("case"), case_id=args.case)
    atomic.write_json(args.out, result)
    log.info("case %s: %s (%s); priority %d", args.case, result["call"], result["reason"],
             result["priority"]["rank"])
