"""Cohort outputs for people: the review worklist (TSV), the HTML review page and the run metadata.

* ``worklist.tsv`` -- one row per case, each followed by its slides, cases in review-priority order
  (:func:`worklist_rows`): priority 0 (failed: no result -- a job of the case failed or its case call is
  missing; the row names the failed job's log), 1 (a tumour call: favours metastatic carcinoma or favours sarcoma;
  conflicting evidence; melanocytic pattern), 2 (refer), 3 (no tumour), as ranked by the case stage
  (``case.json`` ``priority``, :data:`pipeline.case.call.CATEGORY_RANK`); within a rank the stronger evidence
  first. Under each case its failed slides come first, then H&E, then IHC. Every row says why (call reason,
  or the one-line failure reason).
* ``report.html`` -- one self-contained page: a "decision support, not a diagnosis" notice at the top, the
  worklist, then one panel per case (H&E calls, IHC table, evidence, conflicts, what would help, heatmaps and
  top tiles). Pictures are embedded as data URIs (PNG, or JPEG for large contact sheets), styles inline; no
  script, no external file, font or network request (a Content-Security-Policy forbids them), so it works from
  file:// offline and prints cleanly. It shows only summary fields and the pipeline's own pictures: never a
  slide's label or macro image, file name or identifying properties. Each case and slide carries a relative
  link to its deep-zoom view (``case/<id>``, ``slide/<id>``), hidden by the page's own style: the viewer
  (``python -m pipeline view results/``, :mod:`pipeline.viewer.server`) serves the page with :data:`SERVED_STYLE`, which
  shows the links and hides the "run the viewer" hint, so the file opened from disk has no broken link.
* ``run_metadata.json`` -- what differs between runs (times, host, argv, versions); the two files above are
  byte-identical for identical inputs.

After a failed run (``--jobs``, given by the workflow's ``onerror`` handler) the same three files are written
from whatever is current: the jobs table (:data:`JOBS_COLUMNS`) names, per slide and case and in pipeline
order, the job making each result and its log; a result that is missing, or older than the results it is made
from, makes its slide and case "failed: no result" with that job's log (:func:`partial_inputs`). Nothing on the
sheet disappears from the worklist, and no stale call is shown as current.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import os
import sys
from pathlib import Path

from pipeline import DISCLAIMER, atomic
from pipeline.case.call import CALL_RANK, CATEGORY_RANK, PRIORITY_LABELS
from pipeline.outputs.summary import NO_OOD_CHECK

log = logging.getLogger(__name__)

REPORT_VERSION = 1
WORKLIST_COLUMNS = ("order", "level", "priority", "case_id", "slide_id", "stain", "call", "confidence", "status",
                    "reason", "details")
PICTURES = (("heatmap", "heatmap.png"), ("top_tiles", "top_tiles.png"), ("tissue", "tissue_overlay.png"))
EMBED_PNG_MAX_BYTES = 400_000  # larger pictures are embedded as JPEG (quality JPEG_QUALITY) to keep the page light
JPEG_QUALITY = 85
# Added by the viewer (pipeline.viewer.server) when it serves the page: shows the deep-zoom links, hides the hint
# to start it.
SERVED_STYLE = ("<style>.view-link { display: inline; } .view-col { display: table-cell; } "
                ".static-only { display: none; }</style>")
FAILED_CALL = "failed: no result"
# after a failed run: per slide and case, in pipeline order, the job making each result (written by the workflow)
JOBS_COLUMNS = ("case_id", "slide_id", "stain", "rule", "output", "log")


# ---- worklist -------------------------------------------------------------------------------------------
def _fmt(v, digits: int = 2) -> str:
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


def _slide_order(s: dict) -> tuple:
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
        slides = sorted(by_case.get(case_id, []), key=_slide_order)
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
    return " ".join(_fmt(v, 4).replace("\t", " ").split())


def worklist_tsv(rows: list[dict]) -> str:
    lines = ["\t".join(WORKLIST_COLUMNS)]
    lines += ["\t".join(_tsv_cell(row[c]) for c in WORKLIST_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


# ---- HTML -----------------------------------------------------------------------------------------------
CSS = """
:root { --ink:#1b1b1b; --muted:#555; --line:#c9c9c9; --bg:#fff; --band:#f3f3f3; --p1:#a4161a; --p2:#9a5b00;
        --p3:#2f6b2f; --warn:#fff4d6; --fail:#fde2e1; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink);
       background: var(--bg); margin: 0; }
a { color: #0b4f9c; }
.skip { position:absolute; left:-999px; } .skip:focus { left: 8px; top: 8px; background:#fff; padding:4px; }
header, main, footer { max-width: 1500px; margin: 0 auto; padding: 0 20px; }
.notice { background: #fff1c1; border: 2px solid #8a6d00; padding: 12px 16px; margin: 16px 0; font-size: 16px; }
.notice strong { font-size: 18px; }
h1 { font-size: 26px; margin: 18px 0 4px; } h2 { font-size: 21px; margin-top: 28px; } h3 { font-size: 17px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: var(--band); }
tr.case td { font-weight: 600; border-top: 3px solid #777; } tr.case td.small { font-weight: 400; }
tr.slide td:first-child { padding-left: 22px; }
tr.st-failed td { background: var(--fail); } tr.st-warn td { background: var(--warn); }
.prio { display:inline-block; min-width: 1.8em; text-align:center; color:#fff; border-radius: 3px; padding: 0 4px; }
.prio-0 { background: #000; }
.prio-1 { background: var(--p1); } .prio-2 { background: var(--p2); } .prio-3 { background: var(--p3); }
section.case { border: 1px solid var(--line); padding: 4px 16px 12px; margin: 20px 0; break-inside: avoid-page; }
.slide { border-top: 1px solid var(--line); margin-top: 12px; padding-top: 4px; }
figure { margin: 8px 0; } figcaption { color: var(--muted); font-size: 13px; }
img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.muted { color: var(--muted); } .small { font-size: 13px; }
dl.kv { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; margin: 6px 0; }
dl.kv dt { font-weight: 600; } dl.kv dd { margin: 0; }
details summary { cursor: pointer; color: #0b4f9c; margin: 4px 0; }
.view-link, .view-col { display: none; } .view-link { font-weight: 400; font-size: 13px; margin-left: 6px; }
@media print {
  .skip, details summary, .view-link, .view-col, .static-only { display: none; }
  body { font-size: 11px; } section.case { break-before: page; }
  img { max-height: 18cm; } a { color: inherit; text-decoration: none; }
}
"""


def esc(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def image_data_uri(path: Path) -> str | None:
    """The picture as a data URI: PNG as written, or JPEG when the PNG is larger than EMBED_PNG_MAX_BYTES."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) <= EMBED_PNG_MAX_BYTES:
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(src: str | None, alt: str, caption: str) -> str:
    if not src:
        return f'<p class="muted">{esc(caption)}: picture not available.</p>'
    return f'<figure><img src="{esc(src)}" alt="{esc(alt)}"><figcaption>{esc(caption)}</figcaption></figure>'


def view_link(kind: str, ident: str) -> str:
    """A relative link to the deep-zoom view of a case or slide, shown only when the viewer serves the page."""
    return f'<a class="view-link" href="{kind}/{esc(ident)}">view</a>'


def worklist_table(rows: list[dict]) -> str:
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in
                   ("#", "priority", "case", "slide", "stain", "call", "confidence", "status", "reason", "details"))
    head += '<th scope="col" class="view-col">deep zoom</th>'
    body = []
    for r in rows:
        case_cell = f'<a href="#case-{esc(r["case_id"])}">{esc(r["case_id"])}</a>' if r["level"] == "case" \
            else esc(r["case_id"])
        link = view_link("case", r["case_id"]) if r["level"] == "case" else view_link("slide", r["slide_id"])
        prio = f'<span class="prio prio-{r["priority"]}" title="{esc(PRIORITY_LABELS.get(r["priority"], ""))}">' \
               f'{r["priority"]}</span>'
        body.append(
            f'<tr class="{r["level"]} st-{esc(r["status"])}" data-level="{r["level"]}">'
            f'<td>{r["order"]}</td><td>{prio}</td><td>{case_cell}</td><td>{esc(r["slide_id"])}</td>'
            f'<td>{esc(r["stain"])}</td><td>{esc(r["call"])}</td><td>{esc(_fmt(r["confidence"]))}</td>'
            f'<td>{esc(r["status"])}</td><td>{esc(r["reason"])}</td><td class="small">{esc(r["details"])}</td>'
            f'<td class="view-col">{link}</td></tr>')
    return (f'<table id="worklist"><caption>Review worklist: {sum(r["level"] == "case" for r in rows)} cases, '
            f'{sum(r["level"] == "slide" for r in rows)} slides, most urgent first</caption>'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _evidence_table(case: dict) -> str:
    ev = case.get("evidence") or []
    if not ev:
        return '<p class="muted">No usable evidence.</p>'
    cols = ("slide_id", "stain", "kind", "finding", "metric", "value", "cutoff", "supports", "note")
    head = "".join(f'<th scope="col">{esc(c.replace("_", " "))}</th>' for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(e.get(c)))}</td>" for c in cols) + "</tr>" for e in ev)
    return f'<table><caption>Evidence</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _ihc_table(slides: list[dict]) -> str:
    ihc = [s for s in slides if s["kind"] == "IHC"]
    if not ihc:
        return ""
    cols = ("slide", "marker", "result", "metric", "value", "cut-off", "pattern", "internal control", "stain check",
            "status")
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in cols)
    body = []
    for s in ihc:
        d = s.get("ihc") or {}
        r = d.get("result") or {}
        dist = (d.get("distribution") or {}).get("pattern")
        ic = d.get("internal_control")
        ic_text = "" if not ic else ("seen" if ic.get("seen") else "not seen") + f" ({ic.get('expected', '')})"
        sc = s.get("stain_check") or {}
        sc_text = "probable mislabel" if sc.get("probable_mislabel") else ("consistent" if sc else "")
        cells = (s["slide_id"], s["stain"], r.get("call"), r.get("metric"), _fmt(r.get("value")), _fmt(r.get("cutoff")),
                 dist, ic_text, sc_text, s["status"] + (f": {s['reason']}" if s["reason"] else ""))
        body.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return (f'<table><caption>Immunohistochemistry (automated DAB quantification)</caption>'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _ood_text(s: dict) -> str:
    """An H&E slide's share of tiles unlike the training data, or that nothing checked it."""
    if not (s.get("scores") or {}).get("has_ood_score", True):
        return NO_OOD_CHECK
    return f'{_fmt(100 * ((s.get("slide_call") or {}).get("ood_fraction") or 0), 0)}% of tiles'


def _no_ood_notice(summaries: list[dict]) -> str:
    """A header line naming the H&E slides scored without an out-of-distribution check (empty when none)."""
    unchecked = [s["slide_id"] for s in summaries
                 if s["kind"] == "HE" and not (s.get("scores") or {}).get("has_ood_score", True)]
    if not unchecked:
        return ""
    return (f'<p class="notice" role="note"><strong>{esc(NO_OOD_CHECK.capitalize())}</strong> on '
            f'{len(unchecked)} H&amp;E slide{"s" if len(unchecked) > 1 else ""} ({esc(", ".join(unchecked))}): '
            "the model has no out-of-distribution statistics (slide_call.require_ood: false), so tissue unlike "
            "its training data is not flagged and its calls may be confidently wrong there.</p>")


def _slide_block(s: dict, pictures: dict[str, str | None]) -> str:
    sid = esc(s["slide_id"])
    parts = [f'<div class="slide" id="slide-{sid}"><h4>{sid} &middot; {esc(s["stain"])} &middot; '
             f'status {esc(s["status"])}{view_link("slide", s["slide_id"])}</h4>']
    if s["status"] == "failed":
        parts.append(f'<p><strong>Not assessed:</strong> {esc(s["reason"])}</p>')
    elif s["kind"] == "HE":
        c = s.get("slide_call") or {}
        b = c.get("burden") or {}
        parts.append('<dl class="kv">'
                     f'<dt>slide call</dt><dd>{esc(c.get("call"))} (confidence {esc(_fmt(c.get("confidence")))})</dd>'
                     f'<dt>reason</dt><dd>{esc(c.get("reason"))}</dd>'
                     f'<dt>tumour</dt><dd>{esc(_fmt(c.get("tumour_area_mm2")))} mm2, '
                     f'{esc(_fmt(100 * (c.get("tumour_burden") or 0), 0))}% of analysed tiles</dd>'
                     f'<dt>burden</dt><dd>carcinoma-like {esc((b.get("carcinoma") or {}).get("tiles"))} tiles, '
                     f'sarcoma-like {esc((b.get("sarcoma") or {}).get("tiles"))}, non-tumour '
                     f'{esc((b.get("non_tumour") or {}).get("tiles"))}</dd>'
                     f'<dt>unlike training data</dt><dd>{esc(_ood_text(s))}</dd></dl>')
    if s["status"] == "warn":
        parts.append(f'<p><strong>Warnings:</strong> {esc(s["reason"])}</p>')
    qc = s.get("qc") or {}
    m = qc.get("metrics") or {}
    facts = [f"QC {qc.get('status')}"] if qc else []
    if m.get("tissue_area_mm2") is not None:
        facts.append(f"tissue {m['tissue_area_mm2']:g} mm2")
    if s.get("effective_mpp"):
        facts.append(f"{(s.get('tiles') or {}).get('count')} tiles at {s['effective_mpp']:g} um/px")
    if qc.get("reasons"):
        facts.append("QC reasons: " + "; ".join(qc["reasons"]))
    parts.append(f'<p class="small muted">{esc("; ".join(facts))}</p>')
    tissue = _img(pictures.get("tissue"), f"{s['slide_id']} tissue overlay",
                  "tissue mask (green) and the analysed tile grid")
    if s["status"] == "failed":
        parts.append(f"<details><summary>What the slide looks like</summary>{tissue}</details></div>")
        return "".join(parts)
    what = "probability heatmaps" if s["kind"] == "HE" else f"{s['stain']} DAB map"
    parts.append(_img(pictures.get("heatmap"), f"{s['slide_id']} {what}",
                      f"{what}: thumbnail with per-tile values, colour bar and scale bar"))
    parts.append("<details><summary>Top tiles and tissue overlay</summary>"
                 + _img(pictures.get("top_tiles"), f"{s['slide_id']} top tiles",
                        "tiles to look at first, at full resolution (level-0 positions given)")
                 + tissue + "</details></div>")
    return "".join(parts)


def _case_section(case_id: str, case: dict | None, slides: list[dict], pictures: dict) -> str:
    parts = [f'<section class="case" id="case-{esc(case_id)}" aria-labelledby="h-{esc(case_id)}">']
    if case is None or case.get("call") == FAILED_CALL:
        case = case or failed_case(case_id)
        parts.append(f'<h3 id="h-{esc(case_id)}"><span class="prio prio-0">0</span> Case {esc(case_id)}: '
                     f'{esc(FAILED_CALL)}</h3><p><strong>Why:</strong> {esc(case.get("reason"))}</p>'
                     '<p>No case call is shown: a job of this case failed. The slides below that finished are '
                     'listed for reference; re-run the workflow once the log is read.</p>')
    else:
        rank, _ = case_rank(case)
        parts.append(f'<h3 id="h-{esc(case_id)}"><span class="prio prio-{rank}">{rank}</span> Case {esc(case_id)}: '
                     f'{esc(case.get("call"))}{view_link("case", case_id)}</h3>')
        parts.append(f'<p><strong>Why:</strong> {esc(case.get("reason"))}</p>')
        kv = [("basis", case.get("basis")), ("H&E", (case.get("he") or {}).get("reason")),
              ("suggested primary", case.get("suggested_primary")),
              ("priority", (case.get("priority") or {}).get("label"))]
        parts.append('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in kv if v) + "</dl>")
        if case.get("conflicts"):
            parts.append("<h4>Conflicts</h4><ul>" + "".join(
                f'<li><strong>{esc(c.get("rule"))}</strong>: {esc(c.get("description"))}</li>'
                for c in case["conflicts"]) + "</ul>")
        parts.append(_evidence_table(case))
        if case.get("would_help"):
            parts.append("<h4>What would help</h4><ul>" + "".join(f"<li>{esc(w)}</li>" for w in case["would_help"])
                         + "</ul>")
        if case.get("notes"):
            parts.append("<h4>Notes</h4><ul>" + "".join(f"<li>{esc(n)}</li>" for n in case["notes"]) + "</ul>")
        excluded = (case.get("slides") or {}).get("excluded") or []
        if excluded:
            parts.append("<h4>Slides not used</h4><ul>" + "".join(
                f'<li>{esc(x.get("slide_id"))} ({esc(x.get("stain"))}): {esc(x.get("reason"))}</li>'
                for x in excluded) + "</ul>")
    parts.append(_ihc_table(slides))
    parts.append("<h4>Slides</h4>")
    parts += [_slide_block(s, pictures.get(s["slide_id"], {})) for s in sorted(slides, key=_slide_order)]
    parts.append("</section>")
    return "".join(parts)


def _provenance_footer(summaries: list[dict]) -> str:
    models = sorted({(p["model"]["model_id"], p["model"]["weights_sha256"]) for s in summaries
                     if (p := s.get("provenance") or {}).get("model")})
    commits = sorted({(s.get("provenance") or {}).get("git_commit", "unknown") for s in summaries})
    configs = sorted({(s.get("provenance") or {}).get("config_sha256", "") for s in summaries})
    items = [f"pipeline commit {', '.join(commits)}", f"config sha256 {', '.join(c[:16] for c in configs)}"]
    items += [f"model {m} (weights sha256 {w[:16] if w else '?'}...)" for m, w in models]
    return '<p class="small muted">' + esc("; ".join(items)) + "</p>"


def render_html(rows: list[dict], cases: dict[str, dict], summaries: list[dict],
                pictures: dict[str, dict[str, str | None]], title: str = "slide-triage review") -> str:
    """The review page (a string; byte-stable for the same inputs)."""
    by_case: dict[str, list[dict]] = {}
    for s in summaries:
        by_case.setdefault(s["case_id"], []).append(s)
    order = [r["case_id"] for r in rows if r["level"] == "case"]
    n_failed = sum(s["status"] == "failed" for s in summaries)
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
    stand_ins = {r["case_id"]: failed_case(r["case_id"], r["reason"]) for r in rows
                 if r["level"] == "case" and r["call"] == FAILED_CALL}
    sections = "".join(_case_section(c, stand_ins.get(c) or cases.get(c), by_case.get(c, []), pictures)
                       for c in order)
    priority_legend = "; ".join(f"{rank} = {label}" for rank, label in sorted(PRIORITY_LABELS.items()))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="referrer" content="no-referrer">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<a class="skip" href="#worklist">Skip to the worklist</a>
<header>
<h1>{esc(title)}</h1>
<div class="notice" role="note" id="disclaimer"><strong>Decision support, not a diagnosis.</strong>
{esc(DISCLAIMER)} Automated calls are triage aids computed from the images alone; they say "refer" rather than
guess, and every call below shows the evidence behind it.</div>
<p>{len(order)} cases, {len(summaries)} slides{f", <strong>{n_failed} failed</strong> (listed with reasons)"
                                                if n_failed else ""}. Priority: {esc(priority_legend)}.</p>
<p class="small muted static-only">To pan and zoom the slides with the evidence overlaid, run
<code>python -m pipeline view results/</code> (<code>make view</code>) and open the address it prints.</p>
{_no_ood_notice(summaries)}</header>
<main>
<h2>Worklist</h2>
{worklist_table(rows)}
<h2>Cases</h2>
{sections}
</main>
<footer>
<p class="notice" role="note">{esc(DISCLAIMER)}</p>
{_provenance_footer(summaries)}
</footer>
</body>
</html>
"""


# ---- loading and checking -------------------------------------------------------------------------------
def _load_json(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_inputs(summary_paths: list, case_paths: list) -> tuple[list[dict], dict[str, dict], dict]:
    """(summaries, cases by id, pictures by slide id: {heatmap|top_tiles|tissue: data URI or None})."""
    summaries, pictures = [], {}
    for p in summary_paths:
        s = _load_json(p)
        summaries.append(s)
        folder = Path(p).parent
        pictures[s["slide_id"]] = {key: image_data_uri(folder / name) for key, name in PICTURES}
    cases = {}
    for p in case_paths:
        c = _load_json(p)
        cases[c.get("case_id") or Path(p).parent.name] = c
    summaries.sort(key=lambda s: (s["case_id"], s["slide_id"]))
    return summaries, cases, pictures


def read_jobs(path) -> list[dict]:
    """The jobs table written by the workflow after a failed run (:data:`JOBS_COLUMNS`, tab-separated)."""
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if rows and set(JOBS_COLUMNS) - set(rows[0]):
        raise ValueError(f"{path}: the jobs table needs the columns {', '.join(JOBS_COLUMNS)}")
    return rows


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def partial_inputs(jobs: list[dict]) -> tuple[set[str], list[dict], dict[str, list[dict]]]:
    """What is current after a failed run: (stale outputs, stand-in summaries, failures by case).

    ``jobs``: per slide (in pipeline order), then per case (``slide_id`` empty), the job making each result.
    The first job of a slide whose output is missing or older than the outputs before it is the failed one
    (``ran``: its log exists); its output and all later ones of the slide are stale. A case with a failed
    slide has no current call; a case whose call is missing or older than its slides' results failed at its
    own job. Each failed slide gets a stand-in summary ("failed: no result", with the log) for the worklist.
    """
    stale: set[str] = set()
    stand_ins: list[dict] = []
    failures: dict[str, list[dict]] = {}
    by_unit: dict[tuple[str, str], list[dict]] = {}
    for job in jobs:
        by_unit.setdefault((job["case_id"], job["slide_id"]), []).append(job)
    newest_of_case: dict[str, float] = {}
    for (case_id, slide_id), chain in by_unit.items():
        upstream = newest_of_case.get(case_id, 0.0) if not slide_id else 0.0
        for i, job in enumerate(chain):
            made = _mtime(job["output"])
            if made is not None and made >= upstream:
                upstream = made
                continue
            failure = {"case_id": case_id, "slide_id": slide_id, "rule": job["rule"], "log": job["log"],
                       "ran": _mtime(job["log"]) is not None}
            stale.update(j["output"] for j in chain[i:])
            if slide_id:
                stand_ins.append({"case_id": case_id, "slide_id": slide_id, "stain": job["stain"],
                                  "kind": "HE" if job["stain"] == "HE" else "IHC", "status": "failed",
                                  "reason": failure_text(failure), "no_result": True})
                failures.setdefault(case_id, []).append(failure)
            elif not failures.get(case_id):  # the case job itself (its slides are all current)
                failures.setdefault(case_id, []).append(failure)
            break
        if slide_id:
            newest_of_case[case_id] = max(newest_of_case.get(case_id, 0.0), upstream)
    return stale, stand_ins, failures


def check_results(results_dir) -> dict[str, list[str]]:
    """Problems with the people-facing outputs of a finished run ({file: problems}; empty when all is well).

    Validates every summary.json and tiles.geojson against their schemas, and checks that the worklist has one
    row per case and per slide, that the page carries the disclaimer and the same rows, and loads nothing from
    outside. For the end-to-end test: ``assert not check_results(workdir / "results")``.
    """
    import csv

    from pipeline.outputs.geojson import geojson_problems
    from pipeline.outputs.summary import check_summaries

    root = Path(results_dir)
    bad = dict(check_summaries(root))
    for path in sorted(root.glob("slides/*/tiles.geojson")):
        problems = geojson_problems(_load_json(path))
        if problems:
            bad[str(path)] = problems
    summaries = [_load_json(p) for p in sorted(root.glob("slides/*/summary.json"))]
    n_cases = len({s["case_id"] for s in summaries})
    worklist = root / "worklist.tsv"
    if not worklist.is_file():
        bad[str(worklist)] = ["missing"]
    else:
        with open(worklist, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        problems = []
        if [r["level"] for r in rows].count("slide") != len(summaries):
            problems.append(f"{[r['level'] for r in rows].count('slide')} slide rows for {len(summaries)} summaries")
        if [r["level"] for r in rows].count("case") != n_cases:
            problems.append(f"{[r['level'] for r in rows].count('case')} case rows for {n_cases} cases")
        ranks = [int(r["priority"]) for r in rows if r["level"] == "case"]
        if ranks != sorted(ranks):
            problems.append(f"cases not in priority order: {ranks}")
        if problems:
            bad[str(worklist)] = problems
    page = root / "report.html"
    if not page.is_file():
        bad[str(page)] = ["missing"]
    else:
        text = page.read_text(encoding="utf-8")
        problems = []
        if DISCLAIMER not in text:
            problems.append("disclaimer missing")
        if text.count('data-level="slide"') != len(summaries):
            problems.append("worklist rows on the page differ from the summaries")
        for needle in ("http://", "https://", "<script", "src=\"file:", "@import"):
            if needle in text:
                problems.append(f"page loads or runs something from outside ({needle!r})")
        if problems:
            bad[str(page)] = problems
    return bad


# ---- CLI ------------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    parser.add_argument("--summaries", nargs="+", required=True, help="summary.json of every slide")
    parser.add_argument("--cases", nargs="*", default=[], help="case.json of every case")
    parser.add_argument("--out-worklist", required=True, help="worklist.tsv to write")
    parser.add_argument("--out-html", required=True, help="report.html to write")
    parser.add_argument("--out-metadata", required=True, help="run_metadata.json to write")
    parser.add_argument("--title", default="slide-triage review", help="page title")
    parser.add_argument("--jobs", help="after a failed run (the workflow's onerror handler): TSV naming, per slide "
                        "and case in pipeline order, the job making each result and its log (columns "
                        f"{', '.join(JOBS_COLUMNS)}); summaries and case calls that are missing or stale are then "
                        "listed first as 'failed: no result' with that job's log, instead of stopping the report")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def run(args) -> None:
    from pipeline.outputs.provenance import run_metadata

    started = _now()
    summary_paths, case_paths, stand_ins, failures = list(args.summaries), list(args.cases), [], {}
    if args.jobs:
        stale, stand_ins, failures = partial_inputs(read_jobs(args.jobs))
        summary_paths = [p for p in summary_paths if p not in stale and _mtime(p) is not None]
        case_paths = [p for p in case_paths if p not in stale and _mtime(p) is not None]
    summaries, cases, pictures = load_inputs(summary_paths, case_paths)
    summaries = sorted(summaries + stand_ins, key=lambda s: (s["case_id"], s["slide_id"]))
    rows = worklist_rows(cases, summaries, failures)
    atomic.write_text(args.out_worklist, worklist_tsv(rows))
    atomic.write_text(args.out_html, render_html(rows, cases, summaries, pictures, args.title))
    mtimes = sorted(dt.datetime.fromtimestamp(Path(p).stat().st_mtime, dt.UTC).isoformat(timespec="seconds")
                    for p in summary_paths)
    meta = run_metadata(sys.argv, started, _now())
    meta.update(report_version=REPORT_VERSION, n_cases=len({s["case_id"] for s in summaries}),
                n_slides=len(summaries), n_failed_slides=sum(s["status"] == "failed" for s in summaries),
                failed_cases=sorted(failures),
                summaries_written=[mtimes[0], mtimes[-1]] if mtimes else None,
                note="run facts only; worklist.tsv, report.html and the summaries are byte-stable and hold none")
    atomic.write_json(args.out_metadata, meta)
    log.info("worklist: %d cases, %d slides (%d failed) -> %s, %s", meta["n_cases"], meta["n_slides"],
             meta["n_failed_slides"], args.out_worklist, args.out_html)
