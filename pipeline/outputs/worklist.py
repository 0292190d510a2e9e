"""The review worklist: one row per case, each followed by its slides, in review-priority order.

:func:`worklist_rows` ranks cases by the case stage's priority (:data:`pipeline.case.call.CATEGORY_RANK`; 0 =
failed: no result, 1 = a tumour call or conflict, 2 = refer, 3 = no tumour), the stronger evidence first within a
rank; under each case its failed slides, then H&E, then IHC. :func:`worklist_tsv` writes the rows
(:data:`WORKLIST_COLUMNS`); :func:`slide_call_text`, :func:`failed_case` and :func:`failure_text` are shared with
the HTML page.
"""

from __future__ import annotations

from pipeline.case.call import CALL_RANK, CATEGORY_RANK

WORKLIST_COLUMNS = ("order", "level", "priority", "case_id", "slide_id", "stain", "call", "confidence", "status",
                    "reason", "details")
FAILED_CALL = "failed: no result"


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def slide_call_text(s: dict) -> tuple[str, float | None, str]:
    """(call, confidence, reason) of one slide summary for the worklist."""
    if s["kind"] == "HE":
        c = s.get("slide_call") or {}
        return f"H&E: {c.get('call')}", c.get("confidence"), c.get("reason", "")
    r = ((s.get("ihc") or {}).get("result")) or {}
    value = r.get("value")
    measured = f" ({r.get('metric')} {value:g}, cut-off {r.get('cutoff'):g})" if value is not None and \
        r.get("cutoff") is not None else ""
    return f"{s['stain']}: {r.get('call')}{measured}", None, r.get("reason", "")


def case_rank(case: dict) -> tuple[int, float]:
    """(priority rank, sort key) of a case.json: the rank of its category under today's rule (so a case.json
    written by an older version sorts right too), else the rank it states, else the rank of its call."""
    p = case.get("priority") or {}
    rank = CATEGORY_RANK.get(case.get("category"))
    if rank is None:
        rank = int(p["rank"]) if p.get("rank") is not None else CALL_RANK.get(case.get("call"), 2)
    return rank, float(p.get("sort_key", rank))


def failed_case(case_id: str, reason: str = "") -> dict:
    """The worklist's stand-in for a case without a current case call: "failed: no result", before all."""
    return {"case_id": case_id, "call": FAILED_CALL, "category": "failed",
            "reason": reason or "no case call: the case job did not run or failed",
            "priority": {"rank": CATEGORY_RANK["failed"], "sort_key": float(CATEGORY_RANK["failed"])}}


def failure_text(failure: dict) -> str:
    """One line naming the job that failed (or never ran) for a slide or case, and its log."""
    what = failure["slide_id"] or f"case {failure['case_id']}"
    if failure["ran"]:
        return f"{failure['rule']} failed for {what}; log: {failure['log']}"
    return f"{failure['rule']} did not run for {what} (the run stopped first); log: {failure['log']}"


def slide_order(s: dict) -> tuple:
    return (0 if s["status"] == "failed" else 1, 0 if s["kind"] == "HE" else 1, s["stain"], s["slide_id"])


def worklist_rows(cases: dict[str, dict], summaries: list[dict],
                  failures: dict[str, list[dict]] | None = None) -> list[dict]:
    """Worklist rows: each case then its slides, cases in review order (see the module docstring).

    ``cases``: case_id -> case.json content; ``summaries``: summary.json contents (a slide whose result is
    missing: a stand-in from :func:`partial_inputs`, ``no_result`` true); ``failures``: case_id -> the jobs
    that failed for it (:func:`partial_inputs`). A case with a failed job or without case.json is listed
    first as "failed: no result" with the failed jobs' logs, never dropped.
    """
    failures = failures or {}
    by_case: dict[str, list[dict]] = {}
    for s in summaries:
        by_case.setdefault(s["case_id"], []).append(s)
    case_ids = sorted(set(by_case) | set(cases) | set(failures))
    failed = {c: failed_case(c, "; ".join(failure_text(f) for f in failures.get(c, [])))
              for c in case_ids if c not in cases or failures.get(c)}
    all_cases = {**cases, **failed}
    ordered = sorted(case_ids, key=lambda c: (*case_rank(all_cases[c]), c))
    rows = []
    for case_id in ordered:
        case = all_cases[case_id]
        rank, _ = case_rank(case)
        slides = sorted(by_case.get(case_id, []), key=slide_order)
        failed = [s["slide_id"] for s in slides if s["status"] == "failed"]
        details = []
        if case.get("suggested_primary"):
            details.append(f"suggested primary: {case['suggested_primary']}")
        details += [f"conflict: {c.get('description', '')}" for c in case.get("conflicts", [])]
        if failed:
            details.append(f"failed slides: {', '.join(failed)}")
        details += [f"would help: {w}" for w in case.get("would_help", [])[:3]]
        confidence = None
        he = case.get("he") or {}
        if isinstance(he.get("confidence"), (int, float)):
            confidence = he["confidence"]
        rows.append({"level": "case", "priority": rank, "case_id": case_id, "slide_id": "",
                     "stain": ",".join(s["stain"] for s in slides), "call": case.get("call", ""),
                     "confidence": confidence, "status": "failed" if slides and len(failed) == len(slides) else
                     ("warn" if failed else "ok"), "reason": case.get("reason", ""), "details": "; ".join(details)})
        for s in slides:
            call, conf, why = slide_call_text(s)
            reason = s["reason"] if s["status"] == "failed" else why
            detail = s["reason"] if s["status"] == "warn" else ""
            rows.append({"level": "slide", "priority": rank, "case_id": case_id, "slide_id": s["slide_id"],
                         "stain": s["stain"],
                         "call": FAILED_CALL if s.get("no_result") else "not assessed" if s["status"] == "failed"
                         else call,
                         "confidence": None if s["status"] == "failed" else conf, "status": s["status"],
                         "reason": reason, "details": detail})
    for i, row in enumerate(rows, start=1):
        row["order"] = i
    return rows


def _tsv_cell(v) -> str:
    return " ".join(fmt(v, 4).replace("\t", " ").split())


def worklist_tsv(rows: list[dict]) -> str:
    lines = ["\t".join(WORKLIST_COLUMNS)]
    lines += ["\t".join(_tsv_cell(row[c]) for c in WORKLIST_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"
