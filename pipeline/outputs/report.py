"""The ``make-report`` verb: reads the cohort's summaries and case calls and writes the review worklist (TSV), the
HTML review page and the run metadata.

* ``worklist.tsv`` -- one row per case, each followed by its slides, cases in review-priority order
  (:func:`pipeline.outputs.worklist.worklist_rows`): priority 0 (failed: no result -- a job of the case failed
  or its case call is missing; the row names the failed job's log), 1 (a tumour call: favours metastatic
  carcinoma or favours sarcoma; conflicting evidence; melanocytic pattern), 2 (refer), 3 (no tumour), as ranked
  by the case stage
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
  (``python -m pipeline view results/``, :mod:`pipeline.viewer.server`) serves the page with
  :data:`pipeline.outputs.report_html.SERVED_STYLE`, which
  shows the links and hides the "run the viewer" hint, so the file opened from disk has no broken link.
  Drawn by :mod:`pipeline.outputs.report_html`.
* ``run_metadata.json`` -- what differs between runs (times, host, argv, versions); the two files above are
  byte-identical for identical inputs.

After a failed run (``--jobs``, given by the workflow's ``onerror`` handler) the same three files are written
from whatever is current: the jobs table (:data:`JOBS_COLUMNS`) names, per slide and case and in pipeline
order, the job making each result and its log; a result that is missing, or older than the results it is made
from, makes its slide and case "failed: no result" with that job's log (:func:`partial_inputs`). Nothing on the
sheet disappears from the worklist, and no stale call is shown as current.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path

from pipeline import atomic
from pipeline.outputs.report_html import PICTURES, image_data_uri, render_html
from pipeline.outputs.worklist import failure_text, worklist_rows, worklist_tsv

log = logging.getLogger(__name__)

REPORT_VERSION = 1
# after a failed run: per slide and case, in pipeline order, the job making each result (written by the workflow)
JOBS_COLUMNS = ("case_id", "slide_id", "stain", "rule", "output", "log")


# ---- loading and checking -------------------------------------------------------------------------------


def load_inputs(summary_paths: list, case_paths: list) -> tuple[list[dict], dict[str, dict], dict]:
    """(summaries, cases by id, pictures by slide id: {heatmap|top_tiles|tissue: data URI or None})."""
    summaries, pictures = [], {}
    for p in summary_paths:
        s = atomic.read_json(p)
        summaries.append(s)
        folder = Path(p).parent
        pictures[s["slide_id"]] = {key: image_data_uri(folder / name) for key, name in PICTURES}
    cases = {}
    for p in case_paths:
        c = atomic.read_json(p)
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
