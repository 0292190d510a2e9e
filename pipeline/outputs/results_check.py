"""Checks of a whole results folder, for the tests and end-to-end checks: :func:`check_summaries` (every
summary.json valid, canonical, with the disclaimer) and :func:`check_results` (that plus the GeoJSON, the worklist
covering every case and slide, and nothing unexpected in the folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline import DISCLAIMER, atomic
from pipeline.outputs.summary import summary_problems


def check_results(results_dir) -> dict[str, list[str]]:
    """Problems with the people-facing outputs of a finished run ({file: problems}; empty when all is well).

    Validates every summary.json and tiles.geojson against their schemas, and checks that the worklist has one
    row per case and per slide, that the page carries the disclaimer and the same rows, and loads nothing from
    outside. For the end-to-end test: ``assert not check_results(workdir / "results")``.
    """
    import csv

    from pipeline.outputs.geojson import geojson_problems

    root = Path(results_dir)
    bad = dict(check_summaries(root))
    for path in sorted(root.glob("slides/*/tiles.geojson")):
        problems = geojson_problems(atomic.read_json(path))
        if problems:
            bad[str(path)] = problems
    summaries = [atomic.read_json(p) for p in sorted(root.glob("slides/*/summary.json"))]
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


def check_summaries(results_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Validate every ``slides/*/summary.json`` under a results directory: {path: problems} for bad ones.

    Also checks that the file is canonical (re-serialising gives the same bytes) and carries the disclaimer.
    """
    bad = {}
    for path in sorted(Path(results_dir).glob("slides/*/summary.json")):
        text = path.read_text(encoding="utf-8")
        summary = json.loads(text)
        problems = summary_problems(summary)
        if atomic.dumps_json(summary) != text:
            problems.append("not canonical JSON (sorted keys, 2-space indent)")
        if summary.get("disclaimer") != DISCLAIMER:
            problems.append("disclaimer missing")
        if problems:
            bad[str(path)] = problems
    return bad
