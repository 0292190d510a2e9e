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
3. IHC: one result per marker (the strongest over its slides); a marker whose every slide was excluded is
   ``failed``, never "not done". Each positive marker adds its knowledge-base ``weight`` to the lineage it
   ``supports`` (enough at ``lineage_evidence_min``: pan-keratin or desmin alone; ER alone is not).
4. The panel rules table (configs/panel_rules.yaml, applied by :mod:`pipeline.case.panel_rules`) gives the call:
   every pitfall pattern that matches fires and means refer (melanocytic marker, lymphoma, myoepithelial,
   keratin + vascular marker, co-expression, keratin/EMA in a sarcoma-like H&E, keratin-negative "carcinoma",
   ER/PR without keratin, a sarcoma without a negative keratin, ...); otherwise the first matching call
   rule. The output lists the rules that fired (``rules_fired``) and the stains that would help.
5. A carcinoma gets the matching ``site_patterns`` of the knowledge base as primary-site candidates.

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

from pipeline import DISCLAIMER, atomic
from pipeline.case import panel_rules
from pipeline.config import HE_STAIN

log = logging.getLogger(__name__)

CASE_VERSION = 1
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
# Stains suggested for a carcinoma: a site panel when no site pattern matched, or what settles the leading site.
SITE_PANEL = {"CK7": "CK7/CK20 pattern", "CK20": "CK7/CK20 pattern", "GATA3": "breast/urothelial",
              "ER": "breast/gynaecological", "TTF1": "lung/thyroid", "p40": "squamous",
              "p16": "HPV-associated squamous (cervix, oropharynx)", "CDX2": "colorectal",
              "PAX8": "Mullerian/renal/thyroid"}
SITE_HELP = {"breast": (["GATA3", "ER"], "breast markers"),
             "squamous": (["p16"], "block-type p16 points to HPV-associated sites (cervix, oropharynx)"),
             "lung": (["NapsinA", "PAX8"], "lung vs thyroid")}


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


# ---- evidence -----------------------------------------------------------------------------------------
def split_usable(he_calls: list[dict], ihc_results: list[dict], kb: dict) -> tuple[list, list, list]:
    """(usable H&E calls, usable IHC results, excluded slides with the reason each is not used)."""
    usable_he, usable_ihc, excluded = [], [], []
    for he in he_calls:
        why = _unusable_he(he)
        if why:
            excluded.append({"slide_id": he["slide_id"], "stain": HE_STAIN, "reason": why})
        else:
            usable_he.append(he)
    for r in ihc_results:
        why = _unusable_ihc(r, kb)
        if why:
            excluded.append({"slide_id": r["slide_id"], "stain": r.get("marker"), "reason": why})
        else:
            usable_ihc.append(r)
    return usable_he, usable_ihc, excluded


def panel_results(markers: dict[str, dict], excluded: list[dict], kb: dict) -> dict[str, dict]:
    """marker -> {call, reason} as the panel rules read it: a marker whose every slide was excluded is
    ``failed`` (with the reason), never "not done"."""
    results = {m: {"call": r["call"], "reason": r.get("reason", "")} for m, r in markers.items()}
    for x in excluded:
        if x["stain"] in kb["markers"] and x["stain"] not in results:
            results[x["stain"]] = {"call": "failed", "reason": x["reason"]}
    return results


def he_evidence(usable_he: list[dict], min_confidence: float) -> list[dict]:
    """One evidence row per usable H&E slide call."""
    rows = []
    for he in usable_he:
        note = he.get("reason", "")
        if he["call"] == "refer" and he.get("leading_call"):
            lead_conf = he.get("leading_confidence")
            note += f"; leaning {he['leading_call']}" + (f" ({lead_conf:.2f})" if lead_conf is not None else "")
        if he.get("tumour_burden") is not None:
            note += f"; tumour burden {he['tumour_burden']:.2f}"
        rows.append({"slide_id": he["slide_id"], "stain": HE_STAIN, "kind": "H&E slide call", "finding": he["call"],
                     "value": he.get("confidence"), "metric": "confidence", "cutoff": min_confidence,
                     "supports": he["call"] if he["call"] in {"carcinoma", "sarcoma", "no_tumour"} else "none",
                     "weight": None, "note": note.strip("; ")})
    return rows


def _ihc_supports(entry: dict, call: str) -> str:
    if call == "positive":
        return entry["supports"]
    if call == "negative" and entry.get("pan_keratin"):
        return "against carcinoma"
    if call == "negative" and entry["supports"] != "none":
        return f"against {entry['lineage']} differentiation (weak)"
    return "none"


def ihc_evidence(markers: dict[str, dict], kb: dict) -> list[dict]:
    """One evidence row per marker (slides combined): finding, what it supports, notes a reader needs."""
    rows = []
    for marker, r in sorted(markers.items()):
        entry = kb["markers"][marker]
        note = r.get("reason", "")
        if r.get("qualifier"):
            note = f"{r['qualifier']}; {note}"
        ic = r.get("internal_control")
        if ic and r["call"] == "negative":
            note += "; internal control " + ("seen" if ic.get("seen") else "NOT seen (technical failure possible)")
        if r.get("discordant"):
            note += "; slides disagree: " + ", ".join(r["slides"])
        rows.append({"slide_id": ",".join(r["slides"]), "stain": marker, "kind": "IHC", "finding": r["call"],
                     "value": r.get("value"), "metric": r.get("metric"), "cutoff": r.get("cutoff"),
                     "supports": _ihc_supports(entry, r["call"]),
                     "weight": entry["weight"] if r["call"] == "positive" else None, "note": note.strip("; ")})
    return rows


# ---- what would help beyond the rules ------------------------------------------------------------------
def site_help(candidates: list[dict], done: set[str]) -> list[str]:
    """For a carcinoma: the site panel when no site pattern matched, or the stains that would settle the
    leading candidate."""
    def line(names, why):
        todo = [m for m in names if m not in done]
        return [f"{', '.join(todo)}: {why}"] if todo else []

    if not candidates:
        return line(SITE_PANEL, "a site panel to suggest the primary (" + "; ".join(
            f"{m} {w}" for m, w in SITE_PANEL.items() if m not in done) + ")")
    return line(*SITE_HELP[candidates[0]["site"]]) if candidates[0]["site"] in SITE_HELP else []


def slide_help(markers: dict[str, dict], excluded: list[dict]) -> list[str]:
    """Equivocal markers to review and excluded slides to repeat or re-label."""
    lines = [f"review the {m} slide (equivocal: {r.get('reason', '')})" for m, r in sorted(markers.items())
             if r["call"] == "equivocal"]
    return lines + [f"repeat or re-label slide {x['slide_id']} ({x['stain']}): {x['reason']}" for x in excluded]


# ---- the call -----------------------------------------------------------------------------------------
def call_case(he_calls: list[dict], ihc_results: list[dict], kb: dict, params: dict | None = None,
              case_id: str = "", rules: dict | None = None) -> dict:
    """Combine H&E calls and IHC results of one case into a triage call with evidence (pure function).

    ``he_calls``: dicts with slide_id, call (carcinoma | sarcoma | no_tumour | refer), confidence, reason,
    tumour_burden, qc_status, qc_reasons[, stain_check, status]. ``ihc_results``: dicts with slide_id, marker,
    status, call (positive | negative | equivocal | not_evaluable), metric, value, cutoff, qualifier, reason,
    qc_status[, stain_check, internal_control, distribution, warnings]. :func:`inputs_from_summaries` builds
    both from summary.json files. ``kb`` is the loaded marker knowledge base, ``params`` the ``case`` config,
    ``rules`` the panel rules table (default: configs/panel_rules.yaml of this repository).
    """
    p = {**DEFAULT_PARAMS, **(params or {})}
    table = rules if rules is not None else panel_rules.default_rules(kb)
    usable_he, usable_ihc, excluded = split_usable(he_calls, ihc_results, kb)
    he = he_consensus(usable_he, p["he_min_confidence"])
    markers = combine_marker_results(usable_ihc)
    facts = panel_rules.case_facts(he, panel_results(markers, excluded, kb), kb, p)
    verdict = panel_rules.evaluate(table, facts)
    candidates = site_candidates(markers, kb) if verdict["category"] == "carcinoma" else []
    would_help = verdict["would_help"]
    if verdict["category"] == "carcinoma":
        would_help = would_help + site_help(candidates, set(markers))
    if verdict["call"] == REFER and not would_help:  # the table's check makes this unreachable; never silent
        would_help = ["review of the H&E and IHC slides by a pathologist"]
    return {
        "version": CASE_VERSION,
        "case_id": case_id,
        "call": verdict["call"],
        "category": verdict["category"],
        "reason": _reason(verdict["rules_fired"]),
        "basis": " + ".join([b for b, used in (("H&E", usable_he), ("IHC", markers)) if used]) or "none",
        "suggested_primary": candidates[0]["label"] if candidates else None,
        "primary_candidates": candidates,
        "he": he,
        "lineage_scores": _lineage_scores(facts, kb),
        "evidence": he_evidence(usable_he, p["he_min_confidence"]) + ihc_evidence(markers, kb),
        "rules_fired": verdict["rules_fired"],
        "conflicts": [{"rule": r["id"], "description": r["text"], "markers": r["markers"],
                       "slides": sorted(he["slides"]) if r["uses_he"] else []}
                      for r in verdict["rules_fired"] if r["call"] == REFER and r["category"] != "insufficient"],
        "notes": [f"{r['id']}: {r['pitfall']}" for r in verdict["rules_fired"]],
        "pitfalls": _marker_pitfalls(facts["results"], kb),
        "would_help": would_help + slide_help(markers, excluded),
        "slides": {"used": sorted({h["slide_id"] for h in usable_he} | {r["slide_id"] for r in usable_ihc}),
                   "excluded": excluded},
        "priority": _priority(verdict["category"], usable_he, facts, bool(markers)),
        "disclaimer": DISCLAIMER,
    }


def _reason(fired: list[dict]) -> str:
    """The first rule's reason; further rules that fired are named."""
    more = [r["id"] for r in fired[1:]]
    return fired[0]["text"] + (f" (also: {', '.join(more)})" if more else "")


def _pan_keratin(facts: dict, kb: dict) -> str:
    pan = [m for m, e in kb["markers"].items() if e.get("pan_keratin")]
    return panel_rules.group_status(pan, pan, facts["results"]).replace("_", " ")


def _lineage_scores(facts: dict, kb: dict) -> dict:
    w = facts["weights"]
    return {"carcinoma": round(w["carcinoma"], 3), "sarcoma": round(w["sarcoma"], 3),
            "threshold": facts["threshold"], "pan_keratin": _pan_keratin(facts, kb)}


def _marker_pitfalls(results: dict[str, dict], kb: dict) -> dict[str, list[str]]:
    """The knowledge base's pitfalls of every positive or equivocal marker, and of a negative pan-keratin."""
    kbm = kb["markers"]
    return {m: kbm[m]["pitfalls"] for m, r in sorted(results.items())
            if r["call"] in {"positive", "equivocal"} or (r["call"] == "negative" and kbm[m].get("pan_keratin"))}


def _priority(category: str, usable_he: list[dict], facts: dict, has_ihc: bool) -> dict:
    """Worklist rank of the category; within it, stronger evidence and more tumour first."""
    rank = CATEGORY_RANK[category]
    burden = max((h.get("tumour_burden") or 0.0 for h in usable_he), default=0.0)
    strength = min(1.0, max(facts["weights"].values()) / 2.0) if has_ihc else (facts["he"].get("confidence") or 0.0)
    score = round(0.5 * strength + 0.5 * burden, 4)
    return {"rank": rank, "label": PRIORITY_LABELS[rank], "score": score,
            "sort_key": round(rank + (1.0 - score) * 0.99, 4)}


# ---- CLI -------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    parser.add_argument("--case", required=True, help="case id")
    parser.add_argument("--summaries", nargs="*", default=[], help="summary.json of every slide of the case")
    parser.add_argument("--markers", default=None, help="marker knowledge base (default: the config's `markers`)")
    parser.add_argument("--rules", default=None, help="panel rules table (default: the config's `panel_rules`, "
                        "or panel_rules.yaml next to the marker knowledge base)")
    parser.add_argument("--config", default="configs/config.yaml", help="config file")
    parser.add_argument("--out", required=True, help="case.json to write")


def case_params(config: dict) -> dict:
    """The config's ``case`` section plus the H&E confidence gate, which is the slide call's own
    (``slide_call.min_confidence``): one threshold decides whether an H&E call counts."""
    params = dict(config.get("case") or {})
    params["he_min_confidence"] = (config.get("slide_call") or {}).get("min_confidence",
                                                                        DEFAULT_PARAMS["he_min_confidence"])
    return params


def run(args) -> None:
    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.ihc.markers import load_markers

    config = load_config(args.config)
    markers_path = args.markers or config["markers"]
    kb = load_markers(markers_path)
    rules = panel_rules.load_rules(args.rules or config["panel_rules"] or panel_rules.rules_path_for(markers_path), kb)
    summaries = []
    for path in args.summaries:
        try:
            summary = atomic.read_json(path)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read slide summary ({exc})") from exc
        if summary.get("case_id") not in (None, args.case):
            log.warning("%s: belongs to case %s, not %s; ignored", path, summary.get("case_id"), args.case)
            continue
        summaries.append(summary)
    he_calls, ihc_results = inputs_from_summaries(summaries)
    result = call_case(he_calls, ihc_results, kb, case_params(config), case_id=args.case, rules=rules)
    atomic.write_json(args.out, result)
    log.info("case %s: %s (%s); priority %d", args.case, result["call"], result["reason"],
             result["priority"]["rank"])
