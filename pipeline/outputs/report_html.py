"""The HTML review page (pure: summaries, case calls and worklist rows in, one self-contained page out).

:func:`render_html` -- a "decision support, not a diagnosis" notice, the worklist table, then one panel per case
(H&E calls, IHC table, evidence, conflicts, what would help, pictures). Pictures are embedded as data URIs
(:func:`image_data_uri`), styles inline, no script: the page works from file:// offline. Deep-zoom links are
hidden unless the viewer serves the page with :data:`SERVED_STYLE`. :func:`esc` escapes text for HTML.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from pipeline import DISCLAIMER
from pipeline.case.call import PRIORITY_LABELS
from pipeline.outputs.summary import NO_OOD_CHECK
from pipeline.outputs.worklist import FAILED_CALL, case_rank, failed_case, fmt, slide_order

# Added by the viewer (pipeline.viewer.server) when it serves the page: shows the deep-zoom links, hides the hint
# to start it.
PICTURES = (("heatmap", "heatmap.png"), ("top_tiles", "top_tiles.png"), ("tissue", "tissue_overlay.png"))


EMBED_PNG_MAX_BYTES = 400_000  # larger pictures are embedded as JPEG (quality JPEG_QUALITY) to keep the page light


JPEG_QUALITY = 85


SERVED_STYLE = ("<style>.view-link { display: inline; } .view-col { display: table-cell; } "
                ".static-only { display: none; }</style>")


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
            f'<td>{esc(r["stain"])}</td><td>{esc(r["call"])}</td><td>{esc(fmt(r["confidence"]))}</td>'
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
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(e.get(c)))}</td>" for c in cols) + "</tr>" for e in ev)
    return f'<table><caption>Evidence</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def region_text(region: dict | None) -> str:
    """Where the marker was read, and how well the slide was registered onto its H&E slide."""
    if not region:
        return ""
    reg = region.get("registration") or {}
    how = (f"registered onto {reg.get('he_slide_id')}: score {fmt(reg.get('score'))}, residual p95 "
           f"{fmt(reg.get('residual_p95_um'), 1)} um") if reg.get("status") == "ok" else ""
    if region.get("restricted_to_tumour"):
        per_cell = f"; {region['per_cell_reason']}" if region.get("per_cell_reason") else ""
        return f"tumour region ({region.get('tiles')} tiles; {how}){per_cell}"
    return region.get("reason", "") + (f" ({how})" if how else "")


METRIC_LABELS = {"cells_positive_pct": "% of tumour cells positive", "nuclei_positive_pct": "% of nuclei positive",
                 "area_positive_pct": "% of tissue area DAB >= 1+", "h_score": "H-score (pixels)"}


def metric_text(metric: str | None) -> str:
    """A reading's metric as a pathologist reads it, with its key (ihc.json)."""
    return f"{METRIC_LABELS[metric]} ({metric})" if metric in METRIC_LABELS else (metric or "")


def _ihc_table(slides: list[dict]) -> str:
    ihc = [s for s in slides if s["kind"] == "IHC"]
    if not ihc:
        return ""
    cols = ("slide", "marker", "result", "metric", "value", "cut-off", "measured in", "whole tissue", "pattern",
            "internal control", "stain check", "status")
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
        whole = (d.get("whole_tissue") or {}).get("result") or {}
        whole_text = f"{fmt(whole.get('value'))} ({METRIC_LABELS.get(whole.get('metric'), whole.get('metric'))})" \
            if whole else ""
        cells = (s["slide_id"], s["stain"], r.get("call"), metric_text(r.get("metric")), fmt(r.get("value")),
                 fmt(r.get("cutoff")), region_text(d.get("region")), whole_text, dist, ic_text, sc_text,
                 s["status"] + (f": {s['reason']}" if s["reason"] else ""))
        body.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return (f'<table><caption>Immunohistochemistry (automated DAB quantification)</caption>'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _ood_text(s: dict) -> str:
    """An H&E slide's share of tiles unlike the training data, or that nothing checked it."""
    if not (s.get("scores") or {}).get("has_ood_score", True):
        return NO_OOD_CHECK
    return f'{fmt(100 * ((s.get("slide_call") or {}).get("ood_fraction") or 0), 0)}% of tiles'


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
                     f'<dt>slide call</dt><dd>{esc(c.get("call"))} (confidence {esc(fmt(c.get("confidence")))})</dd>'
                     f'<dt>reason</dt><dd>{esc(c.get("reason"))}</dd>'
                     f'<dt>tumour</dt><dd>{esc(fmt(c.get("tumour_area_mm2")))} mm2, '
                     f'{esc(fmt(100 * (c.get("tumour_burden") or 0), 0))}% of analysed tiles</dd>'
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
    parts += [_slide_block(s, pictures.get(s["slide_id"], {})) for s in sorted(slides, key=slide_order)]
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
