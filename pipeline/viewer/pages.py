"""The viewer's HTML: the cohort page (the run's report.html, with its deep-zoom links shown) and the slide and
case views. Calls, reasons and overlay switches are written here, in the HTML, so they are there before any
script runs; ``pipeline/viewer/static/viewer.js`` adds the OpenSeadragon viewers, the overlays, legends and scale bars.

Every string from the run (ids, calls, reasons) is HTML-escaped; nothing here reads a slide file.
"""

from __future__ import annotations

from pipeline import DISCLAIMER
from pipeline.outputs.report_html import SERVED_STYLE, esc
from pipeline.outputs.worklist import slide_call_text

# Overlay switches per slide kind: (overlay key, label, on at start). Heat keys are "heat:<measure>".
HE_OVERLAYS = (("heat:prob_carcinoma", "P(carcinoma) heatmap", True),
               ("heat:prob_sarcoma", "P(sarcoma) heatmap", False),
               ("heat:prob_non_tumour", "P(non-tumour) heatmap", False), ("classes", "tile classes", False),
               ("tissue", "tissue outline", False), ("top", "top tiles", False))
# IHC: the marker's metric per tile (heatmap) is added before these when the summary names it.
IHC_OVERLAYS = (("positive", "positive tiles (at or above the cut-off)", True), ("tissue", "tissue outline", False),
                ("top", "top tiles", False))
REGION_OVERLAY = ("region", "tumour region (registered from H&E)", True)
SYNC_NOTE = ("An IHC slide registered onto the H&E slide follows it through the registration: the centre mapped "
             "through the transform, the IHC image turned (and mirrored) to the H&E's orientation, zoom matched in "
             "\u00b5m. Other slides follow by position relative to each slide's size. Each slide says which it uses.")


def served_report(page: str) -> str:
    """The run's report.html as the viewer serves it: the deep-zoom links shown, the 'start the viewer' hint hidden."""
    return page.replace("</head>", SERVED_STYLE + "\n</head>", 1)


def index_page(cases: dict[str, list[str]]) -> str:
    """A plain list of cases and slides, for a results folder without report.html (a run that did not finish)."""
    items = "".join(f'<li><a href="case/{esc(c)}">case {esc(c)}</a>: ' +
                    ", ".join(f'<a href="slide/{esc(s)}">{esc(s)}</a>' for s in slides) + "</li>"
                    for c, slides in sorted(cases.items()))
    return _page("slide-triage: slides", f"<h1>Cases</h1><p>No report.html in this results folder.</p><ul>{items}</ul>",
                 scripts=False)


def _page(title: str, body: str, scripts: bool = True, osd: bool = True) -> str:
    tail = ""
    if scripts and osd:
        tail = '<script src="/osd/openseadragon.min.js"></script>\n<script src="/static/viewer.js"></script>'
    elif scripts:
        tail = '<script src="/static/viewer.js"></script>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{esc(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/viewer.css">
</head>
<body>
<div class="notice" role="note"><strong>Decision support, not a diagnosis.</strong> {esc(DISCLAIMER)}</div>
<nav><a href="/">&larr; worklist</a></nav>
{body}
{tail}
</body>
</html>
"""


def _slide_call(summary: dict | None) -> tuple[str, str, list[str]]:
    """(call line, reason, what would help) of a slide summary."""
    if summary is None:
        return "no result", "this slide has no summary.json: its jobs did not finish", []
    if summary.get("status") == "failed":
        return "not assessed", summary.get("reason", ""), []
    call, confidence, reason = slide_call_text(summary)
    line = call + (f" (confidence {confidence:.2f})" if isinstance(confidence, (int, float)) else "")
    return line, reason, list((summary.get("slide_call") or {}).get("would_help") or [])


def _region(summary: dict | None) -> dict:
    return (((summary or {}).get("ihc") or {}).get("region")) or {}


def _switches(slide_id: str, kind: str, summary: dict | None) -> str:
    overlays = HE_OVERLAYS
    if kind != "HE":
        metric = (((summary or {}).get("ihc") or {}).get("result") or {}).get("metric")
        region = (REGION_OVERLAY,) if _region(summary).get("restricted_to_tumour") else ()
        overlays = ((("heat:" + metric, f"{metric} heatmap", False),) if metric else ()) + region + IHC_OVERLAYS
    rows = []
    for key, label, on in overlays:
        rows.append(f'<label><input type="checkbox" data-overlay="{esc(key)}"{" checked" if on else ""}> '
                    f'{esc(label)}</label>')
    return (f'<fieldset class="overlays" aria-label="overlays of {esc(slide_id)}"><legend>Overlays</legend>'
            + "".join(rows) + "</fieldset>")


def region_line(summary: dict | None) -> str:
    """Why an IHC slide has no tumour-region overlay (its marker was read over the whole tissue), or nothing."""
    region = _region(summary)
    if region.get("restricted_to_tumour"):
        return ""
    reason = region.get("reason") or "no tumour region recorded for this slide"
    return f'<p class="region-absent">No tumour region to show: {esc(reason)}</p>'


def registration_line(registration: dict | None) -> str:
    """How a case view synchronises this IHC slide: through its registration (and how good it is), or not."""
    if registration and registration.get("matrix_level0_px"):
        r = registration
        turn = f"shown turned {r['rotation_deg']:.0f}\u00b0" + (" and mirrored" if r.get("flip") else "")
        text = (f"registered onto {r['he_slide_id']}: score {r['score']:.2f}, residual {r['residual_p95_um']:.1f} "
                f"\u00b5m (95th percentile); {turn} to the H&E's orientation")
        return f'<p class="registration" data-sync="registered">{esc(text)}</p>'
    if registration is None:
        why = "no registration.json (no H&E slide in this case, or the job has not run)"
    else:
        why = registration.get("reason") or f"status {registration.get('status')}"
    text = f"not registered: {why}; navigation follows by position relative to the slide's size"
    return f'<p class="registration" data-sync="relative">{esc(text)}</p>'


def slide_panel(slide_id: str, row: dict, summary: dict | None, problem: str | None, sync_line: str = "") -> str:
    """One slide: heading, call and reasons, the viewer's place, overlay switches, legend. ``sync_line``: a case
    view's :func:`registration_line` for an IHC slide."""
    kind = "HE" if row["stain"] == "HE" else "IHC"
    call, reason, would_help = _slide_call(summary)
    status = (summary or {}).get("status", "no result")
    help_ = "".join(f"<li>{esc(w)}</li>" for w in would_help)
    viewer = (f'<p class="problem">The slide cannot be displayed: {esc(problem)}</p>' if problem else
              '<div class="viewer-wrap"><div class="viewer"></div>'
              '<div class="scalebar"><em></em><span></span></div></div>')
    warn = f'<p class="warn">Warnings: {esc(summary["reason"])}</p>' if status == "warn" and summary else ""
    return (f'<section class="panel" data-slide="{esc(slide_id)}" data-kind="{kind}" data-status="{esc(status)}" '
            f'data-viewable="{"no" if problem else "yes"}">'
            f'<h2>{esc(slide_id)} &middot; {esc(row["stain"])} &middot; status {esc(status)}</h2>'
            f'<div class="body">{viewer}<aside class="info">'
            f'<p class="call"><strong>{esc(call)}</strong></p><p class="reason">{esc(reason)}</p>{warn}{sync_line}'
            + (f"<p>What would help:</p><ul>{help_}</ul>" if help_ else "")
            + (_switches(slide_id, kind, summary) if not problem else "")
            + (region_line(summary) if kind == "IHC" and summary else "")
            + '<div class="legend"></div></aside></div></section>')


def case_header(case_id: str, case: dict | None) -> str:
    """The case call and its reasons (or why there is none)."""
    if case is None:
        return (f"<h1>Case {esc(case_id)}: no case call</h1>"
                "<p>No case.json: a job of this case failed or has not run; see the worklist.</p>")
    lines = [f'<h1>Case {esc(case_id)}: <span class="case-call">{esc(case.get("call"))}</span></h1>',
             f'<p><strong>Why:</strong> {esc(case.get("reason"))}</p>']
    facts = [("basis", case.get("basis")), ("priority", (case.get("priority") or {}).get("label")),
             ("suggested primary", case.get("suggested_primary"))]
    lines.append('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts if v) + "</dl>")
    for title, items in (("Conflicts", [c.get("description") for c in case.get("conflicts") or []]),
                         ("What would help", case.get("would_help") or [])):
        if items:
            lines.append(f"<h3>{title}</h3><ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>")
    return "".join(lines)


def view_page(title: str, header: str, panels: list[str], osd: bool, sync: bool) -> str:
    """A slide or case view. ``osd``: whether OpenSeadragon is installed (else the page says how to install it)."""
    missing = "" if osd else ('<p class="problem" id="osd-missing">OpenSeadragon is not installed, so the slides '
                              "cannot be shown: run <code>make osd</code> (needs npm) and reload.</p>")
    controls = ""
    if sync:
        controls = ('<p class="sync"><label><input type="checkbox" id="sync" checked> synchronise navigation</label> '
                    f'<span class="muted">{esc(SYNC_NOTE)}</span></p>')
    body = f'{header}{missing}{controls}<main class="panels n{len(panels)}">{"".join(panels)}</main>'
    return _page(title, body, scripts=True, osd=osd)
